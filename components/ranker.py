"""LightGBM LambdaRank, shared by the search and recommendation re-rankers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.config_base import LambdaRankParams


def group_sizes(group_keys: Sequence) -> np.ndarray:
    """Sizes of consecutive runs of equal keys (rows must be sorted by group)."""
    keys = np.asarray(group_keys)
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return np.diff(np.concatenate([[0], change, [len(keys)]]))


def train_lambdarank(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    groups_valid: np.ndarray,
    feature_names: Sequence[str],
    config: LambdaRankParams,
    seed: int,
    *,
    eval_at: int,
    label_gain: Sequence[float] | None = None,
    callbacks: Sequence = (),
):
    """Fit a ranking booster (`config.objective`, LambdaRank by default) with early stopping on NDCG@`eval_at`
    over the validation groups.

    Labels are non-negative integer grades; groups are per-query (or per-user) row counts in order.
    `label_gain`: gain of each grade (None: LightGBM's 2^g - 1). `callbacks` run after early stopping
    (e.g. a training-budget stop). Returns the lightgbm.Booster at its best iteration.
    """
    import lightgbm as lgb

    params = {
        "objective": config.objective,
        "metric": "ndcg",
        "eval_at": [eval_at],
        "num_leaves": config.num_leaves,
        "learning_rate": config.learning_rate,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "seed": seed,
        "deterministic": True,
        "num_threads": 0,
        "verbosity": -1,
    }
    if label_gain is not None:
        params["label_gain"] = list(label_gain)
    train = lgb.Dataset(x_train, y_train, group=groups_train, feature_name=list(feature_names))
    valid = lgb.Dataset(x_valid, y_valid, group=groups_valid, reference=train)
    return lgb.train(
        params,
        train,
        num_boost_round=config.n_estimators,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False), *callbacks],
    )


def contributions(booster, x: np.ndarray, feature_names: Sequence[str], top: int = 5) -> list[list[tuple[str, float]]]:
    """Per-row top feature contributions (LightGBM pred_contrib), largest magnitude first."""
    contrib = booster.predict(x, pred_contrib=True)[:, :-1]  # last column is the bias
    out = []
    for row in contrib:
        idx = np.argsort(-np.abs(row))[:top]
        out.append([(feature_names[i], float(row[i])) for i in idx])
    return out
