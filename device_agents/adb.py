"""ADB transport: a client of the adb server's smart socket, written over a plain TCP socket.

The adb server (``adb start-server``, 127.0.0.1:5037 by default) forwards each client socket to one
service on one device. The wire protocol (AOSP ``packages/modules/adb/SERVICES.TXT``, ``SYNC.TXT``):

* a request is 4 lower-case hex digits giving the payload length, then the payload;
  the server answers ``OKAY`` or ``FAIL`` + 4 hex digits + message;
* ``host:transport:SERIAL`` binds the socket to a device; the next request names one service:
  ``shell,v2,raw:CMD`` (shell protocol v2: packets of a 1-byte id + LE uint32 length + data; id 1 stdout,
  2 stderr, 3 exit with a 1-byte status, 4 close-stdin) or ``sync:`` (file transfer:
  4-byte id + LE uint32, STAT / SEND+DATA+DONE / RECV / QUIT).

Only the shell-v2 exit packet is trusted for a command's status: a socket that ends without it means the
device (or the link) died, and raises :class:`DeviceError` even when some output arrived. Every socket
operation has a timeout taken from one overall deadline per call, so a dead link fails in time.
"""

from __future__ import annotations

import os
import shlex
import socket
import struct
import time
from pathlib import Path
from typing import Any

from device_agents.files import sha256_file
from device_agents.transport import TRANSPORTS, Command, RunResult, Transport, to_shell
from edgelr.errors import DeviceError

DEFAULT_ADB_HOST = "127.0.0.1"
DEFAULT_ADB_PORT = 5037
SYNC_DATA_MAX = 64 * 1024

# shell protocol v2 packet ids
_ID_STDIN, _ID_STDOUT, _ID_STDERR, _ID_EXIT, _ID_CLOSE_STDIN = 0, 1, 2, 3, 4

UNAUTHORIZED_HINT = ("unlock the phone and accept the 'Allow USB debugging?' RSA key prompt "
                     "(tick 'Always allow from this computer'), then retry")


class _Deadline:
    """An absolute deadline (time.monotonic based) shared by all socket operations of one call."""

    def __init__(self, timeout: float, what: str) -> None:
        if timeout <= 0:
            raise DeviceError(f"timeout={timeout!r} for {what}; expected a positive number of seconds")
        self.timeout = timeout
        self.what = what
        self.end = time.monotonic() + timeout

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise DeviceError(f"{self.what} did not finish within {self.timeout:g} s; "
                              f"check the device and the adb link, or raise the timeout")
        return left


class AdbConnection:
    """One client socket to the adb server, with every read/write bounded by a :class:`_Deadline`."""

    def __init__(self, host: str, port: int, deadline: _Deadline) -> None:
        self.deadline = deadline
        self.host, self.port = host, port
        try:
            self.sock = socket.create_connection((host, port), timeout=min(deadline.remaining(), 10.0))
        except OSError as exc:
            raise DeviceError(f"cannot reach the adb server at {host}:{port} ({exc}); start it with "
                              f"'adb -P {port} start-server' or set adb_host/adb_port in the inventory") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- raw I/O -------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self.deadline.remaining())
            self.sock.sendall(data)
        except socket.timeout:
            self.deadline.remaining()
            raise DeviceError(f"{self.deadline.what}: sending to the adb server timed out") from None
        except OSError as exc:
            raise DeviceError(f"{self.deadline.what}: the adb connection broke while sending ({exc}); "
                              f"the device may have disconnected") from None

    def recv_some(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes; b'' at end of stream."""
        try:
            self.sock.settimeout(self.deadline.remaining())
            return self.sock.recv(n)
        except socket.timeout:
            self.deadline.remaining()
            raise DeviceError(f"{self.deadline.what}: no answer from the adb server") from None
        except OSError as exc:
            raise DeviceError(f"{self.deadline.what}: the adb connection broke ({exc}); "
                              f"the device may have disconnected") from None

    def recv_exact(self, n: int, context: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.recv_some(n - len(buf))
            if not chunk:
                raise DeviceError(f"{self.deadline.what}: the connection closed during {context} "
                                  f"(got {len(buf)} of {n} bytes); the device disconnected or adbd died")
            buf += chunk
        return bytes(buf)

    # -- smart-socket requests -----------------------------------------------------------------
    def request(self, payload: str) -> None:
        """Send one request and require ``OKAY``; ``FAIL`` raises :class:`DeviceError` with the message."""
        data = payload.encode()
        self.send(b"%04x" % len(data) + data)
        status = self.recv_exact(4, f"the reply to '{payload[:60]}'")
        if status == b"OKAY":
            return
        if status == b"FAIL":
            raise _fail_error(self.read_hex_string(), payload)
        raise DeviceError(f"{self.deadline.what}: unexpected reply {status!r} from the adb server to "
                          f"'{payload[:60]}'; is {self.host}:{self.port} really an adb server?")

    def read_hex_string(self) -> str:
        size = int(self.recv_exact(4, "a length prefix"), 16)
        return self.recv_exact(size, "a message").decode(errors="replace")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _fail_error(message: str, payload: str) -> DeviceError:
    msg = message.strip().replace("\n", " ")
    low = msg.lower()
    if "unauthorized" in low or "failed to authenticate" in low:
        return DeviceError(f"adb device is unauthorized ({msg}); {UNAUTHORIZED_HINT}")
    if "not found" in low or "no devices" in low:
        return DeviceError(f"adb: {msg} (request '{payload[:60]}'); check 'adb devices' and the serial "
                           f"in the inventory, or 'adb connect HOST:PORT' for ADB over Wi-Fi")
    if "offline" in low or "authorizing" in low or "connecting" in low:
        return DeviceError(f"adb device is not ready ({msg}); reconnect it or wait and retry")
    return DeviceError(f"adb server refused '{payload[:60]}': {msg}")


def parse_devices(text: str) -> dict[str, str]:
    """``host:devices`` output (``SERIAL\\tSTATE`` lines) -> {serial: state}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out[parts[0].strip()] = parts[1].strip()
    return out


@TRANSPORTS.register("adb")
class ADBTransport(Transport):
    """Run commands and move files on one Android device through the adb server.

    Parameters
    ----------
    serial : str, optional
        Device serial as ``adb devices`` lists it (``HOST:PORT`` for ADB over Wi-Fi). Defaults to
        ``$ANDROID_SERIAL``; if unset and exactly one device is attached, that one.
    adb_host, adb_port : str, int
        Where the adb server listens (default 127.0.0.1:5037; ``$ANDROID_ADB_SERVER_PORT`` is honoured).
    connect : bool
        For a ``HOST:PORT`` serial the server does not know yet, ask it to ``adb connect`` first.
    ready_timeout, connect_timeout : float
        Seconds to wait for a freshly connected device to leave the ``offline``/``connecting`` state
        (``connect_timeout`` is the inventory's name for it).
    """

    default_os = "android"

    @classmethod
    def inventory_kwargs(cls, spec: Any) -> dict[str, Any]:
        return {"serial": spec.serial, "adb_host": spec.adb_host, "adb_port": spec.adb_port,
                "connect_timeout": spec.connect_timeout}

    @classmethod
    def address(cls, spec: Any) -> str:
        return spec.serial or f"{spec.adb_host}:{spec.adb_port}"

    def __init__(self, serial: str | None = None, adb_host: str | None = None, adb_port: int | None = None,
                 connect: bool = True, ready_timeout: float | None = None, connect_timeout: float = 10.0,
                 **_ignored: object) -> None:
        self.adb_host = adb_host or DEFAULT_ADB_HOST
        env_port = os.environ.get("ANDROID_ADB_SERVER_PORT")
        self.adb_port = int(adb_port or (env_port if env_port else DEFAULT_ADB_PORT))
        self.serial = serial or os.environ.get("ANDROID_SERIAL") or None
        self.connect = connect
        self.ready_timeout = ready_timeout or connect_timeout
        self._ready = False
        self._closed = False

    # -- device selection ------------------------------------------------------------------------
    def _conn(self, deadline: _Deadline) -> AdbConnection:
        return AdbConnection(self.adb_host, self.adb_port, deadline)

    def host_query(self, request: str, timeout: float = 10.0) -> str:
        """A ``host:`` request whose reply is a hex-length string (``host:devices``, ``host:connect:..``)."""
        conn = self._conn(_Deadline(timeout, f"adb '{request}'"))
        try:
            conn.request(request)
            return conn.read_hex_string()
        finally:
            conn.close()

    def devices(self, timeout: float = 10.0) -> dict[str, str]:
        """{serial: state} of every device the adb server knows (``device``, ``unauthorized``, ...)."""
        return parse_devices(self.host_query("host:devices", timeout))

    def ensure_ready(self, timeout: float | None = None) -> None:
        """Resolve the serial, ``adb connect`` a network serial if needed, wait until it is ``device``."""
        if self._ready:
            return
        deadline = _Deadline(timeout or self.ready_timeout, "waiting for the adb device")
        devs = self.devices(deadline.remaining())
        if self.serial is None:
            usable = list(devs)
            if len(usable) != 1:
                raise DeviceError(f"no adb serial given and the adb server lists {len(usable)} devices "
                                  f"({', '.join(usable) or 'none'}); set 'serial' in the inventory or ANDROID_SERIAL")
            self.serial = usable[0]
        if self.serial not in devs and self.connect and ":" in self.serial:
            reply = self.host_query(f"host:connect:{self.serial}", deadline.remaining())
            if "authenticate" in reply or "unauthorized" in reply:
                raise DeviceError(f"adb device {self.serial} is unauthorized ({reply.strip()}); {UNAUTHORIZED_HINT}")
            if "connected" not in reply or "cannot" in reply or "failed" in reply:
                raise DeviceError(f"adb connect {self.serial} failed: {reply.strip()}; check the address and "
                                  f"that 'adb tcpip 5555' (or Wireless debugging) is enabled on the phone")
        while True:
            state = self.devices(deadline.remaining()).get(self.serial)
            if state == "device":
                self._check_features(deadline)
                self._ready = True
                return
            if state == "unauthorized":
                raise DeviceError(f"adb device {self.serial} is unauthorized; {UNAUTHORIZED_HINT}")
            if state is None and not (self.connect and ":" in self.serial):
                raise DeviceError(f"adb device {self.serial} is not attached (adb server at "
                                  f"{self.adb_host}:{self.adb_port} lists {', '.join(devs) or 'none'}); "
                                  f"plug it in or fix 'serial' in the inventory")
            if deadline.end - time.monotonic() < 0.1:
                raise DeviceError(f"adb device {self.serial} stayed '{state or 'absent'}' for "
                                  f"{deadline.timeout:g} s; reconnect it (and accept the RSA prompt), then retry")
            time.sleep(0.1)

    def _check_features(self, deadline: _Deadline) -> None:
        """Require shell protocol v2 (Android 7+): without its exit packet a command's status is unknowable."""
        features = self.host_query(f"host-serial:{self.serial}:features", deadline.remaining())
        if "shell_v2" not in features.split(","):
            raise DeviceError(f"adb device {self.serial} lacks the shell_v2 feature (features: {features.strip() or 'none'}); "
                              f"edgelr needs Android 7 or newer to get reliable exit statuses over adb")

    def _service(self, service: str, deadline: _Deadline) -> AdbConnection:
        self.ensure_ready(min(deadline.remaining(), self.ready_timeout))
        conn = self._conn(deadline)
        try:
            conn.request(f"host:transport:{self.serial}")
            conn.request(service)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- commands ----------------------------------------------------------------------------------
    def run(self, cmd: Command, timeout: float, env: dict[str, str] | None = None) -> RunResult:
        """Run ``cmd`` under the device shell through ``shell,v2,raw:``; the exit packet gives the status.

        Raises :class:`DeviceError` when the stream ends without an exit packet (device or adbd died,
        link lost) or the deadline passes.
        """
        line = to_shell(cmd)
        if env:
            line = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; " + to_shell(cmd)
        start = time.monotonic()
        deadline = _Deadline(timeout, f"adb shell on {self.serial or 'the device'}: {line[:80]!r}")
        conn = self._service(f"shell,v2,raw:{line}", deadline)
        try:
            conn.send(struct.pack("<BI", _ID_CLOSE_STDIN, 0))
            out, err = bytearray(), bytearray()
            buf = bytearray()
            exit_code: int | None = None
            while exit_code is None:
                chunk = conn.recv_some()
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 5:
                    pid, size = struct.unpack_from("<BI", buf)
                    if len(buf) < 5 + size:
                        break
                    data = bytes(buf[5:5 + size])
                    del buf[:5 + size]
                    if pid == _ID_STDOUT:
                        out += data
                    elif pid == _ID_STDERR:
                        err += data
                    elif pid == _ID_EXIT:
                        exit_code = data[0] if data else 255
        finally:
            conn.close()
        if exit_code is None:
            raise DeviceError(f"adb shell on {self.serial}: the command ended without an exit status after "
                              f"{len(out)} bytes of output (device disconnected or its shell died): {line[:80]!r}; "
                              f"check the device connection and retry")
        return RunResult(exit_code=exit_code, stdout=out.decode(errors="replace"),
                         stderr=err.decode(errors="replace"), duration_s=time.monotonic() - start)

    # -- files -----------------------------------------------------------------------------------
    def remote_sha256(self, remote: str, timeout: float) -> str | None:
        """sha256 hex of a device file, or None when it does not exist (or no sha256sum there)."""
        res = self.run(f"sha256sum {shlex.quote(remote)} 2>/dev/null", timeout)
        if res.exit_code != 0 or not res.stdout.strip():
            return None
        return res.stdout.split()[0].lower()

    def stat(self, remote: str, timeout: float) -> tuple[int, int, int]:
        """(mode, size, mtime) through sync STAT; mode 0 means the path does not exist."""
        deadline = _Deadline(timeout, f"adb stat {remote}")
        conn = self._service("sync:", deadline)
        try:
            path = remote.encode()
            conn.send(b"STAT" + struct.pack("<I", len(path)) + path)
            head = conn.recv_exact(16, "STAT")
            if head[:4] != b"STAT":
                raise DeviceError(f"adb stat {remote}: unexpected sync reply {head[:4]!r}")
            mode, size, mtime = struct.unpack_from("<III", head, 4)
            conn.send(b"QUIT" + struct.pack("<I", 0))
            return mode, size, mtime
        finally:
            conn.close()

    def push(self, local: Path, remote: str, timeout: float, mode: int = 0o644) -> bool:
        """Copy ``local`` to ``remote`` through sync SEND; False (no transfer) when the sha256 matches."""
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"cannot push {local}: not a file; pass an existing local file")
        deadline = _Deadline(timeout, f"adb push {local.name} -> {remote}")
        digest = sha256_file(local)
        if self.remote_sha256(remote, deadline.remaining()) == digest:
            self.run(f"chmod {mode:o} {shlex.quote(remote)}", deadline.remaining())
            return False
        conn = self._service("sync:", deadline)
        try:
            header = f"{remote},{0o100000 | mode}".encode()
            conn.send(b"SEND" + struct.pack("<I", len(header)) + header)
            with open(local, "rb") as fh:
                while chunk := fh.read(SYNC_DATA_MAX):
                    conn.send(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
            conn.send(b"DONE" + struct.pack("<I", int(local.stat().st_mtime)))
            reply = conn.recv_exact(8, "the reply to SEND")
            if reply[:4] == b"FAIL":
                size = struct.unpack_from("<I", reply, 4)[0]
                msg = conn.recv_exact(size, "the FAIL message").decode(errors="replace")
                raise DeviceError(f"adb push {local} -> {remote} failed on the device: {msg}; "
                                  f"check the path is writable (e.g. /data/local/tmp)")
            if reply[:4] != b"OKAY":
                raise DeviceError(f"adb push {local} -> {remote}: unexpected sync reply {reply[:4]!r}")
            conn.send(b"QUIT" + struct.pack("<I", 0))
        finally:
            conn.close()
        got = self.remote_sha256(remote, deadline.remaining())
        if got is not None and got != digest:
            raise DeviceError(f"adb push {local} -> {remote}: sha256 on the device {got[:12]} differs from "
                              f"the local {digest[:12]}; the transfer was corrupted, retry")
        return True

    def pull(self, remote: str, local: Path, timeout: float) -> None:
        """Copy ``remote`` to ``local`` through sync RECV, written atomically (temp file + rename)."""
        local = Path(local)
        deadline = _Deadline(timeout, f"adb pull {remote}")
        conn = self._service("sync:", deadline)
        tmp = local.with_name(local.name + ".part")
        try:
            path = remote.encode()
            conn.send(b"RECV" + struct.pack("<I", len(path)) + path)
            with open(tmp, "wb") as fh:
                while True:
                    head = conn.recv_exact(8, "RECV")
                    tag, size = head[:4], struct.unpack_from("<I", head, 4)[0]
                    if tag == b"DATA":
                        fh.write(conn.recv_exact(size, "file data"))
                    elif tag == b"DONE":
                        break
                    elif tag == b"FAIL":
                        msg = conn.recv_exact(size, "the FAIL message").decode(errors="replace")
                        raise DeviceError(f"adb pull {remote} failed on the device: {msg}; check the path")
                    else:
                        raise DeviceError(f"adb pull {remote}: unexpected sync reply {tag!r}")
            conn.send(b"QUIT" + struct.pack("<I", 0))
            os.replace(tmp, local)
        finally:
            conn.close()
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Nothing is held open between calls (one socket per call); safe to call twice."""
        self._closed = True

