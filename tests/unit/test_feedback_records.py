"""Feedback records: an event judged against its impression, and the per-unit token bucket, on hand-built cases."""

from __future__ import annotations

import pytest

from components.feedback import records as r

NOW = 1_700_000_000.0
RID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def impression() -> r.Impression:
    return r.Impression(
        request_id=RID,
        ts=NOW - 10.0,
        domain="search",
        endpoint="search",
        model_version="3",
        arm="champion",
        unit="a1b2c3d4e5f60708",
        query="cordless drill",
        user=None,
        items=[
            r.ShownItem(product_id="p1", position=1, score=0.9, features={"bm25": 2.5}),
            r.ShownItem(product_id="p2", position=2, score=0.4, features={}),
        ],
    )


def _event(**change) -> dict:
    return {"request_id": RID, "event": "click", "product_id": "p2", "position": 2, "ts": NOW - 5.0, **change}


def test_a_click_on_a_shown_item_at_its_position_is_valid(impression) -> None:
    assert r.validate_feedback(_event(), impression, NOW) is None
    for kind in r.FEEDBACK_EVENTS:
        assert r.validate_feedback(_event(event=kind), impression, NOW) is None


def test_timestamps_at_the_skew_boundaries_are_valid_and_one_past_them_is_not(impression) -> None:
    skew = 60.0
    assert r.validate_feedback(_event(ts=NOW + skew), impression, NOW, skew) is None
    assert r.validate_feedback(_event(ts=NOW + skew + 0.001), impression, NOW, skew).code == r.FUTURE_TIMESTAMP
    assert r.validate_feedback(_event(ts=impression["ts"] - skew), impression, NOW, skew) is None
    late = r.validate_feedback(_event(ts=impression["ts"] - skew - 0.001), impression, NOW, skew)
    assert late.code == r.BEFORE_IMPRESSION and "before the answer" in late.reason


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        ({"product_id": "p9"}, r.NOT_SHOWN, "'p9' was not shown"),
        ({"product_id": "p1", "position": 2}, r.POSITION_MISMATCH, "shown at position 1, not 2"),
        ({"event": "view"}, r.UNKNOWN_EVENT, "click, add_to_cart, purchase"),
        ({"event": None}, r.UNKNOWN_EVENT, "got None"),
        ({"ts": NOW + 3600}, r.FUTURE_TIMESTAMP, "3600.0 s in the future"),
        ({"ts": float("nan")}, r.MALFORMED, "finite"),
        ({"ts": -1.0}, r.MALFORMED, "unix seconds"),
        ({"ts": True}, r.MALFORMED, "unix seconds"),
        ({"position": 0}, r.MALFORMED, ">= 1"),
        ({"position": 2.0}, r.MALFORMED, "integer"),
        ({"position": True}, r.MALFORMED, "integer"),
        ({"request_id": RID.upper()}, r.MALFORMED, "32 hex digits"),
        ({"request_id": RID[:-1]}, r.MALFORMED, "32 hex digits"),
        ({"product_id": ""}, r.MALFORMED, "non-empty"),
    ],
)
def test_each_bad_event_is_rejected_with_its_code_and_reason(impression, change, code, says) -> None:
    rejection = r.validate_feedback(_event(**change), impression, NOW)
    assert rejection is not None and rejection.code == code and says in rejection.reason
    assert code in r.REJECTION_CODES


def test_an_unknown_request_id_is_rejected_but_a_malformed_one_says_malformed_first() -> None:
    assert r.validate_feedback(_event(), None, NOW).code == r.UNKNOWN_REQUEST
    assert r.validate_feedback(_event(request_id="x"), None, NOW).code == r.MALFORMED


def test_the_stored_event_takes_unit_and_domain_from_the_impression_not_the_client(impression) -> None:
    stored = r.feedback_record(_event(unit="chosen-by-client"), impression, received_ts=NOW)
    assert stored == {
        "request_id": RID,
        "event": "click",
        "product_id": "p2",
        "position": 2,
        "ts": NOW - 5.0,
        "received_ts": NOW,
        "unit": "a1b2c3d4e5f60708",
        "domain": "search",
    }
    assert tuple(sorted(stored)) == tuple(sorted(r.FEEDBACK_COLUMNS))


def test_a_request_that_was_its_own_unit_is_rate_limited_by_its_request_id(impression) -> None:
    assert r.rate_key(impression) == "a1b2c3d4e5f60708"
    assert r.rate_key({**impression, "unit": None}) == f"request:{RID}"


def test_impression_problems_name_each_defect(impression) -> None:
    assert r.impression_problems(impression) == []
    assert r.impression_problems({**impression, "items": []}) == []  # a query with no results is an impression
    bad = {
        **impression,
        "request_id": "nope",
        "domain": "search",
        "endpoint": "similar",
        "items": [{"product_id": "p1", "position": 2, "score": "high", "features": {"bm25": float("inf")}}],
    }
    problems = " | ".join(r.impression_problems(bad))
    for says in ("request_id", "does not belong to domain", "position must be 1", "score must be", "features"):
        assert says in problems
    assert "items must be a list" in " ".join(r.impression_problems({**impression, "items": None}))


def test_token_bucket_allows_the_burst_then_the_rate_and_refuses_all_or_nothing() -> None:
    bucket = r.TokenBucket(rate=2.0, burst=3)
    assert bucket.take({"u": 3}, now=0.0) == []  # a full burst at once
    assert bucket.take({"u": 1}, now=0.0) == ["u"]  # empty
    assert bucket.take({"u": 1}, now=0.5) == []  # 0.5 s at 2/s refilled one token
    assert bucket.take({"u": 2, "v": 1}, now=0.75) == ["u"]  # u holds 0.5: refused, and v spent nothing
    assert bucket.tokens("v", now=0.75) == 3.0
    assert bucket.tokens("u", now=100.0) == 3.0  # refills up to the burst, never past it
    assert bucket.take({"w": 4}, now=0.0) == ["w"]  # more than the burst at once: never


def test_token_bucket_forgets_the_least_recently_used_key_first() -> None:
    bucket = r.TokenBucket(rate=1.0, burst=2, max_keys=2)
    bucket.take({"a": 2}, 0.0)
    bucket.take({"b": 2}, 0.0)
    bucket.take({"a": 0}, 0.0)  # touches a
    bucket.take({"c": 1}, 0.0)  # b, the least recently used, is forgotten
    assert bucket.tokens("a", 0.0) == 0.0 and bucket.tokens("b", 0.0) == 2.0 and bucket.tokens("c", 0.0) == 1.0
    with pytest.raises(ValueError):
        r.TokenBucket(rate=0.0, burst=1)
