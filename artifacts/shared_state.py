"""Shared state in PostgreSQL: what the cluster profile keeps in one database instead of local files.

    HATCHERY_STATE_URL=postgresql://user@host:5432/db   (absent: every store stays a file under HATCHERY_HOME)

Selected by that variable alone: the rollout store (PgRolloutStore in artifacts/rollout_store.py: state with its
compare-and-swap version, driver lease, audit trail, request/feedback/evaluation logs) and the DVC
lock files of the cluster's per-task workspaces (LockfileStore, pipelines/dvc_stage.py) live there,
so every worker and every service replica reads and writes the same rows.

A connection is opened per thread, lazily, and re-opened once after the server went away (a
PostgreSQL restart); a server that stays unreachable is StoreUnavailable, an OSError, which is what
the file stores raise for a failed disk, so every caller that survives a full disk survives a
database outage the same way (the service keeps answering and counts the lost log lines).

psycopg2 is imported inside functions: importing this module costs nothing without the variable.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

STATE_URL_ENV = "HATCHERY_STATE_URL"
T = TypeVar("T")

# Created on first use by whichever process gets there first (under a transaction-scoped advisory lock,
# since two CREATE TABLE IF NOT EXISTS racing each other can still collide in the catalog).
SCHEMA = """
CREATE TABLE IF NOT EXISTS hatchery_rollout_state (
    domain text PRIMARY KEY,
    version integer NOT NULL,
    state jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS hatchery_rollout_audit (
    id bigserial PRIMARY KEY,
    domain text NOT NULL,
    entry jsonb NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS hatchery_rollout_audit_domain ON hatchery_rollout_audit (domain, id);
CREATE TABLE IF NOT EXISTS hatchery_rollout_log (
    id bigserial PRIMARY KEY,
    domain text NOT NULL,
    kind text NOT NULL,
    rollout_id text,
    record jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS hatchery_rollout_log_read ON hatchery_rollout_log (domain, kind, rollout_id, id);
CREATE TABLE IF NOT EXISTS hatchery_rollout_lease (
    domain text PRIMARY KEY,
    holder jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS hatchery_dvc_lock (
    key text PRIMARY KEY,
    lock text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""
SCHEMA_LOCK = 7_141_001  # pg_advisory_xact_lock key for the DDL above


class StoreUnavailable(OSError):
    """The state database cannot be reached (or dropped the connection twice in a row)."""


def state_url() -> str | None:
    """HATCHERY_STATE_URL, or None: the embedded file stores."""
    return os.environ.get(STATE_URL_ENV) or None


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, cred = head.partition("//")
    return f"{scheme}//{cred.split(':', 1)[0]}:***@{tail}"


class Database:
    """One PostgreSQL database: a connection per thread, each call one transaction, one reconnect."""

    def __init__(self, url: str, connect_timeout_s: int = 5) -> None:
        self.url, self.connect_timeout_s = url, connect_timeout_s
        self._local = threading.local()
        self._schema_ready = False

    def connect(self) -> Any:
        """A new connection (autocommit off); StoreUnavailable when the server does not answer."""
        import psycopg2

        try:
            return psycopg2.connect(self.url, connect_timeout=self.connect_timeout_s)
        except psycopg2.OperationalError as exc:
            raise StoreUnavailable(f"the state database {redacted(self.url)} is unreachable: {exc}".strip()) from exc

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self.connect()
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
                pass

    def run(self, work: Callable[[Any], T]) -> T:
        """work(cursor) in one transaction (committed on return, rolled back on an exception).

        A connection the server dropped (a restart) is replaced and the work retried once; both failing
        is StoreUnavailable. Errors the work raises itself (StaleState, ...) pass through unchanged.
        """
        import psycopg2

        for attempt in (1, 2):
            conn = self._conn()
            try:
                self.ensure_schema(conn)
                with conn, conn.cursor() as cur:  # `with conn`: commit, or roll back on an exception
                    return work(cur)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self._drop()
                if attempt == 2:
                    raise StoreUnavailable(f"the state database {redacted(self.url)} failed: {exc}".strip()) from exc
                log.warning("state database connection lost (%s); reconnecting", str(exc).strip()[:200])
        raise AssertionError("unreachable")

    def ensure_schema(self, conn: Any) -> None:
        if self._schema_ready:
            return
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            cur.execute(SCHEMA)
        self._schema_ready = True

    def close(self) -> None:
        self._drop()


class LockfileStore:
    """The newest dvc.lock of each workspace key, shared by every worker (pipelines/dvc_stage.py).

    In PostgreSQL under HATCHERY_STATE_URL; without it, a JSON file `path` (one machine's workers).
    merge() folds one task's dvc.lock into the stored one stage by stage inside one transaction, so two
    tasks finishing at once (two runs with the same overrides) both keep their stages.
    """

    def __init__(self, url: str | None, path: os.PathLike | str) -> None:
        self.url, self.path = url, path
        self.db = Database(url) if url else None

    def get(self, key: str) -> str | None:
        if self.db is None:
            return self._file().get(key)

        def work(cur: Any) -> str | None:
            cur.execute("SELECT lock FROM hatchery_dvc_lock WHERE key = %s", (key,))
            row = cur.fetchone()
            return row[0] if row else None

        return self.db.run(work)

    def merge(self, key: str, lock_text: str) -> str:
        """Store lock_text's stages over the stored ones; returns the merged dvc.lock text."""
        if self.db is None:
            return self._merge_file(key, lock_text)

        def work(cur: Any) -> str:
            cur.execute("INSERT INTO hatchery_dvc_lock (key, lock) VALUES (%s, '') ON CONFLICT DO NOTHING", (key,))
            cur.execute("SELECT lock FROM hatchery_dvc_lock WHERE key = %s FOR UPDATE", (key,))
            merged = merge_lockfiles(cur.fetchone()[0], lock_text)
            cur.execute("UPDATE hatchery_dvc_lock SET lock = %s, updated_at = now() WHERE key = %s", (merged, key))
            return merged

        return self.db.run(work)

    def _file(self) -> dict[str, str]:
        from pathlib import Path

        path = Path(self.path)
        return json.loads(path.read_text()) if path.exists() else {}

    def _merge_file(self, key: str, lock_text: str) -> str:
        import fcntl
        from pathlib import Path

        from artifacts.files import write_json

        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            locks = self._file()
            locks[key] = merge_lockfiles(locks.get(key, ""), lock_text)
            write_json(path, locks)
            return locks[key]


def merge_lockfiles(stored: str, new: str) -> str:
    """dvc.lock `new` over `stored`, stage by stage (a stage `new` records replaces the stored entry)."""
    import yaml

    old = yaml.safe_load(stored) or {} if stored else {}
    mine = yaml.safe_load(new) or {} if new else {}
    stages = {**(old.get("stages") or {}), **(mine.get("stages") or {})}
    schema = mine.get("schema") or old.get("schema") or "2.0"
    return yaml.safe_dump({"schema": schema, "stages": stages}, sort_keys=False)
