"""The request planner: merge near registers, split at the request limits."""

from __future__ import annotations

from gateway.config.profile import ModbusProfile
from gateway.drivers.modbus_plan import build_plan


def _profile(signals: dict, **extra) -> ModbusProfile:
    return ModbusProfile.model_validate({"protocol": "modbus", "model": "test", "signals": signals, **extra})


def _regs(addresses, type_="uint16", table="holding_register"):
    return {f"s{a}": {"table": table, "address": a, "type": type_} for a in addresses}


def spans(plan):
    return [(b.table.value, b.start, b.count) for b in plan.blocks]


def test_contiguous_registers_merge_into_one_request():
    assert spans(build_plan(_profile(_regs(range(10))))) == [("holding_register", 0, 10)]


def test_gap_within_max_gap_merges_and_beyond_splits():
    assert spans(build_plan(_profile(_regs([0, 10]), max_gap=9))) == [("holding_register", 0, 11)]
    assert spans(build_plan(_profile(_regs([0, 11]), max_gap=9))) == [
        ("holding_register", 0, 1),
        ("holding_register", 11, 1),
    ]


def test_exactly_125_registers_is_one_request_and_126_is_two():
    assert spans(build_plan(_profile(_regs(range(125))))) == [("holding_register", 0, 125)]
    assert spans(build_plan(_profile(_regs(range(126))))) == [
        ("holding_register", 0, 125),
        ("holding_register", 125, 1),
    ]


def test_multi_register_value_never_straddles_a_request():
    # 62 float32 = 124 registers, the 63rd would end at register 125 (the 126th): new request
    signals = {f"f{i}": {"table": "input_register", "address": 2 * i, "type": "float32"} for i in range(63)}
    plan = build_plan(_profile(signals))
    assert spans(plan) == [("input_register", 0, 124), ("input_register", 124, 2)]
    assert plan.signal_count == 63


def test_device_limit_and_tables_are_separate():
    signals = _regs(range(20)) | {
        "c1": {"table": "coil", "address": 0, "type": "bool"},
        "i1": {"table": "input_register", "address": 0, "type": "int16"},
    }
    plan = build_plan(_profile(signals, max_registers_per_request=8))
    assert spans(plan) == [
        ("coil", 0, 1),
        ("input_register", 0, 1),
        ("holding_register", 0, 8),
        ("holding_register", 8, 8),
        ("holding_register", 16, 4),
    ]


def test_one_based_addressing_goes_on_the_wire_minus_one():
    plan = build_plan(_profile(_regs([1, 2, 3]), addressing=1))
    assert spans(plan) == [("holding_register", 0, 3)]
    assert plan.describe() == ["holding_register 1-3 (3 signals)"]


def test_bits_merge_up_to_2000():
    signals = {f"b{i}": {"table": "coil", "address": i, "type": "bool"} for i in range(2001)}
    assert spans(build_plan(_profile(signals))) == [("coil", 0, 2000), ("coil", 2000, 1)]


def test_subset_plan_for_read_back():
    plan = build_plan(_profile(_regs(range(10))), ["s4"])
    assert spans(plan) == [("holding_register", 4, 1)]


def test_bit_fields_of_one_register_share_its_read():
    signals = {
        f"b{bit}": {"table": "input_register", "address": 7, "type": "bool", "bit": bit} for bit in (0, 5, 15)
    } | {"w": {"table": "input_register", "address": 8, "type": "uint16"}}
    plan = build_plan(_profile(signals))
    assert spans(plan) == [("input_register", 7, 2)]
    assert plan.signal_count == 4


def test_string_width_is_its_length():
    signals = {
        "name": {"table": "holding_register", "address": 0, "type": "string", "length_registers": 8},
        "after": {"table": "holding_register", "address": 8, "type": "uint16"},
    }
    plan = build_plan(_profile(signals, max_registers_per_request=8))
    assert spans(plan) == [("holding_register", 0, 8), ("holding_register", 8, 1)]


def test_one_request_per_signal_never_merges_but_bits_share_their_register():
    signals = _regs([0, 1]) | {
        "f": {"table": "holding_register", "address": 2, "type": "float32"},
        "b0": {"table": "holding_register", "address": 4, "type": "bool", "bit": 0},
        "b1": {"table": "holding_register", "address": 4, "type": "bool", "bit": 1},
        "c0": {"table": "coil", "address": 0, "type": "bool"},
        "c1": {"table": "coil", "address": 1, "type": "bool"},
    }
    plan = build_plan(_profile(signals, one_request_per_signal=True))
    assert spans(plan) == [
        ("coil", 0, 1),
        ("coil", 1, 1),
        ("holding_register", 0, 1),
        ("holding_register", 1, 1),
        ("holding_register", 2, 2),
        ("holding_register", 4, 1),
    ]
    assert spans(build_plan(_profile(signals))) == [("coil", 0, 2), ("holding_register", 0, 5)]
