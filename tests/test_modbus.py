"""The Modbus driver against the simulator server, over real sockets on loopback.

Every table and type (bits in registers and strings too), 0- and 1-based profiles, merged
reads, writes with each function code and read-back, refused and clamped writes, exception
codes, several unit ids over one shared connection, silent/slow/half-open devices, a server
restart under a DevicePoller, and ``scan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator

import pytest
import structlog
from structlog.testing import capture_logs

from gateway.cli import main
from gateway.commissioning.modbus_scan import parse_units, scan_units
from gateway.config.profile import ModbusProfile
from gateway.config.site import ModbusDevice
from gateway.drivers import modbus
from gateway.drivers.base import DeviceFault, DeviceTimeout, DeviceUnavailable, WriteRefused
from gateway.drivers.modbus import ModbusDriver
from gateway.poller import DevicePoller
from gateway.process_image import ProcessImage
from gateway.sample import Quality
from simulators.modbus_server import Fault, ModbusEndpoint, UnitImage

TIMEOUT_S = 0.3

# One signal of every type in every table, at PDU addresses (shifted by one for 1-based).
SIGNALS: dict[str, dict] = {
    "temp_c": {"table": "input_register", "address": 0, "type": "int16", "scale": 0.01},
    "flow_lpm": {"table": "input_register", "address": 1, "type": "uint16", "scale": 0.1},
    "load_kw": {"table": "input_register", "address": 2, "type": "float32", "byte_order": "CDAB"},
    "hours_h": {"table": "input_register", "address": 4, "type": "uint32"},
    "energy_mwh": {"table": "input_register", "address": 6, "type": "float64"},
    "counter": {"table": "input_register", "address": 10, "type": "int64", "byte_order": "DCBA"},
    "big": {"table": "input_register", "address": 14, "type": "uint64", "byte_order": "BADC"},
    "delta": {"table": "input_register", "address": 18, "type": "int32", "byte_order": "CDAB"},
    "status_ok": {"table": "input_register", "address": 20, "type": "bool", "bit": 0},
    "status_warn": {"table": "input_register", "address": 20, "type": "bool", "bit": 7},
    "status_alarm": {"table": "input_register", "address": 20, "type": "bool", "bit": 15},
    "serial": {"table": "input_register", "address": 21, "type": "string", "length_registers": 4},
    "model_name": {
        "table": "input_register",
        "address": 25,
        "type": "string",
        "length_registers": 3,
        "byte_order": "BADC",
    },
    "pump_running": {"table": "discrete_input", "address": 0, "type": "bool"},
    "leak": {"table": "discrete_input", "address": 1, "type": "bool"},
    "alarm_reset": {"table": "coil", "address": 0, "type": "bool", "access": "read_write", "min": 0, "max": 1},
    "pump_enable": {"table": "coil", "address": 1, "type": "bool", "access": "read_write", "min": 0, "max": 1},
    "setpoint_c": {
        "table": "holding_register",
        "address": 100,
        "type": "int16",
        "scale": 0.01,
        "access": "read_write",
        "min": 25,
        "max": 45,
    },
    "mode": {"table": "holding_register", "address": 101, "type": "uint16", "access": "read_write", "min": 0, "max": 1},
    "limit_kw": {
        "table": "holding_register",
        "address": 102,
        "type": "float32",
        "byte_order": "CDAB",
        "access": "read_write",
        "min": 0,
        "max": 5000,
    },
    "cmd_start": {
        "table": "holding_register",
        "address": 104,
        "type": "bool",
        "bit": 0,
        "access": "read_write",
        "min": 0,
        "max": 1,
    },
    "cmd_stop": {
        "table": "holding_register",
        "address": 104,
        "type": "bool",
        "bit": 1,
        "access": "read_write",
        "min": 0,
        "max": 1,
    },
    "remote": {"table": "holding_register", "address": 104, "type": "bool", "bit": 8},
    "it_limit_c": {"table": "holding_register", "address": 105, "type": "int16", "scale": 0.01},
}

VALUES: dict[str, float | str] = {
    "temp_c": -3.25,
    "flow_lpm": 300.0,
    "load_kw": 41.5,
    "hours_h": 305419896,
    "energy_mwh": 1234.5,
    "counter": -3,
    "big": 5124095577148911,
    "delta": -2,
    "status_ok": 1,
    "status_warn": 0,
    "status_alarm": 1,
    "serial": "CDU-7",
    "model_name": "X9",
    "pump_running": 1,
    "leak": 0,
    "alarm_reset": 0,
    "pump_enable": 1,
    "setpoint_c": 32.0,
    "mode": 1,
    "limit_kw": 1500.0,
    "cmd_start": 0,
    "cmd_stop": 0,
    "remote": 1,
    "it_limit_c": 45.0,
}
NUMBERS = {name: value for name, value in VALUES.items() if not isinstance(value, str)}
TEXTS = {name: value for name, value in VALUES.items() if isinstance(value, str)}


def make_profile(addressing: int = 0, signals: dict | None = None, **quirks) -> ModbusProfile:
    signals = SIGNALS if signals is None else signals
    shifted = {name: {**spec, "address": spec["address"] + addressing} for name, spec in signals.items()}
    return ModbusProfile.model_validate(
        {"protocol": "modbus", "model": "test", "addressing": addressing, "signals": shifted, **quirks}
    )


class Unit:
    """A simulated unit whose writes are recorded."""

    def __init__(self, name: str, profile: ModbusProfile, values: dict | None = None) -> None:
        self.writes: list[tuple[str, float]] = []
        self.image = UnitImage(name, profile, on_write=self._on_write)
        self.image.update(VALUES if values is None else values)

    def _on_write(self, signal: str, value: float) -> None:
        self.writes.append((signal, value))


@contextlib.asynccontextmanager
async def serving(units: dict[int, Unit]) -> AsyncIterator[ModbusEndpoint]:
    endpoint = ModbusEndpoint("127.0.0.1", 0)
    endpoint.units.update({unit_id: unit.image for unit_id, unit in units.items()})
    await endpoint.start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()


def make_device(endpoint: ModbusEndpoint, unit_id: int = 1, name: str | None = None, **extra) -> ModbusDevice:
    return ModbusDevice(
        name=name or f"dev-{unit_id}",
        kind="cdu",
        protocol="modbus",
        host="127.0.0.1",
        port=endpoint.port,
        unit_id=unit_id,
        profile="test",
        timeout_s=extra.pop("timeout_s", TIMEOUT_S),
        **extra,
    )


# --- reads --------------------------------------------------------------------------------


@pytest.mark.parametrize("addressing", [0, 1])
async def test_reads_every_table_and_type_in_one_request_per_table(addressing):
    profile = make_profile(addressing)
    unit = Unit("dev-1", profile)
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        assert len(driver.plan.blocks) == 4  # coil, discrete input, input register, holding register
        reading = await driver.read()
    assert reading.bad == {}
    assert reading.values == pytest.approx(NUMBERS)
    assert reading.texts == TEXTS
    assert unit.image.requests == 4


async def test_one_based_profile_puts_address_minus_one_on_the_wire():
    profile = make_profile(1)
    unit = Unit("dev-1", profile)
    # register 101 in the 1-based profile is PDU address 100 in the server's tables
    assert profile.signals["setpoint_c"].address == 101
    assert unit.image.tables[profile.signals["setpoint_c"].table][100] == 3200
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        assert await driver.write("setpoint_c", 30.5) == pytest.approx(30.5)
    assert unit.image.tables[profile.signals["setpoint_c"].table][100] == 3050
    assert unit.writes == [("setpoint_c", 30.5)]


async def test_little_endian_profile_default_leaves_16_bit_registers_big_endian_on_read_and_write():
    profile = make_profile(byte_order="DCBA")
    unit = Unit("dev-1", profile)
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        assert (await driver.read()).values == pytest.approx(NUMBERS)
        assert await driver.write("setpoint_c", 30.5) == pytest.approx(30.5)
    table = unit.image.tables[profile.signals["setpoint_c"].table]
    assert table[100] == 3050  # 0x0BEA on the wire, not byte-swapped
    assert unit.writes == [("setpoint_c", 30.5)]


async def test_unmapped_block_marks_only_its_signals_bad_with_device_unit_and_register():
    profile = make_profile(signals={**SIGNALS, "ghost": {"table": "input_register", "address": 500, "type": "uint16"}})
    served = make_profile()  # the device does not have register 500
    async with serving({1: Unit("dev-1", served)}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        reading = await driver.read()
    assert set(reading.bad) == {"ghost"}
    assert reading.bad["ghost"] == (
        "dev-1 at unit 1 input_register 500-500 (1 signals): Modbus exception 2 (illegal data address)"
    )
    assert reading.values == pytest.approx(NUMBERS)


async def test_exception_fault_marks_every_block_bad_naming_the_register():
    profile = make_profile()
    unit = Unit("dev-1", profile)
    unit.image.fault, unit.image.fault_code = Fault.EXCEPTION, 4
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        reading = await driver.read()
        assert set(reading.bad) == set(SIGNALS)
        assert reading.bad["temp_c"].startswith("dev-1 at unit 1 input_register 0-27")
        assert "Modbus exception 4 (server device failure)" in reading.bad["temp_c"]
        with pytest.raises(DeviceFault, match=r"unit 1 holding_register 100 \(setpoint_c\): write \(FC6\) Modbus "):
            await driver.write("setpoint_c", 30)


# --- writes -------------------------------------------------------------------------------


async def test_writes_use_fc5_fc6_fc16_and_read_back():
    profile = make_profile()
    unit = Unit("dev-1", profile)
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        assert await driver.write("alarm_reset", 1) == 1.0
        assert await driver.write("setpoint_c", 28.04) == pytest.approx(28.04)
        assert await driver.write("limit_kw", 2500.25) == pytest.approx(2500.25)
        reading = await driver.read()
    assert unit.writes == [("alarm_reset", 1.0), ("setpoint_c", pytest.approx(28.04)), ("limit_kw", 2500.25)]
    assert reading.values["limit_kw"] == pytest.approx(2500.25)
    functions = unit.image.functions
    assert (functions[5], functions[6], functions[16], functions[15]) == (1, 1, 1, 0)


async def test_write_single_with_fc16_forces_fc16_and_fc15():
    profile = make_profile(write_single_with_fc16=True)
    unit = Unit("dev-1", profile)
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        assert await driver.write("pump_enable", 0) == 0.0
        assert await driver.write("mode", 0) == 0.0
    functions = unit.image.functions
    assert (functions[5], functions[6], functions[15], functions[16]) == (0, 0, 1, 1)
    assert unit.writes == [("pump_enable", 0.0), ("mode", 0.0)]


async def test_device_override_of_a_quirk_wins_over_the_profile():
    profile = make_profile()
    unit = Unit("dev-1", profile)
    async with serving({1: unit}) as endpoint:
        device = make_device(endpoint, write_single_with_fc16=True)
        async with ModbusDriver(device, profile) as driver:
            await driver.write("mode", 0)
    assert unit.image.functions[16] == 1
    assert unit.image.functions[6] == 0


async def test_bit_of_a_register_is_a_read_modify_write_that_keeps_the_other_bits():
    profile = make_profile()
    unit = Unit("dev-1", profile)  # register 104 has "remote" (bit 8, read-only) set
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        assert await driver.write("cmd_start", 1) == 1.0
        assert await driver.write("cmd_stop", 1) == 1.0
        assert await driver.write("cmd_start", 0) == 0.0
        reading = await driver.read()
    table = profile.signals["cmd_start"].table
    assert unit.image.tables[table][104] == 0b1_0000_0010
    assert unit.writes == [("cmd_start", 1.0), ("cmd_stop", 1.0), ("cmd_start", 0.0)]
    assert (reading.values["cmd_start"], reading.values["cmd_stop"], reading.values["remote"]) == (0.0, 1.0, 1.0)


async def test_refused_writes_send_nothing():
    profile = make_profile()
    unit = Unit("dev-1", profile)
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        before = unit.image.requests
        with pytest.raises(WriteRefused, match=r"setpoint_c = 60 is outside its limits \[25.0, 45.0\]"):
            await driver.write("setpoint_c", 60)
        with pytest.raises(WriteRefused, match="it_limit_c is read-only"):
            await driver.write("it_limit_c", 40)
        with pytest.raises(WriteRefused, match="read-only"):
            await driver.write("remote", 0)
        with pytest.raises(WriteRefused, match="no signal 'nope'"):
            await driver.write("nope", 1)
        assert unit.image.requests == before
    assert unit.writes == []


async def test_clamped_write_is_logged_with_requested_and_applied_value(monkeypatch):
    profile = make_profile(write_out_of_range="clamp")
    unit = Unit("dev-1", profile)
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        with capture_logs() as logs:
            monkeypatch.setattr(modbus, "log", structlog.get_logger("test"))
            assert await driver.write("setpoint_c", 60) == pytest.approx(45.0)
            assert await driver.write("setpoint_c", -5) == pytest.approx(25.0)
    assert unit.writes == [("setpoint_c", 45.0), ("setpoint_c", 25.0)]
    clamped = [entry for entry in logs if entry["event"] == "write_clamped"]
    assert [(entry["requested"], entry["applied"]) for entry in clamped] == [(60, 45.0), (-5, 25.0)]
    assert clamped[0]["device"] == "dev-1"
    assert clamped[0]["register"] == "unit 1 holding_register 100"


async def test_device_refusing_a_write_is_a_fault_naming_device_unit_and_register():
    profile = make_profile(addressing=1)
    unit = Unit("dev-1", profile)

    def refuse(_signal: str, _value: float) -> None:
        raise ValueError("interlocked")

    unit.image.on_write = refuse
    async with serving({7: unit}) as endpoint, ModbusDriver(make_device(endpoint, unit_id=7), profile) as driver:
        with pytest.raises(DeviceFault) as caught:
            await driver.write("mode", 0)
    assert str(caught.value) == (
        "dev-7 at unit 7 holding_register 102 (mode): write (FC6) Modbus exception 3 (illegal data value)"
    )


# --- one connection for several unit ids --------------------------------------------------


async def test_units_behind_one_endpoint_share_one_connection():
    profile = make_profile()
    units = {unit_id: Unit(f"dev-{unit_id}", profile, {**VALUES, "flow_lpm": unit_id}) for unit_id in (1, 2, 3)}
    async with serving(units) as endpoint:
        drivers = [ModbusDriver(make_device(endpoint, unit_id), profile) for unit_id in units]
        try:
            for driver in drivers:
                await driver.connect()
            readings = await asyncio.gather(*(driver.read() for driver in drivers))
            assert [reading.values["flow_lpm"] for reading in readings] == [1.0, 2.0, 3.0]
            assert len({id(driver.connection) for driver in drivers}) == 1
            assert len(endpoint.connections) == 1
            assert endpoint.accepted == 1
            # closing one driver leaves the connection to the others; the last one closes it
            await drivers[0].close()
            assert drivers[1].connected
            assert (await drivers[1].read()).values["flow_lpm"] == 2.0
        finally:
            for driver in drivers:
                await driver.close()
        await asyncio.sleep(0.05)
        assert len(endpoint.connections) == 0


async def test_silent_unit_delays_the_others_by_at_most_its_timeout():
    profile = make_profile()
    units = {unit_id: Unit(f"dev-{unit_id}", profile) for unit_id in (1, 2, 3)}
    units[2].image.fault = Fault.SILENT
    async with serving(units) as endpoint:
        drivers = {unit_id: ModbusDriver(make_device(endpoint, unit_id), profile) for unit_id in units}
        try:
            for driver in drivers.values():
                await driver.connect()

            async def timed(driver: ModbusDriver) -> tuple[float, object]:
                started = time.perf_counter()
                try:
                    result: object = await driver.read()
                except DeviceTimeout as exc:
                    result = exc
                return time.perf_counter() - started, result

            # the silent unit asks first, so the others queue behind it
            results = await asyncio.gather(*(timed(drivers[u]) for u in (2, 1, 3)))
            (silent_s, silent), (first_s, _), (third_s, _) = results
            assert isinstance(silent, DeviceTimeout)
            assert "no reply within 0.3 s" in str(silent)
            # margins for a busy 2-core CI machine; the point is "one timeout", not "three"
            assert TIMEOUT_S - 0.05 <= silent_s < TIMEOUT_S + 0.3
            assert first_s < TIMEOUT_S + 0.3
            assert third_s < TIMEOUT_S + 0.3
            # the connection survived: one TCP connection, the others keep reading
            assert drivers[1].connected
            assert drivers[3].connected
            assert (await drivers[3].read()).bad == {}
            assert endpoint.accepted == 1
        finally:
            for driver in drivers.values():
                await driver.close()


async def test_gateway_exception_11_makes_only_that_unit_unavailable():
    profile = make_profile()
    async with serving({1: Unit("dev-1", profile)}) as endpoint:
        present = ModbusDriver(make_device(endpoint, 1), profile)
        missing = ModbusDriver(make_device(endpoint, 9), profile)
        async with present, missing:
            with pytest.raises(DeviceUnavailable, match=r"dev-9 at unit 9 .*Modbus exception 11 \(gateway target"):
                await missing.read()
            assert present.connected
            assert (await present.read()).bad == {}
        assert endpoint.accepted == 1


async def test_late_reply_of_a_timed_out_unit_is_never_taken_for_another_units_answer():
    profile = make_profile()
    units = {1: Unit("dev-1", profile, {**VALUES, "flow_lpm": 111}), 2: Unit("dev-2", profile)}
    units[1].image.fault, units[1].image.fault_delay_s = Fault.SLOW, 0.4
    async with serving(units) as endpoint:
        slow = ModbusDriver(make_device(endpoint, 1, timeout_s=0.2), profile)
        other = ModbusDriver(make_device(endpoint, 2), profile)
        async with slow, other:
            with pytest.raises(DeviceTimeout):
                await slow.read()
            # unit 1's reply lands while unit 2's requests are outstanding
            for _ in range(3):
                reading = await other.read()
                assert reading.values["flow_lpm"] == 300.0
                await asyncio.sleep(0.1)
            assert other.connected
        assert endpoint.accepted == 1


async def test_slow_device_within_its_timeout_is_read():
    profile = make_profile()
    unit = Unit("dev-1", profile)
    unit.image.fault, unit.image.fault_delay_s = Fault.SLOW, 0.05
    async with serving({1: unit}) as endpoint, ModbusDriver(make_device(endpoint), profile) as driver:
        started = time.perf_counter()
        reading = await driver.read()
    assert time.perf_counter() - started >= 4 * 0.05
    assert reading.values == pytest.approx(NUMBERS)


# --- dead connections ---------------------------------------------------------------------


async def test_half_open_connection_is_detected_by_timeout_and_the_poller_recovers():
    profile = make_profile()
    unit = Unit("dev-1", profile)
    image = ProcessImage()
    async with serving({1: unit}) as endpoint:
        driver = ModbusDriver(make_device(endpoint), profile)
        poller = DevicePoller(driver, period_s=1.0, backoff_max_s=1.0, image=image, outbox=None)
        try:
            assert await poller.poll_once() is not None
            unit.image.fault = Fault.HALF_OPEN
            started = time.perf_counter()
            assert await poller.poll_once() is None
            assert TIMEOUT_S - 0.05 <= time.perf_counter() - started < TIMEOUT_S + 0.4
            sample = image.snapshot(time.time_ns()).sample("dev-1", "temp_c")
            assert sample.quality is Quality.BAD
            assert "no reply within" in sample.reason
            unit.image.fault = Fault.NONE  # the old connection stays deaf: only a new one helps
            assert await poller.poll_once() is not None
            assert endpoint.accepted == 2
            assert image.snapshot(time.time_ns()).sample("dev-1", "temp_c").quality is Quality.GOOD
        finally:
            await driver.close()


async def test_half_open_shared_connection_is_replaced_once_every_unit_timed_out():
    profile = make_profile()
    units = {unit_id: Unit(f"dev-{unit_id}", profile) for unit_id in (1, 2)}
    async with serving(units) as endpoint:
        drivers = [ModbusDriver(make_device(endpoint, unit_id), profile) for unit_id in units]
        try:
            for driver in drivers:
                await driver.connect()
            endpoint.half_open()
            with pytest.raises(DeviceTimeout):
                await drivers[0].read()
            assert drivers[1].connected  # unit 2 may still answer: not dead yet
            with pytest.raises(DeviceTimeout):
                await drivers[1].read()
            assert not drivers[0].connected  # every unit is silent: the connection is dead
            for driver in drivers:
                await driver.connect()
                assert (await driver.read()).bad == {}
            assert drivers[0].connection is drivers[1].connection
            assert endpoint.accepted == 2
        finally:
            for driver in drivers:
                await driver.close()


async def test_server_restart_marks_bad_then_the_poller_recovers():
    profile = make_profile()
    unit = Unit("dev-1", profile)
    image = ProcessImage()
    async with serving({1: unit}) as endpoint:
        driver = ModbusDriver(make_device(endpoint), profile)
        poller = DevicePoller(driver, period_s=1.0, backoff_max_s=1.0, image=image, outbox=None)
        try:
            assert await poller.poll_once() is not None
            await endpoint.stop()
            await asyncio.sleep(0.05)
            assert await poller.poll_once() is None  # the connection is gone
            assert await poller.poll_once() is None  # and nothing listens
            sample = image.snapshot(time.time_ns()).sample("dev-1", "temp_c")
            assert sample.quality is Quality.BAD
            assert poller.stats.available is False
            await endpoint.start()
            reading = await poller.poll_once()
            assert reading is not None
            assert reading.values == pytest.approx(NUMBERS)
            assert poller.stats.available is True
        finally:
            await driver.close()


# --- quirks -------------------------------------------------------------------------------


async def test_one_request_per_signal_and_pauses():
    signals = {name: SIGNALS[name] for name in ("temp_c", "flow_lpm", "load_kw", "status_ok", "status_warn")}
    profile = make_profile(
        signals=signals, one_request_per_signal=True, pause_after_connect_s=0.2, pause_between_requests_s=0.05
    )
    unit = Unit("dev-1", profile)
    async with serving({1: unit}) as endpoint:
        started = time.perf_counter()
        async with ModbusDriver(make_device(endpoint), profile) as driver:
            reading = await driver.read()
        elapsed = time.perf_counter() - started
    assert unit.image.requests == 4  # the two bits share their register's request
    assert reading.values == pytest.approx({name: NUMBERS[name] for name in signals})
    assert elapsed >= 0.2 + 3 * 0.05


# --- scan ---------------------------------------------------------------------------------


def test_parse_units():
    assert parse_units("1-3,7,2") == [1, 2, 3, 7]
    with pytest.raises(ValueError, match="within 0-255"):
        parse_units("5-300")


async def test_scan_lists_the_units_that_answer():
    profile = make_profile()
    units = {unit_id: Unit(f"dev-{unit_id}", profile) for unit_id in (1, 5, 200, 201)}
    units[5].image.fault, units[5].image.fault_code = Fault.EXCEPTION, 6  # busy, but there
    units[201].image.fault = Fault.SILENT
    async with serving(units) as endpoint:
        started = time.perf_counter()
        results = await scan_units("127.0.0.1", endpoint.port, range(1, 248), timeout_s=0.3)
        elapsed = time.perf_counter() - started
    answering = {result.unit_id: result.detail for result in results if result.answers}
    # the test profile has no holding register 0: "illegal data address" still means "I am here"
    assert answering == {
        1: "exception 2 (illegal data address)",
        5: "exception 6 (server device busy)",
        200: "exception 2 (illegal data address)",
    }
    assert [result.detail for result in results if result.unit_id == 201] == ["no reply within 0.3 s"]
    assert [result.detail for result in results if result.unit_id == 2] == [
        "exception 11 (gateway target device failed to respond)"
    ]
    assert len(results) == 247
    assert elapsed < 3.0


def test_scan_command_prints_the_units(capsys):
    profile = make_profile()
    units = {unit_id: Unit(f"dev-{unit_id}", profile) for unit_id in (3, 4)}
    loop = asyncio.new_event_loop()
    endpoint = ModbusEndpoint("127.0.0.1", 0)
    endpoint.units.update({unit_id: unit.image for unit_id, unit in units.items()})
    loop.run_until_complete(endpoint.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        code = main(["scan", "127.0.0.1", "--port", str(endpoint.port), "--units", "1-10", "--timeout", "0.3"])
    finally:
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    out = capsys.readouterr().out
    assert code == 0
    assert "unit 3    exception 2 (illegal data address)" in out
    assert "unit 4 " in out
    assert "2 of 10 unit ids answer" in out
    assert "unit 5 " not in out


def test_scan_command_with_nothing_listening_exits_1(capsys):
    code = main(["scan", "127.0.0.1", "--port", "1", "--units", "1", "--timeout", "0.2"])
    assert code == 1
    assert "cannot connect" in capsys.readouterr().err
