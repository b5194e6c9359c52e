"""Implicit judgments: position-debiased relevance estimated from served impressions and shopper feedback.

Inputs are the frames the feedback store returns (artifacts/feedback_store.py): impressions, one row
per shown item (request_id, query or user, product_id, 1-based position, ...), and feedback events
(request_id, event, product_id, position, ts). Outputs are canonical tables (components/schema.py):
search judgments (query_id, query, product_id, relevance on the configured judgment scale) with a
`confidence` per pair, and recommendation events (purchases / add-to-carts) with a `weight`.

Why a position-based click model (PBM) fitted by EM, rather than a cascade model or IPW:
- a click says "examined and attractive"; the rank decides the first. PBM writes
  P(click | query q, product d, position k) = theta_k * alpha_qd and fits both factors on the logs
  themselves (Chuklin, Markov & de Rijke, *Click Models for Web Search*, 2015, ch. 4; Wang et al.,
  WSDM 2018, for EM on personal-search logs). IPW needs the propensities theta_k from somewhere else
  (a randomisation experiment), and its per-pair estimates clicks / theta_k are unbounded and
  high-variance where theta_k is small; PBM's alpha is a probability and maps onto a grade directly.
- the cascade model assumes one click per list and that everything above a click was examined and
  rejected; shoppers compare several products and click more than one, which PBM allows (a
  cascade reading of a two-click list is inconsistent).
- the simulated shop (components/feedback/shop.py) and the replay's `pbm` click model examine rank r
  with 1 / r^eta, so on simulated traffic the estimator is well specified; on real traffic PBM is
  the standard first choice and the examination curve it estimates is reported for checking.
theta is identified when the same (query, product) is seen at more than one rank: model versions and
rollout arms rank differently, interleaving mixes lists, and the shop can swap adjacent results
(RandPair, Joachims et al. 2017). theta at position 1 is fixed to 1 (the top result is examined):
PBM only identifies theta * alpha, and this anchor makes alpha the click rate of an examined result.

alpha -> grade: the inverse of the replay's attractiveness map (components/rollout/clicks.py,
alpha = (2^g - 1) / 2^G with G the scale's top gain), so a grade that makes a simulated shopper click
with probability alpha is read back as that grade; clipped to the scale. Unclicked pairs get the
lowest grade. alpha is a MAP estimate with a Beta prior centred on 0 (`prior_strength` pseudo
examinations): few examinations cannot make a product look relevant.

Confidence per pair: n / (n + half_confidence), n the expected examinations (sum of theta at the
ranks the pair was shown), so 0 when never examined and 1/2 at `half_confidence` examinations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components import schema as s

# --- the feedback store's columns (components/feedback/records.py) -------------------------------------
from components.feedback.records import (
    EVENT,
    FEEDBACK_EVENTS,
    POSITION,
    REQUEST_ID,
    TS,
    USER,
)

CLICK, ADD_TO_CART, PURCHASE = FEEDBACK_EVENTS

# --- what this module adds to the canonical tables ----------------------------------------------------
CONFIDENCE = "confidence"  # 0..1, per judged pair
IMPRESSIONS = "impressions"
CLICKS = "clicks"
EXAMINATIONS = "examinations"  # expected examinations: sum of theta over the pair's impressions
WEIGHT = "weight"  # per recommendation event: how much it counts as a purchase

JUDGMENT_COLUMNS = (s.QUERY_ID, s.QUERY, s.PRODUCT_ID, s.RELEVANCE, CONFIDENCE, IMPRESSIONS, CLICKS, EXAMINATIONS)
EVENT_COLUMNS = (
    s.USER_ID,
    s.PRODUCT_ID,
    s.EVENT_TYPE,
    s.TIMESTAMP,
    s.QUANTITY,
    s.PRICE,
    s.SESSION_ID,
    WEIGHT,
)


@dataclass(frozen=True)
class PBMFit:
    """A fitted position-based model.

    examination: theta per position (index 0 = position 1, fixed at 1.0), NaN where never shown.
    pairs: one row per (query, product): attractiveness alpha in [0, 1], impressions, clicks, examinations.
    """

    examination: np.ndarray
    pairs: pd.DataFrame
    iterations: int


def clicked_impressions(impressions: pd.DataFrame, feedback: pd.DataFrame) -> pd.Series:
    """Per impression row, whether its (request, product) got any feedback event (bool, aligned).

    A purchase or add-to-cart counts as a click: a shopper buys what they opened. Events whose
    request id or product was never shown are ignored here (the store counts them as rejected).
    """
    if feedback.empty or impressions.empty:
        return pd.Series(False, index=impressions.index)
    events = feedback[feedback[EVENT].isin(FEEDBACK_EVENTS)]
    hit = set(zip(events[REQUEST_ID].astype(str), events[s.PRODUCT_ID].astype(str), strict=True))
    keys = zip(impressions[REQUEST_ID].astype(str), impressions[s.PRODUCT_ID].astype(str), strict=True)
    return pd.Series([k in hit for k in keys], index=impressions.index)


def fit_pbm(
    keys: Iterable,
    positions: Iterable[int],
    clicks: Iterable[bool],
    max_iter: int = 200,
    tol: float = 1e-7,
    prior_strength: float = 1.0,
) -> PBMFit:
    """EM for P(click) = theta[position] * alpha[key], theta[1] = 1.

    keys: one hashable per impression (e.g. (query, product)); positions: 1-based ranks; clicks: 0/1.
    prior_strength: pseudo-examinations of a Beta prior on alpha centred on 0 (MAP estimate).
    Returns the examination curve and one row per key (column `key`, alpha, impressions, clicks,
    examinations).
    """
    key_codes, uniques = pd.factorize(pd.Series(list(keys), dtype=object), sort=False)
    pos = np.asarray(list(positions), dtype=np.int64) - 1
    c = np.asarray(list(clicks), dtype=float)
    if not (len(key_codes) == len(pos) == len(c)):
        raise ValueError("keys, positions and clicks must have one entry per impression")
    if len(pos) and pos.min() < 0:
        raise ValueError("positions are 1-based")
    n_keys, n_pos = len(uniques), int(pos.max()) + 1 if len(pos) else 0
    shown_at = np.bincount(pos, minlength=n_pos).astype(float)
    shown = np.bincount(key_codes, minlength=n_keys).astype(float)
    clicked = np.bincount(key_codes, c, minlength=n_keys) > 0
    theta = np.where(np.arange(n_pos) == 0, 1.0, 0.5)
    # A pair never clicked has its maximum (and, under the prior, MAP) attractiveness at 0 whatever theta
    # is; EM would only creep there geometrically.
    alpha = np.where(clicked, 0.5, 0.0)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        t, a = theta[pos], alpha[key_codes]
        no_click = np.maximum(1.0 - t * a, 1e-12)
        # posteriors of "examined" and "attractive" given the click outcome
        p_exam = np.where(c > 0, 1.0, t * (1.0 - a) / no_click)
        p_attr = np.where(c > 0, 1.0, (1.0 - t) * a / no_click)
        new_theta = np.bincount(pos, p_exam, minlength=n_pos) / np.maximum(shown_at, 1.0)
        new_theta[0] = 1.0
        new_theta[shown_at == 0] = 0.5
        new_alpha = np.where(clicked, np.bincount(key_codes, p_attr, minlength=n_keys) / (shown + prior_strength), 0.0)
        delta = max(np.abs(new_theta - theta).max(initial=0.0), np.abs(new_alpha - alpha).max(initial=0.0))
        theta, alpha = new_theta, new_alpha
        if delta < tol:
            break
    theta_out = theta.copy()
    theta_out[shown_at == 0] = np.nan
    pairs = pd.DataFrame(
        {
            "key": list(uniques),
            "alpha": np.clip(alpha, 0.0, 1.0),
            IMPRESSIONS: shown.astype(np.int64),
            CLICKS: np.bincount(key_codes, c, minlength=n_keys).astype(np.int64),
            EXAMINATIONS: np.bincount(key_codes, theta[pos], minlength=n_keys),
        }
    )
    return PBMFit(examination=theta_out, pairs=pairs, iterations=it)


def grade_of_attractiveness(alpha, scale) -> np.ndarray:
    """Grades on `scale` (a RelevanceScale) of attractiveness values in [0, 1].

    The inverse of components.rollout.clicks.attractiveness: gain g = log2(1 + alpha * 2^G), G the
    scale's top gain, clipped to [0, G]; then the grade whose gain is g (linear or exponential gain).
    """
    top = float(scale.max_gain)
    gain = np.clip(np.log2(1.0 + np.asarray(alpha, dtype=float) * 2.0**top), 0.0, top)
    grade = scale.min + (gain if scale.gain == "linear" else np.log2(1.0 + gain))
    return np.clip(grade, scale.min, scale.max)


def search_judgments(
    impressions: pd.DataFrame,
    feedback: pd.DataFrame,
    scale,
    prior_strength: float = 1.0,
    half_confidence: float = 5.0,
    min_impressions: int = 1,
) -> tuple[pd.DataFrame, np.ndarray]:
    """(judgments, examination curve) from search impressions and their feedback.

    impressions: domain "search" rows with `query`, `product_id`, `position`, `request_id`.
    scale: the judgment scale (params.data.search.relevance). Returns the canonical judgments columns
    plus confidence, impressions, clicks and examinations (JUDGMENT_COLUMNS), one row per
    (normalised query, product) shown at least `min_impressions` times, sorted by query id and product.
    """
    rows = impressions.dropna(subset=[s.QUERY, s.PRODUCT_ID, POSITION])  # an answer with no results: no pair
    if rows.empty:
        return _empty(JUDGMENT_COLUMNS), np.empty(0)
    clicked = clicked_impressions(rows, feedback)
    queries = rows[s.QUERY].astype(str).map(s.normalize_query)
    keys = list(zip(queries, rows[s.PRODUCT_ID].astype(str), strict=True))
    fit = fit_pbm(keys, rows[POSITION].astype(int), clicked, prior_strength=prior_strength)
    pairs = fit.pairs[fit.pairs[IMPRESSIONS] >= min_impressions]
    query = pairs["key"].map(lambda k: k[0])
    out = pd.DataFrame(
        {
            s.QUERY_ID: query.map(s.query_id_of),
            s.QUERY: query,
            s.PRODUCT_ID: pairs["key"].map(lambda k: k[1]),
            s.RELEVANCE: grade_of_attractiveness(pairs["alpha"].to_numpy(), scale),
            CONFIDENCE: pairs[EXAMINATIONS] / (pairs[EXAMINATIONS] + half_confidence),
            IMPRESSIONS: pairs[IMPRESSIONS],
            CLICKS: pairs[CLICKS],
            EXAMINATIONS: pairs[EXAMINATIONS],
        }
    )
    return _typed(out.sort_values([s.QUERY_ID, s.PRODUCT_ID]).reset_index(drop=True)), fit.examination


def recommend_events(
    impressions: pd.DataFrame,
    feedback: pd.DataFrame,
    weights: Mapping[str, float],
    prices: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Feedback on recommendations as canonical events (EVENT_COLUMNS), one per (request, product, event).

    weights: event type -> weight (e.g. {"purchase": 1.0, "add_to_cart": 0.3}); types absent or with
    weight 0 are left out. The user is the impression's (pseudonymised) user; events whose request
    was not a recommendation shown to a known user, or whose product was not in that answer, are
    dropped. timestamp: the event's time (UTC, timezone-naive); quantity 1; price from `prices`
    (product -> unit price; NaN where unknown); session_id "feedback:<request_id>".
    """
    keep = {e for e, w in weights.items() if w > 0}
    if impressions.empty or feedback.empty or not keep:
        return _empty(EVENT_COLUMNS)
    shown = impressions.dropna(subset=[USER])[[REQUEST_ID, s.PRODUCT_ID, USER]].astype(str).drop_duplicates()
    ev = feedback[feedback[EVENT].isin(keep)].copy()
    ev[REQUEST_ID], ev[s.PRODUCT_ID] = ev[REQUEST_ID].astype(str), ev[s.PRODUCT_ID].astype(str)
    ev = ev.merge(shown, on=[REQUEST_ID, s.PRODUCT_ID], how="inner")
    ev = ev.drop_duplicates([REQUEST_ID, s.PRODUCT_ID, EVENT])
    prices = prices or {}
    out = pd.DataFrame(
        {
            s.USER_ID: ev[USER],
            s.PRODUCT_ID: ev[s.PRODUCT_ID],
            s.EVENT_TYPE: ev[EVENT].astype(str),
            s.TIMESTAMP: pd.to_datetime(ev[TS].astype(float), unit="s"),
            s.QUANTITY: 1.0,
            s.PRICE: ev[s.PRODUCT_ID].map(lambda p: prices.get(p, np.nan)).astype(float),
            s.SESSION_ID: "feedback:" + ev[REQUEST_ID],
            WEIGHT: ev[EVENT].map(lambda e: float(weights[e])).astype(float),
        }
    )
    return _typed(out.sort_values([s.TIMESTAMP, s.USER_ID, s.PRODUCT_ID], kind="stable").reset_index(drop=True))


# --- leakage guards ------------------------------------------------------------------------------------
def held_out_queries(queries_with_split: pd.DataFrame) -> set[str]:
    """Normalised texts of the queries the split put in valid or test (split.py's queries.parquet)."""
    held = queries_with_split[queries_with_split[s.SPLIT].astype(str) != "train"]
    return set(held[s.QUERY].astype(str).map(s.normalize_query))


def drop_held_out(
    judgments: pd.DataFrame, held_out: set[str], buckets: int, held_out_buckets: Iterable[int]
) -> pd.DataFrame:
    """Judgments of training queries only: a query in valid or test, or one whose md5 bucket
    (EVALUATION.md) is a valid or test bucket, is dropped, so feedback can never label a query the
    protocol evaluates on (nor one a later re-split would put there)."""
    from components.splits import query_bucket

    held_buckets = set(held_out_buckets)
    query = judgments[s.QUERY].astype(str).map(s.normalize_query)
    bucket = query.map(lambda q: query_bucket(q, buckets))
    return judgments[~query.isin(held_out) & ~bucket.isin(held_buckets)].reset_index(drop=True)


def events_before(events: pd.DataFrame, cutoff) -> pd.DataFrame:
    """Events strictly before `cutoff` (a datetime): nothing at or after a fold's cutoff trains it."""
    return events[events[s.TIMESTAMP] < pd.Timestamp(cutoff)].reset_index(drop=True)


# --- the training switch -------------------------------------------------------------------------------
def merge_judgments(
    human: pd.DataFrame, implicit: pd.DataFrame, weight: float, min_confidence: float = 0.0
) -> pd.DataFrame:
    """Human training judgments plus implicit ones: the frame train_ranker learns from.

    Where a pair has both, the grade moves from the human one towards the implicit one by
    weight * confidence (weight in [0, 1]; 0 keeps every human grade); a pair only feedback saw is
    added with its implicit grade. Implicit pairs below `min_confidence` are ignored. Columns: the
    human frame's (query_id, query, product_id, relevance), sorted by query id and product.
    """
    cols = [s.QUERY_ID, s.QUERY, s.PRODUCT_ID, s.RELEVANCE]
    imp = implicit[implicit[CONFIDENCE] >= min_confidence]
    if imp.empty or weight <= 0:
        return human[cols].reset_index(drop=True)
    imp = imp[[s.QUERY_ID, s.QUERY, s.PRODUCT_ID, s.RELEVANCE, CONFIDENCE]].rename(
        columns={s.RELEVANCE: "_implicit", s.QUERY: "_query"}
    )
    both = human[cols].merge(imp, on=[s.QUERY_ID, s.PRODUCT_ID], how="outer", indicator=True)
    lam = (weight * both[CONFIDENCE].fillna(0.0)).clip(0.0, 1.0)
    human_grade = both[s.RELEVANCE].astype(float)
    blended = (1.0 - lam) * human_grade + lam * both["_implicit"].astype(float)
    only = both["_merge"].astype(str)
    blended = np.where(only == "left_only", human_grade, blended)
    both[s.RELEVANCE] = np.where(only == "right_only", both["_implicit"], blended)
    both[s.QUERY] = both[s.QUERY].fillna(both["_query"])
    out = both[cols].sort_values([s.QUERY_ID, s.PRODUCT_ID]).reset_index(drop=True)
    out[s.RELEVANCE] = out[s.RELEVANCE].astype(float)
    return out


def training_events(events: pd.DataFrame, cutoff, event_types: Iterable[str]) -> pd.DataFrame:
    """Feedback events that train a recommendation fold: the chosen types, strictly before `cutoff`,
    as purchases (what the recommenders learn from) with quantity = weight. Canonical events columns."""
    ev = events_before(events[events[s.EVENT_TYPE].isin(set(event_types))], cutoff)
    ev = ev.assign(**{s.EVENT_TYPE: s.PURCHASE, s.QUANTITY: ev[WEIGHT].astype(float)})
    return ev[[c for c in EVENT_COLUMNS if c != WEIGHT]].reset_index(drop=True)


def _empty(columns: Iterable[str]) -> pd.DataFrame:
    return _typed(pd.DataFrame({c: pd.Series(dtype=object) for c in columns}))


_DTYPES = {
    s.QUERY_ID: "string",
    s.QUERY: "string",
    s.PRODUCT_ID: "string",
    s.USER_ID: "string",
    s.EVENT_TYPE: "string",
    s.SESSION_ID: "string",
    s.RELEVANCE: "float64",
    CONFIDENCE: "float64",
    EXAMINATIONS: "float64",
    IMPRESSIONS: "int64",
    CLICKS: "int64",
    s.QUANTITY: "float64",
    s.PRICE: "float64",
    WEIGHT: "float64",
    s.TIMESTAMP: "datetime64[ns]",
}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: t for c, t in _DTYPES.items() if c in frame.columns})
