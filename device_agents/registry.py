"""The one registration pattern of edgelr's extension points: a named registry filled by a decorator.

Every extension point is a :class:`Registry`:

==========================================  ==========================  =====================================
registry                                    entries                     plugin modules imported by
==========================================  ==========================  =====================================
``device_agents.transport.TRANSPORTS``      :class:`Transport` classes  ``device_agents/builtin.py``
``device_agents.probes.ENERGY_PROBES``      energy/power sensors        ``device_agents/builtin.py``
``device_agents.probes.THERMAL_PROBES``     temperature sources         ``device_agents/builtin.py``
``edgelr.bench.harnesses.base.HARNESSES``   ``<os>/<tool>`` harnesses   ``edgelr/bench/harnesses/__init__.py``
``edgelr.bench.parsers.base.LINE_PARSERS``  benchmark output lines      ``edgelr/bench/parsers/__init__.py``
==========================================  ==========================  =====================================

A plugin module registers itself with the registry's decorator::

    @TRANSPORTS.register("serialx")
    class SerialTransport(Transport): ...

and is imported by the ONE module of its package named above, never as a side effect of another
import. **Adding a transport, probe, harness or output parser is one new module plus one import line
there**; inventory validation and CLI choices read the registry, so nothing else changes.

Where order matters (energy probes are tried in turn, output parsers take a line first-match), entries
carry an explicit ``priority``: higher first, equal priorities in registration order. Lookups by name
(``registry[name]``, ``name in registry``, ``registry.get(name)``) and iteration over the names in that
order make a registry read like a dict.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

_MISSING = object()


class Registry(Generic[T]):
    """Named entries of one extension point, ordered by priority (see the module docstring).

    Parameters
    ----------
    kind
        What an entry is, for messages (``"transport"``, ``"energy probe"`` ...).
    name_attr
        When set, registering an object also sets this attribute of it to the registered name (a
        transport class's ``name``, a harness's ``key``), so the name is written once, in the decorator.
    """

    def __init__(self, kind: str, name_attr: str | None = None) -> None:
        self.kind = kind
        self.name_attr = name_attr
        self._entries: dict[str, tuple[int, int, T]] = {}
        self._serial = 0

    def register(self, name: str, priority: int = 0) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` with ``priority`` (higher first).

        A later registration under the same name replaces the earlier one.
        """

        def deco(obj: T) -> T:
            self.add(name, obj, priority)
            return obj

        return deco

    def add(self, name: str, obj: T, priority: int = 0) -> None:
        """Register ``obj`` under ``name`` without the decorator syntax (tests add temporary entries)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"{self.kind} {name!r}: priority={priority!r}; expected an integer")
        if self.name_attr is not None:
            setattr(obj, self.name_attr, name)
        self._serial += 1
        self._entries[name] = (priority, self._serial, obj)

    def _ordered(self) -> list[tuple[str, T]]:
        items = sorted(self._entries.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
        return [(name, entry[2]) for name, entry in items]

    def names(self) -> list[str]:
        """Registered names, in priority order."""
        return [name for name, _ in self._ordered()]

    keys = names

    def values(self) -> list[T]:
        """Registered objects, in priority order."""
        return [obj for _, obj in self._ordered()]

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs, in priority order."""
        return self._ordered()

    def priority(self, name: str) -> int:
        """The priority ``name`` was registered with."""
        return self._entries[name][0]

    def get(self, name: str, default: T | None = None) -> T | None:
        entry = self._entries.get(name)
        return default if entry is None else entry[2]

    def pop(self, name: str, default: object = _MISSING) -> T:
        """Remove and return an entry (tests register temporary ones)."""
        if name in self._entries:
            return self._entries.pop(name)[2]
        if default is _MISSING:
            raise KeyError(name)
        return default  # type: ignore[return-value]

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name][2]
        except KeyError:
            raise KeyError(f"no {self.kind} named {name!r}; registered: {', '.join(self.names()) or 'none'}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
