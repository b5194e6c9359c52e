"""train_ranker: LightGBM LambdaRank over retrieved candidates, then publish the search bundle.

Training rows mirror the full-catalog test: for each query of the ranker's fold of TRAIN (held out
from the encoder), the candidates the SearchModel retrieves (BM25 ∪ expanded BM25 ∪ dense ANN),
labelled with their judged gain (data.search.relevance), unjudged candidates gain 0. Their product priors and expanded
texts come from the other train queries only (out of fold). Early stopping on VALID queries, whose
features use priors from all of train, exactly as test and serving do.

Feature groups (components.search_features.FEATURE_GROUPS, each with its provenance): the bundle's
ranker uses search.ranker.feature_groups; with search.ranker.content_ranker a second ranker is trained
on the "content" group alone (no judgment reaches its features or candidates: the plain BM25 stands in
for the expanded one), so evaluate_search reports what the judgment-derived features add.

Outputs: models/search/bundle/ (see artifacts.search_bundle), models/search/content_ranker/ (ranker.txt,
meta.json; only meta.json when search.ranker.content_ranker is off), models/search/ranker/meta.json
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
    params: Params,
    catalog: pd.DataFrame,
    prior_judgments: pd.DataFrame,
    index,
    encoder,
    tokenizer,
    booster=None,
    feature_names: tuple[str, ...] | None = None,
):
    """A SearchModel whose priors and expanded BM25 come from `prior_judgments` (train rows only).

    feature_names: the ranker's columns (default: every feature); without a judgment-derived one the
    model ignores `prior_judgments` (SearchModel drops them).
    """
    from components.bm25 import fit_bm25
    from components.search_features import FEATURE_NAMES, JUDGMENT_FEATURES, expanded_texts, product_priors
    from components.search_model import SearchModel

    feature_names = FEATURE_NAMES if feature_names is None else tuple(feature_names)
    if not JUDGMENT_FEATURES & set(feature_names):
        prior_judgments = prior_judgments.iloc[:0]  # not read: skip the expanded BM25 and priors work

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
        feature_names=feature_names,
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


def fit_ranker(
    params: Params, train_model, valid_model, train_rows: pd.DataFrame, valid_rows: pd.DataFrame, deadline
) -> tuple[object, dict]:
    """(booster, meta) of LambdaRank over `train_model`'s features of `train_rows`, early-stopped on
    `valid_model`'s features of `valid_rows` (both models have the same feature_names)."""
    from components.ranker import train_lambdarank
    from components.search_features import feature_provenance, linear_label_gain

    rp, scale = params.search.ranker, params.data.search.relevance
    names = tuple(train_model.feature_names)
    start = time.perf_counter()
    x_tr, y_tr, g_tr, cand_recall_tr = labelled_rows(train_model, train_rows, rp.label_levels, scale)
    x_va, y_va, g_va, cand_recall_va = labelled_rows(valid_model, valid_rows, rp.label_levels, scale)
    feature_seconds = time.perf_counter() - start
    start = time.perf_counter()
    booster = train_lambdarank(
        x_tr,
        y_tr,
        g_tr,
        x_va,
        y_va,
        g_va,
        names,
        rp,
        params.seed,
        eval_at=10,
        label_gain=linear_label_gain(rp.label_levels, scale.max_gain),
        callbacks=[lightgbm_budget_callback(deadline)],
    )
    fit_seconds = time.perf_counter() - start
    importance = dict(zip(names, booster.feature_importance("gain").round(1).tolist(), strict=True))
    features = {f: {**p, "gain_importance": importance[f]} for f, p in feature_provenance(names).items()}
    meta = {
        "feature_groups": sorted({p["group"] for p in features.values()}),
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
        "features": features,
    }
    return booster, meta


def run(params: Params, paths: Paths) -> dict:
    from artifacts.search_bundle import save_search_bundle
    from components.ann import read_index
    from components.encoder import load_encoder
    from components.encoder_training import in_ranker_fold
    from components.search_features import FEATURE_GROUPS, FEATURE_PROVENANCE, feature_names_of

    sp, rp = params.search, params.search.ranker
    catalog = read_table(paths.validated / "search", s.CATALOG)
    train = pd.read_parquet(paths.split / "search" / "train.parquet")
    valid = pd.read_parquet(paths.split / "search" / "valid.parquet")
    fj = sp.feedback_judgments
    if fj.enabled:  # implicit judgments from served traffic (pipelines/implicit_judgments.py): train queries only
        from components.feedback.implicit import merge_judgments

        train = merge_judgments(train, pd.read_parquet(paths.feedback_judgments), fj.weight, fj.min_confidence)
    index = read_index(paths.index / "index.faiss")
    enc = paths.encoder
    if np.load(paths.index / "product_ids.npy").astype(str).tolist() != catalog[s.PRODUCT_ID].astype(str).tolist():
        raise ValueError("index rows do not follow the catalog order: rerun train_encoder and build_index")
    encoder, tokenizer = load_encoder(str(enc / "query_encoder"))
    fold = in_ranker_fold(train[s.QUERY_ID].astype(str).tolist(), sp.ranker_fraction, params.seed)
    names = feature_names_of(rp.feature_groups)
    content_names = feature_names_of(["content"])
    inputs = [paths.split / "search", paths.validated / "search", enc, paths.index]
    with mlflow_run(STEP, params, paths, inputs=inputs, sections=("search",)):
        import mlflow

        deadline = training_deadline("cpu")  # boosting runs on the CPU whatever the encoder's device
        oof = assemble_model(params, catalog, train[~fold], index, encoder, tokenizer, feature_names=names)
        full = assemble_model(params, catalog, train, index, encoder, tokenizer, feature_names=names)
        booster, meta = fit_ranker(params, oof, full, train[fold], valid, deadline)
        full.booster = booster
        content_meta = None
        if rp.content_ranker:
            # Same rows, same encoder and index; judgments reach neither its features nor its candidates.
            content = assemble_model(params, catalog, train, index, encoder, tokenizer, feature_names=content_names)
            content_booster, content_meta = fit_ranker(params, content, content, train[fold], valid, deadline)
        meta = {
            **meta,
            "groups": {
                g: {"features": list(FEATURE_GROUPS[g]), "provenance": FEATURE_PROVENANCE[g]} for g in FEATURE_GROUPS
            },
            "content_ranker": content_meta,
            "budget": deadline.summary(),
        }
        settings = {
            "feature_names": list(names),
            "feature_groups": list(rp.feature_groups),
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
        # Always written (a DVC output): with search.ranker.content_ranker off it holds only meta.json.
        with staged_dir(content_ranker_dir(paths)) as out:
            if content_meta is not None:
                content_booster.save_model(str(out / "ranker.txt"))
            write_json(
                out / "meta.json",
                {"enabled": content_meta is not None, "feature_names": list(content_names), **(content_meta or {})},
            )
        write_json(paths.ranker_meta, meta)
        mlflow.log_metrics({k: v for k, v in meta.items() if isinstance(v, int | float)})
        if content_meta is not None:
            mlflow.log_metrics(
                {f"content_ranker.{k}": v for k, v in content_meta.items() if isinstance(v, int | float)}
            )
        mlflow.log_dict(meta["features"], "ranker_features.json")
        log.info(
            "ranker (%s): %d train / %d valid queries, best iteration %d, valid ndcg@10 over candidates %.4f%s",
            "+".join(rp.feature_groups),
            meta["train_queries"],
            meta["valid_queries"],
            meta["best_iteration"],
            meta["valid_ndcg_at_10_candidates"],
            f"; content only {content_meta['valid_ndcg_at_10_candidates']:.4f}" if content_meta else "",
        )
    return meta


def content_ranker_dir(paths: Paths) -> Path:
    """models/search/content_ranker/: the content-only ranker evaluate_search reports beside the bundle's."""
    return paths.domain("search") / "content_ranker"


def json_meta(folder: Path) -> dict:
    import json

    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())
