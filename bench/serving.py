"""Benchmark: latency and throughput of /search and /recommend through `bentoml serve`, next to in-process.

For each endpoint and concurrency (1 and 8): p50/p95/p99 latency (ms) and throughput (requests/s) of
  in-process  the exact function the endpoint calls (services.runtime.search_results with a fresh
              query cache; RecommendModel.recommend on the pseudonymised id), in this process;
  served      HTTP POSTs to a `bentoml serve services.service:Hatchery` started here on a free
              localhost port, from a client in this process;
and the overhead ratio served / in-process (p50 and p99). Requests are distinct held-out test queries
(each setting its own slice: every query is a query-cache miss, the cold path) and test-window users.
Peak RSS: VmHWM of the serving processes (the bentoml supervisor and its worker), MiB.

Both paths run on the same requests in alternating blocks (see run), one server for the whole run.
Models: --search-bundle / --recommend-bundle (default models/<domain>/bundle, the full catalogs).
Output: reports/bench/serving.json and a table on stdout.

Usage: python -m bench.serving [--requests 200] [--search-bundle DIR] [--recommend-bundle DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from artifacts.files import write_json
from artifacts.paths import Paths, pseudonym_salt
from components import schema as s

log = logging.getLogger(__name__)

STEP = "bench_serving"
CONCURRENCY = (1, 8)


def summarize(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "n": int(len(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_rps": float(len(ms) / wall_s),
    }


def measure(call, payloads: list[Any], concurrency: int) -> tuple[list[float], float]:
    """(latency of each call(payload) in s, wall time in s) at `concurrency` threads."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(p) -> None:
        t0 = time.perf_counter()
        call(p)
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, payloads))
    return latencies, time.perf_counter() - start


class KeepAliveClient:
    """POST JSON over one kept-alive HTTP/1.1 connection per client thread (http.client).

    The client is part of what a served latency measures; a lean one (~0.5 ms a call here, httpx ~1.5 ms)
    keeps the overhead ratio about the server rather than about the benchmark's own HTTP library.
    """

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self._local = threading.local()
        self._all: list = []

    def _conn(self):
        import http.client

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._all.append(conn)
        return conn

    def post(self, path: str, payload: dict) -> tuple[int, bytes]:
        import http.client
        import json

        body = json.dumps(payload)
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request("POST", path, body=body, headers={"content-type": "application/json"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException):
                # the server closed a connection idle past its keep-alive timeout: reconnect once
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def __enter__(self) -> KeepAliveClient:
        return self

    def __exit__(self, *exc) -> None:
        for conn in self._all:
            conn.close()


def _peak_rss_mib(pid: int) -> float:
    """Sum of VmHWM (peak resident set) over the process and its children, MiB."""
    import psutil

    total = 0
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except (OSError, psutil.Error):
            continue
    return total / 1024.0


def workload(paths: Paths, n: int, seed: int) -> dict[str, list]:
    """Distinct test queries (one slice per concurrency) and raw ids of test-window users."""
    from pipelines.replay import raw_user_ids

    rng = np.random.default_rng(seed)
    queries = pd.read_parquet(paths.split / "search" / "test.parquet")[s.QUERY].drop_duplicates().tolist()
    rng.shuffle(queries)
    window = pd.read_parquet(paths.split / "recommend" / "test" / "window.parquet", columns=[s.USER_ID])
    to_raw = raw_user_ids(pseudonym_salt())
    users = [to_raw[u] for u in sorted(window[s.USER_ID].unique()) if u in to_raw]
    rng.shuffle(users)
    return {"queries": queries, "users": users}


def _start_server(bundles: dict[str, Path], salt: str, home: str) -> tuple[subprocess.Popen, str, float, Path]:
    from services.launch import start_service, wait_for_service

    env = {
        **os.environ,
        "HATCHERY_HOME": home,
        "HATCHERY_PSEUDONYM_SALT": salt,
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
    }
    for d, b in bundles.items():
        env[f"HATCHERY_{d.upper()}_BUNDLE"] = str(Path(b).resolve())
    log_path = Path(home) / "serve.log"
    proc, url = start_service(env, log_path)
    return proc, url, wait_for_service(proc, url, log_path, timeout_s=300), log_path


def run(
    paths: Paths, search_bundle: Path | None, recommend_bundle: Path | None, n: int, seed: int = 0, blocks: int = 4
) -> dict:
    """Both paths on the same requests, interleaved in `blocks` alternating blocks per setting.

    Interleaving matters on a shared machine: background load drifts over minutes, and measuring one
    path after the other would charge that drift to the serving overhead.
    """
    from artifacts.bundles import load_bundle
    from services.launch import stop_service
    from services.runtime import QueryCache, pseudonymous_user, search_results
    from services.settings import limit_threads, serving_threads, settle_heap

    work = workload(paths, n, seed)
    salt = pseudonym_salt()
    bundles = {"search": search_bundle, "recommend": recommend_bundle}
    bundles = {d: Path(b) for d, b in bundles.items() if b is not None and (Path(b) / "manifest.json").exists()}
    if not bundles:
        raise FileNotFoundError("no bundle to benchmark: train the models or pass --search-bundle/--recommend-bundle")
    if len(work["queries"]) < n * len(CONCURRENCY):
        log.warning(
            "only %d distinct test queries for %d requests: some repeat (query-cache hits)",
            len(work["queries"]),
            n * len(CONCURRENCY),
        )

    def requests_for(domain: str, slot: int) -> list:
        pool = work["queries"] if domain == "search" else work["users"]
        return [pool[(slot * n + i) % len(pool)] for i in range(n)]

    models = {d: load_bundle(d, b) for d, b in bundles.items()}
    limit_threads(serving_threads())  # the service's setting, after loading
    settle_heap()  # as the service does after loading: no full-GC stalls on either side
    results: dict[str, Any] = {
        "requests_per_setting": n,
        "blocks": blocks,
        "cpu_count": os.cpu_count(),
        "bundles": {d: str(b) for d, b in bundles.items()},
        "settings": {},
    }
    with tempfile.TemporaryDirectory() as home:
        proc, url, startup, _ = _start_server(bundles, salt, home)
        results["startup_s"] = round(startup, 1)
        try:
            with KeepAliveClient(url) as http:

                def served(domain: str):
                    path, key, k = ("/search", "query", 10) if domain == "search" else ("/recommend", "user_id", 20)

                    def call(value) -> None:
                        status, body = http.post(path, {key: value, "k": k})
                        if status != 200:
                            raise RuntimeError(f"{path} answered {status}: {body[:300]!r}")

                    return call

                def in_process(domain: str):
                    if domain == "search":
                        cache = QueryCache()  # fresh, like the server's: distinct queries are all misses
                        return lambda q: search_results(models["search"], cache, q, 10)
                    return lambda u: models["recommend"].recommend(pseudonymous_user(u, salt), k=20)

                for d in bundles:
                    warm = requests_for(d, 7)[:10]
                    for call in (in_process(d), served(d)):
                        for q in warm:
                            call(q)
                    for j, c in enumerate(CONCURRENCY):
                        reqs = requests_for(d, j)
                        calls = {"in_process": in_process(d), "served": served(d)}
                        lat = {"in_process": [], "served": []}
                        wall = {"in_process": 0.0, "served": 0.0}
                        size = -(-len(reqs) // blocks)
                        for b in range(blocks):
                            chunk = reqs[b * size : (b + 1) * size]
                            order = ("in_process", "served") if b % 2 == 0 else ("served", "in_process")
                            for path in order:
                                got, w = measure(calls[path], chunk, c)
                                lat[path] += got
                                wall[path] += w
                        setting = {path: summarize(lat[path], wall[path]) for path in lat}
                        setting["overhead_p50"] = setting["served"]["p50_ms"] / setting["in_process"]["p50_ms"]
                        setting["overhead_p99"] = setting["served"]["p99_ms"] / setting["in_process"]["p99_ms"]
                        results["settings"][f"{d}@{c}"] = setting
                        log.info("%s@%d: %s", d, c, setting)
            results["peak_rss_mib"] = round(_peak_rss_mib(proc.pid), 1)
        finally:
            stop_service(proc)
    write_json(paths.bench("serving"), results)
    return results


def render(results: dict) -> str:
    lines = [
        f"{'setting':<14}{'path':<12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>9}{'ovh p50':>9}{'ovh p99':>9}"
    ]
    for name, st in results["settings"].items():
        for path in ("in_process", "served"):
            if path not in st:
                continue
            m = st[path]
            ovh = (f"{st['overhead_p50']:>9.2f}{st['overhead_p99']:>9.2f}") if path == "served" else ""
            lines.append(
                f"{name:<14}{path:<12}{m['p50_ms']:>9.1f}{m['p95_ms']:>9.1f}{m['p99_ms']:>9.1f}"
                f"{m['throughput_rps']:>9.1f}{ovh}"
            )
    lines.append(
        f"peak RSS of the serving processes: {results.get('peak_rss_mib')} MiB; "
        f"startup {results.get('startup_s')} s; {results['requests_per_setting']} requests per setting"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    paths = Paths()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--search-bundle", type=Path, default=paths.bundle("search"))
    ap.add_argument("--recommend-bundle", type=Path, default=paths.bundle("recommend"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(render(run(paths, args.search_bundle, args.recommend_bundle, args.requests, args.seed)))
