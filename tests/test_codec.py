"""Decoding every data type in every byte order from hand-computed register words."""

from __future__ import annotations

import math

import pytest

from gateway.codec import ByteOrder, CodecError, DataType, decode_words, encode_value
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
    values = plan.blocks[0].decode(words)
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
    assert block.decode([1, 0, 0, 0, 0, 0, 0, 0]) == {"pump_running": 1.0, "leak": 0.0}
    assert block.decode([0, 0, 1, 0, 0, 0, 0, 0]) == {"pump_running": 0.0, "leak": 1.0}
