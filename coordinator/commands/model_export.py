"""``fedsynth model export``: a signed model artifact from a closed round or a fit file.

Why here
--------
The ``ROUND NAME`` form reads the coordinator's store (the round's stored models, through
the round document), and nothing under ``fedsynth/`` may import the coordinator
(tests/unit/test_layering.py); so the command is the coordinator part's, and the parts
that need no store (signing identity, reading a fit file, building and writing the
artifact) stay in :mod:`fedsynth.cli.commands.model`. Both forms build the artifact with
the same function from an entry of the same shape (a round document's ``models`` item is
``model fit``'s), so an artifact exported from a round equals the one exported from an
in-process fit of the same data except for ``created`` and ``source``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedsynth.cli.commands.model import fit_entry, signing_identity, write_artifact
from fedsynth.cli.registry import Command
from fedsynth.errors import InputError

#: Variants ``model export`` offers (the artifact's, :data:`fedsynth.models.artifact.VARIANTS`).
EXPORT_VARIANTS = ("global", "recalibrated", "stratified", "hierarchical")

_DESCRIPTION = """\
Write a versioned, signed model artifact that sites can score their patients with
('fedsynth site score') and that evaluation analyses can name (model = "model.json").

From a round (ROUND NAME): the model NAME fitted in the closed round ROUND, read from
the coordinator's store (--config coordinator.toml: its state and its TLS key, which
signs the artifact); the [[model]] table of the round's spec gives the coding. From a
fit file (--fit FILE --spec SPEC --model NAME): 'fedsynth model fit --format json'
output, signed with --config or --cert and --key.

Variants:
  global        the one-stage model (default)
  recalibrated  the one-stage model; each site re-estimates the intercept from its own
                outcomes when it scores (one number, computed locally: the data scored
                must carry the outcome)
  stratified    common slopes, an intercept per site (scoring names the site)
  hierarchical  the random-intercept model's fixed part (the mean intercept, or a
                site's own with --site when scoring)

Examples:
  fedsynth model export 3f2a9c tbi_mortality --config coordinator.toml --out model.json
  fedsynth model export 3f2a9c tbi_mortality --variant hierarchical \\
      --config coordinator.toml --out model-hierarchical.json
  fedsynth model fit --spec trauma/spec.toml --data trauma/mtf-*.csv \\
      --model tbi_mortality --format json --out fit.json
  fedsynth model export --fit fit.json --spec trauma/spec.toml --model tbi_mortality \\
      --cert pki/coordinator.crt --key pki/coordinator.key --out model.json

Exit codes: 0 written; 2 bad input (no such round, a round still open, no such model
(the message lists the round's models), a model that was not fitted or has no such
variant, a fit of another spec, a key that is not the certificate's)."""


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("round", nargs="*", metavar="ROUND NAME",
                        help="export model NAME of the closed round ROUND (needs --config)")
    parser.add_argument("--fit", metavar="FILE", default=None,
                        help="instead of a round: JSON with a \"models\" list ('model fit "
                             "--format json'); needs --spec and --model")
    parser.add_argument("--spec", metavar="SPEC", default=None,
                        help="with --fit: the spec holding the [[model]] table the fit came "
                             "from")
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="with --fit: the model to export")
    parser.add_argument("--variant", default="global", type=str.lower,
                        choices=EXPORT_VARIANTS,
                        help="which fit the artifact carries (default global)")
    parser.add_argument("--config", metavar="coordinator.toml", default=None,
                        help="the coordinator whose store holds ROUND and whose TLS key "
                             "signs the artifact")
    parser.add_argument("--cert", metavar="PEM", default=None,
                        help="with --fit: the coordinator's certificate (instead of --config)")
    parser.add_argument("--key", metavar="PEM", default=None,
                        help="with --fit: the coordinator's private key (instead of "
                             "--config)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the artifact (JSON)")


def round_model_entry(config: str, round_id: str, name: str) -> tuple[dict[str, Any], Any]:
    """Model ``name`` of the closed round ``round_id``: its fit entry and its ``[[model]]``.

    Raises
    ------
    InputError
        No such round, a round still open, a round without models, no model ``name``
        (the message lists the round's models), a model that was not fitted.
    """
    # lazy: keeps sqlalchemy and scipy out of `fedsynth --help` start-up
    from coordinator.rounds import round_document
    from coordinator.store import Store
    from fedsynth.config import load_coordinator_config
    from fedsynth.models.spec import parse_model

    loaded = load_coordinator_config(config, insecure=True)
    with Store(loaded.state) as store:
        record = store.get_round(round_id)
        if record.is_open:
            raise InputError(f"round {round_id!r} is still open (status {record.status}): its "
                             "models are exported once it closes ('fedsynth round wait "
                             f"{round_id}')")
        doc = round_document(store, record)
    tables = {str(t.get("name")): t for t in record.spec.get("models") or []}
    if not tables:
        raise InputError(f"round {round_id!r} fitted no models (its spec has no [[model]] "
                         "tables)")
    if name not in tables:
        raise InputError(f"round {round_id!r} has no model {name!r} (it has "
                         f"{', '.join(sorted(tables))})")
    result = next((m for m in doc.models if m.name == name), None)
    if result is None or result.status != "fitted":
        reason = "no result was stored" if result is None else (result.reason or "no reason")
        raise InputError(f"round {round_id!r}: model {name!r} was not fitted ({reason}); "
                         "there is nothing to export")
    return result.to_dict(), parse_model(tables[name])


def _run(args: argparse.Namespace) -> int:
    # lazy: fedsynth.spec is not loaded by `fedsynth --help` (start-up)
    from fedsynth.spec import load_spec

    if args.round:
        if len(args.round) != 2:
            raise InputError(f"model export takes ROUND NAME (two words), got "
                             f"{' '.join(args.round)!r}")
        if args.fit or args.spec or args.model:
            raise InputError("give either ROUND NAME or --fit/--spec/--model, not both")
        if args.config is None:
            raise InputError("ROUND NAME needs --config coordinator.toml (the store holding "
                             "the round, and the key that signs)")
        round_id, name = args.round
        entry, model = round_model_entry(args.config, round_id, name)
        cert_path, key_path = signing_identity(args.config, args.cert, args.key)
        write_artifact(entry, model, variant=args.variant, source=f"round {round_id}",
                       cert_path=cert_path, key_path=key_path, out=args.out)
        return 0
    if args.fit is None:
        raise InputError("give ROUND NAME (a closed round's model) or --fit FILE (the JSON "
                         "of 'fedsynth model fit --format json')")
    if args.spec is None or args.model is None:
        raise InputError("--fit needs --spec (the spec the fit came from) and --model")
    cert_path, key_path = signing_identity(args.config, args.cert, args.key)
    spec = load_spec(args.spec)
    try:
        model = spec.model(args.model)
    except KeyError:
        known = ", ".join(m.name for m in spec.models) or "none"
        raise InputError(f"--model: the spec has no model {args.model!r} (it has {known})"
                         ) from None
    entry = fit_entry(args.fit, model.name)
    write_artifact(entry, model, variant=args.variant,
                   source=f"model fit {Path(args.fit).name}", cert_path=cert_path,
                   key_path=key_path, out=args.out)
    return 0


COMMANDS = [Command(("model", "export"),
                    "write a signed model artifact from a closed round's model or a model "
                    "fit (for site score and evaluation analyses)",
                    _arguments, _run, description=_DESCRIPTION)]
