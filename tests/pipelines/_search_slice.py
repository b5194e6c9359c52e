"""A tiny real slice of Home Depot for the search pipeline tests (not a conftest: imported explicitly).

Built from the raw shared dataset with the project's own adapter and split, then cut to about
`n_products` products and `n_queries` queries (at least 10 valid and 10 test queries), so every
step runs end to end in seconds.
"""

from __future__ import annotations

import pandas as pd

from artifacts.paths import Paths
from components import schema as s
from components.adapters import adapt_homedepot
from components.splits import split_judgments, split_queries


def write_search_slice(raw: pd.DataFrame, paths: Paths, n_products: int = 300, n_queries: int = 60) -> dict:
    """Write data/validated/search/catalog.parquet and data/split/search/* under paths.root."""
    tables = adapt_homedepot(raw)
    queries = split_queries(tables[s.QUERIES])
    parts = split_judgments(tables[s.JUDGMENTS], queries)
    picked = []
    for name, share in (("valid", 10), ("test", 10), ("train", n_queries - 20)):
        ids = sorted(parts[name][s.QUERY_ID].unique())[:share]
        picked.append(parts[name][parts[name][s.QUERY_ID].isin(ids)])
    judged = set(pd.concat(picked)[s.PRODUCT_ID])
    catalog = tables[s.CATALOG]
    extra = (
        catalog[~catalog[s.PRODUCT_ID].isin(judged)].sort_values(s.PRODUCT_ID).head(max(0, n_products - len(judged)))
    )
    catalog = pd.concat([catalog[catalog[s.PRODUCT_ID].isin(judged)], extra]).sort_values(s.PRODUCT_ID)
    (paths.validated / "search").mkdir(parents=True, exist_ok=True)
    catalog.reset_index(drop=True).to_parquet(paths.validated / "search" / "catalog.parquet", index=False)
    out = paths.split / "search"
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in zip(("valid", "test", "train"), picked, strict=True):
        frame.reset_index(drop=True).to_parquet(out / f"{name}.parquet", index=False)
    keep = set(pd.concat(picked)[s.QUERY_ID])
    queries[queries[s.QUERY_ID].isin(keep)].to_parquet(out / "queries.parquet", index=False)
    return {"products": len(catalog), "queries": len(keep)}
