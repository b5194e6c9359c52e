"""One embedded Airflow, MLflow UI and Hatchery service in tmp, as `make run` starts them, for the browser tests.

    world = start_world(root, homedepot_raw, online_retail_raw)   # data slice, service, Airflow, MLflow UI
    ...                                                            # the tests drive the UIs
    stop_world(world)

Everything comes from infra/airflow/run_lifecycle.py (its environment, its four Airflow components,
its `mlflow ui` command) and services/launch.py, on free loopback ports, with AIRFLOW_HOME,
HATCHERY_HOME and the MLflow store under `root`. The data is the tiny slice of tests/dags
(_lifecycle_slice.py) and the run overrides are the end-to-end test's TINY ones, so one incubation
run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd

from services import launch
from tests.dags._lifecycle_slice import write_slice

REPO = Path(__file__).resolve().parents[2]
CHARTER = "semantic_search"


def run_lifecycle_module():
    spec = importlib.util.spec_from_file_location("run_lifecycle", REPO / "infra" / "airflow" / "run_lifecycle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_overrides(data: Path) -> dict:
    from tests.dags.test_incubation_e2e import TINY

    return {"data.search.path": str(data), "data.recommend.path": str(data), **TINY}


def start_world(root: Path, homedepot_raw: pd.DataFrame, online_retail_raw: pd.DataFrame) -> dict:
    """Start the service, the four Airflow components and the MLflow UI under `root`; the handles and URLs."""
    rl = run_lifecycle_module()
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    api_port, service_port, mlflow_port = launch.free_port(), launch.free_port(), launch.free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HATCHERY_", "MLFLOW_"))}
    base.update({
        "AIRFLOW_HOME": str(root / "airflow_home"),
        "AIRFLOW_PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # Only `incubation` runs (unpaused below): another DAG of dags/ on a schedule would hold the DVC pool.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "HATCHERY_HOME": str(home),
        "HATCHERY_PSEUDONYM_SALT": "test-salt",
        "HATCHERY_ENV": "dev",
        "HATCHERY_SERVICE_PORT": str(service_port),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLFLOW_PORT": str(mlflow_port),
        "HATCHERY_MLFLOW_URL": f"http://127.0.0.1:{mlflow_port}",
    })  # fmt: skip
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(base)
    try:
        env = rl.service_env(rl.airflow_env())
    finally:
        os.environ.clear()
        os.environ.update(saved)
    data = write_slice(homedepot_raw, online_retail_raw, root / "data")
    service, service_url = launch.start_service(env, root / "service.log", port=service_port)
    env["HATCHERY_SERVICE_URL"] = service_url
    procs = rl.start_airflow(env)
    assert procs is not None, "an Airflow already answered on a free port"
    mlflow_log = (root / "mlflow_ui.log").open("ab")
    # Its own process group: `mlflow ui` runs its server as a child, stopped with it.
    mlflow_ui = subprocess.Popen(
        rl.mlflow_ui_command(env),
        cwd=home,
        env=env,
        stdout=mlflow_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    world = {
        "rl": rl,
        "env": env,
        "root": root,
        "home": home,
        "data": data,
        "service": service,
        "service_url": service_url,
        "airflow_url": env["AIRFLOW__API__BASE_URL"],
        "mlflow_url": env["HATCHERY_MLFLOW_URL"],
        "mlflow_ui": mlflow_ui,
        "airflow_procs": procs,
    }
    api = rl.Api(world["airflow_url"], Path(env["AIRFLOW_HOME"]))
    rl.wait_for_dag(api, timeout=300)
    rl.ensure_pool(api)
    api.patch(f"/api/v2/dags/{rl.DAG_ID}", {"is_paused": False})
    world["api"] = api
    world["password"] = next(iter(json.loads((Path(env["AIRFLOW_HOME"]) / rl.PASSWORD_FILE).read_text()).values()))
    return world


def wait_for_run(world: dict, run_id: str, timeout_s: float = 1500) -> str:
    """The run's final state (success / failed), polling the REST API."""
    api, deadline = world["api"], time.time() + timeout_s
    while True:
        state = api.get(f"/api/v2/dags/incubation/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return state
        if time.time() > deadline:
            raise TimeoutError(f"incubation run {run_id} still {state} after {timeout_s:.0f} s")
        time.sleep(3)


def stop_world(world: dict) -> None:
    world["rl"].stop_airflow(Path(world["env"]["AIRFLOW_HOME"]))
    for proc in world["airflow_procs"]:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    launch.stop_service(world["mlflow_ui"].pid)  # SIGTERM to its process group
    try:
        world["mlflow_ui"].wait(timeout=30)
    except subprocess.TimeoutExpired:
        world["mlflow_ui"].kill()
    launch.stop_service(world["service"])
