"""Adapters from the shared real datasets into the canonical schema (cleaning per EVALUATION.md)."""

from __future__ import annotations

import pandas as pd

from components import schema as s
from components.privacy import pseudonymize

# EVALUATION.md: item ids are upper-cased stock codes of five digits and up to two letters;
# POST, M, D, BANK CHARGES and the like are fees, not products.
PRODUCT_CODE = r"^\d{5}[A-Z]{0,2}$"


def adapt_homedepot(raw: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Home Depot train.csv (product_uid, product_title, search_term, relevance) -> catalog/queries/judgments.

    A search term that normalises to the same text as another is the same query; a product judged
    twice for one normalised query keeps the mean of its labels.
    """
    frame = raw.assign(
        **{
            s.PRODUCT_ID: raw["product_uid"].astype("int64").astype(str),
            s.QUERY: raw["search_term"].map(s.normalize_query),
        }
    )
    frame[s.QUERY_ID] = frame[s.QUERY].map(s.query_id_of)
    catalog = (
        frame.drop_duplicates(s.PRODUCT_ID)[[s.PRODUCT_ID, "product_title"]]
        .rename(columns={"product_title": s.TITLE})
        .sort_values(s.PRODUCT_ID)
    )
    queries = frame.drop_duplicates(s.QUERY_ID)[[s.QUERY_ID, s.QUERY]].sort_values(s.QUERY_ID)
    judgments = (
        frame.groupby([s.QUERY_ID, s.PRODUCT_ID], as_index=False)["relevance"]
        .mean()
        .rename(columns={"relevance": s.RELEVANCE})
    )
    return {
        s.CATALOG: s.conform(s.CATALOG, catalog.reset_index(drop=True)),
        s.QUERIES: s.conform(s.QUERIES, queries.reset_index(drop=True)),
        s.JUDGMENTS: s.conform(s.JUDGMENTS, judgments),
    }


def adapt_online_retail(raw: pd.DataFrame, salt: str) -> dict[str, pd.DataFrame]:
    """UCI Online Retail transactions -> catalog/events, with EVALUATION.md's cleaning.

    Dropped: rows without CustomerID, cancellation invoices (C...), non-positive quantity or
    price, and non-product stock codes. User ids are pseudonymised with `salt`.
    """
    code = raw["StockCode"].astype(str).str.upper().str.strip()
    is_product = code.str.match(PRODUCT_CODE)
    description = raw["Description"].astype("string").replace("nan", pd.NA).str.strip()

    keep = (
        raw["CustomerID"].notna()
        & ~raw["InvoiceNo"].astype(str).str.startswith("C")
        & (raw["Quantity"] > 0)
        & (raw["UnitPrice"] > 0)
        & is_product
    )
    clean = raw.loc[keep]
    events = pd.DataFrame(
        {
            s.USER_ID: pseudonymize(clean["CustomerID"].astype("int64"), salt),
            s.PRODUCT_ID: code[keep],
            s.EVENT_TYPE: s.PURCHASE,
            s.TIMESTAMP: clean["InvoiceDate"],
            s.QUANTITY: clean["Quantity"].astype(float),
            s.PRICE: clean["UnitPrice"].astype(float),
            s.SESSION_ID: clean["InvoiceNo"].astype(str),
        }
    ).sort_values([s.TIMESTAMP, s.SESSION_ID, s.PRODUCT_ID], kind="stable")

    # The catalog's title is a product's most frequent description over all rows of its code
    # (also rows dropped above: a description is product data, not behaviour).
    described = pd.DataFrame({s.PRODUCT_ID: code, s.TITLE: description})[is_product].dropna()
    titles = (
        described.groupby([s.PRODUCT_ID, s.TITLE])
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["n", s.TITLE], ascending=[False, True])
        .drop_duplicates(s.PRODUCT_ID)
        .set_index(s.PRODUCT_ID)[s.TITLE]
    )
    prices = events.groupby(s.PRODUCT_ID)[s.PRICE].median()
    catalog = pd.DataFrame({s.PRODUCT_ID: sorted(events[s.PRODUCT_ID].unique())})
    catalog[s.TITLE] = catalog[s.PRODUCT_ID].map(titles)
    catalog[s.PRICE] = catalog[s.PRODUCT_ID].map(prices)
    return {
        s.CATALOG: s.conform(s.CATALOG, catalog),
        s.EVENTS: s.conform(s.EVENTS, events.reset_index(drop=True)),
    }
