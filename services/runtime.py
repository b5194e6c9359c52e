"""What the service does between HTTP and the models: load versions, route by rollout state, log, measure.

Kept apart from the BentoML class (services/service.py) so the in-process benchmark and the tests call
exactly the code the endpoint calls.

Where models come from (per domain, first that applies):
  1. the rollout state (artifacts/rollout_store.py: <root>/reports/rollout/<domain>/state.json), its
     champion and challenger refs;
  2. HATCHERY_<DOMAIN>_BUNDLE: a local bundle folder (tests, laptops), version "local";
  3. the registry's `champion` alias (artifacts/registry.py), its bundle downloaded once into
     <root>/serving_cache/<name>/<version>/.
A domain with none of these answers 503 with the reason; the others keep serving.

The state file is re-read when it changes (checked at most every STATE_POLL_S seconds): a new
version is loaded in a background thread while the current one keeps answering, then swapped in
one assignment, so no request fails during a switch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from artifacts.bundles import load_bundle
from artifacts.paths import Paths
from artifacts.registry import CHAMPION, MODEL_NAMES, Registry, local_bundle
from artifacts.rollout_store import RolloutStore
from components import rollout as ro
from services.settings import QUERY_CACHE_SIZE, SHADOW_BACKLOG, STATE_POLL_S, limit_threads, settle_heap

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """No model for the domain (yet): the endpoint answers 503 with this message."""


# --- per-domain routing ----------------------------------------------------------------------------
class QueryCache:
    """LRU of query-tower embeddings by cleaned query text, one per loaded model version.

    Shop traffic is head-heavy: the encoder (the bulk of a search's CPU time) runs once per distinct
    query. The cached vector is the encoder's own output, so scores are unchanged.
    """

    def __init__(self, capacity: int = QUERY_CACHE_SIZE) -> None:
        from collections import OrderedDict

        self.capacity, self._items, self._lock = capacity, OrderedDict(), threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: str, compute):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = compute()
        with self._lock:
            self._items[key] = value
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value


def search_results(model, cache: QueryCache | None, query: str, k: int, explain: bool = False) -> list[dict]:
    """SearchModel's ranking of one query with a cached query embedding (explain: SearchModel.search itself).

    rank_queries is the batch path the offline evaluation scores with; the results are built exactly
    as SearchModel.search builds them.
    """
    q = model.clean_query(query)
    if explain or cache is None or not q:
        return model.search(query, k=k, explain=explain)
    emb = cache.get_or_compute(q, lambda: model.encode_queries([q])[0])
    idx, scores = model.rank_queries([q], k=k, q_embs=emb[None, :])[0]
    return [
        {"product_id": str(model.product_ids[c]), "title": model.titles[c], "score": float(v)}
        for c, v in zip(idx.tolist(), scores.tolist(), strict=True)
    ]


@dataclass
class Loaded:
    ref: ro.ModelRef
    model: Any
    cache: QueryCache | None = None


class DomainRuntime:
    """Champion and challenger of one domain, routed by its rollout state; logs every scored request.

    loader(domain, bundle folder) -> model: artifacts.bundles.load_bundle unless given (tests).
    threads: intra-op threads re-applied after each load (services.settings.limit_threads).
    """

    def __init__(self, domain: str, paths: Paths, loader=None, metrics=None, threads: int | None = None) -> None:
        self.domain = domain
        self.threads = threads
        self.paths = paths
        self.store = RolloutStore(paths, domain)
        self.loader = loader
        self.metrics = metrics
        self.state: ro.RolloutState | None = None
        self.champion: Loaded | None = None
        self.challenger: Loaded | None = None
        self.error: str | None = None
        self._state_mtime: int | None = None
        self._last_poll = 0.0
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._loading = False
        self._shadow = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shadow-{domain}")
        self._shadow_backlog = 0

    # loading ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the champion (and challenger) now, blocking: called from the service's __init__."""
        state = self.store.read()
        if state is not None:
            self._state_mtime = self.store.mtime_ns()
        champion = state.champion if state and state.champion else self._initial_champion()
        if champion is None:
            self.error = (
                f"no {self.domain} model: no rollout state, no HATCHERY_{self.domain.upper()}_BUNDLE "
                f"and no `{CHAMPION}` alias on {MODEL_NAMES[self.domain]}"
            )
            log.warning(self.error)
            return
        try:
            self._apply(state or ro.RolloutState(domain=self.domain, phase="full", champion=champion), champion)
        except Exception as exc:  # noqa: BLE001 - one broken domain must not take the other down
            self.error = f"{self.domain} champion {champion.version} failed to load: {exc}"
            log.exception(self.error)

    def _initial_champion(self) -> ro.ModelRef | None:
        local = os.environ.get(f"HATCHERY_{self.domain.upper()}_BUNDLE")
        if local:
            return ro.ModelRef(version=os.environ.get(f"HATCHERY_{self.domain.upper()}_VERSION", "local"), uri=local)
        try:
            return Registry.for_domain(self.domain, self.paths).ref(CHAMPION)
        except Exception as exc:  # noqa: BLE001 - any registry failure means "no champion from the registry"
            log.info("no registry champion for %s: %s", self.domain, exc)
            return None

    def _load(self, ref: ro.ModelRef, reuse: list[Loaded | None]) -> Loaded:
        for have in reuse:
            if have is not None and have.ref == ref:
                return have
        t0 = time.perf_counter()
        model = (self.loader or load_bundle)(self.domain, local_bundle(ref.uri, self.paths))
        log.info("loaded %s v%s in %.1f s", self.domain, ref.version, time.perf_counter() - t0)
        if self.threads:  # again: loading may have brought in OpenMP runtimes (LightGBM, FAISS) threadpoolctl missed
            limit_threads(self.threads)
        warm_up = getattr(model, "warm_up", None)
        if callable(warm_up):  # pay one-off costs (the ONNX session, first-call allocations) before traffic
            warm_up()
        return Loaded(ref, model, QueryCache() if self.domain == "search" else None)

    def _apply(self, state: ro.RolloutState, champion_ref: ro.ModelRef | None = None) -> None:
        """Load what `state` names (reusing loaded versions), then swap everything in at once."""
        have = [self.champion, self.challenger]
        champ_ref = champion_ref or state.champion or (self.champion.ref if self.champion else None)
        champion = self._load(champ_ref, have) if champ_ref else None
        challenger = None
        if state.challenger is not None and state.routing_phase in ro.ACTIVE:
            try:
                challenger = self._load(state.challenger, have)
            except Exception:  # noqa: BLE001 - an unloadable challenger is served by no one; the champion answers
                log.exception("challenger %s failed to load; the champion answers everything", state.challenger)
        with self._lock:
            self.champion, self.challenger, self.state, self.error = champion, challenger, state, None
        del have  # the models this swap dropped are garbage now: let settle_heap reclaim them
        settle_heap()

    def poll_state(self, force: bool = False) -> None:
        """Pick up a changed state file (cheap stat, rate-limited); loading runs in the background."""
        now = time.monotonic()
        if not force and now - self._last_poll < STATE_POLL_S:
            return
        self._last_poll = now
        mtime = self.store.mtime_ns()
        if mtime is None or mtime == self._state_mtime or self._loading:
            return
        try:
            state = self.store.read()
        except (ValueError, OSError):  # a writer mid-rename is impossible (atomic), but be defensive
            return
        if state is None:  # removed since the stat
            return
        self._state_mtime = mtime
        self._loading = True
        if self.champion is None and state.champion is not None:  # what a 503 says meanwhile
            self.error = f"{self.domain} model v{state.champion.version} is loading; retry in a few seconds"

        def work() -> None:
            try:
                self._apply(state)
            except Exception as exc:  # noqa: BLE001
                log.exception("could not apply rollout state %s; keeping the current models", state.phase)
                if self.champion is None:
                    self.error = f"{self.domain} model failed to load: {exc}"
            finally:
                self._loading = False

        if force:
            work()
        else:
            threading.Thread(target=work, name=f"reload-{self.domain}", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self.champion is not None

    # serving ---------------------------------------------------------------------------------------
    def call(self, endpoint: str, unit: str, fn, top_ids) -> dict[str, Any]:
        """Answer one request: route it, score with the arm's model, log; never fails for the challenger.

        fn(loaded) -> results, from loaded.model (and loaded.cache); top_ids(results) -> product ids best
        first (for the shadow agreement log).
        """
        self.poll_state()
        with self._lock:
            champion, challenger, state = self.champion, self.challenger, self.state
        if champion is None:
            raise ModelUnavailable(self.error or f"{self.domain} model is not loaded yet")
        arm, shadow = ro.route(state, unit) if (state and challenger) else (ro.CHAMPION, False)
        request_id = uuid.uuid4().hex
        ctx = {"request_id": request_id, "endpoint": endpoint, "unit": unit, "state": state}
        answered, fallback = None, False
        if arm == ro.CHALLENGER:
            try:
                answered = self._timed(challenger, fn, top_ids, ctx, arm, "answer")
            except Exception as exc:  # noqa: BLE001 - the champion answers instead: no request fails
                log.warning("challenger v%s failed on %s: %s", challenger.ref.version, endpoint, exc)
                arm, fallback = ro.CHAMPION, True
        if answered is None:
            answered = self._timed(champion, fn, top_ids, ctx, ro.CHAMPION, "answer")
        if shadow:
            self._submit_shadow(challenger, fn, top_ids, ctx)
        used = challenger if arm == ro.CHALLENGER else champion
        return {
            "request_id": request_id,
            "model_version": used.ref.version,
            "arm": arm,
            "challenger_failed": fallback,  # the champion answered because the challenger raised
            "rollout_phase": state.routing_phase if state else "full",
            "rollout_id": state.rollout_id if state else "",
            "rollout_step": state.step if state else -1,
            "results": answered,
        }

    def _timed(self, loaded: Loaded, fn, top_ids, ctx: dict, arm: str, role: str):
        t0 = time.perf_counter()
        error, results = None, None
        try:
            results = fn(loaded)
            return results
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        finally:
            ms = (time.perf_counter() - t0) * 1000.0
            self._record(ctx, arm, role, loaded.ref.version, ms, error, top_ids(results) if results is not None else [])

    def _submit_shadow(self, challenger: Loaded, fn, top_ids, ctx: dict) -> None:
        if self._shadow_backlog >= SHADOW_BACKLOG:
            self._count_shadow(challenger.ref.version, "dropped")
            return
        self._shadow_backlog += 1

        def work() -> None:
            try:
                self._timed(challenger, fn, top_ids, ctx, ro.CHALLENGER, "shadow")
                self._count_shadow(challenger.ref.version, "ok")
            except Exception:  # noqa: BLE001 - recorded by _timed; the user never waits for it
                self._count_shadow(challenger.ref.version, "error")
            finally:
                self._shadow_backlog -= 1

        self._shadow.submit(work)

    def _count_shadow(self, version: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.shadow.labels(self.domain, version, outcome).inc()

    def _record(self, ctx: dict, arm: str, role: str, version: str, ms: float, error: str | None, items: list) -> None:
        state: ro.RolloutState | None = ctx["state"]
        if self.metrics is not None:
            self.metrics.observe(ctx["endpoint"], version, f"{arm}_shadow" if role == "shadow" else arm, ms, error)
        if state is None or state.routing_phase not in ro.ACTIVE:
            return  # the rollout log is only needed while a rollout runs; Prometheus has the rest
        record = {
            "ts": time.time(),
            "request_id": ctx["request_id"],
            "rollout_id": state.rollout_id,
            "phase": state.routing_phase,
            "step": state.step,
            "endpoint": ctx["endpoint"],
            "unit": ctx["unit"],
            "arm": arm,
            "role": role,
            "version": version,
            "latency_ms": round(ms, 3),
            "error": error,
            "items": [str(i) for i in items[:10]],
        }
        with self._log_lock:  # the answering and the shadow thread append to one file
            self.store.append_request(record)

    def close(self) -> None:
        self._shadow.shutdown(wait=True, cancel_futures=False)


def pseudonymous_user(raw_user_id: str, salt: str) -> str:
    """The pseudonym the training data uses for a raw user id (components.privacy, same salt)."""
    import pandas as pd

    from components.privacy import pseudonymize

    return str(pseudonymize(pd.Series([str(raw_user_id)]), salt).iloc[0])
