"""The feedback store: impressions and feedback events, in SQLite (embedded) or PostgreSQL (configured).

    FeedbackStore()                       HATCHERY_STATE_URL=postgresql://... if set, else SQLite at
                                          Paths().feedback_store (<root>/feedback/feedback.sqlite)
    store.append_impression(record)       an Impression (components/feedback/records.py); a repeated
    store.append_feedback(record)         request id, or an event already stored, is a no-op
    store.impression(request_id)          the Impression as appended (items best first), or None
    store.impressions(since, until, domain)   one row per shown item (records.IMPRESSION_COLUMNS)
    store.feedback(since, until, domain)      one row per event (records.FEEDBACK_COLUMNS)
    store.prune(older_than_ts) / store.maintain(now)   retention and the size cap

Why SQLite rather than day-partitioned Parquet: the service must look an impression up by request id
for every feedback event (validation), which is an index lookup in a database and a scan (or a
second, hand-made index) over Parquet files; appends arrive one answer at a time, which Parquet can
only take as tiny files or an in-memory buffer lost on a crash; and one SQL dialect serves both the
embedded file and PostgreSQL, so "PostgreSQL by configuration alone" is the same code. WAL mode lets
the pipelines read while the service writes. A day of traffic is read back with one indexed range
query (`since`/`until`).

Tables (prefix `feedback_`, beside whatever else shares the database):
    feedback_impressions  one row per answer; feedback_items  one row per shown item (request_id,
    position); feedback_events  one row per event, unique on (request_id, event, product_id, ts), so a
    client retrying a batch cannot count a click twice.
Times are unix seconds (server clock for impressions' ts and events' received_ts, which `since` /
`until` filter on: the client's ts is not trusted for windows).

Retention and rotation (environment, read when a store is made):
    HATCHERY_FEEDBACK_RETENTION_DAYS  rows older than this are deleted by maintain(); default 30
    HATCHERY_FEEDBACK_MAX_MB          SQLite only: past this size maintain() deletes the oldest whole
                                      hours until under it (a log rotation that drops the oldest file);
                                      default 2048. PostgreSQL's size is its operator's business. Size it
                                      from what capture writes: ~4 KB an answer in SQLite (bench.capture:
                                      a search answer logs its ten results' ranker features), so 2 GiB
                                      hold about 1.5 h at 100 requests/s, or 6 days at 1 a second.
    HATCHERY_STATE_URL                postgresql://user@host:port/db: the store lives there (absent or
                                      empty: the SQLite file). The same variable names the rollout state's
                                      database, so one setting moves the service's state off the disk.

A store opens its connection on first use (one per thread), never at construction: a service whose
disk is full or whose database is down still starts and answers (services/capture.py counts the loss).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from artifacts.paths import Paths
from components.feedback import records as r
from components.schema import PRODUCT_ID, QUERY

log = logging.getLogger(__name__)

STATE_URL_ENV = "HATCHERY_STATE_URL"
DEFAULT_RETENTION_DAYS, DEFAULT_MAX_MB = 30.0, 2048.0
DAY_S, HOUR_S = 86_400.0, 3_600.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS feedback_impressions (
        request_id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, domain TEXT NOT NULL, endpoint TEXT NOT NULL,
        model_version TEXT NOT NULL, arm TEXT NOT NULL, unit TEXT, query TEXT, user_id TEXT)""",
    "CREATE INDEX IF NOT EXISTS feedback_impressions_ts ON feedback_impressions (ts)",
    """CREATE TABLE IF NOT EXISTS feedback_items (
        request_id TEXT NOT NULL, position INTEGER NOT NULL, product_id TEXT NOT NULL, score DOUBLE PRECISION,
        features TEXT NOT NULL, PRIMARY KEY (request_id, position))""",
    """CREATE TABLE IF NOT EXISTS feedback_events (
        request_id TEXT NOT NULL, domain TEXT NOT NULL, event TEXT NOT NULL, product_id TEXT NOT NULL,
        position INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL, received_ts DOUBLE PRECISION NOT NULL, unit TEXT,
        UNIQUE (request_id, event, product_id, ts))""",
    "CREATE INDEX IF NOT EXISTS feedback_events_received ON feedback_events (received_ts)",
)
_INSERT_IMPRESSION = (
    "INSERT INTO feedback_impressions (request_id, ts, domain, endpoint, model_version, arm, unit, query, user_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INSERT_ITEM = (
    "INSERT INTO feedback_items (request_id, position, product_id, score, features) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
_INSERT_EVENT = (
    "INSERT INTO feedback_events (request_id, domain, event, product_id, position, ts, received_ts, unit) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_HEADER = "i.request_id, i.ts, i.domain, i.endpoint, i.model_version, i.arm, i.unit, i.query, i.user_id"


def state_url() -> str | None:
    """HATCHERY_STATE_URL when it names a PostgreSQL database, else None (the embedded SQLite file).

    A sqlite:/// URL also means the embedded file (at Paths().feedback_store, not at the URL's path: the
    URL names the rollout state's database); anything else is a ValueError naming the variable.
    """
    url = (os.environ.get(STATE_URL_ENV) or "").strip()
    if not url or url.startswith("sqlite:"):
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{STATE_URL_ENV} must be a postgresql:// URL or unset (embedded SQLite), got {url[:40]!r}")
    return url


def retention_days() -> float:
    """HATCHERY_FEEDBACK_RETENTION_DAYS, else 30."""
    return float(os.environ.get("HATCHERY_FEEDBACK_RETENTION_DAYS") or DEFAULT_RETENTION_DAYS)


def size_cap_bytes() -> int:
    """HATCHERY_FEEDBACK_MAX_MB (default 2048) in bytes: the SQLite file's size cap."""
    return int(float(os.environ.get("HATCHERY_FEEDBACK_MAX_MB") or DEFAULT_MAX_MB) * 1024 * 1024)


class FeedbackStore:
    """Impressions and feedback events; see the module docstring.

    url: a postgresql:// URL; None: HATCHERY_STATE_URL, else SQLite at `path` (default
    Paths().feedback_store). retention_s / max_bytes: default from the environment.
    """

    def __init__(
        self,
        url: str | None = None,
        path: Path | None = None,
        paths: Paths | None = None,
        retention_s: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.url = url if url is not None else state_url()
        self.path = None if self.url else Path(path) if path is not None else (paths or Paths()).feedback_store
        self.retention_s = retention_days() * DAY_S if retention_s is None else retention_s
        self.max_bytes = size_cap_bytes() if max_bytes is None else max_bytes
        self._local = threading.local()
        self._ready = False
        self._ready_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (the capture writer process gets the store): connections and locks are per process."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_local", "_ready_lock", "_ready")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local, self._ready, self._ready_lock = threading.local(), False, threading.Lock()

    @property
    def backend(self) -> str:
        return "postgresql" if self.url else "sqlite"

    def __repr__(self) -> str:
        where = self.path if self.path else self.url.split("@")[-1]  # no credentials in logs
        return f"FeedbackStore({self.backend}: {where})"

    # --- connections ------------------------------------------------------------------------------
    def _connect(self):
        if self.url:
            import psycopg2

            conn = psycopg2.connect(self.url, connect_timeout=5)
            conn.autocommit = False
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        # Before any table exists: freed pages can be returned to the OS (maintain's size cap needs it).
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")  # readers (the pipelines) never wait for the service
        conn.execute("PRAGMA synchronous = NORMAL")  # a crash may lose the last commits, never corrupt the file
        return conn

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._ready_lock:
                if not self._ready:
                    self._run(conn, list(_SCHEMA))
                    self._ready = True
        return conn

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.url else statement

    def _run(self, conn, statements: list[str], rows: Sequence[Sequence[Sequence[Any]]] | None = None) -> list[int]:
        """Execute statements (each with its list of parameter rows, if given) in one transaction.

        Returns each statement's row count (for one parameter row; executemany's is not reliable).
        """
        cur = conn.cursor()
        counts = []
        try:
            if not self.url:
                cur.execute("BEGIN IMMEDIATE")
            for i, statement in enumerate(statements):
                if rows is None or len(rows[i]) == 1:
                    cur.execute(self._sql(statement), *([] if rows is None else [tuple(rows[i][0])]))
                elif rows[i]:
                    cur.executemany(self._sql(statement), rows[i])
                counts.append(cur.rowcount)
            conn.commit()
            return counts
        except BaseException:
            conn.rollback()
            if self.url:  # a broken PostgreSQL connection is replaced at the next call
                self._drop_connection()
            raise
        finally:
            cur.close()

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute(self._sql(statement), tuple(params))
            rows = cur.fetchall()
            if self.url:
                conn.commit()  # end the read transaction: no idle-in-transaction connection
            return rows
        except BaseException:
            if self.url:
                conn.rollback()
                self._drop_connection()
            raise
        finally:
            cur.close()

    def _drop_connection(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop_connection()

    # --- writes -----------------------------------------------------------------------------------
    def append_impression(self, record: Mapping[str, Any]) -> None:
        """Append one Impression; ValueError naming every problem if it is not one."""
        self.append_impressions([record])

    def append_feedback(self, record: Mapping[str, Any]) -> None:
        """Append one FeedbackEvent (already validated against its impression); a repeat is a no-op."""
        self.append_many([], [record])

    def append_impressions(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.append_many(records, [])

    def append_many(self, impressions: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]]) -> None:
        """Impressions and events in one transaction (the capture writer's batches): all or none."""
        head, items, rows = [], [], []
        for rec in impressions:
            problems = r.impression_problems(rec)
            if problems:
                raise ValueError(f"not an impression: {'; '.join(problems)}")
            head.append(
                (rec[r.REQUEST_ID], float(rec[r.TS]), rec[r.DOMAIN], rec[r.ENDPOINT], rec[r.MODEL_VERSION])
                + (rec[r.ARM], rec.get(r.UNIT), rec.get(QUERY), rec.get(r.USER))
            )
            for it in rec[r.ITEMS]:
                score = None if it.get(r.SCORE) is None else float(it[r.SCORE])
                feats = it.get(r.FEATURES)
                features = json.dumps(feats, default=float) if feats else "{}"  # numpy scalars as floats
                items.append((rec[r.REQUEST_ID], int(it[r.POSITION]), it[PRODUCT_ID], score, features))
        for ev in events:
            problem = r.feedback_shape_problem(ev)
            if problem is not None or ev.get(r.DOMAIN) not in r.DOMAINS or not r._is_number(ev.get(r.RECEIVED_TS)):
                raise ValueError(f"not a feedback event: {problem.reason if problem else 'domain or received_ts'}")
            rows.append(
                (ev[r.REQUEST_ID], ev[r.DOMAIN], ev[r.EVENT], ev[PRODUCT_ID], int(ev[r.POSITION]), float(ev[r.TS]))
                + (float(ev[r.RECEIVED_TS]), ev.get(r.UNIT))
            )
        if head or rows:
            self._run(self._conn(), [_INSERT_IMPRESSION, _INSERT_ITEM, _INSERT_EVENT], [head, items, rows])

    # --- reads ------------------------------------------------------------------------------------
    def impression(self, request_id: str) -> r.Impression | None:
        """The Impression of one answer (items in shown order), or None if no such answer is kept."""
        head = self._query(f"SELECT {_HEADER} FROM feedback_impressions i WHERE i.request_id = ?", (request_id,))
        if not head:
            return None
        items = self._query(
            "SELECT product_id, position, score, features FROM feedback_items WHERE request_id = ? ORDER BY position",
            (request_id,),
        )
        rid, ts, domain, endpoint, version, arm, unit, query, user = head[0]
        return r.Impression(
            request_id=rid,
            ts=float(ts),
            domain=domain,
            endpoint=endpoint,
            model_version=version,
            arm=arm,
            unit=unit,
            query=query,
            user=user,
            items=[
                r.ShownItem(product_id=p, position=int(pos), score=s, features=json.loads(f)) for p, pos, s, f in items
            ],
        )

    def impressions(
        self, since: float | None = None, until: float | None = None, domain: str | None = None, items: bool = True
    ) -> pd.DataFrame:
        """Answers with since <= ts < until (server time), oldest first: one row per shown item.

        An answer that showed nothing (a query with no results) is one row with product_id, position,
        score and features missing. items=False: one row per answer, the header columns only (what a
        traffic monitor reads, without the items' volume).
        """
        where, params = _window("i.ts", since, until, "i.domain", domain)
        header = list(r.IMPRESSION_COLUMNS[:9])
        if items:
            rows = self._query(
                f"SELECT {_HEADER}, t.product_id, t.position, t.score, t.features FROM feedback_impressions i "
                f"LEFT JOIN feedback_items t ON t.request_id = i.request_id{where} ORDER BY i.ts, i.request_id, "
                "t.position",
                params,
            )
            columns = list(r.IMPRESSION_COLUMNS)
        else:
            rows = self._query(
                f"SELECT {_HEADER} FROM feedback_impressions i{where} ORDER BY i.ts, i.request_id", params
            )
            columns = header
        frame = pd.DataFrame(rows, columns=columns)
        frame[r.TS] = frame[r.TS].astype("float64")
        if items:
            frame[r.POSITION] = frame[r.POSITION].astype("Int64")
            frame[r.SCORE] = frame[r.SCORE].astype("float64")
        return frame

    def feedback(
        self, since: float | None = None, until: float | None = None, domain: str | None = None
    ) -> pd.DataFrame:
        """Events with since <= received_ts < until (server time), in the order received."""
        where, params = _window("received_ts", since, until, "domain", domain)
        rows = self._query(
            f"SELECT {', '.join(r.FEEDBACK_COLUMNS)} FROM feedback_events{where} ORDER BY received_ts, request_id",
            params,
        )
        frame = pd.DataFrame(rows, columns=list(r.FEEDBACK_COLUMNS))
        frame[r.POSITION] = frame[r.POSITION].astype("int64")
        for col in (r.TS, r.RECEIVED_TS):
            frame[col] = frame[col].astype("float64")
        return frame

    def counts(self) -> dict[str, int]:
        """Rows per table: {"impressions", "items", "events"}."""
        return {
            name: int(self._query(f"SELECT COUNT(*) FROM feedback_{table}")[0][0])
            for name, table in (("impressions", "impressions"), ("items", "items"), ("events", "events"))
        }

    # --- retention --------------------------------------------------------------------------------
    def prune(self, older_than_ts: float) -> dict[str, int]:
        """Delete answers with ts < older_than_ts (and their items) and events received before it."""
        counts = self._run(
            self._conn(),
            [
                "DELETE FROM feedback_items WHERE request_id IN "
                "(SELECT request_id FROM feedback_impressions WHERE ts < ?)",
                "DELETE FROM feedback_impressions WHERE ts < ?",
                "DELETE FROM feedback_events WHERE received_ts < ?",
            ],
            [[(older_than_ts,)], [(older_than_ts,)], [(older_than_ts,)]],
        )
        return dict(zip(("items", "impressions", "events"), counts, strict=True))

    def size_bytes(self) -> int | None:
        """The SQLite file's size with its write-ahead log (None for PostgreSQL)."""
        if self.path is None:
            return None
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def maintain(self, now: float) -> dict[str, int]:
        """Retention (rows older than retention_s before `now`), then SQLite's size cap (oldest hours first).

        The cap drops whole hours, not days: a store that fills its cap within a day (a busy shop; see
        HATCHERY_FEEDBACK_MAX_MB) keeps its latest hours rather than losing the whole day at once.
        """
        deleted = self.prune(now - self.retention_s)
        if self.path is None:
            return deleted
        conn = self._conn()
        while (self.size_bytes() or 0) > self.max_bytes:
            oldest = self._query("SELECT MIN(ts) FROM feedback_impressions")[0][0]
            if oldest is None:
                break
            cut = (float(oldest) // HOUR_S + 1) * HOUR_S  # the end of the oldest hour held
            log.warning(
                "feedback store %s over %d bytes: dropping the hour before %.0f", self.path, self.max_bytes, cut
            )
            for k, v in self.prune(cut).items():
                deleted[k] = deleted.get(k, 0) + v
            conn.execute("PRAGMA incremental_vacuum")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted


def _window(ts_col: str, since: float | None, until: float | None, domain_col: str, domain: str | None):
    clauses, params = [], []
    if since is not None:
        clauses.append(f"{ts_col} >= ?")
        params.append(float(since))
    if until is not None:
        clauses.append(f"{ts_col} < ?")
        params.append(float(until))
    if domain is not None:
        if domain not in r.DOMAINS:
            raise ValueError(f"unknown domain {domain!r}: expected one of {r.DOMAINS}")
        clauses.append(f"{domain_col} = ?")
        params.append(domain)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
