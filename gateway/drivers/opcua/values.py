"""Values both ways: a DataValue filed as good, uncertain or bad; a number encoded for a write."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from gateway.config.profile import OpcUaSignal
from gateway.drivers.opcua.nodes import NodeRef
from gateway.drivers.opcua.status import status_name
from gateway.sample import Reading

#: Profile type -> the variant a write sends when the server's DataType says nothing usable.
VARIANT_OF_TYPE: dict[str, ua.VariantType] = {
    "bool": ua.VariantType.Boolean,
    "int16": ua.VariantType.Int16,
    "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32,
    "uint32": ua.VariantType.UInt32,
    "int64": ua.VariantType.Int64,
    "uint64": ua.VariantType.UInt64,
    "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double,
    "string": ua.VariantType.String,
}

_INTEGER_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
NUMERIC = {*_INTEGER_RANGES, ua.VariantType.Float, ua.VariantType.Double}

# Standard DataTypes that are not built-in types but always travel as one (OPC 10000-3 / -5).
DATA_TYPE_ALIASES: dict[int, ua.VariantType] = {
    290: ua.VariantType.Double,  # Duration
    294: ua.VariantType.DateTime,  # UtcTime
    288: ua.VariantType.UInt32,  # IntegerId
    17588: ua.VariantType.UInt32,  # Index
    289: ua.VariantType.UInt32,  # Counter
}


def _datetime_ns(moment: datetime | None) -> int | None:
    if moment is None or moment.year < 1602:  # OPC UA's "no time" is 1601-01-01
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _number(value: Any) -> float | None:
    """A variant value as a float; ``None`` when it is not a single number."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def variant_for_write(value: float, vtype: ua.VariantType) -> Any:
    """The Python value asyncua encodes as ``vtype``; ``ValueError`` when it does not fit."""
    if vtype is ua.VariantType.Boolean:
        if value not in (0.0, 1.0):
            raise ValueError(f"a Boolean node takes 0 or 1, not {value:g}")
        return bool(value)
    if vtype in _INTEGER_RANGES:
        if not math.isfinite(value):
            raise ValueError(f"an {vtype.name} node cannot hold {value}")
        low, high = _INTEGER_RANGES[vtype]
        whole = round(value)
        if not low <= whole <= high:
            raise ValueError(f"{value:g} does not fit the node's type {vtype.name} [{low}, {high}]")
        return whole
    if vtype is ua.VariantType.Float:
        if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
            raise ValueError(f"{value:g} does not fit the node's type Float")
        return float(value)
    if vtype is ua.VariantType.Double:
        return float(value)
    raise ValueError(f"the node's type is {vtype.name}: the gateway writes numbers only")


def as_sent(value: Any, vtype: ua.VariantType) -> float:
    """What the server should hold after the write, as the read-back will show it."""
    if vtype is ua.VariantType.Float:
        sent: float = struct.unpack("<f", struct.pack("<f", value))[0]
        return sent
    return float(value)


@dataclass(slots=True)
class Node:
    """One signal's node on the connected server."""

    signal: str
    spec: OpcUaSignal
    ref: NodeRef
    node_id: ua.NodeId
    variant: ua.VariantType | None = None  # from the server's DataType; None when unknown


@dataclass(slots=True)
class ReadOut:
    """Readings in the making: Reading's dicts plus the newest value timestamp."""

    values: dict[str, float] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    uncertain: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    newest_ns: int | None = None
    #: the signals in ``bad`` because the server said so (a Bad status), not for want of a value
    bad_status: dict[str, str] = field(default_factory=dict)

    def add(self, node: Node, data: ua.DataValue) -> None:
        """File one DataValue under good, uncertain or bad."""
        status = data.StatusCode.value if data.StatusCode is not None else 0
        name = node.signal
        severity = status & 0xC0000000
        if severity not in (0, 0x40000000):
            self.bad[name] = self.bad_status[name] = status_name(status)
            return
        raw = data.Value.Value if data.Value is not None else None
        if raw is None:
            self.bad[name] = "null value" if severity == 0 else f"{status_name(status)}, null value"
            return
        if node.spec.type == "string":
            if severity == 0:
                self.texts[name] = str(raw)
                self._stamp(data)
            else:  # texts holds good strings only
                self.bad[name] = status_name(status)
            return
        number = _number(raw)
        if number is None:
            self.bad[name] = f"not a number ({type(raw).__name__})"
            return
        if severity == 0:
            self.values[name] = number
        else:
            self.uncertain[name] = number
        self._stamp(data)

    def only_bad_statuses(self) -> bool:
        """True when the server answered, but every node with a Bad status: nothing to publish."""
        good = self.values or self.uncertain or self.texts
        return bool(self.bad) and not good and self.bad.keys() == self.bad_status.keys()

    def _stamp(self, data: ua.DataValue) -> None:
        stamp = _datetime_ns(data.SourceTimestamp) or _datetime_ns(data.ServerTimestamp)
        if stamp is not None and (self.newest_ns is None or stamp > self.newest_ns):
            self.newest_ns = stamp

    def reading(self, device: str, received_ns: int) -> Reading:
        """The Reading, stamped with the newest source timestamp (never later than receipt:
        a device clock running ahead must not make its values look fresher than they are)."""
        stamp = received_ns if self.newest_ns is None else min(self.newest_ns, received_ns)
        return Reading(device, stamp, self.values, self.bad, self.uncertain, self.texts)
