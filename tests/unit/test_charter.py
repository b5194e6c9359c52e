"""Charters: the shipped ones validate; a bad one fails naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from components.charter import Charter, CharterError, check_stages, parse_charter

CHARTERS = Path(__file__).resolve().parents[2] / "charters"


@pytest.fixture(scope="module")
def search_charter() -> dict:
    return yaml.safe_load((CHARTERS / "semantic_search.yaml").read_text())


@pytest.mark.parametrize("name", ["semantic_search", "personalised_recommendations"])
def test_shipped_charters_are_valid(name):
    charter = parse_charter(yaml.safe_load((CHARTERS / f"{name}.yaml").read_text()))
    assert charter.name == name
    assert charter.stages and charter.rollout.canary


def test_charter_is_frozen(search_charter):
    charter = parse_charter(search_charter)
    with pytest.raises(ValidationError):
        charter.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda c: c["guardrails"].pop("latency_p99_ms"), "guardrails.latency_p99_ms"),
        (lambda c: c["primary_metric"].update(confidence=1.5), "primary_metric.confidence"),
        (lambda c: c.update(surprise=1), "surprise: unknown field"),
        (
            lambda c: c["rollout"]["canary"][1]["success"].update(max_error_rate=-1),
            "rollout.canary.1.success.max_error_rate",
        ),
        (lambda c: c["budget"].update(cpu_minutes=0), "budget.cpu_minutes"),
        (lambda c: c["primary_metric"].update(name="recall_at_20"), "primary_metric.name"),
        (lambda c: c["slices"].update(columns=["buyer_segment"]), "slices.columns"),
        (lambda c: c["guardrails"].update(exposure_measure="entropy"), "guardrails.exposure_measure"),
    ],
)
def test_bad_charter_names_the_field(search_charter, edit, field):
    raw = copy.deepcopy(search_charter)
    edit(raw)
    with pytest.raises(CharterError, match=field.replace(".", r"\.")):
        parse_charter(raw, "semantic_search.yaml")


def test_canary_shares_must_grow(search_charter):
    raw = copy.deepcopy(search_charter)
    raw["rollout"]["canary"][0]["traffic_share"] = 0.5
    with pytest.raises(CharterError, match="canary traffic shares"):
        parse_charter(raw)


def test_unknown_stage_is_named(search_charter):
    charter: Charter = parse_charter(search_charter)
    with pytest.raises(CharterError, match=charter.stages[0]):
        check_stages(charter, ["ingest", "validate", "split"])
    check_stages(charter, list(charter.stages) + ["split"])


def test_an_old_charter_with_point_estimate_ratios_still_parses(search_charter):
    """Before the sequential test: min_primary_ratio per phase, no quality section, no holdback."""
    raw = copy.deepcopy(search_charter)
    for key in ("quality", "holdback", "interleaving_share"):
        raw["rollout"].pop(key)
    raw["rollout"]["shadow"]["exit"]["min_primary_ratio"] = 0.0
    for step, ratio in zip(raw["rollout"]["canary"], (0.98, 1.0, 1.0), strict=True):
        step["success"].pop("test")
        step["success"]["min_primary_ratio"] = ratio
    plan = parse_charter(raw).rollout
    assert [c.success.quality_test() for c in plan.canary] == ["non_inferiority"] * 3
    assert plan.quality.false_rollback_rate == 0.05 and plan.holdback == 0.05
    assert plan.ab_share(2) == pytest.approx(0.95)  # the 100 % step keeps the default holdback
    raw["rollout"]["canary"][0]["success"]["min_primary_ratio"] = 0.0
    assert parse_charter(raw).rollout.canary[0].success.quality_test() == "none"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(holdback=0.0), r"canary\[2\] sends all traffic to the challenger and tests quality"),
        (lambda r: r["quality"].update(false_rollback_rate=0.5), "rollout.quality.false_rollback_rate"),
        (lambda r: r["quality"].update(power=0.4), "rollout.quality.power"),
        (lambda r: r["shadow"]["exit"].update(test="non_inferiority"), "no online quality to test"),
        (lambda r: r["canary"][0]["success"].update(test="ratio"), "rollout.canary.0.success.test"),
    ],
)
def test_bad_rollout_quality_is_named(search_charter, edit, message):
    raw = copy.deepcopy(search_charter)
    edit(raw["rollout"])
    with pytest.raises(CharterError, match=message):
        parse_charter(raw)


def test_a_last_step_without_holdback_may_skip_the_quality_test(search_charter):
    raw = copy.deepcopy(search_charter)
    raw["rollout"]["holdback"] = 0.0
    raw["rollout"]["canary"][2]["success"]["test"] = "none"
    assert parse_charter(raw).rollout.ab_share(2) == 1.0


def test_interleaving_is_for_search_only():
    raw = yaml.safe_load((CHARTERS / "personalised_recommendations.yaml").read_text())
    raw["rollout"]["interleaving_share"] = 0.1
    with pytest.raises(CharterError, match="interleaving needs ranked search results"):
        parse_charter(raw)
