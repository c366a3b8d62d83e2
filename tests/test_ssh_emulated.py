"""Slow tier: `edgelr bench` over SSH into an emulated aarch64 Raspberry-Pi-like userland.

An arm64 Debian (bookworm, minbase + python3) built with debootstrap runs under qemu-user-static via
binfmt_misc; Debian's sshd serves it with ``ChrootDirectory``, so every command of the benchmark
(shell, python3, the LiteRT runner with ai-edge-litert's aarch64 wheel) really executes aarch64 code.
This is an emulation, not a Pi: timings are ~100x slower and are not asserted.

Runs only with ``EDGELR_EMULATED=1`` (root, Debian packages ``qemu-user-static debootstrap``, network to
deb.debian.org and PyPI the first time). The rootfs is cached in ``$EDGELR_EMULATED_ROOTFS`` (default
``/var/cache/edgelr/pi-arm64``; ChrootDirectory needs a root-owned path, so not under /tmp); building
it takes a few minutes once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.sshd import SshdServer, start_sshd, write_inventory

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("EDGELR_EMULATED") != "1", reason="aarch64 emulation tier: set EDGELR_EMULATED=1"),
]

ROOTFS = Path(os.environ.get("EDGELR_EMULATED_ROOTFS", "/var/cache/edgelr/pi-arm64"))
SITE = "/opt/edgelr-site"           # ai-edge-litert + numpy aarch64 wheels, inside the rootfs
PYTHON = "/usr/local/bin/edgelr-python"  # python3 with SITE on its path, inside the rootfs
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
PLATFORMS = ["manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64",
             "manylinux_2_31_aarch64", "manylinux_2_34_aarch64"]

_MAKE_MODEL = """
import sys
from edgelr.tfcompat import tf, keras2
k = keras2()
k.utils.set_random_seed(0)
m = k.Sequential([k.layers.Input((16,)), k.layers.Dense(32, activation="relu"), k.layers.Dense(4)])
open(sys.argv[1], "wb").write(tf().lite.TFLiteConverter.from_keras_model(m).convert())
"""


def _sh(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def _ensure_binfmt() -> None:
    if not QEMU_CONF.is_file() or shutil.which("debootstrap") is None:
        pytest.skip("needs Debian packages qemu-user-static and debootstrap (apt-get install -y qemu-user-static "
                    "debootstrap)")
    if not (BINFMT / "register").exists():
        res = _sh("mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT))
        if res.returncode != 0:
            pytest.skip(f"cannot mount binfmt_misc: {res.stderr.strip()}")
    if not (BINFMT / "qemu-aarch64").exists():
        try:
            (BINFMT / "register").write_text(QEMU_CONF.read_text().strip())
        except OSError as exc:
            pytest.skip(f"cannot register qemu-aarch64 with binfmt_misc: {exc}")


def _build_rootfs() -> None:
    """debootstrap arm64 + the aarch64 wheels + a python wrapper; built in ROOTFS.partial, then renamed."""
    part = ROOTFS.with_name(ROOTFS.name + ".partial")
    # debootstrap removes <root>/debootstrap when it completes: a finished stage is reused
    if not (part / "usr/bin/python3").exists() or (part / "debootstrap").exists():
        shutil.rmtree(part, ignore_errors=True)
        part.parent.mkdir(parents=True, exist_ok=True)
        res = _sh("debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3", "bookworm", str(part),
                  "http://deb.debian.org/debian", timeout=1800)
        if res.returncode != 0:
            pytest.skip(f"debootstrap failed (network?): {res.stderr.strip()[-300:]}")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", f"{part}{SITE}", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
           *[x for p in PLATFORMS for x in ("--platform", p)], "--platform", "any",
           "ai-edge-litert==2.3.0", "numpy==2.4.6"]
    res = subprocess.run(pip, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.skip(f"cannot fetch the aarch64 wheels: {res.stderr.strip()[-300:]}")
    wrapper = part / PYTHON.lstrip("/")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={SITE} exec /usr/bin/python3 "$@"\n')
    wrapper.chmod(0o755)
    part.rename(ROOTFS)


@pytest.fixture(scope="module")
def pi_rootfs() -> Iterator[Path]:
    """The arm64 rootfs with /proc and /dev mounted (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("the emulation tier needs root (binfmt_misc, chroot)")
    _ensure_binfmt()
    if not (ROOTFS / PYTHON.lstrip("/")).exists():
        _build_rootfs()
    mounts = []
    for src, dst, args in (("proc", "proc", ["-t", "proc"]), ("/dev", "dev", ["--bind"])):
        target = ROOTFS / dst
        if _sh("mountpoint", "-q", str(target)).returncode != 0:
            res = _sh("mount", *args, src, str(target))
            if res.returncode != 0:
                pytest.skip(f"cannot mount {dst} in the rootfs: {res.stderr.strip()}")
            mounts.append(target)
    try:
        yield ROOTFS
    finally:
        for target in reversed(mounts):
            _sh("umount", "-l", str(target))


@pytest.fixture
def pi_sshd(pi_rootfs: Path, tmp_path: Path) -> Iterator[SshdServer]:
    """sshd serving the rootfs (ChrootDirectory); the device's workdir starts empty."""
    shutil.rmtree(pi_rootfs / "tmp" / "edgelr", ignore_errors=True)
    server = start_sshd(tmp_path / "sshd", extra_config=[f"ChrootDirectory {pi_rootfs}"])
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(3600)
def test_edgelr_bench_on_emulated_aarch64_pi(pi_sshd: SshdServer, tmp_path: Path) -> None:
    from device_agents.ssh import SSHTransport

    with SSHTransport(**pi_sshd.transport_kwargs()) as t:
        arch = t.run([PYTHON, "-c", "import platform, ai_edge_litert; print(platform.machine())"], timeout=600)
        assert (arch.exit_code, arch.stdout.strip()) == (0, "aarch64"), arch.stderr
        elf = t.run(["od", "-An", "-tx1", "-j18", "-N2", "/usr/bin/python3.11"], timeout=120)
        assert elf.stdout.split() == ["b7", "00"]  # e_machine EM_AARCH64: the python that ran is arm64 code

    model = tmp_path / "tiny.tflite"
    made = subprocess.run([sys.executable, "-c", _MAKE_MODEL, str(model)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    inv = write_inventory(tmp_path / "inv.toml", pi_sshd, name="pi", python=PYTHON, workdir="/tmp/edgelr",
                          target="rpi4")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELR_", "XDG_", "SSH_AUTH_SOCK"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"))
    proc = subprocess.run([sys.executable, "-m", "edgelr.cli.main", "bench", str(model), "--device", "pi",
                           "--inventory", str(inv), "--runs", "3", "--json"],
                          capture_output=True, text=True, timeout=3000, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    (summary,) = data["summary"]
    assert summary["samples"] == 3 and summary["avg_ms"] > 0
    assert all("aarch64" in r["tool_version"] for r in data["rows"])  # the runner reported an aarch64 platform
    on_device = list((ROOTFS / "tmp" / "edgelr" / "models").glob("*tiny.tflite"))
    assert len(on_device) == 1 and on_device[0].read_bytes() == model.read_bytes()

