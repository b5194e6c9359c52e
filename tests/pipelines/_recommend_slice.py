"""A tiny real slice of UCI Online Retail for the recommendation pipeline tests (imported explicitly).

Every event of `n_customers` customers (fixed seed) who bought both before the valid cutoff and in
the test window, cleaned by the project's own adapter and split by its own temporal folds, written
where the steps read them: data/validated/recommend/catalog.parquet and data/split/recommend/*.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from artifacts.paths import Paths
from components import schema as s
from components.adapters import adapt_online_retail
from components.splits import split_events, temporal_folds

VALID_CUTOFF = pd.Timestamp("2011-10-09")
TEST_CUTOFF = pd.Timestamp("2011-11-09")


def write_recommend_slice(raw: pd.DataFrame, paths: Paths, n_customers: int = 200, seed: int = 0) -> dict:
    """Write the slice under paths.root; returns counts."""
    retail = raw.dropna(subset=["CustomerID"])
    when = pd.to_datetime(retail["InvoiceDate"])
    early = set(retail.loc[when < VALID_CUTOFF - pd.Timedelta(days=31), "CustomerID"])
    late = set(retail.loc[when >= TEST_CUTOFF, "CustomerID"])
    both = np.array(sorted(early & late))
    chosen = set(np.random.default_rng(seed).choice(both, size=min(n_customers, len(both)), replace=False))
    tables = adapt_online_retail(raw[raw["CustomerID"].isin(chosen)], salt="test-salt")
    events, catalog = tables[s.EVENTS], tables[s.CATALOG]
    (paths.validated / "recommend").mkdir(parents=True, exist_ok=True)
    catalog.to_parquet(paths.validated / "recommend" / "catalog.parquet", index=False)
    folds = temporal_folds(events, TEST_CUTOFF.to_pydatetime(), VALID_CUTOFF.to_pydatetime())
    out = paths.split / "recommend"
    for fold in folds:
        history, window = split_events(events, fold)
        (out / fold.name).mkdir(parents=True, exist_ok=True)
        history.to_parquet(out / fold.name / "history.parquet", index=False)
        window.to_parquet(out / fold.name / "window.parquet", index=False)
    (out / "folds.json").write_text(
        json.dumps(
            {f.name: {"cutoff": f.cutoff.isoformat(), "end": f.end.isoformat() if f.end else None} for f in folds}
        )
    )
    return {"events": len(events), "items": len(catalog), "users": int(events[s.USER_ID].nunique())}
