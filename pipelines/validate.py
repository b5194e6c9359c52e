"""validate: the data contract (Great Expectations suites) over the ingested tables.

Free text first: e-mail addresses and phone numbers in a table whose `checks.pii.<table>` is
`redact` (the catalog by default) are masked, counted and sampled (results.json "redactions");
under `reject` (queries by default) they fail the check. On success the checked tables are
published to data/validated/; on failure nothing is published (the last good data/validated/
stays as it was) and the step exits non-zero with a summary that names each failed expectation,
shows a sample of offending rows and says which params key to change. Either way it writes
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
from components.privacy import redact_pii
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
        contracts.judgments_check(
            search[s.JUDGMENTS], search[s.CATALOG], search[s.QUERIES], c, params.data.search.relevance
        ),
        contracts.catalog_check(rec[s.CATALOG], c),
        contracts.events_check(rec[s.EVENTS], rec[s.CATALOG], c, now),
    ]
    names = ["search_catalog", "search_queries", "search_judgments", "recommend_catalog", "recommend_events"]
    return [contracts.CheckedFrame(n, cf.frame, cf.expectations) for n, cf in zip(names, checked, strict=True)]


def redact_tables(tables: dict[str, dict[str, pd.DataFrame]], params: Params) -> list[dict[str, Any]]:
    """Mask e-mail addresses and phone numbers in the free text of every table whose policy is `redact`,
    in place; returns one entry per column with matches: domain, table, column, matches, rows and
    sample_rows (these show the masked text, never what was masked)."""
    policy = {s.CATALOG: params.checks.pii.catalog, s.QUERIES: params.checks.pii.queries}
    key = {s.CATALOG: s.PRODUCT_ID, s.QUERIES: s.QUERY_ID}
    notes: list[dict[str, Any]] = []
    for domain, frames in tables.items():
        for table, columns in contracts.PII_COLUMNS.items():
            if policy[table] != "redact" or table not in frames:
                continue
            frame = frames[table]
            for col in (c for c in columns if c in frame.columns):
                masked, counts = redact_pii(frame[col])
                hit = counts > 0
                if not hit.any():
                    continue
                frame = frame.assign(**{col: masked})
                sample = frame.loc[hit, [key[table], col]].head(params.checks.failed_rows_sample)
                notes.append(
                    {
                        "domain": domain,
                        "table": table,
                        "column": col,
                        "matches": int(counts.sum()),
                        "rows": int(hit.sum()),
                        "sample_rows": sample.astype(str).to_dict("records"),
                    }
                )
            frames[table] = frame
    return notes


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
        redactions = redact_tables(tables, params)
        for note in redactions:
            log.warning(
                "redacted %d e-mail/phone matches in %d rows of %s %s.%s (checks.pii.%s: redact): e.g. %s",
                note["matches"],
                note["rows"],
                note["domain"],
                note["table"],
                note["column"],
                note["table"],
                note["sample_rows"][:2],
            )
        result = run_checks(
            table_checks(tables, params, now),
            report_dir,
            params.checks.failed_rows_sample,
            notes={"redactions": redactions},
        )
        mlflow.log_metrics(
            {
                "failed_expectations": len(result["failures"]),
                "passed": float(result["success"]),
                "redacted_matches": sum(n["matches"] for n in redactions),
            }
        )
        mlflow.log_artifacts(str(report_dir), artifact_path="data_checks/tables")
        enforce(result, "data checks failed", report_dir)
        redacted = {(n["domain"], n["table"]) for n in redactions}
        for domain in ("search", "recommend"):
            with staged_dir(paths.validated / domain) as out:
                for f in (paths.ingested / domain).iterdir():
                    if (domain, f.stem) in redacted:
                        tables[domain][f.stem].to_parquet(out / f.name, index=False)
                    else:
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
