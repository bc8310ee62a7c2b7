"""Register codec: turns Modbus register words into engineering values and back.

A value of N 16-bit words is first put into big-endian "ABCD" order (A = most significant
byte), then unpacked with :mod:`struct`. The byte-order token says where each byte of the
value sits in the words as they arrive:

=====  =========================================  =============================
token  words on the wire (32-bit example)          seen on
=====  =========================================  =============================
ABCD   [AB, CD]  big-endian, high word first       Modbus spec, most PLCs
CDAB   [CD, AB]  word-swapped                      many CDUs, Schneider, Danfoss
BADC   [BA, DC]  byte-swapped inside each word     some gateways
DCBA   [DC, BA]  little-endian                     PC-based devices
=====  =========================================  =============================

For 64-bit values the same rule extends over four words (``CDAB`` swaps every pair of
words: the low word comes first).
"""

from __future__ import annotations

import math
import struct
from enum import StrEnum
from typing import Final


class DataType(StrEnum):
    """Value types a signal can have; ``string`` only for fixed-length text."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class ByteOrder(StrEnum):
    """Where the bytes of a multi-register value sit; see the module docstring."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


#: registers (16-bit words) each type occupies; bool is one bit of a coil/discrete input
WORDS: Final[dict[DataType, int]] = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}

_STRUCT: Final[dict[DataType, str]] = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}

_INTEGER_RANGE: Final[dict[DataType, tuple[int, int]]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


class CodecError(ValueError):
    """A value cannot be encoded (out of the type's range, not finite) or decoded."""


def _reorder(words: list[int] | tuple[int, ...], order: ByteOrder) -> bytes:
    """Wire words -> big-endian bytes (ABCD). The permutation is its own inverse."""
    if order is ByteOrder.ABCD:
        return struct.pack(f">{len(words)}H", *words)
    if order is ByteOrder.CDAB:
        return struct.pack(f">{len(words)}H", *reversed(words))
    if order is ByteOrder.BADC:
        return struct.pack(f"<{len(words)}H", *words)
    return struct.pack(f"<{len(words)}H", *reversed(words))


def _to_words(raw: bytes, order: ByteOrder) -> list[int]:
    """Big-endian bytes (ABCD) -> wire words in ``order``."""
    count = len(raw) // 2
    if order is ByteOrder.ABCD:
        return list(struct.unpack(f">{count}H", raw))
    if order is ByteOrder.CDAB:
        return list(reversed(struct.unpack(f">{count}H", raw)))
    if order is ByteOrder.BADC:
        return list(struct.unpack(f"<{count}H", raw))
    return list(reversed(struct.unpack(f"<{count}H", raw)))


def decode_words(words: list[int] | tuple[int, ...], data_type: DataType, order: ByteOrder = ByteOrder.ABCD) -> float:
    """Decode one value from exactly ``WORDS[data_type]`` register words (no scaling)."""
    if data_type is DataType.BOOL:
        return float(words[0] != 0)
    if len(words) != WORDS[data_type]:
        raise CodecError(f"{data_type} needs {WORDS[data_type]} registers, got {len(words)}")
    value: float = struct.unpack(_STRUCT[data_type], _reorder(words, order))[0]
    return float(value)


def encode_value(value: float, data_type: DataType, order: ByteOrder = ByteOrder.ABCD) -> list[int]:
    """Encode a raw (already unscaled) value into register words in ``order``.

    Integer types round half away from zero and refuse values outside their range instead of
    wrapping: a setpoint that wraps from 327.68 to -327.68 degC must never reach a plant.
    """
    if data_type is DataType.BOOL:
        return [1 if value else 0]
    if not math.isfinite(value) and data_type not in (DataType.FLOAT32, DataType.FLOAT64):
        raise CodecError(f"{value} cannot be written as {data_type}")
    if data_type in _INTEGER_RANGE:
        low, high = _INTEGER_RANGE[data_type]
        if isinstance(value, int) or float(value).is_integer():
            integer = int(value)
        else:  # half away from zero; adding 0.5 is exact here (|value| < 2**52 when not integral)
            integer = math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)
        if not low <= integer <= high:
            raise CodecError(f"{value} is outside the {data_type} range [{low}, {high}]")
        raw = struct.pack(_STRUCT[data_type], integer)
    else:
        try:
            raw = struct.pack(_STRUCT[data_type], value)
        except OverflowError as exc:
            raise CodecError(f"{value} does not fit in {data_type}") from exc
    return _to_words(raw, order)
