"""Shadow agreement: how far the challenger's top-k lists agree with the champion's on the same requests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def overlap_at_k(a: Sequence[str], b: Sequence[str], k: int = 10) -> float:
    """|top-k(a) ∩ top-k(b)| / k, in [0, 1]; 1 for identical top-k lists of length k."""
    return len(set(list(a)[:k]) & set(list(b)[:k])) / k if k > 0 else 0.0


def rank_correlation(a: Sequence[str], b: Sequence[str], k: int = 10) -> float:
    """Spearman correlation of the two top-k rankings over their union (items missing from a list rank k+1).

    1 for identical lists, -1 for exactly reversed ones; nan when the union has fewer than 2 items.
    """
    a, b = list(a)[:k], list(b)[:k]
    union = list(dict.fromkeys(a + b))
    if len(union) < 2:
        return float("nan")
    ra = np.array([a.index(x) + 1 if x in a else k + 1 for x in union], dtype=float)
    rb = np.array([b.index(x) + 1 if x in b else k + 1 for x in union], dtype=float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], k: int = 10) -> dict[str, float]:
    """Mean overlap@k and rank correlation over (champion list, challenger list) pairs."""
    if not pairs:
        return {"pairs": 0, "overlap_at_10": float("nan"), "rank_correlation": float("nan")}
    ov = [overlap_at_k(a, b, k) for a, b in pairs]
    rc = [r for r in (rank_correlation(a, b, k) for a, b in pairs) if not math.isnan(r)]
    return {
        "pairs": len(pairs),
        "overlap_at_10": float(np.mean(ov)),
        "rank_correlation": float(np.mean(rc)) if rc else float("nan"),
    }
