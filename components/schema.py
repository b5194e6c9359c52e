"""The canonical data contract: four tables every search and recommendation team has.

Every adapter writes these columns and every later step reads only these, so a user who brings
their own data in this schema gets the whole lifecycle unchanged. Ids are strings everywhere
(Home Depot's integer uids and Online Retail's stock codes alike) so joins never depend on dtype.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

# --- column names: the only place they are spelled out -------------------------------------------
PRODUCT_ID = "product_id"
TITLE = "title"
DESCRIPTION = "description"
BRAND = "brand"
CATEGORY = "category"
PRICE = "price"

QUERY_ID = "query_id"
QUERY = "query"

RELEVANCE = "relevance"

USER_ID = "user_id"
EVENT_TYPE = "event_type"
TIMESTAMP = "timestamp"
QUANTITY = "quantity"
SESSION_ID = "session_id"

SPLIT = "split"

# --- per-unit evaluation tables: one row per test unit, one `<model>__<metric>` column per score -----
UNIT_COLUMN_SEP = "__"


def unit_column(model: str, metric: str) -> str:
    """The per-unit table's column of one model's metric ("bm25", "ndcg_at_10" -> "bm25__ndcg_at_10")."""
    return f"{model}{UNIT_COLUMN_SEP}{metric}"


def models_with(columns, metric: str) -> list[str]:
    """The models that have a `metric` column, in column order."""
    suffix = f"{UNIT_COLUMN_SEP}{metric}"
    return [c.removesuffix(suffix) for c in columns if c.endswith(suffix)]


# --- table names -----------------------------------------------------------------------------------
CATALOG = "catalog"
QUERIES = "queries"
JUDGMENTS = "judgments"
EVENTS = "events"

SEARCH_TABLES = (CATALOG, QUERIES, JUDGMENTS)
RECOMMEND_TABLES = (CATALOG, EVENTS)

PURCHASE = "purchase"


@dataclass(frozen=True)
class Column:
    """One column of a canonical table: its name, pandas dtype family and whether it may be absent."""

    name: str
    kind: str  # "string" | "float" | "int" | "datetime"
    required: bool = True
    description: str = ""


TABLES: dict[str, tuple[Column, ...]] = {
    CATALOG: (
        Column(PRODUCT_ID, "string", description="unique product id"),
        Column(TITLE, "string", description="product title, the main product text"),
        Column(DESCRIPTION, "string", required=False, description="longer product text"),
        Column(BRAND, "string", required=False, description="brand name"),
        Column(CATEGORY, "string", required=False, description="category path or leaf"),
        Column(PRICE, "float", required=False, description="list price, > 0, shop currency"),
    ),
    QUERIES: (
        Column(QUERY_ID, "string", description="unique id of the normalised query text"),
        Column(QUERY, "string", description="normalised query text (see normalize_query)"),
    ),
    JUDGMENTS: (
        Column(QUERY_ID, "string", description="query being judged"),
        Column(PRODUCT_ID, "string", description="product being judged, in the catalog"),
        Column(RELEVANCE, "float", description="graded relevance on the dataset's scale"),
    ),
    EVENTS: (
        Column(USER_ID, "string", description="pseudonymised user id"),
        Column(PRODUCT_ID, "string", description="product, in the catalog"),
        Column(EVENT_TYPE, "string", description="purchase | click | view | add_to_cart"),
        Column(TIMESTAMP, "datetime", description="event time, timezone-naive, not in the future"),
        Column(QUANTITY, "float", description="units, > 0"),
        Column(PRICE, "float", description="unit price paid, > 0"),
        Column(SESSION_ID, "string", required=False, description="session or basket id"),
    ),
}

EVENT_TYPES = ("purchase", "click", "view", "add_to_cart")

# Catalog columns that can make a product's searchable text (search.text_fields picks and orders them).
TEXT_FIELDS = (TITLE, BRAND, CATEGORY, DESCRIPTION)


def text_fields_present(catalog: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """The configured text fields this catalog has with at least one non-empty value, in the given order."""
    return [f for f in fields if f in catalog.columns and catalog[f].fillna("").astype(str).str.len().gt(0).any()]


def product_texts(catalog: pd.DataFrame, fields: Sequence[str] = (TITLE,)) -> list[str]:
    """One text per product: its non-empty `fields` joined by a space, in catalog order.

    A catalog with titles only gets exactly its titles back (EVALUATION.md's product text), so
    adding fields to the configuration changes nothing for it.
    """
    present = text_fields_present(catalog, fields)
    if not present:
        return [""] * len(catalog)
    columns = [catalog[f].fillna("").astype(str).tolist() for f in present]
    return [" ".join(v for v in values if v) for values in zip(*columns, strict=True)]


_WHITESPACE = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """Lower-case, strip and collapse whitespace runs (EVALUATION.md's query normalisation)."""
    return _WHITESPACE.sub(" ", str(text).lower().strip())


def query_id_of(query_norm: str) -> str:
    """Stable id of a normalised query: the first 16 hex digits of its md5."""
    import hashlib

    return hashlib.md5(query_norm.encode("utf-8")).hexdigest()[:16]


class SchemaError(ValueError):
    """A table does not follow the canonical schema; the message names the table and columns."""


def conform(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Check a frame against the canonical schema and cast it to canonical dtypes.

    Missing optional columns are left absent; unknown extra columns are kept (a shop's own
    attributes) but never relied on. Raises SchemaError naming every missing required column.
    """
    columns = TABLES[table]
    missing = [c.name for c in columns if c.required and c.name not in frame.columns]
    if missing:
        raise SchemaError(
            f"table '{table}' is missing required column(s) {missing}; "
            f"expected {[c.name for c in columns if c.required]} "
            f"(optional: {[c.name for c in columns if not c.required]}), got {list(frame.columns)}"
        )
    out = frame.copy()
    for col in columns:
        if col.name not in out.columns:
            continue
        try:
            out[col.name] = _cast(out[col.name], col.kind)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"table '{table}' column '{col.name}' is not {col.kind}: {exc}") from exc
    return out


def _cast(series: pd.Series, kind: str) -> pd.Series:
    if kind == "string":
        # Integer-looking floats (1001.0) come from CSV round-trips; keep them as "1001".
        if pd.api.types.is_float_dtype(series):
            series = series.map(lambda v: v if pd.isna(v) else (str(int(v)) if float(v).is_integer() else str(v)))
        return series.astype("string")
    if kind == "float":
        return pd.to_numeric(series, errors="raise").astype("float64")
    if kind == "int":
        return pd.to_numeric(series, errors="raise").astype("int64")
    if kind == "datetime":
        return pd.to_datetime(series, errors="raise").astype("datetime64[ns]")
    raise ValueError(f"unknown column kind {kind!r}")
