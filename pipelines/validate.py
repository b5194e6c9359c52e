"""validate: the data contract (Great Expectations suites) over the ingested tables.

On success the checked tables are published to data/validated/; on failure nothing is published
(the last good data/validated/ stays as it was) and the step exits non-zero with a summary that
names each failed expectation and shows a sample of offending rows. Either way it writes
  reports/data_checks/<stage>/index.html   Great Expectations Data Docs (human-readable)
  reports/data_checks/<stage>/results.json machine-readable results
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime
from typing import Any

import pandas as pd

from artifacts.files import staged_dir
from artifacts.paths import Paths
from components import contracts
from components import schema as s
from components.config import Params
from pipelines.checks import DataCheckError, enforce, run_checks
from pipelines.common import load_params, mlflow_run
from pipelines.io import read_tables

log = logging.getLogger(__name__)

STEP = "validate"


def table_checks(
    tables: dict[str, dict[str, pd.DataFrame]], params: Params, now: datetime
) -> list[contracts.CheckedFrame]:
    """Every table suite for the search and recommend domains."""
    c = params.checks
    search, rec = tables["search"], tables["recommend"]
    checked = [
        contracts.catalog_check(search[s.CATALOG], c),
        contracts.queries_check(search[s.QUERIES], c),
        contracts.judgments_check(search[s.JUDGMENTS], search[s.CATALOG], search[s.QUERIES], c),
        contracts.catalog_check(rec[s.CATALOG], c),
        contracts.events_check(rec[s.EVENTS], rec[s.CATALOG], c, now),
    ]
    names = ["search_catalog", "search_queries", "search_judgments", "recommend_catalog", "recommend_events"]
    return [contracts.CheckedFrame(n, cf.frame, cf.expectations) for n, cf in zip(names, checked, strict=True)]


def run(params: Params, paths: Paths, now: datetime | None = None) -> dict[str, Any]:
    """Check the ingested tables; publish them to data/validated/ only if every expectation passes."""
    now = now or datetime.now()
    report_dir = paths.data_checks("tables")
    with mlflow_run(STEP, params, paths, inputs=[paths.ingested], sections=("checks",)) as _:
        import mlflow

        tables = {
            "search": read_tables(paths.ingested / "search", s.SEARCH_TABLES),
            "recommend": read_tables(paths.ingested / "recommend", s.RECOMMEND_TABLES),
        }
        result = run_checks(table_checks(tables, params, now), report_dir, params.checks.failed_rows_sample)
        mlflow.log_metrics({"failed_expectations": len(result["failures"]), "passed": float(result["success"])})
        mlflow.log_artifacts(str(report_dir), artifact_path="data_checks/tables")
        enforce(result, "data checks failed", report_dir)
        for domain in ("search", "recommend"):
            with staged_dir(paths.validated / domain) as out:
                for f in (paths.ingested / domain).iterdir():
                    shutil.copy2(f, out / f.name)
        log.info("data checks passed (%d suites); report: %s", len(result["suites"]), report_dir / "index.html")
    return result


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
