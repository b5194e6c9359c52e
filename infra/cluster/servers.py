"""The servers the cluster profile uses but does not own: PostgreSQL, Redis, and an SSH server for DVC.

    HATCHERY_PG_ADMIN_URL   a PostgreSQL URL allowed to CREATE DATABASE
                            (default postgresql://postgres@127.0.0.1:5432/postgres; trust auth here)
    HATCHERY_REDIS_URL      the Celery broker (default redis://127.0.0.1:6379/0)

PostgreSQL and Redis are expected to run already (they do on the development and CI machines); this
module creates and drops databases on them, checks they answer, and stops/starts PostgreSQL for the
outage test. The SSH server is ours: an `sshd` on a loopback port with generated host and client
keys, serving one folder as the DVC remote every worker pushes to and pulls from.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SSHD = "/usr/sbin/sshd"


def admin_url() -> str:
    return os.environ.get("HATCHERY_PG_ADMIN_URL") or DEFAULT_ADMIN_URL


def redis_url() -> str:
    return os.environ.get("HATCHERY_REDIS_URL") or DEFAULT_REDIS_URL


def database_url(name: str, driver: str = "") -> str:
    """The admin URL pointed at database `name` (driver: e.g. "+psycopg2" for SQLAlchemy)."""
    parts = urlsplit(admin_url())
    return urlunsplit((parts.scheme + driver, parts.netloc, f"/{name}", parts.query, ""))


def _reachable(url: str, default_port: int) -> str | None:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{parts.port or default_port}: {exc}"


def postgres_unreachable() -> str | None:
    """None when PostgreSQL accepts a login at the admin URL, else why not."""
    reason = _reachable(admin_url(), 5432)
    if reason:
        return reason
    try:
        import psycopg2

        psycopg2.connect(admin_url(), connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure to log in is the reason to report
        return f"{admin_url()}: {str(exc).strip()}"
    return None


def redis_unreachable() -> str | None:
    reason = _reachable(redis_url(), 6379)
    if reason:
        return reason
    try:
        import redis

        redis.Redis.from_url(redis_url(), socket_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return f"{redis_url()}: {exc}"
    return None


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_url(), connect_timeout=5)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_database(prefix: str) -> str:
    """CREATE DATABASE <prefix>_<random>; returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    return name


def ensure_database(name: str) -> str:
    """CREATE DATABASE name unless it exists; returns the name."""
    import psycopg2

    conn = psycopg2.connect(admin_url(), connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            exists = cur.fetchone() is not None
    finally:
        conn.close()
    if not exists:
        _admin(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    """DROP DATABASE name, ending whatever sessions are still connected (WITH (FORCE), PostgreSQL 13+)."""
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- PostgreSQL outage (tests) ----------------------------------------------------------------------
def _pg_cluster() -> tuple[str, str]:
    """(version, name) of the local PostgreSQL cluster (Debian's pg_ctlcluster layout)."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or not shutil.which("pg_ctlcluster"):
        raise RuntimeError("no Debian PostgreSQL cluster here (/etc/postgresql, pg_ctlcluster)")
    return versions[-1], "main"


def postgres_control(action: str) -> None:
    """Stop or start the local PostgreSQL (the command the machine notes give for restarting it)."""
    version, name = _pg_cluster()
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action]
    if action == "stop":
        cmd += ["--mode", "fast"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if action == "start":
        deadline = time.time() + 60
        while postgres_unreachable():
            if time.time() > deadline:
                raise RuntimeError("PostgreSQL did not come back within 60 s")
            time.sleep(0.5)


# --- the DVC remote over SSH -----------------------------------------------------------------------
def sshd_available() -> str | None:
    """None when an OpenSSH server can be started here, else why not."""
    if not Path(SSHD).exists():
        return f"{SSHD} is not installed (Debian: apt-get install openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sshd(folder: Path, log_path: Path, port: int | None = None) -> tuple[subprocess.Popen, dict[str, str]]:
    """An sshd on 127.0.0.1:port (a free one by default) accepting only a key generated into folder/.

    Returns (process, remote settings): url (ssh://user@127.0.0.1:port/<folder>/remote), keyfile, user.
    Host and client keys, the config and the authorized key live in folder/ssh (0600/0700).
    """
    folder = Path(folder)
    ssh = folder / "ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh, 0o700)
    remote = folder / "remote"
    remote.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        if not (ssh / name).exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / name)], check=True, capture_output=True
            )
    (ssh / "authorized_keys").write_text((ssh / "client_key.pub").read_text())
    os.chmod(ssh / "authorized_keys", 0o600)
    port = port or free_port()
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    config = ssh / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {ssh / 'host_key'}",
                f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
                f"PidFile {ssh / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                f"AllowUsers {user}",
                "StrictModes no",
                "UsePAM no",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory sshd insists on
    with Path(log_path).open("ab") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.time() + 20
    while _reachable(f"ssh://127.0.0.1:{port}", port):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"sshd did not start (exit {proc.poll()}): see {log_path}")
        time.sleep(0.2)
    return proc, {"url": f"ssh://{user}@127.0.0.1:{port}{remote}", "keyfile": str(ssh / "client_key"), "user": user}
