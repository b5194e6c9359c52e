"""The rollout store of one domain: state, audit trail, and the request / feedback / evaluation logs.

    <root>/reports/rollout/<domain>/
      state.json         the RolloutState the service routes by (replaced atomically, fsynced)
      audit.jsonl        one line per state change: who or what, when, from, to, why (fsynced)
      requests.jsonl     the service: per scored request during a rollout, arm, version, latency, error, top ids
      feedback.jsonl     the replay simulator or production: per answer, the online success signal
      evaluations.jsonl  the rollout driver: per batch, the phase's numbers and decision
      state.json.corrupt-<unix time>  a state file that did not parse, kept for the operator when a
                         writer replaced it

requests.jsonl and feedback.jsonl rotate by size (requests.jsonl.1 ... .<keep>, the oldest dropped;
HATCHERY_LOG_MAX_MB, default 64, and HATCHERY_LOG_KEEP, default 3); a rollout's readers read its
own lines from the current file back to the rotated one its rollout began in.

A state file that does not parse (truncated, edited by hand, a disk error) is CorruptState for read():
the service then serves the registry's champion and says so (services/runtime.py). load() and the
writers treat it as "no rollout", numbered after the last version the audit trail recorded, so the
next driver or operator write starts over from the registry (the corrupt file is kept aside).

The rollout driver (pipelines/rollout.py) and an operator's commands write state and audit; the
service (services/runtime.py) reads the state and writes the request log.

One writer at a time, and no lost update:
  .state.lock   every state write holds it (fcntl, seconds), and compares the version it was
                given with the file's: a writer that read an older state gets StaleState and must
                re-read and decide again (so an operator's pause during a replay batch wins).
  .driver.lock  held by a rollout driver for its whole run: a second driver on the domain waits
                up to its wait_s, then gets RolloutBusy naming the holder. Operators do not take
                it: their commands must be able to stop a running driver.
Both are flocks: a killed process releases them.

HATCHERY_STATE_URL=postgresql://... keeps all of this in PostgreSQL instead (the cluster profile;
PgRolloutStore below), behind the same interface.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from artifacts.files import append_jsonl, read_jsonl, read_rotated_jsonl, write_json
from artifacts.paths import Paths
from artifacts.shared_state import Database, StoreUnavailable, state_url
from components import rollout as ro

log = logging.getLogger(__name__)


class StaleState(RuntimeError):
    """The state changed since the writer read it (another writer won): re-read, decide again."""


class RolloutBusy(RuntimeError):
    """Another rollout driver holds the domain; the message names it (pid, actor, since when)."""


class CorruptState(ValueError):
    """The state file exists but is not a valid RolloutState; the message says where and why."""


DEFAULT_LOG_MAX_MB, DEFAULT_LOG_KEEP = 64.0, 3  # ~160k request lines a file: a whole rollout, several times


def log_max_bytes() -> int:
    """HATCHERY_LOG_MAX_MB (default 64) in bytes: the size at which requests/feedback logs rotate."""
    return int(float(os.environ.get("HATCHERY_LOG_MAX_MB") or DEFAULT_LOG_MAX_MB) * 1024 * 1024)


def log_keep() -> int:
    """HATCHERY_LOG_KEEP (default 3): rotated request/feedback log files kept besides the current one."""
    return int(os.environ.get("HATCHERY_LOG_KEEP") or DEFAULT_LOG_KEEP)


@contextlib.contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[Any]:
    """An exclusive flock on `path` (created), released on exit or when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        fh.close()
        raise
    try:
        yield fh
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


class RolloutStore:
    """max_bytes / keep: the request and feedback logs' rotation (default: the environment's).

    With HATCHERY_STATE_URL set, `RolloutStore(paths, domain)` builds the PostgreSQL backend instead
    (PgRolloutStore: the same interface and guarantees, shared by every machine), so no
    caller chooses a backend: the environment does.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> RolloutStore:
        if cls is RolloutStore and os.environ.get("HATCHERY_STATE_URL"):
            return super().__new__(PgRolloutStore)
        return super().__new__(cls)

    def __init__(self, paths: Paths, domain: str, max_bytes: int | None = None, keep: int | None = None) -> None:
        self.domain = domain
        self.folder = paths.rollout(domain)
        self.max_bytes = log_max_bytes() if max_bytes is None else max_bytes
        self.keep = log_keep() if keep is None else keep

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    @property
    def audit_path(self) -> Path:
        return self.folder / "audit.jsonl"

    @property
    def requests_path(self) -> Path:
        return self.folder / "requests.jsonl"

    @property
    def feedback_path(self) -> Path:
        return self.folder / "feedback.jsonl"

    @property
    def evaluations_path(self) -> Path:
        return self.folder / "evaluations.jsonl"

    # --- state ------------------------------------------------------------------------------------
    def read(self) -> ro.RolloutState | None:
        """The stored state, or None when no rollout ever ran for the domain; CorruptState if unreadable."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # unreadable (permissions, a disk error): as good as corrupt for its readers
            raise CorruptState(f"{self.state_path} cannot be read: {exc}") from exc
        try:
            state = ro.RolloutState.from_dict(json.loads(raw.decode("utf-8")))
        except Exception as exc:  # noqa: BLE001 - any way a file fails to be a state is the same answer
            raise CorruptState(
                f"{self.state_path} is not a valid rollout state ({len(raw)} bytes): {type(exc).__name__}: {exc}"[:500]
            ) from exc
        if state.domain != self.domain:
            raise CorruptState(f"{self.state_path} holds a {state.domain!r} state, not {self.domain!r}")
        return state

    def load(self) -> ro.RolloutState:
        """The stored state, or a fresh one (also for a corrupt file: numbered after the audited version)."""
        try:
            return self.read() or ro.RolloutState(domain=self.domain)
        except CorruptState as exc:
            log.error("%s; acting as if no rollout ran (from version %d)", exc, self.audited_version())
            return ro.RolloutState(domain=self.domain, version=self.audited_version())

    def audited_version(self) -> int:
        """The last state version the audit trail recorded (0 if none): what a corrupt file last held."""
        for entry in reversed(self.audit()):
            version = (entry.get("details") or {}).get("state_version")
            if isinstance(version, int):
                return version
        return 0

    def mtime_ns(self) -> int | None:
        try:
            return self.state_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def save(self, state: ro.RolloutState, entry: ro.AuditEntry, expected: int | None = None) -> ro.RolloutState:
        """Write `state` as the next version: audit entry first (fsynced), then the state file in one rename.

        expected: the version the writer's decision was based on; StaleState if the file moved on.
        None: write over whatever is there (a first state, or a caller that re-read under the lock).
        Returns the state as written (its version bumped).
        """
        with _flock(self.folder / ".state.lock"):
            return self._save_locked(state, entry, expected)

    def transact(
        self,
        change: Callable[[ro.RolloutState], tuple[ro.RolloutState, ro.AuditEntry] | None],
        expected: int | None = None,
    ) -> ro.RolloutState:
        """Read the current state, apply `change` (a transition) and write the result, all under the lock.

        The way to act on the *current* state (an operator's command): it cannot lose an update.
        expected: as in `save`. `change` returning None writes nothing (the current state is returned).
        """
        with _flock(self.folder / ".state.lock"):
            current = self.load()
            if expected is not None and current.version != expected:
                raise StaleState(self._stale(current, expected))
            changed = change(current)
            return current if changed is None else self._save_locked(*changed, current.version)

    def settle(self, state: ro.RolloutState, registry: Any, actor: str) -> ro.RolloutState:
        """Apply the state's pending registry intent (idempotent), then clear it with a `registry` audit line.

        registry: an artifacts.registry.Registry of this domain's model (its `apply(intent)`). Returns the state
        as it is after; the rollout driver and the console's operator actions both settle through here.
        """
        pending = state.pending
        if not pending:
            return state
        registry.apply(pending)

        def clear(cur: ro.RolloutState):
            if cur.pending != pending:  # settled meanwhile by another process
                return None
            new = ro.RolloutState.from_dict({**cur.to_dict(), "pending": None})
            entry = ro.AuditEntry(
                when=time.time(),
                actor=actor,
                action="registry",
                from_phase=cur.phase,
                to_phase=cur.phase,
                from_version=(pending.get("previous") or pending.get("rejected") or {}).get("version"),
                to_version=(pending.get("champion") or {}).get("version"),
                reason=f"registry {pending['action']} applied: {pending.get('reason', '')}"[:500],
                details={"intent": pending},
            )
            return new, entry

        return self.transact(clear)

    def _stale(self, current: ro.RolloutState, expected: int) -> str:
        return (
            f"the {self.domain} rollout moved on to version {current.version} ({current.phase}: {current.reason!r}) "
            f"since version {expected} was read"
        )

    def _save_locked(self, state: ro.RolloutState, entry: ro.AuditEntry, expected: int | None) -> ro.RolloutState:
        try:
            current = self.read()
            have = current.version if current else 0
        except CorruptState as exc:
            current, have = None, self.audited_version()
            kept = self.state_path.with_name(f"{self.state_path.name}.corrupt-{int(time.time())}")
            os.replace(self.state_path, kept)  # the operator may want to see what broke
            log.error("%s; kept as %s, replaced by version %d", exc, kept, have + 1)
        if expected is not None and have != expected:
            raise StaleState(self._stale(current, expected))
        new = dataclasses.replace(state, version=have + 1)
        entry = dataclasses.replace(
            entry, details={**entry.details, "state_version": new.version, "rollout_id": new.rollout_id}
        )
        append_jsonl(self.audit_path, entry.to_dict(), durable=True)
        write_json(self.state_path, new.to_dict(), durable=True)
        log.info("%s: %s -> %s v%d (%s)", new.domain, entry.from_phase, entry.to_phase, new.version, entry.reason)
        return new

    @contextlib.contextmanager
    def driver_lease(self, actor: str, wait_s: float = 0.0, poll_s: float = 0.5) -> Iterator[None]:
        """Hold the domain's driver lock while the block runs; wait up to wait_s for it, else RolloutBusy."""
        path = self.folder / ".driver.lock"
        deadline = time.monotonic() + wait_s
        with contextlib.ExitStack() as stack:
            while True:
                try:
                    fh = stack.enter_context(_flock(path, blocking=False))
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = path.read_text().strip() or "unknown"
                        raise RolloutBusy(
                            f"another rollout driver holds {self.domain} ({holder}); waited {wait_s:.0f} s. "
                            "It ends when its rollout is full, rolled back or paused"
                        ) from None
                    time.sleep(poll_s)
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "actor": actor, "since": time.time()}))
            fh.flush()
            yield

    def audit(self) -> list[dict[str, Any]]:
        return read_jsonl(self.audit_path)

    # --- logs -------------------------------------------------------------------------------------
    def append_request(self, record: dict[str, Any]) -> None:
        """One request line (rotating by size); OSError when the disk is full: the service catches it."""
        append_jsonl(self.requests_path, record, max_bytes=self.max_bytes, keep=self.keep)

    def requests(self, rollout_id: str | None = None) -> list[dict[str, Any]]:
        """Request lines, oldest first: of one rollout (its files only), or every line the files keep."""
        return read_rotated_jsonl(self.requests_path, self.keep, "rollout_id", rollout_id)

    def append_feedback(self, record: dict[str, Any]) -> None:
        append_jsonl(self.feedback_path, record, max_bytes=self.max_bytes, keep=self.keep)

    def feedback(self, rollout_id: str | None = None) -> list[dict[str, Any]]:
        """Feedback lines, oldest first: of one rollout (its files only), or every line the files keep."""
        return read_rotated_jsonl(self.feedback_path, self.keep, "rollout_id", rollout_id)

    def append_evaluation(self, record: dict[str, Any]) -> None:
        append_jsonl(self.evaluations_path, record)

    def evaluations(self) -> list[dict[str, Any]]:
        return read_jsonl(self.evaluations_path)


# --- PostgreSQL ---------------------------------------------------------------------------------------
# The rollout store in PostgreSQL: the cluster profile's backend behind RolloutStore's interface.
#
# `RolloutStore(paths, domain)` is this class whenever HATCHERY_STATE_URL is set (artifacts/shared_state.py),
# so the driver, the operator's commands and every service replica share one state however many
# machines they run on. The guarantees of the file store, kept by the database instead of flocks:
#
#   state     one row per domain (hatchery_rollout_state): the RolloutState as JSON and its version.
#             A write locks the row (SELECT ... FOR UPDATE), compares the version it was given
#             (StaleState when it moved on), appends the audit entry and bumps the version in ONE
#             transaction, so the audit trail and the state can never disagree.
#   lease     a session-level advisory lock per domain on a connection of its own, held for the
#             driver's whole run; a killed driver's connection dies and the lock with it. The holder
#             (pid, host, actor, since) is kept in hatchery_rollout_lease for the RolloutBusy message.
#   logs      hatchery_rollout_log rows (kind: requests, feedback, evaluations), read per rollout id
#             in insertion order. They do not rotate: retention is the database's (delete by rollout).
#   change    mtime_ns() is the state's version: a service replica polls it (services/settings.py,
#             STATE_POLL_S) and reloads when it moves. While the database is unreachable it keeps the
#             last value (the service keeps serving what it routes by now, and says so in its log).

LEASE_CLASS = 7_141_002  # first key of the driver lease's advisory lock; the second is the domain's hash


class PgRolloutStore(RolloutStore):
    """RolloutStore on PostgreSQL (url: default HATCHERY_STATE_URL). max_bytes/keep are unused (no rotation)."""

    def __init__(
        self, paths: Paths, domain: str, max_bytes: int | None = None, keep: int | None = None, url: str | None = None
    ) -> None:
        super().__init__(paths, domain, max_bytes, keep)
        self.url = url or state_url()
        if not self.url:
            raise ValueError("PgRolloutStore needs a database URL (HATCHERY_STATE_URL)")
        self.db = Database(self.url)
        self._last_version: int | None = None

    # --- state ------------------------------------------------------------------------------------
    def _parse(self, raw: Any) -> ro.RolloutState | None:
        if raw is None:
            return None
        try:
            state = ro.RolloutState.from_dict(raw if isinstance(raw, dict) else json.loads(raw))
        except Exception as exc:  # noqa: BLE001 - any way a row fails to be a state is the same answer
            raise CorruptState(
                f"the {self.domain} row of hatchery_rollout_state is not a valid rollout state: "
                f"{type(exc).__name__}: {exc}"[:500]
            ) from exc
        if state.domain != self.domain:
            raise CorruptState(f"the {self.domain} row of hatchery_rollout_state holds a {state.domain!r} state")
        return state

    def read(self) -> ro.RolloutState | None:
        """The stored state, None when no rollout ever ran; CorruptState if unreadable (or unreachable)."""

        def work(cur: Any) -> Any:
            cur.execute("SELECT state FROM hatchery_rollout_state WHERE domain = %s", (self.domain,))
            row = cur.fetchone()
            return row[0] if row else None

        try:
            raw = self.db.run(work)
        except StoreUnavailable as exc:  # like an unreadable file: the service falls back to the champion
            raise CorruptState(str(exc)) from exc
        return self._parse(raw)

    def mtime_ns(self) -> int | None:
        """The state's version (moves on every write); the last one seen while the database is down."""

        def work(cur: Any) -> int | None:
            cur.execute(
                "SELECT version FROM hatchery_rollout_state WHERE domain = %s AND state IS NOT NULL", (self.domain,)
            )
            row = cur.fetchone()
            return int(row[0]) if row else None

        try:
            self._last_version = self.db.run(work)
        except StoreUnavailable as exc:
            log.warning("%s rollout state not polled: %s", self.domain, exc)
        return self._last_version

    def save(self, state: ro.RolloutState, entry: ro.AuditEntry, expected: int | None = None) -> ro.RolloutState:
        """Write `state` as the next version with its audit entry, in one transaction (see the module doc)."""
        return self.db.run(lambda cur: self._write(cur, state, entry, expected, self._lock_row(cur)))

    def transact(
        self,
        change: Callable[[ro.RolloutState], tuple[ro.RolloutState, ro.AuditEntry] | None],
        expected: int | None = None,
    ) -> ro.RolloutState:
        """Read the current state, apply `change` and write the result, all under the row lock."""

        def work(cur: Any) -> ro.RolloutState:
            have, current = self._lock_row(cur)
            current = current or ro.RolloutState(domain=self.domain, version=have)
            if expected is not None and current.version != expected:
                raise StaleState(self._stale(current, expected))
            changed = change(current)
            return current if changed is None else self._write(cur, *changed, current.version, (have, current))

        return self.db.run(work)

    def _lock_row(self, cur: Any) -> tuple[int, ro.RolloutState | None]:
        """(stored version, parsed state or None) with the domain's row locked until the transaction ends."""
        cur.execute(
            "INSERT INTO hatchery_rollout_state (domain, version, state) VALUES (%s, 0, NULL) ON CONFLICT DO NOTHING",
            (self.domain,),
        )
        cur.execute("SELECT version, state FROM hatchery_rollout_state WHERE domain = %s FOR UPDATE", (self.domain,))
        have, raw = cur.fetchone()
        try:
            return int(have), self._parse(raw)
        except CorruptState as exc:
            log.error("%s; replaced by version %d", exc, int(have) + 1)
            return int(have), None

    def _write(
        self,
        cur: Any,
        state: ro.RolloutState,
        entry: ro.AuditEntry,
        expected: int | None,
        locked: tuple[int, ro.RolloutState | None],
    ) -> ro.RolloutState:
        have, current = locked
        if expected is not None and have != expected:
            raise StaleState(self._stale(current or ro.RolloutState(domain=self.domain, version=have), expected))
        new = dataclasses.replace(state, version=have + 1)
        entry = dataclasses.replace(
            entry, details={**entry.details, "state_version": new.version, "rollout_id": new.rollout_id}
        )
        cur.execute(
            "INSERT INTO hatchery_rollout_audit (domain, entry) VALUES (%s, %s)",
            (self.domain, json.dumps(entry.to_dict(), default=str)),
        )
        cur.execute(
            "UPDATE hatchery_rollout_state SET version = %s, state = %s, updated_at = now() WHERE domain = %s",
            (new.version, json.dumps(new.to_dict(), default=str), self.domain),
        )
        log.info("%s: %s -> %s v%d (%s)", new.domain, entry.from_phase, entry.to_phase, new.version, entry.reason)
        return new

    @contextlib.contextmanager
    def driver_lease(self, actor: str, wait_s: float = 0.0, poll_s: float = 0.5) -> Iterator[None]:
        """Hold the domain's driver lease (an advisory lock) while the block runs; RolloutBusy after wait_s."""
        conn = self.db.connect()  # its own session: the lock lives as long as this connection
        self.db.ensure_schema(conn)
        conn.autocommit = True
        deadline = time.monotonic() + wait_s
        try:
            with conn.cursor() as cur:
                while True:
                    cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LEASE_CLASS, self.domain))
                    if cur.fetchone()[0]:
                        break
                    if time.monotonic() >= deadline:
                        cur.execute("SELECT holder FROM hatchery_rollout_lease WHERE domain = %s", (self.domain,))
                        row = cur.fetchone()
                        holder = json.dumps(row[0]) if row else "unknown"
                        raise RolloutBusy(
                            f"another rollout driver holds {self.domain} ({holder}); waited {wait_s:.0f} s. "
                            "It ends when its rollout is full, rolled back or paused"
                        )
                    time.sleep(poll_s)
                holder = {"pid": os.getpid(), "host": socket.gethostname(), "actor": actor, "since": time.time()}
                cur.execute(
                    "INSERT INTO hatchery_rollout_lease (domain, holder) VALUES (%s, %s) "
                    "ON CONFLICT (domain) DO UPDATE SET holder = EXCLUDED.holder",
                    (self.domain, json.dumps(holder)),
                )
            yield
        finally:
            conn.close()  # ends the session: the advisory lock is released with it

    def audit(self) -> list[dict[str, Any]]:
        def work(cur: Any) -> list[dict[str, Any]]:
            cur.execute("SELECT entry FROM hatchery_rollout_audit WHERE domain = %s ORDER BY id", (self.domain,))
            return [row[0] for row in cur.fetchall()]

        return self.db.run(work)

    # --- logs -------------------------------------------------------------------------------------
    def _append(self, kind: str, record: dict[str, Any]) -> None:
        self.db.run(
            lambda cur: cur.execute(
                "INSERT INTO hatchery_rollout_log (domain, kind, rollout_id, record) VALUES (%s, %s, %s, %s)",
                (self.domain, kind, record.get("rollout_id"), json.dumps(record, default=str)),
            )
        )

    def _read(self, kind: str, rollout_id: str | None = None) -> list[dict[str, Any]]:
        def work(cur: Any) -> list[dict[str, Any]]:
            sql = "SELECT record FROM hatchery_rollout_log WHERE domain = %s AND kind = %s"
            args: tuple = (self.domain, kind)
            if rollout_id is not None:
                sql, args = sql + " AND rollout_id = %s", (*args, rollout_id)
            cur.execute(sql + " ORDER BY id", args)
            return [row[0] for row in cur.fetchall()]

        return self.db.run(work)

    def append_request(self, record: dict[str, Any]) -> None:
        """One request row; StoreUnavailable (an OSError) when the database is down: the service counts it."""
        self._append("requests", record)

    def requests(self, rollout_id: str | None = None) -> list[dict[str, Any]]:
        return self._read("requests", rollout_id)

    def append_feedback(self, record: dict[str, Any]) -> None:
        self._append("feedback", record)

    def feedback(self, rollout_id: str | None = None) -> list[dict[str, Any]]:
        return self._read("feedback", rollout_id)

    def append_evaluation(self, record: dict[str, Any]) -> None:
        self._append("evaluations", record)

    def evaluations(self) -> list[dict[str, Any]]:
        return self._read("evaluations")
