"""FAISS index: exact below the threshold, HNSW above, recall against exact search."""

from __future__ import annotations

import numpy as np

from components.ann import ann_recall, build_index, index_kind, read_index, search_index, write_index


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_index_below_threshold_has_recall_one() -> None:
    rng = np.random.default_rng(0)
    emb, q = _unit(rng, 200), _unit(rng, 20)
    index = build_index(emb, exact_below=1000)
    assert index_kind(index) == "exact"
    assert ann_recall(index, emb, q, 10) == 1.0
    scores, ids = search_index(index, q[:1], 5)
    np.testing.assert_allclose(scores[0], np.sort(emb @ q[0])[::-1][:5], rtol=1e-5)
    assert ids[0, 0] == int(np.argmax(emb @ q[0]))


def test_hnsw_above_threshold_recall_is_measured() -> None:
    rng = np.random.default_rng(1)
    emb, q = _unit(rng, 2000), _unit(rng, 50)
    index = build_index(emb, exact_below=1000, hnsw_m=16, ef_construction=64, ef_search=64)
    assert index_kind(index) == "hnsw"
    recall = ann_recall(index, emb, q, 10)
    assert 0.8 < recall <= 1.0


def test_k_larger_than_catalog_returns_every_product_without_padding() -> None:
    emb = _unit(np.random.default_rng(2), 3)
    for exact_below in (10, 1):  # exact and HNSW
        scores, ids = search_index(build_index(emb, exact_below=exact_below), emb[:1], 10)
        assert ids.shape == (1, 3) and sorted(ids[0].tolist()) == [0, 1, 2]


def test_index_round_trips_through_faiss_format(tmp_path) -> None:
    emb = _unit(np.random.default_rng(3), 50)
    index = build_index(emb, exact_below=10)
    write_index(index, tmp_path / "index.faiss")
    again = read_index(tmp_path / "index.faiss")
    assert search_index(again, emb[:2], 5)[1].tolist() == search_index(index, emb[:2], 5)[1].tolist()
