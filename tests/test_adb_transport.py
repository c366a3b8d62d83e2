"""ADBTransport through the REAL adb server (Debian adb) and the protocol-level stand-in device.

The device side is tests/adb_standin.py, a stand-in for a phone's adbd (no adbd or emulator exists
here); the adb server between them is the real one, started privately on a free port.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from device_agents.adb import ADBTransport, parse_devices
from device_agents.transport import TRANSPORTS
from edgelr.errors import DeviceError
from tests.adb_standin import AdbServer, Faults, adb_server, make_device  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory, adb_server: AdbServer):  # noqa: F811
    from tests.adb_standin import AdbdStandin

    dev = AdbdStandin(tmp_path_factory.mktemp("phone"))
    assert "connected to" in adb_server.connect(dev.serial)
    yield dev
    dev.stop()


@pytest.fixture
def adb(phone, adb_server: AdbServer) -> ADBTransport:  # noqa: F811
    return ADBTransport(serial=phone.serial, adb_port=adb_server.port)


def test_registered_as_adb() -> None:
    assert TRANSPORTS["adb"] is ADBTransport


def test_parse_devices() -> None:
    text = "emulator-5554\tdevice\n127.0.0.1:5555\tunauthorized\n"
    assert parse_devices(text) == {"emulator-5554": "device", "127.0.0.1:5555": "unauthorized"}


@pytest.mark.timeout(60)
def test_real_adb_server_lists_the_standin(adb_server: AdbServer, phone) -> None:  # noqa: F811
    listed = adb_server.adb_cmd("devices").stdout
    assert f"{phone.serial}\tdevice" in listed
    # the real adb client talks to the stand-in too (shell v2 through the CLI)
    res = adb_server.adb_cmd("-s", phone.serial, "shell", "echo via-cli; exit 4")
    assert res.stdout == "via-cli\n" and res.returncode == 4


@pytest.mark.timeout(60)
def test_run_exit_status_and_streams(adb: ADBTransport) -> None:
    res = adb.run("echo out; echo err >&2; exit 3", timeout=20)
    assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert adb.run(["printf", "%s|", "a b", "it's"], timeout=20).stdout == "a b|it's|"
    assert adb.run("echo $FOO", timeout=20, env={"FOO": "x y"}).stdout == "x y\n"
    assert adb.run("getprop ro.product.model", timeout=20).stdout == "Pixel 7\n"


@pytest.mark.timeout(60)
def test_large_output_arrives_whole(adb: ADBTransport) -> None:
    res = adb.run("head -c 3000000 /dev/zero | tr '\\0' 'a'; echo", timeout=30)
    assert res.exit_code == 0 and len(res.stdout) == 3_000_001 and set(res.stdout[:-1]) == {"a"}


@pytest.mark.timeout(60)
def test_push_pull_and_sha256_skip(adb: ADBTransport, tmp_path: Path, phone) -> None:  # noqa: F811
    data = os.urandom(300_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    remote = "/data/local/tmp/edgelr/nested/dir/blob.bin"
    assert adb.push(src, remote, timeout=20, mode=0o755) is True
    n_sync = phone.log.count("sync:")
    assert adb.push(src, remote, timeout=20, mode=0o755) is False          # same sha256: no transfer
    assert phone.log.count("sync:") == n_sync
    assert adb.remote_sha256(remote, 20) == hashlib.sha256(data).hexdigest()
    mode, size, _ = adb.stat(remote, 20)
    assert (mode & 0o777, size) == (0o755, 300_000)
    assert adb.stat("/data/local/tmp/nope", 20)[0] == 0
    dst = tmp_path / "back.bin"
    adb.pull(remote, dst, timeout=20)
    assert dst.read_bytes() == data
    src.write_bytes(data[:-1] + b"!")                                      # changed file: pushed again
    assert adb.push(src, remote, timeout=20) is True
    assert adb.remote_sha256(remote, 20) == hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.timeout(60)
def test_pull_missing_file_is_a_device_error(adb: ADBTransport, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="adb pull .*No such file"):
        adb.pull("/data/local/tmp/missing.bin", tmp_path / "x", timeout=20)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


@pytest.mark.timeout(60)
def test_deadline_enforced_by_the_agent(adb: ADBTransport) -> None:
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="did not finish within 2 s"):
        adb.run("sleep 30", timeout=2)
    assert time.monotonic() - t0 < 4


@pytest.mark.timeout(60)
def test_unknown_serial_and_no_server(adb_server: AdbServer, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(DeviceError, match="not attached"):
        ADBTransport(serial="R58M12345XY", adb_port=adb_server.port).run("true", timeout=10)
    with pytest.raises(DeviceError, match="cannot reach the adb server"):
        ADBTransport(serial="x", adb_port=1).run("true", timeout=5)
    with pytest.raises(DeviceError, match="push .*not a file"):
        ADBTransport(serial="x", adb_port=1).push(tmp_path / "absent", "/data/local/tmp/a", timeout=5)


@pytest.mark.timeout(60)
def test_connects_network_serial_itself(adb_server: AdbServer, make_device) -> None:  # noqa: F811
    dev = make_device(connect=False)
    t = ADBTransport(serial=dev.serial, adb_port=adb_server.port)
    assert t.run("echo ok", timeout=20).stdout == "ok\n"
    assert t.devices()[dev.serial] == "device"


# --- faults: each a clear DeviceError well within the deadline ------------------------------------------
@pytest.mark.timeout(60)
def test_disconnect_mid_push(adb_server: AdbServer, make_device, tmp_path: Path) -> None:  # noqa: F811
    dev = make_device(Faults(drop_push_after=1_000_000))
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3_000_000))
    t = ADBTransport(serial=dev.serial, adb_port=adb_server.port)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="(disconnect|broke|closed)"):
        t.push(src, "/data/local/tmp/big.bin", timeout=20)
    assert time.monotonic() - t0 < 20


@pytest.mark.timeout(60)
def test_disconnect_mid_run(adb_server: AdbServer, make_device) -> None:  # noqa: F811
    dev = make_device(Faults(drop_run_on="sleep 10", drop_run_delay=0.5))
    t = ADBTransport(serial=dev.serial, adb_port=adb_server.port)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="without an exit status after 6 bytes"):
        t.run("echo start; sleep 10; echo end", timeout=30)
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(60)
def test_shell_dies_with_truncated_output(adb_server: AdbServer, make_device) -> None:  # noqa: F811
    dev = make_device(Faults(truncate_on="PARTIAL"))
    t = ADBTransport(serial=dev.serial, adb_port=adb_server.port)
    with pytest.raises(DeviceError, match="ended without an exit status"):
        t.run("echo PARTIAL; sleep 0.3; echo rest; exit 0", timeout=20)
    # the same device still answers other commands: the fault is per command, not a dead link
    assert t.run("echo fine", timeout=20).stdout == "fine\n"


@pytest.mark.timeout(60)
def test_unauthorized_device(adb_server: AdbServer, make_device) -> None:  # noqa: F811
    dev = make_device(Faults(unauthorized=True), connect=False)
    t = ADBTransport(serial=dev.serial, adb_port=adb_server.port)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="unauthorized.*accept the 'Allow USB debugging\\?' RSA key prompt"):
        t.run("echo hi", timeout=20)
    assert time.monotonic() - t0 < 10
    # once the server lists it as unauthorized, the transport:SERIAL path says the same
    assert adb_server.adb_cmd("devices").stdout.count(f"{dev.serial}\tunauthorized") == 1
    with pytest.raises(DeviceError, match="unauthorized"):
        ADBTransport(serial=dev.serial, adb_port=adb_server.port).run("echo hi", timeout=20)


@pytest.mark.timeout(60)
def test_serial_from_android_serial(adb_server: AdbServer, phone, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("ANDROID_SERIAL", phone.serial)
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(adb_server.port))
    t = ADBTransport()
    assert (t.serial, t.adb_port) == (phone.serial, adb_server.port)
    assert t.run("echo $((6 * 7))", timeout=20).stdout == "42\n"


@pytest.mark.timeout(60)
def test_device_without_shell_v2_is_refused(adb_server: AdbServer, make_device) -> None:  # noqa: F811
    dev = make_device(features="cmd")                                       # an Android 6 phone
    t = ADBTransport(serial=dev.serial, adb_port=adb_server.port)
    with pytest.raises(DeviceError, match="lacks the shell_v2 feature .*Android 7 or newer"):
        t.run("true", timeout=20)
