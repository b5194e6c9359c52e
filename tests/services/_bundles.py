"""Tiny search bundles for the service tests, built with the search helper's own code (not a conftest).

The real slice (tests/pipelines/_search_slice.py) cut smaller, the pretrained query tower as is (no
fine-tuning: these tests are about serving, not quality), the search step's `assemble_model` and
`labelled_rows`, a few LightGBM rounds, and `save_search_bundle`. Two bundles differ only in the
ranker's seed and rounds, so champion and challenger are distinguishable versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from artifacts.paths import Paths
from components import schema as s
from pipelines.common import load_params
from tests.pipelines._search_slice import write_search_slice


def build_search_bundles(raw: pd.DataFrame, root: Path, names: tuple[str, ...] = ("v1", "v2")) -> dict[str, Path]:
    """Write <root>/bundles/<name>/ for each name; returns name -> bundle folder. Data under <root>/data."""
    from artifacts.search_bundle import save_search_bundle
    from components.ann import build_index
    from components.config_base import LambdaRankParams
    from components.encoder import DEFAULT_ENCODER, encode_texts, load_encoder, resolve_encoder_path
    from components.ranker import train_lambdarank
    from components.search_features import FEATURE_NAMES, linear_label_gain
    from pipelines.io import read_table
    from pipelines.train_ranker import assemble_model, labelled_rows

    paths = Paths(root=Path(root))
    write_search_slice(raw, paths, n_products=120, n_queries=40)
    params = load_params()
    catalog = read_table(paths.validated / "search", s.CATALOG)
    train = pd.read_parquet(paths.split / "search" / "train.parquet")
    valid = pd.read_parquet(paths.split / "search" / "valid.parquet")
    encoder, tokenizer = load_encoder(DEFAULT_ENCODER)
    emb = encode_texts(encoder, tokenizer, catalog[s.TITLE].fillna("").astype(str).tolist(), 64, 32)
    index = build_index(emb)
    model = assemble_model(params, catalog, train, index, encoder, tokenizer)
    x_tr, y_tr, g_tr, _ = labelled_rows(model, train, 7)
    x_va, y_va, g_va, _ = labelled_rows(model, valid, 7)
    out = {}
    for i, name in enumerate(names):
        cfg = LambdaRankParams(
            num_leaves=7,
            learning_rate=0.1,
            n_estimators=10 + 10 * i,
            min_data_in_leaf=5,
            feature_fraction=0.9,
            early_stopping_rounds=100,
        )
        booster = train_lambdarank(
            x_tr, y_tr, g_tr, x_va, y_va, g_va, FEATURE_NAMES, cfg, seed=i, eval_at=10, label_gain=linear_label_gain(7)
        )
        folder = paths.root / "bundles" / name
        settings = {
            "feature_names": list(FEATURE_NAMES),
            "query_max_length": params.search.query_max_length,
            "candidates_per_source": params.search.candidates_per_source,
            "rrf_k": params.search.rrf_k,
        }
        save_search_bundle(
            folder,
            catalog,
            Path(resolve_encoder_path(DEFAULT_ENCODER)),
            index,
            model.bm25,
            model.bm25_expanded,
            model.priors,
            booster,
            settings,
        )
        out[name] = folder
    assert np.load(out[names[0]] / "product_ids.npy").shape[0] == len(catalog)
    return out
