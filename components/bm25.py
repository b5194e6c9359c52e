"""Okapi BM25 as EVALUATION.md fixes it (k1 = 1.2, b = 0.75, lower-cased alphanumeric tokens).

Sparse-matrix form: the whole corpus is one (n_docs, vocab) CSR matrix of per-term BM25 weights,
so scoring every document for a query is one sparse column sum (milliseconds over 55 k titles).
IDF is the Lucene/Robertson-Sparck-Jones form log(1 + (N - df + 0.5) / (df + 0.5)), never negative.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str | None) -> list[str]:
    """Lower-cased maximal runs of ASCII letters and digits; everything else separates tokens.

    Non-ASCII letters are separators too (EVALUATION.md: "alphanumeric"), so "café" -> ["caf"].
    """
    return _TOKEN.findall(str(text).lower()) if text else []


@dataclass(frozen=True)
class BM25Index:
    """A fitted BM25 index: vocabulary, idf and the (n_docs, vocab) weight matrix."""

    vocabulary: dict[str, int]
    idf: np.ndarray  # (vocab,)
    weights: sp.csr_matrix  # (n_docs, vocab): idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))
    k1: float
    b: float

    def __post_init__(self) -> None:
        # Term-major copy: scoring a query walks only its terms' postings (a few ms over 55 k titles).
        object.__setattr__(self, "_postings", self.weights.T.tocsr())

    @property
    def n_docs(self) -> int:
        return self.weights.shape[0]

    def query_vector(self, query: str) -> sp.csr_matrix:
        """(vocab, 1) term counts of the query's in-vocabulary tokens (repeated terms count twice)."""
        ids = [self.vocabulary[t] for t in tokenize(query) if t in self.vocabulary]
        data = np.ones(len(ids), dtype=np.float32)
        return sp.csr_matrix((data, (ids, np.zeros(len(ids), dtype=np.int64))), shape=(len(self.vocabulary), 1))

    def score(self, query: str) -> np.ndarray:
        """BM25 score of every document: float32 (n_docs,); all zeros for a query with no known token."""
        out = np.zeros(self.n_docs, dtype=np.float32)
        post = self._postings
        for t in tokenize(query):  # a repeated query term counts once per occurrence
            j = self.vocabulary.get(t)
            if j is not None:
                lo, hi = post.indptr[j], post.indptr[j + 1]
                out[post.indices[lo:hi]] += post.data[lo:hi]
        return out

    def idf_of(self, tokens: Sequence[str]) -> np.ndarray:
        """float32 idf of each token; a token no document holds gets the idf of document frequency 0."""
        unseen = float(np.log1p((self.n_docs + 0.5) / 0.5))
        ids = (self.vocabulary.get(t) for t in tokens)
        return np.array([unseen if j is None else self.idf[j] for j in ids], np.float32)

    def score_many(self, queries: Sequence[str]) -> sp.csr_matrix:
        """(n_queries, n_docs) sparse scores (only documents sharing a token are stored)."""
        cols = [self.query_vector(q) for q in queries]
        q = sp.hstack(cols, format="csc") if cols else sp.csc_matrix((len(self.vocabulary), 0))
        return (self.weights @ q).T.tocsr()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an .npz file (no pickles): vocabulary, idf, CSR parts, k1, b."""
        vocab = np.array(sorted(self.vocabulary, key=self.vocabulary.__getitem__), dtype=str)
        w = self.weights
        return {
            "vocabulary": vocab,
            "idf": self.idf,
            "data": w.data,
            "indices": w.indices,
            "indptr": w.indptr,
            "shape": np.array(w.shape),
            "k1_b": np.array([self.k1, self.b]),
        }

    @classmethod
    def from_arrays(cls, arrays) -> BM25Index:
        vocab = {str(t): i for i, t in enumerate(arrays["vocabulary"])}
        weights = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"]))
        k1, b = (float(v) for v in arrays["k1_b"])
        return cls(vocab, np.asarray(arrays["idf"]), weights, k1, b)


def fit_bm25(documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> BM25Index:
    """Fit BM25 over the documents (empty documents get no terms and score 0 for every query)."""
    vocabulary: dict[str, int] = {}
    rows, cols, vals = [], [], []
    lengths = np.zeros(len(documents), dtype=np.float64)
    for d, doc in enumerate(documents):
        toks = tokenize(doc)
        lengths[d] = len(toks)
        counts: dict[int, int] = {}
        for t in toks:
            j = vocabulary.setdefault(t, len(vocabulary))
            counts[j] = counts.get(j, 0) + 1
        rows.extend([d] * len(counts))
        cols.extend(counts.keys())
        vals.extend(counts.values())
    n = len(documents)
    tf = sp.csr_matrix((np.asarray(vals, dtype=np.float64), (rows, cols)), shape=(n, len(vocabulary)))
    df = np.bincount(np.asarray(cols, dtype=np.int64), minlength=len(vocabulary)).astype(np.float64)
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    avg = lengths.mean() if n and lengths.mean() > 0 else 1.0
    norm = k1 * (1 - b + b * lengths / avg)  # per document
    tf = tf.tocoo()
    w = idf[tf.col] * tf.data * (k1 + 1) / (tf.data + norm[tf.row])
    weights = sp.csr_matrix((w.astype(np.float32), (tf.row, tf.col)), shape=tf.shape)
    return BM25Index(vocabulary, idf.astype(np.float32), weights, k1, b)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; equal scores inside the top k by lower index first."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]
