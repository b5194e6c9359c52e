"""monitor on a tiny slice of the real data: the champion's training split as reference, simulated shop traffic
(components/feedback/shop.py, shoppers acting on the train judgments) in a real feedback store. Traffic like the
training data triggers nothing; reworded queries and new shoppers are caught; the reports, the state, MLflow and
the service's gauges agree."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from artifacts.feedback_store import FeedbackStore
from artifacts.paths import Paths
from bench.monitor import store_traffic
from components.charter import DriftThresholds, MonitorPlan
from components.feedback import shop
from components.schema import PRODUCT_ID, QUERY, USER_ID
from pipelines import ingest, monitor, split, validate
from pipelines.requirements import load_charter
from tests.pipelines.data_slices import small_params, write_mini_datasets

NOW = 2_000_000_000.0  # the end of every simulated window (unix s; 2033, after the champion is registered)
HOUR = 3600.0


@pytest.fixture(scope="module")
def world(tmp_path_factory, homedepot_raw, online_retail_raw):
    """Ingested, validated and split once; a registered champion for both charters."""
    root = tmp_path_factory.mktemp("monitor")
    data = write_mini_datasets(root / "datasets", homedepot_raw, online_retail_raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HATCHERY_HOME", str(root / "home"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'home' / 'mlflow.db'}")
        mp.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
        paths = Paths(root=root / "home")
        params = small_params(data)
        ingest.run(params, paths)
        validate.run(params, paths)
        split.run(params, paths)
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{root / 'home' / 'mlflow.db'}")
        for name in ("hatchery-search", "hatchery-recommend"):
            client.create_registered_model(name)
            client.create_model_version(name, source=str(root), run_id=None)
            client.set_registered_model_alias(name, "champion", "1")
        yield {"root": root, "paths": paths, "params": params}


@pytest.fixture
def env(world, monkeypatch):
    monkeypatch.setenv("HATCHERY_HOME", str(world["paths"].root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{world['paths'].root / 'mlflow.db'}")
    monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
    return world


def _search_traffic(
    paths: Paths, params, seed: int, shift: float, n: int = 300, start: float = NOW - HOUR, end: float = NOW - 60
) -> shop.Traffic:
    train = pd.read_parquet(paths.split / "search" / "train.parquet")
    judged = {q: list(g.sort_values("relevance", ascending=False)[PRODUCT_ID]) for q, g in train.groupby(QUERY)}
    filler = list(train[PRODUCT_ID].value_counts().index[:10])
    tokens = Counter(t for q in train[QUERY].drop_duplicates() for t in q.split())
    # Query wording changes: the 200 commonest words of the training queries come reworded (new spellings).
    reword = {w: f"{w}zq" for w, _ in tokens.most_common(200)}
    return shop.search_traffic(
        train,
        lambda q, k: (judged.get(q, []) + filler)[:k],
        n,
        seed,
        start,
        end,
        params.data.search.relevance,
        reword=reword,
        shift=shift,
    )


def _plan(**kw) -> MonitorPlan:
    return MonitorPlan(**{"min_requests": 100, "retrain_after_feedback": 0, "cooldown_hours": 24, **kw})


def _charter(name: str, plan: MonitorPlan):
    return load_charter(name).model_copy(update={"monitor": plan})


def _run(world, traffic, charter, folder: str, now: float = NOW) -> dict:
    paths = Paths(root=world["paths"].root / folder)
    store = FeedbackStore(path=paths.root / "feedback.sqlite")
    if traffic is not None:
        store_traffic(store, traffic)
    return monitor.run(world["params"], paths, charter, now=now, store=store, data=world["paths"])


def test_traffic_like_the_training_data_triggers_nothing(env):
    traffic = _search_traffic(env["paths"], env["params"], seed=1, shift=0.0)
    report = _run(env, traffic, _charter("semantic_search", _plan()), "calm")
    checks = {c["name"]: c for c in report["checks"]}
    assert report["requests"] == 300 and report["feedback_events"] == len(traffic.feedback)
    assert report["decision"]["trigger"] is False, report["decision"]
    assert [c["name"] for c in report["checks"] if c["breached"]] == []
    assert checks["oov_rate"]["value"] == 0.0  # every query token is a training query's
    assert checks["unseen_items"]["value"] == 0.0  # shoppers click what the ranker showed: judged products
    assert {"query_length_psi", "query_embedding_mmd", "popularity_psi", "ctr[vsimulated]"} <= set(checks)
    assert checks["ctr[vsimulated]"]["value"] == pytest.approx(
        traffic.feedback.loc[traffic.feedback["event"] == "click", "request_id"].nunique() / 300
    )


def test_reworded_queries_are_drift_and_trigger_once(env):
    traffic = _search_traffic(env["paths"], env["params"], seed=2, shift=1.0)
    charter = _charter("semantic_search", _plan())
    report = _run(env, traffic, charter, "reworded")
    breached = [c["name"] for c in report["checks"] if c["breached"]]
    assert "oov_rate" in breached and "query_embedding_mmd" in breached, report["checks"]
    assert report["decision"]["trigger"] is True and report["decision"]["reason"].startswith("drift: ")
    folder = Paths(root=env["paths"].root / "reworded")
    saved = json.loads(folder.monitor("semantic_search.json").read_text())
    assert saved["decision"] == report["decision"]
    html = folder.monitor("semantic_search.html").read_text()
    assert "TRIGGER" in html and all(name in html for name in breached)
    state = json.loads(folder.monitor("state.json").read_text())["semantic_search"]
    assert state["last_trigger"] == NOW and state["champion"] == "1"
    # an hour later the drift is still there, but the incubation it started needs its time
    again = monitor.run(
        env["params"], folder, charter, now=NOW + HOUR, store=FeedbackStore(path=folder.root / "feedback.sqlite"),
        data=env["paths"],
    )  # fmt: skip
    assert again["decision"]["trigger"] is False and "cooling down" in again["decision"]["reason"]


def test_the_window_starts_when_the_champion_took_all_the_traffic(env):
    """Reworded traffic answered before the champion's rollout reached `full` (it started the run that made this
    champion) is left out; the traffic after it is the window: no second trigger from the same shift."""
    from artifacts.rollout_store import RolloutStore
    from components.rollout import state as ro

    folder = Paths(root=env["paths"].root / "takeover")
    store = FeedbackStore(path=folder.root / "feedback.sqlite")
    store_traffic(store, _search_traffic(env["paths"], env["params"], seed=5, shift=1.0))  # in the hour before NOW
    took_over = NOW - 50
    full = ro.RolloutState(
        domain="search", phase="full", champion=ro.ModelRef("1", "models:/hatchery-search/1"), phase_started=took_over
    )
    RolloutStore(folder, "search").save(
        full, ro.AuditEntry(took_over, "test", "promote", "canary", "full", None, "1", "")
    )
    store_traffic(
        store, _search_traffic(env["paths"], env["params"], seed=6, shift=0.0, n=120, start=NOW - 40, end=NOW - 1)
    )
    charter = _charter("semantic_search", _plan())
    report = monitor.run(env["params"], folder, charter, now=NOW, store=store, data=env["paths"])
    assert report["window"]["since"] == took_over and report["window"]["cut_at_takeover"] is True
    assert report["requests"] == 120, report["window"]  # the calm traffic only
    assert report["decision"]["trigger"] is False, report["decision"]
    assert "took all the traffic" in folder.monitor("semantic_search.html").read_text()
    # Another version's state (a rollout under way, a champion set by hand) does not cut the window.
    RolloutStore(folder, "search").save(
        ro.RolloutState(domain="search", phase="shadow", champion=ro.ModelRef("1", "x"), phase_started=took_over),
        ro.AuditEntry(NOW, "test", "begin", "full", "shadow", "1", "1", ""),
    )
    report = monitor.run(env["params"], folder, charter, now=NOW, store=store, data=env["paths"], log_mlflow=False)
    assert report["requests"] == 420 and report["window"]["cut_at_takeover"] is False


def test_enough_new_feedback_triggers_without_drift(env):
    traffic = _search_traffic(env["paths"], env["params"], seed=3, shift=0.0)
    plan = _plan(retrain_after_feedback=len(traffic.feedback))
    report = _run(env, traffic, _charter("semantic_search", plan), "busy")
    assert report["decision"]["trigger"] is True and report["decision"]["reason"].startswith("new feedback")
    assert report["decision"]["new_feedback"] == len(traffic.feedback)


def test_few_requests_give_no_verdict(env):
    traffic = _search_traffic(env["paths"], env["params"], seed=4, shift=1.0, n=40)
    report = _run(env, traffic, _charter("semantic_search", _plan(min_requests=100)), "quiet")
    assert report["decision"]["trigger"] is False and "no verdict" in report["decision"]["reason"]


def test_new_shoppers_are_caught_in_recommendations(env):
    history = pd.read_parquet(env["paths"].split / "recommend" / "test" / "history.parquet")
    truths = {u: set(g[PRODUCT_ID]) for u, g in history.groupby(USER_ID)}
    popular = list(history[PRODUCT_ID].value_counts().index[:20])

    # A personal ranker: the shopper's own past purchases first (what a trained recommender leans on), then
    # the best sellers; a new shopper gets the best sellers only.
    def rank(user: str, k: int) -> list[str]:
        return (sorted(truths.get(user, ())) + popular)[:k]

    charter = _charter("personalised_recommendations", _plan(thresholds=DriftThresholds(min_purchase_rate=None)))

    def visits(seed, new):
        return shop.recommend_traffic(truths, rank, 300, seed, NOW - HOUR, NOW - 60, new_user_share=new)

    calm = _run(env, visits(5, 0.0), charter, "rec_calm")
    assert calm["decision"]["trigger"] is False, calm["checks"]
    new = _run(env, visits(6, 0.8), charter, "rec_new")
    unseen = next(c for c in new["checks"] if c["name"] == "unseen_users")
    assert unseen["breached"] and unseen["value"] > 0.7 and new["decision"]["trigger"] is True
    assert "query_length_psi" not in {c["name"] for c in new["checks"]}  # no queries in recommendations


def test_no_champion_no_trigger(env, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    traffic = _search_traffic(env["paths"], env["params"], seed=7, shift=1.0)
    report = _run(env, traffic, _charter("semantic_search", _plan()), "nochampion")
    assert report["champion"] is None and report["decision"]["trigger"] is False


def test_run_logs_to_mlflow_and_gauges_publish_the_report(env):
    from mlflow import MlflowClient

    from services.metrics import Metrics

    folder = Paths(root=env["paths"].root / "reworded")
    if not folder.monitor("semantic_search.json").exists():
        _run(
            env,
            _search_traffic(env["paths"], env["params"], seed=2, shift=1.0),
            _charter("semantic_search", _plan()),
            "reworded",
        )
    client = MlflowClient(f"sqlite:///{env['paths'].root / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("hatchery").experiment_id], "tags.step = 'monitor'", max_results=50
    )
    assert runs and any("drift_oov_rate" in r.data.metrics for r in runs)

    import prometheus_client as pc

    metrics = Metrics()
    assert metrics.refresh_drift(folder.monitor()) == 1
    assert metrics.refresh_drift(folder.monitor()) == 0  # unchanged: not read again
    value = pc.REGISTRY.get_sample_value("hatchery_drift_breached", {"charter": "semantic_search", "check": "oov_rate"})
    assert value == 1.0
    assert pc.REGISTRY.get_sample_value("hatchery_drift_trigger", {"charter": "semantic_search"}) in (0.0, 1.0)


def test_a_day_is_read_in_hourly_chunks(env):
    """Answers and their clicks split across a chunk boundary are still joined; a request counts once."""

    class Recording:
        def __init__(self, store):
            self.store, self.calls = store, []

        def impressions(self, since, until, domain, items=True):
            self.calls.append((since, until))
            return self.store.impressions(since, until, domain, items=items)

        def feedback(self, since, until, domain):
            return self.store.feedback(since, until, domain)

    paths = Paths(root=env["paths"].root / "chunks")
    store = FeedbackStore(path=paths.root / "feedback.sqlite")
    traffic = _search_traffic(env["paths"], env["params"], seed=8, shift=0.0)
    store_traffic(store, traffic)
    recording = Recording(store)
    scan = monitor.scan_window(recording, "search", NOW - 3 * HOUR, NOW, seed=0)
    assert len(recording.calls) == 3 and recording.calls[0] == (NOW - 3 * HOUR, NOW - 2 * HOUR)
    clicked = traffic.feedback.loc[traffic.feedback["event"] == "click", "request_id"].nunique()
    assert scan.requests == 300 and scan.per_version["simulated"]["click"] == clicked
    small = monitor.scan_window(store, "search", NOW - 3 * HOUR, NOW, seed=0, max_sample=50)
    again = monitor.scan_window(store, "search", NOW - 3 * HOUR, NOW, seed=0, max_sample=50)
    assert len(small.sample) == 50 and small.sample["request_id"].tolist() == again.sample["request_id"].tolist()


def test_collect_applies_the_retention_and_says_what_the_store_holds(tmp_path):
    from bench.monitor import fill_store

    store = FeedbackStore(path=tmp_path / "feedback.sqlite", retention_s=HOUR, max_bytes=1 << 40)
    n = fill_store(store, NOW - 2 * HOUR, 2 * HOUR, rps=0.1, seed=0)  # 720 answers over two hours
    out = monitor.collect(now=NOW, store=store)
    assert n == 720 and out["deleted"]["impressions"] == 360 and out["holds"]["impressions"] == 360
    assert out["size_bytes"] > 0 and "sqlite" in out["store"]
