"""train_recommend: model selection on the valid fold, then the served model fitted on all history before T.

Folds (EVALUATION.md, with extra folds so the re-ranker is always scored on users and windows it
never learned from; W = selection_window_days, n = ranker_folds):
  selection folds: history before T_valid - j * W, labels the next W (j = n .. 1)
  valid fold:     history before T_valid, labels [T_valid, T)
  test fold:      history before T (the test window is never read by this step)

1. Baselines' hyper-parameters (item-kNN k, EASE lambda) are picked on the valid fold.
2. The re-ranker's valid number: generators fitted on each selection fold's history, ranker trained on
   their labels, applied to the valid fold (generators refitted on the valid history).
3. The served model: ranker trained on the selection and valid folds stacked; generators refitted on
   all history before T.

Outputs:
  models/recommend/bundle/          see artifacts/recommend_bundle.py
  models/recommend/selection.json   chosen hyper-parameters and every valid-fold number
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta

import numpy as np
import pandas as pd

from artifacts.files import content_hash, staged_dir, write_json
from artifacts.paths import Paths
from artifacts.recommend_bundle import save_recommend_bundle
from components import schema as s
from components.budget import Deadline
from components.config import Params
from components.config_recommend import RecommendParams
from components.rec_baselines import BASELINES, baseline_rankings
from components.rec_eval import K, evaluate_rankings, evaluation_fold, evaluation_targets
from components.rec_features import RecState, fit_rec_state
from components.recommend_model import RecommendModel, train_rec_ranker, user_profiles
from pipelines.budget import lightgbm_budget_callback, training_deadline
from pipelines.common import load_params, mlflow_run
from pipelines.io import read_fold, read_table

log = logging.getLogger(__name__)

STEP = "train_recommend"
MIN_FOLD_USERS = 2  # a ranker fold needs two users (one held out for early stopping)


def fold_cutoffs(paths: Paths) -> dict[str, pd.Timestamp]:
    folds = json.loads((paths.split / "recommend" / "folds.json").read_text())
    return {name: pd.Timestamp(f["cutoff"]) for name, f in folds.items()}


def embed_catalog(catalog: pd.DataFrame, rp: RecommendParams, device) -> np.ndarray:
    """(len(catalog), dim) text embeddings of the item titles (description appended when present)."""
    from components.encoder import encode_texts, load_encoder

    text = catalog[s.TITLE].fillna("").astype(str)
    if s.DESCRIPTION in catalog.columns:
        text = text + ". " + catalog[s.DESCRIPTION].fillna("").astype(str)
    model, tokenizer = load_encoder(rp.text_encoder, device)
    return encode_texts(model, tokenizer, text.tolist(), batch_size=rp.training.text_batch_size, device=device)


def fit_state(
    history: pd.DataFrame,
    catalog: pd.DataFrame,
    text: np.ndarray,
    as_of: pd.Timestamp,
    params: Params,
    device,
    deadline: Deadline | None = None,
    fit_encoder: bool = True,
) -> RecState:
    rp = params.recommend
    should_stop = deadline.expired if deadline is not None else None
    return fit_rec_state(
        history,
        catalog,
        text,
        np.datetime64(as_of.to_datetime64()),
        rp.training.mf,
        rp.training.user_encoder,
        rp.candidates,
        params.seed,
        device,
        should_stop,
        fit_encoder,
    )


def selection_folds(
    hist_v: pd.DataFrame,
    catalog: pd.DataFrame,
    text: np.ndarray,
    valid_cutoff: pd.Timestamp,
    params: Params,
    device,
    deadline: Deadline | None = None,
) -> tuple[list[tuple[RecState, dict[str, set[str]]]], list[str], list[str]]:
    """The re-ranker's selection folds, oldest first: history before T_valid - j * window, labels the next
    window (j = ranker_folds .. 1). They only supply ranker rows, so their states skip the user encoder.
    Returns ([(state, targets)], cutoffs used, cutoffs skipped for a history too short)."""
    rp = params.recommend
    window = timedelta(days=rp.selection_window_days)
    folds, cutoffs, skipped = [], [], []
    for j in range(rp.ranker_folds, 0, -1):
        sel_cut = valid_cutoff - j * window
        when = hist_v[s.TIMESTAMP]
        early, late = hist_v.loc[when < sel_cut], hist_v.loc[(when >= sel_cut) & (when < sel_cut + window)]
        targets = evaluation_targets(early, late)
        if len(targets) < MIN_FOLD_USERS:  # a history shorter than the folds asked for
            skipped.append(str(sel_cut))
            continue
        state = fit_state(early, catalog, text, sel_cut, params, device, deadline, fit_encoder=False)
        folds.append((state, targets))
        cutoffs.append(str(sel_cut))
    if skipped:
        log.warning(
            "%d of %d ranker folds skipped (fewer than %d users with history before and purchases in the "
            "window): cutoffs %s",
            len(skipped),
            rp.ranker_folds,
            MIN_FOLD_USERS,
            ", ".join(skipped),
        )
    if not folds:
        raise ValueError(
            f"no ranker fold has {MIN_FOLD_USERS} users who bought before and inside a "
            f"{rp.selection_window_days}-day window before the valid cutoff {valid_cutoff}: the history is "
            "too short for recommend.selection_window_days"
        )
    return folds, cutoffs, skipped


def bought_sets(state: RecState, users: list[str]) -> dict[str, set[str]]:
    """{user: items bought in the state's history} (empty for unknown users)."""
    index = {u: i for i, u in enumerate(state.users)}
    baskets = state.stat("baskets")
    return {u: set(state.items[baskets[index[u]].indices]) if u in index else set() for u in users}


def score_model(model: RecommendModel, targets: dict[str, set[str]]) -> dict[str, dict]:
    """Valid-fold summaries of the re-ranker and its learned generators, on the same users."""
    users = list(targets)
    bought = bought_sets(model.state, users)
    n = int(model.state.rankable.sum())
    rankings = {
        "rerank": model.rank_users(users, K),
        "tifu_knn": model.generator_ranking("tifu", users, K),
        "mf": model.generator_ranking("mf", users, K),
        "user_encoder": model.generator_ranking("encoder", users, K),
    }
    return {name: evaluate_rankings(r, targets, bought, n).summary() for name, r in rankings.items()}


def add_feedback_events(
    paths: Paths, rp: RecommendParams, hist_v: pd.DataFrame, hist_t: pd.DataFrame, cut: dict[str, pd.Timestamp]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both folds' histories plus the feedback events strictly before each fold's cutoff, as purchases
    weighted by recommend.feedback_events.weights (the test window is never touched)."""
    from components.feedback.implicit import training_events

    extra = pd.read_parquet(paths.feedback_events)
    kinds = [e for e, w in rp.feedback_events.weights.items() if w > 0]
    return tuple(
        pd.concat([hist, training_events(extra, cut[fold], kinds)], ignore_index=True)
        for hist, fold in ((hist_v, "valid"), (hist_t, "test"))
    )


def select_baselines(history: pd.DataFrame, window: pd.DataFrame, rp: RecommendParams) -> dict:
    """Valid-fold scores of every baseline; item-kNN k and EASE lambda chosen by valid NDCG@20."""
    fold = evaluation_fold(history, window)

    def summary(name: str, **kw) -> dict:
        ranked = baseline_rankings(fold.inter, fold.users, name, K, **kw)
        return evaluate_rankings(ranked, fold.targets, fold.bought, fold.n_items).summary()

    grid_knn = {k: summary("item_knn", knn_k=k) for k in rp.knn_k_grid}
    grid_ease = {lam: summary("ease", ease_lambda=lam) for lam in rp.ease_lambda_grid}
    best_k = max(grid_knn, key=lambda k: (grid_knn[k]["ndcg_at_20"], -k))
    best_lam = max(grid_ease, key=lambda lam: (grid_ease[lam]["ndcg_at_20"], -lam))
    valid = {name: summary(name) for name in BASELINES if name not in ("item_knn", "ease")}
    valid["item_knn"], valid["ease"] = grid_knn[best_k], grid_ease[best_lam]
    return {
        "item_knn_k": int(best_k),
        "ease_lambda": float(best_lam),
        "grid": {
            "item_knn": {str(k): v["ndcg_at_20"] for k, v in grid_knn.items()},
            "ease": {str(k): v["ndcg_at_20"] for k, v in grid_ease.items()},
        },
        "valid": valid,
    }


def run(params: Params, paths: Paths) -> dict:
    """Select on valid, fit the served model on history before T, write the bundle; returns selection."""
    import mlflow
    import torch

    from components.encoder import pick_device

    rp = params.recommend
    prof = rp.training
    if prof.torch_threads:
        torch.set_num_threads(prof.torch_threads)
    device = pick_device(rp.device)
    # The charter's training budget (unlimited outside the lifecycle): epochs and boosting stop at it.
    deadline = training_deadline(device.type)
    stop_boosting = [lightgbm_budget_callback(deadline)]
    catalog_path = paths.validated / "recommend" / "catalog.parquet"
    inputs = [catalog_path, paths.split / "recommend" / "valid", paths.split / "recommend" / "test" / "history.parquet"]
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        timings[f"time_{name}_s"] = round(time.perf_counter() - since, 2)
        log.info("%s took %.1f s", name, timings[f"time_{name}_s"])
        return time.perf_counter()

    with mlflow_run(STEP, params, paths, inputs=inputs, sections=("recommend",)):
        mlflow.set_tag("device", str(device))
        catalog = read_table(paths.validated / "recommend", s.CATALOG)
        cut = fold_cutoffs(paths)
        hist_v, win_v = read_fold(paths, "valid")
        hist_t, _ = read_fold(paths, "test", window=False)  # the test window is evaluation's alone
        if rp.feedback_events.enabled:  # served-recommendation purchases (pipelines/implicit_judgments.py)
            hist_v, hist_t = add_feedback_events(paths, rp, hist_v, hist_t, cut)
        t = time.perf_counter()
        text = embed_catalog(catalog, rp, device)
        t = lap("embed", t)

        selection = select_baselines(hist_v, win_v, rp)
        t = lap("baselines", t)

        folds, cutoffs, skipped = selection_folds(hist_v, catalog, text, cut["valid"], params, device, deadline)
        booster_sel, info_sel = train_rec_ranker(folds, rp.ranker, params.seed, stop_boosting)
        t = lap("selection_fold", t)

        state_v = fit_state(hist_v, catalog, text, cut["valid"], params, device, deadline)
        targets_v = evaluation_targets(hist_v, win_v)
        selection["valid"].update(score_model(RecommendModel(state_v, booster_sel), targets_v))
        selection["selection_fold"] = {"cutoffs": cutoffs, "skipped_cutoffs": skipped, **info_sel}
        # The served ranker learns from every fold before T (never the test window): more users and
        # more moments in time; the valid number above comes from the selection folds alone.
        booster, info = train_rec_ranker([*folds, (state_v, targets_v)], rp.ranker, params.seed, stop_boosting)
        selection["final_ranker"] = info
        t = lap("valid_fold", t)

        state_t = fit_state(hist_t, catalog, text, cut["test"], params, device, deadline)
        model = RecommendModel(state_t, booster, user_profiles(state_t, catalog.set_index(s.PRODUCT_ID)[s.TITLE]))
        t = lap("test_fold_fit", t)

        extra = {
            "data_version": content_hash(*inputs),
            "item_knn_k": selection["item_knn_k"],
            "ease_lambda": selection["ease_lambda"],
            "profile": rp.profile,
            "device": str(device),
            "text_encoder": rp.text_encoder,
            "seed": params.seed,
        }
        with staged_dir(paths.bundle("recommend")) as out:
            save_recommend_bundle(model, out, extra)
        timings["time_total_s"] = round(time.perf_counter() - started, 2)
        selection["timings"] = timings
        selection["budget"] = deadline.summary()
        if deadline.expired():
            log.warning("training budget reached (%s): epochs and boosting were cut short", deadline.summary())
        write_json(paths.selection, selection)

        flat = {
            f"valid_{m}_{k}": v for m, d in selection["valid"].items() for k, v in d.items() if isinstance(v, float)
        }
        mlflow.log_metrics({**flat, **timings, **{f"final_{k}": float(v) for k, v in info.items()}})
        mlflow.log_dict(selection, "selection.json")
        log.info(
            "valid: rerank Recall@20 %.4f, own_frequency %.4f; total %.0f s",
            selection["valid"]["rerank"]["recall_at_20"],
            selection["valid"]["own_frequency"]["recall_at_20"],
            timings["time_total_s"],
        )
    return selection


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())
