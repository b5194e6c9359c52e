"""The recommendation bundle: one folder holding everything `RecommendModel` needs, no pickles.

Layout (models/recommend/bundle/):
  manifest.json           format, cutoff, candidate config, feature names, counts, file list
  item_ids.npy, user_ids.npy                         ids as fixed-width unicode
  items.npz               per-item arrays: rankable, price, buyers, buyers_recent, age_days,
                          text (text embeddings), knn_index, knn_sim, encoder (item vectors)
  mf.safetensors          BPR factors: users (n_users, d + 1), items (n_items, d + 1)
  user_encoder.safetensors user encoder weights (text buffers excluded; items.npz holds them)
  user_vectors.npy        encoder user vectors (n_users, d), the profile vectors
  user_items.parquet      per (user, item) purchase statistics; user_stats.parquet per user
  profiles.parquet        user profiles (vector + keywords, price band, recency, frequency, monetary)
  popular.json            the fallback list for unknown users (item ids, best first)
  ranker.txt              LightGBM booster, native text format
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.config_recommend import CandidateParams
from components.rec_features import FEATURES, RecState
from components.recommend_model import RecommendModel

FORMAT = "hatchery-recommend/1"
_ITEM_ARRAYS = (
    "rankable",
    "item_price",
    "item_buyers",
    "item_buyers_recent",
    "item_age_days",
    "text",
    "knn_index",
    "knn_sim",
    "encoder_items",
)


def save_recommend_bundle(model: RecommendModel, folder: Path, extra: dict | None = None) -> None:
    """Write the bundle into an existing empty folder (callers stage it: artifacts.files.staged_dir)."""
    from safetensors.numpy import save_file

    st = model.state
    folder = Path(folder)
    np.save(folder / "item_ids.npy", st.items.astype(str))
    np.save(folder / "user_ids.npy", st.users.astype(str))
    np.savez(folder / "items.npz", **{name: getattr(st, name) for name in _ITEM_ARRAYS})
    save_file(
        {"users": np.ascontiguousarray(st.mf_users), "items": np.ascontiguousarray(st.mf_items)},
        folder / "mf.safetensors",
    )
    save_file({k: np.ascontiguousarray(v) for k, v in st.encoder_weights.items()}, folder / "user_encoder.safetensors")
    np.save(folder / "user_vectors.npy", st.encoder_users)
    st.user_items.to_parquet(folder / "user_items.parquet", index=False)
    st.user_stats.to_parquet(folder / "user_stats.parquet", index=False)
    if model.profiles is not None:
        model.profiles.to_parquet(folder / "profiles.parquet")
    (folder / "popular.json").write_text(json.dumps([str(i) for i in st.items[model.popular]]) + "\n")
    if model.booster is not None:
        model.booster.save_model(str(folder / "ranker.txt"))
    manifest = {
        "format": FORMAT,
        "as_of": str(pd.Timestamp(st.as_of)),
        "features": list(FEATURES),
        "candidates": st.config.model_dump(),
        "n_items": len(st.items),
        "n_rankable": int(st.rankable.sum()),
        "n_users": len(st.users),
        "fallback": "unknown users get popular.json: distinct buyers in the last trending_days, then all-time",
        **(extra or {}),
    }
    manifest["files"] = sorted(p.name for p in folder.iterdir())
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


def load_recommend_bundle(folder: Path | str) -> RecommendModel:
    """Rebuild the RecommendModel from a bundle folder (no training, no pickles)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder} is not a {FORMAT} bundle (format={manifest.get('format')!r})")
    items = np.load(folder / "item_ids.npy", allow_pickle=False).astype(object)
    users = np.load(folder / "user_ids.npy", allow_pickle=False).astype(object)
    arrays = np.load(folder / "items.npz", allow_pickle=False)
    mf = load_file(folder / "mf.safetensors")
    state = RecState(
        as_of=np.datetime64(pd.Timestamp(manifest["as_of"]).to_datetime64(), "ns"),
        items=items,
        **{name: arrays[name] for name in _ITEM_ARRAYS if name not in ("rankable", "text")},
        rankable=arrays["rankable"].astype(bool),
        text=arrays["text"],
        users=users,
        user_items=pd.read_parquet(folder / "user_items.parquet"),
        user_stats=pd.read_parquet(folder / "user_stats.parquet"),
        mf_users=mf["users"],
        mf_items=mf["items"],
        encoder_users=np.load(folder / "user_vectors.npy", allow_pickle=False),
        config=CandidateParams(**manifest["candidates"]),
        encoder_weights=load_file(folder / "user_encoder.safetensors"),
    )
    booster = None
    if (folder / "ranker.txt").exists():
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(folder / "ranker.txt"))
    profiles = pd.read_parquet(folder / "profiles.parquet") if (folder / "profiles.parquet").exists() else None
    return RecommendModel(state, booster, profiles)
