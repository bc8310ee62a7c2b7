"""Modbus TCP replies checked byte for byte against the request they answer.

pymodbus (3.8-3.16) frames and decodes replies, but leaves holes a wrong reply passes through
as good values:

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

:class:`StrictFramer` replaces pymodbus' socket framer on our clients and closes these holes.
It sees every request as it is sent (pymodbus' ``trace_packet`` hook, which also gives the
exact send time) and every reply frame once it is complete (a frame split over several TCP
segments is reassembled first and then judged as one). A reply that does not match its request
exactly becomes a :class:`MalformedPdu` carrying the reason, which the driver turns into
:class:`~gateway.drivers.base.MalformedReply`: the poll fails and nothing of it is published.

A frame whose transaction id belongs to an earlier request that timed out is the late answer
to that request, not a fault: it is dropped quietly (on a connection shared by several unit
ids a slow unit's late reply is routine). A frame with any other unexpected transaction id is
malformed. When the byte stream itself cannot be trusted any more (non-zero protocol id, a
length field outside 2-254, a frame left incomplete at the timeout) the framing is lost and
the connection must be closed: :attr:`Wire.framing_lost` says so.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU

from gateway import clock

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
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
        """The request in a frame we send; ``None`` for a function code we do not check."""
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


class MalformedPdu(ModbusPDU):
    """Stands in for a reply that does not match its request; the driver raises on it."""

    function_code = 0  # not an error code: pymodbus returns it as the response, unchanged

    def __init__(self, reason: str, *, dev_id: int, transaction_id: int) -> None:
        super().__init__(dev_id=dev_id, transaction_id=transaction_id)
        self.reason = reason


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

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus' packet hook: remember each request as it is sent."""
        if sending:
            if self.request is not None:  # the previous request was never answered
                self._late.append(self.request.transaction_id)
            self.request = Request.parse(data)
            self.sent_ns = clock.wall_ns()
            self.received_ns = 0
            self.buffered = 0
        return data

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


class StrictFramer(FramerSocket):
    """pymodbus' Modbus TCP framer, made to check every reply against its request."""

    def __init__(self, wire: Wire) -> None:
        super().__init__(DecodePDU(False))  # noqa: FBT003 - pymodbus' signature: is_server=False
        self.wire = wire

    def handleFrame(self, data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, ModbusPDU | None]:  # noqa: N802 - pymodbus' name
        """Take complete frames from ``data``; the reply to the waiting request, or nothing yet."""
        wire = self.wire
        used = 0
        while True:
            rest = data[used:]
            if len(rest) < _MBAP_SIZE:
                wire.buffered = len(rest)
                return used, None
            tid, protocol, length, unit = _MBAP.unpack_from(rest)
            if protocol != 0 or not _MIN_LENGTH <= length <= _MAX_LENGTH:
                what = f"protocol id {protocol}" if protocol else f"length field {length}"
                wire.framing_lost = f"{what} in the MBAP header: the byte stream is not Modbus TCP"
                wire.buffered = 0
                return len(data), MalformedPdu(wire.framing_lost, dev_id=exp_devid, transaction_id=exp_tid)
            size = 6 + length
            if len(rest) < size:
                wire.buffered = len(rest)
                return used, None
            used += size
            pdu = rest[_MBAP_SIZE:size]
            verdict = wire.judge(tid, unit, pdu)
            if verdict is False:
                continue
            wire.buffered = len(data) - used
            if isinstance(verdict, str):
                return used, MalformedPdu(verdict, dev_id=exp_devid, transaction_id=exp_tid)
            try:
                decoded = self.decoder.decode(pdu)
            except Exception as exc:
                decoded = None
                reason = f"undecodable reply ({exc})"
            else:
                reason = f"undecodable reply with function code {pdu[0]}"
            if decoded is None:
                return used, MalformedPdu(reason, dev_id=exp_devid, transaction_id=exp_tid)
            decoded.dev_id = unit
            decoded.transaction_id = tid
            return used, decoded
