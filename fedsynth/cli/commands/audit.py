"""``fedsynth audit verify FILE``: check a hash-chained audit log (site or coordinator)."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command

_ALLOW_MISSING_HEAD = ("accept a log whose head file (FILE.head) is missing; without it a "
                       "cut-off tail cannot be detected, so this is refused by default")


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="audit log (JSON Lines) to verify")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default: text)")
    parser.add_argument("--allow-missing-head", action="store_true", help=_ALLOW_MISSING_HEAD)


def _run(args: argparse.Namespace) -> int:
    import json

    from fedsynth.audit import verify_log

    result = verify_log(args.file, allow_missing_head=args.allow_missing_head)
    if args.format == "json":
        print(json.dumps({"file": args.file, "ok": result.ok, "entries": result.entries,
                          "head": result.head, "head_missing": result.head_missing,
                          "problems": list(result.problems), "notes": list(result.notes)},
                         indent=2))
        return 0 if result.ok else 1
    if result.ok:
        print(f"{args.file}: OK, {result.entries} entries, chain intact "
              f"(head {result.head or '-'})")
    else:
        print(f"{args.file}: BROKEN, {result.entries} entries, "
              f"{len(result.problems)} problem(s):")
        for problem in result.problems:
            print(f"  {problem}")
    for note in result.notes:
        print(f"  note: {note}")
    return 0 if result.ok else 1


def _add_show(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="audit log (JSON Lines) to show")
    parser.add_argument("--event", action="append", default=None, metavar="PREFIX",
                        help="only entries whose event starts with PREFIX (repeatable), "
                             "e.g. --event submission")
    parser.add_argument("--round", default=None, help="only entries about this round")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--allow-missing-head", action="store_true", help=_ALLOW_MISSING_HEAD)


def _summary(data) -> str:
    import json

    sent = data.get("sent") if isinstance(data, dict) else None
    if isinstance(sent, dict):      # a site's submission: one line per analysis
        parts = []
        for name, value in sent.items():
            if isinstance(value, dict) and "refused" in value:
                parts.append(f"{name}: refused ({value['refused']})")
            elif isinstance(value, dict):
                parts.append(f"{name}: yi={value.get('yi')} vi={value.get('vi')} "
                             f"n={value.get('n')}")
        rest = {k: v for k, v in data.items() if k != "sent"}
        return json.dumps(rest, sort_keys=True) + "".join(f"\n      {p}" for p in parts)
    return json.dumps(data, sort_keys=True)


def _run_show(args: argparse.Namespace) -> int:
    """Print the entries (after verifying the chain, so a reader knows what to trust)."""
    import json

    from fedsynth.audit import AuditLog, verify_log

    result = verify_log(args.file, allow_missing_head=args.allow_missing_head)
    entries = AuditLog(args.file).entries() if result.ok else []
    if not result.ok:
        from fedsynth.errors import FedsynthError

        raise FedsynthError(f"{args.file}: the chain is broken ({result.problems[0]}); run "
                            "'fedsynth audit verify' for every problem")
    chosen = [e for e in entries
              if (not args.event or any(e.event.startswith(p) for p in args.event))
              and (args.round is None or (isinstance(e.data, dict)
                                          and e.data.get("round") == args.round))]
    if args.format == "json":
        print(json.dumps([e.to_dict() for e in chosen], indent=2))
        return 0
    for e in chosen:
        print(f"{e.seq:>5}  {e.ts}  {e.event:<26} {_summary(e.data)}")
    print(f"({len(chosen)} of {result.entries} entries; chain intact, head {result.head})")
    return 0


COMMANDS = [Command(
    ("audit", "show"), "show the entries of an audit log (what left the site, what arrived)",
    _add_show, _run_show,
    description=("Print the entries of a hash-chained audit log, after verifying it, e.g. "
                 "every submission a site sent:\n  fedsynth audit show site-audit.jsonl "
                 "--event submission")), Command(
    ("audit", "verify"), "verify a hash-chained audit log (exit 1 when broken)", _add, _run,
    description=("Verify an append-only, hash-chained audit log written by a site agent or a "
                 "coordinator.\nEvery edited, removed or reordered entry is reported with its "
                 "line and sequence number;\nan append interrupted by a crash (a torn last "
                 "write) is a note, not a problem: it is\nrepaired at the next start or append. "
                 "Without its head file (FILE.head) a cut-off tail\ncannot be detected: that "
                 "fails unless --allow-missing-head.\nExit status 0 when intact, 1 when broken, "
                 "2 when the file cannot be read."))]
