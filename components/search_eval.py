"""EVALUATION.md's search metrics per query, their summaries with bootstrap intervals, and slices.

Per-query arrays are returned (NaN where the protocol skips a query) so the gates can run paired
tests over the same queries; summaries use components.metrics only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from components import schema as s
from components.bm25 import tokenize
from components.config import RelevanceScale
from components.metrics import expected_random_ndcg_at_k, ndcg_at_k, recall_at_k, rerank_order, summarize

NDCG_K = 10
RECALL_K = 100
HEAD_MIN_QUERIES = 20  # a query is "head" when its rarest token occurs in at least this many train queries


def judged_gains(judgments: pd.DataFrame, scale: RelevanceScale | None = None) -> dict[str, dict[str, float]]:
    """query_id -> {product_id: gain}; the gain comes from the judgment scale (default EVALUATION.md's:
    relevance - 1)."""
    gain = (scale or RelevanceScale()).gain_of(judgments[s.RELEVANCE].astype(float))
    out: dict[str, dict[str, float]] = {}
    for q, p, g in zip(judgments[s.QUERY_ID].astype(str), judgments[s.PRODUCT_ID].astype(str), gain, strict=True):
        out.setdefault(q, {})[p] = float(g)
    return out


def relevant_sets(gains: Mapping[str, Mapping[str, float]], scale: RelevanceScale | None = None) -> dict[str, set[str]]:
    """query_id -> products graded at or above the scale's relevant_from (EVALUATION.md: relevance >= 2.5)."""
    at = (scale or RelevanceScale()).relevant_gain
    return {q: {p for p, g in pg.items() if g >= at} for q, pg in gains.items()}


def full_catalog_metrics(
    query_ids: Sequence[str],
    rankings: Sequence[Sequence[str]],
    gains: Mapping[str, Mapping[str, float]],
    scale: RelevanceScale | None = None,
) -> pd.DataFrame:
    """Per query: ndcg_at_10 and recall_at_100 of a full-catalog ranking (product ids best first).

    `gains` as judged_gains gives them for the same `scale`. A ranking needs at least its top 100;
    NaN where the protocol skips the query.
    """
    relevant = relevant_sets(gains, scale)
    rows = []
    for q, ranked in zip(query_ids, rankings, strict=True):
        g = gains.get(q, {})
        rows.append(
            {
                "ndcg_at_10": ndcg_at_k(ranked, g, NDCG_K),
                "recall_at_100": recall_at_k(ranked, relevant.get(q, set()), RECALL_K),
            }
        )
    return pd.DataFrame(rows, index=pd.Index(list(query_ids), name=s.QUERY_ID))


def rerank_ndcg(
    query_ids: Sequence[str], judged_scores: Sequence[Mapping[str, float]], gains: Mapping[str, Mapping[str, float]]
) -> np.ndarray:
    """Re-rank NDCG@10: each query's judged products ordered by score, ties by product id ascending."""
    out = []
    for q, sc in zip(query_ids, judged_scores, strict=True):
        g = gains.get(q, {})
        pids = sorted(g)
        order = rerank_order(pids, [float(sc.get(p, 0.0)) for p in pids])
        out.append(ndcg_at_k(order, g, NDCG_K))
    return np.asarray(out, dtype=float)


def random_rerank_ndcg(query_ids: Sequence[str], gains: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """Exact expected re-rank NDCG@10 of a random order, per query."""
    return np.asarray([expected_random_ndcg_at_k(list(gains.get(q, {}).values()), NDCG_K) for q in query_ids])


def summarize_metrics(columns: Mapping[str, Sequence[float]], resamples: int = 1000, seed: int = 0) -> dict:
    """{name: mean, name_ci: [lo, hi], name_n: units} for each per-query column (NaNs skipped)."""
    out: dict = {}
    for name, values in columns.items():
        mean, ci, n = summarize(values, resamples, seed)
        out[name] = round(mean, 4) if not np.isnan(mean) else None
        out[f"{name}_ci"] = [round(ci[0], 4), round(ci[1], 4)] if not np.isnan(ci[0]) else None
        out[f"{name}_n"] = n
    return out


def query_length_bucket(query: str) -> str:
    """'1', '2', '3' or '4+' words (whitespace-separated, after normalisation)."""
    n = len(str(query).split())
    return "4+" if n >= 4 else str(max(n, 1))


def token_query_counts(train_queries: Sequence[str]) -> Counter:
    """Document frequency of each BM25 token over the distinct train queries."""
    counts: Counter = Counter()
    for q in set(train_queries):
        counts.update(set(tokenize(q)))
    return counts


def head_or_tail(query: str, counts: Counter, min_queries: int = HEAD_MIN_QUERIES) -> str:
    """'head' if every token of the query occurs in >= min_queries train queries, else 'tail'.

    Defined on the rarest token because one unseen word (a model number, a typo) is what makes a
    query hard; a query with no token at all is 'tail'.
    """
    toks = set(tokenize(query))
    return "head" if toks and min(counts.get(t, 0) for t in toks) >= min_queries else "tail"


def judged_pool(
    gains: Mapping[str, float], train_products: set[str] | frozenset[str], scale: RelevanceScale | None = None
) -> str:
    """'never_judged' when none of the query's relevant products was judged for any train query, else 'judged'.

    gains: the query's {product_id: gain} (judged_gains); relevant = the scale's relevant_from
    (EVALUATION.md: relevance >= 2.5), or every positive-gain product when the query has no relevant
    one; a query without any positive gain is 'none' (the metrics skip it). train_products: every
    product with a train judgment, whatever its grade. The slice shows what the judgment-derived
    features are worth where they carry nothing about the right answers.
    """
    at = (scale or RelevanceScale()).relevant_gain
    good = [p for p, g in gains.items() if g >= at] or [p for p, g in gains.items() if g > 0]
    if not good:
        return "none"
    return "judged" if any(p in train_products for p in good) else "never_judged"


def slice_means(per_query: pd.DataFrame, slice_col: str, metric_cols: Sequence[str]) -> pd.DataFrame:
    """Mean of each metric column per slice value (NaNs skipped), plus the number of queries."""
    grouped = per_query.groupby(slice_col, observed=True)
    out = grouped[list(metric_cols)].mean()
    out["queries"] = grouped.size()
    return out
