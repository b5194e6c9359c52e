"""build_index: FAISS index of the fine-tuned product embeddings, with its recall against exact search.

Exact (IndexFlatIP) below search.ann.exact_below products, HNSW at or above. Every build measures
ANN recall@100 against brute force on valid-query embeddings and logs it.

Outputs (models/search/index/): index.faiss, product_ids.npy, meta.json (kind, n, recall, seconds)
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from artifacts.files import staged_dir, write_json
from artifacts.paths import Paths
from components import schema as s
from components.config import Params
from pipelines.common import load_params, mlflow_run

log = logging.getLogger(__name__)

STEP = "build_index"


def run(params: Params, paths: Paths) -> dict:
    from components.ann import ann_recall, build_index, index_kind, write_index
    from components.encoder import encode_texts, load_encoder

    sp, ap = params.search, params.search.ann
    enc = paths.encoder
    emb = np.load(enc / "embeddings.npy")
    with mlflow_run(STEP, params, paths, inputs=[enc / "embeddings.npy"], sections=("search",)):
        import mlflow

        start = time.perf_counter()
        index = build_index(emb, ap.exact_below, ap.hnsw_m, ap.ef_construction, ap.ef_search)
        build_seconds = time.perf_counter() - start
        valid = pd.read_parquet(paths.split / "search" / "valid.parquet")
        probe = sorted(valid[s.QUERY].astype(str).unique())[: ap.recall_probe_queries]
        model, tokenizer = load_encoder(str(enc / "query_encoder"))
        q = encode_texts(model, tokenizer, probe, 256, sp.query_max_length)
        recall = ann_recall(index, emb, q, 100)
        meta = {
            "kind": index_kind(index),
            "n": int(index.ntotal),
            "dim": int(emb.shape[1]),
            "ann_recall_at_100": round(recall, 4),
            "probe_queries": len(probe),
            "build_seconds": round(build_seconds, 1),
        }
        with staged_dir(paths.index) as out:
            write_index(index, out / "index.faiss")
            np.save(out / "product_ids.npy", np.load(enc / "product_ids.npy"))
            write_json(out / "meta.json", meta)
        mlflow.set_tag("index_kind", meta["kind"])
        mlflow.log_metrics({"ann_recall_at_100": recall, "build_seconds": build_seconds})
        log.info(
            "index %s over %d products: recall@100 vs exact %.4f, built in %.1f s",
            meta["kind"],
            meta["n"],
            recall,
            build_seconds,
        )
    return meta


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())
