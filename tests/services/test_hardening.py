"""The service stays up: hostile bodies, a corrupt state file, a full disk, logs that rotate.

No trained models here: the models are stand-ins whose answers name their version, so each test is
about the service's behaviour around them (the real bundles' answers are test_service.py's). The
schemathesis fuzz of the real service's OpenAPI document is in test_service.py, beside its bundles.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts.files import append_jsonl, read_rotated_jsonl, write_json
from artifacts.paths import Paths
from artifacts.rollout_store import CorruptState, RolloutStore
from components import rollout as ro
from services.service import REQUEST_MODELS, BodyError, BodyGuard, parse_body
from tests.services._stand_ins import forget_bentoml_metrics, make_bundle, stand_in_loader

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _canary(paths: Paths, domain: str, champion: ro.ModelRef, challenger: ro.ModelRef) -> ro.RolloutState:
    store = RolloutStore(paths, domain)
    store.save(*ro.set_champion(ro.RolloutState(domain=domain), champion, 0, "t", "first"))
    store.transact(lambda cur: ro.start_shadow(cur, challenger, 1.0, 1, "t", "", "pepper", 0.0))
    return store.transact(lambda cur: ro.enter_canary_step(cur, 0, 0.5, 2, "t", ""))


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Paths:
    """An outputs root with no registry champion and no local bundle variables."""
    monkeypatch.setenv("HATCHERY_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
    for domain in ("SEARCH", "RECOMMEND"):
        monkeypatch.delenv(f"HATCHERY_{domain}_BUNDLE", raising=False)
        monkeypatch.delenv(f"HATCHERY_{domain}_VERSION", raising=False)
    return Paths(root=tmp_path)


def _runtime(paths: Paths, domain: str = "search"):
    from services.metrics import Metrics
    from services.runtime import DomainRuntime

    rt = DomainRuntime(domain, paths, loader=stand_in_loader, metrics=Metrics())
    rt.start()
    return rt


def _listing(loaded) -> list[dict]:
    return loaded.model.search("q", k=4)


def _ids(results: list[dict]) -> list[str]:
    return [r["product_id"] for r in results]


def _sample(name: str, domain: str) -> float:
    import prometheus_client as pc

    return pc.REGISTRY.get_sample_value(name, {"domain": domain}) or 0.0


# --- hostile bodies ----------------------------------------------------------------------------------------
def _guarded():
    """BodyGuard around an app that records what reached it and answers 200."""
    from starlette.testclient import TestClient

    reached: list[tuple[str, bytes]] = []

    async def app(scope, receive, send) -> None:
        message = await receive()
        reached.append((scope["path"], message.get("body", b"")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return TestClient(BodyGuard(app)), reached


JSON = "application/json"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"[" * 4000 + b"]" * 4000, JSON, 400, "nests 4000 levels deep"),  # RecursionError -> 500 before
        (b'{"query": ' + b'{"a": ' * 9 + b"1" + b"}" * 10, JSON, 400, "nests 10 levels deep"),
        (b'{"query": "drill", "k": 1' + b"0" * 5000 + b"}", JSON, 400, "out of range"),  # int() limit -> 500
        (b'{"query": "drill", "k": 9007199254740993}', JSON, 400, "out of range"),  # 2**53 + 1
        (b'{"query": "drill", "k": 1e999}', JSON, 400, "out of range"),
        (b'{"query": "drill", "k": NaN}', JSON, 400, "NaN is not JSON"),
        (b'{"query": "drill", "query": "saw"}', JSON, 400, "repeats the key 'query'"),
        (b'{"query": "dr\xffill"}', JSON, 400, "not UTF-8"),
        ('{"query": "drill"}'.encode("utf-16"), JSON, 400, "not UTF-8"),  # json.loads(bytes) took UTF-16
        (b'{"query": "drill"', JSON, 400, "not valid JSON"),
        (b'["drill"]', JSON, 400, "must be a JSON object"),
        (b'{"query": "drill"}', "text/plain", 415, "must be application/json, got text/plain"),  # cross-site
        (b"query=drill", "application/x-www-form-urlencoded", 415, "must be application/json"),
        (b'{"query": "drill"}', None, 415, "got none"),
        (b'{"query": "drill"}', "application/json; charset=latin-1", 415, "charset must be utf-8"),
        (b'{"query": "drill", "kk": 3}', JSON, 400, "extra_forbidden"),
        (b'{"query": "drill", "k": 5.0}', JSON, 400, "int_type"),
        (b'{"query": "x' + b"y" * 20_000 + b'"}', JSON, 413, "exceeds the limit"),
    ],
)
def test_hostile_bodies_get_a_4xx_with_the_reason_and_never_reach_the_endpoint(
    body, content_type, status, reason
) -> None:
    http, reached = _guarded()
    headers = {"content-type": content_type} if content_type else {}
    r = http.post("/search", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"] + r.json().get("detail", "")
    assert reached == []


def test_a_valid_body_and_other_routes_pass_through_untouched() -> None:
    http, reached = _guarded()
    valid = b'{"query": "drill", "k": 3}'
    assert http.post("/search", content=valid, headers={"content-type": JSON}).status_code == 200
    assert http.post("/rollout_status", content=b"", headers={"content-type": JSON}).status_code == 200
    assert http.get("/search").status_code == 200  # not a POST: BentoML's own answer (405) applies
    assert http.post("/livez", content=b"[[[", headers={"content-type": "text/plain"}).status_code == 200
    assert reached == [
        ("/search", valid),
        ("/rollout_status", b"{}"),  # an empty body is {}
        ("/search", b""),
        ("/livez", b"[[["),
    ]


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
)
KEYS = st.sampled_from(["query", "k", "explain", "session_id", "user_id", "product_id", "exclude_purchased", "kk"])
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3)
)
BODIES = st.one_of(
    st.dictionaries(KEYS | st.text(max_size=8), JSON_VALUES, max_size=5).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(KEYS, JSON_LEAVES, max_size=4).map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.integers(1, 60).map(lambda n: b'{"query": ' + b"[" * n + b"]" * n + b"}"),
)
CONTENT_TYPES = st.sampled_from([JSON, "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", None])


@FUZZ
@given(path=st.sampled_from(sorted(REQUEST_MODELS)), body=BODIES, content_type=CONTENT_TYPES)
def test_any_body_is_refused_with_a_reason_or_reaches_the_endpoint_valid_for_its_model(path, body, content_type):
    """What BodyGuard lets through, BentoML's own parser (model_validate_json) accepts: the two never disagree."""
    http, reached = _guarded()
    r = http.post(path, content=body, headers={"content-type": content_type} if content_type else {})
    assert r.status_code in (200, 400, 413, 415)
    if r.status_code != 200:
        assert r.json()["error"] and reached == []
        return
    assert content_type and content_type.lower().startswith(JSON)
    ((seen_path, seen_body),) = reached
    REQUEST_MODELS[path].model_validate_json(seen_body)  # raises if the guard let through what BentoML refuses


@FUZZ
@given(value=st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=6))
def test_parse_body_returns_any_json_object_within_the_limits_as_it_was(value) -> None:
    def within(v, depth=1) -> bool:
        if isinstance(v, dict):
            return depth <= 8 and all(within(x, depth + 1) for x in v.values())
        if isinstance(v, list):
            return depth <= 8 and all(within(x, depth + 1) for x in v)
        return not isinstance(v, int) or isinstance(v, bool) or abs(v) <= 2**53 - 1

    body = json.dumps(value).encode()
    if within(value):
        assert parse_body(body) == value
    else:
        with pytest.raises(BodyError, match="out of range|levels deep"):
            parse_body(body)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_parse_body_answers_any_bytes_with_an_object_or_a_400(raw) -> None:
    try:
        assert isinstance(parse_body(raw), dict)
    except BodyError as exc:
        assert exc.status == 400 and exc.reason


# --- a corrupt or truncated state file -------------------------------------------------------------------
def test_a_truncated_state_file_still_lets_the_service_start(isolated, tmp_path, monkeypatch, caplog) -> None:
    """Both domains' state files broken: the service starts, serves the no-state champion, and says why."""
    from starlette.testclient import TestClient

    import services.runtime as runtime
    from services.service import Hatchery

    monkeypatch.setattr(runtime, "load_bundle", stand_in_loader)
    for domain, version in (("search", "7"), ("recommend", "8")):
        monkeypatch.setenv(f"HATCHERY_{domain.upper()}_BUNDLE", make_bundle(tmp_path, version).uri)
        monkeypatch.setenv(f"HATCHERY_{domain.upper()}_VERSION", version)
    _canary(isolated, "search", make_bundle(tmp_path, "1"), make_bundle(tmp_path, "2"))
    search_state = RolloutStore(isolated, "search").state_path
    search_state.write_bytes(search_state.read_bytes()[:150])  # cut mid-write by a crash
    recommend_state = RolloutStore(isolated, "recommend").state_path
    recommend_state.parent.mkdir(parents=True)
    recommend_state.write_bytes(b"\x00\xff garbage")
    broken = search_state.read_bytes()

    forget_bentoml_metrics()
    with caplog.at_level(logging.ERROR), TestClient(Hatchery.to_asgi()) as http:
        assert http.get("/readyz").status_code == 200
        answer = http.post("/search", json={"query": "drill", "session_id": "s1"}).json()
        assert answer["model_version"] == "7" and answer["arm"] == "champion" and answer["rollout_phase"] == "full"
        assert http.post("/recommend", json={"user_id": "u1", "k": 2}).json()["model_version"] == "8"
        status = http.post("/rollout_status", json={}).json()
        assert "not a valid rollout state" in status["search"]["state_error"] and status["search"]["ready"]
        assert "not a valid rollout state" in status["recommend"]["state_error"]
        assert _sample("hatchery_state_corrupt", "search") == 1.0
    assert search_state.read_bytes() == broken  # left for the operator
    assert any("rollout state unreadable" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_the_next_valid_state_write_replaces_a_corrupt_file_and_keeps_it_aside(isolated, tmp_path) -> None:
    store = RolloutStore(isolated, "search")
    state = _canary(isolated, "search", make_bundle(tmp_path, "1"), make_bundle(tmp_path, "2"))
    store.state_path.write_text('{"domain": "search", "phase": "can')
    with pytest.raises(CorruptState, match="not a valid rollout state"):
        store.read()
    fresh = store.load()  # what a driver or an operator sees: no rollout, numbered after the audit trail
    assert fresh.phase == "idle" and fresh.version == state.version
    new = store.transact(lambda cur: ro.set_champion(cur, make_bundle(tmp_path, "1"), 3, "op", "after corruption"))
    assert new.version == state.version + 1 and store.read() == new
    kept = list(store.folder.glob("state.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == '{"domain": "search", "phase": "can'


def test_a_state_corrupted_while_serving_sends_everything_to_the_registry_champion_until_fixed(
    isolated, tmp_path, caplog
) -> None:
    from mlflow import MlflowClient

    from artifacts.registry import Registry

    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("hatchery-search")
    registered = make_bundle(tmp_path, "registered")
    version = client.create_model_version("hatchery-search", source=registered.uri).version
    Registry("hatchery-search", isolated).record_bundle(version, Path(registered.uri))
    client.set_registered_model_alias("hatchery-search", "champion", version)
    champion, challenger = make_bundle(tmp_path, "11"), make_bundle(tmp_path, "12")
    _canary(isolated, "search", champion, challenger)
    rt = _runtime(isolated)
    assert {rt.call("search", None, _listing, _ids)["arm"] for _ in range(40)} == {"champion", "challenger"}
    store = rt.store
    good = store.state_path.read_bytes()
    time.sleep(0.05)  # past the file system's timestamp granularity: the service sees a change by mtime
    store.state_path.write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            rt.poll_state(force=True)
    assert rt.challenger is None and rt.state_error and _sample("hatchery_state_corrupt", "search") == 1.0
    answers = [rt.call("search", None, _listing, _ids) for _ in range(40)]
    assert {(a["model_version"], a["arm"]) for a in answers} == {(str(version), "champion")}
    assert {r["product_id"].split("-")[0] for a in answers for r in a["results"]} == {"registered"}
    assert sum("rollout state unreadable" in r.getMessage() for r in caplog.records) == 1  # once, not per poll
    store.transact(lambda cur: ro.set_champion(cur, challenger, 5, "op", "fixed"))
    rt.poll_state(force=True)
    assert rt.state_error is None and _sample("hatchery_state_corrupt", "search") == 0.0
    assert rt.call("search", None, _listing, _ids)["model_version"] == "12"


def test_state_writes_are_fsynced_file_and_folder_before_they_count(isolated, tmp_path, monkeypatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json(tmp_path / "plain.json", {"a": 1})
    assert synced == []  # the default write stays cheap
    RolloutStore(isolated, "search").save(
        *ro.set_champion(ro.RolloutState(domain="search"), make_bundle(tmp_path, "1"), 0, "t", "")
    )
    assert synced == ["file", "file", "folder"]  # audit line, state temp file, then the rename in its folder


# --- a full disk -----------------------------------------------------------------------------------------
def test_a_full_disk_fails_no_answer_and_every_lost_log_line_is_counted(isolated, tmp_path, monkeypatch, caplog):
    import artifacts.rollout_store as rs

    _canary(isolated, "search", make_bundle(tmp_path, "1"), make_bundle(tmp_path, "2"))
    rt = _runtime(isolated)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rs, "append_jsonl", full)
    before = _sample("hatchery_log_write_errors_total", "search")
    with caplog.at_level(logging.ERROR):
        answers = [rt.call("search", f"s{i}", _listing, _ids) for i in range(50)]
    assert all(len(a["results"]) == 4 for a in answers)
    assert _sample("hatchery_log_write_errors_total", "search") - before == 50  # one line per answer
    lines = [r for r in caplog.records if "request log not written" in r.getMessage()]
    assert len(lines) == 1 and "No space left" in lines[0].getMessage()


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    folder.mkdir(parents=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); the injected ENOSPC test covers a full disk")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(path: Path) -> None:
    """Write zeros until the file system is full (unbuffered: nothing is left to fail at close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_line_cut_short_by_a_full_disk_does_not_swallow_the_next_one(tmp_path) -> None:
    """tmpfs takes a write up to the end of the file's last page, then says ENOSPC: a fragment stays.

    The first line after space comes back used to be glued to that fragment and never parsed again (CI
    saw `requests()` come back empty after a full disk). The next append ends the fragment first.
    """
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        log_file = disk / "requests.jsonl"
        append_jsonl(log_file, {"i": 0, "pad": "x" * (4096 - 120)})  # the page nearly full
        _fill(disk / "filler")
        with pytest.raises(OSError) as exc:
            append_jsonl(log_file, {"i": 1, "pad": "y" * 400})
        assert exc.value.errno == errno.ENOSPC
        assert not log_file.read_bytes().endswith(b"\n")  # a real fragment: the test means something
        (disk / "filler").unlink()
        append_jsonl(log_file, {"i": 2})
        append_jsonl(log_file, {"i": 3})
        assert [r["i"] for r in read_rotated_jsonl(log_file, keep=0)] == [0, 2, 3]


def test_a_real_full_tmpfs_fails_no_answer_over_http(tmp_path, monkeypatch) -> None:
    """The rollout logs on a 64 KiB tmpfs filled to the last byte: every request still answers 200.

    The feedback store lives off the tmpfs: its writer process drains impressions on its own timer, and
    when it lagged (CI's load) its first batch after the space came back created the SQLite files (32 KiB
    of -shm, a WAL) in that space, so the request line written next found the disk full again.
    """
    from starlette.testclient import TestClient

    import services.runtime as runtime
    from services.service import Hatchery

    with _tmpfs(tmp_path / "disk", "64k") as disk:
        monkeypatch.setenv("HATCHERY_HOME", str(disk))
        monkeypatch.setenv("HATCHERY_FEEDBACK_DB", str(tmp_path / "feedback.sqlite"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
        monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
        monkeypatch.delenv("HATCHERY_SEARCH_BUNDLE", raising=False)
        monkeypatch.setattr(runtime, "load_bundle", stand_in_loader)
        paths = Paths(root=disk)
        _canary(paths, "search", make_bundle(tmp_path, "1"), make_bundle(tmp_path, "2"))
        _fill(disk / "filler")
        forget_bentoml_metrics()
        with TestClient(Hatchery.to_asgi()) as http:
            statuses = [
                http.post("/search", json={"query": "drill", "session_id": f"s{i}"}).status_code for i in range(30)
            ]
            assert statuses == [200] * 30
            assert _sample("hatchery_log_write_errors_total", "search") >= 30
            (disk / "filler").unlink()  # space again: logging resumes, and every line is whole
            assert http.post("/search", json={"query": "drill", "session_id": "after"}).status_code == 200
        assert RolloutStore(paths, "search").requests()[-1]["unit"] == "after"


# --- logs that rotate ------------------------------------------------------------------------------------
def test_logs_rotate_by_size_keeping_whole_lines_from_concurrent_writers(tmp_path) -> None:
    log_file = tmp_path / "requests.jsonl"

    def write(writer: int) -> None:
        for i in range(300):
            append_jsonl(log_file, {"writer": writer, "i": i, "pad": "x" * 60}, max_bytes=4096, keep=100)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rotated = sorted(tmp_path.glob("requests.jsonl.*"))
    assert len(rotated) > 10 and all(p.stat().st_size > 4096 for p in rotated)  # each rotated past the limit
    records = read_rotated_jsonl(log_file, keep=100)
    assert sorted((r["writer"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(300)]
    for w in range(4):  # each writer's lines in order, oldest file first
        assert [r["i"] for r in records if r["writer"] == w] == list(range(300))


def test_rotation_keeps_only_the_newest_files(tmp_path) -> None:
    log_file = tmp_path / "feedback.jsonl"
    for i in range(200):
        append_jsonl(log_file, {"i": i, "pad": "x" * 100}, max_bytes=1000, keep=2)
    assert sorted(p.name for p in tmp_path.glob("feedback.jsonl*")) == [
        "feedback.jsonl",
        "feedback.jsonl.1",
        "feedback.jsonl.2",
    ]
    kept = [r["i"] for r in read_rotated_jsonl(log_file, keep=2)]
    assert kept == list(range(kept[0], 200)) and 15 < len(kept) < 40


def test_a_rollouts_reader_opens_only_the_files_its_rollout_spans(isolated, monkeypatch) -> None:
    import artifacts.files as files

    store = RolloutStore(isolated, "search", max_bytes=2000, keep=50)
    for rollout in ("old", "mid", "new"):
        for i in range(60):
            store.append_request({"rollout_id": rollout, "request_id": f"{rollout}{i}", "pad": "x" * 40})
    opened: list[str] = []
    real = files.read_jsonl
    monkeypatch.setattr(files, "read_jsonl", lambda path, **kw: opened.append(Path(path).name) or real(path, **kw))
    mine = store.requests("new")  # the running rollout: what the driver reads after every batch
    assert [r["request_id"] for r in mine] == [f"new{i}" for i in range(60)]
    files_of_new = {f.name for f in store.folder.glob("requests.jsonl*") if '"new' in f.read_text()}
    assert set(opened) == files_of_new and len(opened) < len(list(store.folder.glob("requests.jsonl*"))) / 2
    assert [r["request_id"] for r in store.requests("mid")] == [f"mid{i}" for i in range(60)]  # an older one too
    assert len(store.requests()) == 180  # no id: every line the files keep


def test_a_routing_change_alone_swaps_without_a_full_collection(isolated, tmp_path, monkeypatch) -> None:
    """A canary step (same models, another share) must not stall answers on settle_heap's full collection
    (100-300 ms with a real search model loaded); a new model, or one dropped, still settles the heap."""
    import services.runtime as runtime

    settled: list[int] = []
    monkeypatch.setattr(runtime, "settle_heap", lambda: settled.append(1))
    champion, challenger = make_bundle(tmp_path, "21"), make_bundle(tmp_path, "22")
    _canary(isolated, "search", champion, challenger)
    rt = _runtime(isolated)
    assert rt.challenger is not None and settled  # loading both settled the heap
    settled.clear()
    loaded = (rt.champion, rt.challenger)

    def step(share: float) -> None:
        time.sleep(0.05)  # past the file system's timestamp granularity
        rt.store.transact(lambda cur: ro.enter_canary_step(cur, 1, share, 3, "t", ""))
        rt.poll_state(force=True)

    step(0.25)
    assert rt.state.share == 0.25 and (rt.champion, rt.challenger) == loaded and not settled
    time.sleep(0.05)
    rt.store.transact(lambda cur: ro.roll_back(cur, 4, "t", "test"))
    rt.poll_state(force=True)
    assert rt.challenger is None and settled == [1]  # the challenger was dropped: reclaimed
