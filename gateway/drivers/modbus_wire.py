"""Modbus TCP on the wire: our own client protocol, every reply checked byte for byte.

:class:`ModbusTcpProtocol` is the gateway's Modbus TCP client: an :class:`asyncio.Protocol` that
frames requests (MBAP header + PDU), sends one at a time and hands back each reply's PDU as
bytes, which the read plan decodes directly (:meth:`~gateway.drivers.modbus_plan.Block.decode_reply`):
no response objects, no list of register values in between. Until 2026-12-01 the gateway used
pymodbus' client (3.8-3.16), which leaves holes a wrong reply passes through as good values:

* the function code is not compared with the request's: an FC4 reply to an FC3 request, or
  any other FC, decodes as that FC's response and is returned as the answer;
* the byte count is not compared with the quantity asked for: a reply with more (or fewer)
  registers than asked decodes to a longer (shorter) list; coil/input replies ignore it
  completely; bytes after the byte count are ignored;
* transaction id 0 matches any request, and a frame with another transaction id or unit id
  is skipped silently, so the request just times out with no word of why;
* a write's echo (address, value, quantity) is never compared with what was written;
* a non-zero protocol id stalls the receive buffer until the request times out, and a frame
  it cannot decode raises out of ``data_received``, which asyncio reports as a fatal error.

We had replaced its framer to close these holes; the client itself still cost about three
times the CPU of the rest of a poll (a transaction manager, ``wait_for`` per request, one
``struct.unpack`` per register, response objects, debug strings built for a log that is off;
bench/README.md "Speed cases"). This protocol keeps the checks and drops the rest.

Every request is noted by :class:`Wire` as it is handed to the socket (which also gives the
exact send time, the reading's timestamp) and every reply frame is judged once it is complete
(a frame split over several TCP segments is reassembled first and then judged as one). A reply
that does not match its request exactly fails the request with :class:`MalformedFrame`
carrying the reason, which the driver turns into
:class:`~gateway.drivers.base.MalformedReply`: the poll fails and nothing of it is published.

A frame whose transaction id belongs to an earlier request that timed out is the late answer
to that request, not a fault: it is dropped quietly (on a connection shared by several unit
ids a slow unit's late reply is routine). A frame with any other unexpected transaction id is
malformed. When the byte stream itself cannot be trusted any more (non-zero protocol id, a
length field outside 2-254, a frame left incomplete at the timeout) the framing is lost and
the connection must be closed: :attr:`Wire.framing_lost` says so.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from dataclasses import dataclass
from typing import cast

from gateway import clock

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_REQUEST_HEAD = struct.Struct(">BHH")  # function code, address, quantity (or value written)
_MBAP_SIZE = 7
_MAX_LENGTH = 254  # unit id + PDU; a Modbus PDU is at most 253 bytes
_MIN_LENGTH = 2  # unit id + function code
_LATE_TIDS_KEPT = 64  # transaction ids of timed-out requests whose late replies are dropped quietly

_READ_BITS = frozenset({1, 2})
_READ_REGISTERS = frozenset({3, 4})
_WRITE_SINGLE = frozenset({5, 6})
_WRITE_MULTIPLE = frozenset({15, 16})


@dataclass(frozen=True, slots=True)
class Request:
    """What a reply must match: the request as it went on the wire."""

    transaction_id: int
    unit_id: int
    function_code: int
    address: int
    quantity: int  # registers/bits to read or written (15, 16); the value written (5, 6)

    @classmethod
    def parse(cls, frame: bytes) -> Request | None:
        """The request in a frame (a test's view of what was sent); ``None`` when too short."""
        if len(frame) < _MBAP_SIZE + 5:
            return None
        tid, _pid, _length, unit = _MBAP.unpack_from(frame)
        function, address, quantity = struct.unpack_from(">BHH", frame, _MBAP_SIZE)
        return cls(tid, unit, function, address, quantity)


def check_reply(request: Request, unit_id: int, pdu: bytes) -> str | None:  # noqa: PLR0911 - one return per rule, each with its reason
    """Why ``pdu`` (function code onwards) from ``unit_id`` is not the answer to ``request``; ``None`` if it is."""
    if unit_id != request.unit_id:
        return f"reply from unit id {unit_id} to a request for unit id {request.unit_id}"
    function = pdu[0]
    asked = request.function_code
    if function == asked | 0x80:
        if len(pdu) != 2:
            return f"exception reply of {len(pdu)} bytes, expected 2"
        return None
    if function != asked:
        return f"function code {function} in the reply to function code {asked}"
    if asked in _READ_REGISTERS or asked in _READ_BITS:
        return _check_read_reply(request, pdu)
    if asked in _WRITE_SINGLE or asked in _WRITE_MULTIPLE:
        return _check_write_reply(request, pdu)
    return None


def _check_read_reply(request: Request, pdu: bytes) -> str | None:
    """A read reply's byte count: two per register, one per eight bits, and that many bytes."""
    asked = request.function_code
    expected = 2 * request.quantity if asked in _READ_REGISTERS else (request.quantity + 7) // 8
    what = "registers" if asked in _READ_REGISTERS else "bits"
    if len(pdu) < 2:
        return "reply without a byte count"
    count = pdu[1]
    if count != expected:
        return f"byte count {count} for {request.quantity} {what} (expected {expected})"
    if len(pdu) != 2 + count:
        return f"byte count {count} but {len(pdu) - 2} data bytes follow"
    return None


def _check_write_reply(request: Request, pdu: bytes) -> str | None:
    """A write reply echoes the address and the value (single) or quantity (multiple) written."""
    if len(pdu) != 5:
        return f"write reply of {len(pdu)} bytes, expected 5"
    address, value = struct.unpack_from(">HH", pdu, 1)
    if address != request.address:
        return f"write reply for address {address}, written was {request.address}"
    if value != request.quantity:
        what = "value" if request.function_code in _WRITE_SINGLE else "quantity"
        return f"write reply echoes {what} {value}, written was {request.quantity}"
    return None


class Wire:
    """What one connection sent and received: the request waiting for its reply, and times."""

    def __init__(self) -> None:
        self.request: Request | None = None
        self.sent_ns = 0  # wall clock when the current request was handed to the socket
        self.received_ns = 0  # wall clock when its reply was complete
        self.buffered = 0  # bytes of an incomplete frame waiting for the rest
        self.framing_lost: str | None = None
        self.dropped_late = 0  # late replies to timed-out requests, dropped
        self._late: deque[int] = deque(maxlen=_LATE_TIDS_KEPT)

    def sending(self, request: Request) -> None:
        """Remember a request as it is handed to the socket, and when."""
        if self.request is not None:  # the previous request was never answered
            self._late.append(self.request.transaction_id)
        self.request = request
        self.sent_ns = clock.wall_ns()
        self.received_ns = 0
        self.buffered = 0

    def abandon(self) -> None:
        """The waiting request timed out: a reply to it from now on is late, and dropped."""
        if self.request is not None:
            self._late.append(self.request.transaction_id)
            self.request = None

    def judge(self, tid: int, unit_id: int, pdu: bytes) -> str | bool | None:
        """A complete frame: its reason to be malformed, ``None`` when good, ``False`` to drop it."""
        request = self.request
        if request is None or tid != request.transaction_id:
            if tid in self._late:
                self._late.remove(tid)
                self.dropped_late += 1
                return False
            if request is None:
                return False  # unsolicited, and the stream is intact: nothing waits for it
            return f"transaction id {tid} in the reply to transaction id {request.transaction_id}"
        self.request = None
        self.received_ns = clock.wall_ns()
        return check_reply(request, unit_id, pdu)


class MalformedFrame(Exception):
    """The reply does not match its request (the message says why); see :class:`Wire`."""


class ConnectionLost(ConnectionError):
    """The TCP connection closed (reset, closed by the peer or by us) with a request waiting."""


class ModbusTcpProtocol(asyncio.Protocol):
    """One Modbus TCP client connection: one request at a time, each reply judged by :class:`Wire`.

    :meth:`send` frames a request PDU, writes it and returns a future of the reply's PDU
    (function code onwards): its result once a matching reply is complete, else
    :class:`MalformedFrame` or :class:`ConnectionLost`. The caller owns the timeout: it cancels
    the future and calls :meth:`Wire.abandon`, so a late reply is recognised and dropped.
    Nothing raised here ever reaches the event loop's exception handler.
    """

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.transport: asyncio.Transport | None = None
        self.connected = False
        self.lost_reason: str | None = None
        self._buffer = b""
        self._waiter: asyncio.Future[bytes] | None = None
        self._tid = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio: the TCP connection is open (asyncio sets TCP_NODELAY on it)."""
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods
        self.transport = cast("asyncio.Transport", transport)
        self.connected = True

    def connection_lost(self, exc: Exception | None) -> None:
        """asyncio: the connection is gone; a waiting request fails with :class:`ConnectionLost`."""
        self.connected = False
        if self.lost_reason is None:
            self.lost_reason = str(exc) if exc is not None else "closed by the peer"
        self._fail(ConnectionLost(self.lost_reason))

    def data_received(self, data: bytes) -> None:
        """asyncio: bytes arrived; complete frames are judged, the rest waits for more."""
        buffer = self._buffer + data if self._buffer else data
        wire = self.wire
        used = 0
        size_all = len(buffer)
        while size_all - used >= _MBAP_SIZE:
            tid, protocol, length, unit = _MBAP.unpack_from(buffer, used)
            if protocol != 0 or not _MIN_LENGTH <= length <= _MAX_LENGTH:
                what = f"protocol id {protocol}" if protocol else f"length field {length}"
                self._framing_lost(f"{what} in the MBAP header: the byte stream is not Modbus TCP")
                return
            end = used + 6 + length
            if end > size_all:
                break
            pdu = buffer[used + _MBAP_SIZE : end]
            used = end
            verdict = wire.judge(tid, unit, pdu)
            if verdict is False:
                continue
            waiter = self._waiter
            self._waiter = None
            if waiter is not None and not waiter.done():
                if verdict is None:
                    waiter.set_result(pdu)
                else:
                    assert isinstance(verdict, str)
                    waiter.set_exception(MalformedFrame(verdict))
        self._buffer = buffer[used:] if used < size_all else b""
        wire.buffered = len(self._buffer)

    # -- requests ------------------------------------------------------------------------------

    def send(self, unit_id: int, pdu: bytes) -> asyncio.Future[bytes]:
        """Frame and write one request; the future of its reply's PDU (see the class docstring)."""
        transport = self.transport
        if transport is None or not self.connected:
            raise ConnectionLost(self.lost_reason or "not connected")
        self._tid = self._tid % 0xFFFF + 1  # 1-65535: a reply with transaction id 0 never matches
        tid = self._tid
        function, address, quantity = _REQUEST_HEAD.unpack_from(pdu)
        waiter = asyncio.get_running_loop().create_future()
        self._fail(ConnectionLost("a new request was sent before this one ended"))
        self._waiter = waiter
        self.wire.sending(Request(tid, unit_id, function, address, quantity))
        transport.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit_id) + pdu)
        return waiter

    def close(self) -> None:
        """Close the connection (a waiting request fails with :class:`ConnectionLost`)."""
        if self.lost_reason is None:
            self.lost_reason = "closed"
        self.connected = False
        if self.transport is not None:
            self.transport.close()
        self._fail(ConnectionLost(self.lost_reason))

    def _framing_lost(self, reason: str) -> None:
        self.wire.framing_lost = reason
        self.wire.buffered = 0
        self._buffer = b""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(MalformedFrame(reason))
        self.lost_reason = f"malformed reply: {reason}"
        self.close()  # nothing read from this stream can be trusted any more

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
