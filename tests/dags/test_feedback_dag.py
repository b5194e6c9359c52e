"""The feedback DAG: loads cleanly, wires the loop as intended, updates the asset incubation is scheduled on,
parses fast and light; the incubation DAG reads its charter, overrides and reason from the asset event."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.dags.test_incubation_dag import HEAVY

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["feedback"]


def _module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_dag_module", DAGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"feedback", "incubation"} <= set(dagbag.dags)


def test_task_graph_and_retries(dag):
    up = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    assert up == {
        "collect_logs": [],
        "implicit_judgments": ["collect_logs"],
        "monitor": ["collect_logs"],  # drift is watched even when the judgments fail
        "retrain": ["implicit_judgments", "monitor"],  # the incubation it starts trains on the judgments
    }
    retries = {t.task_id: t.retries for t in dag.tasks}
    # a lost process is retried everywhere; retrain only repeats the monitor's decision
    assert all(retries[t] >= 1 for t in ("collect_logs", "implicit_judgments", "monitor", "retrain")), retries
    assert dag.get_task("implicit_judgments").pool == "hatchery_dvc"  # DVC locks the repository
    assert dag.max_active_runs == 1 and not dag.catchup


def test_retrain_updates_the_asset_incubation_is_scheduled_on(dagbag, dag):
    (outlet,) = dag.get_task("retrain").outlets
    assert (outlet.name, outlet.uri) == ("hatchery_retrain", "hatchery://feedback/retrain")
    incubation = dagbag.dags["incubation"]
    scheduled_on = incubation.timetable.asset_condition.objects
    assert [(a.name, a.uri) for a in scheduled_on] == [(outlet.name, outlet.uri)]


def test_schedule_is_hourly_by_default_and_configurable(monkeypatch):
    assert _module("feedback").SCHEDULE == "@hourly"
    monkeypatch.setenv("HATCHERY_FEEDBACK_SCHEDULE", "*/15 * * * *")
    assert _module("feedback").SCHEDULE == "*/15 * * * *"
    monkeypatch.setenv("HATCHERY_FEEDBACK_SCHEDULE", "none")
    assert _module("feedback").SCHEDULE is None


def test_no_trigger_skips_the_asset_update_and_a_trigger_annotates_it():
    from airflow.sdk.exceptions import AirflowSkipException

    module = _module("feedback")
    events = {module.RETRAIN: SimpleNamespace(extra={})}
    with pytest.raises(AirflowSkipException, match="no drift"):
        module._emit({"trigger": False, "reports": {"semantic_search": "no drift on 500 requests"}}, events)
    assert events[module.RETRAIN].extra == {}
    decision = {
        "trigger": True,
        "charter": "semantic_search",
        "reason": "drift: oov_rate",
        "overrides": {"search.ranker.n_estimators": 20},
        "report": "/x/reports/monitor/semantic_search.html",
        "monitor_until": 1.0,
        "reports": {},
    }
    extra = module._emit(decision, events)
    assert events[module.RETRAIN].extra == extra and extra["reason"] == "drift: oov_rate"
    assert json.loads(json.dumps(extra)) == extra  # an asset event's extra must be JSON


def _event(extra: dict, minute: int):
    return SimpleNamespace(
        extra=extra, timestamp=datetime(2026, 1, 1, 0, minute, tzinfo=UTC), source_dag_id="feedback", source_run_id="r"
    )


def test_incubation_takes_charter_overrides_and_reason_from_the_asset_event():
    module = _module("incubation")
    params = {"charter": "semantic_search", "overrides": {"a": 1}}
    # a manual trigger (no asset events): the run's params, no trigger
    assert module._request(params, {}) == {"charter": "semantic_search", "overrides": {"a": 1}, "trigger": None}
    assert module._request(params, None)["trigger"] is None
    older = _event({"charter": "semantic_search", "reason": "old", "overrides": {}}, 1)
    newer = _event(
        {"charter": "personalised_recommendations", "reason": "drift: unseen_users", "overrides": {"b": 2}}, 2
    )
    request = module._request(params, {module.RETRAIN: [newer, older]})
    assert request["charter"] == "personalised_recommendations" and request["overrides"] == {"b": 2}
    assert request["trigger"]["reason"] == "drift: unseen_users" and request["trigger"]["events"] == 2
    assert request["trigger"]["charters"] == ["personalised_recommendations", "semantic_search"]
    assert request["trigger"]["source"] == "feedback/r"


def test_parse_is_fast_and_imports_no_heavy_module():
    code = f"""
import importlib.util, json, sys, time
import airflow.sdk  # noqa: F401
before = set(sys.modules)
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("feedback_dag", {str(DAGS / "feedback.py")!r})
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
