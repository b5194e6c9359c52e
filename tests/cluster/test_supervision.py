"""The cluster profile's Airflow components run under circusd (infra/cluster/cluster.py: circus_ini): one that
exits is started again (the scheduler, DAG processor and triggerer exit when PostgreSQL goes away), and SIGTERM to
circusd (what `cluster.py down` sends) stops it and its components. A stand-in component here: no servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.cluster import cluster as cl


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def _wait(cond, timeout_s: float = 60) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_a_component_that_exits_is_started_again_and_sigterm_stops_them_all(tmp_path):
    started = tmp_path / "started.txt"
    code = f"import os, time; open({str(started)!r}, 'a').write(f'{{os.getpid()}} '); time.sleep(600)"
    ini = tmp_path / "circus.ini"
    ini.write_text(cl.circus_ini([("component", [sys.executable, "-c", code])], tmp_path, tmp_path))
    circusd = subprocess.Popen(
        [str(Path(sys.executable).parent / "circusd"), str(ini)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert _wait(lambda: len(_pids(started)) == 1), (tmp_path / "component.log").read_text()
        (first,) = _pids(started)
        os.kill(first, signal.SIGKILL)  # it exits, as the scheduler does when its database goes away
        assert _wait(lambda: len(_pids(started)) == 2), _pids(started)
        second = _pids(started)[1]
        assert second != first and _alive(second) and not _alive(first)
        circusd.send_signal(signal.SIGTERM)
        assert circusd.wait(timeout=60) == 0
        assert _wait(lambda: not _alive(second), 10), f"component {second} outlived circusd"
        assert len(_pids(started)) == 2  # stopping is not an exit to restart from
    finally:
        if circusd.poll() is None:
            circusd.kill()
        for pid in _pids(started):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_controller_listens_on_unix_sockets_only(tmp_path):
    ini = cl.circus_ini([("scheduler", ["/bin/true", "--flag", "a b"])], tmp_path / "logs", tmp_path)
    assert f"endpoint = ipc://{tmp_path / 'circus.sock'}" in ini
    assert "tcp://" not in ini
    assert "args = --flag 'a b'" in ini  # quoted: circus splits the line as a shell would
    assert f"stdout_stream.filename = {tmp_path / 'logs' / 'scheduler.log'}" in ini
