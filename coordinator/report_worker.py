"""Child process that writes one round's report: ``python -m coordinator.report_worker``.

Why a separate process
----------------------
The HTML report of a large round (one forest plot per analysis, hundreds of sites each)
takes minutes of matplotlib. Written on the coordinator's closing path it delayed every
other round that came due meanwhile, and written in a thread of the coordinator it would
still hold the interpreter's lock against the gRPC server. The coordinator therefore
commits the round document to the store first and hands it to this worker process
(:class:`coordinator.server.Coordinator` runs at most one at a time). The worker cannot
stall the coordinator and can be stopped on shutdown: a round whose report was not
recorded is simply reported again at the next start.

Protocol: the round document arrives as JSON on stdin (so no database URL or credential
appears on a command line), the report directory is the only argument; the worker prints
ONE JSON line on stdout, ``{"html": PATH, "json": PATH}`` (plus ``"pages": FOLDER`` when a
big round was written as a summary page and one page per analysis) or ``{"error": "..."}`` when the
document cannot be reported (an :class:`~fedsynth.errors.InputError` of
:meth:`fedsynth.round_document.RoundDocument.from_dict`, which validates it, or of
:func:`coordinator.reports.write_round_report`; no file is written then), and exits 0. A
non-zero exit means the worker itself failed (killed, out of memory, import error).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from coordinator.reports import write_round_report
from fedsynth.round_document import RoundDocument

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Read one round document on stdin, write its report, print the outcome line."""
    parser = argparse.ArgumentParser(prog="python -m coordinator.report_worker",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("report_dir", type=Path, help="directory of the round reports")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s report-worker %(levelname)s %(message)s")
    raw = json.loads(sys.stdin.buffer.read())
    try:
        document = RoundDocument.from_dict(raw, where="round document on stdin")
        paths = write_round_report(document, args.report_dir)
        result = {"html": str(paths.html), "json": str(paths.json)}
        if paths.pages is not None:                 # a big round: one page per analysis
            result["pages"] = str(paths.pages)
    except Exception as error:  # noqa: BLE001 - reported to the coordinator, recorded
        logging.getLogger(__name__).exception(
            "report of round %s failed", raw.get("round") if isinstance(raw, dict) else "?")
        result = {"error": f"{type(error).__name__}: {error}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
