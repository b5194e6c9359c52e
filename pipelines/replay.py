"""replay: held-out traffic against the live endpoint, with simulated shopper feedback per rollout arm.

A traffic source yields requests with what the replay knows about them (the truth); the sender posts
them to the service, and the source turns each response into feedback (impression, success):
  SearchReplay    held-out test queries (data/split/search/test.parquet); clicks from a cascade or
                  position-based click model over the graded judgments; success = a click in the top 10.
                  The clicked product ids go to the feedback too (interleaving credits them by team).
  RecommendReplay test-window users (data/split/recommend/test/); the request carries the RAW user id
                  (as a shop's front end would; recovered from the run's own recommendation source,
                  pseudonymised with the same salt), success = a recommended item the user bought in the
                  test window.
Production logs replace a source by implementing the same two methods (`TrafficSource`).

Feedback lines go to the domain's rollout store (artifacts/rollout_store.py, feedback.jsonl): request
id, arm, version, rollout id/phase/step as the response reported them, success. Client-visible failures (non-200) are
feedback lines too, with status and success=false.

Usage: python -m pipelines.replay search|recommend --url http://127.0.0.1:3000 --requests 500
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from artifacts.paths import Paths
from artifacts.rollout_store import RolloutStore
from components import rollout as ro
from components import schema as s
from components.config import RelevanceScale

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replayed:
    """One request to send: endpoint path, JSON body, and what the source needs to judge the answer."""

    endpoint: str
    body: dict[str, Any]
    truth: Any


class TrafficSource(Protocol):
    domain: str

    def requests(self, n: int, rng: np.random.Generator) -> Iterator[Replayed]: ...

    def feedback(self, response: dict[str, Any], truth: Any, rng: np.random.Generator) -> bool: ...


class SearchReplay:
    """Test queries, sampled with replacement; sessions drawn from a fixed pool (the canary's sticky unit)."""

    domain = "search"

    def __init__(
        self,
        judgments: pd.DataFrame,
        click_model: str = "cascade",
        sessions: int = 5000,
        k: int = 10,
        scale: RelevanceScale | None = None,
    ) -> None:
        """scale: the judgment scale (params.data.search.relevance; default EVALUATION.md's 1..3)."""
        self.click_model, self.sessions, self.k = click_model, sessions, k
        self.scale = scale or RelevanceScale()
        self.queries = []
        for _, g in judgments.groupby(s.QUERY_ID, sort=True):
            graded = self.scale.gain_of(g[s.RELEVANCE].astype(float))
            gains = dict(zip(g[s.PRODUCT_ID].astype(str), graded, strict=True))
            self.queries.append((str(g[s.QUERY].iloc[0]), gains))
        if not self.queries:
            raise ValueError("no test queries to replay")

    @classmethod
    def from_paths(cls, paths: Paths, **kw) -> SearchReplay:
        return cls(pd.read_parquet(paths.split / "search" / "test.parquet"), **kw)

    def requests(self, n: int, rng: np.random.Generator) -> Iterator[Replayed]:
        for _ in range(n):
            query, gains = self.queries[int(rng.integers(len(self.queries)))]
            session = f"replay-{int(rng.integers(self.sessions))}"
            yield Replayed("/search", {"query": query[:256], "k": self.k, "session_id": session}, gains)

    def clicked(self, response: dict[str, Any], truth: dict[str, float], rng: np.random.Generator) -> list[str]:
        """Product ids the simulated shopper clicks, top first."""
        ids = [str(r["product_id"]) for r in response["results"]]
        gains = [truth.get(i, 0.0) for i in ids]
        clicks = ro.simulate_clicks(gains, rng, self.click_model, k=self.k, max_gain=self.scale.max_gain)
        return [ids[r] for r in clicks]

    def feedback(self, response: dict[str, Any], truth: dict[str, float], rng: np.random.Generator) -> bool:
        return bool(self.clicked(response, truth, rng))


class RecommendReplay:
    """Test-window buyers with train history; the request sends their raw id, success = a bought item shown."""

    domain = "recommend"

    def __init__(self, targets: dict[str, set[str]], k: int = 20) -> None:
        if not targets:
            raise ValueError("no test-window users to replay")
        self.users = sorted(targets)
        self.targets, self.k = targets, k

    @classmethod
    def from_paths(cls, paths: Paths, raw_ids: dict[str, str], k: int = 20, **_) -> RecommendReplay:
        """raw_ids: pseudonym -> raw user id (see raw_user_ids)."""
        history = pd.read_parquet(paths.split / "recommend" / "test" / "history.parquet", columns=[s.USER_ID])
        window = pd.read_parquet(paths.split / "recommend" / "test" / "window.parquet")
        window = window[window[s.USER_ID].isin(set(history[s.USER_ID])) & (window[s.EVENT_TYPE] == s.PURCHASE)]
        targets = {raw_ids[u]: set(g[s.PRODUCT_ID].astype(str)) for u, g in window.groupby(s.USER_ID) if u in raw_ids}
        return cls(targets, k)

    def requests(self, n: int, rng: np.random.Generator) -> Iterator[Replayed]:
        for _ in range(n):
            user = self.users[int(rng.integers(len(self.users)))]
            yield Replayed("/recommend", {"user_id": user, "k": self.k}, self.targets[user])

    def feedback(self, response: dict[str, Any], truth: set[str], rng: np.random.Generator) -> bool:
        return any(str(r["product_id"]) in truth for r in response["results"])


def raw_user_ids(salt: str, source=None) -> dict[str, str]:
    """pseudonym -> raw user id, by pseudonymising the raw ids of a recommendation source (params
    data.recommend: a shop's canonical events or the Online Retail file; default: params.yaml's) with the
    salt ingestion used, exactly as ingestion reads them."""
    from components.privacy import pseudonymize
    from pipelines.ingest import source_files

    if source is None:
        from pipelines.common import load_params

        source = load_params().data.recommend
    path = source_files("recommend", source)
    if source.source == "canonical":
        from pipelines.io import read_table

        ids = read_table(path, s.EVENTS)[s.USER_ID].dropna()
    elif source.source == "online_retail":
        ids = pd.read_parquet(path, columns=["CustomerID"])["CustomerID"].dropna().astype("int64")
    else:
        raise ValueError(f"source {source.source!r} has no shoppers to replay recommendation requests for")
    ids = pd.Series(sorted(ids.unique()))
    return dict(zip(pseudonymize(ids, salt).astype(str), ids.astype(str), strict=True))


def replay(
    source: TrafficSource,
    url: str,
    n: int,
    paths: Paths,
    seed: int,
    concurrency: int = 4,
    timeout_s: float = 10.0,
    client=None,
) -> dict[str, Any]:
    """Send n requests (concurrently), one feedback line per response into the rollout store of `paths`.

    Returns the counts (sent, ok, failed, success) and the wall time (wall_s).

    client: an httpx-compatible client to use instead of a new one (an in-process ASGI test client).
    """
    import contextlib

    import httpx

    rng = np.random.default_rng(seed)
    items = list(source.requests(n, rng))
    seeds = rng.integers(0, 2**31, size=len(items))
    store = RolloutStore(paths, source.domain)
    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0, "failed": 0, "success": 0}

    def one(i: int, client: httpx.Client) -> None:
        item = items[i]
        t0 = time.perf_counter()
        try:
            resp = client.post(url.rstrip("/") + item.endpoint, json=item.body, timeout=timeout_s)
            status, payload = resp.status_code, (resp.json() if resp.status_code == 200 else {})
        except httpx.HTTPError as exc:
            status, payload = 0, {"error": str(exc)}
        ms = (time.perf_counter() - t0) * 1000.0
        click_rng = np.random.default_rng(int(seeds[i]))
        clicked = None
        if status == 200 and hasattr(source, "clicked"):
            clicked = source.clicked(payload, item.truth, click_rng)
            success = bool(clicked)
        else:
            success = bool(status == 200 and source.feedback(payload, item.truth, click_rng))
        line = {
            "ts": time.time(),
            "request_id": payload.get("request_id"),
            "arm": payload.get("arm"),
            "version": payload.get("model_version"),
            "phase": payload.get("rollout_phase"),
            "rollout_id": payload.get("rollout_id"),
            "step": payload.get("rollout_step"),
            "status": status,
            "client_ms": round(ms, 3),
            "success": success,
            "clicked": clicked,
            "challenger_failed": payload.get("challenger_failed"),
        }
        with lock:
            counts["sent"] += 1
            counts["ok" if status == 200 else "failed"] += 1
            counts["success"] += success
            store.append_feedback(line)

    start = time.perf_counter()
    own = client is None
    with (
        httpx.Client() if own else contextlib.nullcontext(client) as http,
        ThreadPoolExecutor(max_workers=concurrency) as pool,
    ):
        list(pool.map(lambda i: one(i, http), range(len(items))))
    counts["wall_s"] = round(time.perf_counter() - start, 2)
    return counts


def make_source(
    domain: str,
    paths: Paths,
    click_model: str = "cascade",
    sessions: int = 5000,
    scale: RelevanceScale | None = None,
    users=None,
) -> TrafficSource:
    """users: the recommendation source whose raw ids the requests carry (raw_user_ids)."""
    if domain == "search":
        return SearchReplay.from_paths(paths, click_model=click_model, sessions=sessions, scale=scale)
    from artifacts.paths import pseudonym_salt

    return RecommendReplay.from_paths(paths, raw_user_ids(pseudonym_salt(), users))


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("domain", choices=["search", "recommend"])
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = Paths()
    print(
        json.dumps(replay(make_source(args.domain, paths), args.url, args.requests, paths, args.seed, args.concurrency))
    )
