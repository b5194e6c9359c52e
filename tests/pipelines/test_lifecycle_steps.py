"""Lifecycle steps without training: charter and override errors, workspaces, the run report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from artifacts.files import write_json
from artifacts.paths import REPO_ROOT, Paths
from components.charter import CharterError
from components.config import ParamsError
from pipelines import dvc_stage, lifecycle, report, requirements
from pipelines.common import load_params


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
    folder = paths.incubation_run(run_id, "semantic_search")
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
        "rollout": "not_run",
    }
    assert summary["headline"].startswith("ingest failed")
    html = (folder / "index.html").read_text()
    assert "the source file is missing" in html and "train_ranker" in html


def test_a_stale_registration_record_is_not_a_registered_version(paths):
    """registered.json naming a version the registry lacks (the MLflow store was reset) counts as unregistered."""
    from artifacts.files import content_hash
    from artifacts.registry import Registry

    bundle = paths.bundle("search")
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    write_json(
        paths.registered("search"),
        {"name": "hatchery-search", "version": 3, "bundle_hash": content_hash(bundle), "created": True},
    )
    registry = Registry("hatchery-search", paths)
    assert registry.version_of_bundle(bundle, paths.registered("search")) is None
    registry.client.create_registered_model("hatchery-search")
    assert registry.version_of_bundle(bundle, paths.registered("search")) is None


def test_report_shows_each_rollout_phase_with_its_interval_and_the_audit_trail(paths):
    run_id = "manual__2026-01-02T00:00:00+00:00"
    plan = {
        "charter": "semantic_search",
        "domain": "search",
        "stages": [],
        "data_stages": [],
        "workspace": str(paths.root / "ws"),
    }
    folder = paths.incubation_run(run_id, "semantic_search")
    write_json(folder / "plan.json", plan)
    quality = {
        "test": "non_inferiority",
        "verdict": "harm",
        "diff": -0.21,
        "lower": -0.3123,
        "upper": -0.1077,
        "confidence": 0.9,
        "power": 0.97,
        "total_impressions": [1900, 101],
    }
    result = {
        "phase": "rolled_back",
        "champion": "1",
        "previous_champion": None,
        "reason": "guardrail breached: online quality: ...",
        "design": {"alpha": 0.05, "delta": 0.05, "power": 0.8, "rho": 846.0, "info_plan": 5207.0},
        "phases": [
            {"phase": "shadow", "step": -1, "share": 0.0, "decision": "advance", "reasons": ["exit criteria met"],
             "challenger_requests": 120, "challenger_error_rate": 0.0, "challenger_p99_ms": 30.0, "quality": None,
             "interleaving": None},
            {"phase": "canary", "step": 0, "share": 0.05, "decision": "rollback", "reasons": ["online quality: harm"],
             "challenger_requests": 101, "challenger_error_rate": 0.0, "challenger_p99_ms": 31.0, "quality": quality,
             "interleaving": {"sessions": 200, "mean": -0.3, "lower": -0.41, "upper": -0.19,
                              "verdict": "champion_preferred"}},
        ],
        "audit": [
            {"when": 1767225600.0, "actor": "airflow:x", "action": "rollback", "from_phase": "canary",
             "to_phase": "rolled_back", "from_version": "2", "to_version": "1", "reason": "guardrail breached"},
        ],
    }  # fmt: skip
    with lifecycle.recorded(run_id, "semantic_search", "rollout", "rollout") as entry:
        entry["result"] = result
    with pytest.raises(report.LifecycleFailed):  # the other stages never ran in this test
        report.run("semantic_search", run_id, paths)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rollout"]["phase"] == "rolled_back" and summary["rollout"]["champion"] == "1"
    html = (folder / "index.html").read_text()
    for shown in ("[-0.3123, -0.1077]", "harm", "champion_preferred", "2026-01-01 00:00:00", "airflow:x", "1900 / 101"):
        assert shown in html, shown


def test_a_data_path_outside_the_configured_roots_is_refused_before_dvc_runs(charters, paths, tmp_path, monkeypatch):
    """`/` would make DVC hash, and ingest walk, the whole filesystem; HATCHERY_DATA_ROOTS fences data paths."""
    from artifacts.paths import check_data_path

    with pytest.raises(ValueError, match=r"data.search.path: / is the system folder /, not a dataset folder"):
        requirements.run("semantic_search", {"data.search.source": "canonical", "data.search.path": "/"}, paths)
    shop = tmp_path / "shops" / "mine"
    shop.mkdir(parents=True)
    assert check_data_path(shop, "data.search.path") == shop.resolve()  # no roots configured: any non-system folder
    # Both domains are checked (ingest reads both): the roots hold the shops and the shared datasets.
    shared = check_data_path(load_params().data.search.path, "data.search.path").parent
    monkeypatch.setenv("HATCHERY_DATA_ROOTS", f"{tmp_path / 'shops'}{os.pathsep}{shared}")
    assert check_data_path(shop, "data.search.path") == shop.resolve()
    with pytest.raises(ValueError, match="is outside HATCHERY_DATA_ROOTS"):
        check_data_path(tmp_path / "elsewhere", "data.recommend.path")
    with pytest.raises(ValueError, match="data.recommend.path: .* is outside HATCHERY_DATA_ROOTS"):
        requirements.run(
            "personalised_recommendations",
            {"data.recommend.source": "canonical", "data.recommend.path": str(tmp_path / "elsewhere")},
            paths,
        )


def test_an_always_changed_upstream_stage_alone_is_not_a_change(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  split: {cmd: a}\n  implicit_judgments: {cmd: b, always_changed: true}\n  train_ranker: {cmd: c}\n"
    )
    assert dvc_stage._changed(tmp_path, "train_ranker", []) is False
    assert dvc_stage._changed(tmp_path, "train_ranker", ["implicit_judgments"]) is False
    assert dvc_stage._changed(tmp_path, "train_ranker", ["implicit_judgments", "train_ranker"]) is True
    assert dvc_stage._changed(tmp_path, "train_ranker", ["split"]) is True
    # asked for itself, the always_changed stage's own run is the work that was asked for
    assert dvc_stage._changed(tmp_path, "implicit_judgments", ["implicit_judgments"]) is True
