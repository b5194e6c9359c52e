"""A content-only ranker as the encoder's teacher: its scores label many more queries than were judged.

The teacher is the content ranker of pipelines.train_ranker (LambdaRank over the `content` features:
BM25, token overlaps, forgiving matches, the pretrained encoder's cosine; no judgment reaches its
features or candidates), trained here on the ranker's fold of the train queries, which the encoder
never trains on, and early-stopped on a hashed fifth of that fold. VALID is not read. It then ranks
the candidates (BM25 ∪ the pretrained encoder's nearest) of the queries it is asked to label: its
top `teacher_top` become a query's soft target (each weighted exp((score - best) / temperature), a
listwise distillation target for the contrastive loss), and hard negatives are drawn from its ranks
2 x teacher_top .. 2 x teacher_top + hard_negative_pool, below the targets so fewer are relevant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from components import schema as s
from components.config import Params
from components.encoder_training import TrainingQuery, in_ranker_fold

log = logging.getLogger(__name__)

TEACHER_TEMPERATURE = 1.0  # LambdaRank scores: a grade apart is about one unit


def fit_teacher(params: Params, catalog: pd.DataFrame, train: pd.DataFrame, fold: np.ndarray, embeddings: np.ndarray):
    """(SearchModel with the content teacher as its booster, teacher meta).

    train/fold: the train judgments and the ranker-fold mask (the teacher learns on those rows only);
    embeddings: the pretrained encoder's catalog embeddings (embed_catalog), its dense feature.
    """
    from components.ann import build_index
    from components.encoder import load_encoder
    from components.search_features import feature_names_of
    from pipelines.budget import training_deadline
    from pipelines.train_ranker import assemble_model, fit_ranker

    sp, tp = params.search, params.search.training
    teacher_params = params.model_copy(
        update={"search": sp.model_copy(update={"candidates_per_source": tp.teacher_candidates})}
    )
    encoder, tokenizer = load_encoder(sp.encoder)
    index = build_index(embeddings, sp.ann.exact_below, sp.ann.hnsw_m, sp.ann.ef_construction, sp.ann.ef_search)
    names = feature_names_of(["content"])
    model = assemble_model(teacher_params, catalog, train.iloc[:0], index, encoder, tokenizer, feature_names=names)
    rows = train[fold]
    stop = in_ranker_fold(rows[s.QUERY_ID].astype(str).tolist(), 0.2, params.seed + 1)
    booster, meta = fit_ranker(teacher_params, model, model, rows[~stop], rows[stop], training_deadline("cpu"))
    model.booster = booster
    return model, meta


def label_queries(
    model, texts: Sequence[str], teacher_top: int, hard_negatives: int, pool: int, seed: int, max_gain: float
):
    """One TrainingQuery per text the teacher finds candidates for (see the module docstring)."""
    rng = np.random.default_rng([seed, 104_729])
    out = []
    start = time.perf_counter()
    for text, (cand, x) in zip(texts, model.candidate_features(texts), strict=True):
        if len(cand) == 0:
            continue
        scores = model.booster.predict(x)
        order = np.argsort(-scores, kind="stable")
        top = order[:teacher_top]
        gains = max_gain * np.exp((scores[top] - scores[top[0]]) / TEACHER_TEMPERATURE)
        below = order[2 * teacher_top : 2 * teacher_top + pool]
        negs = rng.choice(cand[below], size=min(hard_negatives, len(below)), replace=False) if len(below) else []
        out.append(
            TrainingQuery(text, cand[top].astype(np.int64), gains.astype(np.float32), np.asarray(negs, dtype=np.int64))
        )
    log.info("teacher labelled %d of %d queries in %.0f s", len(out), len(texts), time.perf_counter() - start)
    return out
