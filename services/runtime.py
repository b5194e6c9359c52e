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

A state file that does not parse (truncated, hand-edited) is not fatal: the domain serves the
champion it would serve with no state (2. or 3. above; at run time, every request goes to it),
logs an ERROR, shows `state_error` in /rollout_status and sets hatchery_state_corrupt{domain} to 1,
until a valid state is written (the file itself is left for the operator). A request-log line that
cannot be written (a full disk) is counted in hatchery_log_write_errors_total{domain}; the answer
goes out regardless.

Capture (services/capture.py): with a Capture given, every answer's impression (request id, version,
arm, unit, query or user, the shown ids with positions and scores, and for search the ranker's
feature values) is handed to its writer process after the answer is built; nothing on the request
path waits for the store.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from artifacts.bundles import load_bundle
from artifacts.files import stale_after_s, sweep_stale
from artifacts.paths import Paths
from artifacts.registry import CHAMPION, MODEL_NAMES, Registry, local_bundle
from artifacts.rollout_store import CorruptState, RolloutStore
from components import rollout as ro
from components.rollout.interleaving import CHALLENGER_TEAM, CHAMPION_TEAM
from services.settings import QUERY_CACHE_SIZE, SHADOW_BACKLOG, STATE_POLL_S, limit_threads, settle_heap

log = logging.getLogger(__name__)

TEAMS = (CHAMPION_TEAM, CHALLENGER_TEAM)
LOG_ERROR_EVERY_S = 60.0  # a full disk fails every request's log line: say so once a minute, count them all


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


def search_results(
    model, cache: QueryCache | None, query: str, k: int, explain: bool = False, features: bool = False
) -> list[dict]:
    """SearchModel's ranking of one query with a cached query embedding (explain: SearchModel.search itself).

    rank_queries is the batch path the offline evaluation scores with; the results are built exactly
    as SearchModel.search builds them. features: each result also carries the ranker's feature values
    (rank_queries' with_features, the same call) under capture.FEATURES_KEY, (names, values), for the
    impression log (taken out before answering).
    """
    q = model.clean_query(query)
    if explain or cache is None or not q:
        return model.search(query, k=k, explain=explain)
    emb = cache.get_or_compute(q, lambda: model.encode_queries([q])[0])
    rows = None
    if features and getattr(model, "ranks_with_features", False):
        idx, scores, rows = model.rank_queries([q], k=k, q_embs=emb[None, :], with_features=True)[0]
    else:
        idx, scores = model.rank_queries([q], k=k, q_embs=emb[None, :])[0]
    results = [
        {"product_id": str(model.product_ids[c]), "title": model.titles[c], "score": float(v)}
        for c, v in zip(idx.tolist(), scores.tolist(), strict=True)
    ]
    if rows is not None:
        from services.capture import FEATURES_KEY

        names = tuple(model.feature_names)
        # One C call for the whole matrix: a numpy row per result costs a call each, on the answering thread.
        for result, row in zip(results, rows.tolist(), strict=True):
            result[FEATURES_KEY] = (names, row)
    return results


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

    def __init__(
        self, domain: str, paths: Paths, loader=None, metrics=None, threads: int | None = None, capture=None
    ) -> None:
        self.domain = domain
        self.capture = capture  # services.capture.Capture: every answer's impression; None: not captured
        self.threads = threads
        self.paths = paths
        self.store = RolloutStore(paths, domain)
        self.loader = loader
        self.metrics = metrics
        self.state: ro.RolloutState | None = None
        self.champion: Loaded | None = None
        self.challenger: Loaded | None = None
        self.error: str | None = None
        self.state_error: str | None = None  # why the state file was not used (it does not parse)
        self._state_mtime: int | None = None
        self._log_errors, self._log_error_said = 0, 0.0
        self._last_poll = 0.0
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._loading = False
        self._shadow = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shadow-{domain}")
        self._shadow_backlog = 0
        if metrics is not None:  # exported as 0 from the start: an alert can tell "none" from "not reported"
            metrics.log_write_errors.labels(domain)

    # loading ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the champion (and challenger) now, blocking: called from the service's __init__."""
        sweep_stale(self.paths.serving_cache / MODEL_NAMES[self.domain], stale_after_s())  # failed downloads
        self._state_mtime = self.store.mtime_ns()
        try:
            state = self.store.read()
        except CorruptState as exc:  # serve what no state would serve; the file waits for the operator
            state = None
            self._state_unreadable(exc)
        else:
            self._state_readable()
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
        swapped = {id(m) for m in have if m is not None} != {id(m) for m in (champion, challenger) if m is not None}
        del have  # the models this swap dropped are garbage now: let settle_heap reclaim them
        if swapped:  # a change of routing alone (a canary step) keeps the same models: no full collection to stall on
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
        except CorruptState as exc:
            self._state_mtime = mtime  # not re-read until it changes: one ERROR, not one per poll
            self._state_unreadable(exc)
            state = None
        except OSError:  # a writer mid-rename is impossible (atomic), but be defensive
            return
        else:
            if state is None:  # removed since the stat
                return
            self._state_mtime = mtime
            self._state_readable()
        self._loading = True
        if self.champion is None and state is not None and state.champion is not None:  # what a 503 says meanwhile
            self.error = f"{self.domain} model v{state.champion.version} is loading; retry in a few seconds"

        def work() -> None:
            try:
                self._apply(state if state is not None else self._fallback_state())
            except Exception as exc:  # noqa: BLE001
                log.exception("could not apply the rollout state; keeping the current models")
                if self.champion is None:
                    self.error = f"{self.domain} model failed to load: {exc}"
            finally:
                self._loading = False

        if force:
            work()
        else:
            threading.Thread(target=work, name=f"reload-{self.domain}", daemon=True).start()

    def _fallback_state(self) -> ro.RolloutState:
        """No rollout: everything to the champion that serves with no state (else the one loaded now)."""
        champion = self._initial_champion() or (self.champion.ref if self.champion else None)
        if champion is None:
            raise ModelUnavailable(f"no {self.domain} champion to fall back to: {self.state_error}")
        return ro.RolloutState(domain=self.domain, phase="full", champion=champion)

    def _state_unreadable(self, exc: Exception) -> None:
        self.state_error = str(exc)
        log.error(
            "%s rollout state unreadable: %s. Serving the champion that serves with no rollout "
            "(HATCHERY_%s_BUNDLE, else the registry's `champion`) until a valid state is written; "
            "the file is left as it is for inspection",
            self.domain,
            exc,
            self.domain.upper(),
        )
        if self.metrics is not None:
            self.metrics.state_corrupt.labels(self.domain).set(1)

    def _state_readable(self) -> None:
        if self.state_error is not None:
            log.warning("%s rollout state readable again: routing by it", self.domain)
        self.state_error = None
        if self.metrics is not None:
            self.metrics.state_corrupt.labels(self.domain).set(0)

    @property
    def ready(self) -> bool:
        return self.champion is not None

    # serving ---------------------------------------------------------------------------------------
    def call(
        self, endpoint: str, unit: str | None, fn, top_ids, query: str | None = None, user: str | None = None
    ) -> dict[str, Any]:
        """Answer one request: route it, score with the arm's model, log; never fails for the challenger.

        unit: the sticky rollout unit (a user pseudonym, a session id), hashed with the rollout's
        secret salt; None: the request is its own unit (a random arm per request, never tied to the
        query or product, which would give the arms different mixes of them).
        fn(loaded) -> results, from loaded.model (and loaded.cache); top_ids(results) -> product ids best
        first (for the shadow agreement log and interleaving). A KeyError from fn is an unknown id: the
        client's mistake (404), logged as a client error, never as a model's error.
        query / user: what the impression records (user: a pseudonym, then also the unit); unit without
        user is a raw session id, pseudonymised by the capture writer.
        """
        self.poll_state()
        with self._lock:
            champion, challenger, state = self.champion, self.challenger, self.state
        if champion is None:
            raise ModelUnavailable(self.error or f"{self.domain} model is not loaded yet")
        request_id, ts = uuid.uuid4().hex, time.time()
        session = unit
        unit = unit or request_id
        arm, shadow = ro.route(state, unit) if (state and challenger) else (ro.CHAMPION, False)
        ctx = {"request_id": request_id, "endpoint": endpoint, "unit": unit, "state": state, "assigned": arm}
        if arm == ro.INTERLEAVED:
            answer = self._interleaved(champion, challenger, fn, top_ids, ctx)
            self._capture(answer, ts, endpoint, session, query, user)
            return answer
        answered, fallback = None, False
        if arm == ro.CHALLENGER:
            try:
                answered = self._timed(challenger, fn, top_ids, ctx, arm, "answer")
            except KeyError:  # an id the challenger does not know: the champion may; not a challenger error
                arm = ro.CHAMPION
            except Exception as exc:  # noqa: BLE001 - the champion answers instead: no request fails
                log.warning("challenger v%s failed on %s: %s", challenger.ref.version, endpoint, exc)
                arm, fallback = ro.CHAMPION, True
        if answered is None:
            answered = self._timed(champion, fn, top_ids, ctx, ro.CHAMPION, "answer")
        if shadow:
            self._submit_shadow(challenger, fn, top_ids, ctx)
        used = challenger if arm == ro.CHALLENGER else champion
        answer = self._answer(ctx, used.ref.version, arm, fallback, answered)
        self._capture(answer, ts, endpoint, session, query, user)
        return answer

    def _capture(
        self, answer: dict, ts: float, endpoint: str, session: str | None, query: str | None, user: str | None
    ) -> None:
        """Hand the answer's impression to the capture writer (and take the logged-only fields out of it)."""
        from services.capture import Pending, pending_items

        items = pending_items(answer["results"]) if isinstance(answer["results"], list) else ()
        if self.capture is None:
            return
        pending = Pending(
            request_id=answer["request_id"],
            ts=ts,
            domain=self.domain,
            endpoint=endpoint,
            model_version=answer["model_version"],
            arm=answer["arm"],
            session=session,
            user=user,
            query=query,
            items=items,
        )
        self.capture.submit_impression(pending)

    def _answer(self, ctx: dict, version: str, arm: str, fallback: bool, results) -> dict[str, Any]:
        state: ro.RolloutState | None = ctx["state"]
        return {
            "request_id": ctx["request_id"],
            "model_version": version,
            "arm": arm,
            "challenger_failed": fallback,  # the champion answered because the challenger raised
            "rollout_phase": state.routing_phase if state else "full",
            "rollout_id": state.rollout_id if state else "",
            "rollout_step": state.step if state else -1,
            "results": results,
        }

    def _interleaved(self, champion: Loaded, challenger: Loaded, fn, top_ids, ctx: dict) -> dict[str, Any]:
        """Both models answer; one team-draft list of the two (coins seeded by the request id) is shown."""
        t0 = time.perf_counter()
        mine = self._timed(champion, fn, top_ids, ctx, ro.CHAMPION, "interleave")
        try:
            theirs = self._timed(challenger, fn, top_ids, ctx, ro.CHALLENGER, "interleave")
        except Exception as exc:  # noqa: BLE001 - the champion's list answers; the session is not interleaved
            if not isinstance(exc, KeyError):
                log.warning("challenger v%s failed on %s: %s", challenger.ref.version, ctx["endpoint"], exc)
            return self._answer(ctx, champion.ref.version, ro.CHAMPION, not isinstance(exc, KeyError), mine)
        k = max(len(mine), len(theirs))
        coins = random.Random(int(ctx["request_id"][:16], 16))
        items, teams = ro.team_draft(top_ids(mine), top_ids(theirs), k, (coins.random() < 0.5 for _ in range(k)))
        by_team = {
            TEAMS[0]: dict(zip(top_ids(mine), mine, strict=True)),
            TEAMS[1]: dict(zip(top_ids(theirs), theirs, strict=True)),
        }
        results = [by_team[t][i] for i, t in zip(items, teams, strict=True)]
        version = f"{champion.ref.version}+{challenger.ref.version}"
        ms = (time.perf_counter() - t0) * 1000.0
        self._record(ctx, ro.INTERLEAVED, "answer", version, ms, None, items, teams=teams)
        return self._answer(ctx, version, ro.INTERLEAVED, False, results)

    def _timed(self, loaded: Loaded, fn, top_ids, ctx: dict, arm: str, role: str):
        t0 = time.perf_counter()
        error, client_error, results = None, None, None
        try:
            results = fn(loaded)
            return results
        except KeyError as exc:  # an unknown id: the client's mistake, not the model's
            client_error = f"unknown id {exc}"[:300]
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        finally:
            ms = (time.perf_counter() - t0) * 1000.0
            items = top_ids(results) if results is not None else []
            self._record(ctx, arm, role, loaded.ref.version, ms, error, items, client_error=client_error)

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

    def _record(
        self, ctx: dict, arm: str, role: str, version: str, ms: float, error: str | None, items: list, **extra
    ) -> None:
        """One line in the rollout's request log (and the Prometheus counters).

        error: the model failed (counts against its arm); extra: client_error (an unknown id, which
        counts against no one), teams (an interleaved answer: who placed each item).
        """
        state: ro.RolloutState | None = ctx["state"]
        if self.metrics is not None:
            label = f"{arm}_shadow" if role == "shadow" else arm
            self.metrics.observe(ctx["endpoint"], version, label, ms, error, bool(extra.get("client_error")))
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
            "assigned": ctx["assigned"],
            "arm": arm,
            "role": role,
            "version": version,
            "latency_ms": round(ms, 3),
            "error": error,
            "items": [str(i) for i in items[:10]],
            **{k: v for k, v in extra.items() if v is not None},
        }
        try:
            with self._log_lock:  # the answering and the shadow thread append to one file
                self.store.append_request(record)
        except Exception as exc:  # noqa: BLE001 - a full disk (OSError) or anything else: the answer goes out
            self._log_write_failed(exc)

    def _log_write_failed(self, exc: Exception) -> None:
        """Count a lost request-log line; log it at most once every LOG_ERROR_EVERY_S."""
        self._log_errors += 1
        if self.metrics is not None:
            self.metrics.log_write_errors.labels(self.domain).inc()
        now = time.monotonic()
        if self._log_errors == 1 or now - self._log_error_said >= LOG_ERROR_EVERY_S:
            self._log_error_said = now
            log.error(
                "%s request log not written (%d lines lost so far; answers are unaffected): %s: %s",
                self.domain,
                self._log_errors,
                type(exc).__name__,
                exc,
            )

    def close(self) -> None:
        self._shadow.shutdown(wait=True, cancel_futures=False)


def pseudonymous_user(raw_user_id: str, salt: str) -> str:
    """The pseudonym the training data uses for a raw user id (components.privacy, same salt)."""
    from components.privacy import pseudonym

    return pseudonym(raw_user_id, salt)
