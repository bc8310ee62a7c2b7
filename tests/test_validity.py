"""Values not to be believed (gateway/validity.py): NaN, infinity, outside the measuring range or
the control role's physics. Unit tests of the check, then a real Modbus simulator over loopback
serving such values to the real driver and poller, and the ranges a site with control derives.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from gateway import clock
from gateway import validity as validity_module
from gateway.config.loader import load_site
from gateway.config.profile import ModbusProfile, Table
from gateway.control.roles import VALID_INPUTS
from gateway.sample import Quality, Reading
from gateway.service import Gateway
from gateway.validity import RECOVERED_AFTER_S, ValueCheck, valid_ranges
from simulators.modbus_server import UnitImage
from tests.live import polling_unit

REPO = Path(__file__).resolve().parent.parent
FLOW = (1.0, 150.0, "role heat_meter.flow_temp_c")


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(validity_module, "log", structlog.get_logger("test"))
    with capture_logs() as captured:
        yield captured


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The gateway's monotonic clock, set by the test (gateway.clock is the swap point)."""
    t = [1000.0]
    clock.use(wall_ns_fn=lambda: int(t[0] * 1e9), monotonic_fn=lambda: t[0])
    yield t
    clock.reset()


def test_non_finite_values_are_bad_on_every_signal(logs) -> None:
    check = ValueCheck("meter", {})
    reading = Reading("meter", 1, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 20.5})
    check.apply(reading)
    assert reading.values == {"d": 20.5}
    assert reading.bad == {
        "a": "nan is not a finite number",
        "b": "inf is not a finite number",
        "c": "-inf is not a finite number",
    }
    assert sorted(e["signal"] for e in logs if e["event"] == "signal_invalid") == ["a", "b", "c"]


def test_a_value_outside_its_range_is_bad_with_the_range_and_source_named(logs) -> None:
    check = ValueCheck("heat-meter", {"flow_temp_c": FLOW})
    reading = Reading("heat-meter", 1, {"flow_temp_c": -3.811394522961674e17, "heat_power_kw": 5e30})
    check.apply(reading)
    assert reading.values == {"heat_power_kw": 5e30}  # no range for it: any finite number passes
    assert reading.bad["flow_temp_c"] == (
        "-3.811394522961674e+17 is outside its valid range 1..150 (role heat_meter.flow_temp_c)"
    )
    (line,) = logs
    assert line["event"] == "signal_invalid"
    assert line["device"] == "heat-meter"
    assert line["signal"] == "flow_temp_c"
    assert "byte_order" in line["hint"]
    for edge in (1.0, 150.0, 69.3):  # the range includes its ends
        inside = Reading("heat-meter", 2, {"flow_temp_c": edge})
        check.apply(inside)
        assert inside.values == {"flow_temp_c": edge}


def test_uncertain_values_that_are_not_numbers_are_bad() -> None:
    reading = Reading("plc", 1, {"a": 1.0}, uncertain={"u": math.nan, "v": 2.0})
    ValueCheck("plc", {}).apply(reading)
    assert reading.uncertain == {"v": 2.0}
    assert reading.bad == {"u": "not a finite number (nan)"}


def test_a_flapping_signal_is_logged_once_and_valid_again_after_a_quiet_minute(logs, now) -> None:
    check = ValueCheck("heat-meter", {"flow_temp_c": FLOW})
    for second in range(300):  # garbage that lands inside the range one poll in ten
        now[0] += 1.0
        check.apply(Reading("heat-meter", second, {"flow_temp_c": 60.0 if second % 10 == 0 else -2e-10}))
    assert [e["event"] for e in logs] == ["signal_invalid"]
    for _ in range(int(RECOVERED_AFTER_S) + 1):  # then right for a minute
        now[0] += 1.0
        check.apply(Reading("heat-meter", 0, {"flow_temp_c": 60.0}))
    assert [e["event"] for e in logs] == ["signal_invalid", "signal_valid_again"]
    assert logs[1]["invalid_for_s"] == pytest.approx(298.0)  # first bad at second 1, last at 299
    now[0] += 1.0
    check.apply(Reading("heat-meter", 0, {"flow_temp_c": 1e6}))  # and bad again: logged again
    assert [e["event"] for e in logs] == ["signal_invalid", "signal_valid_again", "signal_invalid"]


def test_profile_and_role_ranges_combine_to_the_narrower() -> None:
    ranges = valid_ranges(
        {"flow_temp_c": (2.0, 180.0), "flow_m3h": (0.0, math.inf), "power_kw": None},
        {"flow_temp_c": FLOW, "return_temp_c": (1.0, 150.0, "role heat_meter.return_temp_c")},
    )
    assert ranges == {
        "flow_temp_c": (2.0, 150.0, "the profile's valid_min/valid_max and role heat_meter.flow_temp_c"),
        "flow_m3h": (0.0, math.inf, "the profile's valid_min/valid_max"),
        "return_temp_c": (1.0, 150.0, "role heat_meter.return_temp_c"),
    }


def test_profile_measuring_range_is_checked_at_load() -> None:
    with pytest.raises(ValueError, match=r"valid_min 5\.0 is greater than valid_max 1\.0"):
        ModbusProfile.model_validate(
            {
                "protocol": "modbus",
                "model": "x",
                "signals": {
                    "t": {"table": "input_register", "address": 0, "type": "int16", "valid_min": 5, "valid_max": 1}
                },
            }
        )


# -- over a real socket: the simulator serves the values, the real driver and poller judge them --

PROFILE = ModbusProfile.model_validate(
    {
        "protocol": "modbus",
        "model": "test meter",
        "byte_order": "ABCD",
        "signals": {
            "supply_c": {"table": "input_register", "address": 0, "type": "float32", "valid_min": 2, "valid_max": 180},
            "power_kw": {"table": "input_register", "address": 2, "type": "float32"},
            "flow_m3h": {"table": "input_register", "address": 4, "type": "float32", "valid_min": 0},
        },
    }
)


def polling(unit: UnitImage):
    return polling_unit(
        unit,
        PROFILE,
        name="meter",
        kind="heat_meter",
        period_s=0.05,
        timeout_s=0.5,
        backoff_max_s=0.2,
        valid_ranges=valid_ranges({name: s.valid_range() for name, s in PROFILE.signals.items()}, {}),
    )


async def test_a_device_serving_nan_and_out_of_range_values_publishes_only_the_good_ones(logs) -> None:
    unit = UnitImage("meter", PROFILE, on_write=lambda _s, _v: None)
    unit.update({"supply_c": 69.3, "flow_m3h": -4.0})
    unit.tables[Table.INPUT_REGISTER].update({2: 0x7FC0, 3: 0x0000})  # float32 quiet NaN: a vendor's "sensor fault"
    async with polling(unit) as (poller, outbox):
        await asyncio.sleep(0.5)
        unit.update({"supply_c": 250.0, "power_kw": 1200.0, "flow_m3h": 80.0})
        await asyncio.sleep(0.5)
        snapshot = poller.image.snapshot(0)
    assert poller.stats.available, "a device with some good values is available"
    assert poller.check.invalid == 3, "the gateway measurement's invalid_signals (valid again only after a minute)"
    first, last = outbox.readings[0], outbox.readings[-1]
    assert first.values == {"supply_c": pytest.approx(69.3)}
    assert set(first.bad) == {"power_kw", "flow_m3h"}
    assert first.bad["power_kw"] == "nan is not a finite number"
    assert first.bad["flow_m3h"] == "-4.0 is outside its valid range 0..inf (the profile's valid_min/valid_max)"
    assert last.values == {"power_kw": 1200.0, "flow_m3h": 80.0}
    assert last.bad == {"supply_c": "250.0 is outside its valid range 2..180 (the profile's valid_min/valid_max)"}
    # control sees no number for it, and the reason is there for whoever looks
    sample = snapshot.sample("meter", "supply_c")
    assert sample.quality is Quality.BAD
    assert "outside its valid range 2..180" in sample.reason
    assert snapshot.good("meter", "supply_c", 1e9) is None
    invalid = [(e["signal"], e["reason"]) for e in logs if e["event"] == "signal_invalid"]
    assert sorted(invalid) == [
        ("flow_m3h", "outside its valid range 0..inf (the profile's valid_min/valid_max)"),
        ("power_kw", "not a finite number"),
        ("supply_c", "outside its valid range 2..180 (the profile's valid_min/valid_max)"),
    ]


# -- a site under control: the roles' physics reach the pollers --------------------------------


def test_a_site_under_control_checks_its_role_inputs() -> None:
    gateway = Gateway(load_site(REPO / "config" / "site.example.yaml"))
    assert gateway.control is not None, "the example site runs control"
    meter = gateway._pollers["heat-meter"].check.ranges
    assert meter["flow_temp_c"] == (1.0, 150.0, "role heat_meter.flow_temp_c")
    assert meter["return_temp_c"][:2] == (1.0, 150.0)
    assert meter["heat_power_kw"][:2] == (-1000.0, 1.0e6)
    assert "flow_m3h" not in meter  # not a role input: only a profile range would apply
    cdu = gateway._pollers["cdu-1"].check.ranges
    assert cdu["tcs_supply_temp_c"] == (1.0, 100.0, "role cdu.tcs_supply_temp_c")


def test_docs_list_every_role_range() -> None:
    text = " ".join((REPO / "docs" / "control.md").read_text(encoding="utf-8").split())
    for name, (low, high) in VALID_INPUTS.items():
        span = f"{low:g}..{high:g}"
        assert re.search(rf"`{name}`[^.]*?{re.escape(span)}", text), (name, span)
