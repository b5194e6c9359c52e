"""Benchmark: p50 / p95 milliseconds of each console page, in-process, with the service's champions loaded.

    python -m bench.console [--requests 40] [--query "cordless drill"] [--user-id 12347]

Builds the Hatchery service exactly as `bentoml serve` does (services/service.py: the champions of
HATCHERY_HOME's rollout state or registry, as after `make run` or `dvc repro`) and requests every page
of the console through its ASGI app, one at a time: search side by side (both arms' rankings with
LightGBM contributions and retrieval sources), recommendations side by side, rollout, reports. The
target is p95 < 300 ms a page on this machine. Exits 1 (saying why) when a domain has no champion.
Not a DVC stage: timings depend on the machine, so they are printed, not versioned.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

log = logging.getLogger(__name__)

TARGET_P95_MS = 300.0
QUERIES = ("cordless drill", "wood screws", "outdoor ceiling fan", "paint roller", "kitchen faucet")


def run(n_requests: int = 40, query: str | None = None, user_id: str = "12347") -> dict:
    from starlette.testclient import TestClient

    from services.service import Hatchery

    # base_url on loopback: the console answers loopback connections only.
    with TestClient(Hatchery.to_asgi(), base_url="http://127.0.0.1") as http:
        status = http.post("/rollout_status", json={}).json()
        missing = [d for d, s in status.items() if not s.get("champion")]
        if missing:
            raise SystemExit(f"no champion loaded for {missing}: run `make run` (or `dvc repro`) first; {status}")
        pages = {
            "search": [f"/console/?q={q}" for q in ([query] if query else QUERIES)],
            "recommend": [f"/console/recommend?user_id={user_id}"],
            "rollout": ["/console/rollout"],
            "reports": ["/console/reports"],
        }
        out = {"champions": {d: (s["champion"], s.get("challenger")) for d, s in status.items()}, "pages": {}}
        for name, urls in pages.items():
            for url in urls:  # warm-up: first-call allocations, the query cache, the MLflow link lookups
                assert http.get(url).status_code == 200, url
            times = []
            for i in range(n_requests):
                t0 = time.perf_counter()
                response = http.get(urls[i % len(urls)])
                times.append((time.perf_counter() - t0) * 1000.0)
                assert response.status_code == 200, (urls[i % len(urls)], response.status_code)
            out["pages"][name] = {
                "p50_ms": float(np.percentile(times, 50)),
                "p95_ms": float(np.percentile(times, 95)),
                "requests": n_requests,
            }
    out["worst_p95_ms"] = max(p["p95_ms"] for p in out["pages"].values())
    out["target_p95_ms"] = TARGET_P95_MS
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=40, help="timed requests per page")
    ap.add_argument("--query", default=None, help="one query for the search page (default: five)")
    ap.add_argument("--user-id", default="12347", help="raw shop user id for the recommendation page")
    args = ap.parse_args(argv)
    result = run(args.requests, args.query, args.user_id)
    print(json.dumps(result, indent=2))
    for name, p in result["pages"].items():
        verdict = "ok" if p["p95_ms"] < TARGET_P95_MS else "OVER"
        line = f"console {name:9s} p50 {p['p50_ms']:7.1f} ms  p95 {p['p95_ms']:7.1f} ms"
        print(f"{line}  ({verdict}: target < {TARGET_P95_MS:.0f})")
    return 0 if result["worst_p95_ms"] < TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
