"""The user encoder alone on VALID: Recall@20 of its ranking for one or more settings.

    python -m bench.user_encoder ['{"epochs": 10, "horizon_days": 0}' ...]

Fits the state on the valid fold's history (before T_valid) once, as pipelines.train_recommend does,
then trains the encoder once per setting (JSON overrides of params.yaml's user_encoder for the
profile in use; none: params.yaml as is) and prints the valid Recall@20 of the encoder as a generator
alone, beside the state's item-kNN and TIFU-kNN generators. Decide on these numbers, never on test.
Needs the outputs of `dvc repro split`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from artifacts.paths import Paths

log = logging.getLogger(__name__)


def encoder_recall(params, paths: Paths, settings: list[dict]) -> dict[str, float]:
    """{"knn": r, "tifu_knn": r, <setting as JSON>: r, ...}: valid Recall@20 of each ranking alone
    ("knn": the state's item-kNN generator over `candidates.knn_neighbours`, not the tuned baseline)."""
    import torch

    from components import schema as s
    from components.rec_baselines import prepare_events
    from components.rec_eval import K, evaluate_rankings, evaluation_targets
    from components.rec_features import user_baskets
    from components.recommend_model import RecommendModel
    from components.user_encoder import encode_users, item_vectors, train_user_encoder
    from pipelines.io import read_fold, read_table
    from pipelines.train_recommend import bought_sets, embed_catalog, fit_state, fold_cutoffs

    rp = params.recommend
    if rp.training.torch_threads:
        torch.set_num_threads(rp.training.torch_threads)
    cpu = torch.device("cpu")
    history, window = read_fold(paths, "valid")
    catalog = read_table(paths.validated / "recommend", s.CATALOG)
    text = embed_catalog(catalog, rp, cpu)
    state = fit_state(history, catalog, text, fold_cutoffs(paths)["valid"], params, cpu, fit_encoder=False)
    known = set(state.users)  # built once: inside the comprehension it would be rebuilt for every user
    targets = {u: t for u, t in evaluation_targets(history, window).items() if u in known}
    users = list(targets)
    bought, n_items = bought_sets(state, users), int(state.rankable.sum())
    model = RecommendModel(state)

    def recall(generator: str) -> float:
        ranked = model.generator_ranking(generator, users, K)
        return evaluate_rankings(ranked, targets, bought, n_items).summary()["recall_at_20"]

    out = {"knn": recall("knn"), "tifu_knn": recall("tifu")}
    baskets, days = user_baskets(prepare_events(history), state.users, state.items)
    for setting in settings:
        base = rp.training.user_encoder
        config = type(base).model_validate({**base.model_dump(), **setting})  # a misspelt key is an error
        started = time.perf_counter()
        encoder = train_user_encoder(baskets, state.text, state.rankable, config, params.seed, cpu, None, days)
        state.encoder_users = encode_users(encoder, baskets, config.max_len)
        state.encoder_items = item_vectors(encoder)
        name = json.dumps(setting, sort_keys=True)
        out[name] = recall("encoder")
        log.info("%s: %.4f (%.0f s)", name, out[name], time.perf_counter() - started)
    return out


def main() -> None:
    from pipelines.common import configure_logging, load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="JSON overrides of the user_encoder params, one run each")
    args = parser.parse_args()
    configure_logging()
    settings = [json.loads(s) for s in args.settings] or [{}]
    for name, value in encoder_recall(load_params(), Paths(), settings).items():
        print(f"{name:60s} valid Recall@20 {value:.4f}")


if __name__ == "__main__":
    main()
