"""SSHTransport against a real OpenSSH sshd: commands, files, host keys, client keys, ssh config."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from device_agents.ssh import SSHTransport, fingerprint
from device_agents.transport import TRANSPORTS
from edgelr.errors import DeviceError, HostKeyError
from tests.sshd import SshdServer, _children, _keygen, sshd_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without ~/.ssh so the real user's known_hosts/config never take part (or get written)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def _ssh_keygen_fingerprint(pub: Path) -> str:
    """The fingerprint as OpenSSH's own ssh-keygen prints it (golden value)."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def test_registered_as_ssh() -> None:
    assert TRANSPORTS["ssh"] is SSHTransport


def test_run_returns_exit_code_stdout_stderr_and_reuses_one_connection(sshd_server: SshdServer) -> None:
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        ok = t.run(["echo", "hello world"], timeout=10)
        assert (ok.exit_code, ok.stdout, ok.stderr) == (0, "hello world\n", "")
        bad = t.run("echo to-out; echo to-err >&2; exit 3", timeout=10)
        assert (bad.exit_code, bad.stdout, bad.stderr) == (3, "to-out\n", "to-err\n")
        argv = t.run(["sh", "-c", 'printf "%s|" "$@"; exit 7', "sh", "a b", "it's", '"q"', "$HOME", "*"], timeout=10)
        assert argv.exit_code == 7
        assert argv.stdout == "a b|it's|\"q\"|$HOME|*|"
        env = t.run('printf "%s" "$EDGELR_X"', timeout=10, env={"EDGELR_X": "a b'c\"d"})
        assert env.stdout == "a b'c\"d"
        assert t.stats.connects == 1
        assert ok.duration_s > 0


def test_program_killed_by_a_signal_reports_128_plus_signal(sshd_server: SshdServer) -> None:
    crash = "import os, signal; print('partial', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        res = t.run(["python3", "-c", crash], timeout=20)
    assert res.exit_code == 128 + 11  # like a local shell; not -1 (paramiko drops SSH exit-signal)
    assert res.stdout == "partial\n" and "Segmentation fault" in res.stderr


def test_large_interleaved_output_is_drained_without_hanging(sshd_server: SshdServer) -> None:
    n = 3_000_000  # far beyond the SSH window and pipe buffers on both streams
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        res = t.run(f"head -c {n} /dev/zero | tr '\\0' a; head -c {n} /dev/zero | tr '\\0' b >&2; exit 5", timeout=30)
    assert res.exit_code == 5
    assert len(res.stdout) == n and set(res.stdout) == {"a"}
    assert len(res.stderr) == n and set(res.stderr) == {"b"}


def test_command_over_its_timeout_is_killed_on_the_device(sshd_server: SshdServer) -> None:
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        start = time.monotonic()
        with pytest.raises(DeviceError, match=r"did not finish within 1 s and was stopped"):
            t.run("sleep 27; echo never", timeout=1)
        elapsed = time.monotonic() - start
        assert elapsed < 1 + 1.5
        time.sleep(0.3)
        left = [p for p in _children(sshd_server.proc.pid) if _cmdline(p).startswith("sleep 27")]
        assert left == []
        assert t.run(["true"], timeout=10).exit_code == 0  # the connection still works afterwards


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_push_pull_round_trip_skips_unchanged_and_is_atomic(sshd_server: SshdServer, tmp_path: Path) -> None:
    src = tmp_path / "model.tflite"
    src.write_bytes(os.urandom(300_000))
    remote_dir = tmp_path / "device" / "models" / "deep"
    remote = remote_dir / "m.tflite"
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        assert t.push(src, str(remote), timeout=20) is True  # parents created
        assert remote.read_bytes() == src.read_bytes()
        assert t.push(src, str(remote), timeout=20) is False  # sha256 matched: nothing sent
        assert (t.stats.pushes, t.stats.skipped, t.stats.bytes_sent) == (1, 1, 300_000)
        assert t.remote_sha256(str(remote), timeout=10) == hashlib.sha256(src.read_bytes()).hexdigest()

        src.write_bytes(b"changed")
        assert t.push(src, str(remote), timeout=20, mode=0o755) is True
        assert remote.read_bytes() == b"changed"
        assert stat.S_IMODE(remote.stat().st_mode) == 0o755
        assert sorted(p.name for p in remote_dir.iterdir()) == ["m.tflite"]  # no temp files left

        back = tmp_path / "pulled" / "sub" / "m.tflite"
        t.pull(str(remote), back, timeout=20)
        assert back.read_bytes() == b"changed"
        assert sorted(p.name for p in back.parent.iterdir()) == ["m.tflite"]
        assert t.stats.bytes_received == 7
        assert t.stats.connects == 1


def test_paths_with_spaces_and_quotes(sshd_server: SshdServer, tmp_path: Path) -> None:
    remote = tmp_path / "edgelr test" / "it's \"here\"" / "m.tflite"
    src = tmp_path / "src.tflite"
    src.write_bytes(b"\x00tflite bytes\xff" * 100)
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        assert t.push(src, str(remote), timeout=20) is True
        assert remote.read_bytes() == src.read_bytes()
        listed = t.run(["ls", str(remote.parent)], timeout=10)
        assert listed.stdout == "m.tflite\n"
        summed = t.run(["sha256sum", str(remote)], timeout=10)
        assert summed.stdout.split()[0] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert t.push(src, str(remote), timeout=20) is False
        t.pull(str(remote), tmp_path / "it's back" / "m.tflite", timeout=20)
        assert (tmp_path / "it's back" / "m.tflite").read_bytes() == src.read_bytes()


def test_missing_files_are_clear_device_errors(sshd_server: SshdServer, tmp_path: Path) -> None:
    with SSHTransport(**sshd_server.transport_kwargs()) as t:
        with pytest.raises(DeviceError, match="does not exist"):
            t.push(tmp_path / "nope.tflite", str(tmp_path / "x"), timeout=10)
        with pytest.raises(DeviceError, match=r"not readable on device 'sshdev'"):
            t.pull(str(tmp_path / "absent.bin"), tmp_path / "local.bin", timeout=10)
        assert not (tmp_path / "local.bin").exists()
        assert list(tmp_path.glob(".local.bin*")) == []
        assert t.run(["true"], timeout=10).exit_code == 0


# ---------------------------------------------------------------------------------------- host keys
def test_unknown_host_key_is_refused_with_fingerprint_and_how_to_trust(sshd_server: SshdServer, tmp_path: Path) -> None:
    kh = tmp_path / "kh_empty"
    kh.write_text("")
    t = SSHTransport(**sshd_server.transport_kwargs(known_hosts=str(kh)))
    with pytest.raises(HostKeyError) as info:
        t.run(["true"], timeout=10)
    msg = str(info.value)
    assert _ssh_keygen_fingerprint(sshd_server.host_key.with_suffix(".pub")) in msg
    assert "not known" in msg and "--trust-new-host" in msg and "trust_new_host = true" in msg
    assert f"ssh-keyscan -p {sshd_server.port} {sshd_server.host} >> {kh}" in msg
    assert kh.read_text() == ""  # nothing recorded without consent


def test_trust_new_host_records_the_key_in_known_hosts(sshd_server: SshdServer, tmp_path: Path) -> None:
    kh = tmp_path / "sub" / "known_hosts"
    with SSHTransport(**sshd_server.transport_kwargs(known_hosts=str(kh), trust_new_host=True)) as t:
        assert t.run(["echo", "ok"], timeout=10).stdout == "ok\n"
    # OpenSSH's own tool finds the recorded entry, and it is the server's real key
    found = subprocess.run(["ssh-keygen", "-F", sshd_server.known_hosts_name, "-f", str(kh)], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    kind, b64 = sshd_server.host_key.with_suffix(".pub").read_text().split()[:2]
    assert f"{kind} {b64}" in kh.read_text()
    # a later connection without trust_new_host now succeeds
    with SSHTransport(**sshd_server.transport_kwargs(known_hosts=str(kh))) as t2:
        assert t2.run(["true"], timeout=10).exit_code == 0


def test_trust_records_into_user_known_hosts_by_default(sshd_server: SshdServer, _private_home: Path) -> None:
    kw = sshd_server.transport_kwargs(trust_new_host=True)
    del kw["known_hosts"]
    with SSHTransport(**kw) as t:
        assert t.run(["true"], timeout=10).exit_code == 0
    user_kh = _private_home / ".ssh" / "known_hosts"
    assert sshd_server.host_key_line().split(None, 1)[1].strip() in user_kh.read_text()
    assert stat.S_IMODE((_private_home / ".ssh").stat().st_mode) == 0o700
    kw["trust_new_host"] = False
    with SSHTransport(**kw) as t:  # ~/.ssh/known_hosts is read by default
        assert t.run(["true"], timeout=10).exit_code == 0


@pytest.mark.parametrize("other_type", ["ed25519", "ecdsa"])
def test_changed_host_key_is_refused_even_with_trust_new_host(
    sshd_server: SshdServer, tmp_path: Path, other_type: str
) -> None:
    impostor = _keygen(tmp_path / f"other_{other_type}", other_type)
    kind, b64 = impostor.with_suffix(".pub").read_text().split()[:2]
    kh = tmp_path / "kh_changed"
    kh.write_text(f"{sshd_server.known_hosts_name} {kind} {b64}\n")
    before = kh.read_text()
    t = SSHTransport(**sshd_server.transport_kwargs(known_hosts=str(kh), trust_new_host=True))
    with pytest.raises(HostKeyError) as info:
        t.run(["true"], timeout=10)
    msg = str(info.value)
    assert "CHANGED" in msg and "never accepts a changed key" in msg
    assert _ssh_keygen_fingerprint(sshd_server.host_key.with_suffix(".pub")) in msg
    assert _ssh_keygen_fingerprint(impostor.with_suffix(".pub")) in msg
    assert f"ssh-keygen -R '{sshd_server.known_hosts_name}' -f {kh}" in msg
    assert kh.read_text() == before  # never overwritten


def test_wrong_client_key_is_refused_without_leaking_the_key(sshd_server: SshdServer, tmp_path: Path) -> None:
    wrong = _keygen(tmp_path / "wrong_key")
    t = SSHTransport(**sshd_server.transport_kwargs(key=str(wrong)))
    with pytest.raises(DeviceError) as info:
        t.run(["true"], timeout=10)
    msg = str(info.value)
    assert "refused" in msg and str(wrong) in msg and "authorized_keys" in msg
    secret_body = "".join(wrong.read_text().splitlines()[1:-1])
    assert secret_body[:40] not in msg
    assert not isinstance(info.value, HostKeyError)


def test_encrypted_key_without_agent_says_to_use_ssh_agent(sshd_server: SshdServer, tmp_path: Path) -> None:
    enc = tmp_path / "enc_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret-pass", "-f", str(enc)], check=True)
    t = SSHTransport(**sshd_server.transport_kwargs(key=str(enc)))
    with pytest.raises(DeviceError, match="ssh-agent") as info:
        t.run(["true"], timeout=10)
    assert "s3cret-pass" not in str(info.value)


def test_missing_key_file_and_refused_port_are_clear(sshd_server: SshdServer, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="key file .* not found"):
        SSHTransport(**sshd_server.transport_kwargs(key=str(tmp_path / "no_such_key")))
    from tests.sshd import _free_port

    t = SSHTransport(**sshd_server.transport_kwargs(port=_free_port()))
    with pytest.raises(DeviceError, match="cannot reach device 'sshdev'"):
        t.run(["true"], timeout=10)


def test_ssh_config_alias_is_honoured_and_explicit_options_win(sshd_server: SshdServer, tmp_path: Path) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"Host mypi\n  HostName {sshd_server.host}\n  Port {sshd_server.port}\n  User {sshd_server.user}\n"
        f"  IdentityFile {sshd_server.client_key}\n"
        f"Host badport\n  HostName {sshd_server.host}\n  Port 1\n  IdentityFile {sshd_server.client_key}\n"
    )
    kh = str(sshd_server.known_hosts)
    with SSHTransport("mypi", ssh_config=str(cfg), known_hosts=kh, use_agent=False) as t:
        assert (t.hostname, t.port, t.user, t.keys) == (
            sshd_server.host, sshd_server.port, sshd_server.user, [str(sshd_server.client_key)]
        )
        assert t.run(["echo", "via-config"], timeout=10).stdout == "via-config\n"
    with SSHTransport("badport", port=sshd_server.port, ssh_config=str(cfg), known_hosts=kh, use_agent=False) as t:
        assert t.run(["true"], timeout=10).exit_code == 0
    # empty inventory values (port 0, user "", key "") mean "not set": the config decides
    with SSHTransport("mypi", port=0, user="", key="", ssh_config=str(cfg), known_hosts=kh, use_agent=False) as t:
        assert (t.port, t.user) == (sshd_server.port, sshd_server.user)
        assert t.run(["true"], timeout=10).exit_code == 0


def test_default_ssh_config_is_read_from_home(sshd_server: SshdServer, _private_home: Path) -> None:
    (_private_home / ".ssh").mkdir()
    (_private_home / ".ssh" / "config").write_text(
        f"Host homepi\n  HostName {sshd_server.host}\n  Port {sshd_server.port}\n  IdentityFile {sshd_server.client_key}\n"
    )
    (_private_home / ".ssh" / "known_hosts").write_text(sshd_server.host_key_line())
    with SSHTransport("homepi", use_agent=False) as t:
        assert t.run(["echo", "home"], timeout=10).stdout == "home\n"


def test_fingerprint_matches_ssh_keygen(sshd_server: SshdServer) -> None:
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(str(sshd_server.host_key))
    assert fingerprint(key) == _ssh_keygen_fingerprint(sshd_server.host_key.with_suffix(".pub"))


def test_device_without_sftp_gets_files_through_exec_channels(tmp_path: Path) -> None:
    from tests.sshd import start_sshd

    server = start_sshd(tmp_path / "nosftp", sftp=False)
    try:
        src = tmp_path / "m.tflite"
        src.write_bytes(os.urandom(200_000))
        remote = tmp_path / "dev dir" / "it's" / "m.tflite"
        with SSHTransport(**server.transport_kwargs()) as t:
            assert t.push(src, str(remote), timeout=20, mode=0o700) is True
            assert remote.read_bytes() == src.read_bytes()
            assert stat.S_IMODE(remote.stat().st_mode) == 0o700
            assert t.push(src, str(remote), timeout=20) is False
            t.pull(str(remote), tmp_path / "back.bin", timeout=20)
            assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
            with pytest.raises(DeviceError, match="not readable"):
                t.pull(str(tmp_path / "absent"), tmp_path / "x.bin", timeout=10)
            assert t._no_sftp is True  # really took the exec path
            assert sorted(p.name for p in remote.parent.iterdir()) == ["m.tflite"]
    finally:
        server.stop()


def test_hashed_known_hosts_entries_written_by_ssh_keygen_are_honoured(sshd_server: SshdServer, tmp_path: Path) -> None:
    good = tmp_path / "kh_hashed"
    good.write_text(sshd_server.host_key_line())
    subprocess.run(["ssh-keygen", "-H", "-f", str(good)], check=True, capture_output=True)
    assert good.read_text().startswith("|1|")  # really hashed (HashKnownHosts format)
    with SSHTransport(**sshd_server.transport_kwargs(known_hosts=str(good))) as t:
        assert t.run(["true"], timeout=10).exit_code == 0

    impostor = _keygen(tmp_path / "impostor")
    bad = tmp_path / "kh_hashed_bad"
    bad.write_text(f"{sshd_server.known_hosts_name} {' '.join(impostor.with_suffix('.pub').read_text().split()[:2])}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(bad)], check=True, capture_output=True)
    with pytest.raises(HostKeyError, match="CHANGED"):
        SSHTransport(**sshd_server.transport_kwargs(known_hosts=str(bad), trust_new_host=True)).run(["true"], timeout=10)


@pytest.mark.timeout(30)
def test_port_that_never_speaks_ssh_says_no_banner(tmp_path: Path) -> None:
    """A TCP port that accepts but never writes (a hung sshd, a wrong service) is named as such, in time."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        t = SSHTransport(host="127.0.0.1", port=port, user="u", device="mute", connect_timeout=1.5,
                         known_hosts=str(tmp_path / "kh"), use_agent=False)
        t0 = time.monotonic()
        with pytest.raises(DeviceError) as info:
            t.run(["mkdir", "-p", "/tmp/x"], timeout=10)
        assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert msg == (f"device 'mute' (127.0.0.1:{port}): no SSH banner within 1.5 s; the port accepts connections "
                   "but does not speak SSH (wrong port, or a sshd that hangs)")


def test_port_out_of_range_is_refused() -> None:
    with pytest.raises(DeviceError, match=r"port 99999 is out of range; expected 1-65535"):
        SSHTransport(host="127.0.0.1", port=99999, user="u", device="d")
