"""The Hatchery BentoML service: search, recommendations and similar items from the registry's champions.

    bentoml serve services.service:Hatchery            # http://127.0.0.1:3000, Swagger UI at /
    curl -s localhost:3000/search -H 'content-type: application/json' -d '{"query": "cordless drill", "k": 5}'

Endpoints: POST /search, /recommend, /similar, /rollout_status; GET /livez, /readyz (ready once a
champion is loaded), /metrics (BentoML's plus hatchery_* per model version and rollout arm), /docs.json.
Bad input is a 4xx with the reason (pydantic: missing field, wrong type, k out of range, over-long
query; BodyGuard: malformed JSON, body over HATCHERY_MAX_BODY_BYTES), never a 500.
Process settings (threads, limits, poll intervals) are in services/settings.py, the Prometheus
collectors in services/metrics.py.

Every answer: {"request_id", "model_version", "arm" (champion | challenger), "challenger_failed" (the
champion answered because the challenger raised), "rollout_phase", "rollout_id", "rollout_step", "results"}.

Models are loaded in __init__ (services/runtime.py says from where); the scoring is the model helpers'
own `SearchModel.search` / `RecommendModel.recommend` / `.similar`, the code the offline evaluation runs.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from services import settings

MAX_QUERY_CHARS = 256  # SearchModel cuts at 256 too; longer input is refused rather than silently cut
MAX_ID_CHARS = 64
MAX_K = 100
API_PATHS = ("/search", "/recommend", "/similar", "/rollout_status")


class Request(BaseModel):
    # Unknown fields are refused: a typo ("kk": 5) must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class SearchRequest(Request):
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="free-text query")]
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K, description="number of results")] = 10
    explain: StrictBool = Field(False, description="add each result's top feature contributions")
    session_id: Annotated[str | None, Field(max_length=MAX_ID_CHARS, description="sticky rollout unit")] = None


class RecommendRequest(Request):
    user_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, description="raw shop user id")]
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 20
    exclude_purchased: StrictBool = False


class SimilarRequest(Request):
    product_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    session_id: Annotated[str | None, Field(max_length=MAX_ID_CHARS)] = None


class StatusRequest(Request):
    pass


class BodyGuard:
    """ASGI middleware: refuse oversized (413) and non-JSON-object (400) bodies before BentoML parses them.

    BentoML turns a JSON syntax error into a 500; this answers it as the client's fault, with the reason.
    """

    def __init__(self, app, max_body_bytes: int | None = None, paths: tuple[str, ...] = API_PATHS) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes or settings.max_body_bytes()
        self.paths = paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reject(
                send, 413, f"request body of {int(declared)} bytes exceeds the limit of {self.max_body_bytes}"
            )
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _reject(send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
                return
        try:
            parsed = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            await _reject(send, 400, f"request body is not valid JSON: {exc}")
            return
        if not isinstance(parsed, dict):
            await _reject(send, 400, f"request body must be a JSON object, got {type(parsed).__name__}")
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _reject(send, status: int, reason: str) -> None:
    payload = json.dumps({"error": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@bentoml.service(
    name="hatchery",
    # Localhost unless the operator says otherwise (`bentoml serve --host 0.0.0.0` or BENTOML_HOST).
    http={"host": "127.0.0.1", "port": 3000},
    traffic={"timeout": 30},
    workers=1,
    # Requests in parallel, one core each (HATCHERY_SERVING_THREADS caps each request's intra-op threads).
    threads=settings.request_threads(),
)
class Hatchery:
    """Search and recommendation champions (and a challenger during a rollout), one process."""

    def __init__(self) -> None:
        from artifacts.paths import DOMAINS, Paths, pseudonym_salt
        from services.metrics import Metrics
        from services.runtime import DomainRuntime

        paths = Paths()
        metrics = Metrics()
        # One intra-op thread per request (see settings.limit_threads for the measurement behind it).
        threads = settings.serving_threads()
        settings.limit_threads(threads)
        self.salt = pseudonym_salt()
        self.runtimes = {d: DomainRuntime(d, paths, metrics=metrics, threads=threads) for d in DOMAINS}
        for rt in self.runtimes.values():
            rt.start()

    def __is_ready__(self) -> bool:
        return any(rt.ready for rt in self.runtimes.values())

    @bentoml.api(input_spec=SearchRequest)
    def search(self, query: str, k: int = 10, explain: bool = False, session_id: str | None = None) -> dict[str, Any]:
        """Ranked products for a free-text query, with the model version and rollout arm that answered."""
        from services.runtime import search_results

        return self._call(
            "search", "search", session_id or query, lambda m: search_results(m.model, m.cache, query, k, explain), _ids
        )

    @bentoml.api(input_spec=RecommendRequest)
    def recommend(self, user_id: str, k: int = 20, exclude_purchased: bool = False) -> dict[str, Any]:
        """Top-k products for a user; an unknown user gets the model's documented fallback, not an error."""
        from services.runtime import pseudonymous_user

        pseudo = pseudonymous_user(user_id, self.salt)
        return self._call(
            "recommend",
            "recommend",
            pseudo,
            lambda m: normalize_items(m.model.recommend(pseudo, k=k, exclude_purchased=exclude_purchased)),
            _ids,
        )

    @bentoml.api(input_spec=SimilarRequest)
    def similar(self, product_id: str, k: int = 10, session_id: str | None = None) -> dict[str, Any]:
        """Products similar to a product (item-to-item, from the recommendation model's embeddings)."""
        return self._call(
            "recommend",
            "similar",
            session_id or product_id,
            lambda m: normalize_items(m.model.similar(product_id, k=k)),
            _ids,
        )

    @bentoml.api(input_spec=StatusRequest)
    def rollout_status(self) -> dict[str, Any]:
        """Per domain: loaded champion/challenger versions and the rollout phase this replica routes by."""
        out = {}
        for d, rt in self.runtimes.items():
            rt.poll_state(force=True)
            out[d] = {
                "ready": rt.ready,
                "error": rt.error,
                "champion": rt.champion.ref.version if rt.champion else None,
                "challenger": rt.challenger.ref.version if rt.challenger else None,
                "state": rt.state.to_dict() if rt.state else None,
            }
        return out

    def _call(self, domain: str, endpoint: str, unit: str, fn, top_ids) -> Any:
        from bentoml.exceptions import NotFound
        from starlette.responses import JSONResponse

        from services.runtime import ModelUnavailable

        try:
            return self.runtimes[domain].call(endpoint, unit, fn, top_ids)
        except ModelUnavailable as exc:
            # Returned, not raised: BentoML hides the message of any 5xx exception, and this one is the answer.
            return JSONResponse({"error": str(exc)}, status_code=503)
        except KeyError as exc:  # an unknown product id for /similar
            raise NotFound(f"unknown id {exc}") from exc

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        for rt in self.runtimes.values():
            rt.close()


def _ids(results: list[dict]) -> list[str]:
    return [str(r["product_id"]) for r in results]


def normalize_items(raw: Any) -> list[dict]:
    """The recommendation model's answer as [{product_id, score, ...}] whatever container it returns."""
    if isinstance(raw, dict):
        raw = raw.get("results", raw.get("items", []))
    if hasattr(raw, "to_dict") and hasattr(raw, "columns"):  # a DataFrame
        raw = raw.to_dict("records")
    out = []
    for r in raw:
        if isinstance(r, dict):
            out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()})
        elif isinstance(r, (tuple, list)):
            out.append({"product_id": str(r[0]), "score": float(r[1]) if len(r) > 1 else None})
        else:
            out.append({"product_id": str(r)})
    return out


Hatchery.add_asgi_middleware(BodyGuard)
