"""Ranker features, train-split priors, query expansion, RRF and label mapping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components import schema as s
from components.bm25 import fit_bm25
from components.search_features import (
    FEATURE_GROUPS,
    FEATURE_NAMES,
    FEATURE_PROVENANCE,
    JUDGMENT_FEATURES,
    ProductPriors,
    expanded_texts,
    feature_names_of,
    feature_provenance,
    gains_to_labels,
    linear_label_gain,
    pair_features,
    product_priors,
    rrf_merge,
    stem,
    text_token_sets,
)


@pytest.fixture
def catalog() -> pd.DataFrame:
    return pd.DataFrame(
        {
            s.PRODUCT_ID: ["p1", "p2", "p3", "p4"],
            s.TITLE: ["cordless drill 18v", "drill bit set", "garden hose 50 ft", ""],
        }
    )


@pytest.fixture
def judgments() -> pd.DataFrame:
    return pd.DataFrame(
        {
            s.QUERY_ID: ["q1", "q1", "q2"],
            s.QUERY: ["power drill", "power drill", "water hose"],
            s.PRODUCT_ID: ["p1", "p2", "p3"],
            s.RELEVANCE: [3.0, 1.0, 2.5],
        }
    )


def _features(catalog, query, cand, priors=None, dense=None, idf=True):
    titles = catalog[s.TITLE].tolist()
    index = fit_bm25(titles)
    bm = index.score(query)
    dense = np.zeros(len(cand), dtype=np.float32) if dense is None else dense
    lengths = np.array([len(t.split()) for t in titles], dtype=np.float32)
    return pair_features(
        query,
        np.asarray(cand),
        bm,
        bm,
        dense,
        float(dense.max()) if len(dense) else 0.0,
        text_token_sets(titles),
        lengths,
        priors or ProductPriors.empty(len(titles)),
        None,
        titles,
        index.idf_of if idf else None,
    )


def test_no_candidates_gives_empty_matrix(catalog) -> None:
    assert _features(catalog, "drill", []).shape == (0, len(FEATURE_NAMES))


def test_query_with_no_tokens_has_zero_lexical_features(catalog) -> None:
    x = _features(catalog, "!!! ???", [0, 1])
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    for name in ("bm25", "bm25_rel", "overlap", "all_tokens_match", "last_token_match", "query_tokens"):
        assert np.all(x[:, col[name]] == 0), name
    assert np.all(np.isnan(x[:, col["numeric_overlap"]]))  # no number in the query
    assert np.all(np.isnan(x[:, col["price"]]))  # catalog has no price


def test_overlap_and_matches_exact_values(catalog) -> None:
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    x = _features(catalog, "cordless drill 20v", [0, 1, 3])
    np.testing.assert_allclose(x[:, col["overlap"]], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(x[:, col["all_tokens_match"]], [0, 0, 0])
    np.testing.assert_allclose(x[:, col["last_token_match"]], [0, 0, 0])
    np.testing.assert_allclose(x[:, col["numeric_overlap"]], [0, 0, 0])
    x = _features(catalog, "drill 18v", [0])
    assert x[0, col["all_tokens_match"]] == 1 and x[0, col["numeric_overlap"]] == 1
    assert x[0, col["bm25_rel"]] == pytest.approx(1.0)  # p1 is the best BM25 match
    assert x[0, col["query_tokens"]] == 2 and x[0, col["title_tokens"]] == 3


def test_forgiving_matches_meet_plurals_misspellings_and_word_order(catalog) -> None:
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    # p1 "cordless drill 18v", p2 "drill bit set", p3 "garden hose 50 ft", p4 "" (no text)
    x = _features(catalog, "cordles drills", [0, 1, 2, 3])
    np.testing.assert_allclose(x[:, col["overlap"]], [0, 0, 0, 0])  # no exact token in common
    np.testing.assert_allclose(x[:, col["stem_overlap"]], [0.5, 0.5, 0, 0])  # drills -> drill
    np.testing.assert_allclose(x[:, col["prefix_overlap"]], [1.0, 0.5, 0, 0])  # "cord", "dril"
    np.testing.assert_allclose(x[:, col["last_stem_match"]], [1, 1, 0, 0])
    np.testing.assert_allclose(x[:, col["first_token_match"]], [0, 0, 0, 0])
    x = _features(catalog, "drill bit", [0, 1])
    np.testing.assert_allclose(x[:, col["bigram_overlap"]], [0, 1])  # adjacent, in order, in p2 only
    np.testing.assert_allclose(x[:, col["first_token_match"]], [1, 1])
    assert np.isnan(_features(catalog, "hoses", [2])[0, col["bigram_overlap"]])  # one token: no pair
    assert _features(catalog, "hoses", [2])[0, col["stem_overlap"]] == 1
    empty = _features(catalog, "!!!", [0])
    assert empty[0, col["stem_overlap"]] == 0 and np.isnan(empty[0, col["bigram_overlap"]])


def test_idf_weighs_rare_words_and_joined_words_match(catalog) -> None:
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    idf = fit_bm25(catalog[s.TITLE].tolist()).idf_of(["drill", "cordless", "hose", "never"])
    assert idf[1] > idf[0]  # "drill" is in two of four titles, "cordless" in one
    assert idf[3] > idf[1]  # a word no title holds counts as the rarest
    # p1 "cordless drill 18v", p2 "drill bit set", p3 "garden hose 50 ft"
    x = _features(catalog, "cordless drills hose", [0, 1, 2])
    total = idf[0] + idf[1] + idf[2]
    np.testing.assert_allclose(x[:, col["idf_overlap"]], [(idf[0] + idf[1]) / total, idf[0] / total, idf[2] / total])
    # without idf every word weighs one: the share of the query's distinct words met
    flat = _features(catalog, "cordless drills hose", [0], idf=False)
    assert flat[0, col["idf_overlap"]] == pytest.approx(2 / 3)
    # "garden hose" written as one word, "drillbit" for "drill bit"
    x = _features(catalog, "gardenhose drillbit set", [1, 2])
    np.testing.assert_allclose(x[:, col["compound_match"]], [1 / 3, 1 / 3])
    x = _features(catalog, "garden hose", [2])
    assert x[0, col["compound_match"]] == 0  # the words match as they are: nothing joined
    x = _features(catalog, "cord less drill", [0])
    assert x[0, col["compound_match"]] == pytest.approx(2 / 3)  # "cord" + "less" = "cordless"
    empty = _features(catalog, "!!!", [0])
    assert empty[0, col["idf_overlap"]] == 0 and empty[0, col["compound_match"]] == 0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("drills", "drill"),
        ("batteries", "battery"),
        ("boxes", "box"),
        ("inches", "inch"),
        ("lighting", "light"),
        ("painted", "paint"),
        ("glasses", "glass"),
        ("hoses", "hose"),
        ("strings", "string"),
        ("ceilings", "ceiling"),
    ],
)
def test_stem_makes_common_inflections_meet(a, b) -> None:
    assert stem(a) == stem(b)


@pytest.mark.parametrize("word", ["glass", "bus", "axis", "led", "bed", "hose", "gas"])
def test_stem_leaves_short_words_and_non_plurals_alone(word) -> None:
    assert stem(word) == word


def test_dense_gap_is_relative_to_the_query_best(catalog) -> None:
    col = FEATURE_NAMES.index("dense_gap")
    x = _features(catalog, "drill", [0, 1], dense=np.array([0.9, 0.5], dtype=np.float32))
    np.testing.assert_allclose(x[:, col], [0.0, -0.4], atol=1e-6)


def test_priors_count_mean_max_and_unjudged(catalog, judgments) -> None:
    pr = product_priors(judgments, catalog[s.PRODUCT_ID].tolist())
    np.testing.assert_allclose(pr.count, [1, 1, 1, 0])
    np.testing.assert_allclose(pr.mean_gain[:3], [2.0, 0.0, 1.5])
    assert np.isnan(pr.mean_gain[3]) and np.isnan(pr.max_gain[3])
    empty = product_priors(judgments.iloc[:0], catalog[s.PRODUCT_ID].tolist())
    assert empty.count.sum() == 0


def test_expansion_appends_only_well_judged_queries(catalog, judgments) -> None:
    texts = expanded_texts(catalog[s.TITLE].tolist(), catalog[s.PRODUCT_ID].tolist(), judgments, 2.0)
    assert texts == ["cordless drill 18v power drill", "drill bit set", "garden hose 50 ft water hose", ""]


def test_rrf_fuses_ranks() -> None:
    ids, scores = rrf_merge([np.array([1, 2, 3]), np.array([3, 1])], k=60)
    assert ids.tolist() == [1, 3, 2]
    assert scores[0] == pytest.approx(1 / 61 + 1 / 62)
    assert rrf_merge([], 60)[0].tolist() == []


def test_labels_are_integer_grades_with_linear_gain() -> None:
    assert gains_to_labels(np.array([0.0, 0.33, 0.67, 1.0, 2.0]), 7).tolist() == [0, 1, 2, 3, 6]
    assert linear_label_gain(7) == pytest.approx((0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2))


def test_labels_follow_the_judgment_scale_so_top_grades_stay_apart() -> None:
    from components.config import RelevanceScale

    scale = RelevanceScale(min=0, max=4, relevant_from=3)
    gains = scale.gain_of(np.array([0.0, 1.0, 2.0, 3.0, 4.0]))
    assert gains_to_labels(gains, 5, scale.max_gain).tolist() == [0, 1, 2, 3, 4]
    assert gains_to_labels(gains, 5).tolist() == [0, 2, 4, 4, 4]  # the 1..3 default would clip 2, 3 and 4
    assert linear_label_gain(5, scale.max_gain) == pytest.approx((0, 1, 2, 3, 4))


def test_priors_use_the_scales_gain(catalog, judgments) -> None:
    from components.config import RelevanceScale

    zero_based = judgments.assign(**{s.RELEVANCE: judgments[s.RELEVANCE] - 1})
    pr = product_priors(zero_based, catalog[s.PRODUCT_ID].tolist(), RelevanceScale(min=0, max=2, relevant_from=1.5))
    np.testing.assert_allclose(pr.mean_gain[:3], [2.0, 0.0, 1.5])


def test_feature_groups_partition_the_features() -> None:
    """Every feature is in exactly one group, every group has a provenance, log_priors is empty by default."""
    listed = [f for names in FEATURE_GROUPS.values() for f in names]
    assert sorted(listed) == sorted(FEATURE_NAMES) and len(listed) == len(set(listed))
    assert set(FEATURE_PROVENANCE) == set(FEATURE_GROUPS)
    assert FEATURE_GROUPS["log_priors"] == ()
    assert JUDGMENT_FEATURES == {
        "bm25_expanded",
        "bm25_expanded_rel",
        "prior_count",
        "prior_mean_gain",
        "prior_max_gain",
    }


def test_feature_names_of_groups_keeps_column_order_and_rejects_unknown_groups() -> None:
    content = feature_names_of(["content"])
    assert not JUDGMENT_FEATURES & set(content)
    assert list(content) == [f for f in FEATURE_NAMES if f in content]
    assert feature_names_of(["judgment_priors", "content", "log_priors"]) == FEATURE_NAMES
    assert feature_names_of(["content", "log_priors"]) == content
    with pytest.raises(ValueError, match="unknown feature groups"):
        feature_names_of(["content", "clicks"])
    prov = feature_provenance(["bm25", "prior_count"])
    assert prov["bm25"]["group"] == "content" and prov["prior_count"]["group"] == "judgment_priors"
