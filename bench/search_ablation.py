"""Ablation on VALID: the search ranker with and without some of its features, from one feature pass.

    python -m bench.search_ablation [--groups content] [--without stem_overlap,prefix_overlap] [--seeds 0,1]

Builds the ranker's rows once, as pipelines.train_ranker does (the same ranker fold of the train
queries, encoder, index and judgments; out-of-fold priors when --groups holds judgment_priors), over
the features of --groups; then trains LambdaRank on every one of those features and again without the
--without ones, once per seed, and prints the valid NDCG@10 over candidates (the ranker's
early-stopping metric) of each. Decide on these numbers, never on test. Needs the outputs of
`dvc repro build_index` (the split, the fine-tuned encoder and the index).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence

import numpy as np

from artifacts.paths import Paths

log = logging.getLogger(__name__)

FORGIVING = ("stem_overlap", "prefix_overlap", "bigram_overlap", "first_token_match", "last_stem_match")


def compare(
    rows: tuple[np.ndarray, ...],
    names: Sequence[str],
    without: Sequence[str],
    config,
    seeds: Sequence[int],
    label_gain: Sequence[float],
) -> dict[str, dict[int, float]]:
    """{"with": {seed: valid NDCG@10}, "without": {...}} of LambdaRank on all `names` and on all but `without`.

    rows: (x_train, y_train, groups_train, x_valid, y_valid, groups_valid), columns in `names` order.
    """
    from components.ranker import train_lambdarank

    unknown = sorted(set(without) - set(names))
    if unknown or not without:
        raise ValueError(f"--without must name some of the ranker's features {list(names)}; unknown: {unknown}")
    x_tr, y_tr, g_tr, x_va, y_va, g_va = rows
    subsets = {"with": list(range(len(names))), "without": [i for i, n in enumerate(names) if n not in without]}
    out: dict[str, dict[int, float]] = {}
    for label, keep in subsets.items():
        out[label] = {}
        for seed in seeds:
            booster = train_lambdarank(
                x_tr[:, keep],
                y_tr,
                g_tr,
                x_va[:, keep],
                y_va,
                g_va,
                [names[i] for i in keep],
                config,
                seed,
                eval_at=10,
                label_gain=label_gain,
            )
            out[label][seed] = round(float(booster.best_score["valid_0"]["ndcg@10"]), 4)
            log.info("%s, seed %d: valid NDCG@10 %.4f", label, seed, out[label][seed])
    return out


def ranker_rows(params, paths: Paths, groups: Sequence[str]) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    """The ranker's (train rows, valid rows) over the features of `groups`, as pipelines.train_ranker builds them."""
    import pandas as pd

    from components import schema as s
    from components.ann import read_index
    from components.encoder import load_encoder
    from components.encoder_training import in_ranker_fold
    from components.search_features import JUDGMENT_FEATURES, feature_names_of
    from pipelines.io import read_table
    from pipelines.train_ranker import assemble_model, labelled_rows

    sp, scale = params.search, params.data.search.relevance
    catalog = read_table(paths.validated / "search", s.CATALOG)
    train = pd.read_parquet(paths.split / "search" / "train.parquet")
    valid = pd.read_parquet(paths.split / "search" / "valid.parquet")
    index = read_index(paths.index / "index.faiss")
    encoder, tokenizer = load_encoder(str(paths.encoder / "query_encoder"))
    fold = in_ranker_fold(train[s.QUERY_ID].astype(str).tolist(), sp.ranker_fraction, params.seed)
    names = feature_names_of(groups)
    full = assemble_model(params, catalog, train, index, encoder, tokenizer, feature_names=names)
    # Priors for the ranker's own rows come from the other train queries (out of fold), as in training.
    oof = (
        assemble_model(params, catalog, train[~fold], index, encoder, tokenizer, feature_names=names)
        if JUDGMENT_FEATURES & set(names)
        else full
    )
    x_tr, y_tr, g_tr, _ = labelled_rows(oof, train[fold], sp.ranker.label_levels, scale)
    x_va, y_va, g_va, _ = labelled_rows(full, valid, sp.ranker.label_levels, scale)
    return (x_tr, y_tr, g_tr, x_va, y_va, g_va), names


def main(argv: Sequence[str] | None = None) -> dict:
    from components.search_features import linear_label_gain
    from pipelines.common import configure_logging, load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="content", help="feature groups of the ranker (comma-separated)")
    parser.add_argument("--without", default=",".join(FORGIVING), help="features to leave out (comma-separated)")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args(argv)
    configure_logging()
    params, paths = load_params(), Paths()
    started = time.perf_counter()
    rows, names = ranker_rows(params, paths, args.groups.split(","))
    feature_s = time.perf_counter() - started
    rp, scale = params.search.ranker, params.data.search.relevance
    seeds = [int(x) for x in args.seeds.split(",")]
    scores = compare(
        rows, names, args.without.split(","), rp, seeds, linear_label_gain(rp.label_levels, scale.max_gain)
    )
    result = {
        "groups": args.groups,
        "without": args.without.split(","),
        "train_queries": len(rows[2]),
        "valid_queries": len(rows[5]),
        "feature_pass_s": round(feature_s, 1),
        "valid_ndcg_at_10_candidates": scores,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
