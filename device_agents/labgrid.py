"""Devices from a labgrid coordinator: a place is reserved and acquired, then reached over edgelr's own
SSH (or ADB) transport.

A lab (labgrid 26.0.1) is a coordinator, exporters on the lab hosts and *places*: named sets of
exported resources with tags (``board=rpi4``). An inventory entry with ``transport = "labgrid"`` names a
place (``place = "rpi4-a"``) or tags to match (``tags = {board = "rpi4"}``); the coordinator is the
inventory's ``[lab] coordinator = "host:port"`` (or the entry's ``coordinator``, or ``$LG_COORDINATOR``).

Flow of one :class:`LabgridTransport` (nothing happens before its first command):

1. a reservation is created through the coordinator for the place (filter ``name=PLACE``) or the tags;
   the coordinator allocates a free matching place, oldest reservation first, so runs wanting the same
   place take turns. edgelr polls it until ``place_wait`` seconds have passed (then one clear error);
2. the allocated place is acquired (labgrid's lock: nobody else can acquire it);
3. the place's exported ``NetworkService`` gives address, port and username; edgelr's
   :class:`~device_agents.ssh.SSHTransport` connects with host-key verification as for any ssh device
   (labgrid's own SSH driver turns checking off; edgelr does not). For a phone (``os = "android"``) on
   a lab host, the host's adb server is reached through a port forwarded over that SSH connection (or
   ``adb_server = "tcp:HOST:PORT"`` / ``$ADB_SERVER_SOCKET``) by edgelr's ADB transport; the place is
   used for reservation and locking only (labgrid 26.0.1 has no ADB resource);
4. :meth:`LabgridTransport.close` releases the place and cancels the reservation: on success, error,
   timeout and Ctrl-C (bench and regress close their transports on all of these), and at interpreter
   exit for anything still held.

labgrid is imported lazily (only when a lab device is used), and the client library's prints are
never called: edgelr speaks to the coordinator's gRPC stub itself, so stdout stays edgelr's.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import select
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable

from device_agents.transport import TRANSPORTS, Command, RunResult, Transport
from edgelr.errors import DeviceError, InventoryError, Interrupted

DEFAULT_COORDINATOR_PORT = 20408
#: Seconds between reservation polls while a place is busy.
POLL_S = 0.25

# reservation states of labgrid.remote.common.ReservationState
_WAITING, _ALLOCATED, _ACQUIRED, _EXPIRED, _INVALID = range(5)


@dataclass(frozen=True)
class PlaceInfo:
    """One place as the coordinator sees it."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    acquired: str | None = None        # owner "host/user" when acquired
    reservation: str | None = None     # token of the reservation it is allocated to
    matches: tuple[str, ...] = ()
    comment: str = ""

    @property
    def state(self) -> str:
        """``acquired`` | ``reserved`` (allocated to a reservation, not yet acquired) | ``free``."""
        return "acquired" if self.acquired else "reserved" if self.reservation else "free"

    def matches_tags(self, tags: dict[str, str]) -> bool:
        return all(self.tags.get(k) == v for k, v in tags.items())


@dataclass(frozen=True)
class Lease:
    """An acquired place: release it with :meth:`LabClient.release`."""

    place: str
    token: str
    waited_s: float          # time spent waiting for the place to become free
    acquire_s: float         # reservation + acquisition latency, waiting excluded (s)


def coordinator_address(text: str) -> str:
    """``host:port`` of a coordinator (port 20408 when left out)."""
    text = (text or "").strip()
    if not text:
        raise InventoryError("no labgrid coordinator: set [lab] coordinator = \"host:port\" in the inventory "
                             "(or coordinator = ... in the device entry, or $LG_COORDINATOR)")
    if text.startswith("["):          # [v6]:port
        return text if "]:" in text else f"{text}:{DEFAULT_COORDINATOR_PORT}"
    return text if ":" in text else f"{text}:{DEFAULT_COORDINATOR_PORT}"


#: labgrid's client channel options, plus a subchannel pool of the channel's own (see LabClient).
_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 7500), ("grpc.keepalive_timeout_ms", 10000),
                    ("grpc.http2.ping_timeout_ms", 10000), ("grpc.http2.max_pings_without_data", 0),
                    ("grpc.use_local_subchannel_pool", 1)]


class _QuietLabgrid:
    """A filter on the root logger dropping the records labgrid's client logs there (``logging.error`` of
    a lost coordinator, with tracebacks): edgelr reports those failures itself, as one line."""

    def filter(self, record: Any) -> bool:
        return f"{os.sep}labgrid{os.sep}" not in (record.pathname or "")


def _import_labgrid() -> tuple[Any, Any, Any, Any]:
    import logging

    try:
        import grpc
        from labgrid.remote.client import ClientSession
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
        from labgrid.remote.generated.labgrid_coordinator_pb2_grpc import CoordinatorStub
    except ImportError as exc:
        raise DeviceError(f"labgrid devices need labgrid 26.0.1 ({exc}); pip install labgrid==26.0.1") from None
    root = logging.getLogger()
    if not any(isinstance(f, _QuietLabgrid) for f in root.filters):
        root.addFilter(_QuietLabgrid())
    return grpc, ClientSession, CoordinatorStub, pb2


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _lab_loop() -> asyncio.AbstractEventLoop:
    """The process's one event loop for labgrid, running in a daemon thread.

    gRPC's asyncio layer binds its completion queue to the first loop it sees; a second loop in the same
    process (one per client, or a new one after a close) gets "Event loop is closed" errors. Every
    :class:`LabClient` of the process therefore runs its session on this loop, from any thread.
    """
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="labgrid-loop", daemon=True).start()
            _LOOP = loop
        return _LOOP


class LabClient:
    """One session with a labgrid coordinator (on the process's labgrid event loop; any thread may call,
    calls on one client are serialized by a lock).

    Parameters
    ----------
    coordinator
        ``host:port`` (port 20408 when left out).
    timeout
        Seconds allowed for connecting and for each request; a coordinator that is down fails at once, a
        hung one after ``timeout`` s, both as one :class:`DeviceError` line.
    """

    def __init__(self, coordinator: str, timeout: float = 10.0) -> None:
        self.address = coordinator_address(coordinator)
        self.timeout = float(timeout)
        self._grpc, client_cls, stub_cls, self._pb2 = _import_labgrid()
        self._lock = threading.RLock()
        self._loop = _lab_loop()
        self._session: Any = None
        self._closed = False

        async def start() -> Any:
            session = client_cls(self.address, self._loop)
            # A channel of its own: gRPC shares subchannels (one TCP connection) between channels to the
            # same target, and the coordinator refuses a second client stream from the same peer address.
            await session.channel.close()
            session.channel = self._grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
            session.stub = stub_cls(session.channel)
            self._session = session
            await session.start()
            return session

        try:
            self._run(start(), "connect")
        except BaseException:
            self.close()      # no channel or stream task left behind on the shared loop
            raise

    # -- plumbing ----------------------------------------------------------------------------------
    def _fail(self, what: str, detail: str) -> DeviceError:
        return DeviceError(f"labgrid coordinator {self.address}: {what} failed ({detail}); check that "
                           f"labgrid-coordinator runs there and [lab] coordinator in the inventory")

    def _run(self, coro: Coroutine[Any, Any, Any], what: str, timeout: float | None = None) -> Any:
        with self._lock:
            if self._closed:
                coro.close()
                raise DeviceError(f"labgrid coordinator {self.address}: session closed")
            limit = timeout or self.timeout
            future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, limit), self._loop)
            try:
                return future.result(limit + 5.0)
            except (asyncio.TimeoutError, TimeoutError):
                future.cancel()
                raise self._fail(what, f"no answer within {limit:g} s") from None
            except self._grpc.aio.AioRpcError as exc:
                raise self._fail(what, exc.details() or exc.code().name) from None
            except DeviceError:
                raise
            except Exception as exc:  # labgrid's ServerError/UserError and connection errors
                text = str(exc).removeprefix("Error: ")
                raise self._fail(what, text or type(exc).__name__) from None

    def _rpc(self, method: str, request: Any, what: str, timeout: float | None = None) -> Any:
        """One unary call of the coordinator's gRPC service (made on the loop's thread)."""

        async def call() -> Any:
            return await getattr(self._session.stub, method)(request)

        return self._run(call(), what, timeout)

    # -- places ------------------------------------------------------------------------------------
    def places(self) -> list[PlaceInfo]:
        """Every place, sorted by name."""

        async def get() -> list[PlaceInfo]:
            await self._session.sync_with_coordinator()
            return [PlaceInfo(name=p.name, tags=dict(p.tags), acquired=p.acquired, reservation=p.reservation,
                              matches=tuple(repr(m) for m in p.matches), comment=p.comment or "")
                    for p in self._session.places.values()]

        return sorted(self._run(get(), "listing places"), key=lambda p: p.name)

    def resources(self) -> list[str]:
        """Exported resources, as ``exporter/group/Class/name`` paths."""

        async def get() -> list[str]:
            await self._session.sync_with_coordinator()
            return [f"{e}/{g}/{r.cls}/{n}" for e, groups in self._session.resources.items()
                    for g, group in groups.items() for n, r in group.items()]

        return sorted(self._run(get(), "listing resources"))

    def reservations(self) -> list[dict[str, Any]]:
        """Open reservations: token, owner, state (waiting | allocated | acquired | ...), filter, places."""
        states = ("waiting", "allocated", "acquired", "expired", "invalid")
        res = self._rpc("GetReservations", self._pb2.GetReservationsRequest(), "listing reservations")
        return [{"token": r.token, "owner": r.owner, "state": states[r.state] if r.state < len(states) else str(r.state),
                 "filter": dict(r.filters["main"].filter) if "main" in r.filters else {},
                 "places": (r.allocations.get("main") or "").split()} for r in res.reservations]

    def matching(self, tags: dict[str, str]) -> list[str]:
        """Names of the places whose tags include ``tags``."""
        return [p.name for p in self.places() if p.matches_tags(tags)]

    def add_place(self, name: str, matches: Iterable[str] = (), tags: dict[str, str] | None = None) -> None:
        """Create place ``name`` with resource ``matches`` (``exporter/group/Class``) and ``tags`` (lab set-up
        as ``labgrid-client create``, ``add-match``, ``set-tags`` do; used by tests and the lab benchmark)."""
        pb2 = self._pb2

        async def add() -> None:
            stub = self._session.stub
            await stub.AddPlace(pb2.AddPlaceRequest(name=name))
            for pattern in matches:
                await stub.AddPlaceMatch(pb2.AddPlaceMatchRequest(placename=name, pattern=pattern))
            if tags:
                await stub.SetPlaceTags(pb2.SetPlaceTagsRequest(placename=name, tags=tags))
            await self._session.sync_with_coordinator()

        self._run(add(), f"creating place {name}")

    # -- reservation and lock ------------------------------------------------------------------------
    def lease(self, place: str = "", tags: dict[str, str] | None = None, wait_s: float = 600.0,
              cancelled: Callable[[], bool] = lambda: False, on_wait: Callable[[str], None] | None = None) -> Lease:
        """Reserve and acquire ``place`` (or any place with ``tags``), waiting up to ``wait_s`` s while busy.

        Raises
        ------
        DeviceError
            No such place, nothing free within ``wait_s``, the coordinator unreachable, or the place's
            resources could not be acquired (exporter gone).
        Interrupted
            ``cancelled()`` became true while waiting.
        """
        pb2 = self._pb2
        want = {"name": place} if place else dict(tags or {})
        if not want:
            raise InventoryError("a labgrid device needs place = \"NAME\" or tags = {key = \"value\"}")
        label = f"place {place}" if place else "a place with " + " ".join(f"{k}={v}" for k, v in want.items())
        known = self.places()
        if place and place not in {p.name for p in known}:
            raise DeviceError(f"labgrid coordinator {self.address} has no place {place!r}; places: "
                              f"{', '.join(p.name for p in known) or 'none'}")
        if not place and not any(p.matches_tags(want) for p in known):
            raise DeviceError(f"labgrid coordinator {self.address} has no place tagged "
                              f"{' '.join(f'{k}={v}' for k, v in want.items())}; places: "
                              + (", ".join(f"{p.name} ({' '.join(f'{k}={v}' for k, v in p.tags.items())})"
                                           for p in known) or "none"))
        t0 = time.monotonic()
        req = pb2.CreateReservationRequest(filters={"main": pb2.Reservation.Filter(filter=want)})
        token = self._rpc("CreateReservation", req, "reserving").reservation.token
        told = False
        waited = 0.0
        try:
            while True:
                tp = time.monotonic()
                res = self._rpc("PollReservation", pb2.PollReservationRequest(token=token),
                                "polling the reservation").reservation
                if res.state in (_ALLOCATED, _ACQUIRED):
                    got = (res.allocations.get("main") or "").split()
                    if got:
                        name = got[0]
                        break
                if res.state in (_EXPIRED, _INVALID):
                    raise DeviceError(f"labgrid: the reservation for {label} became "
                                      f"{'expired' if res.state == _EXPIRED else 'invalid'}; retry")
                if cancelled():
                    raise Interrupted(f"interrupted while waiting for {label}")
                if time.monotonic() - t0 > wait_s:
                    owners = ", ".join(f"{p.name} ({p.state}{' by ' + p.acquired if p.acquired else ''})"
                                       for p in self.places() if (p.name == place if place else p.matches_tags(want)))
                    raise DeviceError(f"labgrid: {label} stayed busy for {wait_s:g} s ({owners}); try again "
                                      f"later or raise place_wait in the inventory (an owner that is gone, e.g. "
                                      f"killed, is freed by: labgrid-client -x {self.address} -p PLACE release "
                                      f"--kick)")
                if not told and on_wait is not None:
                    on_wait(f"{label} is busy; waiting up to {wait_s:g} s for it")
                    told = True
                time.sleep(POLL_S)
                waited += time.monotonic() - tp
            self._run(self._acquire(name), f"acquiring place {name}")
        except BaseException:
            self._cancel(token)
            raise
        lease = Lease(place=name, token=token, waited_s=waited, acquire_s=time.monotonic() - t0 - waited)
        _HELD[id(lease)] = (weakref.ref(self), lease)
        return lease

    async def _acquire(self, place: str) -> None:
        await self._session.stub.AcquirePlace(self._pb2.AcquirePlaceRequest(placename=place))
        await self._session.sync_with_coordinator()

    def _cancel(self, token: str) -> None:
        try:
            self._rpc("CancelReservation", self._pb2.CancelReservationRequest(token=token),
                      "cancelling the reservation", timeout=min(self.timeout, 5.0))
        except DeviceError:
            pass   # an unpolled reservation expires after 60 s anyway

    def release(self, lease: Lease) -> None:
        """Release the place and cancel its reservation (raises DeviceError when the coordinator refuses)."""
        _HELD.pop(id(lease), None)
        try:
            self._rpc("ReleasePlace", self._pb2.ReleasePlaceRequest(placename=lease.place),
                      f"releasing place {lease.place}", timeout=min(self.timeout, 5.0))
        finally:
            self._cancel(lease.token)

    def network_service(self, place: str) -> dict[str, Any]:
        """The acquired place's exported ``NetworkService`` params: address, port, username."""

        async def get() -> dict[str, Any]:
            await self._session.sync_with_coordinator()
            resources = self._session.get_target_resources(self._session.places[place])
            for (_name, cls), entry in resources.items():
                if cls == "NetworkService":
                    if not entry.avail:
                        raise DeviceError(f"labgrid place {place}: its NetworkService is not available "
                                          f"(exporter down?)")
                    return dict(entry.params)
            raise DeviceError(f"labgrid place {place} exports no NetworkService (it has: "
                              f"{', '.join(c for _, c in resources) or 'nothing'}); add a match such as "
                              f"labgrid-client -p {place} add-match EXPORTER/GROUP/NetworkService")

        return self._run(get(), f"reading place {place}")

    def close(self) -> None:
        """End the session (held leases are NOT released here; :meth:`release` them first)."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._session is not None:
                    self._run(self._session.stop(), "closing", timeout=2.0)
                    self._run(self._session.close(), "closing", timeout=2.0)
            except Exception:  # noqa: BLE001 - closing must never raise
                pass
            finally:
                self._closed = True


#: Leases not released yet, released at interpreter exit (e.g. a daemon thread still holding one).
_HELD: dict[int, tuple["weakref.ref[LabClient]", Lease]] = {}


@atexit.register
def _release_held() -> None:
    for ref, lease in list(_HELD.values()):
        client = ref()
        # a daemon thread may be inside a request on this client: do not wait for it past 2 s at exit
        if client is not None and client._lock.acquire(timeout=2.0):  # noqa: SLF001
            try:
                client.release(lease)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            finally:
                client._lock.release()  # noqa: SLF001


def list_places(coordinator: str, timeout: float = 10.0) -> list[PlaceInfo]:
    """The coordinator's places."""
    client = LabClient(coordinator, timeout)
    try:
        return client.places()
    finally:
        client.close()


def lab_places(specs: Iterable[Any], timeout: float = 5.0) -> tuple[list[dict[str, Any]], list[str]]:
    """The places of every coordinator the labgrid entries of ``specs`` use, for ``edgelr devices list``.

    Returns (rows: coordinator, place, state, owner, tags, devices = the inventory entries that would use
    it; errors: one line per unreachable coordinator).
    """
    lab = [s for s in specs if s.transport == "labgrid"]
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for coord in dict.fromkeys(coordinator_address(s.coordinator) for s in lab):
        try:
            places = list_places(coord, timeout)
        except DeviceError as exc:
            errors.append(str(exc))
            continue
        users = [s for s in lab if coordinator_address(s.coordinator) == coord]
        for p in places:
            rows.append({"coordinator": coord, "place": p.name, "state": p.state, "owner": p.acquired or "",
                         "tags": " ".join(f"{k}={v}" for k, v in sorted(p.tags.items())),
                         "devices": ", ".join(s.name for s in users
                                              if (s.place == p.name if s.place else p.matches_tags(s.tags)))})
    return rows, errors


class _AdbForward:
    """A local TCP port whose connections are carried over an SSH connection to ``host:port`` on the far
    side (``ssh -L``): edgelr's ADB transport reaches a lab host's adb server through it."""

    def __init__(self, ssh_transport: Any, remote: tuple[str, int], timeout: float) -> None:
        self.ssh = ssh_transport
        self.remote = remote
        self.timeout = timeout
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="adb-forward", daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        try:
            self.ssh.connect(self.timeout)
            # the SSH connection edgelr verified (host key) carries the channel
            chan = self.ssh._client.get_transport().open_channel(  # noqa: SLF001
                "direct-tcpip", self.remote, conn.getsockname(), timeout=self.timeout)
        except Exception:  # noqa: BLE001 - the ADB transport reports the refused connection
            conn.close()
            return
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn, chan], [], [], 0.5)
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        break
                    chan.sendall(data)
                if chan in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            chan.close()
            conn.close()

    def close(self) -> None:
        self._stop.set()
        try:
            self.listener.close()
        except OSError:
            pass


@TRANSPORTS.register("labgrid")
class LabgridTransport(Transport):
    """A device in a labgrid place: reserve + acquire on first use, then SSH (or ADB) to it; release on close.

    Parameters
    ----------
    coordinator
        ``host:port`` of the labgrid coordinator.
    place, tags
        The place to use, or tags a place must carry (the first one the coordinator allocates).
    place_wait
        Seconds to wait while the place (every matching place) is busy.
    os
        ``linux`` (the NetworkService's sshd runs the benchmark) or ``android`` (a phone on the lab host).
    user, key, known_hosts, trust_new_host, connect_timeout
        For edgelr's SSH transport; ``user`` overrides the NetworkService's ``username``.
    serial, adb_port, adb_server
        Phones: the phone's serial on the lab host, the host's adb server port (5037), and how to reach
        it: ``""`` (forward over the place's SSH; default) or ``tcp:HOST:PORT`` (default
        ``$ADB_SERVER_SOCKET``).
    device
        Inventory name (messages).
    progress
        Told when the place is busy and when it is acquired (default: stderr).
    keepalive, heartbeat, use_agent
        Passed on to :class:`~device_agents.ssh.SSHTransport` (``[devices.NAME.options]`` may set them).
    """

    reserves = True   # the place is the lock, across every host of the lab

    required_fields: dict[str, str] = {}

    @classmethod
    def inventory_kwargs(cls, spec: Any) -> dict[str, Any]:
        return {"coordinator": spec.coordinator, "place": spec.place, "tags": dict(spec.tags),
                "place_wait": spec.place_wait, "os": spec.os, "user": spec.user, "key": spec.key,
                "known_hosts": spec.known_hosts, "trust_new_host": spec.trust_new_host,
                "connect_timeout": spec.connect_timeout, "serial": spec.serial, "adb_port": spec.adb_port,
                "device": spec.name}

    @classmethod
    def address(cls, spec: Any) -> str:
        what = spec.place or " ".join(f"{k}={v}" for k, v in spec.tags.items())
        return f"{what} @ {spec.coordinator or '$LG_COORDINATOR'}"

    @classmethod
    def expand(cls, spec: Any) -> list[Any]:
        """One spec per place matching ``spec.tags`` (named ``NAME@PLACE``, pinned to it); a spec that
        names a place is returned as is. ``regress`` runs a device on every place this gives."""
        import dataclasses

        if spec.place:
            return [spec]
        client = LabClient(spec.coordinator, timeout=spec.connect_timeout)
        try:
            names = client.matching(dict(spec.tags))
        finally:
            client.close()
        if not names:
            raise DeviceError(f"device {spec.name!r}: no labgrid place at {spec.coordinator} is tagged "
                              + " ".join(f"{k}={v}" for k, v in spec.tags.items()))
        return [dataclasses.replace(spec, name=f"{spec.name}@{n}", place=n, tags={}) for n in names]

    def __init__(self, coordinator: str = "", place: str = "", tags: dict[str, str] | None = None,
                 place_wait: float = 600.0, os: str = "linux", user: str = "", key: str = "",
                 known_hosts: str = "", trust_new_host: bool = False, connect_timeout: float = 10.0,
                 serial: str = "", adb_port: int = 5037, adb_server: str = "", device: str | None = None,
                 keepalive: float = 5.0, heartbeat: float = 2.0, use_agent: bool = True,
                 progress: Callable[[str], None] | None = None) -> None:
        self.coordinator = coordinator_address(coordinator or _env("LG_COORDINATOR"))
        if not place and not tags:
            raise InventoryError(f"labgrid device {device!r} needs place = \"NAME\" or tags = {{board = \"rpi4\"}}")
        self.place, self.tags, self.place_wait = place, dict(tags or {}), float(place_wait)
        self.os = os
        self.device = device or place or "labgrid"
        self.user, self.key, self.known_hosts = user, key, known_hosts
        self.trust_new_host, self.connect_timeout = bool(trust_new_host), float(connect_timeout)
        self.serial, self.adb_port = serial, int(adb_port or 5037)
        self.adb_server = adb_server or _env("ADB_SERVER_SOCKET")
        self.ssh_options = {"keepalive": keepalive, "heartbeat": heartbeat, "use_agent": use_agent}
        self.progress = progress or (lambda m: print(m, file=sys.stderr, flush=True))
        self.heartbeat_s = None if os == "android" else max(0.0, float(heartbeat))
        self.client: LabClient | None = None
        self.lease_info: Lease | None = None
        self._inner: Transport | None = None
        self._ssh: Transport | None = None
        self._forward: _AdbForward | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    # -- the place -------------------------------------------------------------------------------------
    def open(self) -> Transport:
        """Reserve and acquire the place and open the inner transport (done by the first command)."""
        with self._lock:
            if self._inner is not None:
                return self._inner
            if self._closed.is_set():
                raise Interrupted(f"device {self.device!r}: closed")
            self.client = LabClient(self.coordinator, timeout=self.connect_timeout)
            try:
                self.lease_info = self.client.lease(self.place, self.tags, self.place_wait,
                                                    cancelled=self._closed.is_set,
                                                    on_wait=lambda m: self.progress(f"[{self.device}] {m}"))
                self.progress(f"[{self.device}] acquired labgrid place {self.lease_info.place}")
                svc = self.client.network_service(self.lease_info.place)
                self._inner = self._connect(svc)
            except BaseException:
                self._release()
                raise
            if self._closed.is_set():   # closed (Ctrl-C) while we were acquiring
                self._release()
                raise Interrupted(f"device {self.device!r}: interrupted")
            return self._inner

    def _connect(self, svc: dict[str, Any]) -> Transport:
        from device_agents.ssh import SSHTransport

        address, port = str(svc.get("address") or ""), int(svc.get("port") or 22)
        if not address:
            raise DeviceError(f"labgrid place {self.lease_info.place if self.lease_info else '?'}: its "
                              f"NetworkService has no address")
        ssh = SSHTransport(host=address.split("%")[0], port=port, user=self.user or svc.get("username") or None,
                           key=self.key or None, known_hosts=self.known_hosts or None,
                           trust_new_host=self.trust_new_host, device=self.device,
                           connect_timeout=self.connect_timeout, **self.ssh_options)
        if self.os != "android":
            return ssh
        from device_agents.adb import ADBTransport

        self._ssh = ssh
        if self.adb_server:
            host, port = _parse_adb_socket(self.adb_server)
        else:
            self._forward = _AdbForward(ssh, ("127.0.0.1", self.adb_port), self.connect_timeout)
            host, port = "127.0.0.1", self._forward.port
        return ADBTransport(serial=self.serial or None, adb_host=host, adb_port=port,
                            connect_timeout=self.connect_timeout)

    def _release(self) -> None:
        for part in (self._inner, self._forward, self._ssh):
            if part is not None:
                try:
                    part.close()
                except Exception:  # noqa: BLE001 - closing must never raise
                    pass
        self._inner = self._forward = self._ssh = None
        client, lease, self.client, self.lease_info = self.client, self.lease_info, None, None
        if client is None:
            return
        try:
            if lease is not None:
                client.release(lease)
        except DeviceError as exc:
            self.progress(f"[{self.device}] WARNING: {exc}; release it with "
                          f"labgrid-client -x {self.coordinator} -p {lease.place if lease else '?'} release --kick")
        finally:
            client.close()

    @property
    def place_name(self) -> str | None:
        """The acquired place, once acquired."""
        return self.lease_info.place if self.lease_info else None

    # -- Transport -------------------------------------------------------------------------------------
    def run(self, cmd: Command, timeout: float, env: dict[str, str] | None = None) -> RunResult:
        return self.open().run(cmd, timeout, env)

    def push(self, local: Path, remote: str, timeout: float, mode: int = 0o644) -> bool:
        return self.open().push(local, remote, timeout, mode)

    def pull(self, remote: str, local: Path, timeout: float) -> None:
        self.open().pull(remote, local, timeout)

    def close(self) -> None:
        """Stop the inner transport, release the place and cancel the reservation; safe to call twice and
        from another thread (a waiting :meth:`open` then gives up within a poll interval)."""
        self._closed.set()
        inner = self._inner
        if inner is not None:
            try:
                inner.close()   # stops what runs on the device first, even while open() holds the lock
            except Exception:  # noqa: BLE001
                pass
        with self._lock:
            self._release()

    def __getattr__(self, name: str) -> Any:
        # transport-specific extras (ADB's ensure_ready, SSH's stats ...) come from the inner transport
        if name.startswith("_") or name in ("client", "lease_info"):
            raise AttributeError(name)
        return getattr(self.open(), name)


def _env(name: str) -> str:
    return os.environ.get(name, "")


def _parse_adb_socket(text: str) -> tuple[str, int]:
    """``tcp:HOST:PORT`` (adb's ``ADB_SERVER_SOCKET`` syntax) or ``HOST:PORT``."""
    rest = text.removeprefix("tcp:")
    host, _, port = rest.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise InventoryError(f"adb_server={text!r}; expected tcp:HOST:PORT (as ADB_SERVER_SOCKET)") from None
