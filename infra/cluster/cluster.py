"""The cluster profile: `make run PROFILE=cluster`, configured by infra/cluster/cluster.env (and the environment).

    .venv/bin/python infra/cluster/cluster.py run [--charter NAME ...]   # start, trigger, follow (make run)
    .venv/bin/python infra/cluster/cluster.py up                         # start only, print the URLs
    .venv/bin/python infra/cluster/cluster.py down                       # stop what `up` started

What runs where (every server on 127.0.0.1; processes, logs and pids under $HATCHERY_CLUSTER_HOME):

  Airflow 3, CeleryExecutor   api-server, scheduler, dag-processor, triggerer (the commands of
                              infra/airflow/run_lifecycle.py, as for the embedded profile) under one circusd,
                              which starts a component again when it exits (the scheduler, DAG processor
                              and triggerer do when PostgreSQL goes away), and HATCHERY_CELERY_WORKERS Celery
                              workers (`airflow celery worker`), each its own process with its own name
                              (worker-a, worker-b, ...: the task instance's hostname) and working copy
                              (workers/<name>/: its DVC task workspaces and cache)
  metadata DB                 PostgreSQL database $HATCHERY_AIRFLOW_DB (also the Celery result backend)
  broker                      Redis ($HATCHERY_REDIS_URL, keys prefixed per cluster)
  MLflow                      `mlflow server`, store in PostgreSQL $HATCHERY_MLFLOW_DB, artifacts proxied
                              (--serve-artifacts) into mlflow-artifacts/; MLFLOW_TRACKING_URI for every step
                              and every service replica
  DVC remote                  ssh://…: an sshd on loopback with generated keys (sshd/), shared by all workers
  shared state                PostgreSQL $HATCHERY_STATE_DB (HATCHERY_STATE_URL): rollout state, audit,
                              request/feedback logs, the workspaces' dvc.lock
  service                     HATCHERY_SERVICE_REPLICAS `bentoml serve` replicas on consecutive ports from
                              $HATCHERY_SERVICE_PORT, each with its own model cache (replicas/<n>/)
  reports, Bentos             shared/ (HATCHERY_HOME of every worker: run ledgers and HTML reports; BENTOML_HOME)

GPU steps go to the `gpu` queue (infra/cluster/airflow_local_settings.py). Stdlib only at import time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "infra" / "airflow"))

import run_lifecycle as rl  # noqa: E402 - the embedded launcher: Airflow's components, the REST API client

from infra.cluster import servers  # noqa: E402

ENV_FILE = HERE / "cluster.env"


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """KEY=value lines (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def worker_names(n: int) -> list[str]:
    return [f"worker-{chr(ord('a') + i)}" for i in range(n)]


@dataclass
class Cluster:
    """The profile's settings (env: what every process gets) and the processes it started."""

    env: dict[str, str]
    home: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def api(self) -> rl.Api:
        return rl.Api(self.env["AIRFLOW__API__BASE_URL"], Path(self.env["AIRFLOW_HOME"]))

    @property
    def workers(self) -> list[str]:
        return worker_names(int(self.env["HATCHERY_CELERY_WORKERS"]))

    def service_urls(self) -> list[str]:
        port = int(self.env["HATCHERY_SERVICE_PORT"])
        return [f"http://127.0.0.1:{port + i}" for i in range(int(self.env["HATCHERY_SERVICE_REPLICAS"]))]


def cluster_env(overrides: dict[str, str] | None = None) -> Cluster:
    """cluster.env, then the environment, then `overrides`; every derived setting filled in."""
    env = {**read_env_file(), **os.environ, **(overrides or {})}
    home = Path(env["HATCHERY_CLUSTER_HOME"])
    home = (home if home.is_absolute() else REPO / home).resolve()
    env["HATCHERY_CLUSTER_HOME"] = str(home)
    os.environ["HATCHERY_PG_ADMIN_URL"] = env["HATCHERY_PG_ADMIN_URL"]  # servers.* read it
    os.environ["HATCHERY_REDIS_URL"] = env["HATCHERY_REDIS_URL"]
    secret_file = home / "secret.json"
    if not secret_file.exists():
        home.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(json.dumps({"jwt": secrets.token_urlsafe(32), "api": secrets.token_urlsafe(32)}))
        os.chmod(secret_file, 0o600)
    secret = json.loads(secret_file.read_text())
    port = env["AIRFLOW_PORT"]
    env.update(
        {
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": servers.database_url(env["HATCHERY_AIRFLOW_DB"], "+psycopg2"),
            "AIRFLOW__CELERY__BROKER_URL": env["HATCHERY_REDIS_URL"],
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + servers.database_url(env["HATCHERY_AIRFLOW_DB"], "+psycopg2"),
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": env["HATCHERY_CELERY_PREFIX"] + ":",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secret["jwt"],
            "AIRFLOW__API__SECRET_KEY": secret["api"],
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_local_settings.worker_hostname",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": env.get("AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT", "3600"),
            "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{env['MLFLOW_PORT']}",
            "HATCHERY_STATE_URL": servers.database_url(env["HATCHERY_STATE_DB"]),
            "HATCHERY_HOME": str(home / "shared"),
            # Bentos the package step builds: one store for every worker (a task workspace is removed after it).
            "BENTOML_HOME": str(home / "shared" / "bentoml_home"),
            "HATCHERY_SERVICE_URL": f"http://127.0.0.1:{env['HATCHERY_SERVICE_PORT']}",
        }
    )
    if not env.get("HATCHERY_PSEUDONYM_SALT") and not env.get("HATCHERY_ENV"):
        env["HATCHERY_ENV"] = "dev"
    env = rl.airflow_env(env)
    return Cluster(env=env, home=home)


def _start(cluster: Cluster, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    log_path = rl.private_file(_logs(cluster) / f"{name}.log")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env or cluster.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # fmt: skip
    (cluster.home / "pids").mkdir(parents=True, exist_ok=True)
    (cluster.home / "pids" / f"{name}.pid").write_text(str(proc.pid))
    cluster.procs[name] = proc
    print(f"started {name} (pid {proc.pid}); log: {log_path}", flush=True)
    return proc


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=3)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not answer at {url} within {timeout_s:.0f} s")
        time.sleep(1)


def start_remote(cluster: Cluster) -> None:
    """The shared DVC remote: an sshd on loopback (HATCHERY_DVC_REMOTE_KIND=ssh), else a local folder."""
    env = cluster.env
    if env.get("HATCHERY_DVC_REMOTE_KIND", "ssh") == "ssh":
        reason = servers.sshd_available()
        if reason:
            raise RuntimeError(
                f"the DVC remote over SSH needs an SSH server: {reason}; or set HATCHERY_DVC_REMOTE_KIND=local"
            )
        proc, remote = servers.start_sshd(cluster.home / "sshd", rl.private_file(_logs(cluster) / "sshd.log"))
        (cluster.home / "pids" / "sshd.pid").write_text(str(proc.pid))
        cluster.procs["sshd"] = proc
        env["HATCHERY_DVC_REMOTE"], env["HATCHERY_DVC_REMOTE_KEYFILE"] = remote["url"], remote["keyfile"]
        print(f"started sshd for the DVC remote {remote['url']} (pid {proc.pid})", flush=True)
    else:
        folder = cluster.home / "dvc-remote"
        folder.mkdir(parents=True, exist_ok=True)
        env["HATCHERY_DVC_REMOTE"] = str(folder)


def _logs(cluster: Cluster) -> Path:
    (cluster.home / "logs").mkdir(parents=True, exist_ok=True)
    (cluster.home / "pids").mkdir(parents=True, exist_ok=True)
    return cluster.home / "logs"


def start_mlflow(cluster: Cluster) -> str:
    env = cluster.env
    url = env["MLFLOW_TRACKING_URI"]
    argv = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", servers.database_url(env["HATCHERY_MLFLOW_DB"], "+psycopg2"),
        "--artifacts-destination", str(cluster.home / "mlflow-artifacts"),
        "--serve-artifacts", "--host", "127.0.0.1", "--port", env["MLFLOW_PORT"], "--workers", "1",
    ]  # fmt: skip
    proc = _start(cluster, "mlflow", argv)
    _wait_http(url + "/health", proc, "mlflow server")
    return url


def worker_env(cluster: Cluster, name: str) -> dict[str, str]:
    env = dict(cluster.env)
    env["HATCHERY_WORKER_NAME"] = name
    env["HATCHERY_WORKSPACES"] = str(cluster.home / "workers" / name)
    return env


def worker_queues(cluster: Cluster, name: str) -> list[str]:
    queues = ["default"]
    gpu = cluster.env.get("HATCHERY_GPU_QUEUE")
    if gpu and cluster.env.get("HATCHERY_GPU_ON_CPU", "0") == "1" and name == cluster.workers[-1]:
        queues.append(gpu)
    return queues


def start_worker(cluster: Cluster, name: str) -> subprocess.Popen:
    airflow = str(Path(sys.executable).parent / "airflow")
    queues = ",".join(worker_queues(cluster, name))
    argv = [
        airflow, "celery", "worker", "--celery-hostname", f"{name}@%h", "--queues", queues,
        "--concurrency", cluster.env["HATCHERY_WORKER_CONCURRENCY"], "--skip-serve-logs", "--without-mingle",
    ]  # fmt: skip
    return _start(cluster, name, argv, worker_env(cluster, name))


def start_services(cluster: Cluster, wait: bool = True) -> list[str]:
    from services import launch

    urls = []
    for i, url in enumerate(cluster.service_urls()):
        if launch.answers(url):
            print(f"reusing the service at {url}")
            urls.append(url)
            continue
        env = dict(cluster.env, HATCHERY_HOME=str(cluster.home / "replicas" / str(i)))
        Path(env["HATCHERY_HOME"]).mkdir(parents=True, exist_ok=True)
        port = int(url.rsplit(":", 1)[1])
        proc, _ = launch.start_service(env, _logs(cluster) / f"service-{i}.log", port=port, own_session=True)
        (cluster.home / "pids" / f"service-{i}.pid").write_text(str(proc.pid))
        cluster.procs[f"service-{i}"] = proc
        print(f"started service replica {i} (pid {proc.pid}) on {url}", flush=True)
        urls.append(url)
    if wait:
        wait_for_services(cluster)
    return urls


def wait_for_services(cluster: Cluster) -> None:
    from services import launch

    for i, url in enumerate(cluster.service_urls()):
        if f"service-{i}" in cluster.procs:
            log = _logs(cluster) / f"service-{i}.log"
            launch.wait_for_service(cluster.procs[f"service-{i}"], url, log, "/livez", 600)


def ensure_pool(api: rl.Api, slots: int) -> None:
    body = {
        "name": rl.POOL,
        "slots": slots,
        "description": "DVC tasks at once (one workspace each)",
        "include_deferred": False,
    }
    try:
        api.get(f"/api/v2/pools/{rl.POOL}")
        api.patch(f"/api/v2/pools/{rl.POOL}", body)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        api.post("/api/v2/pools", body)


def circus_ini(programs: list[tuple[str, list[str]]], log_dir: Path, sock: Path) -> str:
    """circusd's configuration for `programs` ((name, argv) each): one process per watcher, started again
    whenever it exits (respawn, retried without limit), stopped with SIGTERM (children too) and 30 s grace;
    stdout and stderr to <log_dir>/<name>.log; the controller on Unix sockets in `sock` (no TCP port)."""
    lines = [
        "[circus]",
        f"endpoint = ipc://{sock / 'circus.sock'}",
        f"pubsub_endpoint = ipc://{sock / 'circus-pubsub.sock'}",
        "check_delay = 5",
        "statsd = False",
        "",
    ]
    for name, argv in programs:
        log = log_dir / f"{name}.log"
        lines += [
            f"[watcher:{name}]",
            f"cmd = {argv[0]}",
            f"args = {shlex.join(argv[1:])}",
            f"working_dir = {REPO}",
            "copy_env = True",
            "numprocesses = 1",
            "respawn = True",
            "max_retry = -1",
            "stop_children = True",
            "graceful_timeout = 30",
            "stdout_stream.class = FileStream",
            f"stdout_stream.filename = {log}",
            "stderr_stream.class = FileStream",
            f"stderr_stream.filename = {log}",
            "",
        ]
    return "\n".join(lines)


def start_airflow(cluster: Cluster) -> None:
    """`airflow db migrate`, then Airflow's four components under one circusd (the process manager BentoML runs
    its own workers under: package kantoku), which starts a component again when it exits; waits until Airflow
    is healthy. Nothing when an Airflow answers already."""
    env = cluster.env
    base = env["AIRFLOW__API__BASE_URL"]
    if rl.api_up(base):
        print(f"reusing the Airflow already running at {base}")
        return
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    rl.private_file(home / rl.PASSWORD_FILE)
    try:
        rl.migrate_db(env)
    except SystemExit as exc:  # the embedded launcher exits saying why: a RuntimeError here, cleaned up by the caller
        raise RuntimeError(str(exc)) from None
    programs = rl.airflow_processes(env)
    for name, _ in programs:
        rl.private_file(home / f"{name}.log")  # the API server prints the generated password once
    ini = home / "circus.ini"
    (cluster.home / "pids").mkdir(parents=True, exist_ok=True)
    ini.write_text(circus_ini(programs, home, cluster.home / "pids"))
    proc = _start(cluster, "airflow", [str(Path(sys.executable).parent / "circusd"), str(ini)])
    deadline = time.time() + 600
    while not rl.api_up(base):
        if proc.poll() is not None:
            raise RuntimeError(f"circusd exited with {proc.returncode}: see {_logs(cluster) / 'airflow.log'}")
        if time.time() > deadline:
            raise RuntimeError(f"Airflow did not become healthy in 10 minutes: see the logs in {home}")
        time.sleep(3)
    os.chmod(home / rl.PASSWORD_FILE, 0o600)


def up(cluster: Cluster, services: bool = True) -> Cluster:
    """Everything the profile runs, started in dependency order; returns when Airflow is healthy."""
    for what, reason in (("PostgreSQL", servers.postgres_unreachable()), ("Redis", servers.redis_unreachable())):
        if reason:
            raise RuntimeError(f"the cluster profile needs {what}: {reason}")
    env = cluster.env
    _logs(cluster)
    for db in (env["HATCHERY_AIRFLOW_DB"], env["HATCHERY_MLFLOW_DB"], env["HATCHERY_STATE_DB"]):
        servers.ensure_database(db)
    Path(env["HATCHERY_HOME"]).mkdir(parents=True, exist_ok=True)
    start_remote(cluster)
    start_mlflow(cluster)
    if services:
        start_services(cluster, wait=False)  # they load while Airflow starts
    start_airflow(cluster)
    for name in cluster.workers:
        start_worker(cluster, name)
    if services:
        wait_for_services(cluster)
    api = cluster.api
    rl.wait_for_dag(api)
    ensure_pool(api, int(env["HATCHERY_DVC_SLOTS"]))
    api.patch(f"/api/v2/dags/{rl.DAG_ID}", {"is_paused": False})
    return cluster


def down(cluster: Cluster) -> None:
    """Stop every process whose pid file `up` wrote (each its own process group), workers first."""
    pids = cluster.home / "pids"
    if not pids.is_dir():
        return
    order = sorted(pids.glob("*.pid"), key=lambda p: (not p.stem.startswith("worker"), p.stem))
    for pid_file in order:
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):  # not a group leader: the process alone
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        pid_file.unlink()
        if pid_file.stem == "airflow":  # circusd: stops its components (30 s grace each), then exits
            deadline = time.monotonic() + 45
            while rl._group_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if rl._group_alive(pid):
                print(f"circusd (pid {pid}) still stopping Airflow's components after 45 s")
        print(f"stopped {pid_file.stem} (pid {pid})")
    for pid_file in (cluster.home / "airflow").glob("*.pid") if (cluster.home / "airflow").is_dir() else []:
        pid_file.unlink()  # pid files Airflow's components leave in their home: stale once they are stopped


def run(cluster: Cluster, charters: list[str], overrides: dict) -> int:
    api = cluster.api
    run_ids = {c: rl.trigger(api, c, overrides) for c in charters}
    base = cluster.env["AIRFLOW__API__BASE_URL"]
    for c, r in run_ids.items():
        print(f"triggered {rl.DAG_ID} for {c}: {base}/dags/{rl.DAG_ID}/runs/{r}")
    final = rl.follow(api, run_ids)
    for c, state in final.items():
        print(f"{c}: {state.upper()}  {base}/dags/{rl.DAG_ID}/runs/{run_ids[c]}")
    return 0 if all(s == "success" for s in final.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "up", "down"))
    parser.add_argument("--charter", action="append", help="charter name (repeatable); default: both shipped")
    parser.add_argument("--override", action="append", default=[], help="dotted.key=json_value params override")
    args = parser.parse_args()
    cluster = cluster_env()
    if args.command == "down":
        down(cluster)
        return 0
    try:
        up(cluster)
    except RuntimeError as exc:
        print(f"cluster profile: {exc}", file=sys.stderr)
        down(cluster)
        return 2
    env = cluster.env
    print(f"Airflow: {env['AIRFLOW__API__BASE_URL']} (CeleryExecutor; workers {', '.join(cluster.workers)})")
    print(f"MLflow:  {env['MLFLOW_TRACKING_URI']}  service: {', '.join(cluster.service_urls())}")
    print(f"DVC remote: {env['HATCHERY_DVC_REMOTE']}  state: {env['HATCHERY_STATE_URL']}")
    if args.command == "up":
        print("stop it with: .venv/bin/python infra/cluster/cluster.py down")
        return 0
    overrides = {}
    for item in args.override:
        key, _, raw = item.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except ValueError:
            overrides[key] = raw
    return run(cluster, args.charter or list(rl.DEFAULT_CHARTERS), overrides)


if __name__ == "__main__":
    sys.exit(main())
