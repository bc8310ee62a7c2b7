"""Interoperability with Modbus implementations that are not ours.

(a) Debian's ``mbpoll`` (a libmodbus client) reads and writes our simulator server.
(b) Our pymodbus-based driver reads and writes a small C server built on Debian's libmodbus
    (``tests/interop/modbus_server.c``, compiled here into a temporary folder).

Both tools come from Debian packages that ``scripts/ensure-services.sh`` (``make services``)
installs; when they are missing these tests fail, they do not skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.config.profile import ModbusProfile
from gateway.config.site import ModbusDevice
from gateway.drivers.base import DeviceFault
from gateway.drivers.modbus import ModbusDriver
from simulators.modbus_server import ModbusEndpoint, UnitImage

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "interop" / "modbus_server.c"
MISSING = "run `make services` (scripts/ensure-services.sh installs Debian's mbpoll, libmodbus-dev, gcc and pkg-config)"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: {MISSING}")
    return path


# --- (a) mbpoll against our simulator ------------------------------------------------------

SIM_SIGNALS: dict[str, dict] = {
    "temp_c": {"table": "input_register", "address": 0, "type": "int16", "scale": 0.01},
    "load_kw": {"table": "input_register", "address": 1, "type": "float32", "byte_order": "CDAB"},
    "hours_h": {"table": "input_register", "address": 3, "type": "uint32"},
    "serial": {"table": "input_register", "address": 5, "type": "string", "length_registers": 2},
    "status_ok": {"table": "input_register", "address": 7, "type": "bool", "bit": 0},
    "status_alarm": {"table": "input_register", "address": 7, "type": "bool", "bit": 15},
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
    "limit_kw": {
        "table": "holding_register",
        "address": 101,
        "type": "float32",
        "byte_order": "CDAB",
        "access": "read_write",
        "min": 0,
        "max": 5000,
    },
}
SIM_VALUES: dict[str, float | str] = {
    "temp_c": -3.25,
    "load_kw": 41.5,
    "hours_h": 305419896,
    "serial": "C7",
    "status_ok": 1,
    "status_alarm": 1,
    "pump_running": 1,
    "leak": 0,
    "alarm_reset": 0,
    "pump_enable": 1,
    "setpoint_c": 32.0,
    "limit_kw": 1500.0,
}


def _profile(signals: dict, addressing: int = 0, **extra) -> ModbusProfile:
    shifted = {name: {**spec, "address": spec["address"] + addressing} for name, spec in signals.items()}
    return ModbusProfile.model_validate(
        {"protocol": "modbus", "model": "interop", "addressing": addressing, "signals": shifted, **extra}
    )


@contextlib.asynccontextmanager
async def simulator() -> AsyncIterator[tuple[ModbusEndpoint, UnitImage, list[tuple[str, float]]]]:
    writes: list[tuple[str, float]] = []
    unit = UnitImage("sim", _profile(SIM_SIGNALS), on_write=lambda name, value: writes.append((name, value)))
    unit.update(SIM_VALUES)
    endpoint = ModbusEndpoint("127.0.0.1", 0)
    endpoint.units[1] = unit
    await endpoint.start()
    try:
        yield endpoint, unit, writes
    finally:
        await endpoint.stop()


async def mbpoll(port: int, *args: str) -> tuple[int, dict[int, str], str]:
    """Run mbpoll once (PDU addressing) -> (exit status, {reference: value}, stderr)."""
    tool = _require("mbpoll")
    process = await asyncio.create_subprocess_exec(
        tool, "-m", "tcp", "-0", "-1", "-o", "1", "-p", str(port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
    values = {int(ref): value for ref, value in re.findall(r"^\[(\d+)\]:\s+(\S+)", stdout.decode(), re.MULTILINE)}
    assert process.returncode is not None
    return process.returncode, values, stderr.decode()


async def test_mbpoll_reads_every_table_of_our_server():
    async with simulator() as (endpoint, _unit, _writes):
        port = endpoint.port
        _, words, _ = await mbpoll(port, "-a", "1", "-t", "3:hex", "-r", "0", "-c", "8", "127.0.0.1")
        _, floats, _ = await mbpoll(port, "-a", "1", "-t", "3:float", "-r", "1", "-c", "1", "127.0.0.1")
        _, ints, _ = await mbpoll(port, "-a", "1", "-t", "3:int", "-B", "-r", "3", "-c", "1", "127.0.0.1")
        _, inputs, _ = await mbpoll(port, "-a", "1", "-t", "1", "-r", "0", "-c", "2", "127.0.0.1")
        _, coils, _ = await mbpoll(port, "-a", "1", "-t", "0", "-r", "0", "-c", "2", "127.0.0.1")
    assert words == {
        0: "0xFEBB",  # -325 x 0.01
        1: "0x0000",  # 41.5 = 0x42260000, word-swapped
        2: "0x4226",
        3: "0x1234",  # 305419896 = 0x12345678, ABCD
        4: "0x5678",
        5: "0x4337",  # "C7" then NUL padding
        6: "0x0000",
        7: "0x8001",  # bits 15 and 0
    }
    assert floats == {1: "41.5"}  # mbpoll's default float word order is CDAB
    assert ints == {3: "305419896"}
    assert inputs == {0: "1", 1: "0"}
    assert coils == {0: "0", 1: "1"}


async def test_mbpoll_writes_our_server_with_fc6_fc16_and_fc15():
    async with simulator() as (endpoint, unit, writes):
        port = endpoint.port
        code, _, err = await mbpoll(port, "-a", "1", "-t", "4", "-r", "100", "127.0.0.1", "3050")
        assert code == 0, err
        code, _, err = await mbpoll(port, "-a", "1", "-t", "4:float", "-r", "101", "127.0.0.1", "2500.5")
        assert code == 0, err
        code, _, err = await mbpoll(port, "-a", "1", "-t", "0", "-r", "0", "127.0.0.1", "1", "0")
        assert code == 0, err
        # a value outside the signal's limits is refused with exception 3
        code, _, err = await mbpoll(port, "-a", "1", "-t", "4", "-r", "100", "127.0.0.1", "9000")
        assert code != 0
        assert "Illegal data value" in err
    assert writes == [("setpoint_c", 30.5), ("limit_kw", 2500.5), ("alarm_reset", 1.0), ("pump_enable", 0.0)]
    assert unit.functions[15] == 1  # two coils in one request
    assert unit.functions[16] >= 1


async def test_mbpoll_sees_our_exception_codes():
    async with simulator() as (endpoint, _unit, _writes):
        code, _, err = await mbpoll(endpoint.port, "-a", "1", "-t", "4", "-r", "500", "127.0.0.1")
        assert code != 0
        assert "Illegal data address" in err
        # no unit 9 behind this "gateway": exception 11
        code, _, err = await mbpoll(endpoint.port, "-a", "9", "-t", "4", "-r", "100", "127.0.0.1")
        assert code != 0
        assert "Target device failed to respond" in err  # libmodbus's words for exception 11


# --- (b) our driver against a libmodbus server ----------------------------------------------

C_SIGNALS: dict[str, dict] = {
    "setpoint": {
        "table": "holding_register",
        "address": 0,
        "type": "uint16",
        "access": "read_write",
        "min": 0,
        "max": 65535,
    },
    "supply_temp_c": {
        "table": "holding_register",
        "address": 1,
        "type": "float32",
        "byte_order": "CDAB",
        "access": "read_write",
        "min": -100,
        "max": 100,
    },
    "return_temp_c": {"table": "holding_register", "address": 3, "type": "int16", "scale": 0.01},
    "name": {"table": "holding_register", "address": 4, "type": "string", "length_registers": 2},
    "flag_0": {"table": "holding_register", "address": 6, "type": "bool", "bit": 0},
    "flag_1": {
        "table": "holding_register",
        "address": 6,
        "type": "bool",
        "bit": 1,
        "access": "read_write",
        "min": 0,
        "max": 1,
    },
    "flag_2": {"table": "holding_register", "address": 6, "type": "bool", "bit": 2},
    "flag_8": {"table": "holding_register", "address": 6, "type": "bool", "bit": 8},
    "counter": {"table": "holding_register", "address": 7, "type": "uint32"},
    "spare": {"table": "holding_register", "address": 9, "type": "uint16", "access": "read_write", "min": 0, "max": 9},
    # what libmodbus 3.1.6 calls CDAB is DCBA on the wire (see modbus_server.c)
    "libmodbus_cdab": {"table": "holding_register", "address": 10, "type": "float32", "byte_order": "DCBA"},
    "count": {"table": "input_register", "address": 0, "type": "uint16"},
    "load_kw": {"table": "input_register", "address": 1, "type": "float32", "byte_order": "CDAB"},
    "relay": {"table": "coil", "address": 0, "type": "bool", "access": "read_write", "min": 0, "max": 1},
    "relay_2": {"table": "coil", "address": 1, "type": "bool", "access": "read_write", "min": 0, "max": 1},
    "input_0": {"table": "discrete_input", "address": 0, "type": "bool"},
    "input_1": {"table": "discrete_input", "address": 1, "type": "bool"},
    "input_2": {"table": "discrete_input", "address": 2, "type": "bool"},
}
C_VALUES = {
    "setpoint": 1234.0,
    "supply_temp_c": 41.5,
    "return_temp_c": -3.0,
    "flag_0": 1.0,
    "flag_1": 0.0,
    "flag_2": 1.0,
    "flag_8": 1.0,
    "counter": 305419896.0,
    "spare": 0.0,
    "libmodbus_cdab": 41.5,
    "count": 777.0,
    "load_kw": -12.25,
    "relay": 1.0,
    "relay_2": 0.0,
    "input_0": 1.0,
    "input_1": 0.0,
    "input_2": 1.0,
}


@pytest.fixture(scope="module")
def libmodbus_server_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = _require("gcc")
    pkg_config = _require("pkg-config")
    flags = subprocess.run([pkg_config, "--cflags", "--libs", "libmodbus"], capture_output=True, text=True, check=False)
    if flags.returncode != 0:
        pytest.fail(f"libmodbus-dev is not installed ({flags.stderr.strip()}): {MISSING}")
    binary = tmp_path_factory.mktemp("interop") / "modbus_server"
    built = subprocess.run(
        [gcc, "-O1", "-Wall", "-o", str(binary), str(SOURCE), *flags.stdout.split()],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return binary


@pytest.fixture
def libmodbus_port(libmodbus_server_binary: Path) -> Iterator[int]:
    process = subprocess.Popen(
        [str(libmodbus_server_binary), "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"PORT (\d+)\n", line)
        assert match, f"the libmodbus server said {line!r}"
        yield int(match.group(1))
    finally:
        process.terminate()
        process.wait(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _device(port: int, unit_id: int = 1, **extra) -> ModbusDevice:
    return ModbusDevice(
        name=f"libmodbus-{unit_id}",
        kind="test",
        protocol="modbus",
        host="127.0.0.1",
        port=port,
        unit_id=unit_id,
        profile="interop",
        timeout_s=1.0,
        **extra,
    )


@pytest.mark.parametrize("addressing", [0, 1])
async def test_driver_reads_every_table_of_a_libmodbus_server(libmodbus_port, addressing):
    profile = _profile(C_SIGNALS, addressing)
    async with ModbusDriver(_device(libmodbus_port), profile) as driver:
        assert len(driver.plan.blocks) == 4
        reading = await driver.read()
    assert reading.bad == {}
    assert reading.values == pytest.approx(C_VALUES)
    assert reading.texts == {"name": "HX1"}


async def test_driver_writes_a_libmodbus_server_and_mbpoll_sees_it(libmodbus_port):
    profile = _profile(C_SIGNALS, 1)  # 1-based end to end, writes included
    async with ModbusDriver(_device(libmodbus_port), profile) as driver:
        assert await driver.write("setpoint", 4321) == 4321.0  # FC6
        assert await driver.write("supply_temp_c", 12.75) == 12.75  # FC16, CDAB
        assert await driver.write("flag_1", 1) == 1.0  # read-modify-write of register 6
        assert await driver.write("relay", 0) == 0.0  # FC5
        reading = await driver.read()
    async with ModbusDriver(_device(libmodbus_port, write_single_with_fc16=True), profile) as driver:
        assert await driver.write("spare", 7) == 7.0  # FC16 for one register
        assert await driver.write("relay_2", 1) == 1.0  # FC15 for one coil
    assert reading.values["flag_0"] == 1.0
    assert reading.values["flag_8"] == 1.0
    _, words, _ = await mbpoll(libmodbus_port, "-a", "1", "-t", "4:hex", "-r", "0", "-c", "10", "127.0.0.1")
    assert words == {
        0: "0x10E1",  # 4321
        1: "0x0000",  # 12.75 = 0x414C0000, word-swapped
        2: "0x414C",
        3: "0xFED4",
        4: "0x4858",
        5: "0x3100",
        6: "0x0107",  # bit 1 set, bits 0, 2 and 8 kept
        7: "0x1234",
        8: "0x5678",
        9: "0x0007",
    }
    _, coils, _ = await mbpoll(libmodbus_port, "-a", "1", "-t", "0", "-r", "0", "-c", "2", "127.0.0.1")
    assert coils == {0: "0", 1: "1"}


async def test_libmodbus_exception_codes_name_device_unit_and_register(libmodbus_port):
    signals = C_SIGNALS | {
        "missing": {"table": "holding_register", "address": 50, "type": "uint16", "access": "read_write", "min": 0,
                    "max": 1},
    }  # fmt: skip
    async with ModbusDriver(_device(libmodbus_port, unit_id=3), _profile(signals)) as driver:
        reading = await driver.read()
        assert reading.bad == {
            "missing": "libmodbus-3 at unit 3 holding_register 50-50 (1 signals): "
            "Modbus exception 2 (illegal data address)"
        }
        with pytest.raises(DeviceFault, match=r"unit 3 holding_register 50 \(missing\): write \(FC6\) Modbus exc"):
            await driver.write("missing", 1)


async def test_two_unit_ids_share_one_connection_to_a_libmodbus_server(libmodbus_port):
    profile = _profile(C_SIGNALS)
    first, second = ModbusDriver(_device(libmodbus_port, 1), profile), ModbusDriver(_device(libmodbus_port, 2), profile)
    async with first, second:
        readings = await asyncio.gather(first.read(), second.read())
        assert first.connection is second.connection
    assert [reading.values["count"] for reading in readings] == [777.0, 777.0]
