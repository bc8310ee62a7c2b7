"""Device profiles: what a device model exposes, as data (``config/profiles/*.yaml``).

A profile is reused by every site that has that model: it declares each signal's address,
data type, scaling and access, and the code only decodes. Engineering value =
raw * scale + offset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.codec import WORDS, ByteOrder, DataType

SIGNAL_NAME = r"^[a-z][a-z0-9_]*$"


class Table(StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"

    @property
    def is_bit(self) -> bool:
        """Coils and discrete inputs hold single bits."""
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        """Only coils and holding registers can be written."""
        return self in (Table.COIL, Table.HOLDING_REGISTER)


class Access(StrEnum):
    """Whether the gateway may write a signal."""

    READ = "read"
    READ_WRITE = "read_write"


class _Model(BaseModel):
    # NaN compares false with everything: a NaN min or max would silently disable a write limit.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _SignalBase(_Model):
    unit: str = Field("", description="Engineering unit, for people and dashboards (degC, kW, l/min)")
    access: Access = Field(Access.READ, description="read, or read_write (needs min and max)")
    min: float | None = Field(None, description="Lowest engineering value a write may set")
    max: float | None = Field(None, description="Highest engineering value a write may set")
    description: str = Field("", description="What the signal is, in the vendor manual's words")
    valid_min: float | None = Field(
        None,
        description="Lowest value the instrument can report (its measuring range); a reading below is bad "
        "(left out of the published line, no value for control) and logged once as signal_invalid",
    )
    valid_max: float | None = Field(
        None,
        description="Highest value the instrument can report (its measuring range); a reading above is bad",
    )
    stale_after_s: float | None = Field(
        None,
        gt=0,
        description="Publish the signal as stale (quality stale in the gateway measurement) when its value "
        "has not changed at all for this long; omitted = never. Set it only for signals that always move "
        "when healthy (a measured temperature, flow or power), to several times the longest a healthy value "
        "can sit still at its resolution: a 0.01 K sensor with noise changes every poll, a 1 K one may rest "
        "for minutes",
    )

    @model_validator(mode="after")
    def _check_limits(self) -> Self:
        if self.access is Access.READ_WRITE and (self.min is None or self.max is None):
            raise ValueError("a read_write signal needs both min and max write limits")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"write limits: min {self.min} is greater than max {self.max}")
        if self.valid_min is not None and self.valid_max is not None and self.valid_min > self.valid_max:
            raise ValueError(f"measuring range: valid_min {self.valid_min} is greater than valid_max {self.valid_max}")
        return self

    def valid_range(self) -> tuple[float, float] | None:
        """``(valid_min, valid_max)`` with the missing side open; None when neither is set."""
        if self.valid_min is None and self.valid_max is None:
            return None
        low = -math.inf if self.valid_min is None else self.valid_min
        return low, math.inf if self.valid_max is None else self.valid_max


class WriteOutOfRange(StrEnum):
    """What a write outside a signal's min/max does."""

    REFUSE = "refuse"
    CLAMP = "clamp"


class ModbusSignal(_SignalBase):
    """One value in a Modbus register map."""

    table: Table = Field(description="coil, discrete_input, input_register or holding_register")
    address: int = Field(ge=0, le=65535, description="Address as the manual gives it (see addressing)")
    type: DataType = Field(description="bool, int16, uint16, int32, uint32, int64, uint64, float32, float64 or string")
    byte_order: ByteOrder | None = Field(
        None,
        description="ABCD, CDAB, BADC or DCBA; the profile's byte_order when omitted. "
        "A string takes ABCD (first character in the high byte) or BADC",
    )
    scale: float = Field(1.0, description="Engineering value = raw * scale + offset")
    offset: float = Field(0.0, description="Engineering value = raw * scale + offset")
    bit: int | None = Field(
        None,
        ge=0,
        le=15,
        description="For type bool in a holding_register or input_register: which bit of the "
        "register, 0 = least significant. Several bit signals may share one register",
    )
    length_registers: int | None = Field(
        None,
        ge=1,
        le=125,
        description="For type string: registers the text occupies (two characters each); "
        "trailing NULs and spaces are stripped",
    )

    @model_validator(mode="after")
    def _check_table(self) -> Self:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.table.is_bit and self.type is not DataType.BOOL:
            raise ValueError(f"a {self.table} holds one bit: type must be bool, not {self.type}")
        if self.bit is not None and (self.table.is_bit or self.type is not DataType.BOOL):
            raise ValueError(
                f"bit is for type bool in a holding_register or input_register, not {self.type} in a {self.table}"
            )
        if not self.table.is_bit and self.type is DataType.BOOL and self.bit is None:
            raise ValueError(
                f"type bool needs table coil or discrete_input, or a bit (0-15) of the register, not {self.table}"
            )
        self._check_string()
        if self.access is Access.READ_WRITE and not self.table.writable:
            raise ValueError(f"a {self.table} cannot be written: access must be read")
        return self

    def _check_string(self) -> None:
        """A string has a length, a byte order of whole registers, and is read-only; nothing else has a length."""
        if self.type is not DataType.STRING:
            if self.length_registers is not None:
                raise ValueError(f"length_registers is for type string, not {self.type}")
            return
        if self.length_registers is None:
            raise ValueError("type string needs length_registers (two characters per register)")
        if self.byte_order not in (None, ByteOrder.ABCD, ByteOrder.BADC):
            raise ValueError(f"a string's byte_order is ABCD or BADC, not {self.byte_order}")
        if self.access is Access.READ_WRITE:
            raise ValueError("a string is read-only: access must be read")

    @property
    def width(self) -> int:
        """Registers (or bits) this signal occupies."""
        if self.table.is_bit or self.bit is not None:
            return 1
        if self.length_registers is not None:
            return self.length_registers
        return WORDS[self.type]

    @property
    def is_register_bit(self) -> bool:
        """True for a bool that is one bit of a holding or input register."""
        return self.bit is not None


class HeartbeatMode(StrEnum):
    """How the gateway's heartbeat changes from one write to the next."""

    COUNTER = "counter"
    TOGGLE = "toggle"
    ECHO = "echo"


class Watchdog(_Model):
    """The device's BMS watchdog and the heartbeat that keeps it armed (``watchdog:`` in a profile).

    Nothing is written as a heartbeat unless the profile declares it here: a signal called
    ``heartbeat`` is only a name.
    """

    heartbeat: str = Field(pattern=SIGNAL_NAME, description="The writable signal the gateway writes as its heartbeat")
    mode: HeartbeatMode = Field(
        description="counter: a value that changes every write (wraps within the signal's min..max); "
        "toggle: min and max alternately; echo: the value last read from echo_of, written back"
    )
    echo_of: str | None = Field(
        None, pattern=SIGNAL_NAME, description="echo: the signal the device changes and expects written back"
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="Seconds without a new heartbeat after which the device drops what the gateway wrote "
        "and runs on its local values (as configured on the device); null = the device has no watchdog "
        "(the heartbeat is only shown)",
    )
    timeout_signal: str | None = Field(
        None,
        pattern=SIGNAL_NAME,
        description="The signal that reports the device's watchdog timeout, compared with timeout_s by "
        "`heat-gateway check --control`",
    )
    period_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="Seconds between heartbeat writes the vendor recommends; the site's control section may "
        "override it. Default: as rare as the timeout allows (see docs/control.md)",
    )

    @model_validator(mode="after")
    def _check_mode(self) -> Self:
        if self.mode is HeartbeatMode.ECHO and self.echo_of is None:
            raise ValueError("mode echo needs echo_of: the signal whose value is written back")
        if self.mode is not HeartbeatMode.ECHO and self.echo_of is not None:
            raise ValueError(f"echo_of is for mode echo, not {self.mode}")
        return self


def check_watchdog(watchdog: Watchdog | None, signals: Mapping[str, _SignalBase]) -> None:
    """The watchdog's signals exist, the heartbeat is writable and a counter has room to count."""
    if watchdog is None:
        return
    heartbeat = signals.get(watchdog.heartbeat)
    if heartbeat is None:
        raise ValueError(f"watchdog.heartbeat: no signal {watchdog.heartbeat!r} in signals")
    if heartbeat.access is not Access.READ_WRITE:
        raise ValueError(f"watchdog.heartbeat: signal {watchdog.heartbeat!r} is read-only (access must be read_write)")
    assert heartbeat.min is not None
    assert heartbeat.max is not None
    if watchdog.mode is not HeartbeatMode.ECHO and heartbeat.max - heartbeat.min < 1:
        raise ValueError(
            f"watchdog.heartbeat: a {watchdog.mode} needs two values: {watchdog.heartbeat!r} allows only "
            f"{heartbeat.min:g}..{heartbeat.max:g}"
        )
    for key in ("echo_of", "timeout_signal"):
        name = getattr(watchdog, key)
        if name is not None and name not in signals:
            raise ValueError(f"watchdog.{key}: no signal {name!r} in signals")


class ModbusProfile(_Model):
    """Register map of one Modbus device model, and the quirks of its Modbus implementation."""

    protocol: Literal["modbus"] = Field(description="modbus")
    model: str = Field(description="Vendor and model this map is for")
    addressing: Literal[0, 1] = Field(
        0,
        description="0: addresses are PDU addresses (0-65535); 1: they are 1-based register "
        "numbers as many manuals print them (register 1 = PDU address 0)",
    )
    byte_order: ByteOrder = Field(ByteOrder.ABCD, description="Default byte order of multi-register values")
    max_registers_per_request: int = Field(
        125, ge=1, le=125, description="Largest register read the device accepts (Modbus limit 125)"
    )
    max_bits_per_request: int = Field(
        2000, ge=1, le=2000, description="Largest coil/discrete-input read (Modbus limit 2000)"
    )
    max_gap: int = Field(
        16,
        ge=0,
        le=124,
        description="Unused registers a request may span to merge two groups into one read",
    )
    one_request_per_signal: bool = Field(
        default=False,
        description="true: never merge signals into one request (for devices that refuse reads "
        "spanning more than one value); bit fields of one register still share its read",
    )
    pause_after_connect_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Seconds to wait after the TCP connection opens before the first request "
        "(for devices that drop requests arriving right after a connect)",
    )
    pause_between_requests_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Least time between the end of one request and the start of the next on the "
        "connection (for slow devices and serial gateways); on a connection shared by several "
        "unit ids the longest pause of the devices sharing it applies to every request",
    )
    write_single_with_fc16: bool = Field(
        default=False,
        description="true: write a single register with FC16 and a single coil with FC15, for "
        "devices that implement only the 'write multiple' functions",
    )
    write_out_of_range: WriteOutOfRange = Field(
        WriteOutOfRange.REFUSE,
        description="A write outside a signal's min/max is refused (refuse) or set to the "
        "nearest limit and logged with the requested and the applied value (clamp)",
    )
    signals: dict[Annotated[str, Field(pattern=SIGNAL_NAME)], ModbusSignal] = Field(
        description="Signal name (snake_case, unit suffix) -> where and how to read it"
    )
    watchdog: Watchdog | None = Field(
        None, description="The device's BMS watchdog and heartbeat (heartbeat, mode, echo_of, timeout_s, period_s)"
    )

    @model_validator(mode="after")
    def _check_map(self) -> Self:
        check_watchdog(self.watchdog, self.signals)
        spans: dict[Table, list[tuple[int, int, str, int | None]]] = {}
        for name, signal in self.signals.items():
            start = signal.address - self.addressing
            if start < 0:
                raise ValueError(f"signals.{name}.address: 0 is not a register number with addressing 1")
            end = start + signal.width - 1
            if end > 65535:
                raise ValueError(f"signals.{name}.address: {signal.type} at {signal.address} runs past register 65535")
            spans.setdefault(signal.table, []).append((start, end, name, signal.bit))
        for table, items in spans.items():
            self._check_overlaps(table, items)
        return self

    def _check_overlaps(self, table: Table, items: list[tuple[int, int, str, int | None]]) -> None:
        """(start, end, name, bit) of one table's signals: only bit fields of one register may share it."""
        # Sweep in address order, against the signal reaching furthest so far: only bit
        # fields of one and the same register may share it, and never the same bit.
        items.sort(key=lambda item: (item[0], item[1], item[3] is not None, item[2]))
        reach: tuple[int, int, str, int | None] | None = None
        bits_used: dict[tuple[int, int], str] = {}
        for item in items:
            start, end, name, bit = item
            if bit is not None:
                other = bits_used.setdefault((start, bit), name)
                if other != name:
                    raise ValueError(
                        f"signals.{name} uses bit {bit} of {table} {start + self.addressing} like signals.{other}"
                    )
            if reach is not None and start <= reach[1]:
                both_bits = bit is not None and reach[3] is not None and start == reach[0]
                if not both_bits:
                    where = f"{table} at address {start + self.addressing}"
                    raise ValueError(f"signals.{name} overlaps signals.{reach[2]} in {where}")
            if reach is None or end > reach[1] or (end == reach[1] and bit is None):
                reach = item

    def pdu_address(self, signal: ModbusSignal) -> int:
        """The address that goes on the wire."""
        return signal.address - self.addressing

    def order_of(self, signal: ModbusSignal) -> ByteOrder:
        """The signal's byte order, or the profile default.

        The profile default is for multi-register values: a 16-bit value is big-endian (ABCD)
        as the Modbus spec has it, unless the signal itself says otherwise. Reads, writes and
        the simulator all ask here, so that a DCBA profile cannot byte-swap a 16-bit setpoint
        on the way out while reading it back unswapped.
        """
        if signal.byte_order is not None:
            return signal.byte_order
        if signal.type in (DataType.INT16, DataType.UINT16):
            return ByteOrder.ABCD
        return self.byte_order


OpcUaType = DataType | Literal["string"]


class OpcUaSignal(_SignalBase):
    """One OPC UA variable."""

    node: str = Field(
        description="Node id: 'ns=2;s=Name', 'ns=2;i=1001', or robust to server restarts "
        "'nsu=urn:vendor:plc;s=Name' (namespace index resolved at connect)"
    )
    type: OpcUaType = Field(description="Expected data type; writes convert to it")


class OpcUaProfile(_Model):
    """Node list of one OPC UA device model."""

    protocol: Literal["opcua"] = Field(description="opcua")
    model: str = Field(description="Vendor and model this node list is for")
    namespace_uri: str | None = Field(None, description="The device's application namespace URI")
    signals: dict[Annotated[str, Field(pattern=SIGNAL_NAME)], OpcUaSignal] = Field(description="Signal name -> node")
    watchdog: Watchdog | None = Field(
        None, description="The device's BMS watchdog and heartbeat (heartbeat, mode, echo_of, timeout_s, period_s)"
    )

    @model_validator(mode="after")
    def _check_watchdog(self) -> Self:
        check_watchdog(self.watchdog, self.signals)
        return self


Profile = Annotated[ModbusProfile | OpcUaProfile, Field(discriminator="protocol")]
