"""``fedsynth model fit``: fit a spec's ``[[model]]`` tables over local site files.

The statistics a round runs for a model (one-stage federated IRLS, stratified, two-stage
with per-coefficient and multivariate pooling), over CSV files held in one place: to try a
model on demo data, to check a spec before a round, or to reproduce a round's numbers.
Every site's rows stay in its own design; the fits exchange only what the sites would send.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedsynth.cli.registry import Command
from fedsynth.errors import InputError
from fedsynth.vocabulary import METHODS, TESTS

_DESCRIPTION = """\
Fit every [[model]] of SPEC (or those named by --model) across sites, each given as one
CSV/TSV file named after the site (mtf-alpha.csv is site mtf-alpha), or as one file with
a site column (--site-column). Four fits per model:

  one-stage    federated IRLS: equals glm() on all rows in one place
  stratified   an intercept per site, common slopes: glm(y ~ 0 + site + ...)
  two-stage    each site's own glm, pooled per coefficient (REML: estimate, se, tau2,
               I2, Q, prediction interval) and as a multivariate random-effects model
               of the coefficient vectors (metafor's rma.mv, --struct DIAG or UN)
  hierarchical exact random-intercept GLM (glmer(..., nAGQ = 25) / lmer ML): fixed
               coefficients, tau, tau2, logLik, site intercepts, latent ICC

--iecv (binomial models) adds internal-external cross-validation: each site held out
in turn, the model developed on the others and scored on the held-out site's patients
(c-statistic with DeLong variance, calibration slope, calibration-in-the-large, O, E,
log O:E); each measure pooled across held-out sites (REML, Knapp-Hartung and z, 95%
prediction interval with t(k-2)) for the candidates global, global_recalibrated (the
site re-estimates the intercept), hierarchical (mean intercept) and
hierarchical_recalibrated; and a recommendation ("global", "global with local
intercept recalibration" or "hierarchical / site-specific") with the numbers behind it.

A site whose data a site's disclosure control would refuse for the model (fewer than
--min-rows rows, more than 0.33 n coefficients, a level of a categorical or binary
column with fewer than --min-cell-count rows) takes part in no fit and is listed with
the reason; --no-disclosure fits every site. The text "None" in a file is a value (a
level such as pupil = None), not a missing value.

Examples:
  fedsynth demo-data --kind trauma --out trauma
  fedsynth model fit --spec trauma/spec.toml --data trauma/mtf-*.csv
  fedsynth model fit --spec trauma/spec.toml --data trauma/mtf-*.csv \\
      --model complications --struct UN --format json --out complications.json
  fedsynth model fit --spec spec.toml --data registry.csv --site-column site
  fedsynth model fit --spec trauma/spec.toml --data trauma/mtf-*.csv \
      --model tbi_mortality --iecv --format json --out fit.json

Exit codes: 0 fitted (a fit that did not converge is reported, not an error); 2 bad
input (a spec without models, an unknown model, a missing column, a value outside a
model's declared levels; the message names the file, the column and the value)."""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, metavar="SPEC",
                        help="the analysis spec (TOML) holding [[model]] tables")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE",
                        help="one CSV/TSV file per site (the site is the file name without "
                             "its suffix), or files with a --site-column")
    parser.add_argument("--site-column", metavar="COLUMN", default=None,
                        help="split the rows of the files into sites by this column")
    parser.add_argument("--model", action="append", metavar="NAME", default=None,
                        help="fit only this model (repeatable; default: every model)")
    parser.add_argument("--struct", type=str.upper, choices=("DIAG", "UN"), default="DIAG",
                        help="between-site covariance of the multivariate model (default "
                             "DIAG; UN has p(p+1)/2 parameters)")
    parser.add_argument("--method", default="REML", type=str.upper, choices=METHODS,
                        help="tau2 estimator of the per-coefficient pooling (default REML)")
    parser.add_argument("--test", default="z", type=str.lower, choices=TESTS,
                        help="test of the per-coefficient pooling (default z)")
    parser.add_argument("--level", type=float, default=95.0,
                        help="confidence level in percent (default 95)")
    parser.add_argument("--min-rows", type=int, default=20, metavar="N",
                        help="disclosure control: fewest rows a site fits a model on "
                             "(default 20)")
    parser.add_argument("--min-cell-count", type=int, default=5, metavar="N",
                        help="disclosure control: fewest rows of a level of a categorical "
                             "or binary column (0 is allowed; default 5)")
    parser.add_argument("--no-disclosure", action="store_true",
                        help="fit every site, whatever disclosure control would say")
    parser.add_argument("--iecv", action="store_true",
                        help="internal-external cross-validation of every binomial model "
                             "and the recommendation (global / recalibrated / "
                             "hierarchical)")
    parser.add_argument("--plot", metavar="DIR", default=None,
                        help="with --iecv: write forest plots of the held-out sites' "
                             "calibration-in-the-large and c-statistic (global model) to "
                             "DIR/MODEL-iecv-MEASURE.png")
    parser.add_argument("--no-hierarchical", action="store_true",
                        help="skip the hierarchical fit and its IECV candidates")
    parser.add_argument("--format", type=str.lower, choices=("table", "json"),
                        default="table", help="output format (default: table)")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="write the output to FILE instead of standard output")


def _read_sites(paths: list[str], site_column: str | None) -> dict:
    """``{site: DataFrame}`` from the files (one per site, or split by a column)."""
    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth.tabular import read_csv

    frames: dict = {}
    for name in paths:
        path = Path(name)
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        frame = read_csv(path, sep=sep, label="data", none_is_missing=False)
        if site_column is None:
            site = path.stem
            if site in frames:
                raise InputError(f"data: two files are named after site {site!r}; rename "
                                 "one, or give --site-column")
            frames[site] = frame
            continue
        if site_column not in frame.columns:
            raise InputError(f"data: {str(path)!r} has no column {site_column!r} "
                             f"(--site-column); it has {', '.join(map(str, frame.columns))}")
        if frame[site_column].isna().any():
            row = int(frame[site_column].isna().to_numpy().argmax()) + 1
            raise InputError(f"data: {str(path)!r}: column {site_column!r} is empty in data "
                             f"row {row}; every row needs its site")
        for site, rows in frame.groupby(frame[site_column].astype(str), sort=False):
            if site in frames:
                raise InputError(f"data: site {site!r} appears in more than one file")
            frames[site] = rows.drop(columns=[site_column]).reset_index(drop=True)
    return frames


def _iecv_plots(iecv: Any, name: str, folder: Path) -> list[str]:
    """Forest plots of the global model's held-out calibration-in-the-large and c."""
    # lazy: matplotlib (~1 s) only when plots are asked for
    from fedsynth.plots import forest_plot, save_figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for measure, label in (("calibration_in_the_large", "calibration-in-the-large"),
                           ("logit_auc", "c-statistic")):
        data = iecv.candidates["global"].forest_input(measure)
        fig = forest_plot(data, measure=label, estimand=label,
                          title=f"{name}: IECV, {label} at each held-out site (global model)")
        path = folder / f"{name}-iecv-{measure}.png"
        save_figure(fig, path)
        written.append(str(path))
    return written


def _run(args: argparse.Namespace) -> int:
    # lazy: keeps numpy, scipy and pandas out of `fedsynth --help` start-up
    from fedsynth.fileio import atomic_write
    from fedsynth.jsonsafe import strict_json
    from fedsynth.models.coding import CodingError, build_design
    from fedsynth.models.disclosure import ModelLimits
    from fedsynth.models.fit import fit_model
    from fedsynth.models.iecv import iecv_for_fit
    from fedsynth.spec import load_spec
    if not 0 < args.level < 100:
        raise InputError(f"--level must be between 0 and 100 (percent), got {args.level!r}")
    if args.plot and not args.iecv:
        raise InputError("--plot draws the IECV forest plots: give --iecv too")
    spec = load_spec(args.spec)
    if not spec.models:
        raise InputError(f"spec: {args.spec!r} has no [[model]] tables")
    models = list(spec.models)
    if args.model:
        known = {m.name for m in models}
        unknown = [name for name in args.model if name not in known]
        if unknown:
            raise InputError(f"--model: the spec has no model {unknown[0]!r} (it has "
                             f"{', '.join(sorted(known))})")
        models = [m for m in models if m.name in args.model]
    limits = None if args.no_disclosure else ModelLimits(
        min_rows=args.min_rows, min_cell_count=args.min_cell_count)
    frames = _read_sites(args.data, args.site_column)
    results = []
    for model in models:
        designs = {}
        for site, frame in frames.items():
            try:
                designs[site] = build_design(frame, model)
            except CodingError as error:
                raise InputError(f"site {site!r}, model {model.name!r}: {error}") from None
        fit = fit_model(designs, limits=limits, method=args.method, test=args.test,
                        level=args.level, struct=args.struct,
                        hierarchical=not args.no_hierarchical)
        entry, text = fit.to_dict(), fit.summary()
        if args.iecv and model.family != "binomial":
            note = (f"IECV measures a risk model: model {model.name!r} is {model.family}, "
                    "so it has no IECV")
            entry["notes"].append(note)
            text += f"\nnote: {note}"
        elif args.iecv and len(fit.sites) < 3:
            note = f"IECV needs at least 3 sites; model {model.name!r} has {len(fit.sites)}"
            entry["notes"].append(note)
            text += f"\nnote: {note}"
        elif args.iecv:
            iecv = iecv_for_fit(fit, designs, level=args.level,
                                hierarchical=not args.no_hierarchical)
            entry.update(iecv.to_dict())
            text += "\n\n" + iecv.summary()
            if args.plot:
                written = _iecv_plots(iecv, model.name, Path(args.plot))
                text += "\n" + "\n".join(f"forest plot: {path}" for path in written)
        results.append((entry, text))
    if args.format == "json":
        text = json.dumps(strict_json({"models": [entry for entry, _ in results]}),
                          indent=2, allow_nan=False) + "\n"
    else:
        text = "\n\n".join(summary for _, summary in results) + "\n"
    if args.out:
        atomic_write(args.out, text)
        print(args.out)
    else:
        sys.stdout.write(text)
    return 0


COMMANDS = [Command(("model", "fit"),
                    "fit a spec's [[model]] tables across local site files (one-stage, "
                    "stratified, two-stage, hierarchical; --iecv)",
                    _add_arguments, _run, description=_DESCRIPTION)]


# ``fedsynth model export`` is registered by coordinator/commands/model_export.py: its
# ROUND NAME form reads the coordinator's store, which this package may not import
# (tests/unit/test_layering.py). The parts that do not need the store live here.


def signing_identity(config: str | None, cert: str | None, key: str | None
                     ) -> tuple[Path, Path]:
    """The coordinator certificate and key an artifact is signed with.

    From ``--config coordinator.toml`` (its ``[tls]`` files) or ``--cert`` and ``--key``;
    an unsigned artifact would be refused by every site, so one of the two is required.
    """
    # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
    from fedsynth.config import load_coordinator_config

    if config is not None and (cert or key):
        raise InputError("give either --config or --cert and --key, not both")
    if config is not None:
        loaded = load_coordinator_config(config)
        if loaded.tls is None:
            raise InputError(f"--config {config!r} has no [tls] files to sign with")
        return Path(loaded.tls.cert), Path(loaded.tls.key)
    if cert and key:
        return Path(cert), Path(key)
    raise InputError("a signing identity is required: --config coordinator.toml, or "
                     "--cert and --key (an unsigned artifact would be refused by sites)")


def fit_entry(fit: str, name: str) -> dict[str, Any]:
    """Model ``name``'s entry of a ``model fit --format json`` file (``--fit``)."""
    try:
        document = json.loads(Path(fit).read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"--fit {fit!r} cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise InputError(f"--fit {fit!r} is not JSON: {error}") from None
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"--fit {fit!r} has no \"models\" list (is it the output of "
                         "'model fit --format json'?)")
    entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == name), None)
    if entry is None:
        raise InputError(f"--fit {fit!r} has no fit of model {name!r}")
    return entry


def write_artifact(entry: Any, model: Any, *, variant: str, source: str,
                   cert_path: Path, key_path: Path, out: str) -> dict[str, Any]:
    """Build, sign and write the artifact of ``entry`` (a fitted model's JSON entry).

    The one path both forms of ``model export`` take (from a fit file, from a round), so
    the two artifacts of the same fit differ only in ``created`` and ``source``.
    Returns the signed document.
    """
    # lazy: keeps numpy, pandas and cryptography out of `fedsynth --help` start-up
    from fedsynth.fileio import atomic_write
    from fedsynth.models.artifact import artifact_body, sign_artifact
    from fedsynth.signing import load_private_key
    from fedsynth.timeutil import iso, utcnow

    try:
        certificate = cert_path.read_bytes()
    except OSError as error:
        raise InputError(f"certificate {str(cert_path)!r} cannot be read: {error.strerror}"
                         ) from None
    body = artifact_body(entry, model, variant=variant, created=iso(utcnow()), source=source)
    signed = sign_artifact(body, load_private_key(key_path), certificate)
    atomic_write(out, json.dumps(signed, indent=2, sort_keys=True, allow_nan=False) + "\n",
                 mode=0o644)
    print(f"{out}: model {model.name!r} ({variant}, {model.family}), "
          f"{len(body['coefficients'])} coefficients, signed by {cert_path.name}")
    return signed
