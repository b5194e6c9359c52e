"""EVALUATION.md's recommendation protocol over ranked lists: per-user arrays plus summaries.

Evaluated users have at least one history event and one window event; the target is the set of
distinct items they bought in the window (repeats included, already-bought items never filtered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components import schema as s
from components.metrics import binary_ndcg_at_k, capped_recall_at_k, summarize
from components.rec_baselines import Interactions, build_interactions, prepare_events

K = 20
# Buyers with at least this many baskets before the cutoff are "heavy". 5 is close to the median
# over evaluated Online Retail users, so both slices hold hundreds of users.
HEAVY_MIN_BASKETS = 5


def evaluation_targets(history: pd.DataFrame, window: pd.DataFrame) -> dict[str, set[str]]:
    """{user_id: set of items bought in the window} for users present in both frames (sorted by id)."""
    hist_users = set(history[s.USER_ID].astype(str))
    win = window.loc[window[s.EVENT_TYPE] == s.PURCHASE]
    win = win.loc[win[s.USER_ID].astype(str).isin(hist_users)]
    grouped = {u: set(map(str, g)) for u, g in win.groupby(win[s.USER_ID].astype(str))[s.PRODUCT_ID]}
    return {u: grouped[u] for u in sorted(grouped)}


@dataclass(frozen=True)
class EvalFold:
    """One fold as the protocol scores it: the prepared history, its interactions (the ranked item
    universe), each evaluated user's target set and what they bought before the cutoff."""

    events: pd.DataFrame
    inter: Interactions
    targets: dict[str, set[str]]
    bought: dict[str, set[str]]

    @property
    def users(self) -> list[str]:
        return list(self.targets)

    @property
    def n_items(self) -> int:
        return len(self.inter.items)


def evaluation_fold(history: pd.DataFrame, window: pd.DataFrame) -> EvalFold:
    """The fold of a (history, window) pair: evaluated users are those with events in both."""
    events = prepare_events(history)
    inter = build_interactions(events)
    targets = evaluation_targets(events, window)
    index = inter.user_index()
    bought = {u: set(inter.items[inter.counts[index[u]].indices]) for u in targets}
    return EvalFold(events, inter, targets, bought)


def buyer_segments(
    history: pd.DataFrame, users: Sequence[str], heavy_min_baskets: int = HEAVY_MIN_BASKETS
) -> np.ndarray:
    """ "light"/"heavy" per user by the number of distinct baskets (sessions) in the history."""
    baskets = history.groupby(history[s.USER_ID].astype(str))[s.SESSION_ID].nunique()
    n = baskets.reindex(list(users)).fillna(0).to_numpy()
    return np.where(n >= heavy_min_baskets, "heavy", "light")


@dataclass(frozen=True)
class RankingReport:
    """Per-user metric arrays (aligned with `users`) and catalog-level summaries of one model."""

    users: list[str]
    recall: np.ndarray
    ndcg: np.ndarray
    coverage: float  # distinct items in any top-k / items ranked
    repeat_share: float  # share of top-k slots holding an item the user bought before

    def summary(self, resamples: int = 1000, seed: int = 0) -> dict[str, object]:
        r, r_ci, n = summarize(self.recall, resamples, seed)
        g, g_ci, _ = summarize(self.ndcg, resamples, seed)
        return {
            "recall_at_20": r,
            "recall_at_20_ci": list(r_ci),
            "ndcg_at_20": g,
            "ndcg_at_20_ci": list(g_ci),
            "coverage": self.coverage,
            "repeat_share": self.repeat_share,
            "new_share": 1.0 - self.repeat_share,
            "users": n,
        }


def evaluate_rankings(
    ranked: Mapping[str, Sequence[str]],
    targets: Mapping[str, set[str]],
    bought: Mapping[str, set[str]],
    n_items_ranked: int,
    k: int = K,
) -> RankingReport:
    """Score top-k lists against targets.

    ranked: {user: item ids best first (at least k, or the whole universe)} for every target user.
    bought: {user: items bought in the history} for the repeat share. A user missing from `ranked`
    is an error, never silently skipped: the protocol scores every evaluated user.
    """
    users = list(targets)
    missing = [u for u in users if u not in ranked]
    if missing:
        raise KeyError(f"{len(missing)} evaluated users have no ranking, e.g. {missing[:3]}")
    recall = np.array([capped_recall_at_k(ranked[u], targets[u], k) for u in users])
    ndcg = np.array([binary_ndcg_at_k(ranked[u], targets[u], k) for u in users])
    shown: set[str] = set()
    repeats = slots = 0
    for u in users:
        top = list(ranked[u])[:k]
        shown.update(top)
        own = bought.get(u, set())
        repeats += sum(1 for i in top if i in own)
        slots += len(top)
    return RankingReport(
        users, recall, ndcg, len(shown) / max(n_items_ranked, 1), repeats / slots if slots else float("nan")
    )


def slice_summary(report: RankingReport, segments: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean Recall@20 / NDCG@20 per segment label (e.g. light/heavy), with the user count."""
    out = {}
    for seg in sorted(set(segments.tolist())):
        m = segments == seg
        out[seg] = {
            "recall_at_20": float(np.nanmean(report.recall[m])),
            "ndcg_at_20": float(np.nanmean(report.ndcg[m])),
            "users": int(m.sum()),
        }
    return out


def repeat_target_share(targets: Mapping[str, set[str]], bought: Mapping[str, set[str]]) -> float:
    """Share of (user, target item) pairs already bought in the history (repeat buying)."""
    pairs = sum(len(t) for t in targets.values())
    rep = sum(len(t & bought.get(u, set())) for u, t in targets.items())
    return rep / pairs if pairs else float("nan")
