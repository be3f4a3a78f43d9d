"""`fedsynth meta --example` imports only what its path needs (issue 17).

The one-analysis path was slower than Rscript + metafor because of its imports
(pandas, scipy.stats, cryptography ...). These tests fail when someone re-adds a
module-level import of a heavy module on that path: they run the command in a fresh
interpreter and look at ``sys.modules`` after it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from fedsynth.cli.commands import meta

#: Modules the --example path must not import: each costs more CPU than the analysis.
HEAVY = ("pandas", "scipy.stats", "scipy.optimize", "scipy.linalg", "cryptography",
         "matplotlib", "statsmodels", "grpc", "formulaic", "numpydoc", "pyarrow",
         "fedsynth.models", "fedsynth.plots",
         # the command line builds only `meta`'s parser (fedsynth.cli.LIBRARY_COMMANDS):
         # no other command module, no role, no entry-point scan
         "coordinator", "site_agent", "fedsynth.cli.commands.model",
         "fedsynth.cli.commands.valmeta", "fedsynth.cli.commands.ca")

_PROBE = """
import contextlib, io, json, sys
from fedsynth.cli import main
sys.argv = ["fedsynth", "meta", "--example", *json.loads(sys.argv[1])]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
print(json.dumps({"modules": sorted(sys.modules), "out": out.getvalue()}))
"""


def _run(*extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(extra))],
                          capture_output=True, text=True, check=True, timeout=120)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("extra", [(), ("--format", "json"), ("--method", "DL"),
                                   ("--test", "knha", "--level", "90")])
def test_example_imports_no_heavy_module(extra: tuple[str, ...]) -> None:
    got = _run(*extra)
    loaded = set(got["modules"])
    heavy = sorted(m for m in loaded if m in HEAVY or m.split(".")[0] in
                   {"pandas", "cryptography", "matplotlib", "statsmodels", "grpc", "pyarrow",
                                          "coordinator", "site_agent"})
    assert heavy == [], f"--example {' '.join(extra)} imported {heavy}"
    assert "Random-Effects Model" in got["out"] or '"estimate"' in got["out"]


def test_option_reading_a_column_takes_the_pandas_path() -> None:
    # --label names a column: the light reader cannot serve it, the pandas path does
    got = _run("--label", "study")
    assert "pandas" in got["modules"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    meta.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_light_example_equals_pandas_path_bit_for_bit() -> None:
    args = _args("--example")
    assert meta._light_example(args)
    light = meta.load_input(args)
    heavy_args = _args("--example", "--label", "study")
    assert not meta._light_example(heavy_args)
    full = meta.load_input(heavy_args)
    for name in ("yi", "vi", "mask", "labels", "rows"):
        a, b = getattr(light, name), getattr(full, name)
        assert a.shape == b.shape
        assert np.array_equal(a, b), name
    assert light.names == full.names and light.grouped == full.grouped
    assert light.frame is None


def test_light_example_output_equals_pandas_path() -> None:
    for fmt in ("table", "json", "csv"):
        light = _args("--example", "--format", fmt)
        full = _args("--example", "--format", fmt, "--label", "study")
        meta._resolve_defaults(light)
        meta._resolve_defaults(full)
        a = meta.load_input(light)
        b = meta.load_input(full)
        assert (meta.RENDERERS[fmt](light, a, meta.compute(light, a))
                == meta.RENDERERS[fmt](full, b, meta.compute(full, b)))
