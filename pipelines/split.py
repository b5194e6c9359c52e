"""split: validated tables -> EVALUATION.md's splits in data/split/, checked before they are published.

Outputs:
  data/split/search/{train,valid,test}.parquet      query_id, query, product_id, relevance
  data/split/search/queries.parquet                 query_id, query, split
  data/split/recommend/{valid,test}/history.parquet events before the fold's cutoff
  data/split/recommend/{valid,test}/window.parquet  events in the fold's target window
  data/split/recommend/folds.json                   the cutoffs used
"""

from __future__ import annotations

import logging

import pandas as pd

from artifacts.files import staged_dir, write_json
from artifacts.paths import Paths
from components import contracts
from components import schema as s
from components.config import Params
from components.splits import split_events, split_judgments, split_queries, temporal_folds
from pipelines.checks import DataCheckError, enforce, run_checks
from pipelines.common import load_params, mlflow_run
from pipelines.io import read_tables

log = logging.getLogger(__name__)

STEP = "split"


def check_search_split(
    params: Params, paths: Paths, queries_with_split: pd.DataFrame, parts: dict[str, pd.DataFrame]
) -> None:
    """Split-integrity suites for search; raises DataCheckError before anything is published."""
    report_dir = paths.data_checks("search_split")
    result = run_checks(
        contracts.search_split_checks(queries_with_split, parts), report_dir, params.checks.failed_rows_sample
    )
    enforce(result, "search split checks failed", report_dir)


def check_recommend_split(params: Params, paths: Paths, folds, pieces, events: pd.DataFrame | None = None) -> None:
    """Recommendation split suites: each cutoff inside the data's date range (when `events` are given),
    then no test-window event in training history and no empty side. Raises DataCheckError."""
    report_dir = paths.data_checks("recommend_split")
    checked = []
    if events is not None:
        cutoffs = contracts.recommend_cutoff_check(events, folds, params.split.recommend_window_days)
        checked.append(cutoffs)
        if not cutoffs.frame[contracts.CUTOFF_INSIDE].all():
            pieces = None  # a cutoff outside the data: its empty sides would only repeat the message
    if pieces is not None:
        checked += contracts.recommend_split_checks(folds, pieces)
    result = run_checks(checked, report_dir, params.checks.failed_rows_sample)
    enforce(result, "recommendation split checks failed", report_dir)


def run(params: Params, paths: Paths) -> dict[str, int]:
    """Write both domains' splits; a failed split check raises and publishes nothing."""
    sp = params.split
    counts: dict[str, int] = {}
    with mlflow_run(STEP, params, paths, inputs=[paths.validated], sections=("split", "data")) as _:
        import mlflow

        search = read_tables(paths.validated / "search", (s.QUERIES, s.JUDGMENTS))
        queries = split_queries(
            search[s.QUERIES], sp.search_buckets, tuple(sp.search_valid_buckets), tuple(sp.search_test_buckets)
        )
        parts = split_judgments(search[s.JUDGMENTS], queries)
        check_search_split(params, paths, queries, parts)
        with staged_dir(paths.split / "search") as out:
            queries.to_parquet(out / "queries.parquet", index=False)
            for name, frame in parts.items():
                frame.to_parquet(out / f"{name}.parquet", index=False)
                counts[f"search.{name}.queries"] = int(frame[s.QUERY_ID].nunique())
                counts[f"search.{name}.judgments"] = len(frame)

        events = read_tables(paths.validated / "recommend", (s.EVENTS,))[s.EVENTS]
        rec = params.data.recommend
        folds = temporal_folds(events, rec.test_cutoff, rec.valid_cutoff, sp.recommend_window_days)
        pieces = {fold.name: split_events(events, fold) for fold in folds}
        check_recommend_split(params, paths, folds, pieces, events)
        with staged_dir(paths.split / "recommend") as out:
            for fold in folds:
                history, window = pieces[fold.name]
                (out / fold.name).mkdir()
                history.to_parquet(out / fold.name / "history.parquet", index=False)
                window.to_parquet(out / fold.name / "window.parquet", index=False)
                counts[f"recommend.{fold.name}.history_events"] = len(history)
                counts[f"recommend.{fold.name}.window_events"] = len(window)
                counts[f"recommend.{fold.name}.evaluated_users"] = int(
                    len(set(history[s.USER_ID]) & set(window[s.USER_ID]))
                )
            write_json(
                out / "folds.json",
                {f.name: {"cutoff": f.cutoff.isoformat(), "end": f.end.isoformat() if f.end else None} for f in folds},
            )
        mlflow.log_metrics(counts)
        log.info("splits: %s", counts)
    return counts


def main() -> int:
    from pipelines.common import configure_logging

    configure_logging()
    try:
        run(load_params(), Paths())
    except DataCheckError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
