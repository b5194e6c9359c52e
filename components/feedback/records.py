"""What serving captures: impressions (what was shown) and feedback events (what the shopper did with it).

Records are plain dicts (JSON-ready, what the store appends and returns); the TypedDicts below name
their fields, and the column constants are the only place the names are spelled out.

    Impression      one answered /search, /recommend or /similar request
      request_id    uuid4 hex (32 lower-case hex digits), made by the service, returned in the answer
      ts            server time of the answer, unix seconds
      domain        "search" | "recommend"
      endpoint      "search" | "recommend" | "similar"
      model_version the version that answered ("<champion>+<challenger>" for an interleaved list)
      arm           "champion" | "challenger" | "interleaved"
      unit          the rollout unit, pseudonymised (salted HMAC of a session id; the user pseudonym for
                    /recommend); None when the request was its own unit
      query         the search query as typed (e-mail addresses and phone numbers masked); None otherwise
      user          the pseudonymised user id (/recommend); None otherwise
      items         [{product_id, position (1-based), score, features: {name: value} or {}}], as shown

    FeedbackEvent   one click, add-to-cart or purchase on a shown item
      request_id, event ("click" | "add_to_cart" | "purchase"), product_id, position (1-based, as shown),
      ts (client time, unix seconds), received_ts (server time), unit (the impression's unit), domain
      (the impression's domain; filled by the server, like unit and received_ts)

validate_feedback judges one event against its impression (None: the request id is unknown) and
returns None or a Rejection(code, reason); TokenBucket limits the events one unit may send. Both are
pure: the clock is an argument.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple, TypedDict

from components.schema import PRODUCT_ID, QUERY

# --- column names ------------------------------------------------------------------------------------
REQUEST_ID = "request_id"
TS = "ts"
DOMAIN = "domain"
ENDPOINT = "endpoint"
MODEL_VERSION = "model_version"
ARM = "arm"
UNIT = "unit"
USER = "user"
ITEMS = "items"
POSITION = "position"
SCORE = "score"
FEATURES = "features"
EVENT = "event"
RECEIVED_TS = "received_ts"

# One row per shown item (FeedbackStore.impressions); features as a JSON object string.
IMPRESSION_COLUMNS = (REQUEST_ID, TS, DOMAIN, ENDPOINT, MODEL_VERSION, ARM, UNIT, QUERY, USER) + (
    PRODUCT_ID,
    POSITION,
    SCORE,
    FEATURES,
)
FEEDBACK_COLUMNS = (REQUEST_ID, DOMAIN, EVENT, PRODUCT_ID, POSITION, TS, RECEIVED_TS, UNIT)

# --- vocabularies --------------------------------------------------------------------------------------
DOMAINS = ("search", "recommend")
ENDPOINT_DOMAIN = {"search": "search", "recommend": "recommend", "similar": "recommend"}
FEEDBACK_EVENTS = ("click", "add_to_cart", "purchase")
REQUEST_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")

# A client clock may run this far ahead of the server's (or its event stamp this far before the answer
# the server stamped) before the event counts as impossible. NTP-synced phones sit within a second;
# a minute leaves room for an unsynced one without admitting events stamped minutes ahead.
CLOCK_SKEW_S = 60.0


class ShownItem(TypedDict):
    product_id: str
    position: int
    score: float | None
    features: dict[str, float]


class Impression(TypedDict):
    request_id: str
    ts: float
    domain: str
    endpoint: str
    model_version: str
    arm: str
    unit: str | None
    query: str | None
    user: str | None
    items: list[ShownItem]


class FeedbackEvent(TypedDict):
    request_id: str
    event: str
    product_id: str
    position: int
    ts: float
    received_ts: float
    unit: str | None
    domain: str


class Rejection(NamedTuple):
    """Why an event was refused: `code` (a fixed word, a metrics label) and `reason` (for the client)."""

    code: str
    reason: str


# Rejection codes, each a Prometheus label value.
MALFORMED = "malformed"
UNKNOWN_EVENT = "unknown_event"
UNKNOWN_REQUEST = "unknown_request"
NOT_SHOWN = "not_shown"
POSITION_MISMATCH = "position_mismatch"
FUTURE_TIMESTAMP = "future_timestamp"
BEFORE_IMPRESSION = "before_impression"
RATE_LIMITED = "rate_limited"
REJECTION_CODES = (
    MALFORMED,
    UNKNOWN_EVENT,
    UNKNOWN_REQUEST,
    NOT_SHOWN,
    POSITION_MISMATCH,
    FUTURE_TIMESTAMP,
    BEFORE_IMPRESSION,
    RATE_LIMITED,
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _feature_map(features: Any) -> bool:
    """{str: finite number}: checked with C-level maps, since the capture writer checks every item of every
    answer (a Python loop per value was its largest cost)."""
    if not isinstance(features, Mapping):
        return False
    values = list(features.values())
    try:
        finite = all(map(math.isfinite, values))
    except TypeError:  # a string, None, a list
        return False
    return finite and bool not in set(map(type, values)) and set(map(type, features)) <= {str}


def impression_problems(record: Mapping[str, Any]) -> list[str]:
    """What makes `record` not an Impression (missing or mistyped fields, positions not 1..n); [] if none."""
    problems = []
    if not isinstance(record.get(REQUEST_ID), str) or not REQUEST_ID_PATTERN.match(record[REQUEST_ID]):
        problems.append(f"{REQUEST_ID} must be 32 lower-case hex digits, got {record.get(REQUEST_ID)!r}")
    if not _is_number(record.get(TS)):
        problems.append(f"{TS} must be a finite number of unix seconds, got {record.get(TS)!r}")
    if record.get(DOMAIN) not in DOMAINS:
        problems.append(f"{DOMAIN} must be one of {DOMAINS}, got {record.get(DOMAIN)!r}")
    elif ENDPOINT_DOMAIN.get(record.get(ENDPOINT)) != record[DOMAIN]:
        problems.append(f"{ENDPOINT} {record.get(ENDPOINT)!r} does not belong to domain {record[DOMAIN]!r}")
    for name in (MODEL_VERSION, ARM):
        if not isinstance(record.get(name), str) or not record[name]:
            problems.append(f"{name} must be a non-empty string, got {record.get(name)!r}")
    for name in (UNIT, QUERY, USER):
        if record.get(name) is not None and not isinstance(record[name], str):
            problems.append(f"{name} must be a string or None, got {type(record[name]).__name__}")
    items = record.get(ITEMS)
    if not isinstance(items, list):
        return [*problems, f"{ITEMS} must be a list, got {type(items).__name__}"]
    for i, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            problems.append(f"item {i} is not an object")
            continue
        if not isinstance(item.get(PRODUCT_ID), str) or not item[PRODUCT_ID]:
            problems.append(f"item {i}: {PRODUCT_ID} must be a non-empty string")
        if item.get(POSITION) != i or isinstance(item.get(POSITION), bool):
            got = item.get(POSITION)
            problems.append(f"item {i}: {POSITION} must be {i} (1-based, in the order shown), got {got!r}")
        if item.get(SCORE) is not None and not isinstance(item[SCORE], (int, float)):
            problems.append(f"item {i}: {SCORE} must be a number or None")
        if not _feature_map(item.get(FEATURES, {})):
            problems.append(f"item {i}: {FEATURES} must map names to finite numbers")
    return problems


def feedback_shape_problem(event: Mapping[str, Any]) -> Rejection | None:
    """The event's own fields (types, vocabulary), before any impression is looked at."""
    if not isinstance(event.get(REQUEST_ID), str) or not REQUEST_ID_PATTERN.match(event[REQUEST_ID]):
        return Rejection(MALFORMED, f"{REQUEST_ID} must be the 32 hex digits an answer returned")
    if event.get(EVENT) not in FEEDBACK_EVENTS:
        known = ", ".join(FEEDBACK_EVENTS)
        return Rejection(UNKNOWN_EVENT, f"{EVENT} must be one of {known}, got {event.get(EVENT)!r}")
    if not isinstance(event.get(PRODUCT_ID), str) or not event[PRODUCT_ID]:
        return Rejection(MALFORMED, f"{PRODUCT_ID} must be a non-empty string")
    position = event.get(POSITION)
    if not isinstance(position, int) or isinstance(position, bool) or position < 1:
        return Rejection(MALFORMED, f"{POSITION} must be an integer >= 1 (1-based), got {position!r}")
    if not _is_number(event.get(TS)) or event[TS] < 0:
        return Rejection(MALFORMED, f"{TS} must be unix seconds (a finite number >= 0), got {event.get(TS)!r}")
    return None


def validate_feedback(
    event: Mapping[str, Any], impression: Mapping[str, Any] | None, now: float, skew_s: float = CLOCK_SKEW_S
) -> Rejection | None:
    """None if `event` may be stored, else why not.

    impression: the Impression its request_id names (None: no such request was answered, or it is no
    longer kept). now: the server's clock, unix seconds. An event stamped more than skew_s after `now`
    is from the future; one stamped more than skew_s before the answer happened before it was shown.
    The product must have been shown in that answer, at the position the event names.
    """
    problem = feedback_shape_problem(event)
    if problem is not None:
        return problem
    if impression is None:
        return Rejection(UNKNOWN_REQUEST, f"unknown {REQUEST_ID} {event[REQUEST_ID]}: no answer with this id is kept")
    if event[TS] > now + skew_s:
        return Rejection(
            FUTURE_TIMESTAMP,
            f"{TS} {event[TS]:.3f} is {event[TS] - now:.1f} s in the future (clock skew allowed: {skew_s:g} s)",
        )
    if event[TS] < impression[TS] - skew_s:
        return Rejection(
            BEFORE_IMPRESSION,
            f"{TS} {event[TS]:.3f} is {impression[TS] - event[TS]:.1f} s before the answer was shown "
            f"(clock skew allowed: {skew_s:g} s)",
        )
    shown = {item[PRODUCT_ID]: item[POSITION] for item in impression[ITEMS]}
    product = event[PRODUCT_ID]
    if product not in shown:
        return Rejection(NOT_SHOWN, f"{PRODUCT_ID} {product!r} was not shown in answer {event[REQUEST_ID]}")
    if shown[product] != event[POSITION]:
        return Rejection(
            POSITION_MISMATCH,
            f"{PRODUCT_ID} {product!r} was shown at {POSITION} {shown[product]}, not {event[POSITION]}",
        )
    return None


def feedback_record(event: Mapping[str, Any], impression: Mapping[str, Any], received_ts: float) -> FeedbackEvent:
    """The stored form of a valid event: the client's fields plus the server's unit, domain and time."""
    return FeedbackEvent(
        request_id=event[REQUEST_ID],
        event=event[EVENT],
        product_id=event[PRODUCT_ID],
        position=int(event[POSITION]),
        ts=float(event[TS]),
        received_ts=float(received_ts),
        unit=impression.get(UNIT),
        domain=impression[DOMAIN],
    )


def rate_key(impression: Mapping[str, Any]) -> str:
    """Whose budget an event spends: the impression's unit, or its request when it was its own unit."""
    return impression.get(UNIT) or f"request:{impression[REQUEST_ID]}"


class TokenBucket:
    """Per-key token buckets: `rate` tokens a second up to `burst`; the clock is passed in (seconds).

    At most `max_keys` buckets are kept, the least recently used forgotten first: a key idle for
    burst / rate seconds has a full bucket anyway, so forgetting it changes nothing for it.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst, self.max_keys = float(rate), float(burst), max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def tokens(self, key: str, now: float) -> float:
        """Tokens `key` holds at `now` (a new key holds `burst`)."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)

    def take(self, demand: Mapping[str, int], now: float) -> list[str]:
        """Spend demand[key] tokens of each key, all or none: [] when spent, else the keys short of tokens."""
        short = [key for key, n in demand.items() if self.tokens(key, now) < n]
        if short:
            return short
        for key, n in demand.items():
            self._buckets[key] = (self.tokens(key, now) - n, now)
            self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return []
