"""dvc_stage: how the lifecycle (Airflow) runs a step — always `dvc repro <stage>`, never around DVC.

So an Airflow task and a hand-typed `dvc repro` share one implementation (pipelines/<step>.py via
the stage's cmd), one lock file and one cache: a stage whose deps and params did not change is
skipped, whoever asks.

Workspaces. The repository itself is the workspace when HATCHERY_HOME is the repository and the
run has no parameter overrides. Otherwise (data overrides from the Airflow run, a HATCHERY_HOME
elsewhere, the end-to-end test) the run gets a mirror workspace at
<HATCHERY_HOME>/workspaces/<key>: a copy of the code and dvc.yaml, params.yaml with the overrides
applied, its own data/, models/ and dvc.lock, and — under the repository — the repository's DVC
cache. The repository's params.yaml is never edited, and the same overrides always land in the
same workspace, so their outputs are reused too. MLflow stays the one store of HATCHERY_HOME.
Before a workspace is prepared, the others unused for HATCHERY_WORKSPACE_TTL_DAYS (default 14) are
removed, and leftovers of interrupted writes are swept (artifacts.files.sweep_outputs).

Remote mode (the cluster profile: HATCHERY_DVC_REMOTE set, e.g. ssh://user@host:port/path, with
HATCHERY_DVC_REMOTE_KEYFILE): tasks run on any worker, so no task relies on a folder another task
wrote. Each task gets a workspace of its own under HATCHERY_WORKSPACES (the worker's working copy;
default <HATCHERY_HOME>/workspaces/_tasks), with that worker's DVC cache, and removed afterwards:
it restores the run's dvc.lock (the newest one of these overrides, shared through LockfileStore:
PostgreSQL under HATCHERY_STATE_URL), `dvc pull`s the target's upstream outputs from the remote,
runs `dvc repro`, `dvc push`es what it made and merges its dvc.lock back. Every output is cached in
these workspaces (dvc.yaml's `cache: false` is dropped there), so metrics travel too; the run's
metrics/ are also copied to <HATCHERY_HOME>/workspaces/<key>/metrics for the report. Two charters
never share a repository lock: each task holds only its own workspace's.

Usage: python -m pipelines.dvc_stage <stage> [key=value ...]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from artifacts.files import sweep_outputs
from artifacts.paths import REPO_ROOT, Paths, datasets_dir, tracking_uri
from components.config import apply_overrides, parse_params

log = logging.getLogger(__name__)

# What a mirror workspace copies from the repository: the code the stages run and import.
CODE_DIRS = ("components", "artifacts", "pipelines", "services")
CODE_FILES = ("dvc.yaml", ".dvcignore")


class StageError(RuntimeError):
    """A DVC stage failed; the message carries the stage and the tail of its output (the reason)."""


def workspace_key(overrides: dict[str, Any] | None) -> str:
    """'default' without overrides, else a short stable hash of the sorted overrides."""
    if not overrides:
        return "default"
    blob = json.dumps(overrides, sort_keys=True, default=str).encode()
    return "o-" + hashlib.sha256(blob).hexdigest()[:12]


def workspace_root(overrides: dict[str, Any] | None = None, base: Paths | None = None) -> Path:
    """Where a run with these overrides reads and writes (see the module docstring)."""
    base = base or Paths()
    if not overrides and base.root.resolve() == REPO_ROOT.resolve():
        return REPO_ROOT
    return base.root / "workspaces" / workspace_key(overrides)


def _changed(root: Path, stage: str, ran: list[str] | None) -> bool:
    """Whether a `dvc repro <stage>` that ran `ran` did work because something changed.

    An always_changed stage (implicit_judgments: it reads a log DVC cannot hash) runs on every repro and
    writes byte-identical outputs when nothing new arrived; that alone is not a change unless it is the
    stage asked for. A stage downstream of it that reran is.
    """
    path = Path(root) / "dvc.yaml"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.exists() else {}
    always = {name for name, spec in stages.items() if (spec or {}).get("always_changed")}
    return any(name == stage or name not in always for name in ran or [])


def stage_names(root: Path = REPO_ROOT) -> list[str]:
    """The stages of <root>/dvc.yaml, in file order."""
    path = Path(root) / "dvc.yaml"
    if not path.exists():
        return []
    return list((yaml.safe_load(path.read_text()) or {}).get("stages", {}))


def _absolute_outside_deps(dvc_yaml: dict[str, Any]) -> dict[str, Any]:
    """Deps that point outside the repository ('../shared/...') made absolute, so a mirror finds them."""
    for stage in (dvc_yaml.get("stages") or {}).values():
        deps = stage.get("deps") or []
        stage["deps"] = [
            str((REPO_ROOT / d).resolve()) if isinstance(d, str) and d.startswith("..") else d for d in deps
        ]
    return dvc_yaml


def prepare_workspace(overrides: dict[str, Any] | None = None, base: Paths | None = None) -> Path:
    """Create or refresh the workspace for these overrides and return its root. Idempotent."""
    base = base or Paths()
    root = workspace_root(overrides, base)
    if root == REPO_ROOT:
        return root
    return _populate(root, overrides, base)


def _populate(root: Path, overrides: dict[str, Any] | None, base: Paths, cache_all: bool = False) -> Path:
    """Code, dvc.yaml and params.yaml (with the overrides) into root; a DVC repository there.

    cache_all: every output cached (remote mode: outputs must travel through the remote).
    """
    root.mkdir(parents=True, exist_ok=True)
    os.utime(root)  # "last used": what the workspace sweep ages by
    # Code is re-copied every time: DVC hashes content, so an unchanged copy keeps every stage cached.
    for name in CODE_DIRS:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.rmtree(root / name, ignore_errors=True)
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in CODE_FILES:
        if (REPO_ROOT / name).exists():
            shutil.copy2(REPO_ROOT / name, root / name)
    dvc_yaml = _absolute_outside_deps(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text()) or {})
    if cache_all:
        _cache_every_output(dvc_yaml)
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text()) or {}
    merged = apply_overrides(raw, overrides or {})
    parse_params(merged)  # a bad override fails here, naming its key, before DVC runs anything
    for domain in (merged.get("data") or {}).values():
        # data.<domain>.path is relative to the repository (DVC reads it for ingest's deps): keep it so.
        if isinstance(domain, dict) and domain.get("path") and not Path(domain["path"]).expanduser().is_absolute():
            domain["path"] = str((REPO_ROOT / domain["path"]).resolve())
    params_text = yaml.safe_dump(merged, sort_keys=False)
    params_path = root / "params.yaml"
    if not params_path.exists() or params_path.read_text() != params_text:
        params_path.write_text(params_text)
    if not (root / ".dvc").is_dir():
        _dvc(["init", "--no-scm", "--quiet"], cwd=root, env=os.environ.copy())
        if cache_all:
            return root  # remote mode sets its own cache and remote
        if base.root.resolve() == REPO_ROOT.resolve() and (REPO_ROOT / ".dvc").is_dir():
            # One cache: outputs a mirror produces are the same objects the repository would store.
            _dvc(["cache", "dir", "--local", str(REPO_ROOT / ".dvc" / "cache")], cwd=root, env=os.environ.copy())
    return root


def _dvc_executable() -> str:
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def _dvc(args: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    """Run dvc, streaming its output to the log; raise StageError with the output's tail on failure.

    Returns the stages whose command DVC ran, in order (empty: everything was cached or unchanged).
    """
    cmd = [_dvc_executable(), *args]
    log.info("$ %s   (in %s)", " ".join(cmd), cwd)
    tail: deque[str] = deque(maxlen=40)
    ran: list[str] = []
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if line.startswith("Running stage '"):
                ran.append(line.removeprefix("Running stage '").split("'", 1)[0])
            log.info("%s", line)
        rc = proc.wait()
    if rc != 0:
        raise StageError(f"`dvc {' '.join(args)}` failed (exit {rc}) in {cwd}:\n" + "\n".join(tail))
    return ran


def stage_env(workspace: Path, base: Paths, budget_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the stage's command: the workspace as HATCHERY_HOME, the base's MLflow store and
    feedback store (the one the service writes: implicit_judgments reads it), the venv's python first on
    PATH (stage cmds say `python -m ...`)."""
    env = os.environ.copy()
    env["HATCHERY_HOME"] = str(workspace)
    env["MLFLOW_TRACKING_URI"] = tracking_uri(base)
    env["HATCHERY_FEEDBACK_DB"] = str(base.feedback_store)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        env.setdefault("HATCHERY_DATA_DIR", str(datasets_dir()))
    except FileNotFoundError:
        pass  # data.<domain>.path may name the data instead; ingest says what is missing
    env.update(budget_env or {})
    return env


def _cache_every_output(dvc_yaml: dict[str, Any]) -> None:
    for stage in (dvc_yaml.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind) or []:
                if isinstance(out, dict):
                    for flags in out.values():
                        if isinstance(flags, dict):
                            flags.pop("cache", None)


def remote_url() -> str | None:
    """HATCHERY_DVC_REMOTE: the remote every worker shares (remote mode), or None (one machine)."""
    return os.environ.get("HATCHERY_DVC_REMOTE") or None


def _task_root(base: Paths) -> Path:
    return Path(os.environ.get("HATCHERY_WORKSPACES") or base.workspaces / "_tasks")


def _lockfiles(base: Paths):
    from artifacts.shared_state import LockfileStore, state_url

    return LockfileStore(state_url(), base.workspaces / "_locks.json")


@contextlib.contextmanager
def task_workspace(
    overrides: dict[str, Any] | None, base: Paths | None = None, pull: list[str] | None = None
) -> Iterator[Path]:
    """A workspace of this task's own, restored from the shared dvc.lock and remote; removed on exit.

    pull: stages whose outputs (and their upstream stages') are pulled first (missing ones are left
    for `dvc repro` to rebuild).
    """
    base = base or Paths()
    tasks = _task_root(base)
    root = tasks / workspace_key(overrides) / f"task-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    env = os.environ.copy()
    try:
        _populate(root, overrides, base, cache_all=True)
        # What `dvc cache dir --local` and `dvc remote add/modify --local` write, in one file (each dvc call
        # costs an interpreter start): the worker's cache, and the shared remote as the default.
        local = ["[core]", "    remote = shared", "[cache]", f"    dir = {tasks / '.dvc-cache'}"]
        local += ["['remote \"shared\"']", f"    url = {remote_url()}"]
        if os.environ.get("HATCHERY_DVC_REMOTE_KEYFILE"):
            local.append(f"    keyfile = {os.environ['HATCHERY_DVC_REMOTE_KEYFILE']}")
        (root / ".dvc" / "config.local").write_text("\n".join(local) + "\n")
        lock = _lockfiles(base).get(workspace_key(overrides))
        if lock:
            (root / "dvc.lock").write_text(lock)
            if pull:
                _dvc(["pull", "--with-deps", "--allow-missing", *pull], cwd=root, env=env)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _publish(root: Path, overrides: dict[str, Any] | None, base: Paths) -> None:
    """Push what the task made, merge its dvc.lock into the shared one, copy metrics/ for the report."""
    _dvc(["push"], cwd=root, env=os.environ.copy())
    if (root / "dvc.lock").exists():
        _lockfiles(base).merge(workspace_key(overrides), (root / "dvc.lock").read_text())
    if (root / "metrics").is_dir():
        shutil.copytree(root / "metrics", workspace_root(overrides, base) / "metrics", dirs_exist_ok=True)


@contextlib.contextmanager
def materialised(plan: dict[str, Any], base: Paths | None = None) -> Iterator[Path]:
    """The root holding this run's outputs, for the steps that read them (gate, package).

    One machine: the plan's workspace. Remote mode: a task workspace with the plan's stages pulled.
    """
    if not remote_url():
        yield Path(plan["workspace"])
        return
    with task_workspace(plan.get("overrides"), base, pull=list(plan["stages"])) as root:
        yield root


def run_stage(
    stage: str,
    overrides: dict[str, Any] | None = None,
    budget_env: dict[str, str] | None = None,
    base: Paths | None = None,
) -> dict[str, Any]:
    """`dvc repro <stage>` in the run's workspace (upstream stages too, when changed).

    Returns {"stage", "workspace", "ran": bool} — ran is False when DVC found everything cached (an
    always_changed upstream stage that reran without changing anything does not count: _changed).
    """
    base = base or Paths()
    sweep_outputs(base, keep_workspaces=(workspace_key(overrides), "_tasks"))
    if remote_url():
        if stage not in stage_names(REPO_ROOT):
            raise StageError(f"stage {stage!r} is not in {REPO_ROOT / 'dvc.yaml'}")
        workspace_root(overrides, base).mkdir(parents=True, exist_ok=True)  # the run's view: metrics/ (report)
        with task_workspace(overrides, base, pull=[stage]) as root:
            ran = _changed(root, stage, _dvc(["repro", stage], cwd=root, env=stage_env(root, base, budget_env)))
            _publish(root, overrides, base)
        return {"stage": stage, "workspace": str(workspace_root(overrides, base)), "ran": ran}
    root = prepare_workspace(overrides, base)
    known = stage_names(root)
    if stage not in known:
        raise StageError(f"stage {stage!r} is not in {root / 'dvc.yaml'} (stages: {', '.join(known) or 'none'})")
    ran = _changed(root, stage, _dvc(["repro", stage], cwd=root, env=stage_env(root, base, budget_env)))
    return {"stage": stage, "workspace": str(root), "ran": ran}


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    if len(sys.argv) < 2:
        sys.exit("usage: python -m pipelines.dvc_stage <stage> [dotted.key=yaml_value ...]")
    extra = dict(arg.split("=", 1) for arg in sys.argv[2:])
    print(json.dumps(run_stage(sys.argv[1], {k: yaml.safe_load(v) for k, v in extra.items()})))
