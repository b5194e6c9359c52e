"""The incubation DAG: loads cleanly, wires the lifecycle as intended, parses fast and light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
HEAVY = ("torch", "lightgbm", "mlflow", "pandas", "transformers", "faiss", "dvc", "bentoml", "great_expectations")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["incubation"]


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "incubation" in dagbag.dags


def test_task_graph(dag):
    up = {t.task_id: sorted(t.upstream_task_ids - {"requirements.validate_charter"}) for t in dag.tasks}
    assert up == {
        "requirements.validate_charter": [],
        "requirements.ingest": [],
        "requirements.validate": ["requirements.ingest"],
        "requirements.split": ["requirements.validate"],
        "training.plan_training": ["requirements.split"],
        "training.train_stage": ["training.plan_training"],
        "validation.gate": ["training.train_stage"],
        "packaging.package": ["validation.gate"],
        "rollout": ["packaging.package"],
        "report": ["rollout"],
    }
    # every later task reads the plan the charter check returns
    assert all(
        "requirements.validate_charter" in t.upstream_task_ids
        for t in dag.tasks
        if t.task_id not in ("requirements.validate_charter", "report")
    )
    assert dag.get_task("report").trigger_rule == "all_done"  # the report is written whatever failed


def test_training_is_mapped_over_the_charter_stages(dag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    train = dag.get_task("training.train_stage")
    assert isinstance(train, MappedOperator)
    assert train.max_active_tis_per_dagrun == 1


def test_retries_and_pool(dag):
    # Every task but the rollout retries a lost process; the rollout would replay traffic it already judged.
    for t in dag.tasks:
        if t.task_id == "rollout":
            assert t.retries == 0, f"{t.task_id}: a rollout that decided should not be replayed"
        else:
            assert t.retries >= 1, f"{t.task_id} has no retries"
    dvc_tasks = {
        "requirements.ingest",
        "requirements.validate",
        "requirements.split",
        "training.train_stage",
        "validation.gate",
        "packaging.package",
    }
    assert {t.task_id for t in dag.tasks if t.pool == "hatchery_dvc"} == dvc_tasks


@pytest.mark.parametrize(
    ("task_id", "args"),
    [
        ("requirements.validate_charter", {"params": {"charter": "no_such_charter", "overrides": {}}}),
        ("validation.gate", {"plan": {"charter": "no_such_charter"}}),
        ("report", {"params": {"charter": "no_such_charter", "overrides": {}}}),
    ],
)
def test_a_decision_fails_without_the_retries_a_lost_process_gets(dag, task_id, args, tmp_path, monkeypatch):
    """The body's own error (here: an unknown charter) is AirflowFailException, which Airflow never retries."""
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("HATCHERY_HOME", str(tmp_path))
    # The report step logs to MLflow and sets MLFLOW_TRACKING_URI when unset (as in a task's own process):
    # set here, so the test leaves the environment as it found it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    task = dag.get_task(task_id)
    assert task.retries >= 1
    with pytest.raises(AirflowFailException, match="no_such_charter"):
        task.python_callable(**args, run_id="manual__test")


def test_tags_params_and_schedule(dag):
    assert {"hatchery", "incubation"} <= set(dag.tags)
    # no clock: it runs when triggered by hand or when the feedback loop updates its asset (dags/feedback.py)
    assert [(a.name, a.uri) for a in dag.schedule] == [("hatchery_retrain", "hatchery://feedback/retrain")]
    shipped = sorted(p.stem for p in (REPO / "charters").glob("*.yaml"))
    charter = dag.params.get_param("charter")
    assert charter.schema["enum"] == shipped
    assert dag.params["overrides"] == {}


def test_parse_is_fast_and_imports_no_heavy_module():
    """In a fresh interpreter: import the SDK first (its cost is Airflow's), then time the DAG file alone."""
    code = f"""
import importlib.util, json, sys, time
import airflow.sdk  # noqa: F401
before = set(sys.modules)
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("incubation_dag", {str(DAGS / "incubation.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
took = time.perf_counter() - start
heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in {HEAVY!r})
print(json.dumps({{"seconds": took, "heavy": heavy}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["seconds"] < 0.5, f"DAG file took {result['seconds']:.3f}s to parse"
