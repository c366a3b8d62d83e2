"""A STAND-IN for an Android phone's adbd, at the ADB transport protocol level (tests only).

No adbd exists in Debian or on PyPI and no emulator can be fetched, so the tests put this stand-in behind
the REAL adb server (Debian ``adb``, ``adb connect 127.0.0.1:PORT``). It is not Android: it speaks the
device side of the ADB transport over TCP and runs commands on this host.

What it does (device side of AOSP ``adb/protocol.txt``):

* CNXN handshake (version 0x01000001, banner ``device::ro.product.name=..;..;features=shell_v2,cmd``,
  no trailing NUL); optional AUTH that rejects every signature, so the server shows ``unauthorized``;
* streams OPEN / OKAY / WRTE / CLSE, each WRTE it sends waits for the host's OKAY;
* services ``shell,v2,raw:CMD`` / ``shell,v2:CMD`` (shell protocol v2 packets, exit packet),
  ``shell:CMD`` / ``exec:CMD`` (raw bytes), ``sync:`` (STAT, SEND/DATA/DONE, RECV, QUIT);
* commands run under ``dash`` (or ``busybox sh``) in a sandbox: ``/data/local/tmp`` and ``/sys/`` in a
  command line are rewritten to the sandbox, ``$EDGELR_ROOT`` points at it (the harness prefixes its sysfs
  reads with it), and ``getprop``, ``dumpsys`` and ``taskset`` are sandbox scripts answering from
  ``tests/fixtures/android/``. ``/proc`` is the host's (so VmHWM sampling is real).
* the ODPM ``energy_value`` files are rewritten every 50 ms as if each rail drew a fixed power
  (:attr:`AdbdStandin.odpm_power_w`), so energy deltas are real functions of elapsed time.

Fault injection (:class:`Faults`): drop the TCP link mid-push (after N bytes of file data) or mid-run
(when a command contains a marker), end a shell with truncated output and no exit packet, or stay
unauthorized.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

FIXTURES = Path(__file__).parent / "fixtures" / "android"

A_CNXN, A_AUTH, A_OPEN, A_OKAY = 0x4E584E43, 0x48545541, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_STLS = 0x45534C43, 0x45545257, 0x534C5453
VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3


@dataclass
class Faults:
    """Switches for failure injection; each fires on every matching event while set."""

    unauthorized: bool = False
    drop_push_after: int | None = None      # close the TCP link after this many bytes of SEND data
    drop_run_on: str | None = None          # close the TCP link while running a command containing this
    drop_run_delay: float = 0.5             # ... this many seconds after it started
    truncate_on: str | None = None          # end the stream (no exit packet) after the first output chunk


@dataclass
class _Stream:
    local_id: int
    remote_id: int
    acked: threading.Event = field(default_factory=threading.Event)
    inbox: "queue.Queue[bytes | None]" = field(default_factory=queue.Queue)
    closed: threading.Event = field(default_factory=threading.Event)


class _Link:
    """One TCP connection from the adb server: packet I/O and stream bookkeeping."""

    def __init__(self, standin: "AdbdStandin", sock: socket.socket) -> None:
        self.s = standin
        self.sock = sock
        self.wlock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.maxdata = MAX_PAYLOAD
        self.dead = threading.Event()

    # -- packets ---------------------------------------------------------------------------------
    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        head = struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF)
        with self.wlock:
            if self.dead.is_set():
                raise OSError("link is down")
            self.sock.sendall(head + data)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def kill(self) -> None:
        """Drop the link the way a phone that vanished from Wi-Fi / USB does."""
        self.dead.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for st in list(self.streams.values()):
            st.closed.set()
            st.acked.set()
            st.inbox.put(None)

    # -- main loop --------------------------------------------------------------------------------
    def serve(self) -> None:
        try:
            while not self.dead.is_set():
                cmd, arg0, arg1, length, _check, magic = struct.unpack("<6I", self._recv_exact(24))
                data = self._recv_exact(length) if length else b""
                if magic != cmd ^ 0xFFFFFFFF:
                    break
                self.handle(cmd, arg0, arg1, data)
        except (EOFError, OSError):
            pass
        finally:
            if not self.dead.is_set():
                self.kill()

    def handle(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.maxdata = min(arg1 or MAX_PAYLOAD, MAX_PAYLOAD)
            if self.s.faults.unauthorized:
                self.send(A_AUTH, AUTH_TOKEN, 0, secrets.token_bytes(20))
            else:
                self.send(A_CNXN, VERSION, MAX_PAYLOAD, self.s.banner().encode())
        elif cmd == A_AUTH:
            if arg0 == AUTH_SIGNATURE:          # reject every key: ask again
                self.send(A_AUTH, AUTH_TOKEN, 0, secrets.token_bytes(20))
            # AUTH_RSAPUBLICKEY: a phone would show the prompt now; nobody accepts it here.
        elif cmd == A_OPEN:
            service = data.rstrip(b"\0").decode(errors="replace")
            local = self.next_id
            self.next_id += 1
            st = _Stream(local, arg0)
            self.streams[local] = st
            self.s.log.append(service)
            threading.Thread(target=self._service, args=(st, service), daemon=True).start()
        elif cmd == A_OKAY:
            st = self.streams.get(arg1)
            if st:
                st.acked.set()
        elif cmd == A_WRTE:
            st = self.streams.get(arg1)
            if st:
                self.send(A_OKAY, st.local_id, st.remote_id)
                st.inbox.put(data)
        elif cmd == A_CLSE:
            st = self.streams.pop(arg1, None)
            if st:
                st.closed.set()
                st.acked.set()
                st.inbox.put(None)

    # -- stream helpers ----------------------------------------------------------------------------
    def write(self, st: _Stream, data: bytes) -> None:
        for i in range(0, len(data), self.maxdata):
            if st.closed.is_set():
                raise EOFError
            st.acked.clear()
            self.send(A_WRTE, st.local_id, st.remote_id, data[i:i + self.maxdata])
            while not st.acked.wait(0.2):
                if self.dead.is_set():
                    raise EOFError
            if st.closed.is_set() and self.dead.is_set():
                raise EOFError

    def close_stream(self, st: _Stream) -> None:
        if not st.closed.is_set():
            st.closed.set()
            try:
                self.send(A_CLSE, st.local_id, st.remote_id)
            except OSError:
                pass
        self.streams.pop(st.local_id, None)

    def _service(self, st: _Stream, service: str) -> None:
        try:
            self.send(A_OKAY, st.local_id, st.remote_id)
            if service.startswith("shell,v2") or service.startswith("shell,raw"):
                opts, _, cmd = service.partition(":")
                self._shell(st, cmd, v2="v2" in opts)
            elif service.startswith("shell:") or service.startswith("exec:"):
                self._shell(st, service.partition(":")[2], v2=False)
            elif service == "sync:":
                self._sync(st)
        except (EOFError, OSError):
            pass
        finally:
            self.close_stream(st)

    # -- shell --------------------------------------------------------------------------------------
    def _shell(self, st: _Stream, cmd: str, v2: bool) -> None:
        faults = self.s.faults
        proc = subprocess.Popen(self.s.shell + ["-c", self.s.rewrite(cmd or "true")], cwd=self.s.tmp_dir,
                                env=self.s.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        out: "queue.Queue[tuple[int, bytes | None]]" = queue.Queue()

        def pump(fh: IO[bytes], pid: int) -> None:
            # the pump owns its pipe and closes it at EOF (the shell's group is killed below when the stream
            # ends early): closing it from the other thread raced this read (EBADF, or a reused fd number)
            try:
                while chunk := os.read(fh.fileno(), 65536):
                    out.put((pid, chunk))
            finally:
                fh.close()
                out.put((pid, None))

        for fh, pid in ((proc.stdout, 1), (proc.stderr, 2)):
            assert fh is not None
            threading.Thread(target=pump, args=(fh, pid), daemon=True).start()
        if faults.drop_run_on and faults.drop_run_on in cmd:
            threading.Timer(faults.drop_run_delay, self.kill).start()
        open_pipes = 2
        truncate = bool(faults.truncate_on and faults.truncate_on in cmd)
        try:
            while open_pipes:
                try:
                    pid, chunk = out.get(timeout=0.2)
                except queue.Empty:
                    if st.closed.is_set():
                        return
                    continue
                if chunk is None:
                    open_pipes -= 1
                    continue
                self.write(st, struct.pack("<BI", pid, len(chunk)) + chunk if v2 else chunk)
                if truncate:
                    return                      # the "shell died": no exit packet
            code = proc.wait()
            if v2:
                status = code if code >= 0 else 128 - code
                self.write(st, struct.pack("<BI", 3, 1) + bytes([status & 0xFF]))
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    # -- sync ------------------------------------------------------------------------------------------
    def _sync(self, st: _Stream) -> None:
        buf = bytearray()

        def need(n: int) -> bytes:
            while len(buf) < n:
                chunk = st.inbox.get()
                if chunk is None:
                    raise EOFError
                buf.extend(chunk)
            data = bytes(buf[:n])
            del buf[:n]
            return data

        while True:
            head = need(8)
            tag, size = head[:4], struct.unpack_from("<I", head, 4)[0]
            if tag == b"QUIT":
                return
            arg = need(size)
            if tag == b"STAT":
                p = self.s.host_path(arg.decode())
                try:
                    sr = os.stat(p)
                    reply = struct.pack("<III", sr.st_mode, sr.st_size & 0xFFFFFFFF, int(sr.st_mtime))
                except OSError:
                    reply = struct.pack("<III", 0, 0, 0)
                self.write(st, b"STAT" + reply)
            elif tag == b"SEND":
                path, _, mode = arg.decode().rpartition(",")
                target = self.s.host_path(path)
                received = 0
                data = bytearray()
                while True:
                    h = need(8)
                    t, n = h[:4], struct.unpack_from("<I", h, 4)[0]
                    if t == b"DONE":
                        break
                    if t != b"DATA":
                        raise EOFError
                    data += need(n)
                    received += n
                    limit = self.s.faults.drop_push_after
                    if limit is not None and received >= limit:
                        self.kill()
                        raise EOFError
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(bytes(data))
                    os.chmod(target, int(mode or "420") & 0o777)
                    self.write(st, b"OKAY" + struct.pack("<I", 0))
                except OSError as exc:
                    msg = f"couldn't create file: {exc.strerror}".encode()
                    self.write(st, b"FAIL" + struct.pack("<I", len(msg)) + msg)
            elif tag == b"RECV":
                p = self.s.host_path(arg.decode())
                try:
                    content = p.read_bytes()
                except OSError as exc:
                    msg = f"open failed: {exc.strerror}".encode()
                    self.write(st, b"FAIL" + struct.pack("<I", len(msg)) + msg)
                    continue
                for i in range(0, len(content), 64 * 1024):
                    part = content[i:i + 64 * 1024]
                    self.write(st, b"DATA" + struct.pack("<I", len(part)) + part)
                self.write(st, b"DONE" + struct.pack("<I", 0))
            else:
                msg = f"unknown sync command {tag!r}".encode()
                self.write(st, b"FAIL" + struct.pack("<I", len(msg)) + msg)
                return


class AdbdStandin:
    """The stand-in device: a TCP server on 127.0.0.1 speaking the device side of the ADB transport.

    Parameters
    ----------
    root : Path
        Sandbox directory; ``root/data/local/tmp`` is the phone's ``/data/local/tmp``, ``root/sys`` its sysfs.
    shell : list of str
        The POSIX shell that runs commands (``["dash"]`` or ``["busybox", "sh"]``).
    props : dict
        Extra or overriding ``getprop`` values on top of ``fixtures/android/getprop.txt``.
    """

    def __init__(self, root: Path, shell: list[str] | None = None, props: dict[str, str] | None = None,
                 faults: Faults | None = None, odpm_power_w: dict[str, float] | None = None,
                 features: str = "shell_v2,cmd") -> None:
        self.root = Path(root)
        self.shell = shell or ["dash"]
        self.faults = faults or Faults()
        self.features = features
        self.odpm_power_w = odpm_power_w if odpm_power_w is not None else {"S2M_VDD_CPUCL2": 1.5,
                                                                           "S3M_VDD_CPUCL1": 0.5}
        self.tmp_dir = self.root / "data" / "local" / "tmp"
        self.log: list[str] = []
        self._links: list[_Link] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._setup(props or {})
        self._odpm_write()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.serial = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._odpm_loop, daemon=True).start()

    # -- sandbox ---------------------------------------------------------------------------------------
    def _setup(self, props: dict[str, str]) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if (self.root / "sys").exists():
            shutil.rmtree(self.root / "sys")
        shutil.copytree(FIXTURES / "sys", self.root / "sys")
        props_text = (FIXTURES / "getprop.txt").read_text()
        for k, v in props.items():
            props_text = re.sub(rf"^\[{re.escape(k)}\]: .*\n", "", props_text, flags=re.M)
            props_text += f"[{k}]: [{v}]\n"
        self.props = dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]$", props_text, flags=re.M))
        etc = self.root / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "getprop.txt").write_text(props_text)
        shutil.copy(FIXTURES / "dumpsys_thermalservice.txt", etc / "thermalservice.txt")
        bindir = self.root / "bin"
        bindir.mkdir(exist_ok=True)
        scripts = {
            "getprop": f"""#!/bin/sh
# stand-in getprop: answers from a fixture in 'getprop' output format
if [ $# -eq 0 ]; then cat '{etc}/getprop.txt'; exit 0; fi
sed -n "s/^\\[$1\\]: \\[\\(.*\\)\\]\\$/\\1/p" '{etc}/getprop.txt'
""",
            "dumpsys": f"""#!/bin/sh
# stand-in dumpsys: only 'thermalservice' is known
case "$1" in
  thermalservice) cat '{etc}/thermalservice.txt' ;;
  *) echo "Can't find service: $1" >&2; exit 1 ;;
esac
""",
            "taskset": """#!/bin/sh
# stand-in taskset: the phone's mask ANDed with this host's CPUs (all of them when nothing is left)
host=$(( (1 << $(nproc)) - 1 ))
m=$(( 0x$1 & host )); [ "$m" -eq 0 ] && m=$host
shift
exec /usr/bin/taskset "$(printf '%x' "$m")" "$@"
""",
        }
        for name, text in scripts.items():
            (bindir / name).write_text(text)
            (bindir / name).chmod(0o755)

    def banner(self) -> str:
        p = self.props
        return (f"device::ro.product.name={p.get('ro.product.name', '')};"
                f"ro.product.model={p.get('ro.product.model', '')};"
                f"ro.product.device={p.get('ro.product.device', '')};features={self.features}")

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.root / 'bin'}:/usr/bin:/bin", "HOME": str(self.tmp_dir),
                "TMPDIR": str(self.tmp_dir), "EDGELR_ROOT": str(self.root), "LANG": "C"}

    def rewrite(self, cmd: str) -> str:
        """Map the phone's paths in a command line onto the sandbox."""
        cmd = cmd.replace("/data/local/tmp", str(self.tmp_dir))
        return re.sub(r"(?<![\w.\-/])/sys/", str(self.root) + "/sys/", cmd)

    def host_path(self, remote: str) -> Path:
        return Path(self.rewrite(remote))

    def _odpm_loop(self) -> None:
        while not self._stop.wait(0.05):
            self._odpm_write()

    def _odpm_write(self) -> None:
        """Rewrite each ``energy_value``: t = ms since the stand-in started (+1 h), energy = base + P * t."""
        rails = sorted((FIXTURES / "sys/bus/iio/devices").glob("iio:device*/energy_value"))
        elapsed = time.monotonic() - self._t0
        t_ms = int(3_600_000 + elapsed * 1000)
        for fixture in rails:
            lines = [f"t={t_ms}"]
            for m in re.finditer(r"^(CH\d+)\(T=\d+\)\[([^\]]+)\], (\d+)$", fixture.read_text(), re.M):
                ch, rail, base = m.group(1), m.group(2), int(m.group(3))
                e = base + int(self.odpm_power_w.get(rail, 0.0) * 1e6 * elapsed)
                lines.append(f"{ch}(T={t_ms})[{rail}], {e}")
            dst = self.root / fixture.relative_to(FIXTURES)
            tmp = dst.with_name(".energy_value.tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, dst)

    # -- server --------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, sock)
            self._links.append(link)
            threading.Thread(target=link.serve, daemon=True).start()

    def drop_links(self) -> None:
        """Drop every TCP connection (the phone vanished)."""
        for link in self._links:
            if not link.dead.is_set():
                link.kill()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.server.close()
        except OSError:
            pass
        self.drop_links()


class AdbServer:
    """A private REAL adb server (Debian ``adb``) on a free port, killed on :meth:`stop`."""

    def __init__(self, home: Path) -> None:
        self.adb = shutil.which("adb")
        if self.adb is None:
            raise RuntimeError("the Debian 'adb' package is not installed (apt-get install adb)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(home), "ANDROID_SDK_HOME": str(home),
                    "ADB_VENDOR_KEYS": "", "ADB_MDNS": "0"}
        self.env.pop("ANDROID_SERIAL", None)
        self.adb_cmd("start-server", timeout=30)

    def adb_cmd(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.adb, "-P", str(self.port), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def connect(self, serial: str) -> str:
        res = self.adb_cmd("connect", serial)
        return res.stdout + res.stderr

    def stop(self) -> None:
        try:
            self.adb_cmd("kill-server", timeout=10)
        except subprocess.TimeoutExpired:
            pass


# -- pytest fixtures (import them into a test module: ``from tests.adb_standin import adb_server, ...``) --
try:
    import pytest
except ImportError:  # pragma: no cover - the stand-in itself does not need pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="module")
    def adb_server(tmp_path_factory: "pytest.TempPathFactory"):  # type: ignore[no-untyped-def]
        """A private real adb server on a free port (skips when Debian's adb is missing)."""
        if shutil.which("adb") is None:
            pytest.skip("Debian package 'adb' is not installed (make test installs it)")
        server = AdbServer(tmp_path_factory.mktemp("adbhome"))
        yield server
        server.stop()

    @pytest.fixture
    def make_device(tmp_path_factory: "pytest.TempPathFactory", adb_server: AdbServer):  # type: ignore[no-untyped-def]
        """Factory: a fresh stand-in device, connected to ``adb_server`` (unless ``connect=False``)."""
        made: list[AdbdStandin] = []

        def make(faults: Faults | None = None, connect: bool = True, **kw: object) -> AdbdStandin:
            dev = AdbdStandin(tmp_path_factory.mktemp("phone"), faults=faults, **kw)  # type: ignore[arg-type]
            made.append(dev)
            if connect:
                out = adb_server.connect(dev.serial)
                if "connected" not in out and not (faults and faults.unauthorized):
                    raise RuntimeError(f"adb connect {dev.serial} failed: {out}")
            return dev

        yield make
        for dev in made:
            dev.stop()
            adb_server.adb_cmd("disconnect", dev.serial, timeout=10)
