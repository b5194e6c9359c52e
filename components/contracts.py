"""The data contract as Great Expectations 1.x suites: one list of expectations per checked frame.

Cross-table rules (referential integrity, PII, split leakage) become derived boolean or count
columns on a "check frame", so each rule is an ordinary column expectation that Data Docs can
render with its failing rows. Nothing here touches files or clocks: `now` is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import great_expectations.expectations as gxe
import pandas as pd

from components import schema as s
from components.config import ChecksParams, RelevanceScale
from components.privacy import find_pii

IN_CATALOG = "product_in_catalog"
CUTOFF_INSIDE = "cutoff_inside_data"
QUERY_KNOWN = "query_in_queries"
HAS_PII = "text_has_pii"
N_SPLITS = "n_splits"
SPLIT_QUERIES = "queries"
SPLIT_ROWS = "rows"


@dataclass(frozen=True)
class CheckedFrame:
    """A frame and the expectations it must meet, under a suite name shown in reports."""

    name: str
    frame: pd.DataFrame
    expectations: list = field(default_factory=list)


# Free text the PII rule reads, per table (checks.pii.<table> decides: reject or redact).
PII_COLUMNS = {s.CATALOG: (s.TITLE, s.DESCRIPTION, s.BRAND, s.CATEGORY), s.QUERIES: (s.QUERY,)}


def hint(text: str) -> dict:
    """An expectation's `meta`: what to change when it fails (the failure summary prints it)."""
    return {"hint": text}


def _required_columns(table: str) -> list:
    return [gxe.ExpectColumnToExist(column=c.name) for c in s.TABLES[table] if c.required]


def _pii_expectation(table: str, policy: str) -> gxe.ExpectColumnValuesToBeInSet:
    fix = (
        f"checks.pii.{table}: redact masks them ([email], [phone]) and goes on"
        if policy == "reject"
        else "redaction should have masked every match (a bug: please report it)"
    )
    return gxe.ExpectColumnValuesToBeInSet(
        column=HAS_PII, value_set=[False], meta=hint(f"e-mail addresses or phone numbers in {table} text; {fix}")
    )


def _pii_flag(frame: pd.DataFrame, text_columns: Iterable[str]) -> pd.Series:
    flag = pd.Series(False, index=frame.index)
    for col in text_columns:
        if col in frame.columns:
            flag |= find_pii(frame[col])
    return flag


def catalog_check(catalog: pd.DataFrame, c: ChecksParams) -> CheckedFrame:
    frame = catalog.assign(**{HAS_PII: _pii_flag(catalog, PII_COLUMNS[s.CATALOG])})
    exp = _required_columns(s.CATALOG) + [
        gxe.ExpectTableRowCountToBeBetween(min_value=c.min_products, meta=hint("checks.min_products")),
        gxe.ExpectColumnValuesToNotBeNull(column=s.PRODUCT_ID),
        gxe.ExpectColumnValuesToBeUnique(column=s.PRODUCT_ID),
        gxe.ExpectColumnValuesToNotBeNull(column=s.TITLE),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column=s.TITLE, min_value=1, max_value=c.max_title_chars, meta=hint("checks.max_title_chars")
        ),
        _pii_expectation(s.CATALOG, c.pii.catalog),
    ]
    if s.PRICE in frame.columns:
        exp.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=s.PRICE,
                min_value=0,
                max_value=c.max_price,
                strict_min=True,
                meta=hint("price must be > 0 and at most checks.max_price"),
            )
        )
    return CheckedFrame(s.CATALOG, frame, exp)


def queries_check(queries: pd.DataFrame, c: ChecksParams) -> CheckedFrame:
    frame = queries.assign(**{HAS_PII: _pii_flag(queries, PII_COLUMNS[s.QUERIES])})
    exp = _required_columns(s.QUERIES) + [
        gxe.ExpectTableRowCountToBeBetween(min_value=c.min_queries, meta=hint("checks.min_queries")),
        gxe.ExpectColumnValuesToNotBeNull(column=s.QUERY_ID),
        gxe.ExpectColumnValuesToBeUnique(column=s.QUERY_ID),
        gxe.ExpectColumnValuesToNotBeNull(column=s.QUERY),
        gxe.ExpectColumnValueLengthsToBeBetween(column=s.QUERY, min_value=1),
        _pii_expectation(s.QUERIES, c.pii.queries),
    ]
    return CheckedFrame(s.QUERIES, frame, exp)


def judgments_check(
    judgments: pd.DataFrame,
    catalog: pd.DataFrame,
    queries: pd.DataFrame,
    c: ChecksParams,
    scale: RelevanceScale | None = None,
) -> CheckedFrame:
    """`scale`: the judgment scale (data.search.relevance; default EVALUATION.md's 1..3)."""
    scale = scale or RelevanceScale()
    lo, hi = (scale.grade_at(share) for share in c.relevance_mean_band)
    frame = judgments.assign(
        **{
            IN_CATALOG: judgments[s.PRODUCT_ID].isin(set(catalog[s.PRODUCT_ID])),
            QUERY_KNOWN: judgments[s.QUERY_ID].isin(set(queries[s.QUERY_ID])),
        }
    )
    exp = _required_columns(s.JUDGMENTS) + [
        gxe.ExpectTableRowCountToBeBetween(min_value=c.min_judgments, meta=hint("checks.min_judgments")),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[s.QUERY_ID, s.PRODUCT_ID]),
        gxe.ExpectColumnValuesToNotBeNull(column=s.RELEVANCE),
        gxe.ExpectColumnValuesToBeBetween(
            column=s.RELEVANCE,
            min_value=scale.min,
            max_value=scale.max,
            meta=hint("data.search.relevance.min / .max: the judgment scale of your data"),
        ),
        # A mean far from the usual band means the scale was misread (0-based, 1-5, inverted).
        gxe.ExpectColumnMeanToBeBetween(
            column=s.RELEVANCE,
            min_value=lo,
            max_value=hi,
            meta=hint(
                f"checks.relevance_mean_band {list(c.relevance_mean_band)}: the mean grade must lie in that share "
                f"of the scale [{scale.min:g}, {scale.max:g}]; a mean outside it usually means "
                "data.search.relevance.min / .max do not describe the data"
            ),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=IN_CATALOG, value_set=[True], meta=hint("every judged product_id must be in the catalog")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=QUERY_KNOWN, value_set=[True], meta=hint("every judged query_id must be in queries")
        ),
    ]
    return CheckedFrame(s.JUDGMENTS, frame, exp)


def events_check(events: pd.DataFrame, catalog: pd.DataFrame, c: ChecksParams, now: datetime) -> CheckedFrame:
    frame = events.assign(**{IN_CATALOG: events[s.PRODUCT_ID].isin(set(catalog[s.PRODUCT_ID]))})
    exp = _required_columns(s.EVENTS) + [
        gxe.ExpectTableRowCountToBeBetween(min_value=c.min_events, meta=hint("checks.min_events")),
        gxe.ExpectColumnValuesToNotBeNull(column=s.USER_ID),
        gxe.ExpectColumnValuesToNotBeNull(column=s.PRODUCT_ID),
        gxe.ExpectColumnValuesToNotBeNull(column=s.TIMESTAMP),
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column=s.USER_ID, min_value=c.min_users, meta=hint("checks.min_users")
        ),
        gxe.ExpectColumnValuesToBeInSet(column=s.EVENT_TYPE, value_set=list(s.EVENT_TYPES)),
        gxe.ExpectColumnMaxToBeBetween(
            column=s.TIMESTAMP,
            max_value=pd.Timestamp(now).isoformat(),
            meta=hint("events in the future: timestamps must be timezone-naive local times, not after now"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=s.QUANTITY,
            min_value=0,
            max_value=c.max_quantity,
            strict_min=True,
            meta=hint("quantity must be > 0 and at most checks.max_quantity"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=s.PRICE,
            min_value=0,
            max_value=c.max_price,
            strict_min=True,
            meta=hint("price must be > 0 and at most checks.max_price"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=IN_CATALOG, value_set=[True], meta=hint("every event's product_id must be in the catalog")
        ),
    ]
    return CheckedFrame(s.EVENTS, frame, exp)


def search_split_checks(queries_with_split: pd.DataFrame, parts: dict[str, pd.DataFrame]) -> list[CheckedFrame]:
    """No query in two splits, every split non-empty."""
    labelled = pd.concat([p[[s.QUERY_ID]].assign(**{s.SPLIT: name}) for name, p in parts.items()], ignore_index=True)
    per_query = labelled.groupby(s.QUERY_ID)[s.SPLIT].nunique().rename(N_SPLITS).reset_index()
    sizes = pd.DataFrame(
        {
            s.SPLIT: list(parts),
            SPLIT_QUERIES: [p[s.QUERY_ID].nunique() for p in parts.values()],
            SPLIT_ROWS: [len(p) for p in parts.values()],
        }
    )
    return [
        CheckedFrame(
            "search_split_queries",
            queries_with_split,
            [
                gxe.ExpectColumnValuesToBeUnique(column=s.QUERY_ID),
                gxe.ExpectColumnValuesToBeInSet(column=s.SPLIT, value_set=["train", "valid", "test"]),
            ],
        ),
        CheckedFrame(
            "search_split_leakage",
            per_query,
            [gxe.ExpectColumnValuesToBeBetween(column=N_SPLITS, min_value=1, max_value=1)],
        ),
        CheckedFrame(
            "search_split_sizes", sizes, [gxe.ExpectColumnValuesToBeBetween(column=SPLIT_QUERIES, min_value=1)]
        ),
    ]


def recommend_cutoff_check(events: pd.DataFrame, folds: Iterable, window_days: int) -> CheckedFrame:
    """Each fold's cutoff inside the events' time range (some history before it, some events from it on).

    Checked before the split's own suites, so a cutoff outside the data (another year's log with the
    shipped 2011 cutoffs) fails once, naming the keys and the data's date range.
    """
    ts = events[s.TIMESTAMP]
    first, last = pd.Timestamp(ts.min()), pd.Timestamp(ts.max())
    frame = pd.DataFrame(
        [
            {
                "fold": fold.name,
                "cutoff": pd.Timestamp(fold.cutoff).isoformat(),
                "first_event": first.isoformat(),
                "last_event": last.isoformat(),
                CUTOFF_INSIDE: bool(first < pd.Timestamp(fold.cutoff) <= last),
            }
            for fold in folds
        ]
    )
    fix = (
        f"the events run from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}: set data.recommend.test_cutoff "
        f"and data.recommend.valid_cutoff inside that range, or both to null to test on the data's last "
        f"{window_days} days and validate on the {window_days} before (split.recommend_window_days)"
    )
    inside = gxe.ExpectColumnValuesToBeInSet(column=CUTOFF_INSIDE, value_set=[True], meta=hint(fix))
    return CheckedFrame("recommend_cutoffs", frame, [inside])


def recommend_split_checks(folds: Iterable, pieces: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> list[CheckedFrame]:
    """History strictly before each cutoff, window inside [cutoff, end], both non-empty."""
    out = []
    for fold in folds:
        history, window = pieces[fold.name]
        empty = hint(f"data.recommend.{fold.name}_cutoff {fold.cutoff:%Y-%m-%d}: no events on one side of it")
        out.append(
            CheckedFrame(
                f"recommend_{fold.name}_history",
                history,
                [
                    gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=empty),
                    gxe.ExpectColumnMaxToBeBetween(
                        column=s.TIMESTAMP, max_value=pd.Timestamp(fold.cutoff).isoformat(), strict_max=True
                    ),
                ],
            )
        )
        window_exp = [
            gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=empty),
            gxe.ExpectColumnMinToBeBetween(column=s.TIMESTAMP, min_value=pd.Timestamp(fold.cutoff).isoformat()),
        ]
        if fold.end is not None:
            window_exp.append(
                gxe.ExpectColumnMaxToBeBetween(column=s.TIMESTAMP, max_value=pd.Timestamp(fold.end).isoformat())
            )
        out.append(CheckedFrame(f"recommend_{fold.name}_window", window, window_exp))
    return out
