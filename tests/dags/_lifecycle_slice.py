"""A tiny slice of the real shared datasets, laid out like them, for the end-to-end lifecycle test.

Search: every judgment of `n_queries` search terms (chosen with a fixed seed) so the md5 split still
puts about a tenth in test. Recommend: every event of `n_customers` customers active both before
and after the test cutoff, so each has history and a target window.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

TEST_CUTOFF = pd.Timestamp("2011-11-09")


def write_slice(
    homedepot_raw: pd.DataFrame,
    online_retail_raw: pd.DataFrame,
    out: Path,
    n_queries: int = 400,
    n_customers: int = 150,
    seed: int = 0,
) -> Path:
    """Write <out>/homedepot/train.csv.zip and <out>/online_retail/online_retail.parquet; return out."""
    rng = np.random.default_rng(seed)
    terms = homedepot_raw["search_term"].drop_duplicates().to_numpy()
    keep = set(rng.choice(terms, size=min(n_queries, len(terms)), replace=False))
    search = homedepot_raw[homedepot_raw["search_term"].isin(keep)]
    (out / "homedepot").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / "homedepot" / "train.csv.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train.csv", search.to_csv(index=False).encode("latin-1", errors="replace"))

    retail = online_retail_raw.dropna(subset=["CustomerID"])
    when = pd.to_datetime(retail["InvoiceDate"])
    before = set(retail.loc[when < TEST_CUTOFF, "CustomerID"])
    after = set(retail.loc[when >= TEST_CUTOFF, "CustomerID"])
    both = np.array(sorted(before & after))
    chosen = set(rng.choice(both, size=min(n_customers, len(both)), replace=False))
    (out / "online_retail").mkdir(parents=True, exist_ok=True)
    online_retail_raw[online_retail_raw["CustomerID"].isin(chosen)].to_parquet(
        out / "online_retail" / "online_retail.parquet", index=False
    )
    return out
