"""A real OpenSSH server (Debian's ``/usr/sbin/sshd``) for tests, optionally on a separate netns "host".

Use the fixtures from any test module::

    from tests.sshd import sshd_server, sshd_netns  # noqa: F401  (pytest finds them by name)

    def test_x(sshd_server): ...

``sshd_server`` listens on 127.0.0.1 at a free high port; ``sshd_netns`` runs inside its own network
namespace behind a veth pair, so the link can be blackholed with :meth:`SshdServer.link_down`
(it skips, with the reason, when network namespaces cannot be created). Both use throwaway host and
client keys under the test's tmp dir; the login user is the current user (root here). Processes and
namespaces are removed on teardown. :func:`write_inventory` writes an inventory TOML for the device.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from getpass import getuser
from pathlib import Path
from typing import Any, Iterator

import pytest

SSHD = "/usr/sbin/sshd"


def _keygen(path: Path, kind: str = "ed25519") -> Path:
    """Create a passphrase-less key pair ``path`` / ``path.pub``; returns the private key path."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"edgelr-test-{path.name}", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc), deepest last."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parent[int(entry)] = ppid
    out: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def wait_accepting(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until ``host:port`` answers with an SSH banner; raise RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.settimeout(2.0)
                if s.recv(64).startswith(b"SSH-2.0"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise RuntimeError(f"sshd on {host}:{port} did not accept connections within {timeout} s ({last})")


@dataclass
class SshdServer:
    """A running sshd and everything a client needs to reach it."""

    host: str
    port: int
    user: str
    client_key: Path        # private key whose .pub is authorized
    known_hosts: Path       # a known_hosts file holding this server's host key
    host_key: Path          # the server's private host key
    dir: Path
    proc: subprocess.Popen[bytes]
    netns: str | None = None
    veth_host: str | None = None
    veth_dev: str | None = None
    log: Path = field(default=Path("/dev/null"))

    @property
    def known_hosts_name(self) -> str:
        """``[host]:port`` as recorded in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def host_key_line(self) -> str:
        """The known_hosts line for this server."""
        kind, b64 = (self.host_key.with_suffix(".pub").read_text().split() + ["", ""])[:2]
        return f"{self.known_hosts_name} {kind} {b64}\n"

    def transport_kwargs(self, **over: Any) -> dict[str, Any]:
        """Keyword arguments for :class:`device_agents.ssh.SSHTransport` reaching this server."""
        kw: dict[str, Any] = dict(
            host=self.host, port=self.port, user=self.user, key=str(self.client_key),
            known_hosts=str(self.known_hosts), device="sshdev", use_agent=False,
        )
        kw.update(over)
        return kw

    def kill_all(self) -> None:
        """SIGKILL the listener AND its per-connection children (an established session dies too)."""
        pids = _children(self.proc.pid) + [self.proc.pid]
        _kill(pids)
        self.proc.wait(timeout=5)

    def link_down(self) -> None:
        """Blackhole the device: ``ip link set <veth> down`` on the device's end of the veth pair.

        Packets to the device are then dropped silently (no RST, no ICMP). The device end is used, not
        the host end: downing the host end deletes the route, and packets would leak to the default
        route (where a sandbox proxy may even accept the TCP connection).
        """
        self._link("down")

    def link_up(self) -> None:
        """Undo :meth:`link_down`."""
        self._link("up")

    def _link(self, state: str) -> None:
        if self.netns is None or self.veth_dev is None:
            raise RuntimeError("link_down/link_up need the netns variant (fixture sshd_netns)")
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", self.veth_dev, state],
                       check=True, capture_output=True)

    def stop(self) -> None:
        """Stop sshd and every process it started; delete the namespace. Safe to call twice."""
        if self.netns is not None:
            res = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
            _kill([int(p) for p in res.stdout.split() if p.isdigit()])
        else:
            _kill(_children(self.proc.pid))
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.netns is not None:
            subprocess.run(["ip", "link", "del", self.veth_host or ""], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
            self.netns = None


def _config(d: Path, listen: str, port: int, host_key: Path, authorized: Path, sftp: bool = True,
            extra: list[str] | None = None) -> Path:
    cfg = d / "sshd_config"
    cfg.write_text(
        "\n".join(
            [
                f"ListenAddress {listen}",
                f"Port {port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                f"PidFile {d / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "Subsystem sftp internal-sftp" if sftp else "# no SFTP subsystem",
                "LogLevel VERBOSE",
                "MaxStartups 50",
                # bash sources ~/.bashrc for ssh commands when SHLVL < 2; this machine's root .bashrc
                # runs `pyenv init` (~150 ms, ~100 processes) which no real device has. SHLVL=1 skips it.
                "SetEnv SHLVL=1",
                *(extra or []),
                "",
            ]
        )
    )
    return cfg


def start_sshd(d: Path, netns: bool = False, host_key_type: str = "ed25519", sftp: bool = True,
               extra_config: list[str] | None = None) -> SshdServer:
    """Start sshd with throwaway keys under directory ``d``; wait until it accepts.

    Parameters
    ----------
    d
        Empty directory for keys, config and the log (``sshd.log``).
    netns
        Run inside a new network namespace reached over a veth pair (needs root and ``ip``).
        Raises ``pytest.skip.Exception`` when the namespace cannot be created.
    host_key_type
        ``ssh-keygen -t`` type of the server's host key.
    sftp
        Offer the SFTP subsystem (``internal-sftp``); False mimics boards without one.
    extra_config
        More sshd_config lines (e.g. ``ChrootDirectory /path``).
    """
    d.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    host_key = _keygen(d / "host_key", host_key_type)
    client_key = _keygen(d / "client_key")
    authorized = d / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), authorized)
    ns = veth_h = veth_d = None
    if netns:
        ns, veth_h, veth_d, host = _make_netns()
        port = 22
    else:
        host, port = "127.0.0.1", _free_port()
    cfg = _config(d, host, port, host_key, authorized, sftp, extra_config)
    argv = [SSHD, "-f", str(cfg), "-D", "-e"]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    log = d / "sshd.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = SshdServer(
        host=host, port=port, user=getuser(), client_key=client_key, known_hosts=d / "known_hosts",
        host_key=host_key, dir=d, proc=proc, netns=ns, veth_host=veth_h, veth_dev=veth_d, log=log,
    )
    server.known_hosts.write_text(server.host_key_line())
    try:
        wait_accepting(host, port)
    except RuntimeError as exc:
        server.stop()
        raise RuntimeError(f"{exc}; sshd log: {log.read_text()[-2000:]}") from None
    return server


def _make_netns() -> tuple[str, str, str, str]:
    """Create a namespace with a veth pair; returns (namespace, host veth, device veth, device address)."""
    tag = secrets.token_hex(3)
    ns, vh, vd = f"edgelr-t{tag}", f"elh{tag}", f"eld{tag}"
    a, b = 200 + secrets.randbelow(50), secrets.randbelow(256)
    host_ip, dev_ip = f"10.{a}.{b}.1", f"10.{a}.{b}.2"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", vh, "type", "veth", "peer", "name", vd],
        ["ip", "link", "set", vd, "netns", ns],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", vh],
        ["ip", "link", "set", vh, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{dev_ip}/30", "dev", vd],
        ["ip", "netns", "exec", ns, "ip", "link", "set", vd, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    for argv in steps:
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            subprocess.run(["ip", "link", "del", vh], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            pytest.skip(f"cannot create a network namespace for the device ({' '.join(argv)}: {res.stderr.strip()})")
    return ns, vh, vd, dev_ip


def write_inventory(path: Path, server: SshdServer, name: str = "sshdev", **extra: Any) -> Path:
    """Write an inventory TOML with one ssh device ``name`` reaching ``server``; returns ``path``.

    ``extra`` adds keys to the device table (str, bool, int, float values), e.g. ``python="/usr/bin/python3"``.
    """
    fields: dict[str, Any] = dict(
        transport="ssh", host=server.host, port=server.port, user=server.user,
        key=str(server.client_key), known_hosts=str(server.known_hosts),
    )
    fields.update(extra)
    lines = [f"[devices.{name}]"]
    for k, v in fields.items():
        lines.append(f"{k} = {_toml_value(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


@pytest.fixture
def sshd_server(tmp_path: Path) -> Iterator[SshdServer]:
    """sshd on 127.0.0.1:<free port>, throwaway keys; stopped (with its sessions) on teardown."""
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd_netns(tmp_path: Path) -> Iterator[SshdServer]:
    """sshd inside its own network namespace (port 22 at a 10.x.y.2 veth address); skips without netns."""
    server = start_sshd(tmp_path / "sshd", netns=True)
    try:
        yield server
    finally:
        server.stop()
