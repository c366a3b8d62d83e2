"""device_agents.inventory: TOML devices, default path, built-in local device, transport registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from device_agents import inventory as inv
from device_agents.local import LocalTransport
from edgelr.errors import InventoryError

GOOD = """
[devices.pi4]
transport = "ssh"
target = "rpi4"
host = "192.168.1.40"
port = 2222
user = "pi"
key = "~/.ssh/id_ed25519"
known_hosts = "~/.ssh/known_hosts"
trust_new_host = true
benchmark_binary = "/home/pi/linux_aarch64_benchmark_model"
workdir = "/home/pi/edgelr"

[devices.pixel7]
transport = "adb"
target = "pixel7"
serial = "33141FDH2000AB"

[devices.box]
transport = "local"
target = "host"
python = "/usr/bin/python3"
affinity_mask = "3"
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGELR_INVENTORY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def write(tmp_path: Path, text: str, name: str = "inv.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_no_inventory_gives_builtin_local(tmp_path: Path) -> None:
    assert inv.default_inventory_path() == tmp_path / "config" / "edgelr" / "inventory.toml"
    devices = inv.load_inventory()
    assert list(devices) == ["local"]
    local = devices["local"]
    assert (local.transport, local.target, local.os, local.python) == ("local", "host", "linux", sys.executable)
    assert local.remote_workdir == "/tmp/edgelr"


def test_file_fields_defaults_and_kwargs(tmp_path: Path) -> None:
    devices = inv.load_inventory(write(tmp_path, GOOD))
    assert sorted(devices) == ["box", "local", "pi4", "pixel7"]
    pi = devices["pi4"]
    assert (pi.host, pi.port, pi.user, pi.trust_new_host, pi.os) == ("192.168.1.40", 2222, "pi", True, "linux")
    assert pi.remote_workdir == "/home/pi/edgelr"
    kw = pi.transport_kwargs()
    assert kw["host"] == "192.168.1.40" and kw["port"] == 2222 and kw["known_hosts"] == "~/.ssh/known_hosts"
    px = devices["pixel7"]
    assert (px.os, px.remote_workdir, px.adb_port) == ("android", "/data/local/tmp/edgelr", 5037)
    assert px.transport_kwargs()["serial"] == "33141FDH2000AB"
    assert devices["box"].affinity_mask == "3" and devices["box"].python == "/usr/bin/python3"


def test_default_path_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "config" / "edgelr" / "inventory.toml"
    default.parent.mkdir(parents=True)
    default.write_text('[devices.a]\ntransport = "local"\n')
    assert sorted(inv.load_inventory()) == ["a", "local"]
    other = write(tmp_path, '[devices.b]\ntransport = "local"\n', "other.toml")
    monkeypatch.setenv("EDGELR_INVENTORY", str(other))
    assert sorted(inv.load_inventory()) == ["b", "local"]
    assert sorted(inv.load_inventory(write(tmp_path, GOOD))) == ["box", "local", "pi4", "pixel7"]  # flag wins


def test_unknown_device_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"unknown device 'pi5'; known devices: box, local, pi4, pixel7"):
        inv.get_device("pi5", write(tmp_path, GOOD))


@pytest.mark.parametrize("text, message", [
    ('[devices.x]\ntransport = "serial"\n', r"transport='serial'; expected one of \['adb', 'labgrid', 'local', 'ssh'\]"),
    ('[devices.x]\ntransport = "ssh"\n', "sets no host"),
    ('[devices.x]\ntransport = "local"\nhots = "a"\n', r"unknown field\(s\) \['hots'\]"),
    ('[devices.x]\ntransport = "ssh"\nhost = "h"\nport = "22"\n', "port='22'; expected int"),
    ('[devices.x]\ntransport = "local"\naffinity_mask = "zz"\n', "expected a hex CPU mask"),
    ('[devices.x\n', "not valid TOML"),
    ('devices = 3\n', "must be tables"),
])
def test_bad_inventory(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        inv.load_inventory(write(tmp_path, text))


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="does not exist"):
        inv.load_inventory(tmp_path / "nope.toml")


def test_open_transport_local_and_missing_module() -> None:
    t = inv.open_transport(inv.get_device("local"))
    assert isinstance(t, LocalTransport)
    assert t.run("echo hi", timeout=10).stdout == "hi\n"
    # a transport that is not registered gives a clear error, not a traceback
    spec = inv.DeviceSpec(name="s", transport="serialx")
    with pytest.raises(InventoryError, match=r"no device_agents/serialx.py yet"):
        inv.open_transport(spec)


def test_a_registered_transport_is_accepted_by_the_inventory(tmp_path: Path) -> None:
    """Validation reads the transport registry: registering a transport is all the inventory needs."""
    from device_agents.transport import TRANSPORTS

    class SerialTransport(LocalTransport):
        default_os = "android"

        def __init__(self, baud: int = 115200, **kw: object) -> None:
            super().__init__(**kw)  # type: ignore[arg-type]
            self.baud = baud

    p = write(tmp_path, '[devices.s]\ntransport = "serialx"\n[devices.s.options]\nbaud = 9600\n')
    with pytest.raises(InventoryError, match=r"transport='serialx'; expected one of"):
        inv.load_inventory(p)
    TRANSPORTS.register("serialx")(SerialTransport)
    try:
        spec = inv.load_inventory(p)["s"]
        assert (spec.transport, spec.os) == ("serialx", "android")
        t = inv.open_transport(spec)
        assert isinstance(t, SerialTransport) and t.baud == 9600 and t.name == "serialx"
    finally:
        TRANSPORTS.pop("serialx")


@pytest.mark.parametrize("field,value", [("port", 99999), ("port", 0), ("adb_port", 70000)])
def test_port_outside_1_to_65535_is_rejected(tmp_path: Path, field: str, value: int) -> None:
    transport = "adb" if field == "adb_port" else "ssh"
    p = write(tmp_path, f'[devices.x]\ntransport = "{transport}"\nhost = "h"\n{field} = {value}\n')
    with pytest.raises(InventoryError) as info:
        inv.load_inventory(p)
    assert f"device 'x' in {p}: {field}={value} is not a TCP port; expected 1-65535" in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_option_names_the_key_and_the_transports_declared_options(tmp_path: Path) -> None:
    from device_agents.ssh import SSHTransport

    p = write(tmp_path, '[devices.x]\ntransport = "ssh"\nhost = "h"\n[devices.x.options]\nkeepalive = 3\n'
                        'heartbeet = 1\n')
    with pytest.raises(InventoryError) as info:
        inv.load_inventory(p)
    known = SSHTransport.declared_options()
    assert "heartbeat" in known and "keepalive" in known and "extra" not in known and "self" not in known
    assert str(info.value) == (f"device 'x' in {p}: [devices.x.options] has unknown key(s) heartbeet; the 'ssh' "
                               f"transport takes: {', '.join(known)}")
    # another transport declares other options: local takes only its shell
    p = write(tmp_path, '[devices.y]\ntransport = "local"\n[devices.y.options]\nkeepalive = 3\n')
    with pytest.raises(InventoryError, match=r"unknown key\(s\) keepalive; the 'local' transport takes: shell$"):
        inv.load_inventory(p)


def test_option_of_the_wrong_type_is_rejected_and_declared_options_pass(tmp_path: Path) -> None:
    p = write(tmp_path, '[devices.x]\ntransport = "ssh"\nhost = "h"\n[devices.x.options]\nheartbeat = "often"\n')
    with pytest.raises(InventoryError, match=r"options.heartbeat='often'; expected a number$"):
        inv.load_inventory(p)
    p = write(tmp_path, '[devices.x]\ntransport = "ssh"\nhost = "h"\n[devices.x.options]\nheartbeat = 0.5\n'
                        'use_agent = false\n')
    t = inv.open_transport(inv.load_inventory(p)["x"])
    assert (t.heartbeat_s, t.use_agent) == (0.5, False)


def test_cli_reports_a_bad_port_in_one_line(tmp_path: Path) -> None:
    import subprocess

    p = write(tmp_path, '[devices.x]\ntransport = "ssh"\nhost = "h"\nport = 99999\n')
    model = Path(__file__).parent / "fixtures" / "android" / "tiny_mlp.tflite"
    res = subprocess.run([sys.executable, "-m", "edgelr.cli.main", "bench", str(model), "--device", "x",
                          "--inventory", str(p)], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "port=99999 is not a TCP port; expected 1-65535" in lines[0], res.stderr
    assert "Traceback" not in res.stderr
