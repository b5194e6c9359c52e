"""`make run`: start the embedded Airflow, trigger the incubation lifecycle through its REST API once per
default charter, follow the runs to the end, print the Airflow, MLflow and report URLs.

    .venv/bin/python infra/airflow/run_lifecycle.py                   # both shipped charters
    .venv/bin/python infra/airflow/run_lifecycle.py --charter semantic_search --override data.search.path=/data
    .venv/bin/python infra/airflow/run_lifecycle.py --stop            # stop the Airflow it started

Airflow runs as `airflow standalone` (api-server + scheduler + dag-processor + triggerer, LocalExecutor,
SQLite) with AIRFLOW_HOME=<repo>/airflow_home, on http://localhost:$AIRFLOW_PORT (8080). Everything is
configured by environment only: point AIRFLOW__DATABASE__SQL_ALCHEMY_CONN / AIRFLOW__CORE__EXECUTOR at
servers to scale out. An Airflow already answering on the port is reused (and left running).

The REST API (Airflow 3, /api/v2) takes a JWT: POST /auth/token with the simple auth manager's user
(`admin`) and the password standalone generates into
$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.

The same from the command line (with the scheduler running, e.g. after this script):
    export AIRFLOW_HOME=$PWD/airflow_home AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags AIRFLOW__CORE__LOAD_EXAMPLES=False
    .venv/bin/airflow pools set hatchery_dvc 1 "DVC repository lock"
    .venv/bin/airflow dags trigger incubation --conf '{"charter": "personalised_recommendations", "overrides": {}}'
    .venv/bin/airflow dags list-runs incubation

MLflow's UI is started beside it (`mlflow ui` on $MLFLOW_PORT, 5000) unless something answers there.

The Hatchery BentoML service (`bentoml serve services.service:Hatchery`) is started first, on
http://127.0.0.1:$HATCHERY_SERVICE_PORT (3000, localhost only; log and pid in airflow_home/), unless
something answers there; its URL is exported to Airflow as HATCHERY_SERVICE_URL for the rollout task. It
may start before any champion exists: it follows the rollout state file, which the rollout task writes.
`--stop` stops the service, Airflow and the MLflow UI this script started.

Exit status: 0 when every run succeeded, 1 when any failed (the reasons are printed), 2 on setup errors.
Stdlib only: it must run before anything else is importable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: services.launch starts the Bento service
DAG_ID = "incubation"
POOL = "hatchery_dvc"
DEFAULT_CHARTERS = ("semantic_search", "personalised_recommendations")


def airflow_env() -> dict[str, str]:
    env = os.environ.copy()
    home = Path(env.setdefault("AIRFLOW_HOME", str(REPO / "airflow_home")))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30")
    port = env.setdefault("AIRFLOW_PORT", "8080")
    env.setdefault("AIRFLOW__API__PORT", port)
    # Localhost only by default (standalone would listen on every interface with a generated admin
    # password); set AIRFLOW__API__HOST=0.0.0.0 to expose it.
    env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    env.setdefault("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{port}")
    # Tasks find the repository (pipelines/) and write outputs beside it.
    env.setdefault("HATCHERY_HOME", str(REPO))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


class Api:
    """A tiny /api/v2 client with token auth."""

    def __init__(self, base: str, home: Path):
        self.base, self.home, self.token = base.rstrip("/"), home, None

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.login()}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else {}

    def login(self) -> str:
        if self.token is None:
            passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
            user, password = next(iter(passwords.items()))
            self.token = self._request("POST", "/auth/token", {"username": user, "password": password}, auth=False)[
                "access_token"
            ]
        return self.token

    def get(self, path: str) -> dict:
        return self._request("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, body)

    def patch(self, path: str, body: dict) -> dict:
        return self._request("PATCH", path, body)


def api_up(base: str) -> bool:
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/api/v2/monitor/health", timeout=5) as resp:
            health = json.loads(resp.read().decode())
        return health.get("scheduler", {}).get("status") == "healthy"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_airflow(env: dict[str, str]) -> subprocess.Popen | None:
    """`airflow standalone` in the background (logs in airflow_home/standalone.log), unless one is up."""
    base = env["AIRFLOW__API__BASE_URL"]
    if api_up(base):
        print(f"reusing the Airflow already running at {base}")
        return None
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "standalone.log").open("ab")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow"), "standalone"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    (home / "standalone.pid").write_text(str(proc.pid))
    print(f"started airflow standalone (pid {proc.pid}); log: {home / 'standalone.log'}")
    deadline = time.time() + 600
    while not api_up(base):
        if proc.poll() is not None:
            sys.exit(f"airflow standalone exited with {proc.returncode}: see {home / 'standalone.log'}")
        if time.time() > deadline:
            sys.exit(f"Airflow did not become healthy in 10 minutes: see {home / 'standalone.log'}")
        time.sleep(3)
    return proc


def start_mlflow_ui(env: dict[str, str]) -> str:
    """`mlflow ui` over HATCHERY_HOME's store in the background (pid in airflow_home/mlflow.pid)."""
    port = env.get("MLFLOW_PORT", "5000")
    url = f"http://127.0.0.1:{port}"
    try:
        urllib.request.urlopen(url + "/health", timeout=3)
        return url  # already serving
    except (urllib.error.URLError, OSError):
        pass
    home = Path(env["AIRFLOW_HOME"])
    store = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(env['HATCHERY_HOME']) / 'mlflow.db'}"
    log = (home / "mlflow_ui.log").open("ab")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store, "--port", port],
        cwd=env["HATCHERY_HOME"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    (home / "mlflow.pid").write_text(str(proc.pid))
    return url


def service_env(env: dict[str, str]) -> dict[str, str]:
    """The service's port and URL, exported to Airflow's environment for the rollout task."""
    port = env.setdefault("HATCHERY_SERVICE_PORT", "3000")
    env.setdefault("HATCHERY_SERVICE_URL", f"http://127.0.0.1:{port}")
    return env


def start_service(env: dict[str, str]) -> str:
    """`bentoml serve services.service:Hatchery` on localhost in the background (pid in airflow_home/service.pid)."""
    from services import launch

    url = env["HATCHERY_SERVICE_URL"]
    if launch.answers(url):
        print(f"reusing the Hatchery service already answering at {url}")
        return url
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    proc, _ = launch.start_service(env, home / "service.log", port=int(env["HATCHERY_SERVICE_PORT"]), own_session=True)
    (home / "service.pid").write_text(str(proc.pid))
    print(f"started the Hatchery service (pid {proc.pid}) on {url}; log: {home / 'service.log'}")
    return url


def stop_airflow(home: Path) -> None:
    """Stop what this script started (service.pid, standalone.pid, mlflow.pid), each by its own process group."""
    for name in ("service", "standalone", "mlflow"):
        pid_file = home / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)  # its own process group (start_new_session)
            print(f"stopped {name} (pid {pid})")
        except ProcessLookupError:
            print(f"{name} (pid {pid}) was not running")
        pid_file.unlink()


def wait_for_dag(api: Api, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            api.get(f"/api/v2/dags/{DAG_ID}")
            errors = api.get("/api/v2/importErrors").get("import_errors", [])
            bad = [e for e in errors if "incubation" in e.get("filename", "")]
            if bad:
                sys.exit(f"the incubation DAG has import errors:\n{bad[0].get('stack_trace')}")
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.time() > deadline:
                raise
        time.sleep(3)


def ensure_pool(api: Api) -> None:
    body = {
        "name": POOL,
        "slots": 1,
        "description": "DVC's repository lock: one DVC task at a time",
        "include_deferred": False,
    }
    try:
        api.get(f"/api/v2/pools/{POOL}")
        api.patch(f"/api/v2/pools/{POOL}", body)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        api.post("/api/v2/pools", body)


def trigger(api: Api, charter: str, overrides: dict) -> str:
    run = api.post(
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        {"logical_date": None, "conf": {"charter": charter, "overrides": overrides}, "note": f"make run: {charter}"},
    )
    return run["dag_run_id"]


def follow(api: Api, run_ids: dict[str, str], poll_s: float = 10) -> dict[str, str]:
    """Print task state changes until every run ends; return charter -> final state."""
    seen: dict[tuple[str, str, int], str] = {}
    final: dict[str, str] = {}
    while len(final) < len(run_ids):
        for charter, run_id in run_ids.items():
            if charter in final:
                continue
            tis = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100").get("task_instances", [])
            for ti in tis:
                key = (charter, ti["task_id"], ti.get("map_index", -1))
                state = ti.get("state") or "none"
                if seen.get(key) != state:
                    seen[key] = state
                    label = ti.get("rendered_map_index") or (ti["map_index"] if ti.get("map_index", -1) >= 0 else "")
                    print(f"  [{charter}] {ti['task_id']}{f'[{label}]' if label != '' else ''}: {state}", flush=True)
            state = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                final[charter] = state
        time.sleep(poll_s)
    return final


def summary_of(charter: str, run_id: str) -> dict:
    from artifacts.paths import Paths  # stdlib only, like this script

    path = Paths().incubation_run(run_id, charter) / "summary.json"
    return {"path": path.with_name("index.html"), **(json.loads(path.read_text()) if path.exists() else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--charter", action="append", help="charter name (repeatable); default: both shipped")
    parser.add_argument("--override", action="append", default=[], help="dotted.key=json_value params override")
    parser.add_argument(
        "--stop", action="store_true", help="stop the service, airflow standalone and MLflow UI this script started"
    )
    parser.add_argument("--stop-after", action="store_true", help="stop them once the runs end")
    args = parser.parse_args()
    env = service_env(airflow_env())
    home = Path(env["AIRFLOW_HOME"])
    if args.stop:
        stop_airflow(home)
        return 0
    overrides = {}
    for item in args.override:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except ValueError:
            overrides[key] = raw
    os.environ.update({k: env[k] for k in ("AIRFLOW_HOME", "HATCHERY_HOME", "HATCHERY_SERVICE_URL")})
    service_url = start_service(env)  # before Airflow: the rollout task of the first run needs it
    started = start_airflow(env)
    if started is None and env["HATCHERY_SERVICE_URL"] != "http://127.0.0.1:3000":
        print(f"note: the reused Airflow may not have HATCHERY_SERVICE_URL={service_url} in its environment")
    base = env["AIRFLOW__API__BASE_URL"]
    api = Api(base, home)
    try:
        wait_for_dag(api)
        ensure_pool(api)
        api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        charters = args.charter or list(DEFAULT_CHARTERS)
        run_ids = {c: trigger(api, c, overrides) for c in charters}
        for c, r in run_ids.items():
            print(f"triggered {DAG_ID} for {c}: {base}/dags/{DAG_ID}/runs/{r}")
        final = follow(api, run_ids)
    except urllib.error.HTTPError as exc:
        print(f"Airflow API error {exc.code} on {exc.url}: {exc.read().decode()[:2000]}", file=sys.stderr)
        if started is not None and args.stop_after:
            stop_airflow(home)
        return 2
    print("\n=== incubation runs ===")
    for c, state in final.items():
        s = summary_of(c, run_ids[c])
        # The run's note is the summary the Airflow UI shows beside the run: the verdict and where to read more.
        note = f"{state.upper()}: {s.get('headline', 'no report written')}\n\nreport: file://{s['path']}"
        try:
            api.patch(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_ids[c]}", {"note": note[:1000]})
        except urllib.error.HTTPError as exc:
            print(f"  (could not set the run note: HTTP {exc.code})")
        print(f"{c}: {state.upper()} — {s.get('headline', 'no report written')}")
        print(f"  Airflow: {base}/dags/{DAG_ID}/runs/{run_ids[c]}")
        print(f"  report:  file://{s['path']}")
        if s.get("gate"):
            print(f"  gate:    {'PASS' if s['gate']['passed'] else 'FAIL'} — {s['gate']['reason']}")
    if args.stop_after:
        print(f"MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{Path(env['HATCHERY_HOME']) / 'mlflow.db'}")
    else:
        print(f"MLflow:  {start_mlflow_ui(env)}  (one run per step; gate/ and incubation/ artifacts)")
    body = json.dumps({"query": "cordless drill", "k": 5})
    print(f"Service: {service_url}  (Swagger UI at /; rollout: .venv/bin/python -m pipelines.rollout status <charter>)")
    print(f"  curl -s {service_url}/search -H 'content-type: application/json' -d '{body}'")
    if started is not None and args.stop_after:
        stop_airflow(home)
    elif started is not None:
        secret = home / "simple_auth_manager_passwords.json.generated"
        print(f"Airflow keeps running at {base} (user admin, password in {secret})")
        print("stop it with: .venv/bin/python infra/airflow/run_lifecycle.py --stop")
    return 0 if all(s == "success" for s in final.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
