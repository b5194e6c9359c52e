"""The recommender as served: candidates + features + LightGBM re-rank, one code path for eval and service.

`RecommendModel.rank_rows` is the only scoring function: offline evaluation calls it on every
evaluated user in batches, `recommend` calls it on one user. Defined behaviour at the edges:

- unknown user (no purchases as of the model's cutoff): the fallback list, i.e. items by number of
  distinct buyers in the last `trending_days`, ties by overall buyers (`source = "popular"`);
- a user with one purchase: ranked like anyone else (own history has one item; kNN, MF and the
  encoder contribute the rest);
- never-purchased items: never recommended (the ranked universe is the items bought at least once),
  but they have text-based vectors, so `similar` works for them and lists them as neighbours;
- `exclude_purchased`: drops items the user bought before the cutoff, then fills up to k.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from components.config_recommend import RecRankerParams
from components.rec_features import FEATURES, RecState, candidate_features, generator_scores, rows_of

_TOKEN = re.compile(r"[a-z]{3,}")
_STOP = frozenset("set of and the with for in to pack box large small mini assorted design".split())


class RecommendModel:
    """A fitted RecState plus a LightGBM ranking booster over its candidate features.

    booster: a lightgbm.Booster over FEATURES or, in a bundle trained before features were added, over
        the subset it was trained on (in FEATURES' order); None ranks candidates by own history, then
        kNN (only before a ranker exists, e.g. in unit tests).
    profiles: optional frame of user profiles (see `user_profiles`), indexed by user id.
    """

    def __init__(self, state: RecState, booster=None, profiles: pd.DataFrame | None = None) -> None:
        self.state = state
        self.booster = booster
        self.profiles = profiles
        # A booster trained before features were added reads its own columns: FEATURES only grows at the end.
        names = list(booster.feature_name()) if booster is not None else list(FEATURES)
        if names != [f for f in FEATURES if f in names] or not set(names) <= set(FEATURES):
            raise ValueError(f"ranker features {names} are not a subset of {list(FEATURES)} in its order")
        self._columns = None if names == list(FEATURES) else np.array([FEATURES.index(f) for f in names])
        # Fallback order: recent buyers, then all-time buyers, then item id (np.lexsort: last key first).
        order = np.lexsort((np.arange(len(state.items)), -state.item_buyers, -state.item_buyers_recent))
        self.popular = order[state.rankable[order]]

    # --- scoring ----------------------------------------------------------------------------------
    def rank_rows(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item positions and scores for known user rows: ((n, k) int64, (n, k) float32).

        Candidates are re-ranked by the booster; slots beyond the candidates are filled from the
        fallback list (score -inf) so every row has min(k, rankable items) entries.
        """
        rows = np.asarray(rows, dtype=np.int64)
        k = min(k, len(self.popular))
        cand_rows, cand_items, x = candidate_features(self.state, rows)
        if self.booster is not None:
            cols = x if self._columns is None else x[:, self._columns]
            score = self.booster.predict(cols, num_threads=1).astype(np.float32)
        else:
            own = x[:, FEATURES.index("own_baskets")]
            score = (own + x[:, FEATURES.index("knn_score")] * 1e-3).astype(np.float32)
        top_items = np.empty((len(rows), k), dtype=np.int64)
        top_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        starts = np.searchsorted(_positions(rows, cand_rows), np.arange(len(rows) + 1))
        for j in range(len(rows)):
            lo, hi = starts[j], starts[j + 1]
            items, sc = cand_items[lo:hi], score[lo:hi]
            order = np.lexsort((items, -sc))[:k]  # score desc, then item position asc
            chosen = items[order]
            n = len(chosen)
            top_items[j, :n], top_scores[j, :n] = chosen, sc[order]
            if n < k:
                rest = self.popular[~np.isin(self.popular, chosen)][: k - n]
                top_items[j, n:] = rest
        return top_items, top_scores

    def rank_users(self, user_ids: Sequence[str], k: int, batch_size: int = 256) -> dict[str, list[str]]:
        """{user: top-k item ids} for many users (evaluation); unknown users get the fallback list."""
        rows = rows_of(self.state, user_ids)
        out: dict[str, list[str]] = {}
        fallback = list(self.state.items[self.popular[:k]])
        known = np.flatnonzero(rows >= 0)
        for start in range(0, len(known), batch_size):
            idx = known[start : start + batch_size]
            items, _ = self.rank_rows(rows[idx], k)
            for j, i in enumerate(idx):
                out[user_ids[i]] = list(self.state.items[items[j]])
        for i in np.flatnonzero(rows < 0):
            out[user_ids[i]] = fallback
        return out

    def generator_ranking(self, name: str, user_ids: Sequence[str], k: int) -> dict[str, list[str]]:
        """{user: top-k item ids} by one generator alone ("own", "tifu", "knn", "mf", "encoder", "trending")."""
        rows = rows_of(self.state, user_ids)
        if (rows < 0).any():
            raise KeyError("generator_ranking is for known users only")
        out = {}
        for start in range(0, len(rows), 256):
            sc = generator_scores(self.state, rows[start : start + 256], [name])[name]
            sc = np.where(np.isfinite(sc), sc, -np.inf)
            top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
            for j, u in enumerate(user_ids[start : start + 256]):
                out[u] = list(self.state.items[top[j]])
        return out

    # --- the service's API ---------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 10, exclude_purchased: bool = False) -> list[dict[str, object]]:
        """Top-k items for one (pseudonymised) user: [{"product_id", "score", "source"}], best first.

        source: "ranker" for re-ranked candidates, "popular" for fallback items (unknown user, or
        slots the candidates could not fill).
        """
        if k <= 0:
            return []
        row = rows_of(self.state, [user_id])[0]
        bought = set()
        if row >= 0 and exclude_purchased:
            bought = set(self.state.stat("baskets")[row].indices.tolist())
        want = k + len(bought)
        if row < 0:
            items, scores = self.popular[:want], np.full(min(want, len(self.popular)), -np.inf, dtype=np.float32)
        else:
            top, sc = self.rank_rows(np.array([row]), want)
            items, scores = top[0], sc[0]
        out = []
        for item, score in zip(items, scores, strict=True):
            if item in bought:
                continue
            popular = not np.isfinite(score)
            out.append(
                {
                    "product_id": str(self.state.items[item]),
                    "score": float(self.state.item_buyers_recent[item]) if popular else float(score),
                    "source": "popular" if popular else "ranker",
                }
            )
            if len(out) == k:
                break
        return out

    def similar(self, product_id: str, k: int = 10) -> list[dict[str, object]]:
        """Items nearest to a product by cosine of the encoder's item vectors (text + purchases).

        Works for never-purchased products (their vector is text-only); neighbours come from the
        whole item universe, the product itself excluded. Unknown product id: KeyError.
        """
        pos = pd.Index(self.state.items).get_indexer([product_id])[0]
        if pos < 0:
            raise KeyError(f"unknown product_id {product_id!r}")
        vec = self.state.encoder_items
        norm = np.linalg.norm(vec, axis=1)
        sim = vec @ vec[pos] / np.maximum(norm * norm[pos], 1e-12)
        sim[pos] = -np.inf
        order = np.lexsort((np.arange(len(sim)), -sim))[:k]
        return [{"product_id": str(self.state.items[i]), "score": float(sim[i])} for i in order]

    def profile(self, user_id: str) -> dict[str, object] | None:
        """The stored profile of a user (summaries + vector), None for unknown users."""
        if self.profiles is None or user_id not in self.profiles.index:
            return None
        row = self.profiles.loc[user_id]
        return {c: (list(map(float, row[c])) if c == "vector" else row[c]) for c in self.profiles.columns}


def _positions(rows: np.ndarray, cand_rows: np.ndarray) -> np.ndarray:
    """Index into `rows` of each candidate's row (candidates are grouped in `rows` order)."""
    first = {r: j for j, r in reversed(list(enumerate(rows.tolist())))}
    return np.fromiter((first[r] for r in cand_rows.tolist()), dtype=np.int64, count=len(cand_rows))


def user_profiles(state: RecState, titles: pd.Series, n_keywords: int = 5) -> pd.DataFrame:
    """User profiles (用户画像): the encoder's user vector plus interpretable summaries.

    titles: product title per item id. Columns: vector (list of float), keywords (top title words,
    weighted by baskets), price_band (low/mid/high by the user's mean unit price vs catalog price
    tertiles), recency_days (days since last purchase, at the cutoff), frequency (baskets),
    monetary (total spend), n_items (distinct items). Indexed by user id.
    """
    ui = state.user_items
    words = (
        titles.reindex(state.items)
        .fillna("")
        .str.lower()
        .map(lambda t: [w for w in _TOKEN.findall(t) if w not in _STOP])
    )
    words_by_pos = words.to_numpy()
    keywords: list[list[str]] = [[] for _ in state.users]
    for user, group in ui.groupby("user"):
        counts: Counter[str] = Counter()
        for item, baskets in zip(group["item"].to_numpy(), group["baskets"].to_numpy(), strict=True):
            for w in words_by_pos[item]:
                counts[w] += float(baskets)
        keywords[user] = [w for w, _ in sorted(counts.items(), key=lambda t: (-t[1], t[0]))[:n_keywords]]
    stats = state.user_stats
    mean_price = stats["monetary"] / stats["quantity"].where(stats["quantity"] > 0)
    cuts = np.nanquantile(state.item_price[state.rankable], [1 / 3, 2 / 3])
    band = np.where(mean_price <= cuts[0], "low", np.where(mean_price <= cuts[1], "mid", "high"))
    return pd.DataFrame(
        {
            "vector": [v.astype(np.float32).tolist() for v in state.encoder_users],
            "keywords": keywords,
            "price_band": band,
            "recency_days": stats["last_days"].to_numpy(np.float32),
            "frequency": stats["baskets"].to_numpy(np.float32),
            "monetary": stats["monetary"].to_numpy(np.float32),
            "n_items": stats["items"].to_numpy(np.float32),
        },
        index=pd.Index(state.users, name="user_id"),
    )


def holdout_mask(user_ids: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Stable pseudo-random user split: True for about `share` of users (md5 of seed:user)."""
    import hashlib

    def u01(u: str) -> float:
        return int(hashlib.md5(f"{seed}:{u}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return np.array([u01(str(u)) < share for u in user_ids], dtype=bool)


def train_rec_ranker(
    folds: Sequence[tuple[RecState, dict[str, set[str]]]],
    config: RecRankerParams,
    seed: int,
    callbacks: Sequence = (),
):
    """A LightGBM ranker (`config.objective`) over one or more folds: candidates of each fold's target
    users, label 1 if bought.

    folds: (state fitted on the history before a cutoff, {user: items bought in the window after it}).
    Stacking folds gives the ranker more users and more moments in time; features are relative to
    each state's cutoff, so they share one scale. Users whose candidates hold no target item carry no
    ranking signal and are dropped. A stable `config.holdout_share` of users is kept aside for early
    stopping on NDCG@K (K = 20, the protocol's cutoff). Returns (booster, info dict).
    """
    from components.ranker import group_sizes, train_lambdarank
    from components.rec_eval import K
    from components.rec_features import candidate_labels

    xs, ys, groups, holds = [], [], [], []
    n_target = n_hit = n_users = 0
    for f, (state, targets) in enumerate(folds):
        all_rows = rows_of(state, list(targets))
        users = [u for u, r in zip(targets, all_rows, strict=True) if r >= 0]
        rows = all_rows[all_rows >= 0]
        cand_rows, cand_items, x = candidate_features(state, rows)
        y = candidate_labels(state, cand_rows, cand_items, targets)
        has_pos = pd.Series(y).groupby(cand_rows).transform("sum").to_numpy() > 0
        xs.append(x[has_pos])
        ys.append(y[has_pos])
        groups.append(cand_rows[has_pos].astype(np.int64) + f * 10**9)  # fold-unique group keys
        holds.append(holdout_mask(state.users[cand_rows[has_pos]], config.holdout_share, seed))
        n_target += sum(len(targets[u]) for u in users)
        n_hit += int(y.sum())
        n_users += len(users)
    x, y, g, hold = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups), np.concatenate(holds)
    pos_groups = np.unique(g)
    if len(pos_groups) < 2:
        raise ValueError("the ranker needs at least two users with a target item among their candidates")
    if hold.all() or not hold.any():
        # Tiny folds: the hash split can leave one side empty; hold out one user (the last) instead.
        hold = g == pos_groups[-1]
    tr, va = ~hold, hold
    booster = train_lambdarank(
        x[tr],
        y[tr],
        group_sizes(g[tr]),
        x[va],
        y[va],
        group_sizes(g[va]),
        FEATURES,
        config,
        seed,
        eval_at=K,
        callbacks=callbacks,
    )
    info = {
        "ranker_folds": len(folds),
        "ranker_users": n_users,
        "ranker_rows": int(tr.sum()),
        "ranker_best_iteration": int(booster.best_iteration),
        # Share of (user, target item) pairs present among the candidates: the re-ranker's ceiling.
        "candidate_recall": n_hit / n_target if n_target else float("nan"),
    }
    return booster, info
