"""Features of (query, candidate product) pairs for the search ranker, and the train-split priors.

Every feature is computed by these functions both when the ranker is trained and when the service
answers a query, so there is no train/serve skew. Product priors and query-expanded product text
come from TRAIN judgments only; for the ranker's own training rows they are computed out of fold
(from train queries the ranker does not learn on), so a row never sees its own label.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components import schema as s
from components.bm25 import tokenize
from components.config import RelevanceScale

# "Text" is the product text of search.text_fields (a titles-only catalog: the title, EVALUATION.md);
# the names keep "title" so bundles and explanations read the same whatever the catalog has.
FEATURE_NAMES: tuple[str, ...] = (
    "bm25",  # BM25 of the product text (EVALUATION.md's baseline score)
    "bm25_rel",  # bm25 / the query's best bm25 over the catalog (0..1)
    "bm25_expanded",  # BM25 over the text + train queries judged relevant for the product
    "bm25_expanded_rel",
    "dense",  # cosine of the fine-tuned query and product embeddings
    "dense_gap",  # dense - the query's best dense score over the catalog (<= 0, up to ANN error)
    "query_tokens",
    "title_tokens",  # tokens of the product text
    "overlap",  # share of query tokens found in the text (0..1)
    "all_tokens_match",  # 1 if every query token is in the text
    "last_token_match",  # the query's last token (usually the product type) is in the text
    "numeric_overlap",  # share of the query's number tokens in the text; NaN if it has none
    "prior_count",  # train judgments of the product (out of fold for ranker rows)
    "prior_mean_gain",  # mean gain (data.search.relevance) of those judgments; NaN if none
    "prior_max_gain",
    "price",  # product attribute where present, else NaN
    # Forgiving matches: shoppers misspell, cut words short and switch singular/plural.
    "stem_overlap",  # share of the query's stems (light suffix strip, `stem`) among the text's stems
    "prefix_overlap",  # share of query tokens whose first PREFIX letters begin a token of the text
    "bigram_overlap",  # share of the query's adjacent token pairs adjacent in the text; NaN: one token
    "first_token_match",  # the query's first token is in the text
    "last_stem_match",  # the query's last token (the product type) matches a text token's stem
    # Which words match: a rare word says more than a common one (idf of the text BM25).
    "idf_overlap",  # share of the query's idf mass whose tokens (or their stems) are in the text
    "compound_match",  # share of query tokens met by joining words: "sheet rock" / "sheetrock"
)
PREFIX = 4  # letters compared by prefix_overlap (tokens shorter than this compare whole)
TEXT_VIEWS_CACHED = 2**15  # product texts whose token views stay cached (~1.5 KB each)

# Every feature belongs to one group, named after where its signal comes from (its provenance). The
# ranker is trained on the groups search.ranker.feature_groups names; a model without
# "judgment_priors" never reads a judgment (components.search_model.SearchModel enforces it).
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    # the query and the catalog alone: what any shop has on day one
    "content": (
        "bm25",
        "bm25_rel",
        "dense",
        "dense_gap",
        "query_tokens",
        "title_tokens",
        "overlap",
        "all_tokens_match",
        "last_token_match",
        "numeric_overlap",
        "price",
        "stem_overlap",
        "prefix_overlap",
        "bigram_overlap",
        "first_token_match",
        "last_stem_match",
        "idf_overlap",
        "compound_match",
    ),
    # train-split relevance judgments: product priors and the judgment-expanded BM25 document. On
    # this data they also say which products sit in the judged pools (unjudged = gain 0), so their
    # gain is partly a property of the labels (metrics/search.json: hybrid_ranker vs content_ranker).
    "judgment_priors": ("bm25_expanded", "bm25_expanded_rel", "prior_count", "prior_mean_gain", "prior_max_gain"),
    # behavioural priors from serving logs (implicit judgments from feedback): declared, empty until
    # the feedback loop fills it.
    "log_priors": (),
}
FEATURE_PROVENANCE: dict[str, str] = {
    "content": "query text, product text and catalog attributes",
    "judgment_priors": "train-split relevance judgments (out of fold for the ranker's own rows)",
    "log_priors": "serving feedback logs (implicit judgments)",
}
JUDGMENT_FEATURES: frozenset[str] = frozenset(FEATURE_GROUPS["judgment_priors"])


def feature_names_of(groups: Sequence[str]) -> tuple[str, ...]:
    """The features of `groups`, in FEATURE_NAMES order (the bundle's column order). Unknown groups raise."""
    unknown = sorted(set(groups) - set(FEATURE_GROUPS))
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; known: {sorted(FEATURE_GROUPS)}")
    chosen = {f for g in groups for f in FEATURE_GROUPS[g]}
    return tuple(f for f in FEATURE_NAMES if f in chosen)


def group_of(feature: str) -> str:
    """The group a feature belongs to (KeyError for an unknown feature)."""
    for group, names in FEATURE_GROUPS.items():
        if feature in names:
            return group
    raise KeyError(feature)


def feature_provenance(features: Sequence[str]) -> dict[str, dict[str, str]]:
    """{feature: {"group", "provenance"}} for a report."""
    return {f: {"group": group_of(f), "provenance": FEATURE_PROVENANCE[group_of(f)]} for f in features}


@dataclass(frozen=True)
class ProductPriors:
    """Per-product statistics of train judgments, aligned with the catalog order."""

    count: np.ndarray  # (n,) float32
    mean_gain: np.ndarray  # (n,) float32, NaN where count == 0
    max_gain: np.ndarray  # (n,) float32, NaN where count == 0

    @classmethod
    def empty(cls, n: int) -> ProductPriors:
        nan = np.full(n, np.nan, dtype=np.float32)
        return cls(np.zeros(n, dtype=np.float32), nan, nan.copy())

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"count": self.count, "mean_gain": self.mean_gain, "max_gain": self.max_gain}


def product_priors(
    judgments: pd.DataFrame, product_ids: Sequence[str], scale: RelevanceScale | None = None
) -> ProductPriors:
    """Count, mean and max gain of each catalog product's judgments (products not judged: 0, NaN, NaN)."""
    n = len(product_ids)
    priors = ProductPriors.empty(n)
    if judgments.empty:
        return priors
    pos = pd.Series(np.arange(n), index=pd.Index(pd.Series(product_ids, dtype=str)))
    gain = (scale or RelevanceScale()).gain_of(judgments[s.RELEVANCE].astype(float))
    stats = gain.groupby(judgments[s.PRODUCT_ID].astype(str)).agg(["count", "mean", "max"])
    stats = stats[stats.index.isin(pos.index)]
    idx = pos.loc[stats.index].to_numpy()
    priors.count[idx] = stats["count"].to_numpy()
    priors.mean_gain[idx] = stats["mean"].to_numpy()
    priors.max_gain[idx] = stats["max"].to_numpy()
    return priors


def expanded_texts(
    texts: Sequence[str], product_ids: Sequence[str], judgments: pd.DataFrame, min_relevance: float
) -> list[str]:
    """Each product text followed by the train queries that judged it at >= min_relevance (doc2query-style)."""
    good = judgments[judgments[s.RELEVANCE] >= min_relevance]
    extra = good.groupby(good[s.PRODUCT_ID].astype(str))[s.QUERY].agg(" ".join)
    return [f"{t or ''} {extra.get(str(p), '')}".strip() for t, p in zip(texts, product_ids, strict=True)]


def text_token_sets(texts: Sequence[str]) -> list[frozenset[str]]:
    return [frozenset(tokenize(t)) for t in texts]


_ES_AFTER = ("ches", "shes", "sses", "xes")


def stem(token: str) -> str:
    """A light English suffix strip, the same for query and text: drills/drill, batteries/battery,
    boxes/box, strings/string, lighting/light, painted/paint. The plural goes first, then -ing/-ed,
    so a word and its plural always meet. No dictionary: it only has to make both sides agree."""
    if len(token) > 4 and token.endswith("ies"):
        token = token[:-3] + "y"
    elif token.endswith(_ES_AFTER):
        token = token[:-2]
    elif len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        token = token[:-1]
    if len(token) > 5 and token.endswith("ing"):
        return token[:-3]
    if len(token) > 5 and token.endswith("ed"):
        return token[:-2]
    return token


TextViews = tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[tuple[str, str]], frozenset[str]]


@functools.lru_cache(maxsize=TEXT_VIEWS_CACHED)
def _text_views(text: str) -> TextViews:
    """(tokens, stems, PREFIX-letter prefixes, adjacent token pairs, adjacent tokens joined) of one
    product text, cached: a catalog's popular products recur in every query's candidates."""
    tokens = tokenize(text)
    return (
        frozenset(tokens),
        frozenset(stem(t) for t in tokens),
        frozenset(t[:PREFIX] for t in tokens),
        frozenset(zip(tokens, tokens[1:], strict=False)),
        frozenset(a + b for a, b in zip(tokens, tokens[1:], strict=False)),
    )


def pair_features(
    query: str,
    cand: np.ndarray,
    bm25: np.ndarray,
    bm25_expanded: np.ndarray,
    dense: np.ndarray,
    dense_best: float,
    token_sets: Sequence[frozenset[str]],
    title_lengths: np.ndarray,
    priors: ProductPriors,
    price: np.ndarray | None,
    texts: Sequence[str],
    idf: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> np.ndarray:
    """Feature matrix (len(cand), len(FEATURE_NAMES)) float32 for one query's candidates.

    bm25 and bm25_expanded are the query's scores over the WHOLE catalog (for the relative features);
    dense holds the cosines of the candidates only, in cand order; dense_best is the query's top
    cosine over the catalog (a per-query constant, so a pair's features never depend on which
    other products are scored with it). texts: the product texts (catalog order) the forgiving
    matches read; a query without tokens has none (0, bigram_overlap NaN). idf: the idf of tokens
    (BM25Index.idf_of of the text BM25); None weighs every token 1.
    """
    m = len(cand)
    x = np.zeros((m, len(FEATURE_NAMES)), dtype=np.float32)
    if m == 0:
        return x
    qt = tokenize(query)
    qset = set(qt)
    numbers = {t for t in qset if any(c.isdigit() for c in t)}
    b, bx = bm25[cand], bm25_expanded[cand]
    x[:, 0] = b
    x[:, 1] = b / bm25.max() if bm25.max() > 0 else 0.0
    x[:, 2] = bx
    x[:, 3] = bx / bm25_expanded.max() if bm25_expanded.max() > 0 else 0.0
    x[:, 4] = dense
    x[:, 5] = dense - dense_best
    x[:, 6] = len(qt)
    x[:, 7] = title_lengths[cand]
    q_stems = {stem(t) for t in qt}
    q_prefixes = [t[:PREFIX] for t in qt]
    q_pairs = list(zip(qt, qt[1:], strict=False))
    q_unique = list(dict.fromkeys(qt))
    q_unique_stems = [stem(t) for t in q_unique]
    # a word's idf is its stem's when that is more common (drills -> drill): the meaning, not the form
    q_idf = np.minimum(idf(q_unique), idf(q_unique_stems)).tolist() if idf is not None else [1.0] * len(q_unique)
    idf_total = sum(q_idf)
    last_stem = stem(qt[-1]) if qt else ""
    joined = [(i, a + b) for i, (a, b) in enumerate(q_pairs)]
    for r, c in enumerate(cand):
        ts = token_sets[c]
        hit = len(qset & ts)
        x[r, 8] = hit / len(qset) if qset else 0.0
        x[r, 9] = float(bool(qset) and hit == len(qset))
        x[r, 10] = float(bool(qt) and qt[-1] in ts)
        x[r, 11] = len(numbers & ts) / len(numbers) if numbers else np.nan
        if qt:
            tokens, stems, prefixes, pairs, text_joined = _text_views(texts[c])
            x[r, 16] = len(q_stems & stems) / len(q_stems)
            x[r, 17] = sum(p in prefixes for p in q_prefixes) / len(qt)
            x[r, 18] = sum(p in pairs for p in q_pairs) / len(q_pairs) if q_pairs else np.nan
            x[r, 19] = float(qt[0] in tokens)
            x[r, 20] = float(last_stem in stems)
            met = sum(w for t, st, w in zip(q_unique, q_unique_stems, q_idf, strict=True) if t in tokens or st in stems)
            x[r, 21] = met / idf_total if idf_total > 0 else 0.0
            compound = {t for t in qt if t in text_joined}
            compound.update(t for i, j in joined if j in tokens for t in (qt[i], qt[i + 1]))
            x[r, 22] = len(compound) / len(qt)
    if not qt:
        x[:, 18] = np.nan
    x[:, 12] = priors.count[cand]
    x[:, 13] = priors.mean_gain[cand]
    x[:, 14] = priors.max_gain[cand]
    x[:, 15] = price[cand] if price is not None else np.nan
    return x


def rrf_merge(rankings: Sequence[np.ndarray], k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion: (ids best first, fused scores) over the union of the rankings.

    score(d) = Σ_r 1 / (k + rank_r(d)), ranks from 1; ties by id ascending.
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, d in enumerate(np.asarray(ranking).tolist(), start=1):
            fused[d] = fused.get(d, 0.0) + 1.0 / (k + rank)
    if not fused:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    items = sorted(fused.items(), key=lambda t: (-t[1], t[0]))
    return np.array([i for i, _ in items], dtype=np.int64), np.array([v for _, v in items])


def gains_to_labels(gain: np.ndarray, levels: int, max_gain: float = 2.0) -> np.ndarray:
    """Continuous gains 0..max_gain -> integer grades 0..levels-1 (LightGBM needs integers).

    max_gain: the judgment scale's (RelevanceScale.max_gain; EVALUATION.md's 1..3 scale: 2), so the
    top grade of any scale gets the top label and no two grades share one when levels allow.
    """
    return np.clip(np.rint(np.asarray(gain, dtype=float) * (levels - 1) / max_gain), 0, levels - 1).astype(np.int32)


def linear_label_gain(levels: int, max_gain: float = 2.0) -> tuple[float, ...]:
    """LightGBM label_gain making grade g worth its gain max_gain * g / (levels-1): linear, as EVALUATION.md."""
    return tuple(max_gain * g / (levels - 1) for g in range(levels))
