"""Soak: `bentoml serve` under steady load with both rollouts in canary; 5xx, p99 per minute, memory.

A real server (services/launch.py) on an isolated root and a free 127.0.0.1 port serves the trained
bundles (--search-bundle / --recommend-bundle, default models/<domain>/bundle). Each domain is put in
canary through RolloutStore, as the rollout driver does: champion and challenger are the same bundle
under two versions (two loaded copies, routed by the salted unit; search also interleaves 10 % of
units), so every request is logged to the rotating request log (rotating at --log-max-mb, small by
default so rotation runs under load). Then `--concurrency` client threads post, for `--minutes`:
/search (held-out test queries), /recommend (test-window users) and /similar (catalog product ids, 1
in 50 an unknown id: an expected 404), each thread on one kept-alive connection. The loop is bounded
in time and in count (--max-requests), and sends only to 127.0.0.1.

Printed every minute: requests, rate, p50/p99 (ms) overall and p99 per endpoint, 5xx and 4xx, and
the resident memory of the server's whole process tree (psutil, RSS summed). At the end: the same
totals, memory at the start of the load, after the first minute and at the end with growth %, and
the service's own counters (log write errors, state corruption). Output: reports/bench/soak.json.

Usage: python -m bench.soak [--minutes 10] [--concurrency 16] [--search-bundle DIR] [--recommend-bundle DIR]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.files import write_json
from artifacts.paths import Paths, pseudonym_salt
from artifacts.rollout_store import RolloutStore
from bench.serving import KeepAliveClient, workload
from components import rollout as ro

log = logging.getLogger(__name__)

ENDPOINTS = ("/search", "/recommend", "/similar")
MIX = (0.5, 0.3, 0.2)  # share of requests per endpoint
UNKNOWN_EVERY = 50  # one /similar in 50 asks for an id no catalog has: the 404 path stays exercised


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB (shared pages counted in each)."""
    import psutil

    total = 0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def put_in_canary(paths: Paths, domain: str, bundle: Path, share: float, interleave: float) -> ro.RolloutState:
    """Champion "a" and challenger "b" (the same bundle), straight to canary step 0, as the driver writes it."""
    store = RolloutStore(paths, domain)
    champion = ro.ModelRef(version="a", uri=str(bundle))
    challenger = ro.ModelRef(version="b", uri=str(bundle))
    now = time.time()
    store.save(*ro.set_champion(ro.RolloutState(domain=domain), champion, now, "bench.soak", "soak champion"))
    store.transact(
        lambda cur: ro.start_shadow(cur, challenger, 1.0, now, "bench.soak", "soak", os.urandom(16).hex(), interleave)
    )
    return store.transact(lambda cur: ro.enter_canary_step(cur, 0, share, now, "bench.soak", "soak canary"))


def wait_for_challengers(http: KeepAliveClient, domains: list[str], timeout_s: float = 600.0) -> None:
    import json

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = http.post("/rollout_status", {})
        state = json.loads(body) if status == 200 else {}
        if all(state.get(d, {}).get("challenger") == "b" for d in domains):
            return
        time.sleep(1.0)
    raise RuntimeError(f"the challengers did not load within {timeout_s:.0f} s: {state}")


def requests_for(paths: Paths, bundles: dict[str, Path], seed: int) -> dict[str, list[dict]]:
    """Request bodies per endpoint: held-out queries, test-window users, catalog product ids."""
    work = workload(paths, 0, seed)
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {}
    if "search" in bundles:
        out["/search"] = [{"query": q, "k": 10, "session_id": f"s{rng.randrange(10**9)}"} for q in work["queries"]]
    if "recommend" in bundles:
        out["/recommend"] = [{"user_id": str(u), "k": 20} for u in work["users"]]
        items = np.load(bundles["recommend"] / "item_ids.npy", allow_pickle=False).astype(str).tolist()
        rng.shuffle(items)
        similar = [{"product_id": p, "k": 10} for p in items[:5000]]
        for i in range(0, len(similar), UNKNOWN_EVERY):
            similar[i] = {"product_id": f"no-such-product-{i}", "k": 10}
        out["/similar"] = similar
    return out


class Tally:
    """Per-minute latencies and status counts, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.status: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.errors: list[str] = []

    def add(self, minute: int, path: str, status: int, ms: float) -> None:
        with self.lock:
            self.latency[minute][path].append(ms)
            self.status[minute][f"{status // 100}xx"] += 1
            self.status[minute][f"{path} {status}"] += 1

    def minute(self, m: int, rss_mib: float) -> dict[str, Any]:
        with self.lock:
            per_path = {p: np.asarray(v) for p, v in self.latency[m].items()}
            counts = dict(self.status[m])
        every = np.concatenate(list(per_path.values())) if per_path else np.zeros(0)
        return {
            "minute": m + 1,
            "requests": int(every.size),
            "rps": round(every.size / 60.0, 1),
            "p50_ms": round(float(np.percentile(every, 50)), 1) if every.size else None,
            "p99_ms": round(float(np.percentile(every, 99)), 1) if every.size else None,
            "p99_ms_by_endpoint": {p: round(float(np.percentile(v, 99)), 1) for p, v in sorted(per_path.items())},
            "5xx": counts.get("5xx", 0),
            "4xx": counts.get("4xx", 0),
            "statuses": {k: v for k, v in sorted(counts.items()) if " " in k},
            "rss_mib": round(rss_mib, 1),
        }


def drive(
    url: str, bodies: dict[str, list[dict]], tally: Tally, start: float, seconds: float, concurrency: int, cap: int
) -> int:
    """`concurrency` threads posting until `seconds` have passed or `cap` requests were sent; returns the count."""
    paths = [p for p in ENDPOINTS if p in bodies]
    last_minute = max(0, math.ceil(seconds / 60) - 1)  # answers still in flight at the end count in the last minute
    weights = [MIX[ENDPOINTS.index(p)] for p in paths]
    sent = 0
    count_lock = threading.Lock()

    def worker(i: int) -> None:
        nonlocal sent
        rng = random.Random(i)
        with KeepAliveClient(url, timeout=30.0) as http:
            while time.monotonic() - start < seconds:
                with count_lock:
                    if sent >= cap:
                        return
                    sent += 1
                path = rng.choices(paths, weights)[0]
                body = rng.choice(bodies[path])
                t0 = time.perf_counter()
                try:
                    status, answer = http.post(path, body)
                except Exception as exc:  # noqa: BLE001 - a dropped connection is a failure to report, not a crash
                    status, answer = 599, str(exc).encode()
                ms = (time.perf_counter() - t0) * 1000.0
                tally.add(min(int((time.monotonic() - start) // 60), last_minute), path, status, ms)
                if status >= 500:
                    with tally.lock:
                        if len(tally.errors) < 20:
                            tally.errors.append(f"{path} {status}: {answer[:300]!r}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    return sent


def service_counters(http: KeepAliveClient) -> dict[str, float]:
    """hatchery_log_write_errors_total and hatchery_state_corrupt from /metrics, per domain."""
    import urllib.request

    with urllib.request.urlopen(f"http://{http.host}:{http.port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("hatchery_log_write_errors_total{", "hatchery_state_corrupt{")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def run(
    paths: Paths,
    search_bundle: Path | None,
    recommend_bundle: Path | None,
    minutes: float,
    concurrency: int,
    log_max_mb: float = 2.0,
    max_requests: int = 5_000_000,
    seed: int = 0,
) -> dict[str, Any]:
    from bench.serving import _start_server
    from services.launch import stop_service

    bundles = {"search": search_bundle, "recommend": recommend_bundle}
    bundles = {d: Path(b).resolve() for d, b in bundles.items() if b and (Path(b) / "manifest.json").exists()}
    if not bundles:
        raise FileNotFoundError("no bundle to soak: train the models or pass --search-bundle/--recommend-bundle")
    bodies = requests_for(paths, bundles, seed)
    results: dict[str, Any] = {
        "minutes": minutes,
        "concurrency": concurrency,
        "mix": dict(zip(ENDPOINTS, MIX, strict=True)),
        "bundles": {d: str(b) for d, b in bundles.items()},
        "cpu_count": os.cpu_count(),
        "log_max_mb": log_max_mb,
    }
    os.environ["HATCHERY_LOG_MAX_MB"] = str(log_max_mb)  # the server inherits it (_start_server copies os.environ)
    with tempfile.TemporaryDirectory(prefix="soak-") as home:
        soak_paths = Paths(root=Path(home))
        for domain, bundle in bundles.items():
            put_in_canary(soak_paths, domain, bundle, share=0.5, interleave=0.1 if domain == "search" else 0.0)
        # The local-bundle variables only name the champion when there is no state; the state names both here.
        proc, url, startup_s, log_path = _start_server(bundles, pseudonym_salt(), home)
        try:
            with KeepAliveClient(url, timeout=60.0) as http:
                wait_for_challengers(http, list(bundles))
                results["startup_s"] = round(startup_s, 1)
                rss_start = tree_rss_mib(proc.pid)
                print(f"serving at {url} (pid {proc.pid}); both arms loaded; RSS {rss_start:.0f} MiB", flush=True)
                tally, start = Tally(), time.monotonic()
                sampled: dict[int, float] = {}
                done = threading.Event()

                def sample_memory() -> None:  # the RSS at the end of each minute, printed with its numbers
                    m = 0
                    while not done.wait(max(0.0, start + 60 * (m + 1) - time.monotonic())):
                        sampled[m] = tree_rss_mib(proc.pid)
                        print(_line(tally.minute(m, sampled[m])), flush=True)
                        m += 1

                sampler = threading.Thread(target=sample_memory, daemon=True)
                sampler.start()
                sent = drive(url, bodies, tally, start, minutes * 60.0, concurrency, max_requests)
                wall = time.monotonic() - start
                done.set()
                sampler.join(timeout=30)
                rss_end = tree_rss_mib(proc.pid)
                per_minute = [tally.minute(m, sampled.get(m, rss_end)) for m in sorted(tally.latency)]
                if len(per_minute) > len(sampled):  # a last minute the sampler had not printed yet
                    print(_line(per_minute[-1]), flush=True)
                results["counters"] = service_counters(http)
            everything = np.concatenate([np.asarray(v) for m in tally.latency.values() for v in m.values()])
            rss_warm = sampled.get(0, rss_start)
            results.update(
                {
                    "requests": sent,
                    "wall_s": round(wall, 1),
                    "rps": round(sent / wall, 1),
                    "p50_ms": round(float(np.percentile(everything, 50)), 1),
                    "p99_ms": round(float(np.percentile(everything, 99)), 1),
                    "5xx": sum(m["5xx"] for m in per_minute),
                    "4xx": sum(m["4xx"] for m in per_minute),
                    "statuses": _sum_statuses(per_minute),
                    "server_errors": tally.errors,
                    "per_minute": per_minute,
                    "rss_mib": {"start": round(rss_start), "after_1_min": round(rss_warm), "end": round(rss_end)},
                    "rss_growth_pct": round(100.0 * (rss_end - rss_start) / rss_start, 2),
                    "rss_growth_after_1_min_pct": round(100.0 * (rss_end - rss_warm) / rss_warm, 2),
                    "request_log_files": sorted(p.name for p in soak_paths.rollout("search").glob("requests.jsonl*")),
                }
            )
        finally:
            stop_service(proc)
            results["server_log_tail"] = log_path.read_text(errors="replace")[-2000:] if results.get("5xx") else ""
    write_json(paths.bench("soak"), results)
    return results


def _sum_statuses(per_minute: list[dict]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for m in per_minute:
        for k, v in m["statuses"].items():
            total[k] += v
    return dict(sorted(total.items()))


def _line(m: dict[str, Any]) -> str:
    by = " ".join(f"{p}={v}" for p, v in m["p99_ms_by_endpoint"].items())
    return (
        f"minute {m['minute']:>3}: {m['requests']:>6} req {m['rps']:>6} rps  p50 {m['p50_ms']} ms  "
        f"p99 {m['p99_ms']} ms ({by})  5xx {m['5xx']}  4xx {m['4xx']}  RSS {m['rss_mib']:.0f} MiB"
    )


def render(r: dict[str, Any]) -> str:
    rss = r["rss_mib"]
    return "\n".join(
        [
            f"{r['requests']} requests in {r['wall_s']} s ({r['rps']} req/s) at concurrency {r['concurrency']}, "
            f"both domains in canary: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms",
            f"5xx: {r['5xx']}   4xx: {r['4xx']} ({', '.join(f'{k}: {v}' for k, v in r['statuses'].items())})",
            f"RSS of the serving processes: start {rss['start']} MiB, after 1 min {rss['after_1_min']} MiB, "
            f"end {rss['end']} MiB: growth {r['rss_growth_pct']} % from the start, "
            f"{r['rss_growth_after_1_min_pct']} % after the first minute",
            f"service counters: {r['counters']}; request log files: {r['request_log_files']}",
        ]
    )


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    paths = Paths()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--search-bundle", type=Path, default=paths.bundle("search"))
    ap.add_argument("--recommend-bundle", type=Path, default=paths.bundle("recommend"))
    ap.add_argument("--log-max-mb", type=float, default=2.0, help="request log rotation size during the soak")
    ap.add_argument("--max-requests", type=int, default=5_000_000, help="a bound on the loop besides time")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result = run(
        paths,
        args.search_bundle,
        args.recommend_bundle,
        args.minutes,
        args.concurrency,
        args.log_max_mb,
        args.max_requests,
        args.seed,
    )
    print(render(result))
