"""Gate checks on hand-built per-unit arrays: identities first, then exact values, then decisions."""

from __future__ import annotations

import numpy as np
import pytest

from components.gates import (
    Check,
    GateReport,
    coverage,
    exposure_counts,
    gini,
    improvement_check,
    lower_limit_check,
    p99,
    slice_checks,
    top_share,
    upper_limit_check,
)


@pytest.fixture
def champion_ndcg() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(0.2, 0.6, size=200)


# --- identities ---------------------------------------------------------------------------------
def test_identical_models_show_no_improvement(champion_ndcg):
    check = improvement_check(champion_ndcg, champion_ndcg, "ndcg_at_10", 0.0, 0.95)
    assert check.value == 0.0
    assert check.numbers["ci95_low"] == check.numbers["ci95_high"] == 0.0
    assert not check.passed  # equal is not better


def test_gini_and_share_boundaries():
    assert gini(np.ones(50)) == pytest.approx(0.0)
    one_hot = np.zeros(50)
    one_hot[3] = 7
    assert gini(one_hot) == pytest.approx(49 / 50)
    assert top_share(np.ones(200), 0.01) == pytest.approx(2 / 200)
    assert top_share(one_hot, 0.01) == 1.0
    assert np.isnan(gini(np.zeros(5))) and np.isnan(top_share(np.zeros(5)))


def test_top_share_counts_the_top_of_what_the_benchmark_can_reach():
    # 200 top-10 lists over a 54,667-product catalog, every slot a different product: no concentration.
    spread = np.zeros(54_667)
    spread[:2000] = 1
    assert top_share(spread, 0.01, slots=2000) == pytest.approx(20 / 2000)
    # Without the slot base the top 1% (547 products) would take 27% of slots for any ranking.
    assert top_share(spread, 0.01) == pytest.approx(547 / 2000)
    # 20 products filling every list: all exposure in the top 1% of the reachable base.
    piled = np.zeros(54_667)
    piled[:20] = 100
    assert top_share(piled, 0.01, slots=2000) == 1.0


def test_coverage_boundaries():
    assert coverage(np.ones(10), slots=100) == 1.0
    assert coverage(np.zeros(10), slots=100) == 0.0
    # 4 distinct of a 1000-product catalog, but only 4 slots were shown: full coverage of what was reachable
    counts = np.zeros(1000)
    counts[:4] = 1
    assert coverage(counts, slots=4) == 1.0


# --- exact values -------------------------------------------------------------------------------
def test_exposure_counts_and_measures_exact():
    catalog = ["a", "b", "c", "d"]
    counts = exposure_counts([["a", "b"], ["a", "c"], ["a", "zz"]], catalog)
    assert counts.tolist() == [3, 1, 1, 0]
    assert coverage(counts, slots=6) == 3 / 4
    # sorted x = [0,1,1,3], n=4, total=5: 2*(0*1+1*2+1*3+3*4)/(4*5) - 5/4 = 34/20 - 1.25
    assert gini(counts) == pytest.approx(34 / 20 - 1.25)
    assert top_share(counts, 0.25) == pytest.approx(3 / 5)


def test_p99_exact():
    assert p99(list(range(1, 101))) == pytest.approx(99.01)
    assert np.isnan(p99([]))


def test_improvement_exact_difference_with_nans():
    champ = np.array([0.5, 0.5, np.nan, 0.2])
    chall = np.array([0.7, 0.6, 0.9, np.nan])
    check = improvement_check(chall, champ, "ndcg_at_10", 0.0, 0.9, resamples=200)
    assert check.numbers["units"] == 2  # NaN on either side drops the unit from both
    assert check.value == pytest.approx(0.15)
    assert check.passed  # both paired differences are positive


def test_slice_checks_exact():
    champ = np.array([0.5, 0.5, 0.5, 0.5, 0.4])
    chall = np.array([0.6, 0.6, 0.4, 0.4, 0.5])
    labels = ["head", "head", "tail", "tail", "tiny"]
    checks = {c.name: c for c in slice_checks(chall, champ, labels, "head_tail", max_drop=0.05, min_units=2)}
    assert checks["slice:head_tail=head"].value == pytest.approx(-0.1)
    assert checks["slice:head_tail=head"].passed
    assert checks["slice:head_tail=tail"].value == pytest.approx(0.1)
    assert not checks["slice:head_tail=tail"].passed
    assert not checks["slice:head_tail=tiny"].judged


def test_limit_checks():
    assert upper_limit_check("latency", 10.0, 10.0).passed
    assert not upper_limit_check("latency", 10.1, 10.0).passed
    assert not upper_limit_check("latency", float("nan"), 10.0).passed
    assert lower_limit_check("coverage", 0.3, 0.3).passed
    assert not lower_limit_check("coverage", 0.29, 0.3).passed


# --- decisions ----------------------------------------------------------------------------------
def test_clearly_better_challenger_passes(champion_ndcg):
    better = champion_ndcg + 0.05
    check = improvement_check(better, champion_ndcg, "ndcg_at_10", 0.01, 0.95)
    assert check.passed
    assert check.numbers["p_not_better_by_margin"] == 0.0


def test_clearly_worse_challenger_fails(champion_ndcg):
    worse = champion_ndcg - 0.05
    check = improvement_check(worse, champion_ndcg, "ndcg_at_10", 0.0, 0.95)
    assert not check.passed
    assert check.numbers["p_not_better_by_margin"] == 1.0
    assert "difference -0.0500" in check.detail


def test_small_gain_below_margin_fails(champion_ndcg):
    rng = np.random.default_rng(2)
    slightly = champion_ndcg + 0.002 + rng.normal(0, 0.001, size=len(champion_ndcg))
    assert improvement_check(slightly, champion_ndcg, "ndcg_at_10", 0.0, 0.95).passed
    assert not improvement_check(slightly, champion_ndcg, "ndcg_at_10", 0.01, 0.95).passed


def test_report_passes_only_when_every_judged_check_passes():
    ok = Check("a", True, 1, 1, "ok")
    bad = Check("b", False, 2, 1, "too slow")
    unjudged = Check("c", False, 0, 0, "tiny slice", judged=False)
    assert GateReport("search", "x", "y", (ok, unjudged)).passed
    report = GateReport("search", "x", "y", (ok, bad, unjudged))
    assert not report.passed
    assert "b: too slow" in report.reason() and "c:" not in report.reason()
    assert report.to_dict()["passed"] is False
