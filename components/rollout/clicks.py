"""Click models: simulated shopper clicks on a ranked list with graded relevance (the replay's feedback)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np


def attractiveness(gain: float, max_gain: float = 2.0) -> float:
    """P(click | examined) of a result with graded gain in [0, max_gain] (ERR's (2^g - 1) / 2^max)."""
    g = min(max(float(gain), 0.0), max_gain)
    return (2.0**g - 1.0) / (2.0**max_gain)


def simulate_clicks(
    gains: Sequence[float],
    rng: np.random.Generator,
    model: Literal["cascade", "pbm"] = "cascade",
    k: int = 10,
    eta: float = 1.0,
    max_gain: float = 2.0,
) -> list[int]:
    """0-based ranks clicked in a top-k list whose results have graded `gains` (0 for unjudged).

    cascade: the shopper scans down and stops at the first click (Craswell et al. 2008).
    pbm: position-based, rank r is examined with probability 1 / (r + 1)^eta, clicks independent.
    """
    clicks: list[int] = []
    for r, g in enumerate(list(gains)[:k]):
        p = attractiveness(g, max_gain)
        if model == "cascade":
            if rng.random() < p:
                clicks.append(r)
                break
        elif model == "pbm":
            if rng.random() < (1.0 / (r + 1) ** eta) * p:
                clicks.append(r)
        else:
            raise ValueError(f"unknown click model {model!r}; expected cascade or pbm")
    return clicks
