"""A PostgreSQL outage during a run, on a running cluster profile (after `cluster.py up`): a demonstration.

    .venv/bin/python infra/cluster/outage.py [--seconds 30] [--charter semantic_search] [--override key=value ...]

Triggers the charter, waits until one of its tasks runs, stops the local PostgreSQL cluster (Airflow's
metadata DB, MLflow's store and the shared state all go away at once) for --seconds, starts it again,
follows the run to its end and prints what every component said meanwhile: the task states and tries,
the run's verdict, and the integrity checks afterwards (the rollout state parses and its audit trail
numbers every version once; MLflow answers; Airflow's API answers). It stops the machine's PostgreSQL:
run it where nobody else needs that server for a minute (CI, or your own machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from infra.cluster import cluster as cl  # noqa: E402
from infra.cluster import servers  # noqa: E402


def _try(fn, default=None):
    try:
        return fn()
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        return default if default is not None else f"unavailable: {type(exc).__name__}: {str(exc)[:120]}"


def check_integrity(c: cl.Cluster) -> dict:
    """What must hold after the outage: the state store parses, audit versions are 1..n, MLflow answers."""
    import os

    from artifacts.paths import Paths
    from artifacts.rollout_store import RolloutStore

    os.environ["HATCHERY_STATE_URL"] = c.env["HATCHERY_STATE_URL"]
    out = {}
    for domain in ("search", "recommend"):
        store = RolloutStore(Paths(root=Path(c.env["HATCHERY_HOME"])), domain)
        state = store.read()
        versions = [a["details"].get("state_version") for a in store.audit()]
        out[domain] = {
            "state_version": state.version if state else None,
            "audit_versions_consecutive": versions == list(range(1, len(versions) + 1)),
            "audit_matches_state": (versions[-1] if versions else None) == (state.version if state else None),
        }
    import urllib.request

    out["mlflow"] = _try(lambda: urllib.request.urlopen(c.env["MLFLOW_TRACKING_URI"] + "/health", timeout=10).status)
    out["airflow"] = _try(lambda: c.api.get("/api/v2/monitor/health")["metadatabase"]["status"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--charter", default="semantic_search")
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    c = cl.cluster_env()
    api = c.api
    overrides = {
        k: json.loads(v) if v[:1] in "[{0123456789-tfn" else v for k, v in (o.split("=", 1) for o in args.override)
    }
    run_id = cl.rl.trigger(api, args.charter, overrides)
    print(f"triggered {run_id}", flush=True)
    while not any(ti["state"] == "running" for ti in _try(lambda: cl_tis(api, run_id), [])):
        time.sleep(2)
    print(f"{time.strftime('%X')} a task runs; stopping PostgreSQL for {args.seconds:.0f} s", flush=True)
    servers.postgres_control("stop")
    stopped = time.time()
    while time.time() - stopped < args.seconds:
        print(f"  {time.strftime('%X')} Airflow API: {_try(lambda: api.get('/api/v2/monitor/health'))}", flush=True)
        time.sleep(10)
    servers.postgres_control("start")
    print(f"{time.strftime('%X')} PostgreSQL is back after {time.time() - stopped:.0f} s", flush=True)
    deadline, state = time.time() + args.timeout, None
    while time.time() < deadline:
        state = _try(lambda: api.get(f"/api/v2/dags/incubation/dagRuns/{run_id}")["state"])
        if state in ("success", "failed"):
            break
        time.sleep(5)
    print(f"run {run_id}: {state}")
    for ti in _try(lambda: cl_tis(api, run_id), []):
        print(f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} tries={ti['try_number']} on {ti.get('hostname')}")
    print(json.dumps(check_integrity(c), indent=2))
    return 0 if state in ("success", "failed") else 1


def cl_tis(api, run_id: str) -> list[dict]:
    return api.get(f"/api/v2/dags/incubation/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]


if __name__ == "__main__":
    sys.exit(main())
