"""ingest: real datasets (or a user's canonical folder) -> canonical tables in data/ingested/.

Outputs: data/ingested/search/{catalog,queries,judgments}.parquet,
         data/ingested/recommend/{catalog,events}.parquet
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from artifacts.files import staged_dir
from artifacts.paths import Paths, check_data_path, pseudonym_salt
from components import schema as s
from components.adapters import adapt_homedepot, adapt_online_retail
from components.config import Params, SourceParams
from components.privacy import pseudonymize
from pipelines.common import load_params, mlflow_run
from pipelines.io import read_table, write_tables

log = logging.getLogger(__name__)

STEP = "ingest"


# The file each built-in source reads, inside its dataset folder.
SHIPPED_FILES = {"homedepot": "train.csv.zip", "online_retail": "online_retail.parquet"}


def data_folder(domain: str, source: SourceParams) -> Path:
    """The folder `data.<domain>.path` names (relative to the project root), checked to exist."""
    folder = check_data_path(source.path, f"data.{domain}.path")
    if not folder.is_dir():
        what = (
            "a folder of catalog/queries/judgments/events .parquet or .csv files"
            if source.source == "canonical"
            else f"the folder holding {source.source}'s {SHIPPED_FILES[source.source]}"
        )
        raise FileNotFoundError(f"data.{domain}.path: {source.path} ({folder}) is not a folder; set it to {what}")
    return folder


def source_files(domain: str, source: SourceParams) -> Path:
    """The file or folder a domain is read from (its data version is the hash of this)."""
    folder = data_folder(domain, source)
    if source.source == "canonical":
        return folder
    name = SHIPPED_FILES[source.source]
    # The dataset's own folder, or a folder holding it under the source's name (../shared/datasets).
    for path in (folder / name, folder / source.source / name):
        if path.exists():
            return path
    raise FileNotFoundError(f"data.{domain}.path: {folder} holds neither {name} nor {source.source}/{name}")


def load_domain(domain: str, source: SourceParams, salt: str) -> dict[str, pd.DataFrame]:
    """Canonical tables of one domain ("search" or "recommend") from its configured source."""
    tables_needed = s.SEARCH_TABLES if domain == "search" else s.RECOMMEND_TABLES
    path = source_files(domain, source)
    if source.source == "canonical":
        tables = {name: read_table(path, name) for name in tables_needed}
        if s.EVENTS in tables:
            # Users bring raw ids; only pseudonyms ever leave ingestion.
            tables[s.EVENTS] = tables[s.EVENTS].assign(**{s.USER_ID: pseudonymize(tables[s.EVENTS][s.USER_ID], salt)})
        return tables
    if source.source == "homedepot":
        tables = adapt_homedepot(pd.read_csv(path, encoding="latin-1"))
    else:
        tables = adapt_online_retail(pd.read_parquet(path), salt)
    missing = set(tables_needed) - set(tables)
    if missing:
        raise ValueError(f"source {source.source!r} cannot feed the {domain} domain: it lacks {sorted(missing)}")
    return {name: tables[name] for name in tables_needed}


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


def main() -> int:
    from pipelines.common import configure_logging

    configure_logging()
    try:
        run(load_params(), Paths())
    except (FileNotFoundError, s.SchemaError) as exc:  # what to fix is in the message: no traceback
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
