"""Candidate generation and re-ranking features for recommendation, from one fitted state.

`fit_rec_state` turns a purchase history (events before a cutoff) into `RecState`: per-user purchase
statistics, item statistics and the fitted generators (item kNN, BPR matrix factorisation, the GRU
user encoder over text-based item vectors). `candidate_features` then produces, for a batch of users,
the candidate items (own history + each generator's top-n + recent popularity) and one feature row
per (user, candidate). Training, offline evaluation and serving all call these same two functions.

Times are days before `as_of` (the cutoff), so a state fitted on an earlier fold yields features on
the same scale as one fitted on the latest data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components import schema as s
from components.config_recommend import CandidateParams, MFParams, UserEncoderParams
from components.mf import train_bpr
from components.rec_baselines import build_interactions, item_knn_similarity, prepare_events
from components.user_encoder import encode_users, item_vectors, train_user_encoder

DAY = np.timedelta64(1, "D")
GENERATORS = ("own", "knn", "mf", "encoder", "trending")

FEATURES = (
    "own_baskets",
    "own_quantity",
    "own_spend",
    "own_days_since_last",
    "own_days_since_first",
    "own_share",
    "own_interval",
    "own_due",
    "own_rank",
    "user_baskets",
    "user_items",
    "user_days_since_last",
    "user_days_since_first",
    "user_monetary",
    "item_price",
    "price_ratio",
    "item_buyers",
    "item_buyers_30d",
    "item_trend",
    "item_age_days",
    "knn_score",
    "knn_rank",
    "mf_score",
    "mf_rank",
    "encoder_score",
    "encoder_rank",
)


@dataclass
class RecState:
    """Everything the recommender knows as of `as_of`; arrays index users/items by position.

    items: (n_items,) ids sorted, catalog items and history items together. rankable: (n_items,) bool,
    bought at least once in the history (the protocol's ranked universe). users: (n_users,) ids sorted.
    user_items: long frame (user, item, baskets, quantity, spend, first_days, last_days) of purchases.
    user_stats: per-user totals, precomputed so that scoring one user never scans the history.
    """

    as_of: np.datetime64
    items: np.ndarray
    rankable: np.ndarray
    item_price: np.ndarray
    item_buyers: np.ndarray
    item_buyers_recent: np.ndarray
    item_age_days: np.ndarray
    text: np.ndarray
    knn_index: np.ndarray  # (n_items, knn_neighbours) neighbour item positions, -1 = none
    knn_sim: np.ndarray  # (n_items, knn_neighbours) cosine similarities
    mf_items: np.ndarray
    encoder_items: np.ndarray
    users: np.ndarray
    user_items: pd.DataFrame
    user_stats: pd.DataFrame  # one row per user position: baskets, items, quantity, monetary, first_days, last_days
    mf_users: np.ndarray
    encoder_users: np.ndarray
    config: CandidateParams = field(default_factory=CandidateParams)
    encoder_weights: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _csr: dict[str, sp.csr_matrix] = field(default_factory=dict, repr=False)

    def stat(self, name: str) -> sp.csr_matrix:
        """(n_users, n_items) CSR of one user_items column, built once."""
        if name not in self._csr:
            ui = self.user_items
            self._csr[name] = sp.csr_matrix(
                (ui[name].to_numpy(np.float32), (ui["user"].to_numpy(), ui["item"].to_numpy())),
                shape=(len(self.users), len(self.items)),
            )
        return self._csr[name]

    def knn_matrix(self) -> sp.csr_matrix:
        if "_knn" not in self._csr:
            n, k = self.knn_index.shape
            keep = self.knn_index.ravel() >= 0
            rows = np.repeat(np.arange(n), k)[keep]
            self._csr["_knn"] = sp.csr_matrix(
                (self.knn_sim.ravel()[keep], (rows, self.knn_index.ravel()[keep])), shape=(n, n)
            )
        return self._csr["_knn"]


def item_universe(events: pd.DataFrame, catalog: pd.DataFrame) -> np.ndarray:
    """Sorted ids of every catalog item and every item in the events."""
    return np.array(
        sorted(set(catalog[s.PRODUCT_ID].astype(str)) | set(events[s.PRODUCT_ID].astype(str))), dtype=object
    )


def user_sequences(events: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> list[list[int]]:
    """Per user (in `users` order), item positions of their purchases in time order (ties: product id)."""
    ev = events.sort_values([s.TIMESTAMP, s.SESSION_ID, s.PRODUCT_ID], kind="stable")
    pos = pd.Index(items).get_indexer(ev[s.PRODUCT_ID])
    by_user = pd.Series(pos).groupby(ev[s.USER_ID].to_numpy()).agg(list)
    return [by_user.get(u, []) for u in users]


def fit_rec_state(
    events: pd.DataFrame,
    catalog: pd.DataFrame,
    text: np.ndarray,
    as_of: np.datetime64,
    mf_config: MFParams,
    encoder_config: UserEncoderParams,
    candidate_config: CandidateParams,
    seed: int,
    device=None,
    should_stop: Callable[[], bool] | None = None,
) -> RecState:
    """Fit every generator and statistic on `events` (all strictly before `as_of`).

    catalog: product_id, title, price; text: (len(catalog), dim) text embeddings in catalog order.
    Events after `as_of` raise: they would leak the target window into the features.
    `should_stop` (a training budget) is passed to the MF and user-encoder epoch loops.
    """
    ev = prepare_events(events)
    as_of = np.datetime64(pd.Timestamp(as_of).to_datetime64(), "ns")
    if len(ev) and ev[s.TIMESTAMP].max() >= pd.Timestamp(as_of):
        raise ValueError(f"events at or after as_of={as_of} would leak the target window into training")
    items = item_universe(ev, catalog)
    item_pos = pd.Index(items)
    inter = build_interactions(ev, items)
    rankable = np.asarray(inter.counts.sum(axis=0)).ravel() > 0

    cat_pos = item_pos.get_indexer(catalog[s.PRODUCT_ID].astype(str))
    text_all = np.zeros((len(items), text.shape[1]), dtype=np.float32)
    text_all[cat_pos] = text
    price = np.full(len(items), np.nan, dtype=np.float32)
    if s.PRICE in catalog.columns:
        price[cat_pos] = catalog[s.PRICE].to_numpy(np.float32)
    paid = ev.groupby(s.PRODUCT_ID)[s.PRICE].median()
    # Items the catalog prices miss fall back to the median unit price paid.
    fill = np.isnan(price)
    price[fill] = paid.reindex(items[fill]).to_numpy(np.float32)

    days = ((as_of - ev[s.TIMESTAMP].to_numpy()) / DAY).astype(np.float32)
    ev = ev.assign(_days=days, _spend=ev[s.QUANTITY] * ev[s.PRICE])
    buyers = np.asarray(inter.binary.sum(axis=0)).ravel()
    recent = ev.loc[ev["_days"] <= candidate_config.trending_days]
    buyers_recent = recent.groupby(s.PRODUCT_ID)[s.USER_ID].nunique().reindex(items).fillna(0).to_numpy(np.float32)
    age = ev.groupby(s.PRODUCT_ID)["_days"].max().reindex(items).to_numpy(np.float32)

    users = inter.users
    agg = ev.groupby([s.USER_ID, s.PRODUCT_ID]).agg(
        baskets=(s.SESSION_ID, "nunique"),
        quantity=(s.QUANTITY, "sum"),
        spend=("_spend", "sum"),
        first_days=("_days", "max"),
        last_days=("_days", "min"),
    )
    agg = agg.reset_index()
    user_items = pd.DataFrame(
        {
            "user": pd.Index(users).get_indexer(agg[s.USER_ID]),
            "item": item_pos.get_indexer(agg[s.PRODUCT_ID]),
            **{c: agg[c].to_numpy(np.float32) for c in ("baskets", "quantity", "spend", "first_days", "last_days")},
        }
    )

    per_user = ev.groupby(s.USER_ID).agg(
        baskets=(s.SESSION_ID, "nunique"),
        items=(s.PRODUCT_ID, "nunique"),
        quantity=(s.QUANTITY, "sum"),
        monetary=("_spend", "sum"),
        first_days=("_days", "max"),
        last_days=("_days", "min"),
    )
    user_stats = per_user.reindex(users).reset_index(drop=True).astype(np.float32)

    sim = item_knn_similarity(inter, candidate_config.knn_neighbours)
    knn_index, knn_sim = _neighbour_lists(sim, candidate_config.knn_neighbours)
    mf_users, mf_items = train_bpr(inter.binary, mf_config, seed, device, should_stop)
    mf_items[~rankable] = 0.0  # never-bought items have untrained factors; score them neutrally

    seqs = user_sequences(ev, users, items)
    enc = train_user_encoder(seqs, text_all, rankable, encoder_config, seed, device, should_stop)
    encoder_users = encode_users(enc, seqs, encoder_config.max_len)
    encoder_items = item_vectors(enc)
    return RecState(
        as_of=as_of,
        items=items,
        rankable=rankable,
        item_price=price,
        item_buyers=buyers.astype(np.float32),
        item_buyers_recent=buyers_recent,
        item_age_days=age,
        text=text_all,
        knn_index=knn_index,
        knn_sim=knn_sim,
        mf_items=mf_items,
        encoder_items=encoder_items,
        users=users,
        user_items=user_items,
        user_stats=user_stats,
        mf_users=mf_users,
        encoder_users=encoder_users,
        config=candidate_config,
        encoder_weights={k: v.detach().cpu().numpy() for k, v in enc.state_dict().items() if k not in ("text", "seen")},
    )


def _neighbour_lists(sim: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense (n, k) neighbour positions (-1 padded) and similarities from a top-k sparse matrix."""
    n = sim.shape[0]
    index = np.full((n, k), -1, dtype=np.int32)
    value = np.zeros((n, k), dtype=np.float32)
    for i in range(n):
        lo, hi = sim.indptr[i], sim.indptr[i + 1]
        order = np.argsort(-sim.data[lo:hi], kind="stable")[:k]
        index[i, : len(order)] = sim.indices[lo:hi][order]
        value[i, : len(order)] = sim.data[lo:hi][order]
    return index, value


def generator_scores(state: RecState, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Dense (len(rows), n_items) scores of each generator for known user rows (-inf off the ranked universe)."""
    own = state.stat("baskets")[rows].toarray()
    recency = state.stat("last_days")[rows].toarray()
    bought = own > 0
    # Own history: more baskets first, then the more recent purchase.
    own_score = np.where(bought, own + 1.0 / (2.0 + recency), -np.inf)
    binary = (state.stat("baskets")[rows] > 0).astype(np.float32)
    out = {
        "own": own_score,
        "knn": np.asarray((binary @ state.knn_matrix()).todense(), dtype=np.float32),
        "mf": state.mf_users[rows] @ state.mf_items.T,
        "encoder": state.encoder_users[rows] @ state.encoder_items.T,
        "trending": np.broadcast_to(state.item_buyers_recent, own.shape).astype(np.float32),
    }
    for name, sc in out.items():
        sc = np.asarray(sc, dtype=np.float64 if name == "own" else np.float32)
        sc[:, ~state.rankable] = -np.inf
        out[name] = sc
    return out


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every item within its row (1 = best), ties by item position."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :], axis=1)
    return ranks


def candidate_features(state: RecState, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates and their features for known user rows.

    Returns (row_of_candidate (m,), item_position (m,), features (m, len(FEATURES)) float32), grouped
    by user in the order of `rows`, items ascending within a user. NaN marks "not applicable" (e.g.
    days since last purchase of an item never bought), which LightGBM routes on its own.
    """
    cfg = state.config
    rows = np.asarray(rows, dtype=np.int64)
    scores = generator_scores(state, rows)
    n_items = len(state.items)
    take = np.zeros((len(rows), n_items), dtype=bool)
    for name, n in (
        ("own", cfg.own),
        ("knn", cfg.knn),
        ("mf", cfg.mf),
        ("encoder", cfg.encoder),
        ("trending", cfg.trending),
    ):
        sc = scores[name]
        n = min(n, n_items)
        if n <= 0:
            continue
        top = np.argpartition(-sc, n - 1, axis=1)[:, :n]
        ok = np.isfinite(np.take_along_axis(sc, top, axis=1))
        take[np.repeat(np.arange(len(rows)), n)[ok.ravel()], top.ravel()[ok.ravel()]] = True
    r_idx, i_idx = np.nonzero(take)

    def pick(mat: np.ndarray) -> np.ndarray:
        return mat[r_idx, i_idx].astype(np.float32)

    baskets = pick(state.stat("baskets")[rows].toarray())
    bought = baskets > 0
    last = np.where(bought, pick(state.stat("last_days")[rows].toarray()), np.nan)
    first = np.where(bought, pick(state.stat("first_days")[rows].toarray()), np.nan)
    interval = np.where(baskets > 1, (first - last) / np.maximum(baskets - 1, 1), np.nan)

    pu = state.user_stats.iloc[rows]
    u = r_idx
    spend = pick(state.stat("spend")[rows].toarray())
    qty = pick(state.stat("quantity")[rows].toarray())
    user_spend = pu["monetary"].to_numpy(np.float64)
    user_qty = pu["quantity"].to_numpy(np.float64)
    avg_price = np.where(user_qty > 0, user_spend / np.maximum(user_qty, 1e-9), np.nan)
    price = state.item_price[i_idx]

    feats = {
        "own_baskets": baskets,
        "own_quantity": qty,
        "own_spend": spend,
        "own_days_since_last": last,
        "own_days_since_first": first,
        "own_share": baskets / np.maximum(pu["baskets"].to_numpy(np.float32)[u], 1.0),
        "own_interval": interval,
        "own_due": np.where(np.isfinite(interval), last / np.maximum(interval, 1.0), np.nan),
        "own_rank": np.where(bought, pick(_ranks(np.nan_to_num(scores["own"], neginf=-1.0))), np.nan),
        "user_baskets": pu["baskets"].to_numpy(np.float32)[u],
        "user_items": pu["items"].to_numpy(np.float32)[u],
        "user_days_since_last": pu["last_days"].to_numpy(np.float32)[u],
        "user_days_since_first": pu["first_days"].to_numpy(np.float32)[u],
        "user_monetary": user_spend.astype(np.float32)[u],
        "item_price": price,
        "price_ratio": price / avg_price[u],
        "item_buyers": state.item_buyers[i_idx],
        "item_buyers_30d": state.item_buyers_recent[i_idx],
        "item_trend": state.item_buyers_recent[i_idx] / np.maximum(state.item_buyers[i_idx], 1.0),
        "item_age_days": state.item_age_days[i_idx],
        "knn_score": pick(scores["knn"]),
        "knn_rank": pick(_ranks(scores["knn"])),
        "mf_score": pick(scores["mf"]),
        "mf_rank": pick(_ranks(scores["mf"])),
        "encoder_score": pick(scores["encoder"]),
        "encoder_rank": pick(_ranks(scores["encoder"])),
    }
    x = np.column_stack([np.asarray(feats[f], dtype=np.float32) for f in FEATURES])
    return rows[r_idx], i_idx, x


def candidate_labels(
    state: RecState, cand_rows: np.ndarray, cand_items: np.ndarray, targets: dict[str, set[str]]
) -> np.ndarray:
    """1 where the candidate item is in the user's target set, else 0: (m,) int32."""
    item_ids = state.items[cand_items]
    user_ids = state.users[cand_rows]
    return np.fromiter(
        (1 if it in targets.get(us, ()) else 0 for us, it in zip(user_ids, item_ids, strict=True)),
        dtype=np.int32,
        count=len(cand_rows),
    )


def rows_of(state: RecState, user_ids: Sequence[str]) -> np.ndarray:
    """Row positions of user ids; -1 for users the state has never seen."""
    return pd.Index(state.users).get_indexer(list(user_ids))
