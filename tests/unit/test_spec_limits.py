"""Issue 10, item 4: oversized names are refused at spec validation, naming the key.

A hostile spec with huge column names pushed the site's audit entry over its 1 MiB cap;
the append failed and the estimates were sent anyway. Every string of a spec now has a
documented maximum (fedsynth.spec), so such a spec never reaches the computation, and the
largest spec that passes keeps every audit entry of the site far below the cap
(tests/unit/test_site_audit_entry.py).
"""

from __future__ import annotations

import pytest

from fedsynth.errors import ConfigError
from fedsynth.spec import parse_spec

# The documented limits (fedsynth.spec.MAX_*; README, "Analysis spec").
MAX_NAME_CHARS, MAX_COLUMN_CHARS, MAX_DESCRIPTION_CHARS = 100, 128, 2000
MAX_COVARIATES, MAX_ANALYSES = 100, 1000
MAX_SPEC_BYTES, MAX_SPEC_TEXT_BYTES = 256 * 1024, 1024 * 1024


def test_the_documented_limits_are_the_code_s() -> None:
    import fedsynth.spec as spec

    assert (spec.MAX_NAME_CHARS, spec.MAX_COLUMN_CHARS, spec.MAX_DESCRIPTION_CHARS,
            spec.MAX_COVARIATES, spec.MAX_ANALYSES, spec.MAX_SPEC_BYTES,
            spec.MAX_SPEC_TEXT_BYTES) == (MAX_NAME_CHARS, MAX_COLUMN_CHARS,
                                          MAX_DESCRIPTION_CHARS, MAX_COVARIATES,
                                          MAX_ANALYSES, MAX_SPEC_BYTES, MAX_SPEC_TEXT_BYTES)


def _one(**keys):
    return {"analysis": [{"name": "a", "estimator": "logistic", "outcome": "y",
                          "exposure": "x", **keys}]}


@pytest.mark.parametrize("key", ["outcome", "exposure"])
def test_huge_column_name_is_refused_with_the_key(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"analysis 'a': key '{key}' is 100000 characters "
                                          rf"long \(at most {MAX_COLUMN_CHARS}\)"):
        parse_spec(_one(**{key: "c" * 100_000}))
    parse_spec(_one(**{key: "c" * MAX_COLUMN_CHARS}))        # at the limit: fine


def test_huge_covariate_score_time_event_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="key 'covariates' is 5000 characters long"):
        parse_spec(_one(covariates=["age", "z" * 5000]))
    with pytest.raises(ConfigError, match=f"lists {MAX_COVARIATES + 1} columns"):
        parse_spec(_one(covariates=[f"c{i}" for i in range(MAX_COVARIATES + 1)]))
    with pytest.raises(ConfigError, match="key 'score' is 300 characters long"):
        parse_spec({"analysis": [{"name": "s", "estimator": "auc", "outcome": "y",
                                  "score": "s" * 300}]})
    for key in ("time", "event"):
        with pytest.raises(ConfigError, match=f"key '{key}' is 129 characters long"):
            parse_spec({"analysis": [{"name": "c", "estimator": "cox", "time": "t",
                                      "event": "e", "exposure": "x", key: "k" * 129}]})


def test_huge_analysis_and_spec_names_and_descriptions() -> None:
    with pytest.raises(ConfigError, match=rf"key 'name' must be 1-{MAX_NAME_CHARS} letters.*"
                                          r"\(5000 characters\)"):
        parse_spec({"analysis": [{"name": "n" * 5000, "estimator": "auc", "outcome": "y",
                                  "score": "s"}]})
    with pytest.raises(ConfigError, match="analysis spec: key 'name' is 101 characters"):
        parse_spec({"name": "m" * 101, **_one()})
    with pytest.raises(ConfigError, match=f"at most {MAX_DESCRIPTION_CHARS}"):
        parse_spec({"description": "d" * (MAX_DESCRIPTION_CHARS + 1), **_one()})
    with pytest.raises(ConfigError, match="key 'description' is 2001 characters"):
        parse_spec(_one(description="d" * 2001))
    # line breaks and tabs are fine in a description
    parse_spec(_one(description="first line\n\tsecond line"))


def test_control_characters_in_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"key 'outcome' holds the control or format "
                                          r"character '\\x1b'"):
        parse_spec(_one(outcome="y\x1b[2K"))
    with pytest.raises(ConfigError, match=r"character '\\u202e'"):
        parse_spec(_one(exposure="x\u202eevil"))
    with pytest.raises(ConfigError, match=r"key 'description' holds .* '\\r'"):
        parse_spec(_one(description="hidden\roverwritten"))


def test_too_many_analyses_and_too_large_a_spec() -> None:
    many = {"analysis": [{"name": f"a{i}", "estimator": "auc", "outcome": "y", "score": "s"}
                         for i in range(MAX_ANALYSES + 1)]}
    with pytest.raises(ConfigError, match=f"{MAX_ANALYSES + 1} analyses \\(at most "
                                          f"{MAX_ANALYSES}\\)"):
        parse_spec(many)
    wide = {"analysis": [{"name": f"a{i}", "estimator": "logistic", "outcome": "y" * 128,
                          "exposure": "x" * 128,
                          "covariates": [f"c{j}" + "z" * 120 for j in range(40)]}
                         for i in range(60)]}
    with pytest.raises(ConfigError, match=f"bytes as JSON \\(at most {MAX_SPEC_BYTES}\\)"):
        parse_spec(wide)
    with pytest.raises(ConfigError, match=f"at most {MAX_SPEC_TEXT_BYTES} bytes"):
        parse_spec("# " + "x" * MAX_SPEC_TEXT_BYTES + "\n")


def test_round_start_refuses_a_hostile_spec(tmp_path) -> None:
    # The coordinator's `round start` validates with the same parser: exit 2, the key named.
    import subprocess
    import sys

    (tmp_path / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\ninsecure = true\n'
        '[sites]\nallow = ["mtf-alpha"]\n', encoding="utf-8")
    (tmp_path / "spec.toml").write_text(
        '[[analysis]]\nname = "a"\nestimator = "auc"\noutcome = "' + "y" * 20000
        + '"\nscore = "s"\n', encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "fedsynth", "round", "start", "--config",
                          "coordinator.toml", "--spec", "spec.toml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "key 'outcome' is 20000 characters long (at most 128)" in out.stderr
    assert out.stdout == "" and len(out.stderr) < 600
