"""`make run`: start the embedded Airflow, trigger the incubation lifecycle through its REST API once per
default charter, follow the runs to the end, print the Airflow, MLflow and report URLs.

    .venv/bin/python infra/airflow/run_lifecycle.py                   # both shipped charters
    .venv/bin/python infra/airflow/run_lifecycle.py --charter semantic_search --override data.search.path=/data
    .venv/bin/python infra/airflow/run_lifecycle.py --stop            # stop the Airflow it started

Airflow runs as its four components, each its own process (`airflow db migrate`, then api-server,
scheduler, dag-processor, triggerer; LocalExecutor, SQLite) with AIRFLOW_HOME=<repo>/airflow_home, on
http://127.0.0.1:$AIRFLOW_PORT (8080); logs and pids in airflow_home/<component>.log|.pid. Not
`airflow standalone`: it starts the scheduler's and the triggerer's log servers (8793, 8794) on every
interface (the host is hard-coded in airflow/utils/serve_logs). Here they are not started at all
(--skip-serve-logs): with the LocalExecutor on one machine the API server reads task logs from the
log folder. Every server this script starts binds loopback (airflow_processes() lists them); set
AIRFLOW__API__HOST=0.0.0.0 to expose the API server on purpose. Everything is configured by environment
only: point AIRFLOW__DATABASE__SQL_ALCHEMY_CONN / AIRFLOW__CORE__EXECUTOR at servers to scale out. An
Airflow already answering on the port is reused (and left running).

The REST API (Airflow 3, /api/v2) takes a JWT: POST /auth/token with the simple auth manager's user
(`admin`) and the password the API server generates into
$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated (created here first, mode 0600, so only
this user can read it; the component logs, which echo it once, are 0600 too).

Dev mode: with no HATCHERY_PSEUDONYM_SALT (and no HATCHERY_ENV), this sets HATCHERY_ENV=dev for
everything it starts (the public development salt; artifacts/paths.py) and says so. At start it also
sweeps leftovers of interrupted writes and stale DVC workspaces (artifacts.files.sweep_outputs).

The same from the command line (with the scheduler running, e.g. after this script):
    export AIRFLOW_HOME=$PWD/airflow_home AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags AIRFLOW__CORE__LOAD_EXAMPLES=False
    .venv/bin/airflow pools set hatchery_dvc 1 "DVC repository lock"
    .venv/bin/airflow dags trigger incubation --conf '{"charter": "personalised_recommendations", "overrides": {}}'
    .venv/bin/airflow dags list-runs incubation

MLflow's UI is started beside it (`mlflow ui` on 127.0.0.1:$MLFLOW_PORT, 5000) unless something answers there.

The Hatchery BentoML service (`bentoml serve services.service:Hatchery`) is started first, on
http://127.0.0.1:$HATCHERY_SERVICE_PORT (3000, localhost only; log and pid in airflow_home/), unless
something answers there; its URL is exported to Airflow as HATCHERY_SERVICE_URL for the rollout task. It
may start before any champion exists: it follows the rollout state file, which the rollout task writes.
`--stop` stops the service, the Airflow components and the MLflow UI this script started.

Exit status: 0 when every run succeeded, 1 when any failed (the reasons are printed), 2 on setup errors.
Stdlib only: it must run before anything else is importable.
"""

from __future__ import annotations

import argparse
import contextlib
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
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# What --stop stops, in order (`standalone`: a pid file left by an older version of this script).
STARTED = ("service", *AIRFLOW_COMPONENTS, "standalone", "mlflow")


SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def airflow_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """base (default: this process's environment) with the embedded profile's defaults filled in."""
    env = dict(base) if base is not None else os.environ.copy()
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
    env.setdefault("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE_AUTH_MANAGER)
    # Only used when the scheduler's health check is switched on; its default host is every interface.
    env.setdefault("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST", "127.0.0.1")
    # A task's process calls the API server (the execution API) before it runs; on a busy 2-core machine the
    # first answers after the API server started took 7.7 s, past Airflow's 5 s default, and the task failed
    # without running (a CI run of the feedback-loop test). Airflow's own setting, so the environment wins.
    env.setdefault("AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT", "60")
    # Tasks find the repository (pipelines/) and write outputs beside it.
    env.setdefault("HATCHERY_HOME", str(REPO))
    if not env.get("HATCHERY_PSEUDONYM_SALT") and not env.get("HATCHERY_ENV"):
        env["HATCHERY_ENV"] = "dev"  # the embedded defaults; main() says so
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


class Api:
    """A tiny /api/v2 client with token auth.

    A read (GET) that times out or finds the server gone is asked again, `read_attempts` times in all: the
    API server also serves every running task's execution API, and on a busy machine one answer can take
    longer than `timeout` s while the next is quick. Writes are never repeated (a trigger must not run twice).
    """

    def __init__(self, base: str, home: Path, timeout: float = 30, read_attempts: int = 3):
        self.base, self.home, self.token = base.rstrip("/"), home, None
        self.timeout, self.read_attempts = timeout, read_attempts

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.login()}")
        for attempt in range(1, self.read_attempts if method == "GET" else 1):
            try:
                return self._send(req)
            except (TimeoutError, ConnectionError, urllib.error.URLError) as exc:
                if isinstance(exc, urllib.error.HTTPError):  # the server answered: asking again changes nothing
                    raise
                print(f"GET {path}: {exc!r}; asking again ({attempt + 1}/{self.read_attempts})", file=sys.stderr)
                time.sleep(2 * attempt)
        return self._send(req)

    def _send(self, req: urllib.request.Request) -> dict:
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else {}

    def login(self) -> str:
        if self.token is None:
            passwords = json.loads((self.home / PASSWORD_FILE).read_text())
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


def airflow_processes(env: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(name, argv) of every Airflow server `make run` starts, in start order; each binds loopback
    (the API server on AIRFLOW__API__HOST) or serves nothing (--skip-serve-logs: no log server)."""
    airflow = str(Path(sys.executable).parent / "airflow")
    host, port = env["AIRFLOW__API__HOST"], env["AIRFLOW__API__PORT"]
    return [
        ("api-server", [airflow, "api-server", "--host", host, "--port", port]),
        ("scheduler", [airflow, "scheduler", "--skip-serve-logs"]),
        ("dag-processor", [airflow, "dag-processor"]),
        ("triggerer", [airflow, "triggerer", "--skip-serve-logs"]),
    ]  # fmt: skip


def private_file(path: Path) -> Path:
    """Create `path` if missing and make it 0600 (owner read/write only), whatever the umask."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
    os.chmod(path, 0o600)
    return path


def migrate_db(env: dict[str, str]) -> None:
    """`airflow db migrate` (log in AIRFLOW_HOME/db-migrate.log); exits saying so when it fails."""
    migrate_log = private_file(Path(env["AIRFLOW_HOME"]) / "db-migrate.log")
    with migrate_log.open("ab") as log:
        airflow = str(Path(sys.executable).parent / "airflow")
        done = subprocess.run([airflow, "db", "migrate"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"airflow db migrate exited with {done.returncode}: see {migrate_log}")


def start_airflow(env: dict[str, str]) -> list[subprocess.Popen] | None:
    """`airflow db migrate`, then the four components in the background (logs and pids in AIRFLOW_HOME),
    unless an Airflow is up already (None); waits until the scheduler reports healthy."""
    base = env["AIRFLOW__API__BASE_URL"]
    if api_up(base):
        print(f"reusing the Airflow already running at {base}")
        return None
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    # The simple auth manager appends to this file ("a+"): created 0600 first, it stays 0600.
    private_file(home / PASSWORD_FILE)
    migrate_db(env)
    procs = []
    for name, argv in airflow_processes(env):
        log_path = private_file(home / f"{name}.log")  # the API server prints the generated password once
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )  # fmt: skip
        (home / f"{name}.pid").write_text(str(proc.pid))
        procs.append(proc)
        print(f"started airflow {name} (pid {proc.pid}); log: {log_path}")
    deadline = time.time() + 600
    while not api_up(base):
        for (name, _), proc in zip(airflow_processes(env), procs, strict=True):
            if proc.poll() is not None:
                sys.exit(f"airflow {name} exited with {proc.returncode}: see {home / f'{name}.log'}")
        if time.time() > deadline:
            sys.exit(f"Airflow did not become healthy in 10 minutes: see the logs in {home}")
        time.sleep(3)
    os.chmod(home / PASSWORD_FILE, 0o600)  # in case it was replaced rather than appended to
    return procs


def mlflow_ui_command(env: dict[str, str]) -> list[str]:
    """`mlflow ui` over HATCHERY_HOME's store, on 127.0.0.1:$MLFLOW_PORT (MLFLOW_HOST is not honoured)."""
    store = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(env['HATCHERY_HOME']) / 'mlflow.db'}"
    mlflow = str(Path(sys.executable).parent / "mlflow")
    return [mlflow, "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", env.get("MLFLOW_PORT", "5000")]


def start_mlflow_ui(env: dict[str, str]) -> str:
    """`mlflow ui` in the background (pid in airflow_home/mlflow.pid), unless something answers on its port."""
    url = f"http://127.0.0.1:{env.get('MLFLOW_PORT', '5000')}"
    try:
        urllib.request.urlopen(url + "/health", timeout=3)
        return url  # already serving
    except (urllib.error.URLError, OSError):
        pass
    home = Path(env["AIRFLOW_HOME"])
    log = private_file(home / "mlflow_ui.log").open("ab")
    proc = subprocess.Popen(
        mlflow_ui_command(env),
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


def stop_airflow(home: Path, grace_s: float = 30) -> None:
    """Stop what this script started (the <name>.pid files of STARTED), each by its own process group:
    SIGTERM to every group, then SIGKILL to a group still alive after grace_s (a scheduler shutting its
    executor down can take longer than that on a loaded machine). Returns once they are gone."""
    stopping = {}
    for name in STARTED:
        pid_file = home / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)  # its own process group (start_new_session)
            stopping[name] = pid
        except ProcessLookupError:
            print(f"{name} (pid {pid}) was not running")
        pid_file.unlink()
    deadline = time.monotonic() + grace_s
    alive = dict(stopping)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {name: pid for name, pid in alive.items() if _group_alive(pid)}
    for name, pid in stopping.items():
        if name in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            print(f"killed {name} (pid {pid}): still running {grace_s:.0f} s after SIGTERM")
        else:
            print(f"stopped {name} (pid {pid})")
    # SIGKILL is delivered asynchronously: return once the killed groups are gone too (at most 10 s more).
    deadline = time.monotonic() + 10
    while alive and time.monotonic() < deadline:
        alive = {name: pid for name, pid in alive.items() if _group_alive(pid)}
        if alive:
            time.sleep(0.05)
    for name, pid in alive.items():
        print(f"{name} (pid {pid}): still not gone 10 s after SIGKILL")


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies, exited but not yet reaped by their
    parent, do not count: they hold nothing)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: a group with only zombies left reads as alive until reaped
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


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


def charter_domain(charter: str) -> str | None:
    """The `domain:` line of charters/<charter>.yaml (stdlib only: no YAML parser needed for one key)."""
    path = Path(os.environ.get("HATCHERY_CHARTERS_DIR") or REPO / "charters") / f"{charter}.yaml"
    try:
        for line in path.read_text().splitlines():
            if line.startswith("domain:"):
                return line.split(":", 1)[1].split("#")[0].strip().strip("'\"")
    except OSError:
        pass
    return None


PROBES = {"search": ("/search", {"query": "drill", "k": 1}), "recommend": ("/recommend", {"user_id": "probe", "k": 1})}


def _post(url: str, body: dict, timeout_s: float = 10.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read().decode() or "{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


def champions_serving(url: str, domains: list[str]) -> dict[str, str] | None:
    """{domain: champion version} once the service has loaded, and answers a request with, the champion its
    rollout state names for every domain in `domains`; None while any is still loading (503) or behind."""
    code, status = _post(url.rstrip("/") + "/rollout_status", {})
    if code != 200:
        return None
    out = {}
    for domain in domains:
        mine = status.get(domain) or {}
        wanted = ((mine.get("state") or {}).get("champion") or {}).get("version")
        if not mine.get("ready") or (wanted and mine.get("champion") != wanted):
            return None
        path, body = PROBES[domain]
        code, answer = _post(url.rstrip("/") + path, body)
        if code != 200:
            return None
        out[domain] = mine["champion"]  # the probe may have been answered by a challenger's arm
    return out


def wait_for_champions(url: str, domains: list[str], timeout_s: float = 600.0, poll_s: float = 2.0) -> dict | None:
    """Poll champions_serving until it answers (the versions) or timeout_s passes (None)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        serving = champions_serving(url, domains)
        if serving is not None:
            return serving
        time.sleep(poll_s)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--charter", action="append", help="charter name (repeatable); default: both shipped")
    parser.add_argument("--override", action="append", default=[], help="dotted.key=json_value params override")
    parser.add_argument(
        "--stop", action="store_true", help="stop the service, the Airflow components and MLflow UI this script started"
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
    if env.get("HATCHERY_ENV") == "dev" and not env.get("HATCHERY_PSEUDONYM_SALT"):
        print("HATCHERY_PSEUDONYM_SALT is not set: dev mode (HATCHERY_ENV=dev), user ids are pseudonymised with the "
              "public development salt; set HATCHERY_PSEUDONYM_SALT for real data")  # fmt: skip
    os.environ.update({k: env[k] for k in ("AIRFLOW_HOME", "HATCHERY_HOME", "HATCHERY_SERVICE_URL")})
    from artifacts.files import sweep_outputs  # stdlib only, like this script
    from artifacts.paths import Paths

    for path in sweep_outputs(Paths(root=Path(env["HATCHERY_HOME"]))):
        print(f"swept {path}")
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
    # The runs' rollout tasks wrote the champions into the rollout state; the service loads them in the
    # background (a minute for search): "ready" is said once it answers with them, never before.
    domains = sorted({d for c, state in final.items() if state == "success" and (d := charter_domain(c))})
    serving = wait_for_champions(service_url, domains) if domains else {}
    if serving is None:
        print(f"the service at {service_url} did not answer with the champions of {domains} in 10 minutes: "
              f"see {home / 'service.log'}")  # fmt: skip
    body = json.dumps({"query": "cordless drill", "k": 5})
    print(f"Service: {service_url}  (Swagger UI at /; rollout: .venv/bin/python -m pipelines.rollout status <charter>)")
    print(f"  curl -s {service_url}/search -H 'content-type: application/json' -d '{body}'")
    print(f"Console: {service_url}/console/  (read-only unless HATCHERY_CONSOLE_TOKEN is set for the service)")
    if serving:
        print("ready: the service answers with " + ", ".join(f"{d} v{v}" for d, v in sorted(serving.items())))
    if started is not None and args.stop_after:
        stop_airflow(home)
    elif started is not None:
        secret = home / PASSWORD_FILE
        print(f"Airflow keeps running at {base} (user admin, password in {secret})")
        print("stop it with: .venv/bin/python infra/airflow/run_lifecycle.py --stop")
    return 0 if all(s == "success" for s in final.values()) and serving is not None else 1


if __name__ == "__main__":
    sys.exit(main())
