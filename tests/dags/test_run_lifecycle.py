"""`make run`'s servers: every one binds loopback, the admin password file is 0600, task logs still show.

The command lines and environment come from infra/airflow/run_lifecycle.py itself (no server started);
one slow test starts the four Airflow components as `make run` does, in tmp with a one-task DAG, and
checks every listening socket of theirs, the files' modes, and a task's log through the REST API.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1", "::1")


@pytest.fixture(scope="module")
def rl():
    spec = importlib.util.spec_from_file_location("run_lifecycle", REPO / "infra" / "airflow" / "run_lifecycle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def env(rl, monkeypatch, tmp_path: Path) -> dict[str, str]:
    for key in [k for k in os.environ if k.startswith(("AIRFLOW", "HATCHERY_", "MLFLOW_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    return rl.service_env(rl.airflow_env())


def test_every_airflow_server_binds_loopback_and_no_log_server_starts(rl, env) -> None:
    specs = dict(rl.airflow_processes(env))
    assert list(specs) == ["api-server", "scheduler", "dag-processor", "triggerer"]  # not `standalone`
    assert not any("standalone" in argv for argv in specs.values())
    api = specs["api-server"]
    assert api[api.index("--host") + 1] == "127.0.0.1" and api[api.index("--port") + 1] == env["AIRFLOW_PORT"]
    assert "--skip-serve-logs" in specs["scheduler"] and "--skip-serve-logs" in specs["triggerer"]
    assert env["AIRFLOW__API__BASE_URL"].startswith("http://127.0.0.1:")
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"


def test_mlflow_ui_and_the_service_bind_loopback(rl, env, monkeypatch) -> None:
    import inspect

    from services import launch

    monkeypatch.setenv("MLFLOW_HOST", "0.0.0.0")  # the MLflow CLI's own switch is not passed through
    cmd = rl.mlflow_ui_command(env)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert inspect.signature(launch.start_service).parameters["host"].default == "127.0.0.1"
    assert env["HATCHERY_SERVICE_URL"].startswith("http://127.0.0.1:")


def test_dev_mode_only_when_no_salt_is_given(rl, monkeypatch) -> None:
    for key in ("HATCHERY_PSEUDONYM_SALT", "HATCHERY_ENV"):
        monkeypatch.delenv(key, raising=False)
    assert rl.airflow_env()["HATCHERY_ENV"] == "dev"
    monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "s3cret")
    assert "HATCHERY_ENV" not in rl.airflow_env()
    monkeypatch.delenv("HATCHERY_PSEUDONYM_SALT")
    monkeypatch.setenv("HATCHERY_ENV", "production")  # said on purpose: kept, and ingest will ask for the salt
    assert rl.airflow_env()["HATCHERY_ENV"] == "production"


def test_private_files_are_0600_whatever_the_umask(rl, tmp_path: Path) -> None:
    existing = tmp_path / "simple_auth_manager_passwords.json.generated"
    existing.write_text('{"admin": "pw"}\n')
    existing.chmod(0o644)  # as an older `make run` left it
    old = os.umask(0)
    try:
        fresh = rl.private_file(tmp_path / "api-server.log")
    finally:
        os.umask(old)
    rl.private_file(existing)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600 and stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert existing.read_text() == '{"admin": "pw"}\n'  # kept: the password stays the same


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROBE_DAG = """
from airflow.sdk import dag, task


@dag(schedule=None)
def probe():
    @task
    def hello():
        print("hello from the probe task")

    hello()


probe()
"""


@pytest.mark.slow
def test_started_airflow_listens_on_loopback_only_and_serves_task_logs(rl, env, tmp_path: Path) -> None:
    import psutil

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "probe.py").write_text(PROBE_DAG)
    port = str(_free_port())
    env.update({
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_PORT": port,
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "HATCHERY_HOME": str(tmp_path / "home"),
    })  # fmt: skip
    home = Path(env["AIRFLOW_HOME"])
    procs = rl.start_airflow(env)
    assert procs is not None, "an Airflow was already answering on a free port"
    try:
        api = rl.Api(env["AIRFLOW__API__BASE_URL"], home)
        deadline = time.time() + 120
        while True:
            try:
                api.get("/api/v2/dags/probe")
                break
            except Exception:  # noqa: BLE001 - 404 until the dag-processor has parsed it
                assert time.time() < deadline, "the probe DAG was never parsed"
                time.sleep(2)
        run_id = api.post("/api/v2/dags/probe/dagRuns", {"logical_date": None})["dag_run_id"]
        deadline = time.time() + 180
        while (state := api.get(f"/api/v2/dags/probe/dagRuns/{run_id}")["state"]) not in ("success", "failed"):
            assert time.time() < deadline, f"the probe run is still {state}"
            time.sleep(2)
        assert state == "success"
        log = api.get(f"/api/v2/dags/probe/dagRuns/{run_id}/taskInstances/hello/logs/1")
        assert "hello from the probe task" in str(log.get("content"))  # read from the log folder, no log server

        listening = []
        for proc in procs:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for p in family:
                try:
                    conns = p.net_connections(kind="inet")
                except psutil.NoSuchProcess:
                    continue
                listening += [(p.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
        assert listening, "the API server should be listening"
        assert all(ip in LOOPBACK for _, ip, _ in listening), listening
        assert {p for _, _, p in listening} == {int(port)}  # no log servers (8793/8794), nothing else
        for name in (rl.PASSWORD_FILE, "api-server.log", "scheduler.log"):
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
        assert "admin" in (home / rl.PASSWORD_FILE).read_text()
    finally:
        rl.stop_airflow(home)
    for proc in procs:
        proc.wait(timeout=60)


# Ignores SIGTERM, then says so by creating the file named by its first argument (on a loaded machine the
# interpreter can take seconds to get there: the test waits for the files, not for a fixed time).
IGNORE_TERM = (
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(600)"
)
STUBBORN = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", {IGNORE_TERM!r}, sys.argv[1] + ".child"])
{IGNORE_TERM}
"""


def test_stop_kills_a_component_that_ignores_sigterm_and_its_children(rl, tmp_path: Path) -> None:
    """`--stop` must end what it started even when a component hangs in its shutdown: SIGTERM first, then
    SIGKILL to the whole process group after the grace period, and return only once they are gone."""
    home = tmp_path / "airflow_home"
    home.mkdir()
    ready = tmp_path / "ready"
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN, str(ready)], start_new_session=True)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    (home / "scheduler.pid").write_text(str(stubborn.pid))
    (home / "triggerer.pid").write_text(str(polite.pid))
    deadline = time.monotonic() + 60
    while not (ready.exists() and Path(f"{ready}.child").exists()):  # both ignore SIGTERM now
        assert time.monotonic() < deadline, "the stubborn component and its child did not start within 60 s"
        time.sleep(0.05)
    assert rl._group_alive(stubborn.pid)

    started = time.monotonic()
    rl.stop_airflow(home, grace_s=2)
    assert 2 <= time.monotonic() - started < 30
    assert not rl._group_alive(stubborn.pid), "the stubborn group (parent and child) is gone"
    assert not rl._group_alive(polite.pid)
    assert stubborn.wait(timeout=5) == -9 and polite.wait(timeout=5) == -15
    assert not list(home.glob("*.pid"))


def test_a_read_that_times_out_is_asked_again_and_a_write_never_is(rl, tmp_path: Path) -> None:
    """The API server also serves the running tasks; on a busy machine one answer can come too late. A GET
    is asked again (and still fails, with the timeout, when every try is late); a POST is sent once."""
    import http.server
    import json
    import threading

    (tmp_path / rl.PASSWORD_FILE).write_text('{"admin": "pw"}')
    late = {"GET": 1, "POST": 1}  # how many of the next requests of each kind stall past the client's timeout
    seen: list[str] = []

    class Stalling(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: dict) -> None:
            seen.append(f"{self.command} {self.path}")
            if self.path != "/auth/token" and late[self.command] > 0:
                late[self.command] -= 1
                time.sleep(1.5)
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer({"state": "running"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer({"access_token": "t"} if self.path == "/auth/token" else {"dag_run_id": "r"})

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = rl.Api(f"http://127.0.0.1:{server.server_port}", tmp_path, timeout=0.5, read_attempts=3)
        assert api.get("/api/v2/dags/incubation/dagRuns/r") == {"state": "running"}  # the second try answers
        assert seen.count("GET /api/v2/dags/incubation/dagRuns/r") == 2

        with pytest.raises(TimeoutError):
            api.post("/api/v2/dags/incubation/dagRuns", {"conf": {}})
        assert seen.count("POST /api/v2/dags/incubation/dagRuns") == 1  # a trigger is never sent twice

        late["GET"] = 3
        with pytest.raises((TimeoutError, OSError)):
            api.get("/api/v2/dags/incubation/dagRuns/r")
        assert seen.count("GET /api/v2/dags/incubation/dagRuns/r") == 5
    finally:
        server.shutdown()
