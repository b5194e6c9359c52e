"""Benchmark: latency of one user's recommendation (candidates + features + re-rank), from the bundle.

Prints and writes median and p99 milliseconds over `recommend.bench_users` known users (plus the
unknown-user fallback and `similar`), each timed alone, as the service would call them.
Output: reports/bench/recommend.json
"""

from __future__ import annotations

import logging
import time

import numpy as np

from artifacts.files import write_json
from artifacts.paths import Paths
from artifacts.recommend_bundle import load_recommend_bundle
from components.config import Params
from pipelines.common import load_params

log = logging.getLogger(__name__)

STEP = "bench_recommend"


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p99_ms": float(np.quantile(a, 0.99)), "n": len(a)}


def run(params: Params, paths: Paths, k: int = 10) -> dict:
    import torch

    threads = params.recommend.training.torch_threads
    if threads:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    model = load_recommend_bundle(paths.bundle("recommend"))
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(params.seed)
    users = rng.choice(model.state.users, size=min(params.recommend.bench_users, len(model.state.users)), replace=False)
    items = rng.choice(model.state.items, size=min(params.recommend.bench_users, len(model.state.items)), replace=False)
    model.recommend(str(users[0]), k)  # warm-up: builds the cached sparse matrices once

    def timed(fn, args) -> list[float]:
        out = []
        for a in args:
            t0 = time.perf_counter()
            fn(str(a), k)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    result = {
        "load_s": round(load_s, 3),
        "recommend_known_user": _stats(timed(model.recommend, users)),
        "recommend_unknown_user": _stats(timed(model.recommend, [f"unknown-{i}" for i in range(50)])),
        "similar": _stats(timed(model.similar, items)),
    }
    write_json(paths.bench("recommend"), result)
    for name in ("recommend_known_user", "recommend_unknown_user", "similar"):
        r = result[name]
        print(f"{name:24s} median {r['median_ms']:7.2f} ms   p99 {r['p99_ms']:7.2f} ms   (n={r['n']})")
    return result


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())
