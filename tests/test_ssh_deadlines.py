"""Dead and blackholed links: the SSH agent raises DeviceError within its deadline, never hangs.

The blackhole cases run sshd in its own network namespace and take the veth link down while a
command runs or a file is being sent (paramiko alone hangs > 88 s in sftp.put there).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from device_agents.ssh import KILL_GRACE_S, SSHTransport
from edgelr.errors import DeviceError
from tests.sshd import SshdServer, sshd_netns, sshd_server, wait_accepting  # noqa: F401  (fixtures)

MARGIN_S = 1.5  # scheduling slack on 2 busy cores


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def device_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the "device" writes; removed afterwards (partial uploads can be hundreds of MB)."""
    d = tmp_path / "device"
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _big_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(size)  # sparse rest: quick to create and to read
    return path


def _when_upload_started(remote_dir: Path, action: Callable[[], None], limit_s: float = 20.0) -> threading.Thread:
    """Run ``action`` once a temp upload file in ``remote_dir`` has received data (a real mid-push)."""

    def watch() -> None:
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            tmps = list(remote_dir.glob(".*.edgelr-*.tmp")) if remote_dir.exists() else []
            if tmps and any(p.stat().st_size > 0 for p in tmps if p.exists()):
                action()
                return
            time.sleep(0.005)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    return th


@pytest.mark.timeout(90)
def test_sshd_killed_mid_push_gives_clear_device_error(
    sshd_server: SshdServer, tmp_path: Path, device_dir: Path
) -> None:
    src = _big_file(tmp_path / "big.tflite", 256 << 20)
    remote_dir = device_dir
    remote = remote_dir / "big.tflite"
    deadline = 30.0
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        t.connect(timeout=10)
        watcher = _when_upload_started(remote_dir, sshd_server.kill_all)
        start = time.monotonic()
        with pytest.raises(DeviceError) as info:
            t.push(src, str(remote), timeout=deadline)
        elapsed = time.monotonic() - start
        watcher.join(5)
    assert sshd_server.proc.poll() is not None, "the test must really have killed sshd mid-push"
    msg = str(info.value)
    assert "device 'sshdev'" in msg and f"push of {src} to {remote}" in msg
    assert elapsed < deadline + MARGIN_S
    assert not remote.exists()  # atomic: never a partial file under the final name


@pytest.mark.timeout(60)
def test_sshd_killed_mid_run_is_a_device_error_not_an_exit_code(sshd_server: SshdServer) -> None:
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        assert t.run(["true"], timeout=10).exit_code == 0
        threading.Timer(0.5, sshd_server.kill_all).start()
        start = time.monotonic()
        with pytest.raises(DeviceError, match=r"connection to device 'sshdev' .* was lost during run of 'sleep 20'"):
            t.run(["sleep", "20"], timeout=15)
        assert time.monotonic() - start < 5


@pytest.mark.timeout(60)
def test_blackholed_link_mid_run_raises_within_deadline(sshd_netns: SshdServer) -> None:
    deadline = 5.0
    with SSHTransport(**sshd_netns.transport_kwargs()) as t:
        assert t.run(["echo", "up"], timeout=10).stdout == "up\n"  # warm connection through the veth
        threading.Timer(1.0, sshd_netns.link_down).start()
        start = time.monotonic()
        with pytest.raises(DeviceError) as info:
            t.run(["sleep", "30"], timeout=deadline)
        elapsed = time.monotonic() - start
    assert str(info.value) == (
        f"device 'sshdev' ({sshd_netns.user}@{sshd_netns.host}:22) did not answer within 5 s during run of "
        "'sleep 30'; check the link"
    )
    assert deadline <= elapsed < deadline + KILL_GRACE_S + MARGIN_S


@pytest.mark.timeout(90)
def test_blackholed_link_mid_push_raises_within_deadline(
    sshd_netns: SshdServer, tmp_path: Path, device_dir: Path
) -> None:
    src = _big_file(tmp_path / "big.tflite", 256 << 20)
    remote_dir = device_dir  # the namespace shares the filesystem: the watcher sees the upload
    deadline = 6.0
    with SSHTransport(**sshd_netns.transport_kwargs()) as t:
        t.connect(timeout=10)
        watcher = _when_upload_started(remote_dir, sshd_netns.link_down)
        start = time.monotonic()
        with pytest.raises(DeviceError, match=r"did not answer within 6 s during push of .*; check the link"):
            t.push(src, str(remote_dir / "big.tflite"), timeout=deadline)
        elapsed = time.monotonic() - start
        watcher.join(5)
    assert elapsed < deadline + MARGIN_S
    assert not (remote_dir / "big.tflite").exists()


@pytest.mark.timeout(60)
def test_blackholed_device_at_connect_raises_within_deadline(sshd_netns: SshdServer) -> None:
    sshd_netns.link_down()
    t = SSHTransport(**sshd_netns.transport_kwargs())
    start = time.monotonic()
    with pytest.raises(DeviceError, match=r"did not answer within 2 s during connect; check the link"):
        t.run(["true"], timeout=2)  # shorter than the ~3 s ARP failure that would say "unreachable"
    assert time.monotonic() - start < 2 + MARGIN_S


@pytest.mark.timeout(60)
def test_link_back_up_reconnects_on_next_call(sshd_netns: SshdServer) -> None:
    with SSHTransport(**sshd_netns.transport_kwargs()) as t:
        assert t.run(["true"], timeout=10).exit_code == 0
        sshd_netns.link_down()
        with pytest.raises(DeviceError):
            t.run(["sleep", "10"], timeout=2)
        sshd_netns.link_up()
        wait_accepting(sshd_netns.host, sshd_netns.port)  # the kernel may report "no route" for a moment (ARP)
        assert t.run(["echo", "again"], timeout=10).stdout == "again\n"
        assert t.stats.connects == 2
