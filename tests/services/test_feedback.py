"""Capture at serve time: request ids, the impression log, POST /feedback and its refusals, a store that stalls.

Through the ASGI app with stand-in models (tests/services/_stand_ins.py), one app for the module; the
feedback store is the embedded SQLite file under the test's root, read back with FeedbackStore. The
PostgreSQL backend runs against the local server (skipped, saying why, only when it is unreachable).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artifacts.feedback_store import FeedbackStore
from artifacts.paths import Paths
from components.feedback import records as r
from tests.services._stand_ins import forget_bentoml_metrics, make_bundle, stand_in_loader

SALT = "feedback-test-salt"
BURST = 5  # one unit's events at once in this module's app


def _sample(name: str, labels: dict) -> float:
    import prometheus_client as pc

    return pc.REGISTRY.get_sample_value(name, labels) or 0.0


def _wait(predicate, timeout_s: float = 60.0):  # a writer process starts in seconds (minutes on a loaded box)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got is not None and got is not False:
            return got
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(TestClient, FeedbackStore reading the app's store, Paths): stand-ins "7" (search) and "8" (recommend)."""
    from starlette.testclient import TestClient

    import services.runtime as runtime
    from services.service import Hatchery

    root = tmp_path_factory.mktemp("feedback")
    mp = pytest.MonkeyPatch()
    mp.setenv("HATCHERY_HOME", str(root))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'empty.db'}")
    mp.setenv("HATCHERY_PSEUDONYM_SALT", SALT)
    mp.setenv("HATCHERY_FEEDBACK_BURST", str(BURST))
    mp.setenv("HATCHERY_FEEDBACK_RATE", "0.001")  # no refill within the module: a flood stays refused
    mp.delenv("HATCHERY_STATE_URL", raising=False)
    mp.delenv("HATCHERY_CAPTURE", raising=False)
    for domain, version in (("search", "7"), ("recommend", "8")):
        mp.setenv(f"HATCHERY_{domain.upper()}_BUNDLE", make_bundle(root, version).uri)
        mp.setenv(f"HATCHERY_{domain.upper()}_VERSION", version)
    mp.setattr(runtime, "load_bundle", stand_in_loader)
    forget_bentoml_metrics()
    paths = Paths(root=root)
    try:
        with TestClient(Hatchery.to_asgi()) as http:
            yield http, FeedbackStore(paths=paths), paths
    finally:
        mp.undo()


def _search(http, **body) -> dict:
    answer = http.post("/search", json={"query": "drill", "k": 3, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _click(answer: dict, i: int = 1, **change) -> dict:
    item = answer["results"][i - 1]
    return {"request_id": answer["request_id"], "event": "click", "product_id": item["product_id"], "position": i} | {
        "ts": time.time(),
        **change,
    }


def _logged(store: FeedbackStore, request_id: str) -> dict:
    return _wait(lambda: store.impression(request_id))


def _settled(http, store: FeedbackStore) -> int:
    """Send one valid event and wait for it: whatever was queued before it is in the store too (one FIFO writer)."""
    answer = _search(http)
    _logged(store, answer["request_id"])
    assert http.post("/feedback", json=_click(answer)).status_code == 202
    _wait(lambda: answer["request_id"] in set(store.feedback()["request_id"]))
    return len(store.feedback())


# --- request ids and the impression log ------------------------------------------------------------------
def test_every_answer_has_a_request_id_and_its_impression_is_logged(app) -> None:
    from components.privacy import pseudonymize

    http, store, _ = app
    search = _search(http, session_id="shopper-session-1", query="drill for jo@example.com")
    rec = http.post("/recommend", json={"user_id": "17850", "k": 2}).json()
    similar = http.post("/similar", json={"product_id": "p1", "k": 2}).json()
    ids = [a["request_id"] for a in (search, rec, similar)]
    assert all(r.REQUEST_ID_PATTERN.match(i) for i in ids) and len(set(ids)) == 3
    assert all("_features" not in item for item in search["results"])  # the log's fields never reach the client

    got = _logged(store, search["request_id"])
    session_pseudonym = pseudonymize(pd.Series(["shopper-session-1"]), SALT).iloc[0]
    assert got["domain"] == "search" and got["endpoint"] == "search" and got["model_version"] == "7"
    assert got["arm"] == "champion" and got["unit"] == session_pseudonym and got["user"] is None
    assert got["query"] == "drill for [email]"  # personal data in a query is masked before it is stored
    assert [(i["product_id"], i["position"], i["score"]) for i in got["items"]] == [
        (x["product_id"], n, x["score"]) for n, x in enumerate(search["results"], start=1)
    ]
    assert all(i["features"] == {} for i in got["items"])  # the stand-in exposes no ranker features
    assert r.impression_problems(got) == []

    user = pseudonymize(pd.Series(["17850"]), SALT).iloc[0]
    got = _logged(store, rec["request_id"])
    assert (got["domain"], got["endpoint"], got["user"], got["unit"], got["query"]) == (
        "recommend",
        "recommend",
        user,
        user,
        None,
    )
    got = _logged(store, similar["request_id"])
    assert (got["domain"], got["endpoint"], got["unit"]) == ("recommend", "similar", None)  # its own unit

    frame = store.impressions(domain="search")
    assert tuple(frame.columns) == r.IMPRESSION_COLUMNS
    mine = frame[frame["request_id"] == search["request_id"]]
    assert mine["position"].tolist() == [1, 2, 3] and set(mine["features"]) == {"{}"}


def test_feedback_one_event_or_a_batch_is_accepted_stored_once_with_the_servers_unit_and_time(app) -> None:
    http, store, _ = app
    answer = _search(http, session_id="shopper-session-2")
    before = time.time()
    one = http.post("/feedback", json=_click(answer, 2))
    assert one.status_code == 202 and one.json() == {"accepted": 1}
    batch = [_click(answer, 1, event="add_to_cart"), _click(answer, 1, event="purchase")]
    assert http.post("/feedback", json={"events": batch}).json() == {"accepted": 2}
    assert http.post("/feedback", json={"events": batch}).status_code == 202  # a client's retry...

    def mine():
        rows = store.feedback()
        rows = rows[rows["request_id"] == answer["request_id"]]
        return rows if len(rows) >= 3 else None

    rows = _wait(mine)
    _settled(http, store)  # anything the retry might still add is written by now
    rows = mine()
    assert len(rows) == 3  # ... counts nothing twice
    unit = store.impression(answer["request_id"])["unit"]
    assert set(rows["unit"]) == {unit} and set(rows["domain"]) == {"search"}
    assert sorted(rows["event"]) == ["add_to_cart", "click", "purchase"]
    assert (rows["received_ts"] >= before).all() and tuple(rows.columns) == r.FEEDBACK_COLUMNS


class StalledStore(FeedbackStore):
    """Writes only once the file `gate` exists, and touches `<gate>.entered` when a write begins: files,
    because the capture writer is another process (which unpickles this store)."""

    def __init__(self, path: Path, gate: Path) -> None:
        super().__init__(path=path)
        self.gate = gate

    def append_many(self, impressions, events) -> None:
        Path(f"{self.gate}.entered").touch()
        deadline = time.monotonic() + 30
        while not self.gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().append_many(impressions, events)


class FailingStore(FeedbackStore):
    def append_many(self, impressions, events) -> None:
        raise OSError(28, "No space left on device")


def _pending(request_id: str | None = None, items: tuple = (("a", 1.0, None),)):
    from services.capture import Pending

    rid = request_id or uuid.uuid4().hex
    return Pending(rid, time.time(), "search", "search", "1", "champion", None, None, "q", items)


def test_a_click_sent_before_the_impression_is_written_finds_it_in_memory(tmp_path) -> None:
    from services.capture import Capture, FeedbackIntake

    gate = tmp_path / "gate"
    capture = Capture(StalledStore(tmp_path / "f.sqlite", gate), SALT).start()
    intake = FeedbackIntake(capture, r.TokenBucket(1, 10))
    pending = _pending()
    assert capture.submit_impression(pending)
    event = {"request_id": pending.request_id, "event": "click", "product_id": "a", "position": 1, "ts": time.time()}
    assert intake.receive([event]) == (202, {"accepted": 1})
    assert not capture.flush(0.2)  # still stalled: nothing is written yet
    gate.touch()
    assert capture.flush(30)
    assert capture.store.counts() == {"impressions": 1, "items": 1, "events": 1}
    capture.close()


# --- bad feedback --------------------------------------------------------------------------------------------
BAD = [
    # (name, how to build the request from a fresh answer, status, what the reason says)
    ("unknown request id", lambda a: {"json": _click(a, request_id=uuid.uuid4().hex)}, 422, "unknown request_id"),
    ("product not shown", lambda a: {"json": _click(a, product_id="elsewhere")}, 422, "was not shown"),
    ("position mismatch", lambda a: {"json": _click(a, 1, position=2)}, 422, "shown at position 1, not 2"),
    ("future timestamp", lambda a: {"json": _click(a, ts=time.time() + 3600)}, 422, "in the future"),
    ("before the answer", lambda a: {"json": _click(a, ts=time.time() - 3600)}, 422, "before the answer was shown"),
    ("unknown event type", lambda a: {"json": _click(a, event="view")}, 400, "'click', 'add_to_cart' or 'purchase'"),
    ("timestamp as text", lambda a: {"json": _click(a, ts="yesterday")}, 400, "ts"),
    ("position 0", lambda a: {"json": _click(a, position=0)}, 400, "position"),
    ("missing fields", lambda a: {"json": {"request_id": a["request_id"]}}, 400, "missing field(s) event"),
    ("an event and a batch", lambda a: {"json": {**_click(a), "events": [_click(a)]}}, 400, "not both"),
    ("empty batch", lambda a: {"json": {"events": []}}, 400, "events"),
    ("batch over 100", lambda a: {"json": {"events": [_click(a)] * 101}}, 400, "at most 100"),
    ("unknown field", lambda a: {"json": {**_click(a), "unit": "mine"}}, 400, "unit"),
    (
        "malformed JSON",
        lambda a: {"content": b'{"request_id": ', "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
    ),  # noqa: E501
    (
        "not JSON",
        lambda a: {"content": b"request_id=1", "headers": {"content-type": "text/plain"}},
        415,
        "Content-Type",
    ),
    (
        "body too large",
        lambda a: {"content": b" " * 20_000, "headers": {"content-type": "application/json"}},
        413,
        "exceeds",
    ),  # noqa: E501
    (
        "one bad event in a batch",
        lambda a: {"json": {"events": [_click(a), _click(a, 2, product_id="elsewhere")]}},
        422,
        "1 of 2 event(s) refused, none stored",
    ),
]


@pytest.mark.parametrize(("name", "build", "status", "says"), BAD, ids=[b[0] for b in BAD])
def test_bad_feedback_gets_a_4xx_with_the_reason_and_leaves_the_store_unchanged(app, name, build, status, says):
    http, store, _ = app
    answer = _search(http)
    _logged(store, answer["request_id"])
    before = _settled(http, store)
    response = http.post("/feedback", **build(answer))
    assert response.status_code == status, response.text
    body = response.json()
    assert says in body["error"] + body.get("detail", ""), body
    if status == 422:
        assert all(x["code"] in r.REJECTION_CODES and x["reason"] for x in body["rejected"])
    assert _settled(http, store) == before + 1  # only the settling event itself was added


def test_a_flood_from_one_unit_gets_429_and_is_counted(app) -> None:
    http, store, _ = app
    answers = [_search(http, session_id="flooder") for _ in range(2)]
    before = _settled(http, store)
    dropped = _sample("hatchery_feedback_events_total", {"outcome": "rate_limited", "reason": "rate_limited"})
    for n in range(BURST):  # the burst is spent across the unit's answers
        assert http.post("/feedback", json=_click(answers[n % 2], 1 + n % 3)).status_code == 202
    flood = http.post("/feedback", json=_click(answers[0], 2))
    assert flood.status_code == 429 and "too many feedback events from one unit" in flood.json()["error"]
    assert flood.json()["retry_after_s"] > 0
    other = _search(http, session_id="someone-else")  # another unit is not held back
    assert http.post("/feedback", json=_click(other)).status_code == 202
    assert _sample("hatchery_feedback_events_total", {"outcome": "rate_limited", "reason": "rate_limited"}) == (
        dropped + 1
    )
    assert _settled(http, store) == before + BURST + 2
    assert _sample("hatchery_feedback_events_total", {"outcome": "rejected", "reason": "unknown_request"}) >= 1


# --- the writer never holds an answer up ---------------------------------------------------------------------
def test_a_stalled_or_failing_store_never_delays_or_fails_an_answer(tmp_path, monkeypatch) -> None:
    from services.capture import Capture
    from services.metrics import Metrics
    from services.runtime import DomainRuntime

    monkeypatch.setenv("HATCHERY_SEARCH_BUNDLE", make_bundle(tmp_path, "5").uri)
    metrics = Metrics()
    rt = DomainRuntime("search", Paths(root=tmp_path), loader=stand_in_loader, metrics=metrics)
    rt.start()

    def answer() -> dict:
        return rt.call("search", None, lambda m: m.model.search("q", k=3), lambda res: [x["product_id"] for x in res])

    gate = tmp_path / "gate"
    rt.capture = Capture(StalledStore(tmp_path / "f.sqlite", gate), SALT, metrics).start()
    first = answer()
    _wait(lambda: Path(f"{gate}.entered").exists(), 60)  # the writer is stuck in a write
    t0 = time.perf_counter()
    answers = [answer() for _ in range(20)]
    assert time.perf_counter() - t0 < 2.0  # 20 answers went out while the store was stuck
    gate.touch()
    assert rt.capture.flush(30)
    assert all(rt.capture.store.impression(a["request_id"]) for a in [first, *answers])  # and were written after
    rt.capture.close()

    errors = _sample("hatchery_capture_total", {"kind": "impression", "outcome": "write_error"})
    rt.capture = Capture(FailingStore(path=tmp_path / "g.sqlite"), SALT, metrics).start()
    lost = [answer() for _ in range(5)]
    assert all(len(a["results"]) == 3 for a in lost) and rt.capture.flush(30)
    assert _sample("hatchery_capture_total", {"kind": "impression", "outcome": "write_error"}) == errors + 5
    rt.capture.close()


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path) -> None:
    from services.capture import Capture
    from services.metrics import Metrics

    gate = tmp_path / "gate"
    metrics = Metrics()
    dropped = _sample("hatchery_capture_total", {"kind": "impression", "outcome": "dropped"})
    capture = Capture(StalledStore(tmp_path / "f.sqlite", gate), SALT, metrics, queue_size=2, batch_size=1).start()
    assert capture.submit_impression(_pending())
    _wait(lambda: Path(f"{gate}.entered").exists(), 60)  # the writer holds that one, stalled
    t0 = time.perf_counter()
    kept = [capture.submit_impression(_pending()) for _ in range(50)]
    assert time.perf_counter() - t0 < 0.5
    assert kept == [True] + [False] * 49  # 2 not yet written (the stalled one and this): the rest dropped at once
    assert _sample("hatchery_capture_total", {"kind": "impression", "outcome": "dropped"}) == dropped + 49
    assert not capture.submit_feedback([{"request_id": "x"}] * 3)
    gate.touch()
    assert capture.flush(30) and capture.store.counts()["impressions"] == 2
    capture.close()


def test_the_writer_runs_below_the_services_priority(tmp_path) -> None:
    """Where the writer shares a core with an answer, the answer goes first (services/capture.WRITER_NICE)."""
    import psutil

    from services.capture import WRITER_NICE, Capture

    capture = Capture(FeedbackStore(path=tmp_path / "f.sqlite"), SALT).start()
    try:
        assert capture.submit_impression(_pending()) and capture.flush(30)  # it has started and written
        assert psutil.Process(capture.writer_pid).nice() == min(os.nice(0) + WRITER_NICE, 19) > os.nice(0)
    finally:
        capture.close()
    assert capture.writer_pid is None


def test_a_runtime_without_capture_serves_and_writes_nothing(tmp_path, monkeypatch) -> None:
    from services.metrics import Metrics
    from services.runtime import DomainRuntime

    monkeypatch.setenv("HATCHERY_SEARCH_BUNDLE", make_bundle(tmp_path, "9").uri)
    rt = DomainRuntime("search", Paths(root=tmp_path), loader=stand_in_loader, metrics=Metrics())
    rt.start()
    answer = rt.call("search", None, lambda m: m.model.search("q", k=2), lambda res: [x["product_id"] for x in res])
    assert len(answer["results"]) == 2 and not (tmp_path / "feedback").exists()


# --- the ranker's features in the log are the ones it scored --------------------------------------------------
def test_search_results_with_features_rank_exactly_as_rank_queries() -> None:
    """A real SearchModel with a real (tiny) ranker; synthetic vectors stand in for the query tower (the
    cache hands them over), so no encoder is loaded: the ranking steps are what is compared."""
    from components import schema as s
    from components.ann import build_index
    from components.bm25 import fit_bm25
    from components.search_features import product_priors
    from components.search_model import SearchModel
    from services.capture import FEATURES_KEY
    from services.runtime import QueryCache, search_results
    from tests.unit.test_search_model import TITLES, _booster

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(TITLES) + 3, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"p{i}" for i in range(len(TITLES))]
    judged = pd.DataFrame({s.QUERY_ID: ["q"], s.QUERY: ["drill bit"], s.PRODUCT_ID: ["p1"], s.RELEVANCE: [3.0]})
    model = SearchModel(
        product_ids=np.array(ids),
        titles=TITLES,
        embeddings=vectors[: len(TITLES)],
        index=build_index(vectors[: len(TITLES)]),
        encoder=None,
        tokenizer=None,
        bm25=fit_bm25(TITLES),
        bm25_expanded=fit_bm25(TITLES),
        priors=product_priors(judged, ids),
        booster=_booster(),
        candidates_per_source=150,
    )
    for query, q_emb in zip(("drill bit", "garden hose", "lampe"), vectors[len(TITLES) :], strict=True):
        cache = QueryCache()
        cache.get_or_compute(query, lambda v=q_emb: v)
        plain = search_results(model, cache, query, 4)
        logged = search_results(model, cache, query, 4, features=True)
        assert len(plain) == 4
        assert [(x["product_id"], x["score"]) for x in plain] == [(x["product_id"], x["score"]) for x in logged]
        ((cand, x),) = model.candidate_features([query], q_embs=q_emb[None, :])
        for item in logged:
            names, values = item[FEATURES_KEY]
            assert isinstance(values, list)  # floats already: no per-row numpy call on the answering thread
            values = np.asarray(values, dtype=x.dtype)
            assert tuple(names) == tuple(model.feature_names)
            np.testing.assert_array_equal(values, x[list(model.product_ids[cand]).index(item["product_id"])])
            assert float(model.booster.predict(values[None, :])[0]) == pytest.approx(item["score"])


# --- the store: windows, retention, the size cap, PostgreSQL -------------------------------------------------
def _impression(ts: float, domain: str = "search", n: int = 2) -> dict:
    return r.Impression(
        request_id=uuid.uuid4().hex,
        ts=ts,
        domain=domain,
        endpoint=domain,
        model_version="1",
        arm="champion",
        unit="u",
        query="q" if domain == "search" else None,
        user=None if domain == "search" else "u",
        items=[
            r.ShownItem(product_id=f"p{i}", position=i, score=1.0 / i, features={"f": 0.5}) for i in range(1, n + 1)
        ],
    )


def _exercise(store: FeedbackStore) -> None:
    """The store's contract, the same for every backend."""
    day = r.CLOCK_SKEW_S * 0 + 86_400.0
    old, new, rec = _impression(1_000.0), _impression(1_000.0 + 2 * day), _impression(1_000.0 + 2 * day, "recommend")
    empty = _impression(1_000.0 + 2 * day, n=0)
    for imp in (old, new, rec, empty, new):  # the repeated one is a no-op
        store.append_impression(imp)
    with pytest.raises(ValueError, match="position must be 1"):
        store.append_impression({**old, "request_id": uuid.uuid4().hex, "items": [{**old["items"][1]}]})
    assert store.impression(new["request_id"]) == new and store.impression(uuid.uuid4().hex) is None
    frame = store.impressions(since=1_000.0 + day)
    assert len(frame) == 5 and frame["product_id"].isna().sum() == 1  # 2 + 2 items, and the empty answer's row
    assert len(store.impressions(until=1_000.0 + day)) == 2 and len(store.impressions(domain="recommend")) == 2
    assert len(store.impressions(items=False)) == 4
    event = r.feedback_record(
        {"request_id": new["request_id"], "event": "click", "product_id": "p2", "position": 2, "ts": new["ts"]},
        new,
        received_ts=new["ts"] + 1,
    )
    store.append_feedback(event)
    store.append_feedback(event)  # a retry: stored once
    got = store.feedback(domain="search")
    assert len(got) == 1 and got.iloc[0].to_dict() == event
    assert store.feedback(since=new["ts"] + 2).empty and store.feedback(domain="recommend").empty
    assert store.prune(1_000.0 + day) == {"items": 2, "impressions": 1, "events": 0}
    assert store.impression(old["request_id"]) is None and store.counts() == {"impressions": 3, "items": 4, "events": 1}


def test_sqlite_store_windows_repeats_and_retention(tmp_path) -> None:
    store = FeedbackStore(path=tmp_path / "f.sqlite")
    assert not (tmp_path / "f.sqlite").exists()  # nothing is opened until the first use
    _exercise(store)


def test_sqlite_size_cap_drops_the_oldest_days_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HATCHERY_FEEDBACK_RETENTION_DAYS", "1000")
    store = FeedbackStore(path=tmp_path / "f.sqlite", max_bytes=10**9)
    days = [i * 86_400.0 + 10.0 for i in range(4)]
    for ts in days:
        store.append_impressions([_impression(ts, n=20) for _ in range(200)])
    full = store.size_bytes()
    assert store.maintain(now=days[-1]) == {"items": 0, "impressions": 0, "events": 0}  # within retention and cap
    store.max_bytes = int(full * 0.6)
    deleted = store.maintain(now=days[-1])
    assert store.size_bytes() <= store.max_bytes
    kept = store.impressions(items=False)["ts"]
    assert deleted["impressions"] >= 200 and deleted["impressions"] % 200 == 0  # whole hours (here: whole days)...
    assert kept.min() > days[0]  # ... the oldest first
    assert kept.max() == days[-1]


def test_sqlite_size_cap_keeps_the_latest_hours_of_a_busy_day(tmp_path, monkeypatch) -> None:
    """A store that outgrows its cap within one day loses its oldest hours, not the whole day."""
    monkeypatch.setenv("HATCHERY_FEEDBACK_RETENTION_DAYS", "1000")
    store = FeedbackStore(path=tmp_path / "f.sqlite", max_bytes=10**9)
    hours = [86_400.0 * 10 + h * 3_600.0 + 5.0 for h in range(6)]  # six hours of one day
    for ts in hours:
        store.append_impressions([_impression(ts, n=20) for _ in range(200)])
    store.max_bytes = int(store.size_bytes() * 0.6)
    deleted = store.maintain(now=hours[-1])
    kept = sorted(set(store.impressions(items=False)["ts"]))
    assert store.size_bytes() <= store.max_bytes
    assert kept and kept == hours[-len(kept) :] and len(kept) < len(hours)  # the latest hours stay
    assert deleted["impressions"] == 200 * (len(hours) - len(kept))


def _postgres_url() -> str:
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - psycopg2 is in the lock
        pytest.skip("psycopg2 is not installed")
    base = os.environ.get("HATCHERY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        psycopg2.connect(base, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable at {base.split('@')[-1]}: {str(exc).strip()[:200]}")
    return base


def test_postgresql_store_by_configuration_alone(tmp_path, monkeypatch) -> None:
    import psycopg2

    base = _postgres_url()
    schema = f"feedback_test_{uuid.uuid4().hex[:12]}"
    with psycopg2.connect(base) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    try:
        monkeypatch.setenv("HATCHERY_STATE_URL", f"{base}?options=-csearch_path%3D{schema}")
        store = FeedbackStore(paths=Paths(root=tmp_path))
        assert store.backend == "postgresql" and store.size_bytes() is None
        _exercise(store)
        assert store.maintain(now=1e12)["impressions"] == 3  # retention applies; there is no size cap
        assert not (tmp_path / "feedback").exists()  # nothing went to the embedded file
        store.close()
    finally:
        with psycopg2.connect(base) as conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
