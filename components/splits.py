"""EVALUATION.md's splits: search by query hash bucket, recommendation by time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from components import schema as s

TRAIN, VALID, TEST = "train", "valid", "test"


def query_bucket(query_norm: str, buckets: int = 10) -> int:
    """int(md5(query_norm)) % buckets: the bucket EVALUATION.md assigns to a normalised query."""
    return int(hashlib.md5(query_norm.encode("utf-8")).hexdigest(), 16) % buckets


def split_queries(
    queries: pd.DataFrame, buckets: int = 10, valid: tuple[int, ...] = (8,), test: tuple[int, ...] = (9,)
) -> pd.DataFrame:
    """Add a `split` column (train/valid/test) to the queries table; a query lands in exactly one."""
    bucket = queries[s.QUERY].map(lambda q: query_bucket(q, buckets))
    split = pd.Series(TRAIN, index=queries.index, dtype="string")
    split[bucket.isin(valid)] = VALID
    split[bucket.isin(test)] = TEST
    return queries.assign(**{s.SPLIT: split})


def split_judgments(judgments: pd.DataFrame, queries_with_split: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Judgments joined with their query text, one frame per split (query_id, query, product_id, relevance)."""
    joined = judgments.merge(queries_with_split[[s.QUERY_ID, s.QUERY, s.SPLIT]], on=s.QUERY_ID, how="inner")
    cols = [s.QUERY_ID, s.QUERY, s.PRODUCT_ID, s.RELEVANCE]
    return {
        name: joined.loc[joined[s.SPLIT] == name, cols].sort_values([s.QUERY_ID, s.PRODUCT_ID]).reset_index(drop=True)
        for name in (TRAIN, VALID, TEST)
    }


@dataclass(frozen=True)
class TemporalFold:
    """One temporal fold: history strictly before `cutoff`, target window [cutoff, end]."""

    name: str
    cutoff: datetime
    end: datetime | None  # inclusive upper bound of the window; None = to the end of the data


def temporal_folds(
    events: pd.DataFrame, test_cutoff: datetime | None, valid_cutoff: datetime | None, window_days: int = 30
) -> tuple[TemporalFold, TemporalFold]:
    """The validation fold (window up to the test cutoff) and the test fold (window to the end).

    With no cutoffs given (data.recommend.test_cutoff / valid_cutoff null): the data's own dates, the
    test window its last `window_days` days (counted from the midnight after its last event) and the
    validation window the `window_days` before them.
    """
    if test_cutoff is None:
        last = pd.Timestamp(events[s.TIMESTAMP].max()).to_pydatetime()
        test_cutoff = datetime(last.year, last.month, last.day) + timedelta(days=1) - timedelta(days=window_days)
        valid_cutoff = test_cutoff - timedelta(days=window_days)
    # The valid window stops just before the test cutoff, so no test-window event is seen in selection.
    valid = TemporalFold("valid", valid_cutoff, test_cutoff - timedelta(microseconds=1))
    return valid, TemporalFold("test", test_cutoff, None)


def split_events(events: pd.DataFrame, fold: TemporalFold) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, window): events before the fold's cutoff, and events inside its window."""
    ts = events[s.TIMESTAMP]
    history = events.loc[ts < fold.cutoff]
    in_window = ts >= fold.cutoff
    if fold.end is not None:
        in_window &= ts <= fold.end
    return history.reset_index(drop=True), events.loc[in_window].reset_index(drop=True)
