"""A Modbus TCP server for simulated devices, on asyncio, with fault injection.

Why not pymodbus' server: it answers one request per connection at a time and costs 45-68 us
per request (measured 2026-11-25, docs/library-limits.md), its datastore API is being
replaced in 3.x, and it cannot stop answering, answer slowly or hold a connection half-open
on command. This server is ~300 lines of the Modbus application protocol (FC 1-6, 15, 16)
and is also an independent implementation for the gateway's pymodbus client to interoperate
with (``mbpoll``, built on libmodbus, checks it from the other side).

Each unit id behind an endpoint is a :class:`UnitImage`: four register tables filled from a
profile and a value source (the plant model), and write hooks back into the plant. Bit
fields inside registers and fixed-length strings are encoded as the profile declares them;
a write to a register holding bit fields reports each writable bit that changed.

Faults (:class:`Fault`) are set per unit. ``half_open`` models a TCP connection whose peer is
gone without a FIN or RST (a rebooted device, a NAT or firewall that forgot the flow): every
connection that carries a request for the unit goes deaf for good, reading requests and never
answering nor closing, so only the client's timeout can notice. New connections work again
once the fault is cleared. :meth:`ModbusEndpoint.half_open` does the same to every open
connection at once.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.codec import (
    CodecError,
    DataType,
    decode_words,
    encode_string,
    encode_value,
    register_bit,
    with_register_bit,
)
from gateway.config.profile import Access, ModbusProfile, ModbusSignal, Table

_READ_FC = {1: Table.COIL, 2: Table.DISCRETE_INPUT, 3: Table.HOLDING_REGISTER, 4: Table.INPUT_REGISTER}
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_FAILURE = 1, 2, 3, 4


class Fault(StrEnum):
    """Faults a test or an operator can inject into one unit."""

    NONE = "none"
    SILENT = "silent"  # read requests for this unit, never answer them (a hung device)
    SLOW = "slow"  # answer after fault_delay_s
    EXCEPTION = "exception"  # answer every request with exception fault_code
    DROP = "drop"  # close every connection as soon as a request arrives
    HALF_OPEN = "half_open"  # the connection that carries a request goes deaf for good, never closes


@dataclass
class UnitImage:
    """Register tables of one unit id, kept in step with a value source."""

    name: str
    profile: ModbusProfile
    on_write: Callable[[str, float], None]
    tables: dict[Table, dict[int, int]] = field(default_factory=dict)
    ranges: dict[Table, tuple[int, int]] = field(default_factory=dict)
    fault: Fault = Fault.NONE
    fault_delay_s: float = 0.0
    fault_code: int = DEVICE_FAILURE
    frozen: set[str] = field(default_factory=set)
    requests: int = 0
    functions: Counter[int] = field(default_factory=Counter)  # requests by function code
    # Called before a request is answered: a value source that refreshes the image on demand
    # (simulators/site.py, refresh_on_read) instead of after every plant step.
    before_request: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        # the value each signal's registers hold now (encoding is most of an update's cost, and
        # setpoints, states and counters rarely change); cleared by every client write
        self._encoded: dict[str, float | str] = {}
        # whole writable signals by their first register; bit fields by their register
        self._writable: dict[tuple[Table, int], str] = {}
        self._register_bits: dict[tuple[Table, int], list[tuple[str, ModbusSignal]]] = {}
        for name, signal in self.profile.signals.items():
            start = self.profile.pdu_address(signal)
            width = signal.width
            table = signal.table
            low, high = self.ranges.get(table, (start, start + width - 1))
            self.ranges[table] = (min(low, start), max(high, start + width - 1))
            self.tables.setdefault(table, {})
            if signal.bit is not None:
                self._register_bits.setdefault((table, start), []).append((name, signal))
            elif signal.access is Access.READ_WRITE:
                self._writable[(table, start)] = name

    def update(self, values: Mapping[str, float | str]) -> None:
        """Encode engineering values (text for strings) into the tables; frozen signals keep theirs."""
        profile = self.profile
        encoded = self._encoded
        for name, value in values.items():
            signal = profile.signals.get(name)
            if signal is None or name in self.frozen or encoded.get(name) == value:
                continue
            encoded[name] = value
            table = self.tables[signal.table]
            start = profile.pdu_address(signal)
            if signal.table.is_bit:
                table[start] = 1 if value else 0
                continue
            if signal.bit is not None:
                table[start] = with_register_bit(table.get(start, 0), signal.bit, bool(value))
                continue
            if signal.type is DataType.STRING:
                assert signal.length_registers is not None
                try:
                    words = encode_string(str(value), signal.length_registers, profile.order_of(signal))
                except CodecError:
                    continue
            else:
                if isinstance(value, str):
                    continue
                raw = (value - signal.offset) / signal.scale
                if not math.isfinite(raw):
                    continue
                try:
                    words = encode_value(raw, signal.type, profile.order_of(signal))
                except CodecError:
                    # A value outside the register's range saturates, as real transmitters do.
                    del encoded[name]
                    continue
            for i, word in enumerate(words):
                table[start + i] = word

    def read(self, table: Table, address: int, count: int) -> list[int] | int:
        """Values, or an exception code when the range is not mapped."""
        low, high = self.ranges.get(table, (1, 0))
        if address < low or address + count - 1 > high:
            return ILLEGAL_ADDRESS
        data = self.tables[table]
        return [data.get(a, 0) for a in range(address, address + count)]

    def write(self, table: Table, address: int, words: list[int]) -> int | None:
        """Apply a write to whole writable signals or to registers of bit fields; an exception code otherwise."""
        self._encoded.clear()  # the client changed registers: the next update re-encodes everything
        position = address
        end = address + len(words)
        while position < end:
            if (table, position) in self._register_bits:
                code = self._write_bits(table, position, words[position - address])
                if code is not None:
                    return code
                position += 1
                continue
            name = self._writable.get((table, position))
            if name is None:
                return ILLEGAL_ADDRESS
            signal = self.profile.signals[name]
            width = signal.width
            part = words[position - address : position - address + width]
            if len(part) < width:
                return ILLEGAL_ADDRESS
            raw = decode_words(part, signal.type, self.profile.order_of(signal))
            value = raw * signal.scale + signal.offset
            assert signal.min is not None
            assert signal.max is not None
            if not signal.min <= value <= signal.max:
                return ILLEGAL_VALUE
            try:
                self.on_write(name, value)
            except (KeyError, ValueError):
                return ILLEGAL_VALUE
            for i, word in enumerate(part):
                self.tables[table][position + i] = word
            position += width
        return None

    def _write_bits(self, table: Table, address: int, word: int) -> int | None:
        """A whole-register write to a register of bit fields: read-only bits must not change."""
        members = self._register_bits[(table, address)]
        if not any(signal.access is Access.READ_WRITE for _, signal in members):
            return ILLEGAL_ADDRESS
        old = self.tables[table].get(address, 0)
        changed = []
        for name, signal in members:
            assert signal.bit is not None
            new_bit = register_bit(word, signal.bit)
            if new_bit == register_bit(old, signal.bit):
                continue
            if signal.access is not Access.READ_WRITE:
                return ILLEGAL_VALUE
            changed.append((name, new_bit))
        try:
            for name, new_bit in changed:
                self.on_write(name, float(new_bit))
        except (KeyError, ValueError):
            return ILLEGAL_VALUE
        self.tables[table][address] = word
        return None


def _exception(unit: int, tid: int, function: int, code: int) -> bytes:
    return struct.pack(">HHHBBB", tid, 0, 3, unit, function | 0x80, code)


class _Connection(asyncio.Protocol):
    def __init__(self, endpoint: ModbusEndpoint) -> None:
        self.endpoint = endpoint
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.deaf = False  # half-open: reads requests, never answers, never closes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.endpoint.connections.add(self)
        self.endpoint.accepted += 1

    def connection_lost(self, _exc: Exception | None) -> None:
        self.endpoint.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 7:
            tid, proto, length = struct.unpack_from(">HHH", self.buffer)
            if proto != 0 or not 2 <= length <= 254:
                assert self.transport is not None
                self.transport.close()  # not Modbus TCP: drop, as real devices do
                return
            if len(self.buffer) < 6 + length:
                return
            frame, self.buffer = self.buffer[6 : 6 + length], self.buffer[6 + length :]
            self._handle(tid, frame)

    def _handle(self, tid: int, frame: bytes) -> None:
        if self.deaf:
            return
        unit_id, function = frame[0], frame[1]
        unit = self.endpoint.units.get(unit_id)
        if unit is None:
            # Gateway semantics: the target unit did not respond.
            self._send(_exception(unit_id, tid, function, 11))
            return
        unit.requests += 1
        unit.functions[function] += 1
        if unit.fault is Fault.SILENT:
            return
        if unit.fault is Fault.HALF_OPEN:
            self.deaf = True
            return
        if unit.fault is Fault.DROP:
            assert self.transport is not None
            self.transport.abort()
            return
        if unit.fault is Fault.EXCEPTION:
            reply = _exception(unit_id, tid, function, unit.fault_code)
        else:
            if unit.before_request is not None:
                unit.before_request()
            reply = self._reply(unit, unit_id, tid, function, frame[2:])
        if unit.fault is Fault.SLOW and unit.fault_delay_s > 0:
            asyncio.get_running_loop().call_later(unit.fault_delay_s, self._send, reply)
        else:
            self._send(reply)

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)

    @staticmethod
    def _reply(unit: UnitImage, unit_id: int, tid: int, function: int, body: bytes) -> bytes:
        try:
            if function in _READ_FC:
                address, count = struct.unpack(">HH", body[:4])
                table = _READ_FC[function]
                limit = 2000 if table.is_bit else 125
                if not 1 <= count <= limit:
                    return _exception(unit_id, tid, function, ILLEGAL_VALUE)
                values = unit.read(table, address, count)
                if isinstance(values, int):
                    return _exception(unit_id, tid, function, values)
                if table.is_bit:
                    packed = bytearray((count + 7) // 8)
                    for i, bit in enumerate(values):
                        if bit:
                            packed[i // 8] |= 1 << (i % 8)
                    pdu = struct.pack(">BB", function, len(packed)) + bytes(packed)
                else:
                    pdu = struct.pack(f">BB{count}H", function, 2 * count, *values)
            elif function in (5, 6):
                address, value = struct.unpack(">HH", body[:4])
                if function == 5:
                    if value not in (0x0000, 0xFF00):
                        return _exception(unit_id, tid, function, ILLEGAL_VALUE)
                    code = unit.write(Table.COIL, address, [1 if value else 0])
                else:
                    code = unit.write(Table.HOLDING_REGISTER, address, [value])
                if code is not None:
                    return _exception(unit_id, tid, function, code)
                pdu = bytes([function]) + body[:4]
            elif function in (15, 16):
                address, count, nbytes = struct.unpack(">HHB", body[:5])
                payload = body[5 : 5 + nbytes]
                if function == 15:
                    # FC15 packs coils eight to a byte, the first coil in the lowest bit
                    if not 1 <= count <= 1968 or nbytes != (count + 7) // 8 or len(payload) != nbytes:
                        return _exception(unit_id, tid, function, ILLEGAL_VALUE)
                    bits = [(payload[i // 8] >> (i % 8)) & 1 for i in range(count)]
                    code = unit.write(Table.COIL, address, bits)
                else:
                    if not 1 <= count <= 123 or nbytes != 2 * count or len(payload) != nbytes:
                        return _exception(unit_id, tid, function, ILLEGAL_VALUE)
                    code = unit.write(Table.HOLDING_REGISTER, address, list(struct.unpack(f">{count}H", payload)))
                if code is not None:
                    return _exception(unit_id, tid, function, code)
                pdu = struct.pack(">BHH", function, address, count)
            else:
                return _exception(unit_id, tid, function, ILLEGAL_FUNCTION)
        except (struct.error, IndexError):
            return _exception(unit_id, tid, function, ILLEGAL_VALUE)
        return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit_id) + pdu


class ModbusEndpoint:
    """One listening TCP port serving one or more unit ids."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.units: dict[int, UnitImage] = {}
        self.connections: set[_Connection] = set()
        self.accepted = 0  # connections accepted since the endpoint was made (tests count reconnects)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (port 0 picks a free port, then :attr:`port` tells which)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            await self._server.wait_closed()
            self._server = None

    def drop_connections(self) -> None:
        """Close every client connection now (the server keeps listening)."""
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()

    def half_open(self) -> None:
        """Make every open client connection deaf: it reads requests, never answers, never closes."""
        for connection in list(self.connections):
            connection.deaf = True
