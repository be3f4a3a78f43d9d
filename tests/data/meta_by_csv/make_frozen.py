"""Write ``fedsynth meta --by analysis --format csv`` outputs frozen for byte comparison.

Issue 17 rewrote how the ``--by`` CSV is built (column by column instead of a dict and a
csv-module call per cell); the output must stay byte-identical. This script wrote, ONCE,
with the code before that change (main at 44f9de0), the input ``analyses.csv`` (240
random analyses of 1 to 12 sites, with names and labels that need CSV quoting, tiny
p-values written in scientific notation, analyses of one site and of identical effects)
and the output of each case of :data:`CASES` to ``CASE.csv``;
tests/unit/test_meta_csv_columns.py runs the same cases on the current code and compares
bytes. Rerunning it on newer code would freeze that code's output instead: do not,
unless an intended change of the output is being recorded.

    PYTHONPATH=/path/to/old/tree python tests/data/meta_by_csv/make_frozen.py
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: name -> (options after ``FILE --by analysis --format csv``, STREAM_CHUNK or None)
CASES: dict[str, tuple[tuple[str, ...], int | None]] = {
    "reml": ((), None),
    "reml_streamed": ((), 37),
    "reml_last_chunk_of_one": ((), 239),
    "dl": (("--method", "DL"), None),
    "dl_streamed": (("--method", "DL"), 50),
    "pm_knha_90": (("--method", "PM", "--test", "knha", "--level", "90"), None),
    "pm_knha_90_streamed": (("--method", "PM", "--test", "knha", "--level", "90"), 64),
    "fe": (("--method", "FE"), None),
    "ml_threshold": (("--method", "ML", "--i2-threshold", "25", "--null-value", "0.1"), 41),
}


def write_input(path: Path, m: int = 240, seed: int = 2026) -> None:
    """``m`` analyses (analysis, study, yi, vi) with awkward names and values."""
    rng = np.random.default_rng(seed)
    lines = ["analysis,study,yi,vi"]
    for i in range(m):
        k = int(rng.integers(1, 13))
        v = rng.uniform(0.002, 0.2, k)
        tau = rng.choice([0.0, 0.05, 0.2, 0.5])
        mu = rng.choice([0.0, 0.1, 0.5, 3.0])        # 3.0: p-values below 1e-4
        y = mu + rng.normal(0, 1, k) * np.sqrt(v + tau**2)
        if i % 29 == 5:
            y[:] = 0.25                               # identical effects: tau² = 0, I² = 0
        name = f"a{i:03d}"
        if i % 17 == 3:
            name = f'"trial {i}, arm ""B"""'          # a comma and quotes in the name
        labs = [f"s{j}" for j in range(k)]
        if i % 7 == 2:
            labs[0] = '"St. Mary\'s, ""North"""'      # a label with a comma and quotes
        if i % 11 == 4 and k > 1:
            labs[1] = "Ärzte ± Klinik"
        lines += [f"{name},{lab},{yy!r},{vv!r}"
                  for lab, yy, vv in zip(labs, y.tolist(), v.tolist())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_case(src: Path, options: tuple[str, ...], chunk: int | None) -> str:
    """stdout of ``fedsynth meta SRC --by analysis --format csv OPTIONS``."""
    from fedsynth.cli import main
    from fedsynth.cli.commands import meta

    old = meta.STREAM_CHUNK
    if chunk is not None:
        meta.STREAM_CHUNK = chunk
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            code = main(["meta", str(src), "--by", "analysis", "--format", "csv", *options])
    finally:
        meta.STREAM_CHUNK = old
    if code != 0:
        raise SystemExit(f"case {options} exited {code}")
    return buf.getvalue()


def main() -> int:
    src = HERE / "analyses.csv"
    write_input(src)
    for name, (options, chunk) in CASES.items():
        (HERE / f"{name}.csv").write_text(run_case(src, options, chunk), encoding="utf-8")
    print(f"wrote {len(CASES)} outputs with fedsynth from {sys.modules['fedsynth'].__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
