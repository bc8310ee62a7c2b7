"""``heat-gateway scan``: which Modbus unit ids answer behind one TCP endpoint (an RTU bridge, a rack)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.drivers.modbus import (
    EXCEPTION_CODES,
    GATEWAY_NO_DEVICE,
    ConnectionDead,
    ModbusConnection,
    ReplyMalformed,
    _User,  # the scan joins the connection as a user with no unit id of its own
)

__all__ = ["ConnectionDead", "ScanResult", "parse_units", "scan_units"]


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one unit id said to a probe read."""

    unit_id: int
    answers: bool
    detail: str


def parse_units(text: str) -> list[int]:
    """``"1-10,17,20-22"`` -> unit ids, in order, each once; ValueError for anything else."""
    units: dict[int, None] = {}
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        low = int(first)
        high = int(last) if last else low
        if not 0 <= low <= high <= 255:
            raise ValueError(f"{part.strip()!r} is not a unit id or range within 0-255")
        units.update(dict.fromkeys(range(low, high + 1)))
    return list(units)


async def scan_units(
    host: str,
    port: int,
    units: Iterable[int],
    *,
    timeout_s: float = 0.5,
    connections: int = 4,
    register: int = 0,
) -> list[ScanResult]:
    """Probe each unit id with a one-register read of holding register ``register`` (PDU address).

    Any reply counts as an answer, an exception code too (the device is there but has no such
    register), except 10/11: a gateway's way of saying nobody is there. Up to ``connections``
    requests are outstanding at once, one per connection (many devices take one
    request at a time per connection). Raises :class:`ConnectionDead` when no connection opens.
    """
    pending = list(units)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for unit in pending:
        queue.put_nowait(unit)
    results: dict[int, ScanResult] = {}
    connect_timeout_s = max(timeout_s * 2, 1.0)

    async def opened() -> ModbusConnection:
        connection = ModbusConnection(host, port)
        # A user with no unit id: timeouts of probed units never make the connection "dead".
        connection.users[0] = _User(unit_id=-1, pause_after_connect_s=0.0, pause_between_requests_s=0.0)
        connection.users_changed()
        await connection.open(connect_timeout_s)
        return connection

    async def worker(connection: ModbusConnection | None) -> None:
        try:
            while not queue.empty():
                if connection is None or not connection.alive:
                    # a device may close the connection on an unknown unit id: open another
                    connection = await opened()
                    if queue.empty():
                        break  # the other workers took the rest while this connection opened
                unit = queue.get_nowait()
                results[unit] = await _probe(connection, unit, timeout_s, register)
        except ConnectionDead:
            return  # this worker's connection cannot be opened: the others carry on
        finally:
            if connection is not None:
                connection.users.clear()  # nothing to report: the scan is over
                connection.kill("scan done")

    first = await opened()  # fails fast, with ConnectionDead, when nothing listens there
    workers = max(1, min(connections, len(pending)))
    async with asyncio.TaskGroup() as group:
        for index in range(workers):
            group.create_task(worker(first if index == 0 else None), name=f"modbus-scan-{host}:{port}-{index}")
    return [results[unit] for unit in pending if unit in results]


async def _probe(connection: ModbusConnection, unit: int, timeout_s: float, register: int) -> ScanResult:
    try:
        pdu = (await connection.request(unit, timeout_s, struct.pack(">BHH", 3, register, 1))).pdu
    except TimeoutError:
        return ScanResult(unit, answers=False, detail=f"no reply within {timeout_s} s")
    except ConnectionDead as exc:
        return ScanResult(unit, answers=False, detail=f"connection closed ({exc})")
    except ReplyMalformed as exc:
        return ScanResult(unit, answers=True, detail=f"a malformed reply: {exc}")
    if pdu[0] & 0x80:  # an exception reply (two bytes, checked on the wire)
        code = pdu[1]
        meaning = EXCEPTION_CODES.get(code, "unknown exception")
        return ScanResult(unit, answers=code not in GATEWAY_NO_DEVICE, detail=f"exception {code} ({meaning})")
    value = struct.unpack_from(">H", pdu, 2)[0]  # the byte count was checked: 2 for one register
    return ScanResult(unit, answers=True, detail=f"holding register {register} = {value}")
