"""``fedsynth audit verify FILE``: check a hash-chained audit log (site or coordinator)."""

from __future__ import annotations

import argparse

from fedsynth.cli.registry import Command


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="audit log (JSON Lines) to verify")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default: text)")


def _run(args: argparse.Namespace) -> int:
    import json

    from fedsynth.audit import verify_log

    result = verify_log(args.file)
    if args.format == "json":
        print(json.dumps({"file": args.file, "ok": result.ok, "entries": result.entries,
                          "head": result.head, "problems": list(result.problems)}, indent=2))
    elif result.ok:
        print(f"{args.file}: OK, {result.entries} entries, chain intact "
              f"(head {result.head or '-'})")
    else:
        print(f"{args.file}: BROKEN, {result.entries} entries, "
              f"{len(result.problems)} problem(s):")
        for problem in result.problems:
            print(f"  {problem}")
    return 0 if result.ok else 1


COMMANDS = [Command(
    ("audit", "verify"), "verify a hash-chained audit log (exit 1 when broken)", _add, _run,
    description=("Verify an append-only, hash-chained audit log written by a site agent or a "
                 "coordinator.\nEvery edited, removed or reordered entry is reported with its "
                 "line and sequence number;\nexit status 0 when intact, 1 when broken, 2 when "
                 "the file cannot be read."))]
