"""The simulated shop: search and recommendation traffic with shopper feedback, and a controllable shift.

The replay (pipelines/replay.py) sends held-out requests to a live service and turns each answer into
one success bit for a rollout. The shop generates what a serving log holds instead: sessions of
search queries and recommendation visits drawn from a pool, each answer shown as a ranked list
(`rank`, any ranker: the live service, a bundle, BM25), and per shown item the shopper's clicks,
add-to-carts and purchases, as impression and feedback frames in the feedback store's columns
(artifacts/feedback_store.py), so implicit judgments, the drift monitor and tests read simulated and
real traffic alike.

Shoppers follow a position-based model: rank r is examined with probability 1 / r^eta (the replay's
`pbm` examination, components/rollout/simulate.py), an examined result is clicked with its
attractiveness (search: the replay's map from the graded judgment, components/rollout/clicks.py;
recommendation: `truth_attract` for an item the user goes on to buy, `other_attract` otherwise),
and a click becomes an add-to-cart with `cart_prob` and that a purchase with `purchase_prob`.
`swap_share` of the answers get one random adjacent pair swapped (RandPair, Joachims et al. 2017),
the small randomisation that lets a click model tell rank from relevance.

Shift: `shift` in [0, 1] moves the query pool towards the queries containing any of `shift_terms`
(a product family becomes popular; 0: the pool as given, 1: only those queries), and rewords each
query's words found in `reword` with probability `shift` (query wording changes). Recommendation
visits move `shift` of their attention to `shift_items` (they become as attractive as a future
purchase) and `new_user_share` of visits come from users the pool never saw.

Pure: seeds and times are arguments (unix seconds); `rank` is whatever the caller provides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components import schema as s
from components.feedback import implicit as im
from components.feedback import records as rec
from components.rollout.clicks import attractiveness
from components.rollout.simulate import examination

# rank(query or user, k) -> product ids, best first (optionally (ids, scores))
Ranker = Callable[[str, int], Sequence[str]]

IMPRESSION_COLUMNS = rec.IMPRESSION_COLUMNS
FEEDBACK_COLUMNS = rec.FEEDBACK_COLUMNS


def request_id(seed: int, domain: str, i: int) -> str:
    """A deterministic request id in the service's format (32 hex digits)."""
    import hashlib

    return hashlib.md5(f"shop:{seed}:{domain}:{i}".encode()).hexdigest()


@dataclass(frozen=True)
class Shopper:
    """How simulated shoppers behave (the defaults: the replay's pbm with eta 1)."""

    k: int = 10  # results shown per answer
    eta: float = 1.0  # examination of rank r: 1 / r^eta
    cart_prob: float = 0.3  # P(add to cart | click)
    purchase_prob: float = 0.5  # P(purchase | add to cart)
    truth_attract: float = 0.6  # recommendation: P(click | examined) of an item the user goes on to buy
    other_attract: float = 0.02  # ... of any other item
    swap_share: float = 0.0  # share of answers with one random adjacent pair swapped
    session_requests: float = 3.0  # mean requests per session (a unit), geometric
    model_version: str = "simulated"


@dataclass(frozen=True)
class Traffic:
    """Impressions (one row per shown item) and feedback events, in the feedback store's columns."""

    impressions: pd.DataFrame
    feedback: pd.DataFrame


def query_pool_weights(queries: Sequence[str], shift_terms: Sequence[str] = (), shift: float = 0.0) -> np.ndarray:
    """P(query) over `queries`: uniform, moved `shift` of the way to uniform over those containing a
    shift term (word match). No query matching: the uniform pool whatever the shift."""
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must lie in [0, 1], got {shift}")
    n = len(queries)
    base = np.full(n, 1.0 / n)
    terms = {t.lower() for t in shift_terms}
    hit = np.array([bool(terms & set(q.lower().split())) for q in queries], dtype=bool)
    if not hit.any() or shift == 0.0:
        return base
    family = hit / hit.sum()
    return (1.0 - shift) * base + shift * family


def reword_query(query: str, reword: Mapping[str, str], shift: float, rng: np.random.Generator) -> str:
    """Each word with a replacement in `reword` is replaced with probability `shift`."""
    if not reword or shift <= 0:
        return query
    words = [reword[w] if w in reword and rng.random() < shift else w for w in query.split()]
    return " ".join(words)


def _session_units(n: int, mean_requests: float, prefix: str, rng: np.random.Generator) -> list[str]:
    """A unit per request: sessions of geometric length (mean `mean_requests`), numbered in order."""
    units, session, left = [], -1, 0
    for _ in range(n):
        if left <= 0:
            session += 1
            left = int(rng.geometric(1.0 / max(mean_requests, 1.0)))
        units.append(f"{prefix}-{session}")
        left -= 1
    return units


def _swap(ids: list[str], share: float, rng: np.random.Generator) -> list[str]:
    if len(ids) >= 2 and share > 0 and rng.random() < share:
        i = int(rng.integers(len(ids) - 1))
        ids[i], ids[i + 1] = ids[i + 1], ids[i]
    return ids


def _shopper_events(attract: np.ndarray, shopper: Shopper, rng: np.random.Generator) -> list[tuple[int, str]]:
    """(0-based rank, event) per event of one answer, clicks independent per rank (PBM)."""
    exam = examination(len(attract), "pbm", shopper.eta)
    clicked = rng.random(len(attract)) < exam * attract
    out = []
    for r in np.flatnonzero(clicked):
        out.append((int(r), im.CLICK))
        if rng.random() < shopper.cart_prob:
            out.append((int(r), im.ADD_TO_CART))
            if rng.random() < shopper.purchase_prob:
                out.append((int(r), im.PURCHASE))
    return out


def _ranked(rank: Ranker, key: str, k: int) -> tuple[list[str], list[float]]:
    got = rank(key, k)
    if isinstance(got, tuple) and len(got) == 2:
        ids, scores = list(map(str, got[0]))[:k], [float(x) for x in got[1]][:k]
    else:
        ids = list(map(str, got))[:k]
        scores = [float(k - i) for i in range(len(ids))]
    return ids, scores


def _frames(imp_rows: list[tuple], fb_rows: list[tuple]) -> Traffic:
    impressions = pd.DataFrame(imp_rows, columns=list(IMPRESSION_COLUMNS))
    feedback = pd.DataFrame(fb_rows, columns=list(FEEDBACK_COLUMNS))
    impressions[im.POSITION] = impressions[im.POSITION].astype("int64")
    feedback[im.POSITION] = feedback[im.POSITION].astype("int64")
    return Traffic(impressions, feedback)


def search_traffic(
    judgments: pd.DataFrame,
    rank: Ranker,
    n: int,
    seed: int,
    start_ts: float,
    end_ts: float,
    scale,
    shopper: Shopper = Shopper(),  # noqa: B008 (frozen)
    shift_terms: Sequence[str] = (),
    shift: float = 0.0,
    reword: Mapping[str, str] | None = None,
) -> Traffic:
    """`n` search requests over [start_ts, end_ts), queries drawn from the judged pool.

    judgments: query, product_id, relevance (the graded judgments the shoppers act on: pass the
    train split for training data, never valid or test). scale: the judgment scale
    (params.data.search.relevance). A reworded query keeps its original judgments as the shopper's
    intent. Deterministic given `seed`.
    """
    rng = np.random.default_rng(seed)
    pool: dict[str, dict[str, float]] = {}
    for q, g in judgments.groupby(judgments[s.QUERY].astype(str).map(s.normalize_query), sort=True):
        pool[q] = dict(zip(g[s.PRODUCT_ID].astype(str), scale.gain_of(g[s.RELEVANCE].astype(float)), strict=True))
    if not pool:
        raise ValueError("no judged queries to draw search traffic from")
    queries = list(pool)
    weights = query_pool_weights(queries, shift_terms, shift)
    times = np.sort(rng.uniform(start_ts, end_ts, n))
    units = _session_units(n, shopper.session_requests, "search", rng)
    drawn = rng.choice(len(queries), size=n, p=weights)
    imp_rows, fb_rows = [], []
    for i in range(n):
        intent = queries[int(drawn[i])]
        query = reword_query(intent, reword or {}, shift, rng)
        ids, scores = _ranked(rank, query, shopper.k)
        ids = _swap(ids, shopper.swap_share, rng)
        rid = request_id(seed, "search", i)
        gains = pool[intent]
        attract = np.array([attractiveness(gains.get(p, 0.0), scale.max_gain) for p in ids])
        for r, (p, sc) in enumerate(zip(ids, scores, strict=False)):
            imp_rows.append((rid, float(times[i]), "search", "search", shopper.model_version, "champion",
                             units[i], query, None, p, r + 1, sc, "{}"))  # fmt: skip
        for j, (r, ev) in enumerate(_shopper_events(attract, shopper, rng)):
            ts = float(times[i]) + 1.0 + r + j
            fb_rows.append((rid, "search", ev, ids[r], r + 1, ts, ts, units[i]))
    return _frames(imp_rows, fb_rows)


def recommend_traffic(
    truths: Mapping[str, set[str]],
    rank: Ranker,
    n: int,
    seed: int,
    start_ts: float,
    end_ts: float,
    shopper: Shopper = Shopper(k=20),  # noqa: B008 (frozen)
    shift_items: Sequence[str] = (),
    shift: float = 0.0,
    new_user_share: float = 0.0,
) -> Traffic:
    """`n` recommendation visits over [start_ts, end_ts) by users drawn from `truths`.

    truths: user -> the items that user goes on to buy (the shopper's intent; pass items bought
    inside the training period only). An item in `shift_items` is as attractive as a future purchase
    for `shift` of the visits. `new_user_share` of visits come from users outside the pool (empty
    intent). Deterministic given `seed`.
    """
    if not 0.0 <= shift <= 1.0 or not 0.0 <= new_user_share <= 1.0:
        raise ValueError("shift and new_user_share must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    users = sorted(truths)
    if not users:
        raise ValueError("no users to draw recommendation visits from")
    family = set(map(str, shift_items))
    times = np.sort(rng.uniform(start_ts, end_ts, n))
    imp_rows, fb_rows = [], []
    for i in range(n):
        if rng.random() < new_user_share:
            user, intent = f"new-{seed}-{int(rng.integers(1 << 30))}", set()
        else:
            user = users[int(rng.integers(len(users)))]
            intent = set(truths[user])
        if family and rng.random() < shift:
            intent = intent | family
        ids, scores = _ranked(rank, user, shopper.k)
        ids = _swap(ids, shopper.swap_share, rng)
        rid = request_id(seed, "recommend", i)
        attract = np.array([shopper.truth_attract if p in intent else shopper.other_attract for p in ids])
        for r, (p, sc) in enumerate(zip(ids, scores, strict=False)):
            imp_rows.append((rid, float(times[i]), "recommend", "recommend", shopper.model_version, "champion",
                             user, None, user, p, r + 1, sc, "{}"))  # fmt: skip
        for j, (r, ev) in enumerate(_shopper_events(attract, shopper, rng)):
            ts = float(times[i]) + 1.0 + r + j
            fb_rows.append((rid, "recommend", ev, ids[r], r + 1, ts, ts, user))
    return _frames(imp_rows, fb_rows)


def to_records(traffic: Traffic) -> tuple[list[dict], list[dict]]:
    """(Impression records, FeedbackEvent records) of the traffic: what FeedbackStore.append_many takes."""
    imps: dict[str, dict] = {}
    cols = [rec.REQUEST_ID, rec.TS, rec.DOMAIN, rec.ENDPOINT, rec.MODEL_VERSION, rec.ARM, rec.UNIT, s.QUERY, rec.USER]
    frame = traffic.impressions
    for row in zip(*(frame[c].tolist() for c in [*cols, s.PRODUCT_ID, rec.POSITION, rec.SCORE]), strict=True):
        head = imps.get(row[0])
        if head is None:
            head = imps[row[0]] = {**dict(zip(cols, row[:9], strict=True)), rec.ITEMS: []}
            head[rec.TS] = float(head[rec.TS])
        head[rec.ITEMS].append(
            {s.PRODUCT_ID: str(row[9]), rec.POSITION: int(row[10]), rec.SCORE: float(row[11]), rec.FEATURES: {}}
        )
    events = traffic.feedback.to_dict("records")
    for ev in events:
        ev[rec.POSITION], ev[rec.TS], ev[rec.RECEIVED_TS] = (
            int(ev[rec.POSITION]),
            float(ev[rec.TS]),
            float(ev[rec.RECEIVED_TS]),
        )
    return list(imps.values()), events
