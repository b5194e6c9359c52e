"""The Hatchery BentoML service: search, recommendations and similar items from the registry's champions.

    bentoml serve services.service:Hatchery            # http://127.0.0.1:3000, Swagger UI at /
    curl -s localhost:3000/search -H 'content-type: application/json' -d '{"query": "cordless drill", "k": 5}'

Endpoints: POST /search, /recommend, /similar, /rollout_status, /feedback; GET /livez, /readyz (ready once a
champion is loaded), /metrics (BentoML's plus hatchery_* per model version and rollout arm), /docs.json;
/console/: the decision console (services/console/: localhost only, read-only without HATCHERY_CONSOLE_TOKEN).
Bad input is a 4xx with the reason (pydantic: missing field, wrong type, k out of range, over-long
query, unknown field; BodyGuard: a body over HATCHERY_MAX_BODY_BYTES (413), a Content-Type other than
application/json (415), bytes that are not UTF-8, malformed JSON, deep nesting, a repeated key, an
out-of-range number (400)), never a 500. A rollout state file that does not parse shows as
`state_error` in /rollout_status (and hatchery_state_corrupt in /metrics) while the champion serves.
Process settings (threads, limits, poll intervals) are in services/settings.py, the Prometheus
collectors in services/metrics.py.

Every answer: {"request_id", "model_version", "arm" (champion | challenger | interleaved: one team-draft
list of both, model_version "<champion>+<challenger>"), "challenger_failed" (the champion answered
because the challenger raised), "rollout_phase", "rollout_id", "rollout_step", "results"}.

Every answer's impression (request id, version, arm, pseudonymised unit, query or user, the shown ids
with positions, scores and the ranker's features) goes to the feedback store from a background writer
(services/capture.py): a slow or failing store never delays or fails an answer (a full queue drops
and counts). POST /feedback takes one event ({"request_id", "event": click | add_to_cart | purchase,
"product_id", "position" (1-based, as shown), "ts" (unix seconds)}) or {"events": [up to 100]}:
202 {"accepted": n}; 400 malformed; 422 an event that does not match its answer (unknown request id,
product not shown there or at another position, a time in the future or before the answer), none of
the batch stored; 429 a unit over its budget; 503 the store unreachable or the queue full.

The rollout unit is the user (recommend: the salted pseudonym of user_id) or the `session_id`, hashed
with a secret the service never returns, so a client cannot choose its arm; a request without a
session id is its own unit. An unknown product id is a 404, the caller's mistake: it never counts as
a model's error.

Models are loaded in __init__ (services/runtime.py says from where); the scoring is the model helpers'
own `SearchModel.search` / `RecommendModel.recommend` / `.similar`, the code the offline evaluation runs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

import bentoml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from services import settings
from services.console import create_app as create_console
from services.console.docs import DocumentedService, swagger_app

MAX_QUERY_CHARS = 256  # SearchModel cuts at 256 too; longer input is refused rather than silently cut
MAX_ID_CHARS = 64
MAX_K = 100
MAX_JSON_INT = 2**53 - 1  # RFC 8259 section 6: the integers every JSON implementation agrees on


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


FeedbackKind = Literal["click", "add_to_cart", "purchase"]  # components.feedback.records.FEEDBACK_EVENTS
RequestId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="the answer's request_id")]
Position = Annotated[StrictInt, Field(ge=1, le=MAX_K, description="1-based position the product was shown at")]
# Unix seconds; the bound (year 2286) keeps the number a plain float; the future is refused against the clock.
Timestamp = Annotated[float, Field(ge=0, le=1e10, strict=True, description="when it happened, unix seconds")]


class FeedbackEventIn(Request):
    request_id: RequestId
    event: FeedbackKind
    product_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    position: Position
    ts: Timestamp


class FeedbackRequest(Request):
    """One event (its fields at the top level) or a batch ({"events": [...]}), not both."""

    request_id: RequestId | None = None
    event: FeedbackKind | None = None
    product_id: Annotated[str | None, Field(min_length=1, max_length=MAX_ID_CHARS)] = None
    position: Position | None = None
    ts: Timestamp | None = None
    events: Annotated[list[FeedbackEventIn] | None, Field(min_length=1, max_length=settings.MAX_FEEDBACK_EVENTS)] = None

    @model_validator(mode="after")
    def _one_event_or_a_batch(self) -> FeedbackRequest:
        single = {f: getattr(self, f) for f in ("request_id", "event", "product_id", "position", "ts")}
        if self.events is not None:
            if any(v is not None for v in single.values()):
                raise ValueError("send one event's fields or a list under `events`, not both")
        elif missing := [f for f, v in single.items() if v is None]:
            raise ValueError(f"missing field(s) {', '.join(missing)} (or send a list under `events`)")
        return self


# What BodyGuard validates each path's body against: the same models the endpoints declare (input_spec).
REQUEST_MODELS: dict[str, type[Request]] = {
    "/search": SearchRequest,
    "/recommend": RecommendRequest,
    "/similar": SimilarRequest,
    "/rollout_status": StatusRequest,
    "/feedback": FeedbackRequest,
}


class BodyError(ValueError):
    """A request body refused before BentoML sees it: `status` (4xx) and the reason, for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def check_content_type(value: bytes | None) -> None:
    """application/json, optionally with charset=utf-8; else 415 (a cross-site form or text/plain POST)."""
    media, _, params = (value or b"").decode("latin-1").partition(";")
    if media.strip().lower() != "application/json":
        got = media.strip() or "none"
        raise BodyError(415, f"Content-Type must be application/json, got {got}")
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BodyError(415, f"charset must be utf-8, got {val.strip()}")


def parse_body(body: bytes, max_depth: int | None = None) -> dict[str, Any]:
    """The JSON object a request body holds, checked as the models' parser never is; BodyError (400) if not.

    Refused, each with the reason: bytes that are not UTF-8; not JSON (including NaN/Infinity); nesting
    deeper than max_depth (measured before parsing: a few KiB of `[` made json.loads raise RecursionError,
    a 500); a key twice in one object (parsers disagree on which wins); an integer beyond +-(2**53 - 1) or
    a float that overflows (outside what every JSON parser represents exactly; 4,300+ digits made int()
    raise, a 500); anything but an object at the top. An empty body is {}. (A lone surrogate escape,
    "\\ud800", parses here; the request models refuse it as string_unicode.)
    """
    max_depth = settings.max_json_depth() if max_depth is None else max_depth
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"request body is not UTF-8: {exc}") from None
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b'""', body)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > max_depth:
        raise BodyError(400, f"request body nests {deepest} levels deep; the limit is {max_depth}")
    try:
        parsed = json.loads(
            text or "{}",
            object_pairs_hook=_unique_keys,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except BodyError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BodyError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BodyError(400, f"request body must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BodyError(400, f"request body repeats the key {key!r}")
        out[key] = value
    return out


def _bounded_int(literal: str) -> int:
    if len(literal) > 17 or abs(value := int(literal)) > MAX_JSON_INT:  # 17: 16 digits and a sign
        raise BodyError(400, f"number {literal[:20]}{'...' if len(literal) > 20 else ''} is out of range")
    return value


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise BodyError(400, f"number {literal[:20]} is out of range")
    return value


def _no_constant(name: str) -> None:
    raise BodyError(400, f"{name} is not JSON")


class BodyGuard:
    """ASGI middleware: refuse every body the endpoints must not see, before BentoML parses it.

    413 over max_body_bytes; 415 without Content-Type application/json (a cross-site form or text/plain
    POST, which a browser sends without asking); 400 for what parse_body refuses, and for a body the
    path's request model refuses (missing field, wrong type, out of range, unknown field). Each as
    {"error": reason, "detail": per-field reasons}, the shape the OpenAPI document declares for 400.
    BentoML answered a JSON syntax error, deep nesting or a huge integer with a 500.
    """

    def __init__(
        self, app, max_body_bytes: int | None = None, models: dict[str, type[BaseModel]] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes or settings.max_body_bytes()
        self.models = REQUEST_MODELS if models is None else models

    async def __call__(self, scope, receive, send) -> None:
        model = self.models.get(scope.get("path")) if scope["type"] == "http" else None
        if model is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reject(
                send, 413, f"request body of {int(declared)} bytes exceeds the limit of {self.max_body_bytes}"
            )
            return
        try:
            check_content_type(headers.get(b"content-type"))
        except BodyError as exc:
            await _reject(send, exc.status, exc.reason)
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
            model.model_validate(parse_body(body))
        except BodyError as exc:
            await _reject(send, exc.status, exc.reason)
            return
        except ValidationError as exc:
            # Answered here rather than by BentoML, whose 400 carries `detail` as a list where its own
            # OpenAPI document declares a string (the fuzz test's finding) and logs a traceback per request.
            await _reject(send, 400, f"{exc.error_count()} invalid field(s) in {model.__name__}", _detail(exc))
            return
        body = body if body.strip() else b"{}"
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _detail(exc: ValidationError) -> str:
    """pydantic's errors as one line: `k: Input should be greater than or equal to 1 [greater_than_equal]; ...`."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']} [{e['type']}]" for e in exc.errors(include_url=False)
    )


async def _reject(send, status: int, reason: str, detail: str | None = None) -> None:
    payload = json.dumps({"error": reason, **({"detail": detail} if detail else {})}).encode()
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
    # Hatchery's own OpenAPI title, version and description, not the framework's (services/console/docs.py).
    service_class=DocumentedService,
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
        metrics.watch_drift(paths.monitor())  # hatchery_drift_* from the drift monitor's latest reports
        # One intra-op thread per request (see settings.limit_threads for the measurement behind it).
        threads = settings.serving_threads()
        settings.limit_threads(threads)
        self.salt = pseudonym_salt()
        self.capture, self.intake = _capture(self.salt, metrics, paths)
        self.runtimes = {
            d: DomainRuntime(d, paths, metrics=metrics, threads=threads, capture=self.capture) for d in DOMAINS
        }
        for rt in self.runtimes.values():
            rt.start()

    def __is_ready__(self) -> bool:
        return any(rt.ready for rt in self.runtimes.values())

    @bentoml.api(input_spec=SearchRequest)
    def search(self, query: str, k: int = 10, explain: bool = False, session_id: str | None = None) -> dict[str, Any]:
        """Ranked products for a free-text query, with the model version and rollout arm that answered."""
        from services.runtime import search_results

        features = self.capture is not None  # the ranker's feature values, for the impression log only
        return self._call(
            "search",
            "search",
            session_id,
            lambda m: search_results(m.model, m.cache, query, k, explain, features),
            _ids,
            query=query,
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
            user=pseudo,
        )

    @bentoml.api(input_spec=SimilarRequest)
    def similar(self, product_id: str, k: int = 10, session_id: str | None = None) -> dict[str, Any]:
        """Products similar to a product (item-to-item, from the recommendation model's embeddings)."""
        return self._call(
            "recommend",
            "similar",
            session_id,
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
                "state_error": rt.state_error,  # the state file did not parse: the registry's champion serves
                "champion": rt.champion.ref.version if rt.champion else None,
                "challenger": rt.challenger.ref.version if rt.challenger else None,
                "state": rt.state.public_dict() if rt.state else None,
            }
        return out

    @bentoml.api(input_spec=FeedbackRequest)
    def feedback(
        self,
        request_id: str | None = None,
        event: str | None = None,
        product_id: str | None = None,
        position: int | None = None,
        ts: float | None = None,
        events: list[FeedbackEventIn] | None = None,
    ) -> dict[str, Any]:
        """Clicks, add-to-carts and purchases on an answer's products, against its request_id (see the module doc)."""
        from starlette.responses import JSONResponse

        if self.intake is None:
            return JSONResponse({"error": "feedback capture is off (HATCHERY_CAPTURE=0)"}, status_code=503)
        one = {"request_id": request_id, "event": event, "product_id": product_id, "position": position, "ts": ts}
        batch = [e.model_dump() if isinstance(e, BaseModel) else dict(e) for e in events] if events else [one]
        status, body = self.intake.receive(batch)
        return JSONResponse(body, status_code=status)

    def _call(
        self, domain: str, endpoint: str, unit: str | None, fn, top_ids, query: str | None = None, user=None
    ) -> Any:
        from starlette.responses import JSONResponse

        from services.runtime import ModelUnavailable

        # Both returned, not raised: BentoML hides a 5xx exception's message, and answers its NotFound as a
        # list, [{"error": ...}], where its own OpenAPI document declares an object (the fuzz test's finding).
        try:
            return self.runtimes[domain].call(endpoint, unit, fn, top_ids, query=query, user=user)
        except ModelUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        except KeyError as exc:  # an unknown product id for /similar: the caller's mistake
            return JSONResponse({"error": f"unknown id {exc}"}, status_code=404)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        for rt in self.runtimes.values():
            rt.close()
        if self.capture is not None:
            self.capture.close()


def _capture(salt: str, metrics, paths):
    """(Capture, FeedbackIntake) started on the feedback store (HATCHERY_STATE_URL or SQLite), or (None, None)
    with HATCHERY_CAPTURE=0. Nothing is opened here: the store connects on its first write."""
    if not settings.capture_enabled():
        return None, None
    from artifacts.feedback_store import FeedbackStore
    from components.feedback.records import TokenBucket
    from services.capture import Capture, FeedbackIntake

    capture = Capture(FeedbackStore(paths=paths), salt, metrics, queue_size=settings.capture_queue()).start()
    rate, burst = settings.feedback_rate()
    return capture, FeedbackIntake(capture, TokenBucket(rate, burst), metrics)


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
# The decision console at /console (localhost only, read-only without HATCHERY_CONSOLE_TOKEN), and the
# Swagger page at / without BentoML's external scripts and badges: services/console/.
Hatchery.mount_asgi_app(create_console(), path="/console", name="console")
Hatchery.mount_asgi_app(swagger_app(), path="/", name="swagger")
