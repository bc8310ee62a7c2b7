"""The metrics line encoder: the template fast path writes what the general path writes."""

from __future__ import annotations

import math

from gateway.publish.lineprotocol import ReadingEncoder, encode_line
from gateway.sample import Reading

PREFIX = "cdu,device=cdu-1,site=dk-1"


def encode(values: dict[str, float], texts: dict[str, str] | None = None, encoder: ReadingEncoder | None = None) -> str:
    encoder = encoder or ReadingEncoder("dk-1", {"cdu-1": "cdu"})
    line = encoder.encode(Reading("cdu-1", 1_764_000_000_000_000_007, values, texts=texts or {}))
    return "" if line is None else line.decode()


def test_fractional_values_are_written_exactly_as_encode_line_writes_them():
    values = {"t_c": 41.52, "p_kw": 1520.5, "tiny": 1e-300, "huge": -3.4e38, "third": 1 / 3, "whole": 7.0}
    assert encode(values) == encode_line(PREFIX, values, 1_764_000_000_000_000_007)
    assert encode(values) == (
        f"{PREFIX} t_c=41.52,p_kw=1520.5,tiny=1e-300,huge=-3.4e+38,third=0.3333333333333333,whole=7.0 "
        "1764000000000000007"
    )


def test_whole_numbers_are_written_without_a_fraction_and_read_back_equal():
    values = {"r0": 0.0, "r1": 65535.0, "neg": -32768.0, "big": 2.0**60, "scaled": 1520.0}
    line = encode(values)
    assert line == f"{PREFIX} r0=0,r1=65535,neg=-32768,big=1152921504606846976,scaled=1520 1764000000000000007"
    fields = dict(field.split("=") for field in line.split(" ")[1].split(","))
    assert {name: float(text) for name, text in fields.items()} == values  # no "i": still float fields


def test_non_finite_values_are_left_out_and_a_line_of_none_is_no_line():
    values = {"a": 1.5, "nan": math.nan, "inf": math.inf, "b": 2.0}
    assert encode(values) == f"{PREFIX} a=1.5,b=2.0 1764000000000000007"
    assert encode({"x": math.inf, "y": -math.inf}) == ""  # inf + -inf is NaN: the general path decides
    assert encode({"x": 1e308, "y": 1e308}) == f"{PREFIX} x=1e+308,y=1e+308 1764000000000000007"  # sum overflows
    assert encode({}) == ""


def test_layouts_change_from_reading_to_reading():
    encoder = ReadingEncoder("dk-1", {"cdu-1": "cdu"})
    assert encode({"a": 1.0, "b": 2.0}, encoder=encoder) == f"{PREFIX} a=1,b=2 1764000000000000007"
    assert encode({"a": 1.0, "b": 2.5}, encoder=encoder) == f"{PREFIX} a=1.0,b=2.5 1764000000000000007"
    assert encode({"b": 2.0}, encoder=encoder) == f"{PREFIX} b=2 1764000000000000007"  # a block failed
    for width in range(40):  # more layouts than are kept: old ones are forgotten, lines stay right
        values = {f"s{i}": float(i) + 0.5 for i in range(width + 1)}
        assert encode(values, encoder=encoder) == encode_line(PREFIX, values, 1_764_000_000_000_000_007)
    odd = {"n": 3, "x": 0.5}  # an int where floats belong: written as encode_line writes it, no crash
    assert encode(odd, encoder=encoder) == encode_line(PREFIX, odd, 1_764_000_000_000_000_007)


def test_texts_go_the_general_way():
    assert encode({"p_kw": 2.0}, {"serial": 'SN "7"'}) == f'{PREFIX} p_kw=2.0,serial="SN \\"7\\"" 1764000000000000007'
