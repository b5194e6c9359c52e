"""The whole incubation DAG on a tiny slice of the real data, through Airflow's own `dag.test`.

One module-scoped run pair (the same charter triggered twice) backs every test; each run is a fresh
interpreter with AIRFLOW_HOME, HATCHERY_HOME and MLflow in tmp (tests/dags/_dag_test_runner.py).
The tiny slice (400 search terms, 150 customers) and the few-step training overrides keep it to a
few minutes on 2 cores. What the gate decides on such a slice is not fixed in advance: the tests
check that the decision, the registry and the report agree, and that a weakened challenger is stopped.

A real `bentoml serve` (localhost, a free port, the same tmp HATCHERY_HOME and MLflow store) runs beside
the DAG for its rollout task. It starts with no model; the first gated challenger has nothing to shadow
or canary against, so the rollout makes it champion directly and the service must pick it up from the
rollout state file without a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from services import launch
from tests.dags._lifecycle_slice import write_slice

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("_dag_test_runner.py")
CHARTER = "semantic_search"
MODEL = "hatchery-search"
TINY = {
    "checks.min_products": 10,
    "checks.min_queries": 10,
    "checks.min_judgments": 10,
    "checks.min_events": 10,
    "checks.min_users": 10,
    "search.profiles.cpu.max_steps": 6,
    "search.profiles.cpu.batch_size": 8,
    "search.profiles.cpu.random_negatives": 64,
    "search.profiles.cpu.checkpoint_every": 3,
    "search.ann.recall_probe_queries": 10,
    "search.ranker.n_estimators": 20,
    "search.ranker.min_data_in_leaf": 5,
    "search.ranker.early_stopping_rounds": 5,
    "search.bootstrap_resamples": 50,
    # one ranker fold, not the shipped six (speed only): the fold logic, skipped folds included, has its own
    # tests (tests/pipelines/test_recommend_pipeline.py); six cost every end-to-end run minutes
    "recommend.ranker_folds": 1,
}


def _run_dag(conf: dict, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, str(RUNNER), json.dumps(conf)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("DAG_TEST_RESULT ")]
    assert lines, f"dag.test did not finish (exit {out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}"
    return json.loads(lines[-1].removeprefix("DAG_TEST_RESULT "))


def _run_folder(home: Path, run_id: str) -> Path:
    from artifacts.paths import Paths

    return Paths(root=home).incubation_run(run_id, CHARTER)


def _registry(tracking: str) -> dict:
    """Every version of the model with its aliases and tags: the state the gate must not touch on failure."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking, registry_uri=tracking)
    if not client.search_registered_models(filter_string=f"name = '{MODEL}'"):
        return {}
    aliases = client.get_registered_model(MODEL).aliases
    return {
        "aliases": dict(aliases),
        "versions": {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{MODEL}'")},
    }


@pytest.fixture(scope="module")
def lifecycle(homedepot_raw: pd.DataFrame, online_retail_raw: pd.DataFrame, tmp_path_factory) -> dict:
    import httpx

    root = tmp_path_factory.mktemp("lifecycle")
    home = root / "home"
    home.mkdir()
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow_home"),
        "HATCHERY_HOME": str(home),
        "MLFLOW_TRACKING_URI": tracking,
        "HATCHERY_PSEUDONYM_SALT": "test-salt",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    env.pop("HATCHERY_CHARTERS_DIR", None)
    for k in ("HATCHERY_SEARCH_BUNDLE", "HATCHERY_RECOMMEND_BUNDLE"):
        env.pop(k, None)
    service_log = root / "serve.log"
    service, url = launch.start_service(env, service_log)  # starts while the slice is written
    env["HATCHERY_SERVICE_URL"] = url
    try:
        data = write_slice(homedepot_raw, online_retail_raw, root / "data")
        launch.wait_for_service(service, url, service_log, path="/livez", timeout_s=180)
        conf = {
            "charter": CHARTER,
            "overrides": {"data.search.path": str(data), "data.recommend.path": str(data), **TINY},
        }
        first = _run_dag(conf, env)
        registry_after_first = _registry(tracking)
        second = _run_dag(conf, env)
        with httpx.Client(base_url=url, timeout=180) as http:
            status = http.post("/rollout_status", json={}).json()  # loads what the state file names, now
            served = http.post("/search", json={"query": "wood screws", "k": 3})
        assert service.poll() is None, service_log.read_text()[-3000:]
        yield {
            "home": home,
            "tracking": tracking,
            "url": url,
            "first": first,
            "second": second,
            "registry_after_first": registry_after_first,
            "registry_after_second": _registry(tracking),
            "service_status": status,
            "served": {"status": served.status_code, "body": served.json()},
        }
    finally:
        launch.stop_service(service)


def _ledger(home: Path, run_id: str) -> dict[str, dict]:
    folder = _run_folder(home, run_id) / "stages"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_every_stage_up_to_the_gate_runs(lifecycle):
    tasks = lifecycle["first"]["tasks"]
    charter = __import__("yaml").safe_load((REPO / "charters" / f"{CHARTER}.yaml").read_text())
    for t in ("requirements.validate_charter", "requirements.ingest", "requirements.validate", "requirements.split"):
        assert tasks[t] == "success", tasks
    trained = {k: v for k, v in tasks.items() if k.startswith("training.train_stage[")}
    assert sorted(trained) == sorted(f"training.train_stage[{s}]" for s in charter["stages"])
    assert set(trained.values()) == {"success"}, trained
    assert tasks["validation.gate"] in ("success", "failed")


def test_gate_decision_report_and_registry_agree(lifecycle):
    home, run_id = lifecycle["home"], lifecycle["first"]["run_id"]
    folder = _run_folder(home, run_id)
    gate = json.loads((folder / "gate.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    html = (folder / "index.html").read_text()
    tasks = lifecycle["first"]["tasks"]
    registry = lifecycle["registry_after_first"]
    assert len(registry["versions"]) == 1  # the register stage made exactly one version
    (version,) = registry["versions"]
    assert gate["passed"] == (tasks["validation.gate"] == "success")
    assert gate["context"]["challenger_version"] == version
    assert all(c["name"] in html for c in gate["checks"])
    if gate["passed"]:
        assert registry["versions"][version]["gate_run_id"] == gate["mlflow_run_id"]
    else:
        assert registry["aliases"] == {}
        assert summary["headline"].startswith("gate failed: GateFailed")
    # Only a challenger that passed the gate and was packaged is rolled out; the first one (no champion
    # before it) becomes champion directly, and its challenger alias is dropped.
    if gate["passed"] and tasks["packaging.package"] == "success":
        assert tasks["rollout"] == "success", _ledger(home, run_id).get("rollout")
        assert registry["aliases"] == {"champion": version}
        assert registry["versions"][version]["rollout_status"] == "champion"
    else:
        assert tasks["rollout"] == "upstream_failed"
        assert "champion" not in registry["aliases"]
        if gate["passed"]:
            assert registry["aliases"] == {"challenger": version}
    # the run ends red while anything failed (packaging fails until the serving stage ships a service)
    failed = [s for s in summary["stages"] if s["status"] != "success"]
    assert (lifecycle["first"]["state"] == "success") == (not failed)
    for stage in summary["stages"]:
        assert stage["task"] in html


def test_second_trigger_reuses_outputs_and_registry(lifecycle):
    home = lifecycle["home"]
    second = _ledger(home, lifecycle["second"]["run_id"])
    for task in (
        "ingest",
        "validate",
        "split",
        *json.loads((_run_folder(home, lifecycle["first"]["run_id"]) / "plan.json").read_text())["stages"],
    ):
        assert second[task]["status"] == "success", second[task]
        assert second[task]["result"]["ran"] is False, f"{task} ran again on unchanged data and code"
    first, second_tasks = lifecycle["first"]["tasks"], lifecycle["second"]["tasks"]
    if first["rollout"] == "success":
        # The champion is now this very version: the re-run is green end to end and moves nothing.
        for task in ("validation.gate", "packaging.package", "rollout", "report"):
            assert second_tasks[task] == "success", (task, second_tasks)
        assert "already the champion" in second["gate"]["result"]["reason"]
        assert lifecycle["registry_after_second"] == lifecycle["registry_after_first"]
    else:
        assert lifecycle["registry_after_second"] == lifecycle["registry_after_first"]
        assert second_tasks["validation.gate"] == first["validation.gate"]


def test_service_started_empty_serves_the_rolled_out_champion(lifecycle):
    registry = lifecycle["registry_after_second"]
    search = lifecycle["service_status"]["search"]
    if "champion" not in registry.get("aliases", {}):
        pytest.skip("the gate stopped the challenger on this slice: nothing was rolled out")
    champion = str(registry["aliases"]["champion"])
    assert search["ready"] and search["champion"] == champion, search
    assert search["state"]["phase"] == "full" and search["challenger"] is None
    served = lifecycle["served"]
    assert served["status"] == 200, served
    assert served["body"]["model_version"] == champion and served["body"]["arm"] == "champion"
    assert served["body"]["results"]


def test_rollout_rerun_after_promotion_changes_nothing(lifecycle, monkeypatch):
    from pipelines import lifecycle as lc

    if lifecycle["first"]["tasks"]["rollout"] != "success":
        pytest.skip("nothing was rolled out on this slice")
    plan = json.loads((_run_folder(lifecycle["home"], lifecycle["first"]["run_id"]) / "plan.json").read_text())
    monkeypatch.setenv("HATCHERY_HOME", str(lifecycle["home"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lifecycle["tracking"])
    monkeypatch.setenv("HATCHERY_SERVICE_URL", lifecycle["url"])
    state = (lifecycle["home"] / "reports" / "rollout" / "search" / "state.json").read_text()
    before = _registry(lifecycle["tracking"])
    result = lc.rollout(plan, "rerun")
    assert str(result["champion"]) == str(before["aliases"]["champion"]) and "already the champion" in result["reason"]
    assert _registry(lifecycle["tracking"]) == before
    assert (lifecycle["home"] / "reports" / "rollout" / "search" / "state.json").read_text() == state


def test_rollout_without_a_service_fails_saying_how_to_start_one(tmp_path, monkeypatch):
    from pipelines import lifecycle as lc

    monkeypatch.setenv("HATCHERY_HOME", str(tmp_path))
    monkeypatch.setenv("HATCHERY_SERVICE_URL", f"http://127.0.0.1:{launch.free_port()}")
    with pytest.raises(lc.ServiceUnavailable, match=r"make run.*bentoml serve services\.service:Hatchery"):
        lc.rollout({"charter": CHARTER, "overrides": {}}, "no-service")
    ledger = json.loads((_run_folder(tmp_path, "no-service") / "stages" / "rollout.json").read_text())
    assert ledger["status"] == "failed" and "ServiceUnavailable" in ledger["reason"]


def test_weakened_challenger_is_stopped_and_registry_untouched(lifecycle, tmp_path, monkeypatch):
    """A challenger whose ranking lost its learned signal (per-query NDCG halved below the worst baseline)."""
    from artifacts.paths import Paths
    from components.schema import models_with, unit_column
    from pipelines import gate
    from pipelines.requirements import load_charter

    plan = json.loads((_run_folder(lifecycle["home"], lifecycle["first"]["run_id"]) / "plan.json").read_text())
    workspace, weak = Paths(root=Path(plan["workspace"])), Paths(root=tmp_path / "weak")
    for src, dst in (
        (workspace.metrics_file("search"), weak.metrics_file("search")),
        (workspace.registered("search"), weak.registered("search")),
    ):
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    weak.bundle("search").symlink_to(workspace.bundle("search"), target_is_directory=True)
    per_unit = pd.read_parquet(workspace.per_unit("search"))
    primary = json.loads(workspace.metrics_file("search").read_text())["primary"]
    metric = "ndcg_at_10"
    baselines = [unit_column(m, metric) for m in models_with(per_unit.columns, metric) if m != primary]
    worst = min(baselines, key=lambda c: per_unit[c].mean())
    per_unit[unit_column(primary, metric)] = per_unit[worst] * 0.5
    weak.per_unit("search").parent.mkdir(parents=True, exist_ok=True)
    per_unit.to_parquet(weak.per_unit("search"), index=False)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", lifecycle["tracking"])
    before = _registry(lifecycle["tracking"])
    with pytest.raises(gate.GateFailed, match=rf"primary:{metric}: .*difference -"):
        gate.run(load_charter(CHARTER), weak)
    assert _registry(lifecycle["tracking"]) == before
    report = json.loads(weak.gate_report("search").read_text())
    assert report["passed"] is False and "primary" in report["reason"]
