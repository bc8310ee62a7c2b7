"""Modbus TCP driver (pymodbus client) built on a frozen :class:`ReadPlan`.

One driver owns one TCP connection to one device (unit id). It never reconnects by itself:
the poller decides when to retry, with backoff, so a device that is down costs nothing.
pymodbus' own reconnect and retries are switched off for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Any, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway.codec import WORDS, CodecError, encode_value
from gateway.config.profile import Access, ModbusProfile, ModbusSignal, Table
from gateway.config.site import ModbusDevice
from gateway.drivers.base import (
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    MalformedReply,
    WriteRefused,
)
from gateway.drivers.modbus_plan import Block, ReadPlan, build_plan
from gateway.sample import Reading

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

# pymodbus logs every failed request at error level; the poller reports device faults once,
# with context, so the library's own lines would only repeat them.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ModbusDriver:
    """Reads a device's plan block by block and writes single signals with read-back."""

    def __init__(self, device: ModbusDevice, profile: ModbusProfile, plan: ReadPlan | None = None) -> None:
        self.name = device.name
        self.device = device
        self.profile = profile
        self.plan = plan or build_plan(profile)
        self._client: AsyncModbusTcpClient | None = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the TCP connection is open."""
        return self._client is not None and bool(self._client.connected)

    async def connect(self) -> None:
        """Open the TCP connection; :class:`DeviceUnavailable` when it cannot be opened."""
        await self.close()
        client = AsyncModbusTcpClient(
            self.device.host,
            port=self.device.port,
            timeout=self.device.timeout_s,
            retries=0,
            reconnect_delay=0,  # the poller owns reconnects (with backoff)
            name=self.name,
        )
        try:
            async with asyncio.timeout(self.device.timeout_s * 2):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise DeviceUnavailable(self.name, f"cannot connect to {self._where}: {exc}") from exc
        if not ok:
            client.close()
            raise DeviceUnavailable(self.name, f"cannot connect to {self._where}")
        self._client = client

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def _where(self) -> str:
        return f"{self.device.host}:{self.device.port} unit {self.device.unit_id}"

    async def _request(self, block_or_table: Table, address: int, count: int, what: str) -> Any:
        client = self._client
        if client is None or not client.connected:
            raise DeviceUnavailable(self.name, f"not connected to {self._where}")
        unit = self.device.unit_id
        call = {
            Table.COIL: client.read_coils,
            Table.DISCRETE_INPUT: client.read_discrete_inputs,
            Table.INPUT_REGISTER: client.read_input_registers,
            Table.HOLDING_REGISTER: client.read_holding_registers,
        }[block_or_table]
        try:
            # A second deadline around pymodbus' own: a reply that never comes must not hang a poll.
            async with asyncio.timeout(self.device.timeout_s * 1.5):
                response = await call(address, count=count, device_id=unit)
        except TimeoutError as exc:
            raise DeviceTimeout(self.name, f"no reply within {self.device.timeout_s} s", address=what) from exc
        except ModbusIOException as exc:
            raise DeviceTimeout(self.name, f"no reply: {exc}", address=what) from exc
        except (ConnectionException, OSError) as exc:
            raise DeviceUnavailable(self.name, f"connection lost: {exc}", address=what) from exc
        except ModbusException as exc:
            raise MalformedReply(self.name, str(exc), address=what) from exc
        if response.isError():
            code = getattr(response, "exception_code", None)
            meaning = EXCEPTION_CODES.get(code or 0, "unknown exception")
            raise DeviceFault(self.name, f"Modbus exception {code} ({meaning})", address=what)
        return response

    async def _read_block(self, block: Block) -> dict[str, float]:
        what = f"unit {self.device.unit_id} {block.describe(self.profile.addressing)}"
        response = await self._request(block.table, block.start, block.count, what)
        data = response.bits if block.table.is_bit else response.registers
        if len(data) < block.count:
            raise MalformedReply(self.name, f"asked for {block.count} values, got {len(data)}", address=what)
        return block.decode(data)

    async def read(self) -> Reading:
        """Read every block. A block the device refuses (exception code) marks only its signals
        bad; a lost connection or timeout fails the whole read."""
        timestamp_ns = time.time_ns()
        values: dict[str, float] = {}
        bad: dict[str, str] = {}
        for block in self.plan.blocks:
            try:
                values.update(await self._read_block(block))
            except (DeviceFault, MalformedReply) as exc:
                reason = str(exc)
                for name in block.names:
                    bad[name] = reason
        return Reading(device=self.name, timestamp_ns=timestamp_ns, values=values, bad=bad)

    def _writable(self, name: str) -> ModbusSignal:
        signal = self.profile.signals.get(name)
        if signal is None:
            raise WriteRefused(self.name, f"no signal {name!r} in profile {self.profile.model!r}")
        if signal.access is not Access.READ_WRITE:
            raise WriteRefused(self.name, f"{name} is read-only in the profile")
        return signal

    async def write(self, signal_name: str, value: float) -> float:
        """Write one signal (engineering units) and read it back.

        Refuses values outside the profile's min/max (the caller clamps if it wants to).
        Uses FC5 for a coil, FC6 for one register and FC16 for several.
        """
        signal = self._writable(signal_name)
        assert signal.min is not None
        assert signal.max is not None
        if not signal.min <= value <= signal.max:
            raise WriteRefused(self.name, f"{signal_name} = {value} is outside its limits [{signal.min}, {signal.max}]")
        client = self._client
        if client is None or not client.connected:
            raise DeviceUnavailable(self.name, f"not connected to {self._where}")
        address = self.profile.pdu_address(signal)
        what = f"unit {self.device.unit_id} {signal.table} {signal.address} ({signal_name})"
        try:
            raw = (value - signal.offset) / signal.scale
            words = encode_value(raw, signal.type, self.profile.order_of(signal))
        except CodecError as exc:
            raise WriteRefused(self.name, f"{signal_name}: {exc}", address=what) from exc
        unit = self.device.unit_id
        try:
            async with asyncio.timeout(self.device.timeout_s * 1.5):
                if signal.table is Table.COIL:
                    response = await client.write_coil(address, bool(words[0]), device_id=unit)
                elif WORDS[signal.type] == 1:
                    response = await client.write_register(address, words[0], device_id=unit)
                else:
                    response = await client.write_registers(address, words, device_id=unit)
        except (TimeoutError, ModbusIOException) as exc:
            raise DeviceTimeout(
                self.name, f"write not answered within {self.device.timeout_s} s", address=what
            ) from exc
        except (ConnectionException, OSError) as exc:
            raise DeviceUnavailable(self.name, f"connection lost during write: {exc}", address=what) from exc
        if response.isError():
            code = getattr(response, "exception_code", None)
            meaning = EXCEPTION_CODES.get(code or 0, "unknown exception")
            raise DeviceFault(self.name, f"write refused: Modbus exception {code} ({meaning})", address=what)
        readback = build_plan(self.profile, [signal_name]).blocks[0]
        back = (await self._read_block(readback))[signal_name]
        # One raw step of tolerance: the register holds a scaled integer.
        if abs(back - value) > abs(signal.scale) * 0.51 + 1e-9 * max(1.0, abs(value)):
            raise WriteRefused(self.name, f"{signal_name}: wrote {value}, read back {back}", address=what)
        return back
