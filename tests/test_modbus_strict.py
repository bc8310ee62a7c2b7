"""Strict Modbus replies: a raw TCP server sends malformed replies, the gateway publishes none.

Each case is a raw asyncio server of its own (tests/raw_modbus.py, not our simulator) that
answers every FC3 read with one kind of wrong reply. All cases are polled at once by real
DevicePollers and ModbusDrivers over loopback sockets, next to a healthy device on the
simulator. For every malformed case: no reading reaches the outbox, the device is unavailable,
``device_unavailable`` is logged exactly once (with the reason), and the healthy device misses
nothing. A correct reply split over several TCP segments must be reassembled and accepted.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Callable

import pytest
import structlog
from structlog.testing import capture_logs

from gateway import poller as poller_module
from gateway.config.profile import ModbusProfile
from gateway.config.site import ModbusDevice
from gateway.drivers.modbus import ModbusDriver
from gateway.drivers.modbus_wire import Request, check_reply
from gateway.poller import DevicePoller
from gateway.process_image import ProcessImage
from gateway.sample import Reading
from simulators.modbus_server import ModbusEndpoint, UnitImage
from tests.live import cancel_all
from tests.raw_modbus import RawRequest, Segment, clock_words, frame, registers_pdu, server_thread

PROFILE = ModbusProfile.model_validate(
    {
        "protocol": "modbus",
        "model": "raw clock",
        "signals": {
            "clock_ms": {"table": "holding_register", "address": 0, "type": "uint64"},
            "unit": {"table": "holding_register", "address": 4, "type": "uint16"},
        },
    }
)
PERIOD_S = 0.2
TIMEOUT_S = 0.3
RUN_S = 3.0


def words(request: RawRequest) -> list[int]:
    return [*clock_words(), request.unit_id][: request.quantity]


def good(request: RawRequest) -> bytes:
    return frame(request.transaction_id, request.unit_id, registers_pdu(3, words(request)))


def reply(make: Callable[[RawRequest], bytes]) -> Callable[[RawRequest], list[Segment]]:
    return lambda request: [(0.0, make(request))]


def split(request: RawRequest) -> list[Segment]:
    data = good(request)
    return [(0.0, data[:1]), (0.02, data[1:5]), (0.02, data[5:9]), (0.02, data[9:])]


def length_lies_short(request: RawRequest) -> bytes:
    pdu = registers_pdu(3, words(request))
    return frame(request.transaction_id, request.unit_id, pdu, length=len(pdu) - 3)


def with_data(request: RawRequest, count: int, byte_count: int | None = None) -> bytes:
    data = [*words(request), 7, 7, 7][:count]
    return frame(request.transaction_id, request.unit_id, registers_pdu(3, data, byte_count=byte_count))


# name -> (what the server does, what the reason must say)
MALFORMED: dict[str, tuple[Callable[[RawRequest], list[Segment]], str]] = {
    "wrong function code": (
        reply(lambda r: frame(r.transaction_id, r.unit_id, registers_pdu(4, words(r)))),
        "function code 4 in the reply to function code 3",
    ),
    "byte count short": (reply(lambda r: with_data(r, 5, byte_count=8)), "byte count 8 for 5 registers"),
    "byte count long": (reply(lambda r: with_data(r, 5, byte_count=12)), "byte count 12 for 5 registers"),
    "extra registers": (reply(lambda r: with_data(r, 6)), "byte count 12 for 5 registers"),
    "fewer registers": (reply(lambda r: with_data(r, 3)), "byte count 6 for 5 registers"),
    "wrong transaction id": (
        reply(lambda r: frame((r.transaction_id + 1000) % 65536, r.unit_id, registers_pdu(3, words(r)))),
        "transaction id",
    ),
    "transaction id 0": (
        reply(lambda r: frame(0, r.unit_id, registers_pdu(3, words(r)))),
        "transaction id 0 in the reply",
    ),
    "wrong unit id": (
        reply(lambda r: frame(r.transaction_id, r.unit_id + 1, registers_pdu(3, words(r)))),
        "reply from unit id 8 to a request for unit id 7",
    ),
    "garbage": (reply(lambda _r: bytes(range(0x41, 0x61))), "the byte stream is not Modbus TCP"),
    "protocol id not 0": (
        reply(lambda r: frame(r.transaction_id, r.unit_id, registers_pdu(3, words(r)), protocol=1)),
        "protocol id 1 in the MBAP header",
    ),
    "unknown exception code": (
        reply(lambda r: frame(r.transaction_id, r.unit_id, bytes([0x83, 42]))),
        "Modbus exception 42 (not a code the Modbus specification defines)",
    ),
    "exception of another function": (
        reply(lambda r: frame(r.transaction_id, r.unit_id, bytes([0x84, 2]))),
        "function code 132 in the reply to function code 3",
    ),
    "exception too long": (
        reply(lambda r: frame(r.transaction_id, r.unit_id, bytes([0x83, 2, 0]))),
        "exception reply of 3 bytes, expected 2",
    ),
    "truncated header": (reply(lambda r: good(r)[:5]), "incomplete reply"),
    "length field too long": (
        reply(lambda r: frame(r.transaction_id, r.unit_id, registers_pdu(3, words(r)), length=60)),
        "incomplete reply",
    ),
    "length field too short": (reply(length_lies_short), "byte count 10 but 6 data bytes follow"),
    "zero length": (
        reply(lambda r: frame(r.transaction_id, r.unit_id, b"", length=0)),
        "length field 0 in the MBAP header",
    ),
    "function code only": (reply(lambda r: frame(r.transaction_id, r.unit_id, b"\x03")), "without a byte count"),
}


class Outbox:
    """The publisher's side of the poller: what would have been published."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def put(self, item: Reading) -> None:
        self.readings.append(item)


def device(name: str, port: int, unit_id: int = 7) -> ModbusDevice:
    return ModbusDevice(
        name=name,
        kind="cdu",
        protocol="modbus",
        host="127.0.0.1",
        port=port,
        unit_id=unit_id,
        profile="raw",
        timeout_s=TIMEOUT_S,
        poll_period_s=PERIOD_S,
    )


def test_check_reply_accepts_exact_replies_only():
    read = Request(transaction_id=5, unit_id=1, function_code=1, address=0, quantity=10)
    assert check_reply(read, 1, bytes([1, 2, 0xFF, 0x03])) is None  # 10 coils in 2 bytes
    assert check_reply(read, 1, bytes([1, 1, 0xFF])) == "byte count 1 for 10 bits (expected 2)"
    write = Request(transaction_id=6, unit_id=1, function_code=6, address=100, quantity=3050)
    assert check_reply(write, 1, struct.pack(">BHH", 6, 100, 3050)) is None
    assert check_reply(write, 1, struct.pack(">BHH", 6, 101, 3050)) == "write reply for address 101, written was 100"
    assert check_reply(write, 1, struct.pack(">BHH", 6, 100, 3051)) == "write reply echoes value 3051, written was 3050"
    multiple = Request(transaction_id=7, unit_id=1, function_code=16, address=102, quantity=2)
    assert check_reply(multiple, 1, struct.pack(">BHH", 16, 102, 4)) == "write reply echoes quantity 4, written was 2"


@pytest.mark.slow
async def test_malformed_replies_publish_nothing_and_are_logged_once_each(monkeypatch):
    monkeypatch.setattr(poller_module, "log", structlog.get_logger("test"))
    loop_errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
    image = ProcessImage()
    healthy_unit = UnitImage("healthy", PROFILE, on_write=lambda _s, _v: None)
    healthy_unit.update({"clock_ms": 1.0, "unit": 1.0})
    simulator = ModbusEndpoint("127.0.0.1", 0)
    simulator.units[1] = healthy_unit
    await simulator.start()
    outboxes: dict[str, Outbox] = {}
    with server_thread() as servers:
        cases = {name: servers.serve(answer) for name, (answer, _reason) in MALFORMED.items()}
        cases["split frames"] = servers.serve(split)
        pollers = []
        for name, server in cases.items():
            outboxes[name] = Outbox()
            driver = ModbusDriver(device(name.replace(" ", "-"), server.port), PROFILE)
            pollers.append(
                DevicePoller(
                    driver,
                    period_s=PERIOD_S,
                    backoff_max_s=0.4,
                    image=image,
                    outbox=outboxes[name],
                    rng=random.Random(1),
                )
            )
        outboxes["healthy"] = Outbox()
        healthy = DevicePoller(
            ModbusDriver(device("healthy", simulator.port, unit_id=1), PROFILE),
            period_s=PERIOD_S,
            backoff_max_s=0.4,
            image=image,
            outbox=outboxes["healthy"],
        )
        pollers.append(healthy)
        with capture_logs() as logs:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(p.run(), name=f"poll:{p.name}") for p in pollers]
                await asyncio.sleep(RUN_S)
                await cancel_all(tasks)
    await simulator.stop()

    by_device = {p.name: p for p in pollers}
    down_logs = [entry for entry in logs if entry["event"] == "device_unavailable"]
    for name, (_answer, reason) in MALFORMED.items():
        device_name = name.replace(" ", "-")
        poller = by_device[device_name]
        assert outboxes[name].readings == [], f"{name}: a malformed reply was published"
        assert not poller.stats.available, name
        assert poller.stats.failures >= 2, f"{name}: polled {poller.stats.polls} times only"
        lines = [entry for entry in down_logs if entry["device"] == device_name]
        assert len(lines) == 1, f"{name}: logged {len(lines)} times: {lines}"
        assert reason in lines[0]["reason"], f"{name}: {lines[0]['reason']!r}"
        assert lines[0]["at_start"] is True
        again = [e for e in logs if e["event"] == "device_still_unavailable" and e["device"] == device_name]
        assert again == [], f"{name}: {again}"
        sample = image.snapshot(time.time_ns()).sample(device_name, "clock_ms")
        assert sample.reason, name
    # a correct reply split over four TCP segments is reassembled and accepted
    assert by_device["split-frames"].stats.available
    assert by_device["split-frames"].stats.failures == 0
    assert len(outboxes["split frames"].readings) >= 5
    assert {r.values["unit"] for r in outboxes["split frames"].readings} == {7.0}
    # the healthy device next to them missed nothing
    assert healthy.stats.failures == 0
    assert healthy.stats.skipped_slots == 0
    assert len(outboxes["healthy"].readings) == healthy.stats.polls >= RUN_S / PERIOD_S - 2
    assert [entry["device"] for entry in down_logs if entry["device"] in {"healthy", "split-frames"}] == []
    # no malformed reply escaped as an exception into the event loop (pymodbus' own framer does)
    assert loop_errors == []
