"""Ranking metrics exactly as EVALUATION.md defines them, plus bootstrap intervals.

Per-query (or per-user) functions return one float; aggregation and intervals are separate so
gates can run paired tests over the same per-query arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def discounts(k: int) -> np.ndarray:
    """1 / log2(i + 1) for ranks i = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2))


def dcg_at_k(gains_in_rank_order: Sequence[float], k: int) -> float:
    """Σ gain_i / log2(i + 1) over the first k ranks (linear gains, as EVALUATION.md)."""
    g = np.asarray(gains_in_rank_order, dtype=float)[:k]
    return float(np.dot(g, discounts(len(g))))


def ndcg_at_k(ranked_ids: Sequence, gains: Mapping, k: int) -> float:
    """NDCG@k of a ranking against judged gains; unjudged ids gain 0.

    The ideal DCG comes from the judged gains sorted descending. Returns NaN when the ideal DCG
    is 0 (EVALUATION.md skips such queries).
    """
    ideal = dcg_at_k(sorted(gains.values(), reverse=True), k)
    if ideal <= 0:
        return float("nan")
    return dcg_at_k([gains.get(i, 0.0) for i in list(ranked_ids)[:k]], k) / ideal


def recall_at_k(ranked_ids: Sequence, relevant: set, k: int) -> float:
    """|top-k ∩ relevant| / |relevant|; NaN when nothing is relevant (query skipped)."""
    if not relevant:
        return float("nan")
    return len(set(list(ranked_ids)[:k]) & relevant) / len(relevant)


def capped_recall_at_k(ranked_ids: Sequence, target: set, k: int) -> float:
    """|top-k ∩ target| / min(k, |target|) — recommendation recall; NaN for an empty target."""
    if not target:
        return float("nan")
    return len(set(list(ranked_ids)[:k]) & target) / min(k, len(target))


def binary_ndcg_at_k(ranked_ids: Sequence, target: set, k: int) -> float:
    """NDCG@k with binary gains; ideal DCG from min(k, |target|) hits. NaN for an empty target."""
    if not target:
        return float("nan")
    hits = [1.0 if i in target else 0.0 for i in list(ranked_ids)[:k]]
    return dcg_at_k(hits, k) / float(discounts(min(k, len(target))).sum())


def rerank_order(product_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Judged products by descending score, ties broken by product id ascending (EVALUATION.md)."""
    return [p for _, p in sorted(zip(scores, product_ids, strict=True), key=lambda t: (-t[0], t[1]))]


def expected_random_ndcg_at_k(gains: Sequence[float], k: int) -> float:
    """Exact expected NDCG@k of a uniformly random order of the judged items.

    Every rank holds each item with equal probability, so E[gain at rank i] is the mean gain.
    """
    g = np.asarray(gains, dtype=float)
    ideal = dcg_at_k(np.sort(g)[::-1], k)
    if ideal <= 0:
        return float("nan")
    return float(g.mean() * discounts(min(k, len(g))).sum() / ideal)


def bootstrap_ci(
    values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over units (queries or users); NaNs are dropped."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> tuple[float, tuple[float, float], int]:
    """(mean, 95% bootstrap interval, number of units) over non-NaN values."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    mean = float(v.mean()) if len(v) else float("nan")
    return mean, bootstrap_ci(v, resamples, seed), int(len(v))


def paired_bootstrap(
    challenger: Sequence[float], champion: Sequence[float], resamples: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float], float]:
    """Paired bootstrap of the mean difference challenger - champion over the same units.

    Returns (mean difference, 95% interval, one-sided p-value that the difference is <= 0).
    Units where either side is NaN are dropped from both.
    """
    a, b = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    if len(d) == 0:
        return float("nan"), (float("nan"), float("nan")), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return (
        float(d.mean()),
        (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))),
        float((means <= 0).mean()),
    )
