"""Recommendation baselines over a user x item purchase matrix: popularity, own frequency, item kNN, EASE.

Every scorer returns a dense float32 matrix (n_rows, n_items) over the same item universe (the items
seen in the history), so the evaluation ranks every item (EVALUATION.md: full ranking, no sampling).
Defined behaviour for messy event logs (see `prepare_events`): only purchases count, exact duplicate
events collapse to one, events are re-sorted by time, so input order never changes a score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components import schema as s

# Scores of a secondary key are squeezed below this, so they only break ties of the primary key.
_TIE = 1e-3


def prepare_events(events: pd.DataFrame) -> pd.DataFrame:
    """Purchases only, exact duplicates dropped, sorted by time (stable, then by user and product).

    A duplicate is the same (user, product, timestamp, session) seen twice: a re-sent log line, not a
    second purchase. Rows missing a session id get one per (user, timestamp), i.e. one basket.
    """
    ev = events.loc[events[s.EVENT_TYPE] == s.PURCHASE].copy()
    if s.SESSION_ID not in ev.columns:
        ev[s.SESSION_ID] = pd.NA
    missing = ev[s.SESSION_ID].isna()
    if missing.any():
        ev.loc[missing, s.SESSION_ID] = (
            ev.loc[missing, s.USER_ID].astype(str) + "@" + ev.loc[missing, s.TIMESTAMP].astype(str)
        )
    ev = ev.drop_duplicates([s.USER_ID, s.PRODUCT_ID, s.TIMESTAMP, s.SESSION_ID])
    ev = ev.sort_values([s.TIMESTAMP, s.USER_ID, s.PRODUCT_ID], kind="stable").reset_index(drop=True)
    for col in (s.USER_ID, s.PRODUCT_ID, s.SESSION_ID):
        ev[col] = ev[col].astype(str)
    return ev


@dataclass(frozen=True)
class Interactions:
    """A purchase history as a sparse matrix.

    users: (n_users,) user ids, row order. items: (n_items,) item ids, column order, sorted ascending.
    counts: (n_users, n_items) CSR, the number of distinct baskets (sessions) holding the item.
    """

    users: np.ndarray
    items: np.ndarray
    counts: sp.csr_matrix

    @property
    def binary(self) -> sp.csr_matrix:
        b = self.counts.copy()
        b.data = np.ones_like(b.data, dtype=np.float32)
        return b

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.users)}

    def item_index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.items)}


def build_interactions(events: pd.DataFrame, items: Sequence[str] | None = None) -> Interactions:
    """Interactions from prepared events; `items` fixes the column universe (default: items in events).

    Events on items outside `items` are dropped (they cannot be ranked).
    """
    baskets = events.drop_duplicates([s.USER_ID, s.PRODUCT_ID, s.SESSION_ID])
    item_ids = np.array(sorted(set(baskets[s.PRODUCT_ID])) if items is None else list(items), dtype=object)
    user_ids = np.array(sorted(set(baskets[s.USER_ID])), dtype=object)
    col = pd.Index(item_ids).get_indexer(baskets[s.PRODUCT_ID])
    row = pd.Index(user_ids).get_indexer(baskets[s.USER_ID])
    keep = col >= 0
    counts = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (row[keep], col[keep])), shape=(len(user_ids), len(item_ids))
    )
    counts.sum_duplicates()
    return Interactions(user_ids, item_ids, counts)


def popularity(inter: Interactions) -> np.ndarray:
    """(n_items,) number of distinct buyers per item."""
    return np.asarray(inter.binary.sum(axis=0)).ravel().astype(np.float32)


def _tie_break(values: np.ndarray) -> np.ndarray:
    """Map non-negative values to [0, _TIE), order-preserving, for use as a tie-breaker."""
    top = float(values.max()) if values.size else 0.0
    return (values / (top + 1.0) * _TIE).astype(np.float32)


def popularity_scores(inter: Interactions, rows: np.ndarray) -> np.ndarray:
    """Global popularity, the same ranking for every row: (len(rows), n_items)."""
    return np.broadcast_to(popularity(inter), (len(rows), len(inter.items))).copy()


def own_frequency_scores(inter: Interactions, rows: np.ndarray, recency: sp.csr_matrix | None = None) -> np.ndarray:
    """The user's own basket count per item, ties broken by recency (if given) then popularity.

    recency: optional (n_users, n_items) CSR of values in (0, 1], larger = bought more recently.
    Items never bought fall back to popularity order below every bought item.
    """
    scores = inter.counts[rows].toarray().astype(np.float32)
    if recency is not None:
        scores += recency[rows].toarray().astype(np.float32) * 0.5
    return scores + _tie_break(popularity(inter))[None, :]


def item_knn_similarity(inter: Interactions, k: int) -> sp.csr_matrix:
    """Item-item cosine similarity over binary purchase vectors, top-k neighbours per item kept.

    Returns (n_items, n_items) CSR where row i holds i's k nearest neighbours (self excluded).
    """
    x = inter.binary.tocsc().astype(np.float32)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    xn = x @ sp.diags(1.0 / norms)
    sim = (xn.T @ xn).toarray()
    np.fill_diagonal(sim, 0.0)
    return topk_sparse(sim, k)


def topk_sparse(dense: np.ndarray, k: int) -> sp.csr_matrix:
    """Keep each row's k largest positive entries of a dense matrix, as CSR."""
    n = dense.shape[1]
    k = min(k, n)
    idx = np.argpartition(-dense, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(dense, idx, axis=1)
    rows = np.repeat(np.arange(dense.shape[0]), k)
    keep = vals.ravel() > 0
    return sp.csr_matrix((vals.ravel()[keep], (rows[keep], idx.ravel()[keep])), shape=dense.shape)


def item_knn_scores(inter: Interactions, rows: np.ndarray, sim: sp.csr_matrix) -> np.ndarray:
    """Σ over the user's bought items j of sim(j, i): (len(rows), n_items), popularity tie-break."""
    scores = np.asarray((inter.binary[rows] @ sim).todense(), dtype=np.float32)
    return scores + _tie_break(popularity(inter))[None, :] * 1e-3


def ease_weights(inter: Interactions, lam: float) -> np.ndarray:
    """EASE (Steck 2019): B = I - P diag(1/diag(P)), P = (XᵀX + λI)⁻¹, diag(B) = 0. (n_items, n_items)."""
    x = inter.binary
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def ease_scores(inter: Interactions, rows: np.ndarray, b: np.ndarray) -> np.ndarray:
    """X[rows] @ B: (len(rows), n_items)."""
    return np.asarray(inter.binary[rows] @ b, dtype=np.float32)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, best first; ties go to the lower column index.

    scores: (n_rows, n_items). Returns (n_rows, min(k, n_items)) int64.
    """
    k = min(k, scores.shape[1])
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < scores.shape[1]
        else np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    )
    vals = np.take_along_axis(scores, part, axis=1)
    # lexsort: last key is primary -> sort by -score, then by column index for deterministic ties.
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


BASELINES = ("popularity", "own_frequency", "item_knn", "ease")


def baseline_rankings(
    inter: Interactions, user_ids: list[str], name: str, k: int, knn_k: int = 10, ease_lambda: float = 200.0
) -> dict[str, list[str]]:
    """{user: top-k item ids} of one baseline for users present in `inter` (batched, dense scores)."""
    index = inter.user_index()
    rows = np.array([index[u] for u in user_ids], dtype=np.int64)
    model = None
    if name == "item_knn":
        model = item_knn_similarity(inter, knn_k)
    elif name == "ease":
        model = ease_weights(inter, ease_lambda)
    out: dict[str, list[str]] = {}
    for start in range(0, len(rows), 512):
        r = rows[start : start + 512]
        if name == "popularity":
            sc = popularity_scores(inter, r)
        elif name == "own_frequency":
            sc = own_frequency_scores(inter, r)
        elif name == "item_knn":
            sc = item_knn_scores(inter, r, model)
        elif name == "ease":
            sc = ease_scores(inter, r, model)
        else:
            raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
        top = top_k(sc, k)
        for j, u in enumerate(user_ids[start : start + 512]):
            out[u] = list(inter.items[top[j]])
    return out
