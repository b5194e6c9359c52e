"""bench/search_ablation.py's comparison on synthetic rows: leaving out the one informative feature shows."""

from __future__ import annotations

import numpy as np
import pytest

from bench import search_ablation as ab
from components.config_base import LambdaRankParams


def _rows(seed: int, queries: int = 60, per_query: int = 20):
    rng = np.random.default_rng(seed)
    n = queries * per_query
    signal = rng.random(n)
    y = (signal > 0.8).astype(np.int32) + (signal > 0.95)  # grades 0..2 follow the signal
    x = np.column_stack([signal + rng.normal(0, 0.05, n), rng.random(n), rng.random(n)]).astype(np.float32)
    return x, y, np.full(queries, per_query)


def test_leaving_out_the_informative_feature_scores_lower_for_every_seed() -> None:
    rows = (*_rows(0), *_rows(1))
    config = LambdaRankParams(n_estimators=30, min_data_in_leaf=5, early_stopping_rounds=10)
    scores = ab.compare(rows, ["signal", "noise_a", "noise_b"], ["signal"], config, [0, 1], (0.0, 1.0, 2.0))
    assert set(scores) == {"with", "without"} and set(scores["with"]) == {0, 1}
    for seed in (0, 1):
        assert scores["with"][seed] > 0.9 and scores["without"][seed] < scores["with"][seed] - 0.2
    assert ab.compare(rows, ["signal", "noise_a", "noise_b"], ["noise_a"], config, [0], (0.0, 1.0, 2.0))["without"][
        0
    ] == pytest.approx(scores["with"][0], abs=0.05)  # dropping noise changes little


def test_unknown_or_no_features_to_leave_out_are_refused() -> None:
    rows = (*_rows(0, 4), *_rows(1, 4))
    config = LambdaRankParams(n_estimators=2)
    with pytest.raises(ValueError, match="unknown: \\['clicks'\\]"):
        ab.compare(rows, ["signal", "noise_a", "noise_b"], ["clicks"], config, [0], (0.0, 1.0, 2.0))
    with pytest.raises(ValueError, match="must name some"):
        ab.compare(rows, ["signal", "noise_a", "noise_b"], [], config, [0], (0.0, 1.0, 2.0))
