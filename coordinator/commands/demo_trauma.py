"""``fedsynth demo --kind trauma``: from a model round to a deployed model and back.

The whole story of issue 14 on one machine, with the machinery of ``simulate``
(:func:`coordinator.commands.simulate.federate`: one coordinator process, one site-agent
process per MTF, mutual TLS on 127.0.0.1):

1. the synthetic trauma registry (``fedsynth demo-data --kind trauma``): MTFs whose
   baseline risk of death differs;
2. a development round that fits the mortality model across the sites: the global
   one-stage model by federated IRLS and the exact hierarchical (random-intercept) model,
   with each coefficient's two-stage heterogeneity;
3. the verdict (global / recalibrated / hierarchical) and the model exported from the
   round (``fedsynth model export ROUND NAME``), signed with the coordinator's key;
4. an evaluation round of that model at every site (``model = "model.json"``:
   c-statistic, calibration slope, calibration-in-the-large, O:E);
5. a summary of both rounds (``summary.txt``) beside each round's HTML report.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from coordinator.commands.round import render_table
from coordinator.commands.simulate import RoundRun, federate
from fedsynth.errors import FedsynthError

#: The model the demo develops, deploys and evaluates.
MODEL_NAME = "tbi_mortality"

#: The development round's spec: one adjusted analysis and the mortality model.
DEVELOPMENT_SPEC = """\
# fedsynth demo --kind trauma: the development round (written by the demo).
name = "trauma-development"
description = "IMPACT-style mortality model developed across MTFs: global and hierarchical."

[[analysis]]
name = "hypotension_adjusted_logOR"
estimator = "logistic"
outcome = "mort"
exposure = "hypots"
covariates = ["age", "motor_score", "pupil", "ct"]
[analysis.categorical]
motor_score = ["5/6", "4", "3", "1/2"]
pupil = ["Both", "One", "None"]
ct = ["I/II", "III", "IV/V"]

[[model]]
name = "tbi_mortality"
family = "binomial"
outcome = "mort"
covariates = ["age", "motor_score", "pupil", "ct", "hypox", "hypots", "tsah", "edh"]
description = "IMPACT-style core + CT model of 6-month mortality"
# Internal-external cross-validation in the round (each MTF held out in turn) and the
# verdict from held-out performance
iecv = true
[model.categorical]
motor_score = ["5/6", "4", "3", "1/2"]
pupil = ["Both", "One", "None"]
ct = ["I/II", "III", "IV/V"]
"""

#: The evaluation round's spec: the exported model scored at every site.
EVALUATION_SPEC = """\
# fedsynth demo --kind trauma: the evaluation round of the exported model (written by
# the demo). Each site scores its own patients with model.json (signed by the
# coordinator) and sends only the evaluation estimates.
name = "trauma-evaluation"
description = "Monthly validation of the deployed mortality model at every MTF."

[[analysis]]
name = "c_statistic"
estimator = "auc"
outcome = "mort"
model = "model.json"
scale = "logit"

[[analysis]]
name = "calibration_slope"
estimator = "calibration_slope"
outcome = "mort"
model = "model.json"

[[analysis]]
name = "calibration_in_the_large"
estimator = "calibration_in_the_large"
outcome = "mort"
model = "model.json"

[[analysis]]
name = "oe_ratio"
estimator = "oe_ratio"
outcome = "mort"
model = "model.json"
"""

#: The artifact variant deployed for each verdict (fedsynth.models.iecv.CHOICES).
VARIANT_FOR_CHOICE = {"global": "global",
                      "global with local intercept recalibration": "recalibrated",
                      "hierarchical / site-specific": "hierarchical"}


def verdict(model: Any) -> tuple[str, list[str], str]:
    """The verdict on a round's model: ``(choice, reasons, basis)``.

    The round's own ``recommendation`` (IECV in the round, ``iecv = true``) when it has
    one; otherwise the coefficient part of the same rule
    (:func:`fedsynth.models.iecv.recommend`, docs/decisions/iecv.md) read from the
    round's two-stage heterogeneity flags: a flagged slope asks for a hierarchical /
    site-specific model, a flagged intercept alone for local intercept recalibration,
    none for one global model.
    """
    # lazy: keeps scipy out of `fedsynth --help` start-up
    from fedsynth.models.iecv import CHOICES
    from fedsynth.models.spec import INTERCEPT

    stated = getattr(model, "recommendation", None) or model.extra.get("recommendation")
    if isinstance(stated, Mapping) and stated.get("choice"):
        return (str(stated["choice"]), [str(r) for r in stated.get("reasons") or ()],
                "internal-external cross-validation in the round")
    flags = model.heterogeneity or {}
    flagged = {name: flag for name, flag in flags.items() if flag.get("flagged")}
    reasons = [f"coefficient {name}: two-stage heterogeneity flagged ({flag.get('level')}"
               f"{': ' + '; '.join(flag.get('reasons') or []) if flag.get('reasons') else ''})"
               for name, flag in flagged.items()]
    hier = model.hierarchical or {}
    if isinstance(hier.get("tau"), (int, float)):
        reasons.append(f"hierarchical model: between-site SD of the intercept tau = "
                       f"{hier['tau']:.3f}, latent ICC = {hier.get('icc') or 0:.3f}")
    basis = ("the coefficients' two-stage heterogeneity (IECV is off in this round; "
             "`iecv = true` in the spec adds the held-out evidence)")
    if any(name != INTERCEPT for name in flagged):
        return CHOICES[2], reasons, basis
    if INTERCEPT in flagged:
        return CHOICES[1], reasons, basis
    return CHOICES[0], reasons or ["no coefficient is flagged heterogeneous"], basis


def trauma_demo(out: str | Path, *, sites: int = 10, seed: int = 0,
                heterogeneity: str = "high", deadline: str = "15m",
                quorum: int | None = None, min_cell_count: int = 5, min_n: int = 20,
                method: str = "REML", progress: Callable[[str], Any] = print) -> int:
    """Run the trauma demo in ``out``; 0 when both rounds pooled, 1 otherwise.

    Writes ``out/data`` (the registry and its spec), ``out/federation`` (PKI, configs,
    logs, state, each round's report), ``out/development.toml``,
    ``out/evaluation.toml``, ``out/model.json`` (the exported, signed model) and
    ``out/summary.txt`` (both rounds, the verdict, timings).
    """
    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from fedsynth.cli import main as cli_main
    from fedsynth.datasets import write_demo

    out = Path(out).resolve()
    started = time.monotonic()
    data_dir, sites_dir = out / "data", out / "site-data"
    progress(f"writing the trauma registry for {sites} MTFs ({heterogeneity} between-site "
             f"heterogeneity of the baseline risk) to {data_dir}")
    write_demo(data_dir, sites, seed=seed, heterogeneity=heterogeneity, force=True,
               kind="trauma")
    shutil.rmtree(sites_dir, ignore_errors=True)
    sites_dir.mkdir(parents=True)
    for csv in sorted(data_dir.glob("*.csv")):
        shutil.copyfile(csv, sites_dir / csv.name)
    development, evaluation = out / "development.toml", out / "evaluation.toml"
    development.write_text(DEVELOPMENT_SPEC, encoding="utf-8")
    artifact = out / "model.json"
    artifact.unlink(missing_ok=True)
    federation = out / "federation"
    summary: list[str] = []
    chosen: dict[str, str] = {}

    def develop(_runs: list[RoundRun]) -> Path:
        progress("development round: the global model (federated IRLS) and the exact "
                 "hierarchical model, fitted over the sites' step streams")
        return development

    def deploy(runs: list[RoundRun]) -> Path:
        run = runs[0]
        doc = run.document
        if run.record.status != "pooled":
            raise FedsynthError(f"the development round {doc.round} did not pool "
                                f"({doc.failure_reason or run.record.status})")
        table = render_table(doc)
        print(table)
        model = next((m for m in doc.models if m.name == MODEL_NAME), None)
        if model is None or model.status != "fitted":
            reason = "no result" if model is None else model.reason
            raise FedsynthError(f"model {MODEL_NAME!r} was not fitted in round {doc.round}: "
                                f"{reason}")
        choice, reasons, basis = verdict(model)
        variant = VARIANT_FOR_CHOICE.get(choice, "global")
        lines = ["", f"verdict on model {MODEL_NAME}: {choice}", f"  from {basis}",
                 *(f"  - {reason}" for reason in reasons),
                 f"  deployed variant: {variant}"]
        print("\n".join(lines))
        summary.extend([f"== development round {doc.round} ({run.record.status})", table,
                        *lines])
        chosen["variant"] = variant
        command = ["model", "export", doc.round, MODEL_NAME, "--variant", variant,
                   "--config", str(federation / "coordinator.toml"), "--out", str(artifact)]
        progress("exporting the model from the round: fedsynth " + " ".join(command))
        if cli_main(command) != 0:
            raise FedsynthError("model export from the development round failed")
        evaluation.write_text(EVALUATION_SPEC, encoding="utf-8")
        progress("evaluation round: every site scores its own patients with model.json")
        return evaluation

    runs = federate(sites_dir, [develop, deploy], federation, deadline=deadline,
                    quorum=quorum, min_cell_count=min_cell_count, min_n=min_n,
                    method=method, force=True, progress=progress)
    seconds = time.monotonic() - started
    final = runs[-1]
    table = render_table(final.document)
    print(table)
    summary.extend(["", f"== evaluation round {final.document.round} ({final.record.status}) "
                    f"of model.json ({MODEL_NAME}, {chosen.get('variant')})", table, ""])
    dev_model = next(m for m in runs[0].document.models if m.name == MODEL_NAME)
    one = dev_model.one_stage or {}
    summary.append(f"model {MODEL_NAME}: {len(dev_model.sites)} sites, IRLS iterations "
                   f"{one.get('iterations')}, round trips {dev_model.round_trips} (all "
                   f"fits), fitting {dev_model.seconds or 0:.1f} s; whole demo {seconds:.1f} s")
    for run in runs:
        report = run.record.report or {}
        if "html" in report:
            summary.append(f"report of round {run.document.round}: {report['html']}")
    summary.append(f"exported model: {artifact}")
    summary.append(f"everything else (PKI, configs, logs, audit logs, state): {federation}")
    (out / "summary.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
    print("\n".join(summary[-(len(runs) + 3):]))
    print(f"summary of both rounds: {out / 'summary.txt'}")
    return 0 if all(run.record.status == "pooled" for run in runs) else 1
