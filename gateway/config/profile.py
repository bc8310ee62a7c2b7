"""Device profiles: what a device model exposes, as data (``config/profiles/*.yaml``).

A profile is reused by every site that has that model: it declares each signal's address,
data type, scaling and access, and the code only decodes. Engineering value =
raw * scale + offset.
"""

from __future__ import annotations

import itertools
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
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SignalBase(_Model):
    unit: str = Field("", description="Engineering unit, for people and dashboards (degC, kW, l/min)")
    access: Access = Field(Access.READ, description="read, or read_write (needs min and max)")
    min: float | None = Field(None, description="Lowest engineering value a write may set")
    max: float | None = Field(None, description="Highest engineering value a write may set")
    description: str = Field("", description="What the signal is, in the vendor manual's words")

    @model_validator(mode="after")
    def _check_limits(self) -> Self:
        if self.access is Access.READ_WRITE and (self.min is None or self.max is None):
            raise ValueError("a read_write signal needs both min and max write limits")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"write limits: min {self.min} is greater than max {self.max}")
        return self


class ModbusSignal(_SignalBase):
    """One value in a Modbus register map."""

    table: Table = Field(description="coil, discrete_input, input_register or holding_register")
    address: int = Field(ge=0, le=65535, description="Address as the manual gives it (see addressing)")
    type: DataType = Field(description="bool, int16, uint16, int32, uint32, int64, uint64, float32, float64")
    byte_order: ByteOrder | None = Field(
        None, description="ABCD, CDAB, BADC or DCBA; the profile's byte_order when omitted"
    )
    scale: float = Field(1.0, description="Engineering value = raw * scale + offset")
    offset: float = Field(0.0, description="Engineering value = raw * scale + offset")

    @model_validator(mode="after")
    def _check_table(self) -> Self:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.table.is_bit and self.type is not DataType.BOOL:
            raise ValueError(f"a {self.table} holds one bit: type must be bool, not {self.type}")
        if not self.table.is_bit and self.type is DataType.BOOL:
            raise ValueError(f"type bool needs table coil or discrete_input, not {self.table}")
        if self.access is Access.READ_WRITE and not self.table.writable:
            raise ValueError(f"a {self.table} cannot be written: access must be read")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits) this signal occupies."""
        return 1 if self.table.is_bit else WORDS[self.type]


class ModbusProfile(_Model):
    """Register map of one Modbus device model."""

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
    signals: dict[Annotated[str, Field(pattern=SIGNAL_NAME)], ModbusSignal] = Field(
        description="Signal name (snake_case, unit suffix) -> where and how to read it"
    )

    @model_validator(mode="after")
    def _check_map(self) -> Self:
        spans: dict[Table, list[tuple[int, int, str]]] = {}
        for name, signal in self.signals.items():
            start = signal.address - self.addressing
            if start < 0:
                raise ValueError(f"signals.{name}.address: 0 is not a register number with addressing 1")
            end = start + signal.width - 1
            if end > 65535:
                raise ValueError(f"signals.{name}.address: {signal.type} at {signal.address} runs past register 65535")
            spans.setdefault(signal.table, []).append((start, end, name))
        for table, items in spans.items():
            items.sort()
            for (_, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(items):
                if start_b <= end_a:
                    raise ValueError(
                        f"signals.{name_b} overlaps signals.{name_a} in {table} at address {start_b + self.addressing}"
                    )
        return self

    def pdu_address(self, signal: ModbusSignal) -> int:
        """The address that goes on the wire."""
        return signal.address - self.addressing

    def order_of(self, signal: ModbusSignal) -> ByteOrder:
        """The signal's byte order, or the profile default."""
        return signal.byte_order or self.byte_order


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


Profile = Annotated[ModbusProfile | OpcUaProfile, Field(discriminator="protocol")]
