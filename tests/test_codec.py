"""Decoding every data type in every byte order from hand-computed register words."""

from __future__ import annotations

import math
import struct

import pytest

from gateway.codec import (
    ByteOrder,
    CodecError,
    DataType,
    decode_string,
    decode_words,
    encode_string,
    encode_value,
    register_bit,
    with_register_bit,
)
from gateway.config.profile import ModbusProfile
from gateway.drivers.modbus_plan import build_plan

A, C, B, D = ByteOrder.ABCD, ByteOrder.CDAB, ByteOrder.BADC, ByteOrder.DCBA

# (type, order, words on the wire, value): every word list is written out by hand.
CASES = [
    (DataType.INT16, A, [0x0001], 1),
    (DataType.INT16, A, [0xFFFF], -1),
    (DataType.INT16, A, [0x8000], -32768),
    (DataType.UINT16, A, [0xFFFF], 65535),
    # 0x12345678 = 305419896
    (DataType.UINT32, A, [0x1234, 0x5678], 305419896),
    (DataType.UINT32, C, [0x5678, 0x1234], 305419896),
    (DataType.UINT32, B, [0x3412, 0x7856], 305419896),
    (DataType.UINT32, D, [0x7856, 0x3412], 305419896),
    # -2 = 0xFFFFFFFE
    (DataType.INT32, A, [0xFFFF, 0xFFFE], -2),
    (DataType.INT32, C, [0xFFFE, 0xFFFF], -2),
    (DataType.INT32, B, [0xFFFF, 0xFEFF], -2),
    (DataType.INT32, D, [0xFEFF, 0xFFFF], -2),
    # 41.5 as IEEE 754 single = 0x42260000
    (DataType.FLOAT32, A, [0x4226, 0x0000], 41.5),
    (DataType.FLOAT32, C, [0x0000, 0x4226], 41.5),
    (DataType.FLOAT32, B, [0x2642, 0x0000], 41.5),
    (DataType.FLOAT32, D, [0x0000, 0x2642], 41.5),
    # -12.25 single = 0xC1440000
    (DataType.FLOAT32, A, [0xC144, 0x0000], -12.25),
    (DataType.FLOAT32, D, [0x0000, 0x44C1], -12.25),
    # 0x0012345678ABCDEF = 5124095577148911 (below 2**53: values are floats, exact to 53 bits)
    (DataType.UINT64, A, [0x0012, 0x3456, 0x78AB, 0xCDEF], 5124095577148911),
    (DataType.UINT64, C, [0xCDEF, 0x78AB, 0x3456, 0x0012], 5124095577148911),
    (DataType.UINT64, B, [0x1200, 0x5634, 0xAB78, 0xEFCD], 5124095577148911),
    (DataType.UINT64, D, [0xEFCD, 0xAB78, 0x5634, 0x1200], 5124095577148911),
    # -1 as int64
    (DataType.INT64, A, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1),
    # -3 = 0xFFFFFFFFFFFFFFFD
    (DataType.INT64, C, [0xFFFD, 0xFFFF, 0xFFFF, 0xFFFF], -3),
    # 1234.5 as double = 0x40934A0000000000
    (DataType.FLOAT64, A, [0x4093, 0x4A00, 0x0000, 0x0000], 1234.5),
    (DataType.FLOAT64, C, [0x0000, 0x0000, 0x4A00, 0x4093], 1234.5),
    (DataType.FLOAT64, B, [0x9340, 0x004A, 0x0000, 0x0000], 1234.5),
    (DataType.FLOAT64, D, [0x0000, 0x0000, 0x004A, 0x9340], 1234.5),
    # -0.5 double = 0xBFE0000000000000
    (DataType.FLOAT64, D, [0x0000, 0x0000, 0x0000, 0xE0BF], -0.5),
]


@pytest.mark.parametrize(("data_type", "order", "words", "value"), CASES)
def test_decode_hand_computed(data_type, order, words, value):
    assert decode_words(words, data_type, order) == value


@pytest.mark.parametrize(("data_type", "order", "words", "value"), CASES)
def test_encode_is_the_inverse(data_type, order, words, value):
    assert encode_value(value, data_type, order) == words


@pytest.mark.parametrize("order", list(ByteOrder))
def test_nan_float32_and_float64(order):
    # 0x7FC00000 quiet NaN single; 0x7FF8000000000000 quiet NaN double
    words32 = encode_value(math.nan, DataType.FLOAT32, order)
    assert math.isnan(decode_words(words32, DataType.FLOAT32, order))
    assert decode_words([0x7FC0, 0x0000], DataType.FLOAT32, A) != decode_words([0x7FC0, 0x0000], DataType.FLOAT32, A)
    assert math.isnan(decode_words([0x7FF8, 0, 0, 0], DataType.FLOAT64, A))


def test_integer_encoding_refuses_to_wrap():
    with pytest.raises(CodecError, match="outside the int16 range"):
        encode_value(32768, DataType.INT16)
    with pytest.raises(CodecError, match="uint16"):
        encode_value(-1, DataType.UINT16)
    with pytest.raises(CodecError, match="cannot be written"):
        encode_value(math.nan, DataType.INT32)


def test_rounding_half_away_from_zero():
    assert encode_value(41.5, DataType.INT16) == [42]
    assert encode_value(-41.5, DataType.INT16) == [0xFFD6]  # -42


def _profile(signals: dict, **extra) -> ModbusProfile:
    return ModbusProfile.model_validate({"protocol": "modbus", "model": "test", "signals": signals, **extra})


def decoded(block, data: list[int]) -> dict[str, float]:
    """``block.decode(data)``, after checking that decoding the same reply as it comes off the
    wire (function code, byte count, data bytes) gives exactly the same values."""
    if block.table.is_bit:
        chunks = [data[start : start + 8] for start in range(0, block.count, 8)]
        packed = bytes(sum(bit << i for i, bit in enumerate(chunk)) for chunk in chunks)
    else:
        packed = struct.pack(f">{block.count}H", *data[: block.count])
    pdu = block.pdu[:1] + bytes([len(packed)]) + packed
    values = block.decode(data)
    from_wire = block.decode_reply(pdu)
    assert from_wire == values
    assert [type(value) for value in from_wire.values()] == [float] * len(values)
    assert list(from_wire) == list(values)  # same order: the line protocol template depends on it
    if not block.table.is_bit:
        assert block.reply_words(pdu) == data[: block.count]
    return values


def test_block_decoder_applies_scale_offset_and_per_signal_order():
    profile = _profile(
        {
            "temp_c": {"table": "input_register", "address": 0, "type": "int16", "scale": 0.01},
            "flow_lpm": {"table": "input_register", "address": 1, "type": "uint16", "scale": 0.1},
            "load_kw": {"table": "input_register", "address": 2, "type": "float32", "byte_order": "CDAB"},
            "energy": {"table": "input_register", "address": 4, "type": "uint32", "byte_order": "DCBA"},
            "offset_c": {"table": "input_register", "address": 6, "type": "int16", "scale": 0.5, "offset": -40},
            "big": {"table": "input_register", "address": 7, "type": "float64", "byte_order": "BADC"},
        }
    )
    plan = build_plan(profile)
    assert len(plan.blocks) == 1
    words = [
        0xFED4,  # -300 * 0.01 = -3.0
        0x0BB8,  # 3000 * 0.1 = 300.0
        0x0000,
        0x4226,  # 41.5 word-swapped
        0x7856,
        0x3412,  # 305419896 little-endian
        0x0064,  # 100 * 0.5 - 40 = 10.0
        0x9340,
        0x004A,
        0x0000,
        0x0000,  # 1234.5 byte-swapped
    ]
    values = decoded(plan.blocks[0], words)
    assert values == pytest.approx(
        {"temp_c": -3.0, "flow_lpm": 300.0, "load_kw": 41.5, "energy": 305419896, "offset_c": 10.0, "big": 1234.5}
    )


def test_bit_block_decodes_offsets():
    profile = _profile(
        {
            "pump_running": {"table": "discrete_input", "address": 3, "type": "bool"},
            "leak": {"table": "discrete_input", "address": 5, "type": "bool"},
        }
    )
    block = build_plan(profile).blocks[0]
    assert (block.start, block.count) == (3, 3)
    assert decoded(block, [1, 0, 0, 0, 0, 0, 0, 0]) == {"pump_running": 1.0, "leak": 0.0}
    assert decoded(block, [0, 0, 1, 0, 0, 0, 0, 0]) == {"pump_running": 0.0, "leak": 1.0}
    assert block.pdu == bytes([2, 0, 3, 0, 3])  # FC2, start 3, 3 inputs


# Strings: "CDU-7" is C=0x43 D=0x44 U=0x55 -=0x2D 7=0x37, padded with NULs to 4 registers.
STRING_CASES = [
    (A, [0x4344, 0x552D, 0x3700, 0x0000], "CDU-7"),
    (B, [0x4443, 0x2D55, 0x0037, 0x0000], "CDU-7"),
    # a word-swapped profile default still means "high byte first" for text
    (C, [0x4344, 0x552D, 0x3700, 0x0000], "CDU-7"),
    (D, [0x4443, 0x2D55, 0x0037, 0x0000], "CDU-7"),
]


@pytest.mark.parametrize(("order", "words", "text"), STRING_CASES)
def test_string_decode_and_encode_hand_computed(order, words, text):
    assert decode_string(words, order) == text
    assert encode_string(text, 4, order) == words


def test_string_padding_with_spaces_and_nuls_is_stripped_but_inner_spaces_kept():
    # "A B" then two spaces then a NUL: 0x41 0x20 0x42 0x20 0x20 0x00
    assert decode_string([0x4120, 0x4220, 0x2000], A) == "A B"
    assert decode_string([0x0000, 0x0000], A) == ""


def test_string_that_does_not_fit_is_refused():
    with pytest.raises(CodecError, match="2 registers hold 4"):
        encode_string("HELLO", 2)
    with pytest.raises(CodecError, match="not Latin-1"):
        encode_string("\u20ac", 2)


def test_string_is_not_a_number():
    with pytest.raises(CodecError, match="decode_string"):
        decode_words([0x4142], DataType.STRING)
    with pytest.raises(CodecError, match="encode_string"):
        encode_value(1.0, DataType.STRING)


def test_register_bits():
    assert [register_bit(0b1000_0000_0000_1001, bit) for bit in (0, 1, 3, 15)] == [True, False, True, True]
    assert with_register_bit(0x00F0, 0, True) == 0x00F1
    assert with_register_bit(0x00F0, 4, False) == 0x00E0
    assert with_register_bit(0xFFFF, 15, False) == 0x7FFF


def test_block_decodes_bits_and_strings_beside_numbers():
    profile = _profile(
        {
            "pump_on": {"table": "holding_register", "address": 10, "type": "bool", "bit": 0},
            "valve_open": {"table": "holding_register", "address": 10, "type": "bool", "bit": 3},
            "alarm": {"table": "holding_register", "address": 10, "type": "bool", "bit": 15},
            "speed_pct": {"table": "holding_register", "address": 11, "type": "uint16", "scale": 0.1},
            "serial": {"table": "holding_register", "address": 12, "type": "string", "length_registers": 3},
            "tag": {
                "table": "holding_register",
                "address": 15,
                "type": "string",
                "length_registers": 1,
                "byte_order": "BADC",
            },
            "load_kw": {"table": "holding_register", "address": 16, "type": "float32", "byte_order": "CDAB"},
        }
    )
    plan = build_plan(profile)
    assert len(plan.blocks) == 1
    block = plan.blocks[0]
    assert set(block.names) == set(profile.signals)
    words = [
        0b1000_0000_0000_0001,  # bit 0 and bit 15 set, bit 3 clear
        0x01F4,  # 500 * 0.1
        0x4142,
        0x4300,
        0x0000,  # "ABC" then padding
        0x4241,  # "AB" byte-swapped
        0x0000,
        0x4226,  # 41.5 word-swapped
    ]
    assert decoded(block, words) == pytest.approx(
        {"pump_on": 1.0, "valve_open": 0.0, "alarm": 1.0, "speed_pct": 50.0, "load_kw": 41.5}
    )
    assert block.decode_texts(words) == {"serial": "ABC", "tag": "AB"}
    # the numbers still decode with one struct call per byte-order group
    assert len(block.groups) == 2


def test_profile_byte_order_is_for_multi_register_values_and_16_bit_values_swap_only_when_told():
    profile = _profile(
        {
            "setpoint": {"table": "holding_register", "address": 0, "type": "int16"},
            "swapped": {"table": "holding_register", "address": 1, "type": "uint16", "byte_order": "BADC"},
            "also_swapped": {"table": "holding_register", "address": 2, "type": "int16", "byte_order": "DCBA"},
            "word_order_only": {"table": "holding_register", "address": 3, "type": "uint16", "byte_order": "CDAB"},
            "load_kw": {"table": "holding_register", "address": 4, "type": "float32"},
        },
        byte_order="DCBA",
    )
    signals = profile.signals
    assert profile.order_of(signals["setpoint"]) is A
    assert profile.order_of(signals["load_kw"]) is D
    # 42 = 0x002A; 300 = 0x012C; -2 = 0xFFFE; 41.5 = 0x42260000
    words = [0x002A, 0x2C01, 0xFEFF, 0x012C, 0x0000, 0x2642]
    assert decoded(build_plan(profile).blocks[0], words) == {
        "setpoint": 42,
        "swapped": 300,
        "also_swapped": -2,
        "word_order_only": 300,
        "load_kw": 41.5,
    }
    # the write path encodes with the same orders
    assert encode_value(42, DataType.INT16, profile.order_of(signals["setpoint"])) == [0x002A]
    assert encode_value(300, DataType.UINT16, profile.order_of(signals["swapped"])) == [0x2C01]


def test_coils_across_bytes_and_a_full_register_block_decode_from_the_reply():
    coils = _profile({f"c{i}": {"table": "coil", "address": 2 + 3 * i, "type": "bool"} for i in range(7)})
    block = build_plan(coils).blocks[0]
    assert block.count == 19  # three bytes of bits in the reply
    bits = [(i * 7 + 3) % 2 for i in range(block.count)]
    assert decoded(block, bits) == {f"c{i}": float(bits[3 * i]) for i in range(7)}
    registers = _profile(
        {f"r{i:03d}": {"table": "holding_register", "address": i, "type": "uint16"} for i in range(125)}
    )
    block = build_plan(registers).blocks[0]
    words = [(i * 523) % 65536 for i in range(125)]
    assert decoded(block, words) == {f"r{i:03d}": float(words[i]) for i in range(125)}
    assert block.pdu == bytes([3, 0, 0, 0, 125])
