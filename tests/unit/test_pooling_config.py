"""``[pooling]`` keys of evaluation rounds: performance-measure pooling and clinical widths."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.rounds import _plan
from coordinator.server import pooling_dict
from fedsynth.config import DEFAULT_PI_WIDTH, load_coordinator_config
from fedsynth.errors import ConfigError

BASE = """
listen = "127.0.0.1:0"
state = "state.db"
[sites]
allow = ["mtf-alpha", "mtf-bravo"]
"""


def _load(tmp_path: Path, pooling: str):
    path = tmp_path / "c.toml"
    path.write_text(BASE + pooling)
    return load_coordinator_config(path, insecure=True)


def test_defaults(tmp_path):
    p = _load(tmp_path, "").pooling
    assert (p.performance_method, p.performance_test) == ("REML", "knha")
    assert p.pi_width == dict(DEFAULT_PI_WIDTH)
    assert p.pi_width["auc"] == 0.05 and p.pi_width["oe_ratio"] == (0.8, 1.25)


def test_overrides_reach_the_round(tmp_path):
    config = _load(tmp_path, '[pooling]\nperformance_test = "z"\nperformance_method = "DL"\n'
                             "[pooling.pi_width]\nauc = 0.03\nbrier = false\n"
                             "logistic = [0.8, 1.25]\n")
    p = config.pooling
    assert (p.performance_method, p.performance_test) == ("DL", "z")
    assert p.pi_width["auc"] == 0.03 and "brier" not in p.pi_width
    assert p.pi_width["logistic"] == (0.8, 1.25)
    pooling = pooling_dict(config)
    auc = _plan({"name": "a", "estimator": "auc"}, pooling)
    assert (auc.method, auc.test, auc.pi_df, auc.clinical.halfwidth) == ("DL", "z", "k-2",
                                                                         0.03)
    assert _plan({"name": "b", "estimator": "brier"}, pooling).clinical is None
    logit = _plan({"name": "c", "estimator": "logistic"}, pooling)
    assert (logit.method, logit.test, logit.pi_df) == ("REML", "z", "k-1")
    assert (logit.clinical.low, logit.clinical.high) == (0.8, 1.25)


def test_rounds_opened_before_the_keys_get_the_defaults():
    plan = _plan({"name": "a", "estimator": "oe_ratio"},
                 {"method": "DL", "test": "z", "level": 95.0, "i2_threshold": 50.0})
    assert (plan.method, plan.test, plan.clinical.low, plan.clinical.high) == (
        "REML", "knha", 0.8, 1.25)


@pytest.mark.parametrize("text, words", [
    ('performance_test = "t"', ["pooling.performance_test", "'t'"]),
    ('performance_method = "XX"', ["pooling.performance_method", "'XX'"]),
    ("[pooling.pi_width]\nauc = -0.05", ["pooling.pi_width.auc", "-0.05"]),
    ("[pooling.pi_width]\noe_ratio = [1.25, 0.8]", ["pooling.pi_width.oe_ratio", "low < high"]),
    ("[pooling.pi_width]\nroc = 0.05", ["pooling.pi_width.roc", "unknown estimator"]),
    ('[pooling.pi_width]\nauc = "wide"', ["pooling.pi_width.auc", "'wide'"]),
])
def test_bad_values_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, "[pooling]\n" + text + "\n")
    for word in words:
        assert word in str(info.value)
