"""BM25: EVALUATION.md's formula (k1 = 1.2, b = 0.75, lower-cased alphanumeric tokens)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.bm25 import BM25Index, fit_bm25, tokenize, top_k


@pytest.fixture
def titles() -> list[str]:
    return ["Cordless Drill 18V", "drill bit set", "garden hose", "", "Café table, 2-pack"]


def test_tokenize_lowercases_and_splits_on_non_alphanumerics() -> None:
    assert tokenize("Cordless DRILL, 18V!") == ["cordless", "drill", "18v"]
    assert tokenize("") == [] and tokenize(None) == [] and tokenize("!!! ...") == []
    assert tokenize("Café 2-pack") == ["caf", "2", "pack"]  # non-ASCII letters separate tokens


def test_query_without_known_tokens_scores_zero(titles) -> None:
    index = fit_bm25(titles)
    assert np.all(index.score("zzz unknown") == 0)
    assert np.all(index.score("") == 0)


def test_empty_title_never_matches(titles) -> None:
    assert fit_bm25(titles).score("drill table garden")[3] == 0


def test_matches_hand_computed_bm25(titles) -> None:
    index = fit_bm25(titles, k1=1.2, b=0.75)
    n, df = 5, 2  # "drill" in two documents
    lengths = [3, 3, 2, 0, 4]
    avg = sum(lengths) / n
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    expected = idf * 1 * 2.2 / (1 + 1.2 * (1 - 0.75 + 0.75 * lengths[0] / avg))
    assert index.score("drill")[0] == pytest.approx(expected, rel=1e-5)
    # a repeated query term counts twice
    assert index.score("drill drill")[0] == pytest.approx(2 * expected, rel=1e-5)


def test_shorter_document_scores_higher_for_same_tf() -> None:
    index = fit_bm25(["drill", "drill press stand heavy duty"])
    s = index.score("drill")
    assert s[0] > s[1] > 0


def test_score_many_equals_score(titles) -> None:
    index = fit_bm25(titles)
    queries = ["drill", "garden hose", "nothing"]
    many = index.score_many(queries).toarray()
    for i, q in enumerate(queries):
        np.testing.assert_allclose(many[i], index.score(q), rtol=1e-6)


def test_round_trip_through_arrays(titles) -> None:
    index = fit_bm25(titles)
    again = BM25Index.from_arrays(index.to_arrays())
    np.testing.assert_allclose(again.score("drill bit"), index.score("drill bit"))


def test_top_k_orders_best_first_and_caps_at_n() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9])
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 0]
    assert top_k(scores, 0).tolist() == []
