"""Modbus TCP driver (pymodbus client) built on a frozen :class:`ReadPlan`.

One driver serves one device (one unit id). Devices with the same host:port (unit ids behind
one Modbus TCP gateway) share ONE TCP connection, a :class:`ModbusConnection` kept by a
:class:`ConnectionHub`::

    ModbusDriver(unit 1) --+
    ModbusDriver(unit 2) --+--> ModbusConnection(host:port) --> AsyncModbusTcpClient --> TCP
    ModbusDriver(unit 3) --+        asyncio.Lock: one request at a time
                                    reference counted: closes with its last driver

Why share: a gateway (and many devices) accepts only a few TCP connections, and pymodbus
serialises requests on a connection anyway. The connection's lock, not pymodbus', decides
who sends next, so that a device's ``timeout_s`` runs from when its request is sent, not
from when it began to queue: a unit that never answers delays the others by at most its own
timeout per request.

What tears a shared connection down, and what does not:

* a unit answering with an exception, including 10/11 (the gateway reaches no such unit),
  proves the connection works: only that device is unavailable;
* a timeout of one unit leaves the connection to the others, unless every unit that shares
  it has timed out since the last reply of any kind: then the connection itself is dead (a
  half-open TCP connection looks exactly like this) and is closed, and the next ``connect``
  of each driver opens a fresh one;
* a lost connection (reset, closed by the peer) is dead for everyone at once.

A late reply to a request that timed out can never be taken for the answer to the next one:
pymodbus drops frames whose transaction id is not the one it waits for.

The driver never reconnects by itself: the poller decides when to retry, with backoff, so a
device that is down costs nothing. pymodbus' own reconnect, retries and "close after N
unanswered requests" are switched off for the same reason. ``connect``/``close``/``read``
keep their per-device meaning: ``close`` gives the driver's share of the connection back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway.codec import CodecError, DataType, encode_value, with_register_bit
from gateway.config.profile import Access, ModbusProfile, ModbusSignal, Table, WriteOutOfRange
from gateway.config.site import ModbusDevice
from gateway.drivers.base import (
    ConnectionScope,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    MalformedReply,
    WriteRefused,
)
from gateway.drivers.modbus_plan import Block, ReadPlan, build_plan
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

# pymodbus' own timeout is set past any device's timeout_s (at most 60 s): the connection's
# deadline, per device, always fires first, and pymodbus never counts a request as
# unanswered (it would close the shared connection after a few).
_LIBRARY_TIMEOUT_S = 120.0


class _LateReplyFilter(logging.Filter):
    """Drops pymodbus' error lines about a reply to a request that already timed out.

    On a shared connection that is expected and harmless (pymodbus skips the frame by its
    transaction id), and the timeout itself was reported once, with the device. The level set
    in :mod:`gateway.logs` may be lowered to debug, so this filter does the job there too.
    """

    EXPECTED = ("but got id=", "without a corresponding request")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.EXPECTED)


logging.getLogger("pymodbus.logging").addFilter(_LateReplyFilter())

Call = Callable[[AsyncModbusTcpClient], Awaitable[Any]]


class ConnectionDead(Exception):
    """The shared connection is closed or was declared dead; every user must reconnect."""


@dataclass(frozen=True, slots=True)
class _User:
    """What a connection needs to know about one driver that uses it."""

    unit_id: int
    pause_after_connect_s: float
    pause_between_requests_s: float


class ModbusConnection:
    """One TCP connection to ``host:port``, shared by every unit id behind it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.client: AsyncModbusTcpClient | None = None
        self.lock = asyncio.Lock()  # one request (or read-modify-write) at a time
        self._open_lock = asyncio.Lock()
        self.users: dict[int, _User] = {}  # id(driver) -> what it needs
        self.dead_reason: str | None = None
        self.requests = 0
        self._silent_units: set[int] = set()  # units that timed out since the last reply
        self._ready_at = 0.0  # loop time before which no request may be sent (pause after connect)
        self._last_end = 0.0  # loop time the last request ended

    @property
    def key(self) -> tuple[str, int]:
        """``(host, port)``, the hub's key."""
        return (self.host, self.port)

    @property
    def alive(self) -> bool:
        """True while the TCP connection is open and has not been declared dead."""
        return self.dead_reason is None and self.client is not None and bool(self.client.connected)

    @property
    def usable(self) -> bool:
        """Open, or being opened: a driver may join it."""
        return self.dead_reason is None and (self.client is None or bool(self.client.connected))

    async def open(self, timeout_s: float) -> None:
        """Open the TCP connection unless it is open already; :class:`ConnectionDead` when it cannot."""
        async with self._open_lock:
            if self.dead_reason is not None:
                raise ConnectionDead(self.dead_reason)
            if self.client is not None:
                return
            client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                timeout=_LIBRARY_TIMEOUT_S,
                retries=0,
                reconnect_delay=0,  # the poller owns reconnects (with backoff)
                name=f"{self.host}:{self.port}",
            )
            client.set_max_no_responses(1_000_000)  # see _LIBRARY_TIMEOUT_S
            try:
                async with asyncio.timeout(timeout_s):
                    ok = await client.connect()
            except (TimeoutError, OSError, ModbusException) as exc:
                client.close()
                self.kill(f"cannot connect: {exc or type(exc).__name__}")
                raise ConnectionDead(f"cannot connect to {self.host}:{self.port}: {exc or 'timed out'}") from exc
            if not ok:
                client.close()
                self.kill("cannot connect")
                raise ConnectionDead(f"cannot connect to {self.host}:{self.port}")
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

    async def request(self, unit_id: int, timeout_s: float, call: Call) -> Any:
        """Send one request when the connection is free; the deadline starts when it is sent."""
        async with self.lock:
            return await self.request_locked(unit_id, timeout_s, call)

    async def request_locked(self, unit_id: int, timeout_s: float, call: Call) -> Any:
        """:meth:`request` for a caller that holds :attr:`lock` (a read-modify-write)."""
        assert self.lock.locked()
        client = self.client
        if not self.alive or client is None:
            raise ConnectionDead(self.dead_reason or "connection closed")
        loop = asyncio.get_running_loop()
        pause_s = max((user.pause_between_requests_s for user in self.users.values()), default=0.0)
        wait_s = max(self._ready_at, self._last_end + pause_s) - loop.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self.requests += 1
        try:
            async with asyncio.timeout(timeout_s):
                response = await call(client)
        except (TimeoutError, ModbusIOException):
            self._unanswered(unit_id)
            raise
        except (ConnectionException, OSError) as exc:
            self.kill(f"connection lost: {exc}")
            raise ConnectionDead(f"connection lost: {exc}") from exc
        finally:
            self._last_end = loop.time()
        self._silent_units.clear()  # any reply, an exception code too, proves the connection works
        return response

    def _unanswered(self, unit_id: int) -> None:
        """A request timed out: dead if no unit sharing the connection answers any more."""
        self._silent_units.add(unit_id)
        units = {user.unit_id for user in self.users.values()} | {unit_id}
        if self._silent_units >= units:
            self.kill(f"no reply from any unit ({', '.join(map(str, sorted(units)))}) since the last answer")


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
        try:
            await connection.open(timeout_s)
        except BaseException:
            self.release(owner, connection)
            raise
        return connection

    def release(self, owner: object, connection: ModbusConnection) -> None:
        """``owner`` no longer uses the connection; the last user closes it."""
        connection.users.pop(id(owner), None)
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
        )
        try:
            # Twice the reply timeout: a TCP handshake over a slow link may take a while.
            self._connection = await hub.acquire(
                self, self.device.host, self.device.port, user, self.device.timeout_s * 2
            )
        except ConnectionDead as exc:
            raise DeviceUnavailable(self.name, f"{exc} (unit {self.device.unit_id})") from exc
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

    def _check_reply(self, response: Any, what: str, doing: str = "") -> Any:
        """An exception reply becomes :class:`DeviceFault`, or :class:`DeviceUnavailable` for 10/11."""
        if not response.isError():
            return response
        code = getattr(response, "exception_code", None) or 0
        meaning = EXCEPTION_CODES.get(code, "unknown exception")
        if code in GATEWAY_NO_DEVICE:
            # The gateway answered, so the shared connection is fine: only this unit is missing.
            raise DeviceUnavailable(
                self.name,
                f"{doing}Modbus exception {code} ({meaning}): no device answers behind the gateway",
                address=what,
            )
        raise DeviceFault(self.name, f"{doing}Modbus exception {code} ({meaning})", address=what)

    async def _send(self, call: Call, what: str, *, locked: bool = False, doing: str = "") -> Any:
        """One request with this device's timeout; pymodbus/socket errors become driver errors."""
        connection = self._link()
        unit, timeout_s = self.device.unit_id, self.device.timeout_s
        try:
            if locked:
                response = await connection.request_locked(unit, timeout_s, call)
            else:
                response = await connection.request(unit, timeout_s, call)
        except TimeoutError as exc:
            raise DeviceTimeout(self.name, f"{doing}no reply within {timeout_s} s", address=what) from exc
        except ModbusIOException as exc:
            raise DeviceTimeout(self.name, f"{doing}no reply: {exc}", address=what) from exc
        except ConnectionDead as exc:
            raise DeviceUnavailable(self.name, f"{doing}{exc}", address=what) from exc
        except ModbusException as exc:
            raise MalformedReply(self.name, f"{doing}{exc}", address=what) from exc
        return self._check_reply(response, what, doing)

    def _read_call(self, table: Table, address: int, count: int) -> Call:
        unit = self.device.unit_id

        def call(client: AsyncModbusTcpClient) -> Awaitable[Any]:
            method = {
                Table.COIL: client.read_coils,
                Table.DISCRETE_INPUT: client.read_discrete_inputs,
                Table.INPUT_REGISTER: client.read_input_registers,
                Table.HOLDING_REGISTER: client.read_holding_registers,
            }[table]
            return method(address, count=count, device_id=unit)

        return call

    async def _read_block_data(self, block: Block, *, locked: bool = False) -> list[int]:
        what = f"unit {self.device.unit_id} {block.describe(self.profile.addressing)}"
        response = await self._send(self._read_call(block.table, block.start, block.count), what, locked=locked)
        data: list[int] = [int(bit) for bit in response.bits] if block.table.is_bit else list(response.registers)
        if len(data) < block.count:
            raise MalformedReply(self.name, f"asked for {block.count} values, got {len(data)}", address=what)
        return data

    async def _read_block(self, block: Block) -> dict[str, float]:
        return block.decode(await self._read_block_data(block))

    async def read(self) -> Reading:
        """Read every block. A block the device refuses (exception code) marks only its signals
        bad; a lost connection, a timeout or a gateway reporting no device (10/11) fails the
        whole read."""
        timestamp_ns = time.time_ns()
        values: dict[str, float] = {}
        texts: dict[str, str] = {}
        bad: dict[str, str] = {}
        for block in self.plan.blocks:
            try:
                data = await self._read_block_data(block)
            except (DeviceFault, MalformedReply) as exc:
                reason = str(exc)
                for name in block.names:
                    bad[name] = reason
                continue
            values.update(block.decode(data))
            if block.texts:
                texts.update(block.decode_texts(data))
        return Reading(device=self.name, timestamp_ns=timestamp_ns, values=values, bad=bad, texts=texts)

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

    def _write_call(self, signal: ModbusSignal, address: int, words: list[int]) -> tuple[Call, str]:
        """The request that writes ``words`` and the function code it uses (FC5, 6, 15 or 16)."""
        unit = self.device.unit_id
        multiple = self.profile.write_single_with_fc16
        if signal.table is Table.COIL:
            bit = bool(words[0])
            if multiple:
                return (lambda client: client.write_coils(address, [bit], device_id=unit)), "FC15"
            return (lambda client: client.write_coil(address, bit, device_id=unit)), "FC5"
        if len(words) == 1 and not multiple:
            return (lambda client: client.write_register(address, words[0], device_id=unit)), "FC6"
        return (lambda client: client.write_registers(address, words, device_id=unit)), "FC16"

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
            call, function = self._write_call(signal, address, words)
            await self._send(call, what, doing=f"write ({function}) ")
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
        async with connection.lock:
            word = (await self._read_block_data(block, locked=True))[0]
            new_word = with_register_bit(word, signal.bit, value)
            if new_word == word:
                return
            call, function = self._write_call(signal, address, [new_word])
            await self._send(call, what, locked=True, doing=f"write ({function}) ")
