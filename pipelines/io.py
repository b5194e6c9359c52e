"""Reading and writing canonical tables (Parquet, or CSV for data a user brings)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from artifacts.paths import Paths
from components import schema as s


def read_table(folder: Path, table: str, required: bool = True) -> pd.DataFrame | None:
    """Read <folder>/<table>.parquet or .csv and conform it to the canonical schema."""
    folder = Path(folder)
    for suffix, reader in ((".parquet", _read_parquet), (".csv", _read_csv)):
        path = folder / f"{table}{suffix}"
        if path.exists():
            return s.conform(table, reader(path, table))
    if required:
        raise FileNotFoundError(f"table '{table}' not found: expected {folder}/{table}.parquet or {table}.csv")
    return None


def _read_parquet(path: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(path)


def _read_csv(path: Path, table: str) -> pd.DataFrame:
    """A CSV with the schema's string columns read as text: ids keep their leading zeros ("00012"), and
    only an empty field is missing (a title "NA" stays "NA")."""
    text = {c.name: "string" for c in s.TABLES[table] if c.kind == "string"}
    return pd.read_csv(path, dtype=text, keep_default_na=False, na_values=[""])


def write_tables(folder: Path, tables: dict[str, pd.DataFrame]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)


def read_tables(folder: Path, names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    return {name: read_table(folder, name) for name in names}


def read_fold(paths: Paths, fold: str, window: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(history, window) of one fold from data/split/recommend/<fold>/."""
    folder = paths.split / "recommend" / fold
    hist = s.conform(s.EVENTS, pd.read_parquet(folder / "history.parquet"))
    return hist, (s.conform(s.EVENTS, pd.read_parquet(folder / "window.parquet")) if window else None)
