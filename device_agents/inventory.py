"""The device inventory: where each device is and how to reach it (a TOML file of ``[devices.NAME]``).

Example ``~/.config/edgelr/inventory.toml``::

    [devices.pi4]
    transport = "ssh"
    target = "rpi4"                 # a target profile (edgelr targets)
    host = "192.168.1.40"
    user = "pi"
    key = "~/.ssh/id_ed25519"
    known_hosts = "~/.ssh/known_hosts"
    # benchmark_binary = "/home/pi/linux_aarch64_benchmark_model"   # else edgelr's runner.py
    python = "python3"
    workdir = "/tmp/edgelr"

    [devices.pixel7]
    transport = "adb"
    target = "pixel7"
    serial = "33141FDH2000AB"
    benchmark_binary = "/data/local/tmp/android_aarch64_benchmark_model"

Fields (all optional but ``transport``): ``transport`` (a registered transport: local | ssh | adb | labgrid,
see :mod:`device_agents.builtin`), ``target`` (profile, default ``host``), ``os`` (linux | android; default
the transport's, android for adb); ssh: ``host port user key known_hosts
trust_new_host``; adb: ``serial adb_host adb_port``; labgrid (:mod:`device_agents.labgrid`): ``place`` or
``tags`` (a table: the place's labgrid tags to match), ``coordinator`` (default: the file's
``[lab] coordinator = "host:port"``, else ``$LG_COORDINATOR``), ``place_wait`` (s to wait while busy),
and the ssh fields ``user key known_hosts trust_new_host`` (``os = "android"``: a phone on the lab host,
``serial adb_port``); ``benchmark_binary`` (path on the device of LiteRT's
``benchmark_model``; empty = edgelr's runner.py), ``benchmark_binary_local`` (a local file edgelr pushes
to ``benchmark_binary``), ``python`` (device interpreter for runner.py), ``workdir``, ``affinity_mask``
(hex, overrides the target's), ``shell`` (local only), ``connect_timeout``, ``command_timeout`` (s),
``description``; a sub-table ``[devices.NAME.options]`` is passed to the transport's constructor: its
keys must be options the transport declares (its constructor's keyword parameters, e.g. ssh's
``keepalive``, ``heartbeat``, ``use_agent``), with values of the option's type.

The file is found at ``--inventory FILE``, else ``$EDGELR_INVENTORY``, else
``$XDG_CONFIG_HOME/edgelr/inventory.toml`` (``~/.config/...``). A device ``local`` (this machine,
target ``host``, run with this Python) is always available unless the file defines its own ``local``.

A labgrid device that matches ``tags`` stands for every matching place: ``NAME@PLACE`` names it on one
place (``edgelr bench --device pi4@rpi4-a``), and ``regress`` runs it on each matching place.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agents.builtin import TRANSPORTS
from device_agents.transport import Transport
from edgelr.errors import InventoryError

DEFAULT_WORKDIR = {"linux": "/tmp/edgelr", "android": "/data/local/tmp/edgelr"}


@dataclass(frozen=True)
class DeviceSpec:
    """One ``[devices.NAME]`` table.

    ``benchmark_binary`` is the path *on the device* of a LiteRT ``benchmark_model`` binary (a local
    file is pushed first when ``benchmark_binary_local`` is set); empty means edgelr's ``runner.py`` run
    with ``python``. Times are seconds.
    """

    name: str
    transport: str = "local"
    target: str = "host"
    os: str = "linux"
    # ssh
    host: str = ""
    port: int = 0                      # 0: from ~/.ssh/config, else 22
    user: str = ""
    key: str = ""
    known_hosts: str = ""
    trust_new_host: bool = False
    # adb
    serial: str = ""
    adb_host: str = "127.0.0.1"
    adb_port: int = 5037
    # labgrid
    coordinator: str = ""
    place: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    place_wait: float = 600.0
    # what runs the benchmark
    benchmark_binary: str = ""
    benchmark_binary_local: str = ""
    python: str = "python3"
    workdir: str = ""
    affinity_mask: str | None = None
    shell: str = "/bin/sh"
    connect_timeout: float = 10.0
    command_timeout: float = 900.0
    description: str = ""
    source: str = "built-in"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def remote_workdir(self) -> str:
        """The workdir on the device (inventory value, else a per-OS default)."""
        return self.workdir or DEFAULT_WORKDIR.get(self.os, "/tmp/edgelr")

    def transport_kwargs(self) -> dict[str, Any]:
        """Keyword arguments passed to the transport's constructor: the fields the registered transport
        takes (:meth:`~device_agents.transport.Transport.inventory_kwargs`), then ``options``."""
        return {**TRANSPORTS[self.transport].inventory_kwargs(self), **self.options}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(DeviceSpec)}
_TYPES: dict[str, tuple[type, ...]] = {
    "port": (int,), "adb_port": (int,), "trust_new_host": (bool,),
    "connect_timeout": (int, float), "command_timeout": (int, float), "options": (dict,),
    "tags": (dict,), "place_wait": (int, float),
}

BUILTIN_LOCAL = DeviceSpec(name="local", transport="local", target="host", python=sys.executable or "python3",
                           description="this machine (built-in)", source="built-in")


def default_inventory_path() -> Path:
    """``$XDG_CONFIG_HOME/edgelr/inventory.toml`` (``~/.config/edgelr/inventory.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edgelr" / "inventory.toml"


def inventory_path(path: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """The inventory file to read and whether it was named explicitly (flag or environment)."""
    if path:
        return Path(path).expanduser(), True
    env = os.environ.get("EDGELR_INVENTORY")
    if env:
        return Path(env).expanduser(), True
    return default_inventory_path(), False


def _parse_device(name: str, raw: Any, source: str, lab: dict[str, Any] | None = None) -> DeviceSpec:
    if not isinstance(raw, dict):
        raise InventoryError(f"device '{name}' in {source} is not a table; write [devices.{name}]")
    unknown = sorted(set(raw) - set(_FIELDS) - {"name", "source"})
    if unknown:
        raise InventoryError(f"device '{name}' in {source} has unknown field(s) {unknown}; valid fields: "
                             f"{sorted(set(_FIELDS) - {'name', 'source'})} (transport-specific extras go "
                             f"in [devices.{name}.options])")
    values = dict(raw)
    for key, types in _TYPES.items():
        if key in values and (not isinstance(values[key], types) or isinstance(values[key], bool) and bool not in types):
            raise InventoryError(f"device '{name}' in {source}: {key}={values[key]!r}; expected "
                                 f"{' or '.join(t.__name__ for t in types)}")
    for key, value in values.items():
        if _TYPES.get(key) is None and key != "affinity_mask" and not isinstance(value, str):
            raise InventoryError(f"device '{name}' in {source}: {key}={value!r}; expected a string")
    for key in ("port", "adb_port"):
        if key in values and not 1 <= values[key] <= 65535:
            raise InventoryError(f"device '{name}' in {source}: {key}={values[key]!r} is not a TCP port; expected "
                                 f"1-65535" + (" (or leave it out: ~/.ssh/config's Port, else 22)" if key == "port" else ""))
    transport = values.get("transport", "")
    if transport not in TRANSPORTS:
        raise InventoryError(f"device '{name}' in {source}: transport={transport!r}; expected one of "
                             f"{sorted(TRANSPORTS)}")
    if values.get("options"):
        _check_options(name, source, transport, values["options"])
    if transport == "labgrid":
        _check_lab(name, source, values, lab or {})
    cls = TRANSPORTS[transport]
    for key, example in cls.required_fields.items():
        if not values.get(key):
            raise InventoryError(f"device '{name}' in {source} uses transport '{transport}' but sets no {key}; "
                                 f"add {key} = \"{example}\"")
    values.setdefault("os", cls.default_os)
    mask = values.get("affinity_mask")
    if mask is not None:
        if not isinstance(mask, str):
            raise InventoryError(f"device '{name}' in {source}: affinity_mask={mask!r}; expected a hex string")
        try:
            if mask:
                int(mask, 16)
        except ValueError:
            raise InventoryError(f"device '{name}' in {source}: affinity_mask={mask!r}; expected a hex CPU "
                                 f"mask such as 'f0'") from None
    return DeviceSpec(name=name, source=source, **values)


def _check_lab(name: str, source: str, values: dict[str, Any], lab: dict[str, Any]) -> None:
    """A labgrid entry names a place or string tags, and has a coordinator (its own, ``[lab]``'s or
    ``$LG_COORDINATOR``); fills ``coordinator`` in ``values``."""
    tags = values.get("tags") or {}
    bad = {k: v for k, v in tags.items() if not isinstance(v, str)}
    if bad:
        raise InventoryError(f"device '{name}' in {source}: tags {bad} must be strings, e.g. tags = {{board = \"rpi4\"}}")
    if not values.get("place") and not tags:
        raise InventoryError(f"device '{name}' in {source} uses transport 'labgrid' but names no place; add "
                             f"place = \"NAME\" or tags = {{board = \"rpi4\"}}")
    if values.get("place") and tags:
        raise InventoryError(f"device '{name}' in {source}: set place or tags, not both")
    coord = values.get("coordinator") or lab.get("coordinator") or os.environ.get("LG_COORDINATOR", "")
    if not coord:
        raise InventoryError(f"device '{name}' in {source} uses transport 'labgrid' but no coordinator is set; "
                             f"add [lab] coordinator = \"host:20408\" to the file (or set LG_COORDINATOR)")
    values["coordinator"] = coord


def _check_options(name: str, source: str, transport: str, options: dict[str, Any]) -> None:
    """``[devices.NAME.options]`` keys must be options ``transport`` declares, of the option's type."""
    cls = TRANSPORTS[transport]
    known = cls.declared_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InventoryError(f"device '{name}' in {source}: [devices.{name}.options] has unknown key(s) "
                             f"{', '.join(unknown)}; the '{transport}' transport takes: {', '.join(known)}")
    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()}
    for key, value in options.items():
        default = defaults.get(key, inspect.Parameter.empty)
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, (int, float)):
            ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, expected = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise InventoryError(f"device '{name}' in {source}: options.{key}={value!r}; expected {expected}")


def load_inventory(path: str | os.PathLike[str] | None = None) -> dict[str, DeviceSpec]:
    """Every device: the inventory file's plus the built-in ``local``.

    Raises
    ------
    InventoryError
        An explicitly named file (``path`` or ``$EDGELR_INVENTORY``) is missing, a file is not valid
        TOML, or a table has unknown or badly typed fields.
    """
    file, explicit = inventory_path(path)
    devices: dict[str, DeviceSpec] = {"local": BUILTIN_LOCAL}
    if not file.is_file():
        if explicit:
            raise InventoryError(f"inventory file {file} does not exist; create it (see "
                                 f"`edgelr devices --help`) or drop --inventory/EDGELR_INVENTORY")
        return devices
    try:
        with open(file, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"inventory file {file} is not valid TOML ({exc}); fix the syntax") from None
    except OSError as exc:
        raise InventoryError(f"cannot read inventory file {file}: {exc}") from None
    tables = doc.get("devices", {})
    if not isinstance(tables, dict):
        raise InventoryError(f"inventory file {file}: 'devices' must be tables [devices.NAME]")
    lab = doc.get("lab", {})
    if not isinstance(lab, dict) or not isinstance(lab.get("coordinator", ""), str):
        raise InventoryError(f"inventory file {file}: [lab] must be a table with coordinator = \"host:port\"")
    for name, raw in tables.items():
        devices[name] = _parse_device(name, raw, str(file), lab)
    return devices


def get_device(name: str, path: str | os.PathLike[str] | None = None) -> DeviceSpec:
    """The device called ``name``; an unknown name raises InventoryError listing the known ones."""
    devices = load_inventory(path)
    base, _, place = name.partition("@")
    if name not in devices and place and base in devices and devices[base].transport == "labgrid":
        return dataclasses.replace(devices[base], name=name, place=place, tags={})   # NAME@PLACE
    if name not in devices:
        file, _ = inventory_path(path)
        raise InventoryError(f"unknown device '{name}'; known devices: {', '.join(sorted(devices))} "
                             f"(inventory: {file})")
    return devices[name]


def open_transport(spec: DeviceSpec, **overrides: Any) -> Transport:
    """Open the registered transport ``spec.transport`` names.

    ``overrides`` replace constructor arguments (e.g. ``trust_new_host=True`` from the CLI).
    """
    name = spec.transport
    if name not in TRANSPORTS:
        raise InventoryError(f"device '{spec.name}' uses transport '{name}', but this edgelr has no "
                             f"device_agents/{name}.py yet (transports: {', '.join(TRANSPORTS)}); add one that "
                             f"registers it (@TRANSPORTS.register('{name}')) and import it in "
                             f"device_agents/builtin.py, or use one of these")
    kwargs = {**spec.transport_kwargs(), **overrides}
    return TRANSPORTS[name](**kwargs)
