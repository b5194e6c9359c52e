"""Capture at serve time: every answer's impression, and the feedback shoppers send, off the request path.

    Capture         a bounded queue into a writer *process* that owns the FeedbackStore's writes
                    (artifacts/feedback_store.py). An answer hands its impression over with
                    submit_impression (a put_nowait and a dict insert: microseconds); when the queue is
                    full the impression is dropped and counted, so a slow or failing store never
                    delays or fails an answer. The writer pseudonymises the session unit (salted HMAC,
                    as user ids are), masks e-mail addresses and phone numbers in the query, and writes
                    whole batches in one transaction; a batch that fails is counted and logged (at
                    most once a minute), never retried in a loop; a writer that dies is restarted.
    FeedbackIntake  POST /feedback after BodyGuard: each event judged against its impression
                    (components/feedback/records.validate_feedback), a per-unit token bucket, then the
                    same queue. All or nothing per request: a batch with one bad event stores none (422,
                    each refused event with its index, code and reason); a unit over its budget gets
                    429 and stores none; a full queue 503. Every refused or dropped event is counted.

Why a process and not a thread: a writer thread measured +24 ms at p99 on /search at 100 requests/s
on these shared cores (p50 unchanged): whenever the operating system paused it while it held the
GIL, the answering thread waited for it (bench/capture.py). A process competes for CPU like any
other, never for the GIL. What it costs the answers is then its CPU time and when it runs: it drains
the pipe on a timer (DRAIN_EVERY_S, so a write never wakes it onto the answering core) and writes
what it found as one batch; per impression it pseudonymises and masks without pandas (whose per-call
cost made a one-impression batch take ~8 ms of CPU, most of a core at 100 requests/s).

The last `recent` answers' impressions stay in memory, so a click sent right after its answer is not
refused as unknown while the writer has yet to store it. Counters (services/metrics.py):
hatchery_capture_total{kind, outcome} (queued, dropped, written, write_error; the writer's tallies
are carried over at least once a second while traffic flows, and at flush) and
hatchery_feedback_events_total{outcome, reason}.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import pickle
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.feedback import records as r

log = logging.getLogger(__name__)

# The writer drains the pipe on this timer rather than blocking on it. A reader blocked on a pipe is woken by
# each write as a "sync" wakeup (the kernel's hint that the writer is about to sleep), which places it on the
# writing CPU, where it preempted the answering thread in the middle of its answer: the handoff's p99 was
# 1.7-3.3 ms on 2 cores at 100 requests/s. Woken by its own timer, it runs on an idle core when there is one.
# An impression reaches the store up to this much later; feedback on it is accepted meanwhile (`recent`).
DRAIN_EVERY_S = 0.05
# The writer's scheduling priority, below the service's (CFS weight ~1/10 at +10): the price under sustained
# overload is a queue that fills and drops impressions (counted), never a slower answer.
WRITER_NICE = 10
ERROR_EVERY_S = 60.0  # a failing store fails every batch: say so once a minute, count them all
FEATURES_KEY = "_features"  # a result's (feature names, values) for the impression; removed before answering


@dataclass(frozen=True)
class Pending:
    """An answer's impression as the request path hands it over (the writer builds the record)."""

    request_id: str
    ts: float
    domain: str
    endpoint: str
    model_version: str
    arm: str
    session: str | None  # a raw session id: pseudonymised by the writer
    user: str | None  # an already pseudonymised user id (/recommend): it is also the unit
    query: str | None
    items: tuple  # ((product_id, score, (names, values) | None), ...) best first


class Capture:
    """Impressions and feedback events to `store`, written by a writer process; see the module docstring.

    salt: the pseudonym salt (services read artifacts.paths.pseudonym_salt()). metrics: services.metrics.Metrics
    or None. queue_size: items waiting at most (past it, dropped and counted). batch_size: queue items per
    transaction. maintain_every_s: how often the writer applies retention (store.maintain). recent: answers
    whose impressions are kept in memory for feedback that arrives before the writer has stored them.
    """

    def __init__(
        self,
        store,
        salt: str,
        metrics=None,
        queue_size: int = 10_000,
        batch_size: int = 256,
        maintain_every_s: float = 3600.0,
        recent: int = 4096,
    ) -> None:
        import multiprocessing as mp

        self.store, self.salt, self.metrics = store, salt, metrics
        self.batch_size, self.maintain_every_s, self.recent = batch_size, maintain_every_s, recent
        # spawn, not fork: the service's process holds threads (BentoML's, torch's) that fork would copy mid-state.
        self._ctx = mp.get_context("spawn")
        # The answering thread itself writes its impression into the pipe, without blocking (what does not fit
        # waits in _unsent for the next write): no helper thread in this process ever has to be woken (see above).
        self._reader, self._writer = self._ctx.Pipe(duplex=False)
        self._fd = self._writer.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(OSError, AttributeError):  # Linux: a 1 MiB pipe, so writes rarely wait
            fcntl.fcntl(self._fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        self._unsent = bytearray()
        self._queue_size = queue_size
        self._out = threading.Lock()
        # The writer's tallies: impressions written, impression errors, events written, event errors, items done.
        # Written by the writer alone and read without a lock: a lock the writer held while the OS paused it
        # would stall the answer that waits for it.
        self._done = self._ctx.RawArray("q", 5)
        self._seen = [0] * 4
        self._proc = None
        self._lock = threading.Lock()
        self._sent = 0  # queue items handed over (each taken by the writer adds one to _done[4])
        self._recent: OrderedDict[str, Pending] = OrderedDict()
        self._closing = False
        self._last_sync, self._dead_said = 0.0, 0.0
        # Exported as 0 from the start (an alert can tell "none" from "not reported"), and looked up once: labels()
        # takes a lock and builds a key, on the answering thread of every request.
        self._counters = {
            (kind, outcome): metrics.capture.labels(kind, outcome)
            for kind in ("impression", "feedback")
            for outcome in ("queued", "dropped", "written", "write_error")
            if metrics is not None
        }

    # --- the request path ---------------------------------------------------------------------------
    def submit_impression(self, pending: Pending) -> bool:
        """Queue one answer's impression; False (dropped, counted) when the queue is full. Never blocks."""
        if not self._put(pending):
            self._count("impression", "dropped")
            return False
        with self._lock:
            self._recent[pending.request_id] = pending
            if len(self._recent) > self.recent:
                self._recent.popitem(last=False)
        self._count("impression", "queued")
        return True

    def submit_feedback(self, events: Sequence[r.FeedbackEvent]) -> bool:
        """Queue validated events (one transaction); False (dropped, counted) when the queue is full."""
        if not self._put([dict(e) for e in events]):
            self._count("feedback", "dropped", len(events))
            return False
        self._count("feedback", "queued", len(events))
        return True

    def _put(self, item) -> bool:
        try:
            data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an odd object in a result: that record is lost, the answer is not
            log.warning("capture: a record could not be pickled (%s: %s); dropped", type(exc).__name__, exc)
            return False
        with self._out:
            # Items handed over and not yet taken by the writer (unsent, or in the pipe): the queue's length.
            if self._sent - self._done[4] >= self._queue_size or self._closing:
                return False
            self._unsent += _FRAME.pack(len(data))
            self._unsent += data
            self._sent += 1
            self._send()
        if time.monotonic() - self._last_sync >= 1.0:
            self._sync()
        return True

    def impression(self, request_id: str) -> r.Impression | None:
        """The impression of an answer: a recent one from memory, else from the store (None: not known)."""
        with self._lock:
            pending = self._recent.get(request_id)
        if pending is not None:
            return build_records([pending], self.salt)[0]
        return self.store.impression(request_id)

    # --- the writer ---------------------------------------------------------------------------------
    def start(self) -> Capture:
        """Start the writer process (again, if it died); it connects to the store itself."""
        if self._proc is None or not self._proc.is_alive():
            self._proc = self._ctx.Process(
                target=write_forever,
                args=(self._reader, self.store, self.salt, self._done, self.batch_size, self.maintain_every_s),
                name="hatchery-capture-writer",
                daemon=True,  # never outlives the service
            )
            self._proc.start()
        return self

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid (None before start and after close): for benchmarks of its cost."""
        return self._proc.pid if self._proc is not None else None

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or failed); False if timeout_s passed first."""
        deadline = time.monotonic() + timeout_s
        with self._out:
            target = self._sent
        while True:
            with self._out:
                self._send()
            self._sync()
            if self._done[4] >= target:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to timeout_s), then stop the writer."""
        self.flush(timeout_s)
        deadline = time.monotonic() + timeout_s
        with self._out:
            self._closing = True
            self._unsent += _FRAME.pack(len(_STOP)) + _STOP  # the writer's signal to stop
            while self._send() and time.monotonic() < deadline and self._proc is not None and self._proc.is_alive():
                time.sleep(0.005)
        if self._proc is not None:
            self._proc.join(timeout_s)
            if self._proc.is_alive():
                self._proc.terminate()
            self._proc = None
        self._writer.close()
        self._sync()

    def _send(self) -> int:
        """Write what the pipe takes now of the unsent bytes (under self._out); returns how many are left."""
        while self._unsent:
            try:
                n = os.write(self._fd, self._unsent)
            except BlockingIOError:  # the pipe is full: the writer is behind; the next call tries again
                break
            except OSError as exc:  # the writer's end is gone for good: what is unsent is lost, and counted
                log.error("capture pipe broken (%s): %d bytes of impressions dropped", exc, len(self._unsent))
                self._unsent.clear()
                break
            del self._unsent[:n]
        return len(self._unsent)

    def _sync(self) -> None:
        """Carry the writer's tallies into the Prometheus counters; restart a writer that died."""
        self._last_sync = time.monotonic()
        now = list(self._done[:4])
        with self._lock:
            delta = [a - b for a, b in zip(now, self._seen, strict=True)]
            self._seen = now
        for (kind, outcome), n in zip(_TALLIES, delta, strict=True):
            self._count(kind, outcome, n)
        if self._proc is not None and not self._proc.is_alive() and not self._closing:
            if self._last_sync - self._dead_said >= ERROR_EVERY_S:
                self._dead_said = self._last_sync
                log.error("the capture writer died (exit code %s); starting another", self._proc.exitcode)
            self._proc = None
            self.start()

    def _count(self, kind: str, outcome: str, n: int = 1) -> None:
        if self._counters and n:
            self._counters[kind, outcome].inc(n)


_TALLIES = (
    ("impression", "written"),
    ("impression", "write_error"),
    ("feedback", "written"),
    ("feedback", "write_error"),
)


_STOP = pickle.dumps(None)
_FRAME = struct.Struct("<I")  # each item in the pipe: its pickle's length, then the pickle


def write_forever(pipe, store, salt: str, done, batch_size: int, maintain_every_s: float) -> None:
    """The writer process: take batches off the pipe, write each in one transaction, until None arrives."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service decides when we stop
    with contextlib.suppress(OSError):  # background work: where it shares a core with an answer, the answer goes first
        os.nice(WRITER_NICE)
    errors, said, last_maintain = 0, 0.0, time.monotonic()
    fd, buf, at = pipe.fileno(), bytearray(), 0
    os.set_blocking(fd, False)
    stop = False
    while not stop:
        if len(buf) - at < _FRAME.size or len(buf) - at < _FRAME.size + _FRAME.unpack_from(buf, at)[0]:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:  # nothing yet: look again after a nap, never wait on the pipe (see DRAIN_EVERY_S)
                time.sleep(DRAIN_EVERY_S)
                chunk = None
            if chunk == b"":  # the service is gone
                stop = True
            elif chunk:
                del buf[:at]
                buf, at = buf + chunk, 0
        batch = []
        while len(batch) < batch_size and len(buf) - at >= _FRAME.size:
            (n,) = _FRAME.unpack_from(buf, at)
            if len(buf) - at < _FRAME.size + n:
                break
            batch.append(pickle.loads(buf[at + _FRAME.size : at + _FRAME.size + n]))
            at += _FRAME.size + n
        if None in batch:
            stop = True
            batch = [b for b in batch if b is not None]
        if batch:
            shown = [b for b in batch if isinstance(b, Pending)]
            events = [e for b in batch if isinstance(b, list) for e in b]
            tally = [0, 0, 0, 0]
            try:
                store.append_many(build_records(shown, salt), events)
                tally[0], tally[2] = len(shown), len(events)
            except Exception as exc:  # noqa: BLE001 - a full disk, a database down, a bad record: counted, not fatal
                errors += 1
                tally[1], tally[3] = len(shown), len(events)
                if errors == 1 or time.monotonic() - said >= ERROR_EVERY_S:
                    said = time.monotonic()
                    log.error(
                        "feedback store %r: a batch of %d impressions and %d events not written (%d batches lost so "
                        "far; answers are unaffected): %s: %s",
                        store,
                        len(shown),
                        len(events),
                        errors,
                        type(exc).__name__,
                        exc,
                    )
            for i, n in enumerate(tally):  # this process alone writes them
                done[i] += n
            done[4] += len(batch)
        if time.monotonic() - last_maintain >= maintain_every_s:
            last_maintain = time.monotonic()
            try:
                deleted = store.maintain(time.time())
                if any(deleted.values()):
                    log.info("feedback store retention: deleted %s", deleted)
            except Exception as exc:  # noqa: BLE001 - retention is retried at the next interval
                log.error("feedback store maintenance failed: %s: %s", type(exc).__name__, exc)
    store.close()


def build_records(shown: list[Pending], salt: str) -> list[r.Impression]:
    """Impression records of pending answers: the session unit pseudonymised, personal data in queries masked."""
    if not shown:
        return []
    from components.privacy import mask_pii, pseudonym  # per text, not pandas: its per-call cost was ms per batch

    units = {p.session: pseudonym(p.session, salt) for p in shown if p.session is not None and p.user is None}
    out = []
    for p in shown:
        unit = p.user if p.user is not None else units.get(p.session)
        out.append(
            r.Impression(
                request_id=p.request_id,
                ts=p.ts,
                domain=p.domain,
                endpoint=p.endpoint,
                model_version=p.model_version,
                arm=p.arm,
                unit=unit,
                query=mask_pii(p.query) if p.query is not None else None,
                user=p.user,
                items=[
                    r.ShownItem(product_id=pid, position=i, score=_finite(score), features=_features(feats))
                    for i, (pid, score, feats) in enumerate(p.items, start=1)
                ],
            )
        )
    return out


def pending_items(results: list) -> tuple:
    """An answer's results as Pending.items, taking each result's FEATURES_KEY out of it (never answered).

    Results that are not product dicts (a test's fake model) give () rather than an error: the log
    must never fail an answer.
    """
    items = []
    for x in results:
        if not isinstance(x, dict) or "product_id" not in x:
            return ()
        feats = x.pop(FEATURES_KEY, None)
        if feats is not None and hasattr(feats[1], "tolist"):  # a numpy row pickles ~4x slower than its floats
            feats = (feats[0], feats[1].tolist())
        items.append((str(x["product_id"]), x.get("score"), feats))
    return tuple(items)


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _features(feats) -> dict[str, float]:
    """(names, values) as {name: value}; a missing value (NaN, as LightGBM reads it) is an absent key."""
    if feats is None:
        return {}
    names, values = feats
    if not isinstance(values, list):
        values = values.tolist() if hasattr(values, "tolist") else [float(v) for v in values]  # one C call for numpy
    return {n: v for n, v in zip(names, values, strict=True) if math.isfinite(v)}


class FeedbackIntake:
    """POST /feedback's logic: validate against impressions, rate-limit per unit, queue; see the module docstring.

    limiter: a records.TokenBucket (its clock: `monotonic`); skew_s: the clock skew allowed.
    receive(events) -> (HTTP status, JSON body).
    """

    def __init__(
        self,
        capture: Capture,
        limiter: r.TokenBucket,
        metrics=None,
        skew_s: float = r.CLOCK_SKEW_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capture, self.limiter, self.metrics, self.skew_s = capture, limiter, metrics, skew_s
        self.clock, self.monotonic = clock, monotonic
        self._lock = threading.Lock()
        if metrics is not None:
            metrics.feedback.labels("accepted", "")
            for code in r.REJECTION_CODES:
                metrics.feedback.labels("rejected" if code != r.RATE_LIMITED else "rate_limited", code)

    def receive(self, events: Sequence[Mapping[str, Any]]) -> tuple[int, dict[str, Any]]:
        now = self.clock()
        impressions: dict[str, r.Impression | None] = {}
        refused, kept = [], []
        try:
            for i, event in enumerate(events):
                rid = event.get(r.REQUEST_ID)
                if isinstance(rid, str) and r.REQUEST_ID_PATTERN.match(rid) and rid not in impressions:
                    impressions[rid] = self.capture.impression(rid)
                imp = impressions.get(rid) if isinstance(rid, str) else None
                problem = r.validate_feedback(event, imp, now, self.skew_s)
                if problem is None:
                    kept.append((event, imp))
                else:
                    refused.append({"index": i, "code": problem.code, "reason": problem.reason})
        except Exception as exc:  # noqa: BLE001 - the store is down: the client may retry, nothing was stored
            log.warning("feedback: impressions cannot be read: %s: %s", type(exc).__name__, exc)
            self._count("dropped", "store_unavailable", len(events))
            return 503, {"error": f"the feedback store cannot be read ({type(exc).__name__}); retry later"}
        if refused:
            for item in refused:
                self._count("rejected", item["code"])
            n = len(events)
            first = refused[0]["reason"]
            return 422, {
                "error": f"{len(refused)} of {n} event(s) refused, none stored: {first}",
                "rejected": refused,
            }
        demand = Counter(r.rate_key(imp) for _, imp in kept)
        with self._lock:
            short = self.limiter.take(demand, self.monotonic())
        if short:
            self._count("rate_limited", r.RATE_LIMITED, len(events))
            wait = max((demand[k] - self.limiter.tokens(k, self.monotonic())) / self.limiter.rate for k in short)
            return 429, {
                "error": f"too many feedback events from one unit: {len(events)} event(s) over its budget of "
                f"{self.limiter.burst:g} at once and {self.limiter.rate:g} a second; none stored",
                "retry_after_s": round(max(wait, 0.0), 3),
            }
        stored = [r.feedback_record(event, imp, now) for event, imp in kept]
        if not self.capture.submit_feedback(stored):
            self._count("dropped", "queue_full", len(stored))
            return 503, {"error": "the feedback queue is full; retry later"}
        self._count("accepted", "", len(stored))
        return 202, {"accepted": len(stored)}

    def _count(self, outcome: str, reason: str, n: int = 1) -> None:
        if self.metrics is not None and n:
            self.metrics.feedback.labels(outcome, reason).inc(n)
