"""The feedback loop end to end, with a real Airflow scheduler: serve -> simulated traffic with a shift ->
feedback logged -> the `feedback` DAG detects the drift -> `incubation` starts by itself on the asset ->
gate -> staged rollout -> the new champion serves; then traffic without a shift triggers nothing.

One module-scoped run backs every test (tiny slice, the TINY training overrides of test_incubation_e2e,
AIRFLOW_HOME, HATCHERY_HOME and MLflow in tmp, a real `bentoml serve` on a free port):

1. the first champion: `incubation` through `dag.test`, as test_incubation_e2e does, with the feedback
   judgments switched on as a training source (empty while nothing was served), content features only;
2. 150 searches with reworded queries (components/feedback/shop.py drives the live service: its shoppers
   click by the train judgments) and their clicks through POST /feedback;
3. `feedback` through `dag.test`: implicit judgments from the store, the monitor, the asset event;
4. Airflow's four components start as `make run` starts them (infra/airflow/run_lifecycle.py): the
   scheduler finds the queued asset event and creates the asset-triggered `incubation` run, which retrains
   on the new judgments (a new version), gates it against the champion, rolls it out through shadow and
   canary steps on the live service and reports;
5. 150 searches as the training data has them, answered by the new champion, and a `feedback` run triggered
   through the REST API (as from the UI), which the scheduler runs: its window starts when the new champion
   took all the traffic (the shifted and the rollout's replayed requests came before), no asset event, no run.

The charter is semantic_search with an hour-long monitor window, no cooldown and no count trigger (so a second
run that does not trigger does so for want of drift), and a rollout of health checks only at small sample
sizes: the loop's mechanics, inside CI's time. So that the gate has something to tell apart on 40 test
queries, the first champion ranks on content features only and the retrain has every feature group (the
judgment priors, and the log priors the feedback brings): it must pass the gate, go through shadow and the
canary steps to full, and be the version the service answers with.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from services import launch
from tests.dags._lifecycle_slice import write_slice
from tests.dags.test_incubation_e2e import TINY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHARTER = "semantic_search"
MODEL = "hatchery-search"
WINDOW_H = 1.0  # it holds all the shifted traffic at the first monitor run, however slow the machine
OVERRIDES = {
    **TINY,
    "search.feedback_judgments.enabled": True,
    "search.feedback_judgments.min_impressions": 1,
    "search.feedback_judgments.min_confidence": 0.0,
    "rollout.batch_requests": 20,
    "rollout.concurrency": 2,
}
RUNNER = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.pool import Pool
from airflow.utils import db
db.initdb()
Pool.create_or_update_pool("hatchery_dvc", slots=1, description="DVC repository lock", include_deferred=False)
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags[sys.argv[2]].test(run_conf=json.loads(sys.argv[3]))
label = lambda ti: ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
states = {label(ti): str(ti.state) for ti in run.get_task_instances()}
print("DAG_TEST_RESULT " + json.dumps({"run_id": run.run_id, "state": str(run.state), "tasks": states}))
"""


def _charter(folder: Path) -> Path:
    raw = yaml.safe_load((REPO / "charters" / f"{CHARTER}.yaml").read_text())
    raw["monitor"] = {
        "window_hours": WINDOW_H,
        "min_requests": 100,
        "retrain_after_feedback": 0,
        "cooldown_hours": 0,
        "sample_requests": 150,
        "permutations": 200,
        "thresholds": {"min_ctr": None},
    }
    # Any challenger at least as good as the champion passes; slices are reported, not judged (40 test queries).
    raw["primary_metric"].update(min_improvement=0.0, confidence=0.51, bootstrap_resamples=200)
    raw["slices"].update(max_drop=1.0, min_units=1000)
    rollout = raw["rollout"]
    rollout["shadow"]["exit"].update(min_requests=2500, min_hours=0)
    for step, n in zip(rollout["canary"], (1000, 2500, 5000), strict=True):
        step["success"].update(min_requests=n, min_hours=0, test="none")  # health only, x request_scale 0.02
    rollout["interleaving_share"] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{CHARTER}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def _dag_test(dag_id: str, conf: dict, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, str(REPO / "dags"), dag_id, json.dumps(conf)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("DAG_TEST_RESULT ")]
    assert lines, f"dag.test {dag_id} did not finish (exit {out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}"
    return json.loads(lines[-1].removeprefix("DAG_TEST_RESULT "))


def _db(env: dict[str, str], sql: str, args: tuple = ()) -> list[tuple]:
    path = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(path, timeout=30) as conn:
        return conn.execute(sql, args).fetchall()


def _registry(tracking: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking, registry_uri=tracking)
    if not client.search_registered_models(filter_string=f"name = '{MODEL}'"):
        return {"aliases": {}, "versions": []}
    return {
        "aliases": {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()},  # as the service says
        "versions": sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")),
    }


def _shop(http, train: pd.DataFrame, scale, n: int, seed: int, shift: float) -> dict:
    """`n` searches of the simulated shop through the live service, then their feedback through POST /feedback."""
    from components.feedback import shop

    served: list[str] = []
    versions: Counter = Counter()

    def rank(query: str, k: int) -> list[str]:
        answer = http.post("/search", json={"query": query, "k": k, "session_id": f"e2e-{seed}-{len(served) // 3}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        served.append(body["request_id"])
        versions[str(body["model_version"])] += 1
        return [r["product_id"] for r in body["results"]]

    tokens = Counter(t for q in train["query"].drop_duplicates() for t in q.split())
    reword = {w: f"{w}zq" for w, _ in tokens.most_common(200)}  # query wording changes: new spellings
    now = time.time()
    traffic = shop.search_traffic(train, rank, n, seed, now, now + 1, scale, reword=reword, shift=shift)
    ids = {shop.request_id(seed, "search", i): rid for i, rid in enumerate(served)}
    events = [
        {"request_id": ids[e.request_id], "event": e.event, "product_id": e.product_id, "position": int(e.position),
         "ts": time.time()}
        for e in traffic.feedback.itertuples()
    ]  # fmt: skip
    accepted = 0
    for i in range(0, len(events), 50):  # a body stays under the service's 16 KiB limit
        answer = http.post("/feedback", json={"events": events[i : i + 50]})
        assert answer.status_code == 202, answer.text
        accepted += answer.json()["accepted"]
    return {
        "requests": len(served),
        "events": len(events),
        "accepted": accepted,
        "until": time.time(),
        "versions": dict(versions),
    }


def _wait_for_asset_run(env: dict[str, str], timeout_s: float) -> tuple[str, str]:
    deadline, rows = time.time() + timeout_s, []
    while time.time() < deadline:
        rows = _db(
            env, "SELECT run_id, state FROM dag_run WHERE dag_id = 'incubation' AND run_type = 'asset_triggered'"
        )
        if rows and rows[-1][1] in ("success", "failed"):
            return rows[-1]
        time.sleep(5)
    pytest.fail(f"no asset-triggered incubation run ended within {timeout_s:.0f} s: {rows}")


def _diagnostics(env: dict[str, str], run_id: str, tasks: list[tuple]) -> str:
    """When the asset-triggered run did not succeed: its task states, the tail of each failed task's log and of
    the scheduler's (CI keeps only pytest's output)."""
    airflow_home = Path(env["AIRFLOW_HOME"])
    parts = [f"run {run_id}: {sorted(tasks, key=str)}"]
    run_logs = airflow_home / "logs" / "dag_id=incubation" / f"run_id={run_id}"
    for task_id, _, state in tasks:
        if state != "success":
            for log_file in sorted(run_logs.glob(f"task_id={task_id}/**/*.log")):
                tail = log_file.read_text(errors="replace")[-3000:]
                parts.append(f"--- {log_file.relative_to(airflow_home)}\n{tail}")
    scheduler = airflow_home / "scheduler.log"
    if scheduler.exists():
        parts.append(f"--- scheduler.log\n{scheduler.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)


def _run_lifecycle():
    """infra/airflow/run_lifecycle.py, the script `make run` starts Airflow with."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_lifecycle", REPO / "infra" / "airflow" / "run_lifecycle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _follow(api, dag_id: str, run_id: str, timeout_s: float) -> dict:
    deadline = time.time() + timeout_s
    while (state := api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]) not in ("success", "failed"):
        assert time.time() < deadline, f"{dag_id} run {run_id} is still {state}"
        time.sleep(5)
    tis = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    return {"run_id": run_id, "state": state, "tasks": {t["task_id"]: t["state"] for t in tis}}


@pytest.fixture(scope="module")
def loop(homedepot_raw: pd.DataFrame, online_retail_raw: pd.DataFrame, tmp_path_factory) -> dict:
    import httpx

    from artifacts.paths import Paths
    from pipelines.common import load_params
    from pipelines.dvc_stage import workspace_root

    rl = _run_lifecycle()
    root = tmp_path_factory.mktemp("loop")
    home, airflow_home = root / "home", root / "airflow_home"
    home.mkdir()
    airflow_home.mkdir()
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    port = str(launch.free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HATCHERY_", "MLFLOW_"))}
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW_PORT": port,
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "HATCHERY_HOME": str(home),
        "HATCHERY_CHARTERS_DIR": str(_charter(root / "charters")),
        "HATCHERY_FEEDBACK_SCHEDULE": "none",  # the test starts its runs; no hourly run in between
        "HATCHERY_PSEUDONYM_SALT": "test-salt",
        "HATCHERY_ROLLOUT_WAIT_S": "60",
        "MLFLOW_TRACKING_URI": tracking,
    })  # fmt: skip
    env = rl.airflow_env(env)  # what `make run` sets: LocalExecutor, SQLite in AIRFLOW_HOME, loopback, unpaused
    service_log = root / "serve.log"
    service, url = launch.start_service(env, service_log)
    env["HATCHERY_SERVICE_URL"] = url
    started = False
    try:
        data = write_slice(homedepot_raw, online_retail_raw, root / "data")
        launch.wait_for_service(service, url, service_log, path="/livez", timeout_s=180)
        overrides = {"data.search.path": str(data), "data.recommend.path": str(data), **OVERRIDES}
        # The first champion ranks on content features only; the retrain the loop starts has every group (the
        # judgment priors and the log priors of the new feedback): a challenger the gate can tell apart.
        first_overrides = {**overrides, "search.ranker.feature_groups": ["content"]}
        first = _dag_test("incubation", {"charter": CHARTER, "overrides": first_overrides}, env)
        registry_first = _registry(tracking)
        assert "champion" in registry_first["aliases"], f"no first champion on this slice: {first['tasks']}"

        # The service loads the new champion in the background: traffic once it answers with it (as `make run`
        # says "ready").
        serving = rl.wait_for_champions(url, ["search"], timeout_s=600)
        assert serving == {"search": registry_first["aliases"]["champion"]}, serving
        workspace = workspace_root(first_overrides, Paths(root=home))
        train = pd.read_parquet(workspace / "data" / "split" / "search" / "train.parquet")
        scale = load_params(overrides=overrides).data.search.relevance
        with httpx.Client(base_url=url, timeout=120) as http:
            shifted = _shop(http, train, scale, 150, seed=1, shift=1.0)
            feedback_shift = _dag_test("feedback", {"overrides": overrides}, env)
            events = _db(env, "SELECT extra FROM asset_event")

            # The four components, as `make run` starts them: the scheduler finds the queued asset event.
            assert rl.start_airflow(env) is not None, "an Airflow already answered on a free port"
            started = True
            api = rl.Api(env["AIRFLOW__API__BASE_URL"], airflow_home)
            run_id, run_state = _wait_for_asset_run(env, timeout_s=1500)
            tasks = _db(env, "SELECT task_id, map_index, state FROM task_instance WHERE run_id = ?", (run_id,))
            diagnostics = "" if run_state == "success" else _diagnostics(env, run_id, tasks)
            registry_after = _registry(tracking)
            status = http.post("/rollout_status", json={}).json()

            # Traffic as the training data has it, and a run of `feedback` triggered like one from the UI. The
            # shifted traffic and the rollout's replayed requests (held-out queries) are still within the
            # charter's window, but came before the new champion took all the traffic: the monitor leaves them out.
            calm = _shop(http, train, scale, 150, seed=2, shift=0.0)
            runs_before = _db(env, "SELECT run_id FROM dag_run WHERE dag_id = 'incubation'")
            calm_run = api.post(
                "/api/v2/dags/feedback/dagRuns", {"logical_date": None, "conf": {"overrides": overrides}}
            )
            feedback_calm = _follow(api, "feedback", calm_run["dag_run_id"], timeout_s=900)
            time.sleep(20)  # scheduler loops: an asset event would have queued an incubation run by now
            runs_after = _db(env, "SELECT run_id FROM dag_run WHERE dag_id = 'incubation'")
        assert service.poll() is None, service_log.read_text()[-3000:]
        yield {
            "home": home,
            "workspace": workspace,
            "first": first,
            "registry_first": registry_first,
            "shifted": shifted,
            "feedback_shift": feedback_shift,
            "asset_events": [json.loads(e[0]) if e[0] else {} for e in events],
            "run_id": run_id,
            "run_state": run_state,
            "diagnostics": diagnostics,
            "tasks": {f"{t}[{m}]" if m >= 0 else t: st for t, m, st in tasks},
            "registry_after": registry_after,
            "status": status,
            "calm": calm,
            "feedback_calm": feedback_calm,
            "runs_before": runs_before,
            "runs_after": runs_after,
        }
    finally:
        if started:
            rl.stop_airflow(airflow_home)
        launch.stop_service(service)


def _monitor_report(home: Path) -> dict:
    return json.loads((home / "reports" / "monitor" / f"{CHARTER}.json").read_text())


def test_served_traffic_and_feedback_are_logged(loop):
    from artifacts.feedback_store import FeedbackStore

    store = FeedbackStore(path=loop["home"] / "feedback" / "feedback.sqlite")
    answers = store.impressions(domain="search", items=False)
    assert len(answers) >= loop["shifted"]["requests"] + loop["calm"]["requests"]
    assert loop["shifted"]["accepted"] == loop["shifted"]["events"] > 0
    assert len(store.feedback(domain="search")) >= loop["shifted"]["accepted"] + loop["calm"]["accepted"]


def test_the_feedback_dag_detects_the_shift_and_updates_the_asset(loop):
    tasks = loop["feedback_shift"]["tasks"]
    assert tasks["monitor"] == "success" and tasks["retrain"] == "success", tasks
    (event,) = loop["asset_events"][:1]
    assert event["charter"] == CHARTER and event["reason"].startswith("drift: ")
    assert "oov_rate" in event["reason"] or "query_embedding_mmd" in event["reason"]


def test_incubation_started_by_itself_with_the_reason(loop):
    from artifacts.paths import Paths

    assert loop["run_id"].startswith("asset_triggered__")
    folder = Paths(root=loop["home"]).incubation_run(loop["run_id"], CHARTER)
    assert (folder / "plan.json").exists(), loop["diagnostics"]
    plan = json.loads((folder / "plan.json").read_text())
    reason = loop["asset_events"][0]["reason"]
    assert plan["trigger"]["reason"] == reason and plan["trigger"]["asset"] == "hatchery_retrain"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trigger"]["reason"] == reason
    assert "Started by the feedback loop" in (folder / "index.html").read_text()
    assert loop["tasks"]["requirements.validate_charter"] == "success", loop["tasks"]


def test_the_new_judgments_retrain_and_gate_registry_and_service_agree(loop):
    tasks, registry = loop["tasks"], loop["registry_after"]
    assert tasks.get("training.train_stage[3]") == "success", loop["diagnostics"]  # train_ranker, new judgments
    assert len(registry["versions"]) == len(loop["registry_first"]["versions"]) + 1, registry  # a new version
    new = str(max(registry["versions"]))
    search = loop["status"]["search"]
    # Every feature group against a content-only champion: the gate passes, the rollout takes it to full.
    assert tasks["validation.gate"] == "success" and tasks["rollout"] == "success", tasks
    assert loop["run_state"] == "success", tasks
    assert registry["aliases"].get("champion") == new
    assert search["champion"] == new and search["state"]["phase"] == "full", search
    assert loop["calm"]["versions"] == {new: loop["calm"]["requests"]}  # every later answer is the new champion's


def test_traffic_without_a_shift_triggers_nothing(loop):
    tasks = loop["feedback_calm"]["tasks"]
    assert tasks["monitor"] == "success" and tasks["retrain"] == "skipped", tasks
    report = _monitor_report(loop["home"])
    assert report["decision"]["trigger"] is False and report["decision"]["breaches"] == [], report["decision"]
    assert report["window"]["cut_at_takeover"] is True, report["window"]
    assert report["requests"] == loop["calm"]["requests"]  # the window holds the calm traffic only
    assert loop["runs_after"] == loop["runs_before"]  # no incubation run was queued
