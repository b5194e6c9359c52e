"""Tiny slices of the real shared datasets, written in their original formats, for pipeline tests."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd

from components.config import Params, parse_params

SMALL_CHECKS = {"min_products": 10, "min_queries": 10, "min_judgments": 20, "min_events": 100, "min_users": 5}


def write_mini_datasets(root: Path, homedepot: pd.DataFrame, online_retail: pd.DataFrame, customers: int = 60) -> Path:
    """homedepot/train.csv.zip (first 800 rows) and online_retail/online_retail.parquet (a customer sample)."""
    (root / "homedepot").mkdir(parents=True, exist_ok=True)
    (root / "online_retail").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "homedepot" / "train.csv.zip", "w") as zf:
        zf.writestr("train.csv", homedepot.head(800).to_csv(index=False).encode("latin-1"))
    ids = online_retail["CustomerID"].dropna().drop_duplicates().sample(customers, random_state=0)
    # keep the anonymous rows of the same invoices too, so the cleaning has something to drop
    anonymous = online_retail[online_retail["CustomerID"].isna()].head(2000)
    sample = pd.concat([online_retail[online_retail["CustomerID"].isin(ids)], anonymous])
    sample.to_parquet(root / "online_retail" / "online_retail.parquet", index=False)
    return root


def small_params(data_dir: Path, **overrides) -> Params:
    raw = {
        "data": {
            "search": {"source": "homedepot", "path": str(data_dir)},
            "recommend": {
                "source": "online_retail",
                "path": str(data_dir),
                "test_cutoff": "2011-11-09T00:00:00",  # EVALUATION.md's, as params.yaml has them
                "valid_cutoff": "2011-10-09T00:00:00",
            },
        },
        "checks": SMALL_CHECKS,
    }
    raw.update(overrides)
    return parse_params(raw)
