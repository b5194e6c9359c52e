"""bench_search: product-tower encoding throughput and end-to-end query latency of the search bundle.

    python -m pipelines.bench_search [--products 2000] [--queries 0]

Prints products/s of batch inference (the catalog pass) and the median and p99 milliseconds of one
query through SearchModel.search (encode + ANN + BM25 + features + LightGBM re-rank of the
candidates) over the test queries, one at a time as the service sees them. Not a DVC stage: timings
depend on the machine, so they are printed, not versioned.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import pandas as pd

from components import schema as s
from pipelines.common import Paths

log = logging.getLogger(__name__)


def run(paths: Paths, n_products: int = 2000, n_queries: int = 0, warmup: int = 10) -> dict:
    import torch

    from components.encoder import encode_texts, load_encoder
    from pipelines.search_bundle import load_search_bundle, read_manifest
    from pipelines.train_ranker import bundle_dir

    folder = bundle_dir(paths)
    manifest = read_manifest(folder)
    model = load_search_bundle(folder)
    product_tower = folder / "product_encoder"
    enc, tok = load_encoder(str(product_tower) if product_tower.exists() else manifest["encoder_base"])
    titles = model.titles[:n_products]
    encode_texts(enc, tok, titles[:64], 256, 32)  # warm-up
    start = time.perf_counter()
    encode_texts(enc, tok, titles, 256, 32)
    enc_seconds = time.perf_counter() - start

    test = pd.read_parquet(paths.split / "search" / "test.parquet")
    queries = sorted(test[s.QUERY].astype(str).unique())
    queries = queries[:n_queries] if n_queries else queries
    for q in queries[:warmup]:
        model.search(q, k=10)
    lat, cands = [], []
    for q in queries:
        t0 = time.perf_counter()
        model.search(q, k=10)
        lat.append((time.perf_counter() - t0) * 1000)
    for q in queries[:200]:
        cands.append(len(model.candidate_features([q])[0][0]))
    result = {
        "products_per_s": round(len(titles) / enc_seconds, 1),
        "catalog_pass_minutes": round(model.n_products / (len(titles) / enc_seconds) / 60, 1),
        "query_latency_ms_median": round(float(np.median(lat)), 1),
        "query_latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
        "queries": len(lat),
        "mean_candidates_reranked": round(float(np.mean(cands)), 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(next(model.encoder.parameters()).device),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=2000, help="titles to encode for the throughput figure")
    ap.add_argument("--queries", type=int, default=0, help="test queries to time (0 = all)")
    args = ap.parse_args()
    run(Paths(), args.products, args.queries)
