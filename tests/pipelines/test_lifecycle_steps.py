"""Lifecycle steps without training: charter and override errors, workspaces, the run report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.charter import CharterError
from components.config import ParamsError
from pipelines import dvc_stage, lifecycle, report, requirements
from pipelines.common import REPO_ROOT, Paths, write_json


@pytest.fixture
def charters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "charters"
    folder.mkdir()
    for p in (REPO_ROOT / "charters").glob("*.yaml"):
        (folder / p.name).write_text(p.read_text())
    monkeypatch.setenv("HATCHERY_CHARTERS_DIR", str(folder))
    return folder


def test_bad_charter_fails_naming_file_and_field(charters, paths):
    raw = yaml.safe_load((charters / "semantic_search.yaml").read_text())
    raw["guardrails"]["max_exposure"] = 3
    (charters / "semantic_search.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(CharterError, match=r"semantic_search\.yaml is invalid:\n  guardrails\.max_exposure"):
        requirements.run("semantic_search", {}, paths)


def test_charter_stage_missing_from_dvc_yaml(charters, paths):
    raw = yaml.safe_load((charters / "semantic_search.yaml").read_text())
    raw["stages"] = ["no_such_stage"]
    (charters / "semantic_search.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(CharterError, match="no_such_stage"):
        requirements.run("semantic_search", {}, paths)


def test_unknown_charter_and_bad_override(charters, paths):
    with pytest.raises(CharterError, match="available: personalised_recommendations, semantic_search"):
        requirements.load_charter("nope")
    stages = dvc_stage.stage_names(REPO_ROOT)
    if not set(requirements.load_charter("semantic_search").stages) <= set(stages):
        pytest.skip("the search stages are not in dvc.yaml yet")
    with pytest.raises(ParamsError, match="data.search.nope: unknown key"):
        requirements.run("semantic_search", {"data.search.nope": 1}, paths)


def test_workspaces_are_stable_per_override_set(paths):
    assert dvc_stage.workspace_root({}, Paths(root=REPO_ROOT)) == REPO_ROOT
    a = dvc_stage.workspace_root({"x.y": 1, "a": 2}, paths)
    assert a == dvc_stage.workspace_root({"a": 2, "x.y": 1}, paths)  # order does not matter
    assert a != dvc_stage.workspace_root({"a": 3, "x.y": 1}, paths)
    assert a.parent == paths.root / "workspaces"
    assert dvc_stage.workspace_root({}, paths) == paths.root / "workspaces" / "default"


def test_report_names_the_failed_stage_and_what_never_ran(paths):
    run_id = "manual__2026-01-01T00:00:00+00:00"
    plan = {
        "charter": "semantic_search",
        "domain": "search",
        "stages": ["train_ranker"],
        "data_stages": ["ingest", "validate", "split"],
        "workspace": str(paths.root / "ws"),
    }
    folder = lifecycle.run_dir(run_id, "semantic_search", paths)
    write_json(folder / "plan.json", plan)
    with pytest.raises(RuntimeError):
        with lifecycle.recorded(run_id, "semantic_search", "validate_charter", "requirements"):
            pass  # success
        with lifecycle.recorded(run_id, "semantic_search", "ingest", "requirements"):
            raise RuntimeError("the source file is missing")
    with pytest.raises(
        report.LifecycleFailed, match="requirements/ingest: failed: RuntimeError: the source file is missing"
    ):
        report.run("semantic_search", run_id, paths)
    summary = json.loads((folder / "summary.json").read_text())
    status = {s["task"]: s["status"] for s in summary["stages"]}
    assert status == {
        "validate_charter": "success",
        "ingest": "failed",
        "validate": "not_run",
        "split": "not_run",
        "train_ranker": "not_run",
        "gate": "not_run",
        "package": "not_run",
    }
    assert summary["headline"].startswith("ingest failed")
    html = (folder / "index.html").read_text()
    assert "the source file is missing" in html and "train_ranker" in html


def test_first_champion_is_the_best_listed_baseline():
    import pandas as pd

    from pipelines.gate import GateFailed, best_baseline

    per_unit = pd.DataFrame(
        {
            "bm25__ndcg_at_10": [0.2, 0.4],  # mean 0.3
            "zero_shot__ndcg_at_10": [0.5, float("nan")],  # mean 0.5 over the units it scores
            "fine_tuned__ndcg_at_10": [0.9, 0.9],  # a trained part of the challenger, not a baseline
            "hybrid__ndcg_at_10": [1.0, 1.0],
        }
    )
    assert best_baseline(per_unit, "ndcg_at_10", "hybrid", ("bm25", "zero_shot")) == "zero_shot"
    assert best_baseline(per_unit, "ndcg_at_10", "hybrid", ("bm25", "hybrid")) == "bm25"
    with pytest.raises(GateFailed, match="none of the baselines"):
        best_baseline(per_unit, "ndcg_at_10", "hybrid", ("popularity",))


def test_a_stale_registration_record_is_not_a_registered_version(paths):
    """registered.json naming a version the registry lacks (the MLflow store was reset) counts as unregistered."""
    from mlflow import MlflowClient

    from pipelines.common import content_hash, tracking_uri
    from pipelines.gate import DOMAINS, registered_version

    bundle = paths.root / DOMAINS["search"].bundle
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    write_json(
        paths.models / "search" / "registered.json",
        {"name": "hatchery-search", "version": 3, "bundle_hash": content_hash(bundle), "created": True},
    )
    client = MlflowClient(tracking_uri(paths), registry_uri=tracking_uri(paths))
    assert registered_version(client, "hatchery-search", paths.root, "search") is None
    client.create_registered_model("hatchery-search")
    assert registered_version(client, "hatchery-search", paths.root, "search") is None
