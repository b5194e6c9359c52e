"""train_ranker: LightGBM LambdaRank over retrieved candidates, then publish the search bundle.

Training rows mirror the full-catalog test: for each query of the ranker's fold of TRAIN (held out
from the encoder), the candidates the SearchModel retrieves (BM25 ∪ expanded BM25 ∪ dense ANN),
labelled with their judged gain (data.search.relevance), unjudged candidates gain 0. Their product priors and expanded
texts come from the other train queries only (out of fold). Early stopping on VALID queries, whose
features use priors from all of train, exactly as test and serving do.

Outputs: models/search/bundle/ (see artifacts.search_bundle), models/search/ranker/meta.json
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from artifacts.files import staged_dir, write_json
from artifacts.paths import Paths
from components import schema as s
from components.config import Params, RelevanceScale
from pipelines.budget import lightgbm_budget_callback, training_deadline
from pipelines.common import load_params, mlflow_run
from pipelines.io import read_table

log = logging.getLogger(__name__)

STEP = "train_ranker"


def assemble_model(
    params: Params, catalog: pd.DataFrame, prior_judgments: pd.DataFrame, index, encoder, tokenizer, booster=None
):
    """A SearchModel whose priors and expanded BM25 come from `prior_judgments` (train rows only)."""
    from components.bm25 import fit_bm25
    from components.search_features import expanded_texts, product_priors
    from components.search_model import SearchModel

    sp, scale = params.search, params.data.search.relevance
    product_ids = catalog[s.PRODUCT_ID].astype(str).tolist()
    titles = catalog[s.TITLE].fillna("").astype(str).tolist()
    texts = s.product_texts(catalog, sp.text_fields)
    expand_from = scale.grade_at(sp.expansion_share)
    return SearchModel(
        product_ids=np.array(product_ids, dtype=str),
        titles=titles,
        texts=texts,
        embeddings=index.reconstruct_n(0, index.ntotal),
        index=index,
        encoder=encoder,
        tokenizer=tokenizer,
        bm25=fit_bm25(texts, sp.bm25_k1, sp.bm25_b),
        bm25_expanded=fit_bm25(expanded_texts(texts, product_ids, prior_judgments, expand_from), sp.bm25_k1, sp.bm25_b),
        priors=product_priors(prior_judgments, product_ids, scale),
        booster=booster,
        price=catalog[s.PRICE].to_numpy(dtype=np.float32) if s.PRICE in catalog.columns else None,
        query_max_length=sp.query_max_length,
        candidates_per_source=sp.candidates_per_source,
        rrf_k=sp.rrf_k,
    )


def labelled_rows(model, judgments: pd.DataFrame, levels: int, scale: RelevanceScale | None = None):
    """(X, integer labels, group sizes, candidate recall) over the judgments' queries' candidates.

    Labels: each candidate's gain on the judgment scale (unjudged: 0) quantised to `levels` grades.
    """
    from components.search_features import gains_to_labels

    scale = scale or RelevanceScale()
    by_query = {q: g for q, g in judgments.groupby(s.QUERY_ID, sort=True)}
    texts = [g[s.QUERY].iloc[0] for g in by_query.values()]
    feats = model.candidate_features(texts)
    pid = model.product_ids
    xs, ys, groups, found, total = [], [], [], 0, 0
    for (_q, g), (cand, x) in zip(by_query.items(), feats, strict=True):
        if len(cand) == 0:
            continue
        gains = dict(zip(g[s.PRODUCT_ID].astype(str), scale.gain_of(g[s.RELEVANCE].astype(float)), strict=True))
        y = np.array([gains.get(str(pid[c]), 0.0) for c in cand])
        found += int((y > 0).sum())
        total += sum(v > 0 for v in gains.values())
        xs.append(x)
        ys.append(gains_to_labels(y, levels, scale.max_gain))
        groups.append(len(cand))
    return np.vstack(xs), np.concatenate(ys), np.array(groups), found / max(total, 1)


def run(params: Params, paths: Paths) -> dict:
    from artifacts.search_bundle import save_search_bundle
    from components.ann import read_index
    from components.encoder import load_encoder
    from components.encoder_training import in_ranker_fold
    from components.ranker import train_lambdarank
    from components.search_features import FEATURE_NAMES, linear_label_gain

    sp, rp, scale = params.search, params.search.ranker, params.data.search.relevance
    catalog = read_table(paths.validated / "search", s.CATALOG)
    train = pd.read_parquet(paths.split / "search" / "train.parquet")
    valid = pd.read_parquet(paths.split / "search" / "valid.parquet")
    index = read_index(paths.index / "index.faiss")
    enc = paths.encoder
    if np.load(paths.index / "product_ids.npy").astype(str).tolist() != catalog[s.PRODUCT_ID].astype(str).tolist():
        raise ValueError("index rows do not follow the catalog order: rerun train_encoder and build_index")
    encoder, tokenizer = load_encoder(str(enc / "query_encoder"))
    fold = in_ranker_fold(train[s.QUERY_ID].astype(str).tolist(), sp.ranker_fraction, params.seed)
    inputs = [paths.split / "search", paths.validated / "search", enc, paths.index]
    with mlflow_run(STEP, params, paths, inputs=inputs, sections=("search",)):
        import mlflow

        start = time.perf_counter()
        oof = assemble_model(params, catalog, train[~fold], index, encoder, tokenizer)
        x_tr, y_tr, g_tr, cand_recall_tr = labelled_rows(oof, train[fold], rp.label_levels, scale)
        full = assemble_model(params, catalog, train, index, encoder, tokenizer)
        x_va, y_va, g_va, cand_recall_va = labelled_rows(full, valid, rp.label_levels, scale)
        feature_seconds = time.perf_counter() - start
        start = time.perf_counter()
        deadline = training_deadline("cpu")  # boosting runs on the CPU whatever the encoder's device
        booster = train_lambdarank(
            x_tr,
            y_tr,
            g_tr,
            x_va,
            y_va,
            g_va,
            FEATURE_NAMES,
            rp,
            params.seed,
            eval_at=10,
            label_gain=linear_label_gain(rp.label_levels, scale.max_gain),
            callbacks=[lightgbm_budget_callback(deadline)],
        )
        fit_seconds = time.perf_counter() - start
        full.booster = booster
        importance = dict(zip(FEATURE_NAMES, booster.feature_importance("gain").round(1).tolist(), strict=True))
        meta = {
            "train_queries": int(len(g_tr)),
            "train_rows": int(len(y_tr)),
            "valid_queries": int(len(g_va)),
            "valid_rows": int(len(y_va)),
            "best_iteration": int(booster.best_iteration),
            "valid_ndcg_at_10_candidates": float(booster.best_score["valid_0"]["ndcg@10"]),
            "candidate_recall_train": round(cand_recall_tr, 4),
            "candidate_recall_valid": round(cand_recall_va, 4),
            "feature_seconds": round(feature_seconds, 1),
            "fit_seconds": round(fit_seconds, 1),
            "gain_importance": importance,
            "budget": deadline.summary(),
        }
        settings = {
            "feature_names": list(FEATURE_NAMES),
            "query_max_length": sp.query_max_length,
            "candidates_per_source": sp.candidates_per_source,
            "rrf_k": sp.rrf_k,
            "encoder_base": sp.encoder,
            "product_tower": json_meta(enc).get("product_tower"),
            "bm25": {"k1": sp.bm25_k1, "b": sp.bm25_b},
            "text_fields": s.text_fields_present(catalog, sp.text_fields),
        }
        adapter = enc / "product_adapter.safetensors"
        with staged_dir(paths.bundle("search")) as out:
            save_search_bundle(
                out,
                catalog,
                enc / "query_encoder",
                index,
                full.bm25,
                full.bm25_expanded,
                full.priors,
                booster,
                settings,
                adapter if adapter.exists() else None,
                enc / "product_encoder" if (enc / "product_encoder").exists() else None,
                probe_queries=sorted(valid[s.QUERY].astype(str).unique())[:64],
            )
        write_json(paths.ranker_meta, meta)
        mlflow.log_metrics({k: v for k, v in meta.items() if isinstance(v, int | float)})
        mlflow.log_dict(importance, "ranker_gain_importance.json")
        log.info(
            "ranker: %d train / %d valid queries, best iteration %d, valid ndcg@10 over candidates %.4f",
            meta["train_queries"],
            meta["valid_queries"],
            meta["best_iteration"],
            meta["valid_ndcg_at_10_candidates"],
        )
    return meta


def json_meta(folder: Path) -> dict:
    import json

    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())
