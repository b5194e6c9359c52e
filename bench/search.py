"""Benchmark: product-tower encoding throughput and end-to-end query latency of the search bundle.

    python -m bench.search [--products 2000] [--queries 0]

Prints products/s of batch inference (the catalog pass) and the median and p99 milliseconds of one
query through SearchModel.search (encode + ANN + BM25 + features + LightGBM re-rank of the
candidates) over the test queries, one at a time as the service sees them: with the query tower as
served (ONNX Runtime on CPU) and, as the baseline measured in the same run, in eager PyTorch, with
the ratio of the two. Not a DVC stage: timings depend on the machine, so they are printed, not versioned.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import pandas as pd

from artifacts.paths import Paths
from components import schema as s

log = logging.getLogger(__name__)


def run(paths: Paths, n_products: int = 2000, n_queries: int = 0, warmup: int = 10) -> dict:
    import torch

    from artifacts.search_bundle import load_search_bundle, read_manifest
    from components.encoder import encode_texts, load_encoder

    folder = paths.bundle("search")
    manifest = read_manifest(folder)
    model = load_search_bundle(folder)
    product_tower = folder / "product_encoder"
    enc, tok = load_encoder(str(product_tower) if product_tower.exists() else manifest["encoder_base"])
    titles = model.texts[:n_products]  # the product texts the tower embeds (search.text_fields)
    encode_texts(enc, tok, titles[:64], 256, 32)  # warm-up
    start = time.perf_counter()
    encode_texts(enc, tok, titles, 256, 32)
    enc_seconds = time.perf_counter() - start

    test = pd.read_parquet(paths.split / "search" / "test.parquet")
    queries = sorted(test[s.QUERY].astype(str).unique())
    queries = queries[:n_queries] if n_queries else queries
    # The query tower as served (ONNX Runtime on CPU) and, as the in-run baseline, in eager PyTorch:
    # alternated query by query so background load drifts into both alike.
    onnx_tower = model.query_runtime
    towers = {"served": onnx_tower, "pytorch": None} if onnx_tower is not None else {"pytorch": None}
    lat: dict[str, list[float]] = {name: [] for name in towers}
    for q in queries[:warmup]:
        for tower in towers.values():
            model.query_runtime = tower
            model.search(q, k=10)
    for q in queries:
        for name, tower in towers.items():
            model.query_runtime = tower
            t0 = time.perf_counter()
            model.search(q, k=10)
            lat[name].append((time.perf_counter() - t0) * 1000)
    model.query_runtime = onnx_tower
    served, base = np.asarray(lat[next(iter(towers))]), np.asarray(lat["pytorch"])
    cands = []
    for q in queries[:200]:
        cands.append(len(model.candidate_features([q])[0][0]))
    result = {
        "products_per_s": round(len(titles) / enc_seconds, 1),
        "catalog_pass_minutes": round(model.n_products / (len(titles) / enc_seconds) / 60, 1),
        "query_tower": "onnxruntime" if onnx_tower is not None else "pytorch",
        "query_latency_ms_median": round(float(np.median(served)), 1),
        "query_latency_ms_p99": round(float(np.percentile(served, 99)), 1),
        "pytorch_tower_latency_ms_median": round(float(np.median(base)), 1),
        "pytorch_tower_latency_ms_p99": round(float(np.percentile(base, 99)), 1),
        "speedup_median_vs_pytorch_tower": round(float(np.median(base) / np.median(served)), 2),
        "queries": len(queries),
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
