"""Modbus TCP driver (our own client protocol, :mod:`gateway.drivers.modbus_wire`) built on a frozen :class:`ReadPlan`.

One driver serves one device (one unit id). Devices with the same host:port (unit ids behind
one Modbus TCP gateway, an RTU bridge, a CDU rack) share ONE TCP connection, a
:class:`ModbusConnection` kept by a :class:`ConnectionHub`::

    ModbusDriver(unit 1) --+
    ModbusDriver(unit 2) --+--> ModbusConnection(host:port) --> ModbusTcpProtocol --> TCP
    ModbusDriver(unit 3) --+        turns: one request (one whole poll) at a time
                                    reference counted: closes with its last driver

Why share: a gateway (and many devices) accepts only a few TCP connections, and an RTU bridge
can only carry one request at a time anyway. The connection decides who sends
next (a *turn*), so that a device's ``timeout_s`` runs from when its request is sent, not from
when it began to queue. A poll takes one turn for all its blocks, so the values of one reading
are read back to back.

Who gets the next turn:

* units that answer (or have not failed yet) first, in the order they asked;
* a unit that is *down* on this connection (its last request timed out, was malformed, or a
  gateway said 10/11 "no device") only gets a turn as a *probe*, when the connection is idle
  and no answering unit's next poll is due within the probe's ``timeout_s``: its probes fit in
  the idle time between the answering units' polls. A probe that found no such window for two
  of the longest poll periods (4 s at most) goes anyway, so a unit can never be starved; then
  the next answering unit waits behind at most that one timeout.

The poller backs off a down unit (fewer probes); the connection decides when each probe goes.

A reading's timestamp is the wall-clock time its poll's first request was handed to the socket
(:meth:`Wire.sending <gateway.drivers.modbus_wire.Wire.sending>`), never the time the poll was
scheduled nor the time it got its turn.

Every reply is checked byte for byte against its request (:mod:`gateway.drivers.modbus_wire`):
function code, byte count, quantity, transaction id, unit id and a write's echo. A reply that
does not match fails the request with :class:`MalformedReply`; a late reply to a request that
timed out is recognised by its transaction id and dropped quietly.

What tears a shared connection down, and what does not:

* a unit answering with an exception, including 10/11 (the gateway reaches no such unit),
  proves the connection works: only that device is unavailable;
* a timeout of one unit leaves the connection to the others, unless every unit that shares
  it has timed out since the last reply of any kind: then the connection itself is dead (a
  half-open TCP connection looks exactly like this) and is closed, and the next ``connect``
  of each driver opens a fresh one;
* a byte stream that is no longer Modbus TCP (bad protocol id or length field, a frame left
  incomplete at the timeout) is closed: nothing read from it after that could be trusted;
* a lost connection (reset, closed by the peer) is dead for everyone at once.

The driver never reconnects by itself: the poller decides when to retry, with backoff, so a
device that is down costs nothing (pymodbus' client, used until 2026-12-01, had its own
reconnect, retries and "close after N unanswered requests" switched off for the same reason).
``connect``/``close``/``read``
keep their per-device meaning: ``close`` gives the driver's share of the connection back.
"""

from __future__ import annotations

import asyncio
import math
import struct
import weakref
from dataclasses import dataclass

from gateway import clock
from gateway.codec import CodecError, DataType, encode_value, with_register_bit
from gateway.config.profile import Access, ModbusProfile, ModbusSignal, Table, WriteOutOfRange
from gateway.config.site import ModbusDevice
from gateway.drivers.base import (
    ConnectionRefused,
    ConnectionScope,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    MalformedReply,
    WriteRefused,
)
from gateway.drivers.modbus_plan import Block, ReadPlan, build_plan
from gateway.drivers.modbus_wire import MalformedFrame, ModbusTcpProtocol, Wire
from gateway.logs import get_logger
from gateway.sample import Reading

log = get_logger(__name__)

# Modbus exception codes, as the spec names them, for messages a site engineer can look up.
EXCEPTION_CODES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
#: exception codes by which a gateway says there is no device behind it at that unit id
GATEWAY_NO_DEVICE = frozenset({10, 11})

# A probe must end this long before the next due poll of an answering unit (event-loop jitter).
_PROBE_GUARD_S = 0.02
# A poll due this long ago that has not asked for its turn is not waited for any more.
_DUE_GRACE_S = 0.5
# The longest a probe waits for an idle window before it goes anyway: two of the longest poll
# periods of the answering units, but never more than this, so a down unit's poller still
# reports progress well within the service's liveness bound (5 s + 10 x timeout_s of slack).
_PROBE_WAIT_MAX_S = 4.0

_REQUEST = struct.Struct(">BHH")  # function code, address, quantity or value


class ConnectionDead(Exception):
    """The shared connection is closed or was declared dead; every user must reconnect."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused  # nothing listens there (the host is up, the service is not)


class ReplyMalformed(Exception):
    """The reply did not match the request (:mod:`gateway.drivers.modbus_wire` says why)."""


@dataclass(frozen=True, slots=True)
class _User:
    """What a connection needs to know about one driver that uses it."""

    unit_id: int
    pause_after_connect_s: float
    pause_between_requests_s: float
    timeout_s: float = 1.0
    period_s: float = math.inf


@dataclass(eq=False, slots=True)
class _Waiter:
    """A task waiting for its turn on the connection."""

    future: asyncio.Future[None]
    unit_id: int
    probe_s: float | None  # the idle window a probe needs; None: not a probe
    since: float


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply's PDU (function code onwards, checked against its request) and when its request
    went out and it came back (wall clock, ns)."""

    pdu: bytes
    sent_ns: int
    received_ns: int


class _Turn:
    """The async context manager of :meth:`ModbusConnection.turn`."""

    __slots__ = ("_connection", "_unit_id")

    def __init__(self, connection: ModbusConnection, unit_id: int) -> None:
        self._connection = connection
        self._unit_id = unit_id

    async def __aenter__(self) -> None:
        await self._connection._take(self._unit_id)  # noqa: SLF001 - the connection's own helper

    async def __aexit__(self, *_exc: object) -> None:
        self._connection._release()  # noqa: SLF001 - the connection's own helper


class ModbusConnection:
    """One TCP connection to ``host:port``, shared by every unit id behind it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.client: ModbusTcpProtocol | None = None
        self.wire = Wire()
        self._open_lock = asyncio.Lock()
        self.users: dict[int, _User] = {}  # id(driver) -> what it needs
        self.dead_reason: str | None = None
        self.requests = 0
        self.probes = 0  # turns given to units that are down
        self.forced_probes = 0  # probes that found no idle window and went anyway
        self.down_units: set[int] = set()  # units whose last request got no regular reply
        self._silent_units: set[int] = set()  # units that timed out since the last reply
        self._due: dict[int, float] = {}  # unit id -> loop time its next poll is expected
        self._waiters: list[_Waiter] = []
        self._holder: _Waiter | None = None
        self._granted: asyncio.Future[None] | None = None  # a done future: the holder of a free turn
        self._timer: asyncio.TimerHandle | None = None
        self._ready_at = 0.0  # loop time before which no request may be sent (pause after connect)
        self._pause_between_s = 0.0  # the longest pause_between_requests_s of the users
        self._last_end = 0.0  # loop time the last request ended

    @property
    def key(self) -> tuple[str, int]:
        """``(host, port)``, the hub's key."""
        return (self.host, self.port)

    @property
    def alive(self) -> bool:
        """True while the TCP connection is open and has not been declared dead."""
        return self.dead_reason is None and self.client is not None and self.client.connected

    @property
    def usable(self) -> bool:
        """Open, or being opened: a driver may join it."""
        return self.dead_reason is None and (self.client is None or self.client.connected)

    async def open(self, timeout_s: float) -> None:
        """Open the TCP connection unless it is open already; :class:`ConnectionDead` when it cannot."""
        async with self._open_lock:
            if self.dead_reason is not None:
                raise ConnectionDead(self.dead_reason)
            if self.client is not None:
                return
            loop = asyncio.get_running_loop()
            wire = self.wire
            try:
                async with asyncio.timeout(timeout_s):
                    _transport, client = await loop.create_connection(
                        lambda: ModbusTcpProtocol(wire), self.host, self.port
                    )
            except (TimeoutError, OSError) as exc:
                why = _connect_error(exc, timeout_s)
                self.kill(f"cannot connect: {why}")
                refused = isinstance(exc, ConnectionRefusedError)
                raise ConnectionDead(f"cannot connect to {self.host}:{self.port}: {why}", refused=refused) from exc
            self.client = client
            pause_s = max((user.pause_after_connect_s for user in self.users.values()), default=0.0)
            self._ready_at = asyncio.get_running_loop().time() + pause_s

    def kill(self, reason: str) -> None:
        """Declare the connection dead and close it; every user gets :class:`ConnectionDead` next."""
        if self.dead_reason is None:
            self.dead_reason = reason
            if self.users and self.client is not None:  # a connect that failed is the poller's to report
                log.info(
                    "modbus_connection_closed",
                    connection=f"{self.host}:{self.port}",
                    units=sorted({user.unit_id for user in self.users.values()}),
                    reason=reason,
                )
        if self.client is not None:
            self.client.close()

    def users_changed(self) -> None:
        """Take the users' needs into account after one joined or left."""
        self._pause_between_s = max((user.pause_between_requests_s for user in self.users.values()), default=0.0)

    # -- turns -----------------------------------------------------------------------------

    def expect_poll(self, unit_id: int, period_s: float) -> None:
        """``unit_id`` starts a poll now and the next one ``period_s`` from now: probes keep clear of it."""
        self._due[unit_id] = asyncio.get_running_loop().time() + period_s

    def forget(self, unit_id: int) -> None:
        """``unit_id`` no longer polls here (whether it is down is kept while the connection lives)."""
        self._due.pop(unit_id, None)

    def turn(self, unit_id: int) -> _Turn:
        """``async with connection.turn(unit)``: hold the connection for one request or one whole
        poll (see the module docstring)."""
        return _Turn(self, unit_id)

    async def _take(self, unit_id: int) -> None:
        """Wait for the turn of ``unit_id`` (:meth:`turn`)."""
        loop = asyncio.get_running_loop()
        if self._holder is None and not self._waiters and unit_id not in self.down_units:
            # Free, nobody waits, not a probe: what _dispatch would decide, without a future.
            if self._granted is None:
                self._granted = loop.create_future()
                self._granted.set_result(None)
            self._holder = _Waiter(self._granted, unit_id, None, 0.0)
            return
        probe_s = self._timeout_of(unit_id) if unit_id in self.down_units else None
        waiter = _Waiter(loop.create_future(), unit_id, probe_s, loop.time())
        self._waiters.append(waiter)
        self._dispatch()
        try:
            await waiter.future
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif self._holder is waiter:  # granted just as it was cancelled
                self._release()
            raise

    @property
    def busy(self) -> bool:
        """True while some driver holds the turn."""
        return self._holder is not None

    def _timeout_of(self, unit_id: int) -> float:
        return max((u.timeout_s for u in self.users.values() if u.unit_id == unit_id), default=1.0)

    def _release(self) -> None:
        self._holder = None
        self._dispatch()

    def _grant(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        self._holder = waiter
        if waiter.probe_s is not None:
            self.probes += 1
        waiter.future.set_result(None)

    def _probe_fits(self, window_s: float, now: float) -> bool:
        """No answering unit's poll is due before a probe of ``window_s`` would end."""
        end = now + window_s + _PROBE_GUARD_S
        return all(
            due >= end for unit, due in self._due.items() if unit not in self.down_units and due > now - _DUE_GRACE_S
        )

    def _max_probe_wait_s(self) -> float:
        periods = [u.period_s for u in self.users.values() if u.unit_id not in self.down_units]
        finite = [p for p in periods if math.isfinite(p)]
        return min(2 * max(finite, default=0.0), _PROBE_WAIT_MAX_S)

    def _dispatch(self) -> None:
        """Give the free connection to the next waiter that may have it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A waiter cancelled while waiting has not run its cleanup yet: never grant it.
        self._waiters = [waiter for waiter in self._waiters if not waiter.future.done()]
        if self._holder is not None or not self._waiters:
            return
        for waiter in self._waiters:
            if waiter.probe_s is None:
                self._grant(waiter)
                return
        loop = asyncio.get_running_loop()
        now = loop.time()
        max_wait_s = self._max_probe_wait_s()
        for waiter in self._waiters:
            assert waiter.probe_s is not None
            if self._probe_fits(waiter.probe_s, now):
                self._grant(waiter)
                return
            if now - waiter.since >= max_wait_s:
                self.forced_probes += 1
                if self.forced_probes == 1:  # once per connection: it is a configuration matter
                    log.warning(
                        "modbus_probe_forced",
                        connection=f"{self.host}:{self.port}",
                        unit=waiter.unit_id,
                        probe_s=waiter.probe_s,
                        hint="no idle window as long as this unit's timeout_s between the other units' polls: "
                        "a shorter timeout_s or longer poll periods keep retries off their slots (docs/profiles.md)",
                    )
                self._grant(waiter)
                return
        # Look again when the oldest probe must go, or when a due poll is given up on.
        wake = min(w.since for w in self._waiters) + max_wait_s
        wake = min([wake, *(due + _DUE_GRACE_S for due in self._due.values() if due + _DUE_GRACE_S > now)])
        self._timer = loop.call_at(wake, self._dispatch)

    # -- requests --------------------------------------------------------------------------

    async def request(self, unit_id: int, timeout_s: float, pdu: bytes) -> Reply:
        """Send one request PDU in its own turn; the deadline starts when it is sent."""
        async with self.turn(unit_id):
            return await self.request_locked(unit_id, timeout_s, pdu)

    async def request_locked(self, unit_id: int, timeout_s: float, pdu: bytes) -> Reply:
        """:meth:`request` for a caller that holds the turn (a whole poll, a read-modify-write)."""
        assert self._holder is not None
        client = self.client
        if client is None or not self.alive:
            raise ConnectionDead(self.dead_reason or "connection closed")
        loop = asyncio.get_running_loop()
        ready_at = self._ready_at
        if self._pause_between_s:
            ready_at = max(ready_at, self._last_end + self._pause_between_s)
        if ready_at > loop.time():
            await asyncio.sleep(ready_at - loop.time())
        self.requests += 1
        wire = self.wire
        timer = None
        try:
            future = client.send(unit_id, pdu)
            timer = loop.call_at(loop.time() + timeout_s, _expire, future)
            reply = await future
        except TimeoutError:
            self._timed_out(unit_id, timeout_s)
            raise
        except MalformedFrame as exc:
            self.down_units.add(unit_id)
            if wire.framing_lost is not None:
                self.kill(f"malformed reply: {wire.framing_lost}")
            raise ReplyMalformed(str(exc)) from None
        except OSError as exc:  # ConnectionLost, a write to a closed transport
            self.kill(f"connection lost: {exc}")
            raise ConnectionDead(f"connection lost: {exc}") from exc
        finally:
            if timer is not None:
                timer.cancel()
            self._last_end = loop.time()
        self._silent_units.clear()  # any reply, an exception code too, proves the connection works
        if reply[0] & 0x80 and reply[1] in GATEWAY_NO_DEVICE:
            self.down_units.add(unit_id)
        else:
            self.down_units.discard(unit_id)
        return Reply(reply, wire.sent_ns, wire.received_ns or clock.wall_ns())

    def _timed_out(self, unit_id: int, timeout_s: float) -> None:
        """No reply in time: the unit is down; half a frame means the stream is out of step (raises)."""
        wire = self.wire
        wire.abandon()
        self.down_units.add(unit_id)
        if wire.buffered:
            # Part of a frame arrived and the rest never did: the stream is out of step.
            what = f"incomplete reply: {wire.buffered} bytes of a frame, then nothing for {timeout_s} s"
            self.kill(what)
            raise ReplyMalformed(what) from None
        self._unanswered(unit_id)

    def _unanswered(self, unit_id: int) -> None:
        """A request timed out: dead if no unit sharing the connection answers any more."""
        self._silent_units.add(unit_id)
        units = {user.unit_id for user in self.users.values()} | {unit_id}
        if self._silent_units >= units:
            self.kill(f"no reply from any unit ({', '.join(map(str, sorted(units)))}) since the last answer")


def _expire(future: asyncio.Future[bytes]) -> None:
    """A request's deadline: its reply has not come (a timer per request, cheaper than
    ``asyncio.timeout``; a cancellation of the waiting task stays a cancellation)."""
    if not future.done():
        future.set_exception(TimeoutError())


_REFUSED = "connection refused"


def _connect_error(error: BaseException, timeout_s: float) -> str:
    """Why a TCP connection failed, in the operating system's words (refused: nothing listens
    there; unreachable or timed out: the network or a firewall)."""
    if isinstance(error, TimeoutError):
        return f"no answer to the TCP handshake within {timeout_s} s"
    if isinstance(error, ConnectionRefusedError):
        return f"{_REFUSED} (nothing listens on that port)"
    if isinstance(error, OSError):
        return error.strerror or str(error) or type(error).__name__
    return str(error) or type(error).__name__


class ConnectionHub:
    """The open Modbus TCP connections of one event loop, by ``host:port``, reference counted."""

    def __init__(self) -> None:
        self.connections: dict[tuple[str, int], ModbusConnection] = {}

    @classmethod
    def current(cls) -> ConnectionHub:
        """The hub of the running event loop (connections cannot outlive their loop)."""
        loop = asyncio.get_running_loop()
        hub = _HUBS.get(loop)
        if hub is None:
            hub = _HUBS[loop] = cls()
        return hub

    async def acquire(self, owner: object, host: str, port: int, user: _User, timeout_s: float) -> ModbusConnection:
        """The open connection to ``host:port`` (opened if needed) with ``owner`` counted as a user."""
        key = (host, port)
        connection = self.connections.get(key)
        if connection is None or not connection.usable:
            if connection is not None:
                connection.kill("closed by the peer")
            connection = self.connections[key] = ModbusConnection(host, port)
        connection.users[id(owner)] = user
        connection.users_changed()
        try:
            await connection.open(timeout_s)
        except BaseException:
            self.release(owner, connection)
            raise
        return connection

    def release(self, owner: object, connection: ModbusConnection) -> None:
        """``owner`` no longer uses the connection; the last user closes it."""
        user = connection.users.pop(id(owner), None)
        connection.users_changed()
        if user is not None and all(other.unit_id != user.unit_id for other in connection.users.values()):
            connection.forget(user.unit_id)
        if not connection.users:
            connection.kill("no device uses it any more")
            if self.connections.get(connection.key) is connection:
                del self.connections[connection.key]


_HUBS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionHub] = weakref.WeakKeyDictionary()


class ModbusDriver(ConnectionScope):
    """Reads a device's plan block by block and writes single signals with read-back."""

    def __init__(
        self,
        device: ModbusDevice,
        profile: ModbusProfile,
        plan: ReadPlan | None = None,
        *,
        hub: ConnectionHub | None = None,
    ) -> None:
        self.name = device.name
        self.device = device
        overrides = device.profile_overrides()
        # The device's quirk keys win over its profile's (same model, different gateway).
        self.profile = profile.model_copy(update=overrides) if overrides else profile
        self.plan = plan or build_plan(self.profile)
        self._hub = hub
        self._connection: ModbusConnection | None = None
        # each block of the plan with its request's description, built once
        self._blocks = tuple((block, self._what(block)) for block in self.plan.blocks)

    @property
    def connected(self) -> bool:
        """True while the (possibly shared) TCP connection is open."""
        return self._connection is not None and self._connection.alive

    @property
    def connection(self) -> ModbusConnection | None:
        """The connection this driver uses, shared with the other unit ids at the same host:port."""
        return self._connection

    async def connect(self) -> None:
        """Join (or open) the connection to the device's host:port; :class:`DeviceUnavailable` when it cannot."""
        await self.close()
        hub = self._hub or ConnectionHub.current()
        user = _User(
            unit_id=self.device.unit_id,
            pause_after_connect_s=self.profile.pause_after_connect_s,
            pause_between_requests_s=self.profile.pause_between_requests_s,
            timeout_s=self.device.timeout_s,
            period_s=self.device.poll_period_s,
        )
        try:
            # Twice the reply timeout: a TCP handshake over a slow link may take a while.
            self._connection = await hub.acquire(
                self, self.device.host, self.device.port, user, self.device.timeout_s * 2
            )
        except ConnectionDead as exc:
            error = ConnectionRefused if exc.refused else DeviceUnavailable
            raise error(self.name, f"{exc} (unit {self.device.unit_id})") from exc
        self._hub = hub

    async def close(self) -> None:
        """Give the driver's share of the connection back; safe to call twice, never raises."""
        connection, self._connection = self._connection, None
        if connection is not None and self._hub is not None:
            self._hub.release(self, connection)

    @property
    def _where(self) -> str:
        return f"{self.device.host}:{self.device.port} unit {self.device.unit_id}"

    def _link(self) -> ModbusConnection:
        connection = self._connection
        if connection is None or not connection.alive:
            if connection is not None:
                connection.kill("closed by the peer")  # so that the next connect opens a fresh one
            reason = connection.dead_reason if connection is not None else None
            raise DeviceUnavailable(self.name, f"not connected to {self._where}" + (f": {reason}" if reason else ""))
        return connection

    def _check_reply(self, pdu: bytes, what: str, doing: str = "") -> None:
        """An exception reply becomes :class:`DeviceFault`, or :class:`DeviceUnavailable` for 10/11."""
        if not pdu[0] & 0x80:
            return
        code = pdu[1]  # the wire checked that an exception reply is two bytes
        meaning = EXCEPTION_CODES.get(code, "not a code the Modbus specification defines")
        if code in GATEWAY_NO_DEVICE:
            # The gateway answered, so the shared connection is fine: only this unit is missing.
            raise DeviceUnavailable(
                self.name,
                f"{doing}Modbus exception {code} ({meaning}): no device answers behind the gateway",
                address=what,
            )
        raise DeviceFault(self.name, f"{doing}Modbus exception {code} ({meaning})", address=what)

    async def _send(self, pdu: bytes, what: str, *, locked: bool = False, doing: str = "") -> Reply:
        """One request with this device's timeout; socket and wire errors become driver errors."""
        connection = self._link()
        unit, timeout_s = self.device.unit_id, self.device.timeout_s
        try:
            if locked:
                reply = await connection.request_locked(unit, timeout_s, pdu)
            else:
                reply = await connection.request(unit, timeout_s, pdu)
        except TimeoutError as exc:
            raise DeviceTimeout(self.name, f"{doing}no reply within {timeout_s} s", address=what) from exc
        except ConnectionDead as exc:
            raise DeviceUnavailable(self.name, f"{doing}{exc}", address=what) from exc
        except ReplyMalformed as exc:
            raise MalformedReply(self.name, f"{doing}malformed reply: {exc}", address=what) from exc
        if reply.pdu[0] & 0x80:
            self._check_reply(reply.pdu, what, doing)
        return reply

    def _what(self, block: Block) -> str:
        """``unit 1 holding_register 100-105 (6 signals)``: where a block's failure happened."""
        return f"unit {self.device.unit_id} {block.describe(self.profile.addressing)}"

    async def _read_block_pdu(self, block: Block, *, locked: bool = False) -> bytes:
        return (await self._send(block.pdu, self._what(block), locked=locked)).pdu

    async def _read_block(self, block: Block) -> dict[str, float]:
        return block.decode_reply(await self._read_block_pdu(block))

    async def read(self) -> Reading:
        """Read every block in one turn on the connection.

        A block the device refuses (exception code) marks only its signals bad; a lost
        connection, a timeout, a malformed reply or a gateway reporting no device (10/11)
        fails the whole read, so nothing of it is published. The reading's timestamp is the
        wall-clock time the first request went out.
        """
        connection = self._link()
        unit = self.device.unit_id
        connection.expect_poll(unit, self.device.poll_period_s)
        values: dict[str, float] | None = None
        texts: dict[str, str] = {}
        bad: dict[str, str] = {}
        timestamp_ns = 0
        async with connection.turn(unit):
            for block, what in self._blocks:
                try:
                    reply = await self._send(block.pdu, what, locked=True)
                except DeviceFault as exc:
                    reason = str(exc)
                    for name in block.names:
                        bad[name] = reason
                    timestamp_ns = timestamp_ns or connection.wire.sent_ns
                    continue
                timestamp_ns = timestamp_ns or reply.sent_ns
                decoded = block.decode_reply(reply.pdu)
                if values is None:
                    values = decoded
                else:
                    values.update(decoded)
                if block.texts:
                    texts.update(block.decode_texts(block.reply_words(reply.pdu)))
        return Reading(
            device=self.name,
            timestamp_ns=timestamp_ns or clock.wall_ns(),
            values={} if values is None else values,
            bad=bad,
            texts=texts,
        )

    def _writable(self, name: str) -> ModbusSignal:
        signal = self.profile.signals.get(name)
        if signal is None:
            raise WriteRefused(self.name, f"no signal {name!r} in profile {self.profile.model!r}")
        if signal.access is not Access.READ_WRITE:
            raise WriteRefused(self.name, f"{name} is read-only in the profile")
        return signal

    def _within_limits(self, name: str, signal: ModbusSignal, value: float) -> float:
        """The value to write: refused or clamped (and logged) when outside min/max."""
        assert signal.min is not None
        assert signal.max is not None
        if signal.min <= value <= signal.max:
            return value
        if self.profile.write_out_of_range is WriteOutOfRange.REFUSE or math.isnan(value):  # NaN is never clamped
            raise WriteRefused(self.name, f"{name} = {value} is outside its limits [{signal.min}, {signal.max}]")
        applied = min(max(value, signal.min), signal.max)
        log.warning(
            "write_clamped",
            device=self.name,
            tag=f"{self.name}.{name}",
            register=f"unit {self.device.unit_id} {signal.table} {signal.address}",
            requested=value,
            applied=applied,
            limits=[signal.min, signal.max],
        )
        return applied

    def _write_pdu(self, signal: ModbusSignal, address: int, words: list[int]) -> tuple[bytes, str]:
        """The request that writes ``words`` and the function code it uses (FC5, 6, 15 or 16)."""
        multiple = self.profile.write_single_with_fc16
        if signal.table is Table.COIL:
            bit = bool(words[0])
            if multiple:
                return _REQUEST.pack(15, address, 1) + bytes([1, int(bit)]), "FC15"
            return _REQUEST.pack(5, address, 0xFF00 if bit else 0), "FC5"
        if len(words) == 1 and not multiple:
            return _REQUEST.pack(6, address, words[0]), "FC6"
        data = struct.pack(f">{len(words)}H", *words)
        return _REQUEST.pack(16, address, len(words)) + bytes([len(data)]) + data, "FC16"

    async def write(self, signal_name: str, value: float) -> float:
        """Write one signal (engineering units) and read it back; returns the value read back.

        Outside the profile's min/max the write is refused, or clamped when the profile (or the
        device) says ``write_out_of_range: clamp``. Coils use FC5, one register FC6, several
        registers FC16; ``write_single_with_fc16`` makes single writes use FC15/FC16. A bit of
        a register is a read-modify-write of that register, with the connection held so no
        other request of this gateway comes between.
        """
        signal = self._writable(signal_name)
        target = self._within_limits(signal_name, signal, value)
        address = self.profile.pdu_address(signal)
        what = f"unit {self.device.unit_id} {signal.table} {signal.address} ({signal_name})"
        if signal.bit is not None:
            await self._write_register_bit(signal_name, signal, address, bool(target), what)
        else:
            try:
                raw = (target - signal.offset) / signal.scale
                words = encode_value(raw, signal.type, self.profile.order_of(signal))
            except CodecError as exc:
                raise WriteRefused(self.name, f"{signal_name}: {exc}", address=what) from exc
            pdu, function = self._write_pdu(signal, address, words)
            await self._send(pdu, what, doing=f"write ({function}) ")
        readback = build_plan(self.profile, [signal_name]).blocks[0]
        back = (await self._read_block(readback))[signal_name]
        # One raw step of tolerance: the register holds a scaled integer.
        step = 0.0 if signal.type is DataType.BOOL else abs(signal.scale) * 0.51
        if abs(back - target) > step + 1e-9 * max(1.0, abs(target)):
            raise WriteRefused(self.name, f"{signal_name}: wrote {target}, read back {back}", address=what)
        return back

    async def _write_register_bit(self, name: str, signal: ModbusSignal, address: int, value: bool, what: str) -> None:
        """Set one bit of a register, keeping the others as the device has them."""
        assert signal.bit is not None
        connection = self._link()
        block = build_plan(self.profile, [name]).blocks[0]  # just the one register
        async with connection.turn(self.device.unit_id):
            word = block.reply_words(await self._read_block_pdu(block, locked=True))[0]
            new_word = with_register_bit(word, signal.bit, value)
            if new_word == word:
                return
            pdu, function = self._write_pdu(signal, address, [new_word])
            await self._send(pdu, what, locked=True, doing=f"write ({function}) ")
