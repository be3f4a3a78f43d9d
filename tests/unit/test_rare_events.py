"""Rare-event methods: invariants, input errors, likelihood sharing and its disclosure check."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.cli import main
from fedsynth.effects.likelihood import (
    GridWithGradients,
    NormalApproximation,
    approximate,
    approximation_from_dict,
    check_release,
    profile_two_by_two,
    profiler,
)
from fedsynth.errors import InputError
from fedsynth.meta.bayes import bayes_pool
from fedsynth.meta.glmm import glmm
from fedsynth.meta.likelihood import pool_likelihoods, pool_likelihoods_random
from fedsynth.meta.mh import mantel_haenszel, peto

AI, BI, CI, DI = [0, 1, 2, 0, 5, 1], [116, 43, 206, 130, 146, 97], [3, 3, 9, 7, 6, 19], \
    [114, 32, 186, 129, 151, 84]

tables = st.lists(st.tuples(*[st.integers(0, 30)] * 4), min_size=2, max_size=8).filter(
    lambda ts: all(a + b > 0 and c + d > 0 for a, b, c, d in ts)
    and sum(a * d for a, b, c, d in ts) > 0 and sum(b * c for a, b, c, d in ts) > 0)


@settings(max_examples=60, deadline=None)
@given(tables)
def test_mh_or_swapping_groups_negates_the_estimate(ts):
    a, b, c, d = map(list, zip(*ts))
    r = mantel_haenszel(a, b, c, d)
    s = mantel_haenszel(c, d, a, b)
    assert s.estimate == pytest.approx(-r.estimate, abs=1e-12)
    assert s.se == pytest.approx(r.se, rel=1e-12)
    assert s.cmh == pytest.approx(r.cmh, rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(tables, st.integers(1, 40))
def test_mh_or_and_peto_ignore_double_zero_tables(ts, n):
    a, b, c, d = map(list, zip(*ts))
    r = mantel_haenszel(a, b, c, d)
    s = mantel_haenszel(a + [0], b + [n], c + [0], d + [n])
    assert s.estimate == pytest.approx(r.estimate, abs=1e-12)
    assert s.Q == pytest.approx(r.Q, abs=1e-9) and s.k_yi == r.k_yi
    p, q = peto(a, b, c, d), peto(a + [0], b + [n], c + [0], d + [n])
    assert q.estimate == pytest.approx(p.estimate, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(tables)
def test_mh_rd_lies_between_the_smallest_and_largest_table_rd(ts):
    a, b, c, d = (np.array(x, float) for x in zip(*ts))
    r = mantel_haenszel(a, b, c, d, measure="RD")
    rd = a / (a + b) - c / (c + d)
    assert rd.min() - 1e-12 <= r.estimate <= rd.max() + 1e-12


def test_tables_accept_group_sizes_like_metafor():
    r = mantel_haenszel(AI, ci=CI, n1i=np.add(AI, BI), n2i=np.add(CI, DI))
    assert r.estimate == mantel_haenszel(AI, BI, CI, DI).estimate


@pytest.mark.parametrize("kwargs, match", [
    (dict(ai=[1, -1], bi=[3, 3], ci=[1, 1], di=[3, 3]), r"ai: table 2.*-1"),
    (dict(ai=[1, 2.5], bi=[3, 3], ci=[1, 1], di=[3, 3]), r"ai: table 2.*2.5"),
    (dict(ai=[1, 2], bi=[3], ci=[1, 1], di=[3, 3]), r"different lengths"),
    (dict(ai=[5], n1i=[3], ci=[1], n2i=[3]), r"ai: table 1.*5 events but n1i = 3"),
    (dict(ai=[0], bi=[0], ci=[1], di=[3]), r"group 1 has no patients"),
    (dict(ai=[1], bi=[2], ci=[1], di=[2], measure="SMD"), r"measure: .*'SMD'"),
    (dict(ai=[1], bi=[2], ci=[1], di=[2], level=100), r"level"),
])
def test_bad_input_names_the_field(kwargs, match):
    with pytest.raises(InputError, match=match):
        mantel_haenszel(**kwargs)


def test_peto_refuses_tables_without_both_outcomes():
    with pytest.raises(InputError, match="never occurs"):
        peto([0, 0], [5, 6], [0, 0], [4, 4])


def test_mh_or_undefined_is_nan_and_serialises_as_null():
    r = mantel_haenszel([0, 0], [10, 10], [2, 1], [8, 9])
    assert math.isnan(r.estimate)
    assert r.to_dict()["estimate"] is None
    json.dumps(r.to_dict(), allow_nan=False)


def test_glmm_basic_properties():
    for model in ("UM.FS", "CM.EL"):
        r = glmm(AI, BI, CI, DI, model=model)
        assert r.tau2 >= 0 and r.ll >= r.ll_FE - 1e-9 and r.ll_QE >= r.ll_FE - 1e-9
        assert r.ci_lb < r.estimate < r.ci_ub
        json.dumps(r.to_dict(), allow_nan=False)
        assert "Random-Effects Model" in r.summary()


def test_glmm_bad_options():
    with pytest.raises(InputError, match="model"):
        glmm(AI, BI, CI, DI, model="UM.RS")
    with pytest.raises(InputError, match="nAGQ"):
        glmm(AI, BI, CI, DI, nAGQ=0)


def test_glmm_more_nodes_converge_to_the_exact_integral():
    r7, r15, r30 = (glmm(AI[:4], BI[:4], CI[:4], DI[:4], nAGQ=n) for n in (7, 15, 30))
    assert abs(r30.estimate - r15.estimate) < abs(r30.estimate - r7.estimate) + 1e-9
    assert r30.tau2 == pytest.approx(r15.tau2, rel=1e-4)


# ---------------------------------------------------------------------- likelihood sharing

def test_grid_with_gradients_interpolates_values_and_derivatives():
    prof = profiler("two_by_two", ai=4, bi=96, ci=9, di=91)
    g = approximate(prof, "grid_with_gradients")
    assert g.points.size == 9                   # 8 grid points and the maximum
    np.testing.assert_allclose(g(g.points), g.values, atol=1e-12)
    np.testing.assert_allclose(g.derivative(g.points), g.derivatives, atol=1e-12)
    assert g.values.max() == 0.0
    x = np.linspace(-2, 2, 41)
    exact, _ = prof(x)
    top, _ = prof(np.array([prof.estimate]))
    assert np.max(np.abs(g(x) - (exact - top[0]))) < 0.01      # cubic Hermite accuracy
    # linear extrapolation outside the grid
    assert g(np.array([5.0]))[0] == pytest.approx(g.values[-1] + (5 - g.points[-1])
                                                  * g.derivatives[-1])


def test_custom_approximation_is_normal_when_the_likelihood_is():
    class Quadratic:
        estimate, se = 0.3, 0.4

        def __call__(self, x):
            return -(x - 0.3) ** 2 / (2 * 0.16), -(x - 0.3) / 0.16

    c = approximate(Quadratic(), "custom")
    assert (c.mu, c.sigma, c.gamma) == pytest.approx((0.3, 0.4, 0.0), abs=1e-6)


@pytest.mark.parametrize("form", ["grid_with_gradients", "custom"])
def test_serialisation_round_trip(form):
    a = approximate(profiler("two_by_two", ai=0, bi=50, ci=3, di=47), form)
    d = json.loads(json.dumps(a.to_dict(), allow_nan=False))
    b = approximation_from_dict(d)
    x = np.linspace(-3, 3, 13)
    np.testing.assert_allclose(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("data, match", [
    ({"form": "grid"}, r"site 3.form: .*'grid'"),
    ({"form": "grid_with_gradients", "points": [0, 1], "values": [0, float("nan")],
      "derivatives": [0, 0]}, r"site 3: values\[1\]"),
    ({"form": "grid_with_gradients", "points": [1, 0], "values": [0, 0],
      "derivatives": [0, 0]}, r"increasing"),
    ({"form": "grid_with_gradients", "points": [0, 1], "values": [0],
      "derivatives": [0, 0]}, r"values/derivatives"),
    ({"form": "custom", "mu": "x", "sigma": 1, "gamma": 0}, r"site 3: mu"),
    ({"form": "normal", "estimate": 0.1, "se": 0}, r"site 3: se"),
    ([1, 2], r"expected an object"),
])
def test_from_dict_rejects_malformed_input_naming_the_field(data, match):
    with pytest.raises(InputError, match=match):
        approximation_from_dict(data, where="site 3")


def test_fixed_effect_pooling_of_normal_likelihoods_is_inverse_variance():
    y, se = np.array([0.2, 0.5, -0.1]), np.array([0.1, 0.2, 0.15])
    r = pool_likelihoods([NormalApproximation(a, b) for a, b in zip(y, se)])
    w = 1 / se ** 2
    est, s = (w * y).sum() / w.sum(), 1 / math.sqrt(w.sum())
    assert r.estimate == pytest.approx(est, abs=1e-10)
    assert r.ci_lb == pytest.approx(est - 1.959963984540054 * s, abs=1e-9)
    assert r.ci_ub == pytest.approx(est + 1.959963984540054 * s, abs=1e-9)
    assert r.se == pytest.approx(s, rel=1e-9)
    assert r.difference == pytest.approx(0, abs=1e-10)


def test_random_effects_of_normal_likelihoods_equal_the_conjugate_engine():
    """Integrating theta_i out numerically reproduces bayes_pool's closed form."""
    y, se = [0.2, 0.5, -0.1, 0.35], [0.1, 0.2, 0.15, 0.25]
    for prior, scale in (("half_normal", 0.5), ("half_cauchy", 0.3)):
        r = pool_likelihoods_random([NormalApproximation(a, b) for a, b in zip(y, se)],
                                    prior=prior, scale=scale)
        b = bayes_pool(y, np.square(se), prior=prior, scale=scale)
        for mine, ref in ((r.mu_median, b.mu_median), (r.mu_ci_lb, b.mu_ci_lb),
                          (r.mu_ci_ub, b.mu_ci_ub), (r.mu_mean, b.mu_mean),
                          (r.tau_median, b.tau_median),
                          (r.tau_ci_ub, b.tau_ci_ub), (r.prob_mu_positive,
                                                       b.prob_mu_positive)):
            assert mine == pytest.approx(ref, rel=1e-4, abs=1e-5)
        # sd(mu) under a heavy-tailed prior depends on the far tail of tau (density
        # ~ tau^-5 here), which the likelihood grid truncates: agreement to 0.3% only
        assert r.mu_sd == pytest.approx(b.mu_sd, rel=1e-4 if prior == "half_normal" else 3e-3)


def test_a_site_without_events_in_one_arm_contributes_its_likelihood():
    sites = [approximate(profiler("two_by_two", ai=a, bi=b, ci=c, di=d))
             for a, b, c, d in ((4, 96, 9, 91), (3, 120, 6, 110), (0, 80, 6, 74))]
    r = pool_likelihoods(sites)
    without = pool_likelihoods(sites[:2])
    assert r.k_without_estimate == 1 and r.normal_k == 2
    # the zero-event site favours a protective effect: the pooled estimate moves down
    assert r.estimate < without.estimate
    assert r.normal_estimate == pytest.approx(without.normal_estimate)
    assert r.ci_ub - r.ci_lb < without.ci_ub - without.ci_lb
    re = pool_likelihoods_random(sites)
    assert re.k_without_estimate == 1 and re.mu_ci_lb < re.mu_median < re.mu_ci_ub


def test_pooling_refuses_likelihoods_without_a_maximum():
    zero = approximate(profiler("two_by_two", ai=0, bi=80, ci=6, di=74))
    with pytest.raises(InputError, match="no finite maximum"):
        pool_likelihoods([zero, zero])


# ------------------------------------------------------------- disclosure of a likelihood

def _consistent_tables(approx: GridWithGradients, n1: int, n2: int):
    """An attacker's inversion, knowing the group sizes (often published): every 2x2 table
    with those groups whose profile likelihood reproduces the released numbers."""
    found = []
    for a in range(n1 + 1):
        for c in range(n2 + 1):
            if a + c == 0 or a + c == n1 + n2:
                continue
            prof = profile_two_by_two(a, n1 - a, c, n2 - c, points=approx.points)
            if np.allclose(prof.derivatives, approx.derivatives, atol=1e-8) and \
                    np.allclose(prof.values - prof.values.max(), approx.values, atol=1e-8):
                found.append((a, n1 - a, c, n2 - c))
    return found


def test_a_released_2x2_likelihood_determines_its_counts():
    """Why the check exists: values and derivatives on the grid give the table back, up to
    swapping both groups and outcomes (which keeps the odds ratio and, with equal groups,
    the sizes): the counts themselves, a small one included, are revealed."""
    for table in ((2, 9, 5, 7), (0, 12, 5, 7), (7, 30, 1, 40)):
        approx = approximate(profiler("two_by_two", ai=table[0], bi=table[1], ci=table[2],
                                      di=table[3]))
        n1, n2 = table[0] + table[1], table[2] + table[3]
        found = _consistent_tables(approx, n1, n2)
        assert table in found
        assert all(sorted(t) == sorted(table) for t in found)


def test_policy_never_releases_an_invertible_sub_limit_count():
    """Every table the policy lets out inverts only to counts at or above the limit; every
    table with a sub-limit cell is refused (so there is nothing to invert)."""
    limit, n1, n2 = 5, 14, 12
    refused_small = 0
    for a, c in itertools.product(range(0, n1 + 1, 2), range(1, n2, 3)):
        cells = {"ai": a, "bi": n1 - a, "ci": c, "di": n2 - c}
        decision = check_release("two_by_two", cells, min_cell_count=limit,
                                 allow_unadjusted=True)
        if not decision.allowed:
            assert min(cells.values()) < limit and decision.code == "disclosure_limit"
            refused_small += 1
            continue
        approx = approximate(profiler("two_by_two", **cells))
        for table in _consistent_tables(approx, n1, n2):
            assert min(table) >= limit
    assert refused_small > 0
    # by default an unadjusted likelihood never leaves, whatever its counts
    assert not check_release("two_by_two", {"ai": 9, "bi": 9, "ci": 9, "di": 9},
                             min_cell_count=limit).allowed


def test_adjusted_likelihood_with_a_zero_cell_needs_explicit_policy():
    cells = {"ai": 0, "bi": 240, "ci": 12, "di": 348}
    refused = check_release("cox", cells, min_cell_count=5)
    assert not refused.allowed and refused.code == "disclosure_limit"
    allowed = check_release("cox", cells, min_cell_count=5, allow_small_cells=True)
    assert allowed.allowed
    assert check_release("logistic", {"ai": 9, "bi": 240, "ci": 12, "di": 348},
                         min_cell_count=5).allowed


# ------------------------------------------------------------------------------- CLI

@pytest.fixture
def counts_csv(tmp_path):
    path = tmp_path / "trials.csv"
    rows = ["study,tpos,tneg,cpos,cneg,outcome"]
    for i, (a, b, c, d) in enumerate(zip(AI, BI, CI, DI)):
        rows.append(f"s{i + 1},{a},{b},{c},{d},{'x' if i < 3 else 'y'}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


COLS = ["--ai", "tpos", "--bi", "tneg", "--ci", "cpos", "--di", "cneg"]


@pytest.mark.parametrize("method, extra", [("MH", []), ("PETO", []), ("GLMM", []),
                                           ("GLMM", ["--model", "CM.EL"])])
def test_cli_json_equals_the_api(capsys, counts_csv, method, extra):
    code = main(["meta", counts_csv, "--measure", "OR", *COLS, "--method", method, *extra,
                 "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out)
    if method == "MH":
        ref = mantel_haenszel(AI, BI, CI, DI)
    elif method == "PETO":
        ref = peto(AI, BI, CI, DI)
    else:
        ref = glmm(AI, BI, CI, DI, model=extra[1] if extra else "UM.FS")
    for key in ("estimate", "se", "ci_lb", "ci_ub", "pval", "Q", "Q_pval", "I2", "H2"):
        assert got[key] == pytest.approx(ref.to_dict()[key], rel=1e-9), key
    if method == "MH":
        assert {"cmh", "cmh_pval", "tarone", "tarone_pval"} <= set(got)
    if method == "GLMM":
        assert "tau2" in got


def test_cli_by_groups_and_table_output(capsys, counts_csv):
    assert main(["meta", counts_csv, *COLS, "--method", "MH", "--measure", "RR", "--by",
                 "outcome", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [g["analysis"] for g in got] == ["x", "y"]
    assert main(["meta", counts_csv, *COLS, "--method", "PETO"]) == 0
    assert "Peto" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--method", "MH", "--ai", "nope"], "--ai: column 'nope' not found"),
    (["--method", "PETO", "--measure", "RR"], "--measure RR"),
    (["--method", "MH", "--model", "CM.EL"], "--model"),
    (["--method", "GLMM", "--bayes", "half_normal:0.5"], "--bayes"),
    (["--method", "REML"], "--ai"),
])
def test_cli_bad_options_exit_2_naming_the_option(capsys, counts_csv, argv, match):
    base = [] if "--ai" in argv and argv[argv.index("--ai") + 1] == "nope" else COLS
    if argv[:2] == ["--method", "REML"]:
        base = ["--ai", "tpos"]
    code = main(["meta", counts_csv, *base, *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert match in err


# ------------------------------------- likelihood pooling vs the stratified Cox model

def _federation(seed: int = 11):
    rng = np.random.default_rng(seed)
    sites = []
    for _ in range(10):
        n = int(rng.integers(300, 1500))
        x = (rng.random(n) < 0.3).astype(float)
        t_event = rng.exponential(1.0 / (rng.uniform(0.003, 0.01) * np.exp(0.7 * x)))
        t_cens = np.minimum(rng.exponential(5.0, n), 10.0)
        sites.append((np.minimum(t_event, t_cens), (t_event <= t_cens).astype(float), x))
    # one site without events among the exposed: no estimate, still a likelihood
    t, e, x = sites[0]
    sites[0] = (t, np.where(x == 1, 0.0, e), x)
    return sites


def _stratified(sites):
    import warnings

    from statsmodels.duration.hazard_regression import PHReg

    t, e, x = (np.concatenate([s[i] for s in sites]) for i in range(3))
    strata = np.concatenate([np.full(s[0].size, i) for i, s in enumerate(sites)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PHReg(t, x[:, None], status=e, strata=strata, ties="efron")
        fit = model.fit(method="newton", gtol=1e-12)
    return model, float(fit.params[0])


def test_summed_site_likelihoods_are_the_stratified_cox_likelihood():
    """Exactly: the partial likelihood stratified by site is the sum of the sites' ones."""
    sites = _federation()
    model, _ = _stratified(sites)
    profs = [profiler("cox", time=t, event=e, exposure=x) for t, e, x in sites]
    assert not math.isfinite(profs[0].estimate)          # the zero-event site
    grid = np.linspace(-2, 2, 9)
    total = np.sum([p(grid)[0] for p in profs], axis=0)
    strat = np.array([model.loglike(np.array([b])) for b in grid])
    np.testing.assert_allclose(total - total[0], strat - strat[0], rtol=1e-10, atol=1e-9)


def test_likelihood_pooling_of_univariable_cox_equals_the_stratified_fit():
    """Fixed-effect pooling of the released grids equals the stratified Cox estimate to the
    accuracy of cubic Hermite interpolation between grid points 0.66 apart with each site's
    maximum among them (benchmarks/rare_events.py: at most 1e-3 over 200 federations)."""
    sites = _federation()
    _, beta = _stratified(sites)
    profs = [profiler("cox", time=t, event=e, exposure=x) for t, e, x in sites]
    pooled = pool_likelihoods([approximate(p, "grid_with_gradients") for p in profs])
    assert pooled.estimate == pytest.approx(beta, abs=2e-3)
    assert pooled.k_without_estimate == 1 and pooled.normal_k == 9
    # the normal approximation, which drops the zero-event site, is further away
    assert abs(pooled.normal_estimate - beta) > abs(pooled.estimate - beta)


# ------------------------------------------------------------------ README is real output

def test_readme_rare_events_blocks_are_real_output(tmp_path, capsys, monkeypatch):
    import re
    from pathlib import Path

    from tests.conftest import load_json

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    sec = text[text.index("<!-- section:rare-events -->"):
               text.index("<!-- /section:rare-events -->")]
    case = next(c for c in load_json("rare/reference.json")["meta"]
                if c["name"] == "nielweise2007")
    rows = ["study,ai,bi,ci,di"] + [f"{s},{a},{b},{c},{d}" for s, a, b, c, d in
                                    zip(case["study"], case["ai"], case["bi"], case["ci"],
                                        case["di"])]
    (tmp_path / "catheters.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    block = re.findall(r"```\n(\$ fedsynth.*?)\n```", sec, re.S)[0]
    commands = re.split(r"^\$ ", block, flags=re.M)[1:]
    for command in commands:
        argv, _, expected = command.partition("\n")
        assert main(argv.split()[1:]) == 0
        assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")
    sites = [approximate(profiler("two_by_two", ai=a, bi=b, ci=c, di=d))
             for a, b, c, d in [(4, 96, 9, 91), (3, 120, 6, 110), (0, 80, 6, 74)]]
    assert pool_likelihoods(sites).summary() in sec
