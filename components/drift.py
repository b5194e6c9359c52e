"""Drift checks: does recent traffic still look like the data the champion learned from?

Every check compares the traffic of a window with the champion's training data (the `reference`)
and, where a held-out sample of the training distribution is at hand (the valid split: queries no
model trained on, the purchase window after the valid cutoff), computes the same statistic for it:
that `baseline` is what an unseen but in-distribution sample shows, so a threshold bounds the
*excess* over it. Without it, checks such as "share of unseen items" would fire on perfectly normal
traffic (held-out search queries judge mostly products no training query judged).

    check                  statistic (value)                                              breached when
    query_length_psi       PSI of query length in tokens (1..10, 10+)                     value - baseline > t
    oov_rate               share of query tokens outside the training vocabulary          value - baseline > t
    query_embedding_mmd    permutation p-value of MMD^2 (RBF) between hashed query        p < alpha
                           embeddings, seeded samples of both sides
    unseen_users           share of requests by users absent from the training data       value - baseline > t
    unseen_items           share of interactions with items absent from the training data value - baseline > t
    popularity_psi         PSI over reference-popularity buckets of the seen items        value - baseline > t
    ctr / purchase_rate    per model version: requests with a click / a purchase          value < floor

Pure: no I/O, no clock; seeds are arguments. `decide_retrain` turns the checks and the new-feedback
count into the feedback loop's trigger decision.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.charter import DriftThresholds, MonitorPlan

# PSI on shares with this floor: an empty bin on one side gives a large but finite term.
PSI_FLOOR = 1e-4
MAX_LENGTH_BIN = 10
POPULARITY_BUCKETS = 10
EMBEDDING_DIM = 64
_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Sample:
    """One side of a comparison. queries / users: one per request (empty when the domain has none);
    items: one per interaction (a click or purchase; shown items when there is no feedback yet)."""

    queries: Sequence[str] = ()
    users: Sequence[str] = ()
    items: Sequence[str] = ()


@dataclass(frozen=True)
class Check:
    """One drift check. threshold None: reported only, never breached."""

    name: str
    value: float | None
    threshold: float | None
    breached: bool
    baseline: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """The feedback loop's verdict: start an incubation (`trigger`) and why (`reason`, one line)."""

    trigger: bool
    reason: str
    breaches: list[str] = field(default_factory=list)
    new_feedback: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- statistics --------------------------------------------------------------------------------------
def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric tokens (the monitor's, independent of any model's tokenizer)."""
    return _TOKEN.findall(str(text).lower())


def shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    return counts / total if total > 0 else np.full(len(counts), 1.0 / max(len(counts), 1))


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index sum((a - e) * ln(a / e)) of two count (or share) vectors over the same bins.

    Shares are floored at `floor` so an empty bin stays finite. 0 for identical distributions; the usual
    reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a major shift.
    """
    e = np.maximum(shares(expected), floor)
    a = np.maximum(shares(actual), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def length_counts(queries: Iterable[str], max_bin: int = MAX_LENGTH_BIN) -> np.ndarray:
    """Counts of queries by token length: bins 0..max_bin, the last holding every longer query."""
    lengths = np.minimum([len(tokenize(q)) for q in queries], max_bin)
    return np.bincount(np.asarray(lengths, dtype=int), minlength=max_bin + 1)[: max_bin + 1]


def vocabulary(texts: Iterable[str]) -> frozenset[str]:
    return frozenset(t for text in texts for t in tokenize(text))


def oov_rate(queries: Iterable[str], vocab: frozenset[str]) -> float:
    """Share of query tokens (all occurrences) not in `vocab`; 0 when there are no tokens."""
    tokens = [t for q in queries for t in tokenize(q)]
    return sum(t not in vocab for t in tokens) / len(tokens) if tokens else 0.0


def _stable_hash(text: str, seed: int) -> int:
    return zlib.crc32(text.encode(), seed & 0xFFFFFFFF)


def embed_queries(queries: Sequence[str], dim: int = EMBEDDING_DIM, seed: int = 0) -> np.ndarray:
    """Hashed bag of tokens and character trigrams, signed (feature hashing), L2-normalised: (n, dim) float.

    Model-free on purpose: the monitor judges whether traffic left the champion's training data, so its
    embedding must not move with the model, and it must cost microseconds per query (a day is 8.6M requests).
    Wording changes (new words, new spellings) move it; the same words in a new order barely do.
    """
    out = np.zeros((len(queries), dim))
    for i, q in enumerate(queries):
        tokens = tokenize(q)
        grams = list(tokens) + [f"#{t}#"[j : j + 3] for t in tokens for j in range(len(t))]
        for g in grams:
            h = _stable_hash(g, seed)
            out[i, h % dim] += 1.0 if (h >> 16) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 200, seed: int = 0) -> tuple[float, float]:
    """(MMD^2, permutation p-value) of two samples (n, d) and (m, d) under an RBF kernel.

    Biased V-statistic; bandwidth: the median pairwise distance of the pooled sample. The p-value is
    (1 + #permutations with MMD^2 >= observed) / (1 + permutations), valid in finite samples.
    """
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        return float("nan"), 1.0
    z = np.vstack([x, y])
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0.0)
    off = sq[np.triu_indices(n + m, 1)]
    bandwidth = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-sq / bandwidth)
    weights = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(weights @ k @ weights)
    rng = np.random.default_rng(seed)
    perm = np.stack([rng.permutation(weights) for _ in range(permutations)])
    null = ((perm @ k) * perm).sum(1)
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return observed, p_value


def unseen_share(ids: Sequence[str], known: Iterable[str]) -> float:
    """Share of `ids` (with repeats) not in `known`; 0 for no ids."""
    if len(ids) == 0:
        return 0.0
    known = set(known)
    return sum(i not in known for i in ids) / len(ids)


def popularity_buckets(reference_items: Sequence[str], n_buckets: int = POPULARITY_BUCKETS) -> dict[str, int]:
    """Item -> bucket 0..n_buckets-1 so each bucket holds about an equal share of reference interactions.

    Items sorted by reference count (descending, ties by id, so the assignment is deterministic); bucket 0
    is the head. Comparing shares over items directly would drown in sampling noise (tens of thousands of
    items, each seen a few times); over equal-mass buckets, an unchanged popularity curve reads ~0.
    """
    counts = Counter(reference_items)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(counts.values())
    out, before = {}, 0
    for item, c in ordered:
        out[item] = min(int(before * n_buckets / total), n_buckets - 1)
        before += c
    return out


def popularity_psi(
    reference_items: Sequence[str], items: Sequence[str], n_buckets: int = POPULARITY_BUCKETS
) -> float | None:
    """PSI of `items` over the reference-popularity buckets, seen items only (unseen ones are their own check).

    None when no item of `items` is in the reference.
    """
    buckets = popularity_buckets(reference_items, n_buckets)
    ref = np.bincount([buckets[i] for i in reference_items], minlength=n_buckets)
    seen = [buckets[i] for i in items if i in buckets]
    if not seen:
        return None
    return psi(ref, np.bincount(seen, minlength=n_buckets))


# --- online rates ------------------------------------------------------------------------------------
def online_rates(impressions: pd.DataFrame, feedback: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per model version: requests, ctr (share of requests with a click) and purchase_rate (with a purchase).

    impressions: one row per shown item, with request_id and model_version. feedback: request_id, event.
    A request counts once whatever its number of events (one observation per answered request).
    """
    if impressions.empty:
        return {}
    requests = impressions.drop_duplicates("request_id")[["request_id", "model_version"]]
    out: dict[str, dict[str, float]] = {}
    for event, name in (("click", "ctr"), ("purchase", "purchase_rate")):
        hit = set(feedback.loc[feedback["event"] == event, "request_id"]) if not feedback.empty else set()
        requests = requests.assign(**{name: requests["request_id"].isin(hit)})
    for version, part in requests.groupby("model_version", sort=True):
        out[str(version)] = {
            "requests": int(len(part)),
            "ctr": float(part["ctr"].mean()),
            "purchase_rate": float(part["purchase_rate"].mean()),
        }
    return out


# --- the checks --------------------------------------------------------------------------------------
def _excess(
    name: str, stat, reference: Sample, traffic: Sample, holdout: Sample | None, t: float, holdout_reference=None
) -> Check:
    value = stat(reference, traffic)
    if value is None:
        return Check(name, None, t, False, detail="not applicable: no data on one side")
    baseline = stat(holdout_reference or reference, holdout) if holdout is not None else None
    excess = value - (baseline or 0.0)
    return Check(name, float(value), t, bool(excess > t), None if baseline is None else float(baseline))


def _sample(values: Sequence[str], size: int, rng: np.random.Generator) -> list[str]:
    values = list(values)
    if len(values) <= size:
        return values
    return [values[i] for i in rng.choice(len(values), size=size, replace=False)]


def drift_checks(
    reference: Sample,
    traffic: Sample,
    thresholds: DriftThresholds,
    holdout: Sample | None = None,
    holdout_reference: Sample | None = None,
    extra_vocabulary: Iterable[str] = (),
    sample_requests: int = 400,
    permutations: int = 200,
    seed: int = 0,
) -> list[Check]:
    """The distribution checks of `traffic` against `reference` (see the module docstring).

    holdout / holdout_reference: the in-distribution sample whose statistics against `holdout_reference`
    (default `reference`) are each check's baseline; None: baseline 0.
    extra_vocabulary: texts whose tokens count as known besides the reference queries (catalog titles).
    Query checks are skipped when either side has no queries; user checks when traffic has no users.
    """
    checks: list[Check] = []
    t = thresholds
    if len(reference.queries) and len(traffic.queries):
        vocab = vocabulary(reference.queries) | vocabulary(extra_vocabulary)
        checks.append(
            _excess(
                "query_length_psi",
                lambda r, s: psi(length_counts(r.queries), length_counts(s.queries)) if len(s.queries) else None,
                reference,
                traffic,
                holdout,
                t.query_length_psi,
                holdout_reference,
            )
        )
        checks.append(
            _excess(
                "oov_rate",
                lambda r, s: oov_rate(s.queries, vocab) if len(s.queries) else None,
                reference,
                traffic,
                holdout,
                t.oov_rate,
                holdout_reference,
            )
        )
        rng = np.random.default_rng(seed)
        x = embed_queries(_sample(reference.queries, sample_requests, rng), seed=seed)
        y = embed_queries(_sample(traffic.queries, sample_requests, rng), seed=seed)
        mmd2, p = mmd_test(x, y, permutations, seed)
        checks.append(
            Check(
                "query_embedding_mmd",
                p,
                t.embedding_alpha,
                bool(p < t.embedding_alpha),
                detail=f"MMD^2 {mmd2:.4g} on {len(x)} vs {len(y)} hashed query embeddings; value is the p-value",
            )
        )
    if len(traffic.users):
        checks.append(
            _excess(
                "unseen_users",
                lambda r, s: unseen_share(s.users, r.users) if len(s.users) else None,
                reference,
                traffic,
                holdout,
                t.unseen_users,
                holdout_reference,
            )
        )
    if len(reference.items) and len(traffic.items):
        checks.append(
            _excess(
                "unseen_items",
                lambda r, s: unseen_share(s.items, r.items) if len(s.items) else None,
                reference,
                traffic,
                holdout,
                t.unseen_items,
                holdout_reference,
            )
        )
        checks.append(
            _excess(
                "popularity_psi",
                lambda r, s: popularity_psi(r.items, s.items) if len(s.items) else None,
                reference,
                traffic,
                holdout,
                t.popularity_psi,
                holdout_reference,
            )
        )
    return checks


def rate_checks(rates: dict[str, dict[str, float]], thresholds: DriftThresholds, min_requests: int) -> list[Check]:
    """ctr and purchase_rate per model version; a version with fewer than `min_requests` requests is reported,
    never breached (its rate is noise)."""
    checks = []
    for version, r in sorted(rates.items()):
        enough = r["requests"] >= min_requests
        for metric, floor in (("ctr", thresholds.min_ctr), ("purchase_rate", thresholds.min_purchase_rate)):
            checks.append(
                Check(
                    f"{metric}[v{version}]",
                    r[metric],
                    floor,
                    bool(enough and floor is not None and r[metric] < floor),
                    detail=f"{int(r['requests'])} requests" + ("" if enough else f" (< {min_requests}: not judged)"),
                )
            )
    return checks


def decide_retrain(
    checks: Sequence[Check],
    requests: int,
    new_feedback: int,
    plan: MonitorPlan,
    hours_since_trigger: float | None = None,
) -> Decision:
    """Trigger an incubation on drift (any breached check, given `plan.min_requests` requests in the window) or
    on `plan.retrain_after_feedback` new feedback events; never within `plan.cooldown_hours` of the last trigger.
    """
    breaches = [c.name for c in checks if c.breached]
    if hours_since_trigger is not None and hours_since_trigger < plan.cooldown_hours:
        return Decision(
            False,
            f"cooling down: last trigger {hours_since_trigger:.1f} h ago (< {plan.cooldown_hours:g} h)",
            breaches,
            new_feedback,
        )
    reasons = []
    if breaches and requests >= plan.min_requests:
        reasons.append(f"drift: {', '.join(breaches)}")
    if plan.retrain_after_feedback and new_feedback >= plan.retrain_after_feedback:
        reasons.append(f"new feedback: {new_feedback} events (>= {plan.retrain_after_feedback})")
    if reasons:
        return Decision(True, "; ".join(reasons), breaches, new_feedback)
    if breaches:
        why = f"breaches {', '.join(breaches)} on only {requests} requests (< {plan.min_requests}): no verdict"
    else:
        why = f"no drift on {requests} requests"
    return Decision(False, f"{why}; {new_feedback} new feedback events", breaches, new_feedback)


def summarize(checks: Sequence[Check]) -> dict[str, Any]:
    """Small, JSON-safe: {name: value} of every check and the names of the breached ones."""
    return {
        "values": {c.name: (None if c.value is None or math.isnan(c.value) else c.value) for c in checks},
        "breached": [c.name for c in checks if c.breached],
    }
