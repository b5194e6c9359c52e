"""Start-up sweeps (leftovers of atomic writes, failed downloads, stale DVC workspaces) and the salt rule.

A tmp tree of real leftovers, aged with os.utime; a DVC workspace marked busy the way DVC marks it
(the repository lock held with flock, or a live pid in .dvc/tmp/rwlock).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from artifacts.files import dvc_busy, staged_dir, sweep_outputs, sweep_stale, sweep_workspaces
from artifacts.paths import DEV_SALT, Paths, pseudonym_salt

HOUR, DAY = 3600.0, 86400.0


def _age(path: Path, seconds: float) -> Path:
    """Set the mtime of `path` and everything under it to `seconds` ago."""
    when = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (when, when))
    return path


def _mkdir(path: Path, files: tuple[str, ...] = ("part.npy",)) -> Path:
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(b"x")
    return path


# --- leftovers --------------------------------------------------------------------------------------
def test_sweep_removes_old_leftovers_and_keeps_everything_else(tmp_path: Path) -> None:
    models = tmp_path / "models" / "search"
    bundle = _age(_mkdir(models / "bundle"), 3 * DAY)  # a real output, however old, stays
    staged = _age(_mkdir(models / ".bundle.k3j_9x2a"), 2 * DAY)  # a killed step's staged folder
    old = _age(_mkdir(models / ".bundle.old"), 2 * DAY)  # a rename interrupted mid-swap
    tmp_json = models / ".registered.json.tmp"  # write_json's temp file
    tmp_json.write_text("{")
    _age(tmp_json, 2 * DAY)
    dvc_dir = _age(_mkdir(tmp_path / "models" / ".dvc" / "tmp"), 2 * DAY)  # hidden, not a leftover: untouched
    download = _age(_mkdir(tmp_path / "serving_cache" / "hatchery-search" / ".7.0a1b2c3d"), 2 * DAY)
    young = _mkdir(models / ".bundle.young123")  # a step writing right now
    removed = sweep_stale(tmp_path, older_than_s=6 * HOUR)
    assert sorted(removed) == sorted([staged, old, tmp_json, download])
    assert bundle.exists() and dvc_dir.exists() and young.exists()
    assert not any(p.exists() for p in removed)


def test_a_leftover_still_being_written_is_kept(tmp_path: Path) -> None:
    staged = _age(_mkdir(tmp_path / ".bundle.abcdefgh" / "encoder", ("model.safetensors",)), 2 * DAY)
    _age(staged.parent, 2 * DAY)
    (staged / "tokenizer.json").write_text("{}")  # a new file deep inside: the writer is alive
    assert sweep_stale(tmp_path, older_than_s=6 * HOUR) == []


def test_staged_dir_leaves_exactly_what_the_sweep_recognises(tmp_path: Path) -> None:
    killed = staged_dir(tmp_path / "out")
    stage = killed.__enter__()  # entered, never left: the process was killed
    (stage / "f").write_text("half")
    _age(stage, DAY)
    assert sweep_stale(tmp_path, older_than_s=HOUR) == [stage]
    del killed


# --- workspaces -------------------------------------------------------------------------------------
def _workspace(root: Path, name: str, age_s: float) -> Path:
    ws = _mkdir(root / name, ("params.yaml",))
    (ws / ".dvc" / "tmp").mkdir(parents=True)
    return _age(ws, age_s)


def test_workspaces_unused_for_days_are_removed_but_default_and_busy_ones_stay(tmp_path: Path) -> None:
    root = tmp_path / "workspaces"
    default = _workspace(root, "default", 90 * DAY)
    stale = _workspace(root, "o-aaaaaaaaaaaa", 30 * DAY)
    recent = _workspace(root, "o-bbbbbbbbbbbb", 1 * DAY)
    kept = _workspace(root, "o-cccccccccccc", 30 * DAY)
    locked = _workspace(root, "o-dddddddddddd", 30 * DAY)
    listed = _workspace(root, "o-eeeeeeeeeeee", 30 * DAY)
    dead = _workspace(root, "o-ffffffffffff", 30 * DAY)
    # DVC holds the repository lock (zc.lockfile: flock) for the whole command...
    with (locked / ".dvc" / "tmp" / "lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        # ...and lists each running stage's pid in the rwlock; a crashed DVC leaves a dead pid behind.
        (listed / ".dvc" / "tmp" / "rwlock").write_text(
            json.dumps({"write": {"data/x": {"pid": os.getpid(), "cmd": "dvc repro"}}, "read": {}})
        )
        (dead / ".dvc" / "tmp" / "rwlock").write_text(
            json.dumps({"write": {}, "read": {"data/x": [{"pid": 2**22 + 12345, "cmd": "dvc repro"}]}})
        )
        assert dvc_busy(locked) and dvc_busy(listed) and not dvc_busy(dead) and not dvc_busy(stale)
        removed = sweep_workspaces(root, older_than_s=14 * DAY, keep=(kept.name,))
    assert sorted(removed) == sorted([stale, dead])
    assert all(p.exists() for p in (default, recent, kept, locked, listed))


def test_sweep_outputs_reads_its_ages_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    paths = Paths(root=tmp_path)
    leftover = _age(_mkdir(paths.data / "split" / ".search.zzzzzzzz"), 2 * HOUR)
    ws = _workspace(paths.workspaces, "o-aaaaaaaaaaaa", 3 * DAY)
    assert sweep_outputs(paths) == []  # defaults: 6 h, 14 days
    monkeypatch.setenv("HATCHERY_STALE_AFTER_H", "1")
    monkeypatch.setenv("HATCHERY_WORKSPACE_TTL_DAYS", "2")
    assert sorted(sweep_outputs(paths)) == sorted([leftover, ws])


def test_a_dvc_stage_run_sweeps_other_workspaces_and_marks_its_own_used(paths: Paths, monkeypatch) -> None:
    from pipelines import dvc_stage

    overrides = {"search.ranker.n_estimators": 5}
    mine = _workspace(paths.workspaces, dvc_stage.workspace_key(overrides), 60 * DAY)
    other = _workspace(paths.workspaces, "o-aaaaaaaaaaaa", 60 * DAY)
    monkeypatch.setattr(dvc_stage, "_dvc", lambda args, cwd, env: [])  # no DVC run: only the preparation
    dvc_stage.run_stage("split", overrides, base=paths)
    assert not other.exists() and mine.exists()
    assert time.time() - mine.stat().st_mtime < 60  # "last used" is now


# --- the pseudonym salt -------------------------------------------------------------------------------
def test_a_missing_salt_is_an_error_outside_dev_mode(monkeypatch) -> None:
    monkeypatch.delenv("HATCHERY_PSEUDONYM_SALT", raising=False)
    monkeypatch.delenv("HATCHERY_ENV", raising=False)
    with pytest.raises(RuntimeError, match="HATCHERY_PSEUDONYM_SALT is not set: set it to a long random secret"):
        pseudonym_salt()
    monkeypatch.setenv("HATCHERY_ENV", "production")
    with pytest.raises(RuntimeError, match="HATCHERY_ENV=dev"):
        pseudonym_salt()


def test_dev_mode_uses_the_development_salt_and_a_set_salt_always_wins(monkeypatch, caplog) -> None:
    monkeypatch.delenv("HATCHERY_PSEUDONYM_SALT", raising=False)
    monkeypatch.setenv("HATCHERY_ENV", "dev")
    assert pseudonym_salt() == DEV_SALT
    assert "public development salt" in caplog.text
    monkeypatch.setenv("HATCHERY_PSEUDONYM_SALT", "s3cret")
    assert pseudonym_salt() == "s3cret"
    monkeypatch.delenv("HATCHERY_ENV")
    assert pseudonym_salt() == "s3cret"


def test_ingest_without_a_salt_stops_before_reading_anything(paths: Paths, monkeypatch) -> None:
    """`dvc repro` by hand runs the ingest stage with the shell's environment: no salt, no dev mode."""
    from pipelines import ingest
    from pipelines.common import load_params

    monkeypatch.delenv("HATCHERY_PSEUDONYM_SALT", raising=False)
    monkeypatch.delenv("HATCHERY_ENV", raising=False)
    with pytest.raises(RuntimeError, match="HATCHERY_PSEUDONYM_SALT is not set"):
        ingest.run(load_params(), paths)
    assert not paths.ingested.exists()
