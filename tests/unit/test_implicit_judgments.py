"""Implicit judgments from hand-built impression and feedback logs (components/feedback/implicit.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components import schema as s
from components.config import RelevanceScale
from components.feedback import implicit as im
from components.rollout.clicks import attractiveness
from components.splits import query_bucket

HOME_DEPOT = RelevanceScale()  # 1..3
ZERO_TO_FOUR = RelevanceScale(min=0.0, max=4.0, relevant_from=3.0)


def logs(rows: list[tuple[str, str, str, int, bool]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(impressions, feedback) from (request_id, query, product, position, clicked) rows."""
    impressions = pd.DataFrame(
        {
            im.REQUEST_ID: [r[0] for r in rows],
            im.TS: 1000.0,
            "domain": "search",
            s.QUERY: [r[1] for r in rows],
            im.USER: None,
            s.PRODUCT_ID: [r[2] for r in rows],
            im.POSITION: [r[3] for r in rows],
        }
    )
    clicked = [r for r in rows if r[4]]
    feedback = pd.DataFrame(
        {
            im.REQUEST_ID: [r[0] for r in clicked],
            im.EVENT: im.CLICK,
            s.PRODUCT_ID: [r[2] for r in clicked],
            im.POSITION: [r[3] for r in clicked],
            im.TS: 1001.0,
        }
    )
    return impressions, feedback


def pbm_logs(
    theta: np.ndarray,
    alpha: dict[str, float],
    n_lists: int,
    seed: int,
    fixed: dict[str, int] | None = None,
    query: str = "Drill",
) -> list[tuple[str, str, str, int, bool]]:
    """Lists of the `alpha` products for `query` in random order, clicks drawn from theta * alpha.

    fixed: product -> the position it is always shown at (the rest fill the other positions at random).
    """
    rng = np.random.default_rng(seed)
    fixed = fixed or {}
    free = [p for p in alpha if p not in fixed]
    rows = []
    for i in range(n_lists):
        order = [free[j] for j in rng.permutation(len(free))]
        shown = [None] * len(alpha)
        for p, pos in fixed.items():
            shown[pos - 1] = p
        for k in range(len(shown)):
            if shown[k] is None:
                shown[k] = order.pop()
        for k, p in enumerate(shown):
            rows.append((f"{query}{i}", query, p, k + 1, bool(rng.random() < theta[k] * alpha[p])))
    return rows


# --- boundaries ---------------------------------------------------------------------------------------
def test_no_clicks_gives_the_lowest_grade_on_any_scale() -> None:
    impressions, feedback = logs([(f"r{i}", "drill", p, k, False) for i in range(20) for k, p in enumerate("ab", 1)])
    for scale in (HOME_DEPOT, ZERO_TO_FOUR):
        judged, _ = im.search_judgments(impressions, feedback, scale)
        assert list(judged[s.RELEVANCE]) == [scale.min, scale.min]
        assert (judged[im.CLICKS] == 0).all() and (judged[im.IMPRESSIONS] == 20).all()


def test_an_item_clicked_every_time_at_the_top_gets_the_top_grade_with_growing_confidence() -> None:
    few = logs([(f"r{i}", "drill", "a", 1, True) for i in range(5)])
    many = logs([(f"r{i}", "drill", "a", 1, True) for i in range(500)])
    j_few, _ = im.search_judgments(*few, ZERO_TO_FOUR, half_confidence=5.0)
    j_many, _ = im.search_judgments(*many, ZERO_TO_FOUR, half_confidence=5.0)
    assert j_many[s.RELEVANCE].iloc[0] == ZERO_TO_FOUR.max
    assert j_few[s.RELEVANCE].iloc[0] < ZERO_TO_FOUR.max  # the prior: 5 examinations are not certainty
    assert j_few[im.CONFIDENCE].iloc[0] == pytest.approx(0.5)  # 5 examinations at theta_1 = 1
    assert j_many[im.CONFIDENCE].iloc[0] == pytest.approx(500 / 505)


def test_the_output_is_the_canonical_judgments_table_keyed_by_the_normalised_query() -> None:
    impressions, feedback = logs([("r1", "  Cordless   DRILL ", "a", 1, True), ("r2", "cordless drill", "a", 1, False)])
    judged, _ = im.search_judgments(impressions, feedback, HOME_DEPOT)
    assert list(judged.columns) == list(im.JUDGMENT_COLUMNS)
    assert judged[s.QUERY].tolist() == ["cordless drill"]
    assert judged[s.QUERY_ID].tolist() == [s.query_id_of("cordless drill")]
    assert judged[im.IMPRESSIONS].tolist() == [2] and judged[im.CLICKS].tolist() == [1]
    assert s.conform(s.JUDGMENTS, judged)[s.RELEVANCE].between(HOME_DEPOT.min, HOME_DEPOT.max).all()


def test_empty_logs_give_an_empty_table_with_the_columns() -> None:
    impressions, feedback = logs([])
    judged, theta = im.search_judgments(impressions, feedback, HOME_DEPOT)
    assert judged.empty and list(judged.columns) == list(im.JUDGMENT_COLUMNS) and theta.size == 0


def test_an_answer_that_showed_nothing_makes_no_pair() -> None:
    impressions, feedback = logs([("r1", "drill", "a", 1, True)])
    nothing = pd.DataFrame({im.REQUEST_ID: ["r2"], im.TS: 1.0, s.QUERY: ["no such thing"], s.PRODUCT_ID: [None]})
    nothing[im.POSITION] = pd.array([None], dtype="Int64")  # how the store returns an empty answer
    judged, _ = im.search_judgments(pd.concat([impressions, nothing], ignore_index=True), feedback, HOME_DEPOT)
    assert judged[s.QUERY].tolist() == ["drill"]


def test_feedback_on_an_unknown_request_or_a_product_not_shown_is_ignored() -> None:
    impressions, _ = logs([("r1", "drill", "a", 1, False)])
    feedback = pd.DataFrame(
        {
            im.REQUEST_ID: ["nope", "r1"],
            im.EVENT: [im.CLICK, im.CLICK],
            s.PRODUCT_ID: ["a", "zzz"],
            im.POSITION: [1, 1],
            im.TS: [1.0, 1.0],
        }
    )
    judged, _ = im.search_judgments(impressions, feedback, HOME_DEPOT)
    assert judged[im.CLICKS].tolist() == [0] and judged[s.RELEVANCE].tolist() == [HOME_DEPOT.min]


def test_the_grade_map_inverts_the_replays_click_model() -> None:
    for scale in (HOME_DEPOT, ZERO_TO_FOUR, RelevanceScale(min=0.0, max=3.0, relevant_from=2.0, gain="exponential")):
        grades = np.linspace(scale.min, scale.max, 9)
        alphas = [attractiveness(scale.gain_of(g), scale.max_gain) for g in grades]
        np.testing.assert_allclose(im.grade_of_attractiveness(alphas, scale), grades, atol=1e-9)


# --- the click model ----------------------------------------------------------------------------------
def test_pbm_recovers_known_examination_and_the_attractiveness_order() -> None:
    theta = np.array([1.0, 0.6, 0.4, 0.25, 0.15])
    alpha = {"a": 0.9, "b": 0.7, "c": 0.5, "d": 0.3, "e": 0.1}
    rows = pbm_logs(theta, alpha, n_lists=4000, seed=0)
    fit = im.fit_pbm([(r[1], r[2]) for r in rows], [r[3] for r in rows], [r[4] for r in rows], prior_strength=0.0)
    np.testing.assert_allclose(fit.examination, theta, atol=0.05)
    got = dict(zip(fit.pairs["key"].map(lambda k: k[1]), fit.pairs["alpha"], strict=True))
    assert sorted(got, key=got.get, reverse=True) == list("abcde")
    np.testing.assert_allclose([got[p] for p in alpha], list(alpha.values()), atol=0.05)


def test_position_bias_is_removed_for_the_same_attractiveness_at_different_positions() -> None:
    # For "saw", "top" is always shown first and "low" always fifth, both with attractiveness 0.5: raw
    # click rates differ by theta_1 / theta_5 = 5, the debiased estimates must not. The examination
    # curve is shared by every query, and "drill"'s lists (shuffled: other model versions, swaps)
    # identify it.
    theta = np.array([1.0, 0.5, 0.33, 0.25, 0.2, 0.17])
    alpha = {"top": 0.5, "low": 0.5, "x": 0.8, "y": 0.6, "z": 0.4, "w": 0.2}
    rows = pbm_logs(theta, alpha, n_lists=6000, seed=1, fixed={"top": 1, "low": 5}, query="saw")
    rows += pbm_logs(theta, dict(zip("abcdef", (0.9, 0.7, 0.5, 0.3, 0.2, 0.1), strict=True)), 6000, 2)
    impressions, feedback = logs(rows)
    judged, _ = im.search_judgments(impressions, feedback, HOME_DEPOT, prior_strength=0.0)
    saw = judged[judged[s.QUERY] == "saw"].set_index(s.PRODUCT_ID)
    ctr, grade = saw[im.CLICKS] / saw[im.IMPRESSIONS], saw[s.RELEVANCE]
    assert ctr["top"] > 3 * ctr["low"]
    assert abs(grade["top"] - grade["low"]) < 0.1
    assert grade["x"] > grade["top"] > grade["w"]


def test_purchases_and_add_to_carts_count_as_clicks() -> None:
    impressions, _ = logs([("r1", "drill", "a", 1, False), ("r1", "drill", "b", 2, False)])
    feedback = pd.DataFrame(
        {im.REQUEST_ID: ["r1"], im.EVENT: [im.PURCHASE], s.PRODUCT_ID: ["b"], im.POSITION: [2], im.TS: [1.0]}
    )
    assert im.clicked_impressions(impressions, feedback).tolist() == [False, True]


# --- leakage guards -----------------------------------------------------------------------------------
def test_judgments_of_valid_and_test_queries_never_leave_the_guard() -> None:
    queries = pd.DataFrame(
        {s.QUERY_ID: ["1", "2", "3"], s.QUERY: ["angle bracket", "deck screws", "wood glue"]}
    ).assign(**{s.SPLIT: ["train", "valid", "test"]})
    # "Deck  Screws" is the valid query typed differently; the last is unseen but hashes to bucket 9 (test)
    unseen_test_bucket = next(f"new query {i}" for i in range(1000) if query_bucket(f"new query {i}") == 9)
    unseen_train_bucket = next(f"new query {i}" for i in range(1000) if query_bucket(f"new query {i}") < 8)
    judged = pd.DataFrame(
        {
            s.QUERY: ["angle bracket", "Deck  Screws", "wood glue", unseen_test_bucket, unseen_train_bucket],
            s.PRODUCT_ID: "p",
            s.RELEVANCE: 3.0,
        }
    )
    kept = im.drop_held_out(judged, im.held_out_queries(queries), 10, [8, 9])
    assert kept[s.QUERY].tolist() == ["angle bracket", unseen_train_bucket]


def test_recommendation_events_at_or_after_the_cutoff_never_train() -> None:
    events = pd.DataFrame(
        {
            s.USER_ID: ["u", "u", "u"],
            s.PRODUCT_ID: ["a", "b", "c"],
            s.EVENT_TYPE: [im.PURCHASE, im.ADD_TO_CART, im.PURCHASE],
            s.TIMESTAMP: pd.to_datetime(["2011-11-08 23:59:59", "2011-11-08 00:00:00", "2011-11-09 00:00:00"]),
            s.QUANTITY: 1.0,
            s.PRICE: 2.0,
            s.SESSION_ID: "feedback:r",
            im.WEIGHT: [1.0, 0.3, 1.0],
        }
    )
    trained = im.training_events(events, pd.Timestamp("2011-11-09"), [im.PURCHASE, im.ADD_TO_CART])
    assert trained[s.PRODUCT_ID].tolist() == ["a", "b"]
    assert (trained[s.EVENT_TYPE] == s.PURCHASE).all() and trained[s.QUANTITY].tolist() == [1.0, 0.3]
    only_purchases = im.training_events(events, pd.Timestamp("2012-01-01"), [im.PURCHASE])
    assert only_purchases[s.PRODUCT_ID].tolist() == ["a", "c"]


# --- recommendation events ----------------------------------------------------------------------------
def test_recommendation_feedback_becomes_weighted_canonical_events() -> None:
    impressions = pd.DataFrame(
        {
            im.REQUEST_ID: ["r1", "r1", "r2"],
            im.TS: 1.0,
            s.QUERY: None,
            im.USER: ["u1", "u1", None],
            s.PRODUCT_ID: ["a", "b", "a"],
            im.POSITION: [1, 2, 1],
        }
    )
    feedback = pd.DataFrame(
        {
            im.REQUEST_ID: ["r1", "r1", "r1", "r1", "r2", "r1"],
            im.EVENT: [im.CLICK, im.ADD_TO_CART, im.PURCHASE, im.PURCHASE, im.PURCHASE, im.PURCHASE],
            s.PRODUCT_ID: ["a", "a", "a", "a", "a", "zzz"],
            im.POSITION: [1, 1, 1, 1, 1, 3],
            im.TS: [1320796800.0] * 6,  # 2011-11-09 00:00 UTC
        }
    )
    out = im.recommend_events(impressions, feedback, {im.PURCHASE: 1.0, im.ADD_TO_CART: 0.3}, {"a": 2.5})
    # the click has no weight, the repeated purchase counts once, the anonymous request and the product
    # never shown are dropped
    assert list(out.columns) == list(im.EVENT_COLUMNS)
    assert sorted(zip(out[s.EVENT_TYPE], out[im.WEIGHT], strict=True)) == [(im.ADD_TO_CART, 0.3), (im.PURCHASE, 1.0)]
    assert (out[s.USER_ID] == "u1").all() and (out[s.PRICE] == 2.5).all()
    assert (out[s.TIMESTAMP] == pd.Timestamp("2011-11-09")).all()
    s.conform(s.EVENTS, out)


# --- the training switch ------------------------------------------------------------------------------
def test_merge_keeps_human_grades_at_weight_zero_and_adds_pairs_only_feedback_saw() -> None:
    human = pd.DataFrame({s.QUERY_ID: ["q", "q"], s.QUERY: "drill", s.PRODUCT_ID: ["a", "b"], s.RELEVANCE: [3.0, 1.0]})
    implicit = pd.DataFrame(
        {
            s.QUERY_ID: ["q", "q", "q2"],
            s.QUERY: ["drill", "drill", "saw"],
            s.PRODUCT_ID: ["a", "c", "d"],
            s.RELEVANCE: [1.0, 2.0, 3.0],
            im.CONFIDENCE: [0.5, 0.9, 0.1],
        }
    )
    pd.testing.assert_frame_equal(im.merge_judgments(human, implicit, weight=0.0), human)
    merged = im.merge_judgments(human, implicit, weight=1.0, min_confidence=0.2).set_index(s.PRODUCT_ID)
    assert merged[s.RELEVANCE].to_dict() == {"a": 2.0, "b": 1.0, "c": 2.0}  # a: halfway (confidence 0.5)
    assert merged.loc["c", s.QUERY] == "drill"
