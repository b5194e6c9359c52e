"""Running the data contract: Great Expectations suites over frames, their Data Docs and a readable failure.

The validate step (tables) and the split step (split integrity) both check through here. Each run writes
  reports/data_checks/<name>/index.html   Great Expectations Data Docs (human-readable)
  reports/data_checks/<name>/results.json machine-readable results
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from artifacts.files import staged_dir, write_json
from components import contracts


class DataCheckError(RuntimeError):
    """A data contract check failed; str() is the readable summary."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if pd.isna(value) if not hasattr(value, "__len__") else False:
        return None
    return str(value)


def run_checks(
    checked: list[contracts.CheckedFrame], report_dir: Path, sample_rows: int, notes: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Validate each frame against its expectations; write Data Docs and results.json to report_dir.

    Returns the machine-readable result: {"success": bool, "suites": {name: {...}}, "failures": [...]},
    plus `notes` as they were given (e.g. the redactions the validate step made before checking).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    report_dir = Path(report_dir)
    with staged_dir(report_dir) as out:
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.add_data_docs_site(
            site_name="hatchery",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        source = ctx.data_sources.add_pandas("hatchery")
        result: dict[str, Any] = {"success": True, "suites": {}, "failures": [], **(notes or {})}
        for item in checked:
            batch = source.add_dataframe_asset(item.name).add_batch_definition_whole_dataframe(item.name)
            suite = ctx.suites.add(gx.ExpectationSuite(name=item.name))
            for expectation in item.expectations:
                suite.add_expectation(expectation)
            definition = ctx.validation_definitions.add(
                gx.ValidationDefinition(name=item.name, data=batch, suite=suite)
            )
            checkpoint = ctx.checkpoints.add(
                gx.Checkpoint(
                    name=item.name,
                    validation_definitions=[definition],
                    actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["hatchery"])],
                    result_format={"result_format": "COMPLETE", "partial_unexpected_count": sample_rows},
                )
            )
            outcome = checkpoint.run(batch_parameters={"dataframe": item.frame})
            entries = []
            for validation in outcome.run_results.values():
                for r in validation.results:
                    cfg = r.expectation_config
                    entry = {
                        "expectation": cfg.type,
                        "kwargs": _jsonable({k: v for k, v in cfg.kwargs.items() if k != "batch_id"}),
                        "success": bool(r.success),
                        "observed_value": _jsonable(r.result.get("observed_value")),
                        "unexpected_count": r.result.get("unexpected_count"),
                    }
                    if (cfg.meta or {}).get("hint"):
                        entry["hint"] = cfg.meta["hint"]
                    if r.exception_info and r.exception_info.get("raised_exception"):
                        entry["success"] = False
                        entry["error"] = r.exception_info.get("exception_message")
                    index = r.result.get("unexpected_index_list") or []
                    if index:
                        rows = item.frame.loc[[i for i in index[:sample_rows] if i in item.frame.index]]
                        entry["sample_rows"] = _jsonable(
                            rows.astype(object).where(rows.notna(), None).to_dict("records")
                        )
                    entries.append(entry)
                    if not entry["success"]:
                        result["failures"].append({"suite": item.name, **entry})
            ok = all(e["success"] for e in entries)
            result["suites"][item.name] = {"success": ok, "rows": len(item.frame), "expectations": entries}
            result["success"] &= ok
        write_json(out / "results.json", result)
    return result


def summarize_failures(result: dict[str, Any], title: str) -> str:
    """The short human summary printed when a check fails."""
    total = sum(len(v["expectations"]) for v in result["suites"].values())
    lines = [f"{title}: {len(result['failures'])} of {total} expectations failed"]
    for f in result["failures"]:
        column = f["kwargs"].get("column") or f["kwargs"].get("column_list") or "(table)"
        detail = f.get("error") or (
            f"{f['unexpected_count']} offending rows"
            if f.get("unexpected_count")
            else f"observed {f['observed_value']}"
        )
        lines.append(f"  - {f['suite']}: {f['expectation']} on {column} {_bounds(f['kwargs'])}: {detail}")
        for row in f.get("sample_rows", [])[:3]:
            lines.append(f"      e.g. {row}")
        if f.get("hint"):
            lines.append(f"      -> {f['hint']}")
    return "\n".join(lines)


def _bounds(kwargs: dict[str, Any]) -> str:
    keys = [k for k in ("min_value", "max_value", "value_set") if kwargs.get(k) is not None]
    return "(" + ", ".join(f"{k}={kwargs[k]}" for k in keys) + ")" if keys else ""


def enforce(result: dict[str, Any], title: str, report_dir: Path) -> None:
    if not result["success"]:
        raise DataCheckError(summarize_failures(result, title) + f"\nfull report: {report_dir / 'index.html'}")
