"""``fedsynth site estimate``: what this site would send for a spec, computed locally.

A site operator runs it before joining a round to see exactly what would leave: per
analysis ``yi, vi, se, n``, or the refusal and its reason, after the site's policy
(with ``--config``) and disclosure control (:func:`site_agent.privacy.guard`), computed as
the site agent computes a submission; per ``[[model]]``, what each model step sends (the
sums ``XᵀWX``, score, deviance and ``n`` at the first step and at each later one, then the
site's own fit) after the model disclosure rules (:func:`site_agent.steps.preview_model`).
Nothing is sent and no state is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedsynth.cli.registry import Command
from fedsynth.errors import InputError
from fedsynth.terminal import printable


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="the site's patient-level data (CSV or Parquet); default: "
                             "[data] of --config")
    parser.add_argument("--spec", required=True, metavar="SPEC.toml",
                        help="the analysis spec (TOML)")
    parser.add_argument("--config", default=None, metavar="site.toml",
                        help="the site's configuration: its data source, [privacy] "
                             "limits, policy and release history are applied as in a round")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="output format (default: table)")
    parser.add_argument("--min-cell-count", type=int, default=None, metavar="N",
                        help="disclosure control: smallest count behind an estimate "
                             "(default: site.toml's, else 5)")
    parser.add_argument("--min-n", type=int, default=None, metavar="N",
                        help="disclosure control: fewest patients an analysis may rest on "
                             "(default: site.toml's, else 20)")


def _number(value: float) -> str:
    return f"{value:.6g}"


def _run(args: argparse.Namespace) -> int:
    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from fedsynth.effects import estimate_all

    # lazy: fedsynth.spec is not loaded by `fedsynth --help` (start-up)
    from fedsynth.spec import Spec, load_spec

    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from site_agent.data import load_table

    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from site_agent.privacy import PrivacyLimits, guard, release

    # Validate every input before computing, so bad input prints nothing on stdout.
    config = None
    if args.config:
        # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
        from fedsynth.config import load_site_config

        config = load_site_config(args.config, insecure=True)   # TLS is not used here
    min_cell = args.min_cell_count if args.min_cell_count is not None else (
        config.privacy.min_cell_count if config else 5)
    min_n = args.min_n if args.min_n is not None else (config.privacy.min_n if config else 20)
    limits = PrivacyLimits(min_cell_count=min_cell, min_n=min_n)
    spec = load_spec(args.spec)
    data_path: Path | None
    if args.data:
        data_path = Path(args.data)
    elif config is not None:
        data_path = config.data.path
    else:
        raise InputError("--data: no data given; name a CSV/Parquet file with --data FILE "
                         "or the site's configuration with --config site.toml")

    policy_refusals: dict[str, Any] = {}
    likelihood_permissions: dict[str, bool] = {}
    history = None
    notes: list[str] = []
    if config is not None:
        # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
        from site_agent.policy import site_policy
        from site_agent.privacy import ReleaseHistory

        policy = site_policy(config)
        decision = policy.review(spec)
        likelihood_permissions = {
            "allow_small_cell_likelihood": policy.allow_small_cell_likelihood,
            "allow_unadjusted_likelihood": policy.allow_unadjusted_likelihood}
        policy_refusals = {name: decision.refusal(name) for name in decision.refusals}
        if decision.needs_approval:
            notes.append("the site's policy requires an operator's approval of this spec "
                         "(fedsynth site approve) before anything is sent")
        state = Path(config.state_file)
        # Read-only here: the agent records releases only when it really sends.
        history = ReleaseHistory(state.with_name(state.stem + ".releases.json"))
    allowed = Spec(analyses=tuple(a for a in spec.analyses if a.name not in policy_refusals),
                   name=spec.name)

    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from site_agent.likelihood import likelihood, likelihoods_from_data

    frame = None
    # release = "likelihood" analyses: the likelihood the agent would send (rule 7 below)
    estimated = Spec(analyses=tuple(a for a in allowed.analyses if not a.wants_likelihood),
                     name=spec.name)
    wanted = [a for a in allowed.analyses if a.wants_likelihood]
    computed: dict[str, Any]
    if data_path is not None and not data_path.is_dir():
        frame = load_table(data_path)
        computed = dict(estimate_all(frame, estimated)) if estimated.analyses else {}
        computed.update({a.name: likelihood(frame, a) for a in wanted})
    else:  # a Parquet folder, or the SQL or Spark source of site.toml
        # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
        from site_agent.connectors import estimate_from_data

        if data_path is not None:
            source: Any = {"path": str(data_path)}
        else:
            assert config is not None  # data_path is None only for a config's source
            source = config.data
        computed = (dict(estimate_from_data(source, estimated))
                    if estimated.analyses else {})
        computed.update(likelihoods_from_data(source, wanted))
    computed = {a.name: computed[a.name] for a in allowed.analyses}
    guarded = (guard(computed, limits, spec=allowed, history=history,
                     **likelihood_permissions)
               if allowed.analyses else {})
    # Exactly what the agent would send: refusals worded from the fixed vocabulary (their
    # local detail is shown below, marked as kept at the site).
    results = release({a.name: policy_refusals.get(a.name) or guarded[a.name]
                       for a in spec.analyses}, spec)
    rows_total = int(len(frame)) if frame is not None else None
    models = _models(spec, config, frame, policy_refusals, min_cell, min_n)

    for note in notes:
        print(f"fedsynth: note: {note}", file=sys.stderr)
    if args.format == "json":
        document: dict[str, Any] = {
            "n": rows_total, "analyses": {name: r.to_dict() for name, r in results.items()}}
        scored_with = _model_lines(spec)
        if scored_with:
            document["scored_with_models"] = scored_with
        kept = {name: r.detail for name, r in results.items()
                if getattr(r, "refused", False) and r.detail}
        if kept:
            document["kept_at_site"] = kept      # not sent: the operator's own view
        if models:
            document["models"] = models
        print(json.dumps(document, indent=2, allow_nan=False))
        return 0
    rows = [("analysis", "estimator", "measure", "yi", "se", "vi", "n", "note")]
    for analysis in spec.analyses:
        r = results[analysis.name]
        if getattr(r, "refused", False):
            note = f"refused: {r.reason}"
            if r.detail:
                note += f" [kept at this site, not sent: {r.detail}]"
            rows.append((analysis.name, analysis.estimator, "", "", "", "", "",
                         printable(note)))
        elif isinstance(getattr(r, "likelihood", None), dict):
            lik = r.likelihood
            note = f"likelihood sent ({lik['form']}"
            note += (f", {len(lik['points'])} points)" if "points" in lik else ")")
            note += "; no estimate of its own" if lik.get("estimate") is None else ""
            se = lik.get("se")
            rows.append((analysis.name, analysis.estimator,
                         "HR" if analysis.estimator == "cox" else "OR",
                         _number(lik["estimate"]) if lik.get("estimate") is not None else "",
                         _number(se) if se is not None else "",
                         _number(se * se) if se is not None else "", str(r.n), note))
        else:
            note = f"{r.n_dropped} rows with missing values dropped" if r.n_dropped else ""
            rows.append((analysis.name, analysis.estimator, r.measure, _number(r.yi),
                         _number(r.se), _number(r.vi), str(r.n), note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    source = str(data_path) if data_path is not None else "the SQL or Spark source of site.toml"
    size = f" ({rows_total} rows)" if rows_total is not None else ""
    print(f"data: {printable(source)}{size}; spec: {printable(args.spec)}; disclosure limits: "
          f"min_cell_count={limits.min_cell_count}, min_n={limits.min_n}"
          + ("; site policy applied" if config is not None else ""))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    for line in _model_lines(spec):
        print(line)
    for name, preview in models.items():
        print()
        print(_model_text(name, preview))
    return 0


def _models(spec: Any, config: Any, frame: Any, policy_refusals: dict[str, Any],
            min_cell: int, min_n: int) -> dict[str, Any]:
    """Per model of ``spec``, what each step would send (:func:`preview_model`)."""
    if not spec.models:
        return {}
    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from fedsynth.jsonsafe import strict_json
    from fedsynth.models import ModelLimits
    from site_agent.steps import load_model_frame, model_release_key, preview_model

    # [privacy.models] of site.toml, with min_n / min_cell_count as shown (flags win)
    limits = (config.privacy.model_limits(min_n=min_n, min_cell_count=min_cell)
              if config is not None else
              ModelLimits.from_mapping(None, min_rows=min_n, min_cell_count=min_cell))
    history: dict[str, Any] = {}
    if config is not None:
        # lazy: keeps the file helpers out of `fedsynth --help` start-up
        from fedsynth.fileio import read_json_object

        state = Path(config.state_file)
        history = read_json_object(state.with_name(state.stem + ".releases.json"),
                                   "release history")
    out: dict[str, Any] = {}
    for model in spec.models:
        refusal = policy_refusals.get(model.name)
        if refusal is not None:
            out[model.name] = {"model": model.name, "family": model.family, "n": None,
                               "steps": [], "site_fit": None,
                               "refused": {"code": "policy", "reason": refusal.reason}}
            continue
        data = frame if frame is not None else load_model_frame(config.data, model)
        earlier = [int(n) for n in history.get(model_release_key(model), [])]
        out[model.name] = strict_json(preview_model(data, model, limits, earlier_n=earlier))
    return out


def _model_text(name: str, preview: dict[str, Any]) -> str:
    """The table of one model's steps: what each step sends."""
    lines = [f"model {printable(name)} ({preview['family']}): what each step sends"]
    refused = preview.get("refused")
    for step in preview["steps"]:
        sends = step["sends"]
        p = len(sends["names"])
        at = ("R's starting values (no coefficients)" if step["coefficients"] is None
              else "coefficients " + ", ".join(
                  f"{k}={v:.4g}" for k, v in step["coefficients"].items()))
        score = ", ".join("null" if v is None else f"{v:.6g}" for v in sends["score"])
        deviance = sends["deviance"]
        lines.append(f"  step {step['step']} at {printable(at)}:")
        lines.append(f"    n = {sends['n']}, X'WX ({p} x {p}), deviance = "
                     f"{'null' if deviance is None else f'{deviance:.8g}'}, "
                     f"score = [{score}]")
    fit = preview.get("site_fit")
    if fit is not None:
        if fit["status"] == "ok":
            coefs = ", ".join(f"{k}={'null' if v is None else f'{v:.4g}'}"
                              for k, v in fit["coefficients"].items())
            lines.append(f"  site fit (two-stage): n = {fit['n']}, status ok: {coefs} "
                         "and their covariance matrix")
        else:
            lines.append(f"  site fit (two-stage): n = {fit['n']}, status {fit['status']}: "
                         f"{printable(fit.get('reason', ''))} (sent without coefficients)")
    if refused is not None:
        where = f" at step {refused['at_step']}" if "at_step" in refused else ""
        lines.append(f"  refused{where}: {printable(refused['reason'])}")
        if refused.get("kept_at_site"):
            lines.append(f"    [kept at this site, not sent: "
                         f"{printable(refused['kept_at_site'])}]")
    lines.append("  (in a round the coordinator sends the coefficients of every site's summed "
                 "sums; each answer holds the same kind of numbers, nothing per patient; "
                 "--format json prints every number, X'WX included)")
    return "\n".join(lines)


def _model_lines(spec: Any) -> list[str]:
    """One line per analysis that scores with an embedded model artifact: which model."""
    lines = []
    for analysis in spec.analyses:
        if analysis.model is None:
            continue
        # lazy: only for specs that name a model artifact (already verified when parsed)
        from fedsynth.models.artifact import embedded_artifact

        artifact = embedded_artifact(analysis.model)
        m = artifact.model
        lines.append(printable(
            f"{analysis.name}: scored at this site with model {m.name!r} ({artifact.variant}, "
            f"{m.family}, {len(artifact.coefficients)} coefficients, {artifact.spec_hash[:19]}"
            f"..., created {artifact.created}, signed by {artifact.signer})"))
    return lines


COMMANDS = [Command(
    ("site", "estimate"),
    "compute a spec's estimates on local data and print exactly what would be sent",
    _add_arguments, _run,
    description=(
        "Compute every analysis of SPEC on the site's data and print what the site would\n"
        "send: per analysis yi, vi, se, n (or, with release = \"likelihood\", the likelihood's\n"
        "approximation), or the refusal and its reason, after the site's\n"
        "disclosure control (minimum cell count, minimum n) and, with --config site.toml,\n"
        "its policy and release history. Nothing leaves the machine; no state is written.\n\n"
        "With [[model]] tables it also prints, per model, what each model step sends: the\n"
        "sums X'WX, score, deviance and n at R's starting values and at each later step,\n"
        "then the site's own fit (two-stage), after the model disclosure rules.\n\n"
        "JSON output: {\"n\": rows, \"analyses\": {name: {yi, vi, se, n} | {likelihood, n}"
        " | {refused}},\n\"models\": {name: {steps: [{step, coefficients, sends}], site_fit, "
        "refused}}}"))]
