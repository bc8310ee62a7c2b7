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

Two types are not numbers of a fixed width:

* ``bool`` is one bit: of a coil or discrete input, or bit 0-15 of a register
  (:func:`register_bit`; bit 0 is the least significant bit of the word).
* ``string`` is fixed-length text of N registers, two characters per register, the first
  character in the first register. Only the order of the two bytes inside each word varies:
  ``ABCD`` (first character in the high byte, as the Modbus spec and most devices do) or
  ``BADC`` (first character in the low byte). Trailing NULs and spaces are padding and are
  stripped (:func:`decode_string`, :func:`encode_string`).
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
    STRING = "string"


class ByteOrder(StrEnum):
    """Where the bytes of a multi-register value sit; see the module docstring."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


#: registers (16-bit words) each fixed-width type occupies; bool is one bit (of a coil, a
#: discrete input or a register); string has no entry: its length is part of the signal
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
    if data_type is DataType.STRING:
        raise CodecError("a string is not a number: use decode_string")
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
    if data_type is DataType.STRING:
        raise CodecError("a string is not a number: use encode_string")
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


def register_bit(word: int, bit: int) -> bool:
    """Bit ``bit`` (0 = least significant) of a register word."""
    return bool((word >> bit) & 1)


def with_register_bit(word: int, bit: int, value: bool) -> int:
    """``word`` with bit ``bit`` set to ``value`` and every other bit kept."""
    return word | (1 << bit) if value else word & ~(1 << bit) & 0xFFFF


def string_order(order: ByteOrder) -> ByteOrder:
    """The byte order inside each word of a string: ABCD (high byte first) or BADC.

    Text has no word order (the first character is always in the first register), so a
    profile default of CDAB means ABCD for strings and DCBA means BADC: the byte order
    inside each word is what they share.
    """
    return ByteOrder.ABCD if order in (ByteOrder.ABCD, ByteOrder.CDAB) else ByteOrder.BADC


_PADDING: Final = "\x00 "


def decode_string(words: list[int] | tuple[int, ...], order: ByteOrder = ByteOrder.ABCD) -> str:
    """Fixed-length text from register words; trailing NULs and spaces are padding.

    Bytes are read as Latin-1 so that every byte maps to one character and no reply can fail
    to decode: a device with a non-ASCII name still shows something a person can compare.
    """
    endian = ">" if string_order(order) is ByteOrder.ABCD else "<"
    raw = struct.pack(f"{endian}{len(words)}H", *words)
    return raw.decode("latin-1").rstrip(_PADDING)


def encode_string(text: str, length_registers: int, order: ByteOrder = ByteOrder.ABCD) -> list[int]:
    """Text padded with NULs to ``length_registers`` words; refuses text that does not fit."""
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise CodecError(f"{text!r} has characters that are not Latin-1") from exc
    if len(raw) > 2 * length_registers:
        raise CodecError(f"{text!r} is {len(raw)} bytes; {length_registers} registers hold {2 * length_registers}")
    raw = raw.ljust(2 * length_registers, b"\x00")
    endian = ">" if string_order(order) is ByteOrder.ABCD else "<"
    return list(struct.unpack(f"{endian}{length_registers}H", raw))
