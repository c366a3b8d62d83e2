"""SSH transport (paramiko): run commands and move files on a Linux board such as a Raspberry Pi.

Safety and liveness rules this module keeps:

* Host keys are verified. ``~/.ssh/known_hosts`` and an optional ``known_hosts`` file are read; an
  unknown key is refused with its fingerprint and the ways to trust it (``--trust-new-host`` /
  ``trust_new_host = true``, or ``ssh-keyscan`` into known_hosts). Trusting a new host appends it to
  the known_hosts file. A CHANGED key is always refused, also with ``trust_new_host``.
* ``~/.ssh/config`` is honoured (HostName, Port, User, IdentityFile); explicit options win.
* Every connect/run/push/pull has a deadline the agent enforces itself: a watchdog thread closes the
  connection when it passes (paramiko alone hangs > 88 s in ``sftp.put`` on a blackholed link), and
  the caller gets :class:`edgelr.errors.DeviceError` within the deadline, never a hang.
* No secrets in messages or logs: key *paths* may be named, never key material or passphrases.
* Nothing is left running: a command's stdin stays open while the host waits and carries a newline
  every ``heartbeat`` s (:attr:`Transport.heartbeat_s`), so the benchmark wrapper
  (:mod:`device_agents.procs`) stops the benchmark when the host dies or the link goes silent. A command
  cut off by a lost link is stopped when the transport reconnects; one cut off by a timeout or Ctrl-C is
  stopped at once (its process group: TERM, then KILL).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import posixpath
import secrets
import select
import shlex
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import paramiko

from device_agents.files import sha256_cached
from device_agents.transport import TRANSPORTS, Command, RunResult, Transport, to_shell
from edgelr.errors import DeviceError, HostKeyError

log = logging.getLogger(__name__)
# paramiko logs link failures at ERROR with tracebacks; we raise DeviceError instead. A NullHandler keeps
# them off the user's terminal (Python's last-resort handler) while an app's own logging still gets them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

#: Marker the remote shell prints on stderr (first line) so a timed-out command can be killed by pgid.
_PID_MARKER = "edgelr-pid:"
#: Seconds granted after a run deadline to kill the remote process group over the same connection.
KILL_GRACE_S = 1.0
_CHUNK = 1 << 16


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH style fingerprint of a public key, e.g. ``SHA256:kR3...`` (base64 without padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The name a host is recorded under in known_hosts: ``host`` for port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass
class TransferStats:
    """What a transport moved; the benchmark overhead report reads these counters."""

    pushes: int = 0          # files actually sent
    skipped: int = 0         # pushes skipped because the remote sha256 matched
    bytes_sent: int = 0      # bytes
    bytes_received: int = 0  # bytes
    connects: int = 0        # SSH connections opened


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko only when known_hosts has NO key at all for the host (unknown host).

    A host with a known key of any type never reaches here: paramiko raises BadHostKeyException,
    which :class:`SSHTransport` turns into a "changed key" :class:`HostKeyError`.
    """

    def __init__(self, transport: "SSHTransport") -> None:
        self.transport = transport

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        t = self.transport
        if not t.trust_new_host:
            raise HostKeyError(
                f"host key of device {t.device!r} ({hostname}) is not known: {key.get_name()} {fingerprint(key)}. "
                f"If this is the right device, trust it once with --trust-new-host (or trust_new_host = true in "
                f"the inventory), or record it yourself: ssh-keyscan -p {t.port} {t.hostname} >> {t.record_file}"
            )
        try:
            t.record_host_key(hostname, key)
        except OSError as exc:
            raise HostKeyError(
                f"cannot record the host key of device {t.device!r} in {t.record_file}: {exc.strerror or exc}; "
                "fix the file's permissions or set known_hosts to a writable file"
            ) from exc
        client.get_host_keys().add(hostname, key.get_name(), key)


@TRANSPORTS.register("ssh")
class SSHTransport(Transport):
    """Run commands and move files on one device over SSH; one reused connection per object.

    Parameters
    ----------
    host
        Host name, address or ``~/.ssh/config`` alias.
    port, user, key
        Explicit options; they override ``~/.ssh/config`` (None, 0 or "" mean "not set"). ``key`` is a
        private key file (OpenSSH format); without one the config's IdentityFile entries, then the
        default keys are tried. A running ssh-agent (``SSH_AUTH_SOCK``) is used too unless ``use_agent``
        is False.
    known_hosts
        Extra known_hosts file, read besides ``~/.ssh/known_hosts``; new keys are recorded here when given.
    trust_new_host
        Accept and record an UNKNOWN host key. A changed key is refused regardless.
    device
        Inventory name, used in messages.
    connect_timeout
        Upper bound (s) for opening the connection; the operation's own deadline also bounds it.
    keepalive
        Seconds between SSH keepalive packets (0 disables).
    ssh_config
        SSH client config file; default ``~/.ssh/config`` when it exists.
    use_agent
        Also offer ssh-agent keys.
    heartbeat
        Seconds between the newlines written to a running command's stdin (0: none, stdin only ends with
        the connection). The benchmark wrapper stops the benchmark after 5 heartbeats of silence.
    **extra
        Other inventory keys (python, workdir, ...) are accepted and kept in :attr:`extra`.
    """

    required_fields = {"host": "ADDRESS"}

    @classmethod
    def inventory_kwargs(cls, spec: Any) -> dict[str, Any]:
        return {"host": spec.host, "port": spec.port, "user": spec.user, "key": spec.key,
                "known_hosts": spec.known_hosts, "trust_new_host": spec.trust_new_host,
                "connect_timeout": spec.connect_timeout, "device": spec.name}

    @classmethod
    def address(cls, spec: Any) -> str:
        return f"{spec.user + '@' if spec.user else ''}{spec.host}:{spec.port or 22}"

    def __init__(
        self,
        host: str,
        port: int | None = None,
        user: str | None = None,
        key: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        trust_new_host: bool = False,
        device: str | None = None,
        connect_timeout: float = 15.0,
        keepalive: float = 5.0,
        ssh_config: str | os.PathLike[str] | None = None,
        use_agent: bool = True,
        heartbeat: float = 2.0,
        **extra: Any,
    ) -> None:
        if not host:
            raise DeviceError("ssh transport needs a host; add host = \"<name or address>\" to the inventory entry")
        self.alias = host
        self.device = device or host
        self.trust_new_host = bool(trust_new_host)
        self.connect_timeout = float(connect_timeout)
        self.keepalive = float(keepalive)
        self.use_agent = bool(use_agent)
        self.heartbeat_s = max(0.0, float(heartbeat))
        self.extra = extra
        home = Path(os.path.expanduser("~"))
        cfg_path = Path(ssh_config).expanduser() if ssh_config else home / ".ssh" / "config"
        cfg: dict[str, Any] = {}
        if cfg_path.is_file():
            try:
                cfg = dict(paramiko.SSHConfig.from_path(str(cfg_path)).lookup(host))
            except Exception as exc:  # paramiko raises plain exceptions on bad config lines
                raise DeviceError(f"cannot read SSH config {cfg_path}: {exc}; fix or move the file") from exc
        self.hostname: str = str(cfg.get("hostname", host))
        try:
            self.port: int = int(port or cfg.get("port", 22))  # None/0: not set
        except ValueError as exc:
            raise DeviceError(f"device {self.device!r}: port must be an integer, got {port!r}") from exc
        if not 1 <= self.port <= 65535:
            raise DeviceError(f"device {self.device!r}: port {self.port} is out of range; expected 1-65535")
        self.user: str = str(user or cfg.get("user") or getpass.getuser())
        if key:
            self.keys: list[str] = [str(Path(key).expanduser())]
            if not Path(self.keys[0]).is_file():
                raise DeviceError(f"device {self.device!r}: SSH key file {self.keys[0]} not found; fix 'key' in "
                                  "the inventory")
        else:  # like ssh, IdentityFile entries that do not exist are skipped
            found = (str(Path(k).expanduser()) for k in cfg.get("identityfile", []))
            self.keys = [k for k in found if Path(k).is_file()]
        self.user_known_hosts = home / ".ssh" / "known_hosts"
        self.known_hosts: Path | None = Path(known_hosts).expanduser() if known_hosts else None
        self.record_file: Path = self.known_hosts or self.user_known_hosts
        self.stats = TransferStats()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._no_sftp = False  # the device refused the SFTP subsystem: copy through exec channels
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._op_deadline = float("inf")  # monotonic end of the current operation (set by _deadline)
        self._op_timeout = self.connect_timeout  # its timeout in s, for messages
        self._lost: set[int] = set()  # remote process groups of commands cut off by a lost link

    # ------------------------------------------------------------------ connection and deadlines
    def __repr__(self) -> str:
        return f"SSHTransport({self.user}@{self.hostname}:{self.port}, device={self.device!r})"

    @property
    def where(self) -> str:
        """``user@host:port`` for messages."""
        return f"{self.user}@{self.hostname}:{self.port}"

    def record_host_key(self, name: str, key: paramiko.PKey) -> None:
        """Append ``name key`` to :attr:`record_file` (created with mode 0600, its directory 0700)."""
        path = self.record_file
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = paramiko.hostkeys.HostKeyEntry([name], key).to_line()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write("\n")
            f.write(line)
        log.warning("trusted new host key of %s: %s %s (recorded in %s)", name, key.get_name(), fingerprint(key), path)

    def _abort(self) -> None:
        """Close the connection from the watchdog thread; any blocked paramiko call returns at once."""
        with self._lock:
            client, sock = self._client, self._sock
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort from a timer thread
                pass
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _drop(self) -> None:
        """Forget the connection (after an abort or a lost link) so the next call reconnects."""
        self._abort()
        with self._lock:
            self._client = self._sftp = self._sock = None

    @contextmanager
    def _deadline(self, timeout: float, what: str, shown: float | None = None) -> Iterator[None]:
        """Run the body within ``timeout`` s; a watchdog closes the connection when it passes.

        ``shown`` is the deadline named in messages (the caller's, when ``timeout`` adds a grace).

        Raises
        ------
        DeviceError
            "did not answer within N s" when the watchdog fired; "connection lost" for other link errors.
        """
        if timeout <= 0:
            raise DeviceError(f"{what} on device {self.device!r}: timeout must be > 0 s, got {timeout}")
        fired = threading.Event()
        shown = timeout if shown is None else shown

        def fire() -> None:
            fired.set()
            self._abort()

        timer = threading.Timer(timeout, fire)
        timer.daemon = True
        self._op_deadline, self._op_timeout = time.monotonic() + shown, shown
        timer.start()
        try:
            yield
        except DeviceError as exc:
            if fired.is_set():
                self._drop()
                raise DeviceError(self._no_answer(shown, what)) from exc
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._drop()
            if fired.is_set():
                raise DeviceError(self._no_answer(shown, what)) from exc
            raise DeviceError(
                f"connection to device {self.device!r} ({self.where}) was lost during {what}: "
                f"{type(exc).__name__}: {exc or 'closed'}; check that the device is up and sshd runs"
            ) from exc
        finally:
            timer.cancel()
        if fired.is_set():  # the body finished but the watchdog closed the link under it
            self._drop()
            raise DeviceError(self._no_answer(shown, what))

    def _no_answer(self, timeout: float, what: str) -> str:
        return (f"device {self.device!r} ({self.where}) did not answer within {timeout:g} s during {what}; "
                "check the link")

    def _connected(self) -> paramiko.SSHClient:
        """The live client, connecting first if needed. Call inside :meth:`_deadline`."""
        client = self._client
        if client is not None:
            t = client.get_transport()
            if t is not None and t.is_active():
                return client
            self._drop()
        return self._connect()

    def _connect(self) -> paramiko.SSHClient:
        try:
            return self._open()
        except BaseException:
            self._drop()  # never keep a half-open client (failed host key, auth or handshake)
            raise

    def _open(self) -> paramiko.SSHClient:
        # bounded by the operation's deadline too (the watchdog cannot close a socket still connecting)
        limit = max(0.1, min(self.connect_timeout, self._op_deadline - time.monotonic()))
        try:
            sock = socket.create_connection((self.hostname, self.port), timeout=limit)
        except TimeoutError as exc:
            raise DeviceError(
                f"device {self.device!r} ({self.where}) did not answer within "
                f"{min(self.connect_timeout, self._op_timeout):g} s "
                "during connect; "
                "check the link and the address"
            ) from exc
        except OSError as exc:
            raise DeviceError(
                f"cannot reach device {self.device!r} at {self.hostname}:{self.port}: {exc.strerror or exc}; "
                "check the address, the port and that sshd runs"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle/delayed-ACK stalls
        client = paramiko.SSHClient()
        with self._lock:
            self._sock, self._client = sock, client
        for path in (self.user_known_hosts, self.known_hosts):
            if path is not None and path.is_file():
                try:
                    client.get_host_keys().load(str(path))
                except (OSError, paramiko.SSHException) as exc:
                    raise HostKeyError(f"cannot read known_hosts file {path}: {exc}; fix or remove the bad line")
        client.set_missing_host_key_policy(_HostKeyPolicy(self))
        kw: dict[str, Any] = dict(
            hostname=self.hostname,
            port=self.port,
            username=self.user,
            sock=sock,
            timeout=limit,
            banner_timeout=limit,
            auth_timeout=limit,
            allow_agent=self.use_agent,
            look_for_keys=not self.keys,
        )
        if self.keys:
            kw["key_filename"] = self.keys
        try:
            client.connect(**kw)
        except paramiko.BadHostKeyException as exc:
            name = known_hosts_name(self.hostname, self.port)
            raise HostKeyError(
                f"host key of device {self.device!r} ({name}) CHANGED: known_hosts has {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)}, the device offered {exc.key.get_name()} {fingerprint(exc.key)}. "
                "This may be a man-in-the-middle attack or a reinstalled device; edgelr never accepts a changed "
                f"key. If the change is expected, remove the old entry: ssh-keygen -R '{name}' -f "
                f"{self._file_holding(name)}"
            ) from None
        except paramiko.PasswordRequiredException:
            raise DeviceError(
                f"SSH key for device {self.device!r} is encrypted; load it into ssh-agent (ssh-add <key>) "
                "and retry"
            ) from None
        except paramiko.AuthenticationException:
            keys = ", ".join(self.keys) if self.keys else "the default keys"
            agent = " and ssh-agent" if self.use_agent and os.environ.get("SSH_AUTH_SOCK") else ""
            raise DeviceError(
                f"SSH login as {self.where} (device {self.device!r}) was refused for {keys}{agent}; check the "
                "user and that the public key is in the device's ~/.ssh/authorized_keys"
            ) from None
        except paramiko.SSHException as exc:
            # the banner timeout surfaces as "Error reading SSH protocol banner", or, when connect's own
            # timeout ends first, as a later "No existing session": the remote version never arrived
            ptransport = client.get_transport()
            if "banner" not in str(exc).lower() and (ptransport is None or ptransport.remote_version):
                raise
            raise DeviceError(
                f"device {self.device!r} ({self.hostname}:{self.port}): no SSH banner within {limit:g} s; the "
                "port accepts connections but does not speak SSH (wrong port, or a sshd that hangs)"
            ) from None
        transport = client.get_transport()
        assert transport is not None
        if self.keepalive > 0:
            transport.set_keepalive(max(1, int(self.keepalive)))
        self.stats.connects += 1
        log.debug("connected to %s (%s)", self.device, self.where)
        if self._lost:
            try:
                self._stop_lost(client)
            except (OSError, EOFError, paramiko.SSHException) as exc:  # best effort; the run goes on
                log.info("device %s: could not stop commands of the lost connection: %s", self.device, exc)
        return client

    def _stop_lost(self, client: paramiko.SSHClient) -> None:
        """Stop the process groups of commands an earlier connection lost (still running if sshd has not
        noticed yet); only groups whose leader still is an edgelr command (its command line says so)."""
        pids, self._lost = sorted(self._lost), set()
        transport = client.get_transport()
        assert transport is not None
        line = "; ".join(
            f"grep -q edgelr /proc/{p}/cmdline 2>/dev/null && kill -TERM -- -{p} 2>/dev/null" for p in pids
        ) + "; exit 0"
        chan = transport.open_session(timeout=KILL_GRACE_S)
        try:
            chan.exec_command(line)
            _drain(chan, time.monotonic() + KILL_GRACE_S)
        finally:
            chan.close()
        log.info("device %s: stopped %d command(s) cut off by the lost connection", self.device, len(pids))

    def _file_holding(self, name: str) -> Path:
        """The known_hosts file that has an entry for ``name`` (for the ssh-keygen -R hint)."""
        for path in (self.known_hosts, self.user_known_hosts):
            if path is not None and path.is_file():
                try:
                    if paramiko.HostKeys(str(path)).lookup(name):
                        return path
                except (OSError, paramiko.SSHException):
                    continue
        return self.record_file

    def connect(self, timeout: float = 15.0) -> None:
        """Open the connection now (it is otherwise opened by the first operation)."""
        with self._deadline(timeout, "connect"):
            self._connected()

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._drop()

    # ------------------------------------------------------------------ commands
    def run(self, cmd: Command, timeout: float, env: dict[str, str] | None = None) -> RunResult:
        """Run ``cmd`` on the device within ``timeout`` s (connecting first if needed).

        ``cmd`` is an argv list (each word quoted for the remote POSIX shell) or a shell string. The
        remote shell is the session leader, so on timeout its whole process group is killed.

        Returns
        -------
        RunResult
            Exit code, stdout and stderr (UTF-8, undecodable bytes replaced), wall duration in s.

        Raises
        ------
        DeviceError
            The command did not finish within ``timeout`` s (its process group is killed), or the link
            died. Raised at most ``timeout + KILL_GRACE_S`` s after the call: the grace is the kill
            attempt, whose answer tells a slow command from a dead link.
        """
        line = to_shell(cmd)
        what = f"run of {_short(line)!r}"
        for k in env or {}:
            if not k.isidentifier():
                raise DeviceError(f"{what}: environment variable name {k!r} is not valid; use letters, digits and _")
        prefix = "".join(f"export {k}={shlex.quote(v)}; " for k, v in (env or {}).items())
        # "exit $?" on its own line: the shell waits for the command and reports a signal death as 128+N
        # (an exec'd command killed by a signal gives no exit status over SSH, paramiko ignores exit-signal)
        remote = f"echo {_PID_MARKER}$$ >&2; {prefix}{line}\nexit $?"
        t0 = time.monotonic()
        with self._deadline(timeout + KILL_GRACE_S, what, shown=timeout):
            client = self._connected()
            transport = client.get_transport()
            assert transport is not None
            chan = transport.open_session(timeout=max(0.1, timeout - (time.monotonic() - t0)))
            err_box: list[bytes] = []
            try:
                chan.exec_command(remote)
                code, out, err = _drain(chan, t0 + timeout, self.heartbeat_s, collect=err_box)
            except (OSError, EOFError, paramiko.SSHException):
                pid = _pid_from(b"".join(err_box))
                if pid is not None:
                    self._lost.add(pid)  # stopped when the transport reconnects
                raise
            except BaseException:  # Ctrl-C: stop the remote command now (bounded by KILL_GRACE_S)
                pid = _pid_from(b"".join(err_box))
                if pid is not None:
                    try:
                        self._kill_group(client, pid)
                    except (OSError, EOFError, paramiko.SSHException):
                        self._lost.add(pid)
                raise
            finally:
                chan.close()
            if code is None:
                # Still running, or the link is dead: a kill that gets through tells which.
                pid = _pid_from(err)
                try:
                    killed = pid is not None and self._kill_group(client, pid)
                except (OSError, EOFError, paramiko.SSHException):
                    killed = False
                if not killed:
                    self._drop()
                    raise DeviceError(self._no_answer(timeout, what))
                raise DeviceError(
                    f"{what} on device {self.device!r} did not finish within {timeout:g} s and was stopped; "
                    "raise the timeout or check the device"
                )
        return RunResult(
            exit_code=code,
            stdout=out.decode("utf-8", "replace"),
            stderr=_strip_marker(err).decode("utf-8", "replace"),
            duration_s=time.monotonic() - t0,
        )

    def _kill_group(self, client: paramiko.SSHClient, pid: int) -> bool:
        """Kill the remote process group ``pid`` (TERM, then KILL); True when the device confirmed it.

        Bounded by :data:`KILL_GRACE_S` and by the caller's watchdog.
        """
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            return False
        deadline = time.monotonic() + KILL_GRACE_S
        chan = transport.open_session(timeout=KILL_GRACE_S)
        try:
            # TERM first: the benchmark wrapper's trap then stops its program (in its own group); KILL
            # what is left after up to 0.6 s
            chan.exec_command(
                f"kill -TERM -- -{pid} 2>/dev/null || exit 0; i=0; while [ $i -lt 6 ] && "
                f"kill -0 -- -{pid} 2>/dev/null; do sleep 0.1; i=$((i + 1)); done; "
                f"kill -KILL -- -{pid} 2>/dev/null; exit 0"
            )
            code, _, _ = _drain(chan, deadline)
        finally:
            chan.close()
        return code is not None

    # ------------------------------------------------------------------ files
    def _sftp_client(self) -> paramiko.SFTPClient | None:
        """The SFTP session (opened once per connection); None when the device has no SFTP subsystem."""
        client = self._connected()
        if self._no_sftp:
            return None
        if self._sftp is None or self._sftp.sock.closed:
            try:
                self._sftp = client.open_sftp()
            except paramiko.SSHException as exc:
                transport = client.get_transport()
                if transport is None or not transport.is_active():
                    raise
                log.info("device %s has no SFTP subsystem (%s); copying through 'cat'", self.device, exc)
                self._no_sftp = True
                return None
        return self._sftp

    def _put_exec(self, f: BinaryIO, tmp: str, path: str, size: int, mode: int, deadline: float, what: str) -> None:
        """Send ``f`` through ``cat > tmp`` on an exec channel, then chmod and rename (no SFTP needed)."""
        transport = self._connected().get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=max(0.1, deadline - time.monotonic()))
        try:
            chan.exec_command(f"cat > {shlex.quote(tmp)}")
            for block in iter(lambda: f.read(_CHUNK), b""):
                chan.sendall(block)
            chan.shutdown_write()
            code, _, err = _drain(chan, deadline)
        finally:
            chan.close()
        if code != 0:
            self._run_inner(f"rm -f -- {shlex.quote(tmp)}", deadline)
            raise DeviceError(f"{what} failed on device {self.device!r}: "
                              f"{err.decode('utf-8', 'replace').strip() or 'cat exited ' + str(code)}; "
                              "check the path and permissions")
        self._finish_exec(tmp, path, (size, mode), deadline, what)

    def _finish_exec(self, tmp: str, path: str, check: tuple[int, int] | None, deadline: float, what: str) -> None:
        """``mv -f tmp path`` on the device; with ``check`` = (size, mode) also verify size and chmod."""
        qt, qp = shlex.quote(tmp), shlex.quote(path)
        pre = ""
        if check is not None:
            size, mode = check
            pre = f'[ "$(wc -c < {qt})" -eq {size} ] && chmod {mode:o} {qt} && '
        res = self._run_inner(f"{pre}mv -f -- {qt} {qp} || {{ rm -f -- {qt}; exit 1; }}", deadline)
        if res.exit_code != 0:
            raise DeviceError(f"{what} failed on device {self.device!r} while moving the upload into place: "
                              f"{res.stderr.strip() or 'size mismatch'}; check the path and permissions")

    def remote_sha256(self, remote: str, timeout: float) -> str | None:
        """sha256 (hex) of the remote file, or None when it does not exist."""
        res = self.run(_sha_command(_remote_path(remote)), timeout)
        return _parse_sha(res.stdout)

    def push(self, local: Path, remote: str, timeout: float, mode: int = 0o644) -> bool:
        """Copy ``local`` to ``remote`` atomically (temp name in the same directory, then rename).

        Parent directories are created. When the remote file's sha256 already equals the local one
        nothing is sent and False is returned; True when the file was sent.

        Raises
        ------
        DeviceError
            ``local`` missing, remote side not writable, or the link died / passed the deadline.
        """
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"push to device {self.device!r}: local file {local} does not exist")
        path = _remote_path(remote)
        what = f"push of {local} to {remote}"
        t0 = time.monotonic()
        with open(local, "rb") as f, self._deadline(timeout, what):
            digest, size = sha256_cached(f)
            parent = posixpath.dirname(path)
            res = self._run_inner(_sha_command(path, mkdir=parent), t0 + timeout)
            if res.exit_code != 0:
                raise DeviceError(
                    f"{what}: cannot prepare the remote directory on device {self.device!r}: "
                    f"{res.stderr.strip() or 'exit ' + str(res.exit_code)}; check the path and permissions"
                )
            if _parse_sha(res.stdout) == digest:
                self.stats.skipped += 1
                return False
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.edgelr-{secrets.token_hex(4)}.tmp")
            sftp = self._sftp_client()
            if sftp is None:  # no SFTP subsystem on the device (some busybox/dropbear boards)
                self._put_exec(f, tmp, path, size, mode, t0 + timeout, what)
            else:
                try:
                    _put(sftp, f, tmp, size)
                    sftp.chmod(tmp, mode)
                    try:
                        sftp.posix_rename(tmp, path)
                    except OSError as exc:  # server without posix-rename@openssh.com
                        if not _is_sftp_status(exc):
                            raise
                        self._finish_exec(tmp, path, None, t0 + timeout, what)
                except OSError as exc:
                    if not _is_sftp_status(exc):
                        raise  # a link error: _deadline reports it
                    _try_remove(sftp, tmp)
                    raise DeviceError(
                        f"{what} failed on device {self.device!r}: {exc}; check the path and permissions"
                    ) from exc
        self.stats.pushes += 1
        self.stats.bytes_sent += size
        return True

    def pull(self, remote: str, local: Path, timeout: float) -> None:
        """Copy ``remote`` to ``local`` (written to a temp file, then renamed; parents created)."""
        local = Path(local)
        what = f"pull of {remote} to {local}"
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.edgelr-{secrets.token_hex(4)}.tmp")
        try:
            t0 = time.monotonic()
            with open(tmp, "wb") as f, self._deadline(timeout, what):
                sftp = self._sftp_client()
                if sftp is None:  # no SFTP subsystem: stream it through cat
                    res = self._run_inner(f"cat -- {shlex.quote(_remote_path(remote))}", t0 + timeout, raw=True)
                    if res.exit_code != 0:
                        raise DeviceError(f"{what}: {remote} is not readable on device {self.device!r} "
                                          f"({res.stderr.strip()})")
                    f.write(res.stdout_bytes)
                else:
                    try:
                        sftp.getfo(_remote_path(remote), f)
                    except (FileNotFoundError, PermissionError) as exc:
                        raise DeviceError(
                            f"{what}: {remote} is not readable on device {self.device!r} ({exc})"
                        ) from exc
            os.replace(tmp, local)
            self.stats.bytes_received += local.stat().st_size
        finally:
            tmp.unlink(missing_ok=True)

    def _run_inner(self, line: str, deadline: float, raw: bool = False) -> "_RawResult":
        """Run a shell line on the open connection inside an active :meth:`_deadline` (no kill).

        ``raw`` keeps stdout as bytes too (``stdout_bytes``), for file content.
        """
        t0 = time.monotonic()
        transport = self._connected().get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=max(0.1, deadline - t0))
        try:
            chan.exec_command(line)
            code, out, err = _drain(chan, deadline)
        finally:
            chan.close()
        if code is None:
            raise DeviceError(f"{_short(line)!r} did not finish on device {self.device!r} in time")
        text = "" if raw else out.decode("utf-8", "replace")
        return _RawResult(code, text, err.decode("utf-8", "replace"), time.monotonic() - t0, out if raw else b"")


@dataclass(frozen=True)
class _RawResult(RunResult):
    """A :class:`RunResult` that can also carry stdout as bytes."""

    stdout_bytes: bytes = b""


def _drain(chan: paramiko.Channel, deadline: float, heartbeat_s: float = 0.0,
           collect: list[bytes] | None = None) -> tuple[int | None, bytes, bytes]:
    """Read stdout and stderr until the command exits and both streams end, or ``deadline`` passes.

    Draining while waiting matters: ``recv_exit_status`` alone can hang when the remote blocks on a
    full pipe. With ``heartbeat_s`` > 0 a newline goes to the command's stdin every ``heartbeat_s`` s.
    ``collect`` (a list) receives stderr as it arrives, for a caller that needs it after an exception.
    Returns ``(exit_code, stdout, stderr)``; exit_code None when the deadline passed.
    """
    out: list[bytes] = []
    err: list[bytes] = [] if collect is None else collect
    next_beat = time.monotonic() + heartbeat_s if heartbeat_s > 0 else float("inf")
    while True:
        busy = False
        while chan.recv_ready():
            out.append(chan.recv(_CHUNK))
            busy = True
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(_CHUNK))
            busy = True
        if chan.exit_status_ready() and (chan.eof_received or chan.closed) and not (
            chan.recv_ready() or chan.recv_stderr_ready()
        ):
            code = chan.recv_exit_status()
            if code == -1:  # no exit-status request came: the link died, or an exit-signal (paramiko drops those)
                _raise_if_link_lost(chan)
            return code, b"".join(out), b"".join(err)
        now = time.monotonic()
        left = deadline - now
        if left <= 0:
            return None, b"".join(out), b"".join(err)
        if now >= next_beat:
            next_beat = now + heartbeat_s
            if chan.send_ready() and not chan.closed:
                try:
                    chan.send(b"\n")
                except (OSError, paramiko.SSHException):
                    pass  # the link is going: the next receive reports it
        if busy:
            continue
        if chan.eof_received:  # output ended: wake as soon as the exit status arrives
            chan.status_event.wait(min(left, 0.05))
        else:  # wakes on stdout/stderr data and on EOF
            select.select([chan], [], [], min(left, 0.05))


def _raise_if_link_lost(chan: paramiko.Channel, wait_s: float = 0.25) -> None:
    """Raise EOFError when ``chan``'s connection is gone (checked for up to ``wait_s`` s).

    paramiko closes the channels of a dead connection before it marks the transport inactive, so a
    closed channel without exit status is ambiguous for a moment.
    """
    transport = chan.get_transport()
    end = time.monotonic() + wait_s
    while transport is not None and transport.is_active():
        if time.monotonic() >= end:
            return
        time.sleep(0.01)
    raise EOFError("the connection closed before the command reported an exit status")


def _put(sftp: paramiko.SFTPClient, f: BinaryIO, remote: str, size: int) -> None:
    """Write ``f`` to ``remote`` over SFTP, pipelined, and check the remote size."""
    with sftp.file(remote, "wb") as rf:
        rf.set_pipelined(True)
        while True:
            data = f.read(_CHUNK * 4)
            if not data:
                break
            rf.write(data)
    got = sftp.stat(remote).st_size
    if got != size:
        raise IOError(f"size mismatch after upload: {got} of {size} bytes arrived")


def _is_sftp_status(exc: OSError) -> bool:
    """True for an SFTP status error (permission, missing path, failure); False for a socket error."""
    return isinstance(exc, (PermissionError, FileNotFoundError)) or type(exc) is OSError and exc.errno is None


def _try_remove(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)
    except (OSError, paramiko.SSHException):
        pass


def _remote_path(remote: str) -> str:
    """``~/x`` -> ``x`` (both exec and SFTP start in the login directory); other paths unchanged."""
    if remote == "~":
        return "."
    if remote.startswith("~/"):
        return remote[2:] or "."
    return remote


_PY_SHA = "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"


def _sha_command(path: str, mkdir: str = "") -> str:
    """Shell line printing the sha256 hex of ``path`` (read via stdin: no name escaping), or nothing.

    With ``mkdir``, that directory is created (``mkdir -p``) when ``path`` does not exist yet; the
    line then fails only when it cannot be created. One round trip either way.
    """
    q = shlex.quote(path)
    otherwise = f"mkdir -p -- {shlex.quote(mkdir)}" if mkdir else "true"
    return (
        f"if [ -f {q} ]; then sha256sum < {q} 2>/dev/null || python3 -c {shlex.quote(_PY_SHA)} < {q} "
        f"2>/dev/null || true; else {otherwise}; fi"
    )


def _parse_sha(text: str) -> str | None:
    word = text.strip().split()[0] if text.strip() else ""
    return word.lower() if len(word) == 64 and all(c in "0123456789abcdefABCDEF" for c in word) else None


def _pid_from(err: bytes) -> int | None:
    first = err.split(b"\n", 1)[0].decode("ascii", "replace")
    if first.startswith(_PID_MARKER) and first[len(_PID_MARKER):].isdigit():
        return int(first[len(_PID_MARKER):])
    return None


def _strip_marker(err: bytes) -> bytes:
    first, _, rest = err.partition(b"\n")
    return rest if first.startswith(_PID_MARKER.encode()) else err


def _short(line: str, n: int = 80) -> str:
    return line if len(line) <= n else line[: n - 3] + "..."
