"""SearchModel: hybrid retrieval (BM25, query-expanded BM25, dense ANN) + LightGBM LambdaRank re-rank.

The one scoring path used by the offline evaluation (`rank_queries`, `score_products`) and by the
service (`search`), so offline numbers are the numbers users get.

Defined behaviour at the edges:
- empty or whitespace-only query: no results ([]), nothing is encoded;
- very long query: cut to MAX_QUERY_CHARS characters, then the encoder truncates to its max length;
- query of only stop words or symbols: BM25 finds nothing (scores 0) but the dense tower still
  embeds the text, so results come from the ANN candidates;
- products with empty text: BM25 0, embedded as a single space, returned with their title ("" if none);
- non-ASCII text: BM25 keeps ASCII letters/digits only (EVALUATION.md), the encoder sees all of it;
- catalog smaller than k: every product is returned, ranked (len(result) = catalog size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from components.ann import search_index
from components.bm25 import BM25Index, tokenize, top_k
from components.search_features import (
    FEATURE_NAMES,
    JUDGMENT_FEATURES,
    ProductPriors,
    pair_features,
    text_token_sets,
)

MAX_QUERY_CHARS = 256
RETRIEVAL_SOURCES = ("bm25", "bm25 expanded", "dense")  # _retrieve's candidate lists, in order


@dataclass
class SearchModel:
    """Loaded parts of the search bundle. Build it with artifacts.bundles.load_bundle("search", folder).

    product_ids, titles: the catalog order every array below follows (n products); titles are what
        results show.
    texts: the product texts BM25 and the token features read (search.text_fields joined; the
        titles when None, as for a titles-only catalog).
    embeddings: (n, dim) float32 unit rows, the product tower's output (the index holds the same rows).
    encoder, tokenizer: the query tower (a transformers model with mean pooling).
    query_runtime: the same tower exported to ONNX (components.onnx_tower.OnnxQueryTower), used for
        queries when set (the CPU serving path: same vectors, a third of the latency); None: PyTorch.
    booster: LightGBM ranker over `feature_names`; None ranks candidates by reciprocal-rank fusion.
    feature_names: the ranker's columns, a subset of FEATURE_NAMES in its order (the feature groups it
        was trained on). Without any judgment-derived feature (search_features.JUDGMENT_FEATURES) the
        model drops its priors and uses the plain BM25 as the "expanded" one, so judgments reach
        neither its features nor its candidates.
    """

    product_ids: np.ndarray
    titles: list[str]
    embeddings: np.ndarray
    index: object
    encoder: object
    tokenizer: object
    bm25: BM25Index
    bm25_expanded: BM25Index
    priors: ProductPriors
    booster: object | None = None
    price: np.ndarray | None = None
    query_max_length: int = 24
    candidates_per_source: int = field(kw_only=True)  # no default: params say (search.candidates_per_source)
    rrf_k: int = 60
    feature_names: tuple[str, ...] = FEATURE_NAMES
    query_runtime: object | None = None
    texts: list[str] | None = None
    _token_sets: list = field(default=None, repr=False)
    _title_lengths: np.ndarray = field(default=None, repr=False)
    _columns: np.ndarray = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.feature_names = tuple(self.feature_names)
        unknown = [f for f in self.feature_names if f not in FEATURE_NAMES]
        if unknown or list(self.feature_names) != [f for f in FEATURE_NAMES if f in self.feature_names]:
            raise ValueError(f"feature_names must be a subset of FEATURE_NAMES in its order: {self.feature_names}")
        self._columns = np.array([FEATURE_NAMES.index(f) for f in self.feature_names], dtype=np.int64)
        if not JUDGMENT_FEATURES & set(self.feature_names):
            self.priors = ProductPriors.empty(len(self.product_ids))
            self.bm25_expanded = self.bm25
        self.titles = ["" if t is None else str(t) for t in self.titles]
        self.texts = self.titles if self.texts is None else ["" if t is None else str(t) for t in self.texts]
        self._token_sets = text_token_sets(self.texts)
        self._title_lengths = np.array([len(tokenize(t)) for t in self.texts], dtype=np.float32)

    @property
    def n_products(self) -> int:
        return len(self.product_ids)

    # --- query side ------------------------------------------------------------------------------
    @staticmethod
    def clean_query(query: str | None) -> str:
        """The text actually searched: stripped and cut to MAX_QUERY_CHARS ('' means no results)."""
        return str(query or "").strip()[:MAX_QUERY_CHARS]

    def encode_queries(self, queries: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(len(queries), dim) unit query embeddings from the query tower."""
        from components.encoder import encode_texts

        if not len(queries):
            return np.zeros((0, self.embeddings.shape[1]), dtype=np.float32)
        if self.query_runtime is not None:
            return self.query_runtime.encode(list(queries), batch_size, self.query_max_length)
        return encode_texts(self.encoder, self.tokenizer, list(queries), batch_size, self.query_max_length)

    def warm_up(self) -> None:
        """Answer one query end to end, so the first real request does not pay the one-off costs."""
        self.search("warm up", k=1)

    def _retrieve(self, query: str, q_emb: np.ndarray):
        """Candidates (sorted product indices) and the query's full-catalog signals."""
        k = self.candidates_per_source
        bm = self.bm25.score(query)
        bx = bm if self.bm25_expanded is self.bm25 else self.bm25_expanded.score(query)
        dense_scores, dense_ids = search_index(self.index, q_emb[None, :], k)
        sources = [top_k(bm, k)[: int((bm > 0).sum())], top_k(bx, k)[: int((bx > 0).sum())], dense_ids[0]]
        cand = np.unique(np.concatenate(sources)).astype(np.int64)
        best = float(dense_scores[0, 0]) if dense_scores.shape[1] else 0.0
        return cand, bm, bx, best, sources

    def _features(self, query: str, q_emb: np.ndarray, cand: np.ndarray, bm, bx, best) -> np.ndarray:
        dense = self.embeddings[cand] @ q_emb
        x = pair_features(
            query,
            cand,
            bm,
            bx,
            dense,
            best,
            self._token_sets,
            self._title_lengths,
            self.priors,
            self.price,
            self.texts,
            self.bm25.idf_of,
        )
        return x if len(self._columns) == x.shape[1] else x[:, self._columns]

    def candidate_features(self, queries: Sequence[str], q_embs: np.ndarray | None = None):
        """Per query: (candidate indices, feature matrix (m, n_features)). Used to train the ranker."""
        queries = [self.clean_query(q) for q in queries]
        q_embs = self.encode_queries(queries) if q_embs is None else q_embs
        out = []
        for q, e in zip(queries, q_embs, strict=True):
            if not q:
                out.append((np.zeros(0, np.int64), np.zeros((0, len(self.feature_names)), np.float32)))
                continue
            cand, bm, bx, best, _ = self._retrieve(q, e)
            out.append((cand, self._features(q, e, cand, bm, bx, best)))
        return out

    def _score(self, x: np.ndarray, cand: np.ndarray, sources) -> np.ndarray:
        if self.booster is not None:
            return self.booster.predict(x) if len(x) else np.zeros(0)
        ids, fused = _rrf(sources, self.rrf_k)
        lookup = dict(zip(ids.tolist(), fused.tolist(), strict=True))
        return np.array([lookup.get(c, 0.0) for c in cand.tolist()])

    ranks_with_features = True  # rank_queries(..., with_features=True): the serving capture asks for it

    def rank_queries(
        self, queries: Sequence[str], k: int = 100, q_embs: np.ndarray | None = None, with_features: bool = False
    ):
        """Per query: (product indices best first, scores), at most k of them (fewer if the catalog is smaller).

        with_features: (indices, scores, feature rows (k, n_features)) instead, the rows the ranker scored
        (the serving capture logs them with the impression).
        """
        queries = [self.clean_query(q) for q in queries]
        q_embs = self.encode_queries(queries) if q_embs is None else q_embs
        out = []
        for q, e in zip(queries, q_embs, strict=True):
            if not q:
                empty = (np.zeros(0, np.int64), np.zeros(0))
                out.append((*empty, np.zeros((0, len(self.feature_names)), np.float32)) if with_features else empty)
                continue
            cand, bm, bx, best, sources = self._retrieve(q, e)
            x = self._features(q, e, cand, bm, bx, best)
            scores = self._score(x, cand, sources)
            order = np.lexsort((cand, -scores))[:k]  # ties by catalog position, deterministic
            out.append((cand[order], scores[order], x[order]) if with_features else (cand[order], scores[order]))
        return out

    def score_products(self, query: str, product_idx: np.ndarray, q_emb: np.ndarray | None = None) -> np.ndarray:
        """Ranker scores of given products for a query (the re-rank metric orders judged products by these)."""
        query = self.clean_query(query)
        product_idx = np.asarray(product_idx, dtype=np.int64)
        if not query or len(product_idx) == 0:
            return np.zeros(len(product_idx))
        e = self.encode_queries([query])[0] if q_emb is None else q_emb
        _, bm, bx, best, sources = self._retrieve(query, e)
        return self._score(self._features(query, e, product_idx, bm, bx, best), product_idx, sources)

    def search(self, query: str, k: int = 10, explain: bool = False, top_features: int = 5) -> list[dict]:
        """Top-k products for one query: [{product_id, title, score[, contributions]}], best first.

        explain=True: sources, the retrieval sources whose candidate list held the product (RETRIEVAL_SOURCES);
        contributions (needs the ranker), the `top_features` largest LightGBM pred_contrib values of that
        product, as [[feature, contribution], ...].
        """
        q = self.clean_query(query)
        if not q or k <= 0:
            return []
        e = self.encode_queries([q])[0]
        cand, bm, bx, best, sources = self._retrieve(q, e)
        x = self._features(q, e, cand, bm, bx, best)
        scores = self._score(x, cand, sources)
        order = np.lexsort((cand, -scores))[:k]
        results = [
            {"product_id": str(self.product_ids[c]), "title": self.titles[c], "score": float(scores[o])}
            for o, c in zip(order, cand[order], strict=True)
        ]
        if explain:  # which candidate lists held each product: what the ranker was given to choose from
            found = [set(np.asarray(ids).tolist()) for ids in sources]
            for r, c in zip(results, cand[order].tolist(), strict=True):
                r["sources"] = [name for name, ids in zip(RETRIEVAL_SOURCES, found, strict=True) if c in ids]
        if explain and self.booster is not None:
            from components.ranker import contributions

            for r, contrib in zip(
                results, contributions(self.booster, x[order], self.feature_names, top_features), strict=True
            ):
                r["contributions"] = [[name, value] for name, value in contrib]
        return results


def _rrf(sources, k: int):
    from components.search_features import rrf_merge

    return rrf_merge(sources, k)
