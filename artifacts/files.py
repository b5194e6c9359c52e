"""Atomic writes, append-only JSON lines and content hashes: how every output reaches disk.

A step writes into a staged sibling folder (or temp file) and renames it into place, so an
interrupted or failed step never leaves a half-written output: the last good one stays as it was.
What a killed process leaves behind (a staged folder, a `.old` copy, a failed download, an
abandoned DVC workspace) is swept at the next start by sweep_stale / sweep_workspaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from artifacts.paths import Paths

log = logging.getLogger(__name__)

# Leftovers of this module's atomic writes and of Registry.download_bundle: `.<name>.<8 random chars>`
# (tempfile.mkdtemp's suffix, or uuid hex), `.<name>.old` (staged_dir), `.<name>.tmp` (write_json).
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}|old|tmp)$")
DEFAULT_WORKSPACE = "default"
STALE_AFTER_H, WORKSPACE_TTL_DAYS = 6.0, 14.0  # defaults of HATCHERY_STALE_AFTER_H, HATCHERY_WORKSPACE_TTL_DAYS


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh sibling folder; on success it replaces `target` in one rename, else it is dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    stage.chmod(0o755)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    stage.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, payload: Any, durable: bool = False) -> None:
    """Write JSON atomically (temp file + rename).

    durable: fsync the temp file before the rename and the folder after it, so a crash or power loss
    leaves the old file or the new one, never an empty or truncated one (the rollout state). Off by
    default: two fsyncs cost milliseconds, and most outputs can simply be rewritten.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        fh.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(path)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """fsync a folder: makes a rename or a new file in it survive a crash (POSIX keeps names in the folder)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """The parsed file, or None when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def append_jsonl(
    path: Path, record: dict[str, Any], durable: bool = False, max_bytes: int | None = None, keep: int = 0
) -> None:
    """Append one JSON line (O_APPEND, one write(): whole lines from several writers never interleave).

    durable: fsync before returning (an audit trail must survive a crash; a request log need not).
    max_bytes: past this size the file is rotated after the write (rotate_jsonl; `keep` old files).
    Raises OSError when the line cannot be written (a full disk): callers on an answer path catch it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # The last write was cut short (a full disk): end that fragment, so this line parses on its own.
            data = b"\n" + data
        written = 0
        while written < len(data):  # one write() unless the disk fills: then the next one raises ENOSPC
            written += os.write(fd, data[written:])
        if durable:
            os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if max_bytes is not None and size > max_bytes:
        rotate_jsonl(path, max_bytes, keep)


def rotate_jsonl(path: Path, max_bytes: int, keep: int) -> bool:
    """Rename path -> path.1 -> ... -> path.<keep> (the oldest dropped) if path is still over max_bytes.

    Under an exclusive flock on the sibling `.<name>.rotate`, taken without waiting: while a reader
    (read_rotated_jsonl) holds it shared, or another writer is rotating, this writer skips and a later
    write rotates, so an answer never waits for the log. The size is checked again under the lock, so
    of several writers that crossed the limit together one rotates. A writer that opened the file
    before the rename finishes its line in path.1: every line stays whole, in one of the files.
    keep=0: the file is dropped. Returns whether it rotated.
    """
    path = Path(path)
    with _rotation_lock(path, exclusive=True, wait=False) as held:
        if not held:
            return False
        try:
            if path.stat().st_size <= max_bytes:
                return False  # another writer rotated it meanwhile
        except FileNotFoundError:
            return False
        if keep <= 0:
            path.unlink()
            return True
        for i in range(keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{i + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
        return True


@contextlib.contextmanager
def _rotation_lock(path: Path, exclusive: bool, wait: bool) -> Iterator[bool]:
    """flock on `.<name>.rotate` beside path; yields whether it is held (wait=False may not get it)."""
    import fcntl

    with path.with_name(f".{path.name}.rotate").open("a") as lock:
        try:
            fcntl.flock(lock, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def rotated_files(path: Path, keep: int) -> list[Path]:
    """path and its rotated copies that exist, newest first: [path, path.1, ..., path.<keep>]."""
    path = Path(path)
    candidates = [path] + [path.with_name(f"{path.name}.{i}") for i in range(1, keep + 1)]
    return [p for p in candidates if p.exists()]


def read_rotated_jsonl(path: Path, keep: int, field: str | None = None, value: str | None = None) -> list[dict]:
    """The records of path and its rotated copies, oldest first (no rotation runs meanwhile).

    field/value: only records whose `field` equals `value` (a rollout id), reading back from the newest
    file only until the one in which `value` begins: lines are appended in time order, so once a file
    that holds `value` begins with another value, the files before it were written before `value`
    first appeared. The driver of a running rollout thus reads its own rollout's files, usually one,
    after every batch, not the whole history.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    with _rotation_lock(path, exclusive=False, wait=True):
        if value is None:
            return [r for f in reversed(rotated_files(path, keep)) for r in read_jsonl(f)]
        newest_first: list[list[dict]] = []
        for f in rotated_files(path, keep):
            mine = [r for r in read_jsonl(f, contains=str(value)) if r.get(field) == value]
            newest_first.append(mine)
            first = first_jsonl(f)
            if any(newest_first) and first is not None and first.get(field) != value:
                break
    return [r for records in reversed(newest_first) for r in records]


def read_jsonl(path: Path, contains: str | None = None) -> list[dict[str, Any]]:
    """Every complete line of a JSON-lines file ([] when missing); a line being written is skipped.

    contains: parse only the lines holding this text (a cheap prefilter; callers still check the field).
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:  # also: rotated away between a listing and this read
        return []
    out = []
    for line in text.splitlines():
        if not line.strip() or (contains is not None and contains not in line):
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def first_jsonl(path: Path) -> dict[str, Any] | None:
    """The first complete record of a JSON-lines file, reading only its first line (None: empty or missing)."""
    try:
        with Path(path).open(errors="replace") as fh:
            for line in fh:
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return None


def content_hash(*paths: Path) -> str:
    """md5 over the bytes of every file under the given paths (sorted), a data-version stamp."""
    digest = hashlib.md5()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            if not f.exists():
                continue
            digest.update(str(f.relative_to(root.parent)).encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def _newest_mtime(path: Path) -> float:
    """The latest modification time in a tree: a writer still filling a staged folder keeps it young."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep_stale(folder: Path, older_than_s: float, now: float | None = None) -> list[Path]:
    """Remove the leftovers of interrupted atomic writes and downloads under `folder` (recursively):
    staged siblings `.<name>.<random>`, `.<name>.old`, temp files `.<name>.tmp` and failed downloads
    `.<version>.<hex>` untouched for `older_than_s` seconds (newest mtime in the tree, so one being
    written is kept). Other hidden entries (`.dvc`, `.git`) are neither removed nor entered.

    Returns the removed paths. A missing folder is nothing to sweep.
    """
    folder, now = Path(folder), time.time() if now is None else now
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            if not LEFTOVER.match(name):
                continue
            path = Path(root) / name
            try:
                age = now - _newest_mtime(path)
            except OSError:  # gone meanwhile (its own writer renamed it into place)
                continue
            if age >= older_than_s:
                _remove(path)
                removed.append(path)
                log.info("swept %s (a leftover, untouched for %.1f h)", path, age / 3600)
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # never into leftovers, .dvc, .git
    return removed


def dvc_busy(workspace: Path) -> bool:
    """Whether a DVC command is running in `workspace`: it holds the repository lock `.dvc/tmp/lock`
    (zc.lockfile: an exclusive flock for the whole command) or a live process is listed in the stage
    lock `.dvc/tmp/rwlock` ({"read": {path: [{pid, cmd}]}, "write": {path: {pid, cmd}}})."""
    import fcntl

    tmp = Path(workspace) / ".dvc" / "tmp"
    lock = tmp / "lock"
    if lock.exists():
        try:
            with lock.open("a") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return True
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except OSError:
            return True  # cannot tell: treat as busy
    try:
        rw = json.loads((tmp / "rwlock").read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # half-written by a running DVC: busy
    holders = list((rw.get("write") or {}).values()) + [i for infos in (rw.get("read") or {}).values() for i in infos]
    for info in holders:
        try:
            os.kill(int(info["pid"]), 0)
            return True
        except ProcessLookupError:
            continue
        except (PermissionError, KeyError, TypeError, ValueError):
            return True  # alive but not ours, or unreadable: busy
    return False


def sweep_workspaces(
    folder: Path, older_than_s: float, keep: tuple[str, ...] = (), now: float | None = None
) -> list[Path]:
    """Remove the per-override DVC workspaces under `folder` (pipelines/dvc_stage.py) unused for
    `older_than_s` seconds: never `default`, never one named in `keep`, never one DVC is running in.

    "Unused" is the workspace folder's own mtime, which prepare_workspace sets on every use. Returns
    the removed paths.
    """
    folder, now = Path(folder), time.time() if now is None else now
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for ws in sorted(folder.iterdir()):
        if not ws.is_dir() or ws.is_symlink() or ws.name in (DEFAULT_WORKSPACE, *keep) or ws.name.startswith("."):
            continue
        try:
            age = now - ws.stat().st_mtime
        except OSError:
            continue
        if age < older_than_s or dvc_busy(ws):
            continue
        shutil.rmtree(ws, ignore_errors=True)
        removed.append(ws)
        log.info("swept workspace %s (unused for %.1f days)", ws, age / 86400)
    return removed


def sweep_outputs(paths: Paths, keep_workspaces: tuple[str, ...] = ()) -> list[Path]:
    """The start-up sweep of an outputs root: leftovers under data/, models/, reports/ and
    serving_cache/ untouched for HATCHERY_STALE_AFTER_H hours (default 6), and the workspaces unused
    for HATCHERY_WORKSPACE_TTL_DAYS days (default 14; keep_workspaces: names never removed).

    A process that owns these folders calls it when it starts (the service, `make run`, a DVC stage
    run by Airflow). Returns the removed paths.
    """
    removed = []
    for folder in (paths.data, paths.models, paths.reports, paths.serving_cache):
        removed += sweep_stale(folder, stale_after_s())
    return removed + sweep_workspaces(paths.workspaces, workspace_ttl_s(), keep=keep_workspaces)


def stale_after_s() -> float:
    """HATCHERY_STALE_AFTER_H (default 6) in seconds: when a leftover of an atomic write is abandoned."""
    return float(os.environ.get("HATCHERY_STALE_AFTER_H") or STALE_AFTER_H) * 3600


def workspace_ttl_s() -> float:
    """HATCHERY_WORKSPACE_TTL_DAYS (default 14) in seconds: when an unused DVC workspace is removed."""
    return float(os.environ.get("HATCHERY_WORKSPACE_TTL_DAYS") or WORKSPACE_TTL_DAYS) * 86400
