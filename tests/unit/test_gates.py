"""Gate checks on hand-built per-unit arrays: identities first, then exact values, then decisions; then the
gate's rules (baseline choice, champion alignment, re-run detection, the whole decision) on a tiny charter
and an eight-query per-unit table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.charter import Charter, parse_charter
from components.gates import (
    Check,
    GateFailed,
    GateReport,
    align_champion,
    already_champion_report,
    best_baseline,
    coverage,
    decide,
    exposure_counts,
    gini,
    guardrail_checks,
    guardrail_measures,
    improvement_check,
    is_already_champion,
    lower_limit_check,
    metric_name,
    p99,
    slice_checks,
    top_share,
    upper_limit_check,
)
from components.schema import QUERY_ID, unit_column


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


# --- the gate's rules ---------------------------------------------------------------------------
NDCG = "ndcg_at_10"
EXIT = {"min_requests": 10, "min_hours": 0, "max_error_rate": 0.01, "max_latency_p99_ms": 150, "min_primary_ratio": 1}


def search_charter(min_units: int = 2) -> Charter:
    """A search charter with the limits the tests push against: margin 0.005 NDCG, slice drop 0.02,
    p99 150 ms, coverage 0.3, top-1% share 0.25, 600 MiB."""
    return parse_charter(
        {
            "name": "semantic_search",
            "title": "Semantic product search",
            "objective": "shoppers find what they mean",
            "domain": "search",
            "registered_model": "hatchery-search",
            "primary_metric": {"name": NDCG, "min_improvement": 0.005, "confidence": 0.95, "bootstrap_resamples": 200},
            "slices": {"columns": ["query_length", "head_tail"], "max_drop": 0.02, "min_units": min_units},
            "guardrails": {
                "latency_p99_ms": 150,
                "min_coverage": 0.3,
                "exposure_measure": "top1_share",
                "max_exposure": 0.25,
                "max_model_size_mb": 600,
            },
            "rollout": {
                "shadow": {"traffic_share": 1.0, "exit": EXIT},
                "canary": [{"traffic_share": 1.0, "success": EXIT}],
            },
            "budget": {"cpu_minutes": 1, "gpu_hours": 1},
            "stages": ["evaluate_search"],
        }
    )


@pytest.fixture
def champion_per_query() -> np.ndarray:
    return np.array([0.2, 0.4, 0.6, 0.8, 0.2, 0.4, 0.6, 0.8])  # mean 0.5


@pytest.fixture
def per_query(champion_per_query) -> pd.DataFrame:
    """Eight test queries: two per query length, four head and four tail; `hybrid` is the challenger."""
    return pd.DataFrame(
        {
            QUERY_ID: [f"q{i}" for i in range(8)],
            "query_length": ["1", "2", "3", "4+"] * 2,
            "head_tail": ["head"] * 4 + ["tail"] * 4,
            unit_column("bm25", NDCG): champion_per_query,
            unit_column("zero_shot", NDCG): champion_per_query + 0.05,
            unit_column("hybrid", NDCG): champion_per_query + 0.1,
        }
    )


@pytest.fixture
def measured() -> dict:
    """A bundle inside every limit of search_charter."""
    return {"latency_p99_ms": 100.0, "coverage": 0.5, "gini": 0.4, "top1_share": 0.1, "size_mb": 100.0}


def test_best_baseline_is_the_only_baseline_when_one_is_listed(per_query):
    assert best_baseline(per_query, NDCG, "hybrid", ("bm25",)) == "bm25"


def test_best_baseline_never_picks_the_primary(per_query):
    # hybrid has the best mean, but it is the challenger itself.
    assert best_baseline(per_query, NDCG, "hybrid", ("bm25", "zero_shot", "hybrid")) == "zero_shot"
    with pytest.raises(GateFailed, match="none of the baselines"):
        best_baseline(per_query, NDCG, "hybrid", ("hybrid",))


def test_best_baseline_picks_the_best_mean_over_the_units_each_scores():
    per_query = pd.DataFrame(
        {
            unit_column("bm25", NDCG): [0.2, 0.4],  # mean 0.3
            unit_column("zero_shot", NDCG): [0.5, np.nan],  # mean 0.5 over the one query it scores
            unit_column("fine_tuned", NDCG): [0.9, 0.9],  # a trained part of the challenger: not listed
        }
    )
    assert best_baseline(per_query, NDCG, "hybrid", ("bm25", "zero_shot")) == "zero_shot"
    with pytest.raises(GateFailed, match=r"none of the baselines \['popularity'\] has a ndcg_at_10 column"):
        best_baseline(per_query, NDCG, "hybrid", ("popularity",))


def test_decide_identical_challenger_fails_only_the_primary(per_query, champion_per_query, measured):
    report = decide(search_charter(), per_query, "bm25", "bm25 (best baseline)", champion_per_query, measured)
    assert [c.name for c in report.failures] == [f"primary:{NDCG}"]
    assert report.failures[0].value == 0.0
    assert all(c.value == 0.0 for c in report.checks if c.name.startswith("slice:"))


def test_decide_passes_a_clearly_better_challenger(per_query, champion_per_query, measured):
    report = decide(search_charter(), per_query, "hybrid", "bm25 (best baseline)", champion_per_query, measured)
    checks = {c.name: c for c in report.checks}
    assert report.passed and not report.failures
    # 1 primary + 4 query lengths + head/tail + 4 guardrails, every one judged (2 units per slice >= min_units)
    assert len(checks) == 11 and all(c.judged for c in checks.values())
    assert checks[f"primary:{NDCG}"].value == pytest.approx(0.1)
    assert checks["slice:head_tail=tail"].value == pytest.approx(-0.1)
    assert checks["slice:query_length=4+"].numbers == pytest.approx(
        {"challenger_mean": 0.9, "champion_mean": 0.8, "drop": -0.1, "units": 2}
    )
    assert report.reason() == "hybrid passed all 11 gate checks against bm25 (best baseline)"


def test_decide_fails_a_worse_challenger_naming_the_checks(per_query, champion_per_query, measured):
    per_query[unit_column("hybrid", NDCG)] = champion_per_query - 0.1
    report = decide(search_charter(), per_query, "hybrid", "bm25 (best baseline)", champion_per_query, measured)
    failed = [c.name for c in report.failures]
    assert not report.passed
    assert failed[0] == f"primary:{NDCG}" and "slice:head_tail=head" in failed
    assert not any(name.startswith("guardrail:") for name in failed)
    assert f"primary:{NDCG}: {NDCG} 0.4000 vs 0.5000: difference -0.1000" in report.reason()


def test_decide_fails_a_slice_column_the_table_lacks(per_query, champion_per_query, measured):
    report = decide(
        search_charter(), per_query.drop(columns="head_tail"), "hybrid", "bm25", champion_per_query, measured
    )
    (missing,) = report.failures
    assert missing.name == "slice:head_tail" and np.isnan(missing.value)
    assert "slice column 'head_tail' missing from the per-unit table" in report.reason()


def test_decide_reports_small_slices_without_judging_them(per_query, champion_per_query, measured):
    per_query[unit_column("hybrid", NDCG)] = champion_per_query - 0.1
    report = decide(search_charter(min_units=3), per_query, "hybrid", "bm25", champion_per_query, measured)
    lengths = [c for c in report.checks if c.name.startswith("slice:query_length=")]
    assert len(lengths) == 4 and not any(c.judged for c in lengths)
    assert {c.name for c in report.failures} == {f"primary:{NDCG}", "slice:head_tail=head", "slice:head_tail=tail"}


def test_guardrails_at_their_limits_pass(measured):
    at_limits = {**measured, "latency_p99_ms": 150.0, "coverage": 0.3, "top1_share": 0.25, "size_mb": 600.0}
    assert all(c.passed for c in guardrail_checks(search_charter(), at_limits))


@pytest.mark.parametrize(
    ("measure", "value", "check"),
    [
        ("latency_p99_ms", 150.5, "guardrail:latency_p99"),
        ("coverage", 0.29, "guardrail:coverage@10"),
        ("top1_share", 0.26, "guardrail:exposure_top1_share"),
        ("size_mb", 601.0, "guardrail:model_size"),
        ("latency_p99_ms", float("nan"), "guardrail:latency_p99"),  # no requests measured fails too
    ],
)
def test_each_guardrail_over_its_limit_fails(measured, measure, value, check):
    checks = guardrail_checks(search_charter(), {**measured, measure: value})
    assert [c.name for c in checks if not c.passed] == [check]


def test_guardrail_measures_exact():
    # 3 requests of top-2 over a 4-product catalog: 6 slots, "a" shown 3 times, "b" and "c" once, "d" never.
    lists = [["a", "b"], ["a", "c"], ["a", "zz"]]
    m = guardrail_measures([10.0, 20.0, 30.0], lists, ["a", "b", "c", "d"], k=2)
    assert m["requests"] == 3 and m["catalog_size"] == 4
    assert m["latency_p50_ms"] == 20.0
    assert m["latency_p99_ms"] == pytest.approx(29.8)
    assert m["coverage"] == 3 / 4
    assert m["top1_share"] == pytest.approx(3 / 5)  # the top 1% of 4 reachable products is one product
    assert m["gini"] == pytest.approx(34 / 20 - 1.25)
    assert np.isnan(guardrail_measures([], [], ["a"], k=2)["latency_p50_ms"])


@pytest.fixture
def logged_per_query(per_query) -> pd.DataFrame:
    """What the champion's own gate logged: its values under `challenger`, rows in another order."""
    logged = per_query[[QUERY_ID]].iloc[::-1].reset_index(drop=True)
    logged[unit_column("challenger", NDCG)] = np.linspace(0.8, 0.1, 8)
    return logged


def test_align_champion_puts_logged_values_in_todays_row_order(per_query, logged_per_query):
    values = align_champion(per_query, logged_per_query, QUERY_ID, NDCG, "v1 (champion)")
    assert values == pytest.approx(np.linspace(0.1, 0.8, 8))


def test_align_champion_prefers_a_champion_column(per_query, logged_per_query):
    logged_per_query[unit_column("champion", NDCG)] = 0.5
    assert align_champion(per_query, logged_per_query, QUERY_ID, NDCG, "v1") == pytest.approx(np.full(8, 0.5))


def test_align_champion_needs_ninety_percent_of_todays_queries(logged_per_query):
    ten = pd.DataFrame({QUERY_ID: [f"q{i}" for i in range(10)]})  # q8, q9 are new: 8 of 10 match
    with pytest.raises(GateFailed, match=r"v1 \(champion\) was evaluated on a different test split \(80% "):
        align_champion(ten, logged_per_query, QUERY_ID, NDCG, "v1 (champion)")
    nine = ten.head(9)  # 8 of 9 = 89% match
    with pytest.raises(GateFailed, match="89% of today's test units match"):
        align_champion(nine, logged_per_query, QUERY_ID, NDCG, "v1 (champion)")
    more = pd.concat([logged_per_query, pd.DataFrame({QUERY_ID: ["q8"], unit_column("challenger", NDCG): [0.3]})])
    values = align_champion(ten, more, QUERY_ID, NDCG, "v1 (champion)")  # 9 of 10 = 90%: compared
    assert np.isnan(values[-1]) and values[-2] == 0.3


def test_align_champion_without_the_metric_fails(per_query, logged_per_query):
    with pytest.raises(GateFailed, match="v1: its gate artifact has no recall_at_100 column"):
        align_champion(per_query, logged_per_query, QUERY_ID, "recall_at_100", "v1")


def test_already_champion_needs_the_same_version_and_the_same_results(champion_per_query):
    same = champion_per_query.copy()
    same[0] = np.nan
    assert is_already_champion("3", "3", same, same.copy())  # NaN where the champion had NaN is the same result
    assert is_already_champion("3", 3, champion_per_query, champion_per_query)
    assert not is_already_champion(None, "3", champion_per_query, champion_per_query)
    assert not is_already_champion("4", "3", champion_per_query, champion_per_query)
    assert not is_already_champion("3", "3", champion_per_query + 0.01, champion_per_query)


def test_already_champion_report_is_a_pass_without_checks():
    report = already_champion_report("search", "semantic_search", "hatchery-search", "3")
    assert report["passed"] and report["already_champion"] and report["checks"] == []
    assert report["reason"] == "hatchery-search v3 is already the champion (same bundle): nothing to gate"
    assert report["champion"] == "hatchery-search v3 (champion)" and report["mlflow_run_id"] is None


def test_metric_name_is_tracking_safe():
    assert metric_name("slice:query_length=4+") == "slice.query_length.4plus"
    assert metric_name("guardrail:coverage@10") == "guardrail.coverage_at_10"
