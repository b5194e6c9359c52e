"""Candidate generation and re-ranking features for recommendation, from one fitted state.

`fit_rec_state` turns a purchase history (events before a cutoff) into `RecState`: per-user purchase
statistics with repeat-aware signals (TIFU-kNN vectors, time-decayed counts, baskets since the last
purchase, "due to buy again" ratios), item statistics and the fitted generators (TIFU-kNN, EASE, item
kNN, BPR matrix factorisation, the self-attentive user encoder over text-based item vectors).
`candidate_features` then produces, for a batch of users, the candidate items (own history + each
generator's top-n + recent popularity) and one feature row per (user, candidate), among them the title
similarity of the candidate to the user's purchases and whether the item still sells (days since
anyone bought it).
Training, offline evaluation and serving all call these same two functions. The user encoder alone
ranks above item-kNN, but the re-ranker did worse with it as a candidate source and feature (README),
so by default (`candidates.encoder: 0`) it is neither; its vectors serve `similar` and the user profiles.

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
from components.rec_baselines import (
    Interactions,
    build_interactions,
    ease_weights,
    item_knn_similarity,
    prepare_events,
)
from components.user_encoder import encode_users, item_vectors, train_user_encoder

DAY = np.timedelta64(1, "D")
USER_ITEM_STATS = (
    "baskets",
    "quantity",
    "spend",
    "first_days",
    "last_days",
    "decayed",
    "tifu",
    "baskets_since",
)
GENERATORS = ("own", "tifu", "ease", "knn", "mf", "encoder", "trending")

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
    "own_decayed",
    "own_tifu",
    "own_baskets_since",
    "own_due_item",
    "tifu_score",
    "tifu_rank",
    "ease_score",
    "ease_rank",
    "recent_knn",
    "user_baskets",
    "user_items",
    "user_days_since_last",
    "user_days_since_first",
    "user_monetary",
    "user_repeat_ratio",
    "user_basket_size",
    "user_interval",
    "user_due",
    "item_price",
    "price_ratio",
    "item_buyers",
    "item_buyers_30d",
    "item_trend",
    "item_age_days",
    "item_repeat_rate",
    "item_interval",
    "knn_score",
    "knn_rank",
    "mf_score",
    "mf_rank",
    "text_sim_tifu",
    "text_sim_decayed",
    "text_sim_recent_max",
    "text_sim_all_max",
    "item_days_since_sale",
    "item_buyers_7d",
    "item_buyers_14d",
    "item_rebuyers_30d",
)


@dataclass
class RecState:
    """Everything the recommender knows as of `as_of`; arrays index users/items by position.

    items: (n_items,) ids sorted, catalog items and history items together. rankable: (n_items,) bool,
    bought at least once in the history (the protocol's ranked universe). users: (n_users,) ids sorted.
    user_items: long frame (user, item, baskets, quantity, spend, first_days, last_days, decayed, tifu,
    baskets_since) of purchases; see `repeat_signals` for the last three.
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
    _derived: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def stat(self, name: str) -> sp.csr_matrix:
        """(n_users, n_items) CSR of one user_items column, built once."""
        if name not in self._csr:
            ui = self.user_items
            self._csr[name] = sp.csr_matrix(
                (ui[name].to_numpy(np.float32), (ui["user"].to_numpy(), ui["item"].to_numpy())),
                shape=(len(self.users), len(self.items)),
            )
        return self._csr[name]

    def recent_matrix(self) -> sp.csr_matrix:
        """(n_users, n_items) CSR, 1 where the item is in one of the user's `recent_baskets` last baskets."""
        if "_recent" not in self._csr:
            ui = self.user_items.loc[self.user_items["baskets_since"] < self.config.recent_baskets]
            self._csr["_recent"] = sp.csr_matrix(
                (np.ones(len(ui), dtype=np.float32), (ui["user"].to_numpy(), ui["item"].to_numpy())),
                shape=(len(self.users), len(self.items)),
            )
        return self._csr["_recent"]

    def derived(self) -> dict[str, np.ndarray]:
        """Per-item and per-user repeat statistics derived from user_items and user_stats (cached).

        item_repeat_rate: share of an item's buyers who bought it in two or more baskets (NaN: no buyer).
        item_interval: median over those repeat buyers of their mean days between two baskets of it.
        item_days_since_sale: days since anyone last bought it (NaN: no one); item_buyers_7d/_14d:
        buyers whose last purchase of it is that recent; item_rebuyers_30d: of those within 30 days,
        the ones who bought it in two or more baskets.
        user_repeat_ratio: share of the user's (basket, item) pairs whose item was bought in an earlier
        basket; user_basket_size: distinct items per basket; user_interval: mean days between baskets
        (NaN for one basket); user_due: days since the last basket / user_interval.
        """
        if "item_repeat_rate" not in self._derived:
            ui, n_items = self.user_items, len(self.items)
            repeat = ui["baskets"].to_numpy() > 1
            buyers = np.bincount(ui["item"], minlength=n_items).astype(np.float32)
            repeaters = np.bincount(ui["item"], weights=repeat, minlength=n_items).astype(np.float32)
            gaps = (ui["first_days"] - ui["last_days"]) / np.maximum(ui["baskets"] - 1, 1)
            interval = gaps[repeat].groupby(ui["item"][repeat]).median().reindex(range(n_items))
            pairs = np.bincount(ui["user"], weights=ui["baskets"], minlength=len(self.users))
            st = self.user_stats
            n_baskets = st["baskets"].to_numpy(np.float64)
            user_interval = np.where(
                n_baskets > 1, (st["first_days"] - st["last_days"]).to_numpy() / np.maximum(n_baskets - 1, 1), np.nan
            )
            item, last = ui["item"].to_numpy(), ui["last_days"].to_numpy()

            def buyers_within(days: float, mask: np.ndarray | bool = True) -> np.ndarray:
                return np.bincount(item, weights=(last <= days) & mask, minlength=n_items).astype(np.float32)

            self._derived.update(
                item_days_since_sale=pd.Series(last).groupby(item).min().reindex(range(n_items)).to_numpy(np.float32),
                item_buyers_7d=buyers_within(7.0),
                item_buyers_14d=buyers_within(14.0),
                item_rebuyers_30d=buyers_within(30.0, repeat),
                item_repeat_rate=np.where(buyers > 0, repeaters / np.maximum(buyers, 1), np.nan).astype(np.float32),
                item_interval=interval.to_numpy(np.float32),
                user_repeat_ratio=(1.0 - st["items"].to_numpy() / np.maximum(pairs, 1)).astype(np.float32),
                user_basket_size=(pairs / np.maximum(n_baskets, 1)).astype(np.float32),
                user_interval=user_interval.astype(np.float32),
                user_due=(st["last_days"].to_numpy() / np.maximum(user_interval, 1.0)).astype(np.float32),
            )
        return self._derived

    def unit_text(self) -> np.ndarray:
        """The items' text vectors scaled to unit length (zero rows stay zero: items without a title)."""
        if "_unit_text" not in self._derived:
            self._derived["_unit_text"] = _unit(self.text.astype(np.float32))
        return self._derived["_unit_text"]

    def ease_matrix(self) -> np.ndarray:
        """EASE item-item weights (n_items, n_items) over the users' binary purchases, built once.

        Derived from user_items (what the bundle stores), so a loaded model rebuilds the same matrix.
        """
        if "_ease" not in self._derived:
            inter = Interactions(self.users, self.items, self.stat("baskets"))
            self._derived["_ease"] = ease_weights(inter, self.config.ease_lambda)
        return self._derived["_ease"]

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


def user_baskets(
    events: pd.DataFrame, users: np.ndarray, items: np.ndarray
) -> tuple[list[list[list[int]]], list[np.ndarray]]:
    """Per user (in `users` order), their baskets (sessions) in time order, each the distinct item
    positions it holds (ascending), and each basket's start in days (any origin, ascending); ties in
    time: session id."""
    ev = events.drop_duplicates([s.USER_ID, s.SESSION_ID, s.PRODUCT_ID])
    start = ev.groupby([s.USER_ID, s.SESSION_ID])[s.TIMESTAMP].transform("min")
    ev = ev.assign(_start=start, _pos=pd.Index(items).get_indexer(ev[s.PRODUCT_ID]))
    ev = ev.sort_values([s.USER_ID, "_start", s.SESSION_ID, "_pos"], kind="stable")
    per_basket = ev.groupby([s.USER_ID, "_start", s.SESSION_ID], sort=False)["_pos"].agg(list).reset_index()
    per_basket["_day"] = (per_basket["_start"] - pd.Timestamp(0)) / pd.Timedelta(days=1)
    by_user = per_basket.groupby(s.USER_ID, sort=False).agg(baskets=("_pos", list), days=("_day", list))
    baskets = by_user["baskets"].reindex(users)
    days = by_user["days"].reindex(users)
    return (
        [b if isinstance(b, list) else [] for b in baskets],
        [np.asarray(d if isinstance(d, list) else [], dtype=np.float64) for d in days],
    )


def repeat_signals(events: pd.DataFrame, config: CandidateParams) -> pd.DataFrame:
    """Per (user, product) repeat-buying signals, indexed by (user_id, product_id).

    events: prepared purchases with `_days` (days before the cutoff). A basket is a session; its age
    is its latest event. Columns:
      decayed: sum over the user's baskets holding the item of 0.5 ** (age / decay_half_life_days).
      tifu: the item's entry in TIFU-kNN's personal vector. The user's baskets, newest first, form
        groups of tifu_group_size (the oldest group may be smaller); a basket at position p (from the
        newest) of group g (from the newest) weighs within**p * across**g / (group size * groups), so a
        user's weights sum to at most 1 and a one-basket user's item has weight 1.
      baskets_since: the user's baskets after the last one holding the item (0 = in the last basket).
    """
    cfg = config
    baskets = events.groupby([s.USER_ID, s.SESSION_ID], sort=False)["_days"].min().reset_index()
    baskets = baskets.sort_values([s.USER_ID, "_days", s.SESSION_ID], kind="stable")
    ago = baskets.groupby(s.USER_ID, sort=False).cumcount().to_numpy()
    n = baskets.groupby(s.USER_ID, sort=False)["_days"].transform("size").to_numpy()
    m = cfg.tifu_group_size
    group, pos = ago // m, ago % m
    n_groups = -(-n // m)
    size = np.where(group == n_groups - 1, n - m * (n_groups - 1), m)
    weight = cfg.tifu_within_decay**pos * cfg.tifu_group_decay**group / (size * n_groups)
    baskets = baskets.assign(
        _ago=ago, _w=weight, _decay=0.5 ** (baskets["_days"].to_numpy() / cfg.decay_half_life_days)
    )
    pairs = events.drop_duplicates([s.USER_ID, s.PRODUCT_ID, s.SESSION_ID])[[s.USER_ID, s.PRODUCT_ID, s.SESSION_ID]]
    pairs = pairs.merge(baskets, on=[s.USER_ID, s.SESSION_ID], how="left")
    out = pairs.groupby([s.USER_ID, s.PRODUCT_ID]).agg(
        decayed=("_decay", "sum"), tifu=("_w", "sum"), baskets_since=("_ago", "min")
    )
    return out.astype(np.float32)


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
    fit_encoder: bool = True,
) -> RecState:
    """Fit every generator and statistic on `events` (all strictly before `as_of`).

    catalog: product_id, title, price; text: (len(catalog), dim) text embeddings in catalog order.
    Events after `as_of` raise: they would leak the target window into the features.
    `should_stop` (a training budget) is passed to the MF and user-encoder epoch loops.
    fit_encoder=False skips the user encoder (zero vectors, no weights): for states that only
    supply the re-ranker's training rows, since the encoder is neither a feature nor, by default, a
    candidate source.
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
    agg = agg.join(repeat_signals(ev, candidate_config)).reset_index()
    user_items = pd.DataFrame(
        {
            "user": pd.Index(users).get_indexer(agg[s.USER_ID]),
            "item": item_pos.get_indexer(agg[s.PRODUCT_ID]),
            **{c: agg[c].to_numpy(np.float32) for c in USER_ITEM_STATS},
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

    if fit_encoder:
        seqs, basket_days = user_baskets(ev, users, items)
        enc = train_user_encoder(seqs, text_all, rankable, encoder_config, seed, device, should_stop, basket_days)
        encoder_users = encode_users(enc, seqs, encoder_config.max_len)
        encoder_items = item_vectors(enc)
        weights = {k: v.detach().cpu().numpy() for k, v in enc.state_dict().items() if k not in ("text", "seen")}
    else:
        encoder_users = np.zeros((len(users), encoder_config.dim), dtype=np.float32)
        encoder_items = np.zeros((len(items), encoder_config.dim), dtype=np.float32)
        weights = {}
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
        encoder_weights=weights,
    )


def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def _profile_similarity(weights: sp.csr_matrix, text: np.ndarray, r_idx: np.ndarray, i_idx: np.ndarray) -> np.ndarray:
    """Cosine between each candidate's text vector and its user's weighted mean of bought items' vectors.

    weights: (len(rows), n_items) per-user item weights (TIFU vector, decayed counts); r_idx indexes its rows.
    """
    profiles = _unit(np.asarray(weights @ text, dtype=np.float32))
    return np.einsum("ij,ij->i", profiles[r_idx], text[i_idx])


def _nearest_similarity(items: sp.csr_matrix, text: np.ndarray, r_idx: np.ndarray, i_idx: np.ndarray) -> np.ndarray:
    """Highest cosine between each candidate's text vector and another item of its user's set (NaN: none).

    items: (len(rows), n_items) CSR whose non-zeros are each user's set; r_idx ascending (candidate order).
    """
    out = np.full(len(r_idx), np.nan, dtype=np.float32)
    starts = np.searchsorted(r_idx, np.arange(items.shape[0] + 1))
    for j in range(items.shape[0]):
        lo, hi = starts[j], starts[j + 1]
        others = items.indices[items.indptr[j] : items.indptr[j + 1]]
        if lo == hi or not len(others):
            continue
        sim = text[i_idx[lo:hi]] @ text[others].T
        sim[i_idx[lo:hi, None] == others[None, :]] = -np.inf  # an item is not its own neighbour
        best = sim.max(axis=1)
        out[lo:hi] = np.where(np.isfinite(best), best, np.nan)
    return out


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


def tifu_scores(state: RecState, rows: np.ndarray) -> np.ndarray:
    """TIFU-kNN: alpha * own vector + (1 - alpha) * mean vector of the most cosine-similar other users.

    Returns dense (len(rows), n_items) float32; rows are user positions of the state.
    """
    cfg = state.config
    vec = state.stat("tifu")
    if "_tifu_unit" not in state._csr:
        norm = np.sqrt(np.asarray(vec.multiply(vec).sum(axis=1)).ravel())
        state._csr["_tifu_unit"] = sp.csr_matrix(sp.diags(1.0 / np.maximum(norm, 1e-12)) @ vec)
    unit = state._csr["_tifu_unit"]
    own = vec[rows].toarray()
    k = min(cfg.tifu_neighbours, len(state.users) - 1)
    if k <= 0 or cfg.tifu_alpha >= 1.0:
        return own.astype(np.float32)
    sim = (unit[rows] @ unit.T).toarray()
    sim[np.arange(len(rows)), rows] = -np.inf  # never one's own neighbour
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    mean = sp.csr_matrix(
        (np.full(top.size, 1.0 / k, dtype=np.float32), (np.repeat(np.arange(len(rows)), k), top.ravel())),
        shape=(len(rows), len(state.users)),
    )
    neighbours = (mean @ vec).toarray()
    return (cfg.tifu_alpha * own + (1.0 - cfg.tifu_alpha) * neighbours).astype(np.float32)


def generator_scores(state: RecState, rows: np.ndarray, names: Sequence[str] = GENERATORS) -> dict[str, np.ndarray]:
    """Dense (len(rows), n_items) scores of the named generators for known user rows (-inf off the ranked universe)."""

    def own() -> np.ndarray:
        # Own history: more baskets first, then the more recent purchase.
        baskets = state.stat("baskets")[rows].toarray()
        recency = state.stat("last_days")[rows].toarray()
        return np.where(baskets > 0, baskets + 1.0 / (2.0 + recency), -np.inf)

    def knn() -> np.ndarray:
        binary = (state.stat("baskets")[rows] > 0).astype(np.float32)
        return np.asarray((binary @ state.knn_matrix()).todense(), dtype=np.float32)

    make = {
        "own": own,
        "tifu": lambda: tifu_scores(state, rows),
        "ease": lambda: (state.stat("baskets")[rows] > 0).astype(np.float32) @ state.ease_matrix(),
        "knn": knn,
        "mf": lambda: state.mf_users[rows] @ state.mf_items.T,
        "encoder": lambda: state.encoder_users[rows] @ state.encoder_items.T,
        "trending": lambda: np.broadcast_to(state.item_buyers_recent, (len(rows), len(state.items))),
    }
    out = {}
    for name in names:
        sc = np.array(make[name](), dtype=np.float64 if name == "own" else np.float32)
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
    sizes = {name: getattr(cfg, name) for name in GENERATORS}
    # Generators behind a feature are always scored; the others only when they supply candidates.
    names = [g for g in GENERATORS if g in ("own", "tifu", "ease", "knn", "mf") or sizes[g] > 0]
    scores = generator_scores(state, rows, names)
    n_items = len(state.items)
    take = np.zeros((len(rows), n_items), dtype=bool)
    for name in names:
        sc, n = scores[name], sizes[name]
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
    der = state.derived()
    item_interval = der["item_interval"][i_idx]
    spend = pick(state.stat("spend")[rows].toarray())
    qty = pick(state.stat("quantity")[rows].toarray())
    user_spend = pu["monetary"].to_numpy(np.float64)
    user_qty = pu["quantity"].to_numpy(np.float64)
    avg_price = np.where(user_qty > 0, user_spend / np.maximum(user_qty, 1e-9), np.nan)
    price = state.item_price[i_idx]
    text = state.unit_text()

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
        "own_decayed": pick(state.stat("decayed")[rows].toarray()),
        "own_tifu": pick(state.stat("tifu")[rows].toarray()),
        "own_baskets_since": np.where(bought, pick(state.stat("baskets_since")[rows].toarray()), np.nan),
        # Days since the last purchase over the item's typical repurchase gap: "due to buy again".
        "own_due_item": np.where(bought, last / np.maximum(item_interval, 1.0), np.nan),
        "tifu_score": pick(scores["tifu"]),
        "tifu_rank": pick(_ranks(scores["tifu"])),
        "ease_score": pick(scores["ease"]),
        "ease_rank": pick(_ranks(scores["ease"])),
        "recent_knn": pick(np.asarray((state.recent_matrix()[rows] @ state.knn_matrix()).todense())),
        "user_baskets": pu["baskets"].to_numpy(np.float32)[u],
        "user_items": pu["items"].to_numpy(np.float32)[u],
        "user_days_since_last": pu["last_days"].to_numpy(np.float32)[u],
        "user_days_since_first": pu["first_days"].to_numpy(np.float32)[u],
        "user_monetary": user_spend.astype(np.float32)[u],
        **{f: der[f][rows][u] for f in ("user_repeat_ratio", "user_basket_size", "user_interval", "user_due")},
        "item_price": price,
        "price_ratio": price / avg_price[u],
        "item_buyers": state.item_buyers[i_idx],
        "item_buyers_30d": state.item_buyers_recent[i_idx],
        "item_trend": state.item_buyers_recent[i_idx] / np.maximum(state.item_buyers[i_idx], 1.0),
        "item_age_days": state.item_age_days[i_idx],
        "item_repeat_rate": der["item_repeat_rate"][i_idx],
        "item_interval": item_interval,
        "knn_score": pick(scores["knn"]),
        "knn_rank": pick(_ranks(scores["knn"])),
        "mf_score": pick(scores["mf"]),
        "mf_rank": pick(_ranks(scores["mf"])),
        # Content: how close the candidate's title is to what the user buys (profile) and to single items.
        "text_sim_tifu": _profile_similarity(state.stat("tifu")[rows], text, r_idx, i_idx),
        "text_sim_decayed": _profile_similarity(state.stat("decayed")[rows], text, r_idx, i_idx),
        "text_sim_recent_max": _nearest_similarity(state.recent_matrix()[rows], text, r_idx, i_idx),
        "text_sim_all_max": _nearest_similarity(state.stat("baskets")[rows], text, r_idx, i_idx),
        # Whether the item still sells: a discontinued product is not bought again, however due.
        **{
            f: der[f][i_idx] for f in ("item_days_since_sale", "item_buyers_7d", "item_buyers_14d", "item_rebuyers_30d")
        },
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
