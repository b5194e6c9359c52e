"""The recommendation re-ranker on VALID: Recall@20 for one or more ranker settings and seeds.

    python -m bench.rec_ranker ['{"objective": "rank_xendcg"}' ...] [--seeds 0 1 2]

Fits the selection folds' states and the valid fold's state once, as pipelines.train_recommend does,
then trains the ranker on the selection folds once per setting (JSON overrides of params.yaml's
recommend.ranker; none: params.yaml as is) and seed, and prints the valid Recall@20 of its ranking:
with the setting '{}' and the params' seed, train_recommend's own valid number. The seed moves the
number by a few thousandths, so compare settings over several. Decide on these numbers, never on test.
Needs the outputs of `dvc repro implicit_judgments` (the split and the feedback events).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from artifacts.paths import Paths

log = logging.getLogger(__name__)


def ranker_recall(params, paths: Paths, settings: list[dict], seeds: list[int]) -> dict[str, list[float]]:
    """{<setting as JSON>: [valid Recall@20 of the re-ranker for each seed]}."""
    import torch

    from components import schema as s
    from components.config import parse_params
    from components.rec_eval import K, evaluate_rankings, evaluation_targets
    from components.recommend_model import RecommendModel, train_rec_ranker
    from pipelines.io import read_fold, read_table
    from pipelines.train_recommend import (
        add_feedback_events,
        bought_sets,
        embed_catalog,
        fit_state,
        fold_cutoffs,
        selection_folds,
    )

    rp = params.recommend
    if rp.training.torch_threads:
        torch.set_num_threads(rp.training.torch_threads)
    cpu = torch.device("cpu")
    catalog = read_table(paths.validated / "recommend", s.CATALOG)
    cut = fold_cutoffs(paths)
    history, window = read_fold(paths, "valid")
    if rp.feedback_events.enabled:  # as train_recommend: served-recommendation purchases before the cutoff
        history, _ = add_feedback_events(paths, rp, history, read_fold(paths, "test", window=False)[0], cut)
    text = embed_catalog(catalog, rp, cpu)
    folds, _, _ = selection_folds(history, catalog, text, cut["valid"], params, cpu)
    state = fit_state(history, catalog, text, cut["valid"], params, cpu, fit_encoder=False)
    targets = evaluation_targets(history, window)
    users = list(targets)
    bought, n_items = bought_sets(state, users), int(state.rankable.sum())
    raw = params.model_dump()
    out: dict[str, list[float]] = {}
    for setting in settings:
        tuned = parse_params(  # a misspelt key is an error
            {**raw, "recommend": {**raw["recommend"], "ranker": {**raw["recommend"]["ranker"], **setting}}}
        )
        name = json.dumps(setting, sort_keys=True)
        out[name] = []
        for seed in seeds:
            started = time.perf_counter()
            booster, info = train_rec_ranker(folds, tuned.recommend.ranker, seed)
            ranked = RecommendModel(state, booster).rank_users(users, K)
            out[name].append(evaluate_rankings(ranked, targets, bought, n_items).summary()["recall_at_20"])
            log.info(
                "%s seed %d: %.4f (%d trees, %.0f s)",
                name,
                seed,
                out[name][-1],
                info["ranker_best_iteration"],
                time.perf_counter() - started,
            )
    return out


def main() -> None:
    from pipelines.common import configure_logging, load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="JSON overrides of recommend.ranker, one setting each")
    parser.add_argument("--seeds", nargs="+", type=int, help="ranker seeds (default: the params' seed)")
    args = parser.parse_args()
    configure_logging()
    params = load_params()
    settings = [json.loads(s) for s in args.settings] or [{}]
    for name, values in ranker_recall(params, Paths(), settings, args.seeds or [params.seed]).items():
        mean = sum(values) / len(values)
        print(f"{name:50s} valid Recall@20 {' / '.join(f'{v:.4f}' for v in values)} (mean {mean:.4f})")


if __name__ == "__main__":
    main()
