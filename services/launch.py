"""Start, wait for and stop a local `bentoml serve services.service:Hatchery` (make run, benchmarks, tests).

    proc, url = start_service(env, log_path)          # localhost, a free port unless one is given
    wait_for_service(proc, url, log_path)             # /readyz (a champion loaded) or path="/livez"
    stop_service(proc)

The server's output goes to a file, never a pipe: thousands of access-log lines into a pipe nobody
reads would fill it and block the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE = "services.service:Hatchery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, path: str = "/livez", timeout_s: float = 3.0) -> bool:
    """True when GET url+path answers 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_service(
    env: dict[str, str], log_path: Path, port: int | None = None, host: str = "127.0.0.1", own_session: bool = False
) -> tuple[subprocess.Popen, str]:
    """(process, base url) of a `bentoml serve` started in the background from the repository root.

    own_session: start it in its own process group (outlives the caller; stop it with stop_service).
    """
    port = port or free_port()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE, "--host", host, "--port", str(port)]
    with log_path.open("ab") as log_file:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=own_session
        )
    return proc, f"http://{host}:{port}"


def wait_for_service(
    proc: subprocess.Popen, url: str, log_path: Path, path: str = "/readyz", timeout_s: float = 300.0
) -> float:
    """Seconds until url+path answered 200; RuntimeError with the log's tail if the server exits or times out."""
    start = time.monotonic()
    while not answers(url, path, timeout_s=2.0):
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{_tail(log_path)}")
        if time.monotonic() - start > timeout_s:
            stop_service(proc)
            raise RuntimeError(f"bentoml serve: {path} not answering after {timeout_s:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.5)
    return time.monotonic() - start


def stop_service(proc: subprocess.Popen | int, timeout_s: float = 30.0) -> None:
    """SIGTERM (the process group when it has its own), then SIGKILL after timeout_s."""
    if isinstance(proc, int):  # a pid from a pid file: a process group started with own_session
        try:
            os.killpg(proc, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _tail(log_path: Path, chars: int = 3000) -> str:
    try:
        return Path(log_path).read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
