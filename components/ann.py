"""FAISS inner-product index over unit-length product embeddings (so scores are cosines).

Exact (IndexFlatIP) below a size threshold, where brute force is both exact and fast enough;
HNSW above it. `ann_recall` measures the built index against exact search on probe queries, so
every build logs how much the approximation costs.
"""

from __future__ import annotations

import numpy as np


def build_index(
    embeddings: np.ndarray,
    exact_below: int = 100_000,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
):
    """A FAISS index over float32 (n, dim) rows; row i of the index is product i of the caller's order."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = x.shape
    if n < exact_below:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    index.add(x)
    return index


def index_kind(index) -> str:
    """'exact' or 'hnsw'."""
    import faiss

    return "hnsw" if isinstance(index, faiss.IndexHNSWFlat) else "exact"


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, min(k, ntotal)), best first; never returns FAISS's -1 padding."""
    k = min(k, index.ntotal)
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if k <= 0 or len(q) == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    scores, ids = index.search(q, k)
    if (ids < 0).any():  # HNSW may return fewer than k; fill from exact search on those rows
        exact = exact_search(index.reconstruct_n(0, index.ntotal), q, k)
        bad = (ids < 0).any(axis=1)
        scores[bad], ids[bad] = exact[0][bad], exact[1][bad]
    return scores, ids


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k inner product (the reference for ann_recall)."""
    import faiss

    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))


def ann_recall(index, embeddings: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k over the probe queries (1.0 for an exact index)."""
    if len(queries) == 0 or index.ntotal == 0:
        return float("nan")
    _, approx = search_index(index, queries, k)
    _, exact = exact_search(embeddings, queries, k)
    kk = exact.shape[1]
    return float(np.mean([len(set(a) & set(e)) / kk for a, e in zip(approx, exact, strict=True)]))


def write_index(index, path: str) -> None:
    import faiss

    faiss.write_index(index, str(path))


def read_index(path: str):
    import faiss

    return faiss.read_index(str(path))
