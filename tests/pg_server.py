"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary directory, a loopback port.

The Debian binaries (``postgresql-15``) refuse to run as root, so as root the cluster belongs to the
``postgres`` user (``su postgres -c ...``) and lives in a world-traversable directory under /tmp.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def pg_bin() -> Path | None:
    """The directory of ``initdb``/``pg_ctl`` (newest installed version), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PGServer:
    """A running cluster: ``url(db)`` names a database on it, ``create_db(name)`` makes one."""

    def __init__(self, port: int, user: str = "postgres") -> None:
        self.port = port
        self.user = user

    def url(self, db: str, password: str | None = None, **params: str) -> str:
        auth = f"{self.user}:{password}" if password else self.user
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server(*, fsync: bool = True) -> Iterator[PGServer]:
    """Start a cluster on a free loopback port; stop it and delete its files at the end."""
    bindir = pg_bin()
    if bindir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="edgelr-pg-"))
    root.chmod(0o755)
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")

    def run(cmd: list[str]) -> None:
        line = " ".join(shlex.quote(c) for c in cmd)
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", line] if as_root else ["sh", "-c", line]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise RuntimeError(f"{line} failed: {res.stderr.strip()[-1500:]} {tail}")

    port = free_port()
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if not fsync:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    try:
        run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts, "start"])
        try:
            yield PGServer(port)
        finally:
            _stop(data)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stop(data: Path) -> None:
    """Immediate shutdown (SIGQUIT to the postmaster: no checkpoint, its backends go at once); waits up to 30 s.

    Quicker than ``pg_ctl stop`` through ``su`` on a loaded machine (that took 8-15 s there).
    """
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
