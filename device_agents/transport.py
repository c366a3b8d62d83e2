"""The one small interface every transport (local, ssh, adb) implements.

A transport runs commands and moves files, each with a deadline the agent enforces itself: a dead or
blackholed link raises :class:`edgelr.errors.DeviceError` within ``timeout`` seconds, never hangs.
Transports are registered by name in :data:`TRANSPORTS` (``@TRANSPORTS.register("name")``, see
:mod:`device_agents.registry`); adding a transport is one module plus one import line in
:mod:`device_agents.builtin`. The inventory accepts exactly the registered names and checks a device's
``[options]`` table against the options a transport declares (:meth:`Transport.declared_options`: its
constructor's keyword parameters).

**Host liveness on stdin.** A transport whose :attr:`Transport.heartbeat_s` is not None keeps a running
command's stdin open while the host waits for it, and the stdin ends when the host goes away (process
killed, even with ``kill -9``; link lost; :meth:`Transport.close`); with ``heartbeat_s > 0`` it also
writes one newline every ``heartbeat_s`` seconds, so a command can tell a blackholed link from a slow
host. edgelr's on-device wrapper (:mod:`device_agents.procs`) uses this to stop the benchmark when the
host is gone.
"""

from __future__ import annotations

import inspect
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from device_agents.registry import Registry


@dataclass(frozen=True)
class RunResult:
    """Outcome of one command on the device."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float


Command = Sequence[str] | str


def to_shell(cmd: Command) -> str:
    """A command line for a POSIX shell: an argv list is quoted word by word; a str is used as is."""
    return cmd if isinstance(cmd, str) else shlex.join(list(cmd))


class Transport(ABC):
    """Run commands and move files on one device."""

    name: str = "abstract"          # set by TRANSPORTS.register
    #: The ``os`` of a device reached through this transport when the inventory does not say.
    default_os: str = "linux"
    #: Inventory fields a device of this transport must set: {field: example value for the message}.
    required_fields: dict[str, str] = {}
    #: None: a command's stdin carries nothing; 0: it stays open while the host waits and ends when the
    #: host goes away; > 0: also one newline every ``heartbeat_s`` seconds (see the module docstring).
    heartbeat_s: float | None = None
    #: True: the transport reserves the device itself for every host (a labgrid place: the coordinator
    #: keeps runs apart and waits for a free place), so edgelr's per-host device lock is not taken.
    reserves: bool = False

    @classmethod
    def declared_options(cls) -> list[str]:
        """The option names this transport's constructor takes (its named keyword parameters), sorted."""
        params = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in params if p.name != "self"
                      and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    @classmethod
    def inventory_kwargs(cls, spec: Any) -> dict[str, Any]:
        """Constructor keywords this transport takes from an inventory entry's own fields (``spec``: a
        :class:`~device_agents.inventory.DeviceSpec`); the entry's ``[options]`` table comes on top."""
        return {}

    @classmethod
    def address(cls, spec: Any) -> str:
        """Where an inventory entry's device is, for ``edgelr devices list`` (``pi@192.168.1.40:22``)."""
        return "-"

    @classmethod
    def expand(cls, spec: Any) -> list[Any]:
        """The devices an inventory entry stands for: itself, or one spec per physical device it matches
        (a labgrid entry with tags: one per matching place). ``regress`` measures each."""
        return [spec]

    @abstractmethod
    def run(self, cmd: Command, timeout: float, env: dict[str, str] | None = None) -> RunResult:
        """Run ``cmd`` (argv list, quoted for the remote shell; or a shell string) within ``timeout`` s."""

    @abstractmethod
    def push(self, local: Path, remote: str, timeout: float, mode: int = 0o644) -> bool:
        """Copy ``local`` to ``remote``; skip (return False) when the remote sha256 already matches."""

    @abstractmethod
    def pull(self, remote: str, local: Path, timeout: float) -> None:
        """Copy ``remote`` to ``local``."""

    @abstractmethod
    def close(self) -> None:
        """Stop what this transport still runs on the device, release the connection; safe to call twice."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: Transport classes by inventory name (``transport = "<name>"``); filled by the modules that
#: :mod:`device_agents.builtin` imports.
TRANSPORTS: Registry[type[Transport]] = Registry("transport", name_attr="name")
