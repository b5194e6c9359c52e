"""What the service does between HTTP and the models: load versions, route by rollout state, log, measure.

Kept apart from the BentoML class (services/service.py) so the in-process benchmark and the tests call
exactly the code the endpoint calls.

Where models come from (per domain, first that applies):
  1. the rollout state file <root>/reports/rollout/<domain>/state.json (champion, challenger refs);
  2. HATCHERY_<DOMAIN>_BUNDLE: a local bundle folder (tests, laptops), version "local";
  3. the registry: `models:/hatchery-<domain>@champion`, its `bundle` artifact downloaded once into
     <root>/serving_cache/<name>/<version>/.
A domain with none of these answers 503 with the reason; the others keep serving.

The state file is re-read when it changes (checked at most every STATE_POLL_S seconds): a new
version is loaded in a background thread while the current one keeps answering, then swapped in
one assignment, so no request fails during a switch.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import rollout as ro

log = logging.getLogger(__name__)

DOMAINS = ("search", "recommend")
REGISTERED = {"search": "hatchery-search", "recommend": "hatchery-recommend"}
STATE_POLL_S = 0.25
# Shadow scoring runs off the response path on one thread; past this backlog it is skipped (and
# counted), so a slow challenger can never slow the champion's answers.
SHADOW_BACKLOG = 64


class ModelUnavailable(RuntimeError):
    """No model for the domain (yet): the endpoint answers 503 with this message."""


def rollout_dir(root: Path, domain: str) -> Path:
    return Path(root) / "reports" / "rollout" / domain


def state_path(root: Path, domain: str) -> Path:
    return rollout_dir(root, domain) / "state.json"


def request_log_path(root: Path, domain: str) -> Path:
    return rollout_dir(root, domain) / "requests.jsonl"


def read_state(root: Path, domain: str) -> ro.RolloutState | None:
    path = state_path(root, domain)
    if not path.exists():
        return None
    return ro.RolloutState.from_dict(json.loads(path.read_text()))


# --- loading ---------------------------------------------------------------------------------------
def resolve_bundle(uri: str, root: Path) -> Path:
    """A local bundle folder for a ModelRef uri (a folder, or models:/<name>/<version> downloaded once)."""
    if not uri.startswith("models:/"):
        path = Path(uri)
        if not (path / "manifest.json").exists():
            raise ModelUnavailable(f"no bundle at {path} (manifest.json missing)")
        return path
    name, _, version = uri.removeprefix("models:/").partition("/")
    cache = Path(root) / "serving_cache" / name / version
    found = sorted(cache.rglob("manifest.json")) if cache.exists() else []
    if not found:
        import mlflow

        from pipelines.common import Paths, tracking_uri

        mlflow.set_tracking_uri(tracking_uri(Paths(root=Path(root))))
        tmp = cache.with_name(f".{version}.{uuid.uuid4().hex[:8]}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
        if not cache.exists():  # a concurrent download may have won; either copy is the same version
            tmp.rename(cache)
        found = sorted(cache.rglob("manifest.json"))
        if not found:
            raise ModelUnavailable(f"{uri} has no bundle (no manifest.json among its artifacts)")
    # The pyfunc keeps the bundle as artifacts/bundle/; the shallowest manifest is the bundle's own.
    return min(found, key=lambda p: len(p.parts)).parent


def default_model_loader(domain: str, bundle: Path):
    """The model helpers' public loaders: SearchModel / RecommendModel from a bundle folder."""
    if domain == "search":
        from pipelines.search_bundle import load_search_bundle

        return load_search_bundle(bundle)
    from pipelines.recommend_bundle import load_recommend_bundle

    return load_recommend_bundle(bundle)


def registry_champion(domain: str, root: Path) -> ro.ModelRef | None:
    """`champion` alias of the domain's registered model, or None (no registry, model or alias)."""
    try:
        from mlflow import MlflowClient

        from pipelines.common import Paths, tracking_uri

        uri = tracking_uri(Paths(root=Path(root)))
        v = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(REGISTERED[domain], "champion")
    except Exception as exc:  # noqa: BLE001 - any registry failure means "no champion from the registry"
        log.info("no registry champion for %s: %s", domain, exc)
        return None
    return ro.ModelRef(version=str(v.version), uri=f"models:/{REGISTERED[domain]}/{v.version}")


# --- per-domain routing ----------------------------------------------------------------------------
class QueryCache:
    """LRU of query-tower embeddings by cleaned query text, one per loaded model version.

    Shop traffic is head-heavy: the encoder (the bulk of a search's CPU time) runs once per distinct
    query. The cached vector is the encoder's own output, so scores are unchanged.
    """

    def __init__(self, capacity: int = 20_000) -> None:
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
    """Champion and challenger of one domain, routed by its rollout state; logs every scored request."""

    def __init__(self, domain: str, root: Path, loader=None, metrics=None, threads: int | None = None) -> None:
        self.domain = domain
        self.threads = threads
        self.root = Path(root)
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
        state = read_state(self.root, self.domain)
        if state is not None:
            self._state_mtime = state_path(self.root, self.domain).stat().st_mtime_ns
        champion = state.champion if state and state.champion else self._initial_champion()
        if champion is None:
            self.error = (
                f"no {self.domain} model: no rollout state, no HATCHERY_{self.domain.upper()}_BUNDLE "
                f"and no `champion` alias on {REGISTERED[self.domain]}"
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
        return registry_champion(self.domain, self.root)

    def _load(self, ref: ro.ModelRef, reuse: list[Loaded | None]) -> Loaded:
        for have in reuse:
            if have is not None and have.ref == ref:
                return have
        t0 = time.perf_counter()
        model = (self.loader or default_model_loader)(self.domain, resolve_bundle(ref.uri, self.root))
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
        path = state_path(self.root, self.domain)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._state_mtime or self._loading:
            return
        try:
            state = ro.RolloutState.from_dict(json.loads(path.read_text()))
        except (ValueError, OSError):  # a writer mid-rename is impossible (atomic), but be defensive
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
        line = json.dumps(
            {
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
        )
        path = request_log_path(self.root, self.domain)
        with self._log_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:  # O_APPEND: whole lines from several workers never interleave
                fh.write(line + "\n")

    def close(self) -> None:
        self._shadow.shutdown(wait=True, cancel_futures=False)


# --- Prometheus ------------------------------------------------------------------------------------
class Metrics:
    """Request counts and latency per endpoint, model version and rollout arm (prometheus_client)."""

    def __init__(self) -> None:
        # Imported here, not at module import: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker first.
        import prometheus_client as pc

        self.requests = _get_or_create(
            pc.Counter, "hatchery_requests", "Scored requests", ["endpoint", "model_version", "arm", "outcome"]
        )
        self.latency = _get_or_create(
            pc.Histogram,
            "hatchery_request_latency_seconds",
            "Model scoring time",
            ["endpoint", "model_version", "arm"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        self.shadow = _get_or_create(
            pc.Counter, "hatchery_shadow", "Shadow scorings of the challenger", ["domain", "model_version", "outcome"]
        )

    def observe(self, endpoint: str, version: str, arm: str, ms: float, error: str | None) -> None:
        self.requests.labels(endpoint, version, arm, "error" if error else "ok").inc()
        self.latency.labels(endpoint, version, arm).observe(ms / 1000.0)


def _get_or_create(kind, name: str, doc: str, labels: list[str], **kw):
    """A collector by name: a second service instance in one process (tests) reuses the first's."""
    import prometheus_client as pc

    try:
        return kind(name, doc, labels, **kw)
    except ValueError:  # already registered in this process
        for key in (name, f"{name}_total"):
            existing = pc.REGISTRY._names_to_collectors.get(key)
            if existing is not None:
                return existing
        raise


def pseudonymous_user(raw_user_id: str, salt: str) -> str:
    """The pseudonym the training data uses for a raw user id (components.privacy, same salt)."""
    import pandas as pd

    from components.privacy import pseudonymize

    return str(pseudonymize(pd.Series([str(raw_user_id)]), salt).iloc[0])


def settle_heap() -> None:
    """Collect, then move every live object out of the cyclic GC's reach (gc.freeze).

    A loaded search model holds ~0.5 M GC-tracked objects (catalog titles, per-product token sets);
    a full collection walks all of them and took 100-300 ms on these cores, a stall that lands on
    whichever request triggers it. Frozen objects are still freed by reference counting when a model
    is dropped; unfreezing first lets the collection reclaim cycles of the models a swap replaced.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def limit_threads(threads: int) -> None:
    """Cap the intra-op threads of torch and every OpenMP/BLAS pool (LightGBM, FAISS) loaded so far.

    Measured on the 2 shared cores: the query tower took 32 ms a query with 1 thread and 334 ms with
    2, and LightGBM 1.3 ms vs 13 ms, because OpenMP workers spin for cores other jobs hold. Requests
    run in parallel on BentoML's thread pool instead, one core each.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
