"""ingest: real datasets (or a user's canonical folder) -> canonical tables in data/ingested/.

Outputs: data/ingested/search/{catalog,queries,judgments}.parquet,
         data/ingested/recommend/{catalog,events}.parquet
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from artifacts.files import staged_dir
from artifacts.paths import Paths, datasets_dir, pseudonym_salt
from components import schema as s
from components.adapters import adapt_homedepot, adapt_online_retail
from components.config import Params, SourceParams
from components.privacy import pseudonymize
from pipelines.common import load_params, mlflow_run
from pipelines.io import read_table, write_tables

log = logging.getLogger(__name__)

STEP = "ingest"


def load_domain(domain: str, source: SourceParams, salt: str) -> dict[str, pd.DataFrame]:
    """Canonical tables of one domain ("search" or "recommend") from its configured source."""
    tables_needed = s.SEARCH_TABLES if domain == "search" else s.RECOMMEND_TABLES
    if source.source == "canonical":
        folder = Path(source.path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"data.{domain}.path {folder} is not a folder")
        tables = {name: read_table(folder, name) for name in tables_needed}
        if s.EVENTS in tables:
            # Users bring raw ids; only pseudonyms ever leave ingestion.
            tables[s.EVENTS] = tables[s.EVENTS].assign(**{s.USER_ID: pseudonymize(tables[s.EVENTS][s.USER_ID], salt)})
        return tables
    root = datasets_dir(source.path)
    if source.source == "homedepot":
        raw = pd.read_csv(root / "homedepot" / "train.csv.zip", encoding="latin-1")
        tables = adapt_homedepot(raw)
    else:
        raw = pd.read_parquet(root / "online_retail" / "online_retail.parquet")
        tables = adapt_online_retail(raw, salt)
    missing = set(tables_needed) - set(tables)
    if missing:
        raise ValueError(f"source {source.source!r} cannot feed the {domain} domain: it lacks {sorted(missing)}")
    return {name: tables[name] for name in tables_needed}


def source_files(domain: str, source: SourceParams) -> Path:
    """The file or folder a domain is read from (its data version is the hash of this)."""
    if source.source == "canonical":
        return Path(source.path).expanduser()
    root = datasets_dir(source.path)
    return (
        root / "homedepot" / "train.csv.zip"
        if source.source == "homedepot"
        else root / "online_retail" / "online_retail.parquet"
    )


def run(params: Params, paths: Paths) -> dict[str, dict[str, int]]:
    """Ingest both domains; returns row counts per domain and table."""
    salt = pseudonym_salt()
    counts: dict[str, dict[str, int]] = {}
    inputs = [source_files(d, getattr(params.data, d)) for d in ("search", "recommend")]
    with mlflow_run(STEP, params, paths, inputs=inputs, sections=("data",)) as _:
        import mlflow

        for domain in ("search", "recommend"):
            source = getattr(params.data, domain)
            tables = load_domain(domain, source, salt)
            with staged_dir(paths.ingested / domain) as out:
                write_tables(out, tables)
            counts[domain] = {name: len(frame) for name, frame in tables.items()}
            mlflow.log_metrics({f"{domain}.{name}.rows": n for name, n in counts[domain].items()})
            log.info("ingested %s from %s: %s", domain, source.source, counts[domain])
    return counts


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())
