"""The heat meter's and the station's supply against each other (gateway/control/crosscheck.py):
the check alone, then in the live control loop with the example site's role bindings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from gateway import control_loop as control_loop_module
from gateway.config import load_site
from gateway.control.crosscheck import SensorCrossCheck
from gateway.control_loop import ControlLoop
from gateway.process_image import ProcessImage
from gateway.publish.outbox import Outbox
from gateway.sample import Reading

REPO = Path(__file__).resolve().parent.parent


def run(check: SensorCrossCheck, seconds: range, a: float, b: float, flow: float = 5000.0) -> list[int]:
    """Seconds at which the alarm changed."""
    return [t for t in seconds if check.update(a, b, flow, float(t))]


def test_a_lasting_difference_raises_the_alarm_once_and_a_small_one_clears_it() -> None:
    check = SensorCrossCheck(max_diff_k=5.0, after_s=300.0, min_flow=1000.0)
    assert run(check, range(1000), 69.0, 68.2) == []  # pipe loss and offsets: agree
    assert run(check, range(1000, 2000), 69.0, 62.0) == [1300]  # 7 K apart for 300 s: once
    assert check.alarm
    assert check.diff_k == pytest.approx(7.0)
    assert run(check, range(2000, 2100), 69.0, 64.5) == []  # 4.5 K: inside the hysteresis band, holds
    assert check.alarm
    assert run(check, range(2100, 2110), 69.0, 66.0) == [2100]  # 3 K < 80 % of 5 K: clears
    assert not check.alarm


def test_a_requirement_step_that_reaches_the_meter_late_is_no_alarm() -> None:
    # +8 K at the station; the meter follows after the pipe's ~70-100 s transport delay.
    check = SensorCrossCheck(max_diff_k=5.0, after_s=300.0, min_flow=1000.0)
    changes = [t for t in range(600) if check.update(70.0 + 8.0 * (t >= 120), 78.0, 5000.0, float(t))]
    assert changes == []


def test_standing_water_is_not_judged_and_a_gap_starts_the_wait_over() -> None:
    check = SensorCrossCheck(max_diff_k=5.0, after_s=300.0, min_flow=1000.0)
    assert run(check, range(3600), 40.0, 70.0, flow=0.0) == []  # pump off: the pipe cools
    assert run(check, range(3600, 3800), 69.0, 60.0) == []
    assert not check.update(None, 60.0, 5000.0, 3800.0)  # the meter missing: nothing judged
    assert math.isnan(check.diff_k)
    assert run(check, range(3801, 4100), 69.0, 60.0) == []  # the 300 s start again
    assert run(check, range(4100, 4102), 69.0, 60.0) == [4101]


def test_the_live_loop_logs_the_disagreement_once_and_publishes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control_loop_module, "log", structlog.get_logger("test"))
    site = load_site(REPO / "config" / "site.example.yaml")
    image = ProcessImage()
    outbox: Outbox = Outbox(100_000)
    loop = ControlLoop(site, image, {}, outbox)
    station_c = 62.0  # a PLC profile with the wrong offset, say: 7 K under the meter
    alarm_at: list[int] = []
    meter = {"flow_temp_c": 69.0, "return_temp_c": 40.0, "heat_power_kw": 12000.0}
    with capture_logs() as logs:
        for t in range(700):
            if t == 500:
                station_c = 69.3
            now_ns = (1_700_000_000 + t) * 1_000_000_000
            image.update(Reading("heat-meter", now_ns, dict(meter)))
            image.update(Reading("hp-plc", now_ns, {"dh_supply_temp_c": station_c}))
            loop.cycle(now_ns, float(t))
            # the control measurement carries the alarm and the difference every cycle
            (line,) = [m.payload.decode() for m in outbox.take_all() if b"/control/metrics" in m.topic.encode()]
            assert ",dh_sensors_diff_k=" in line
            if ",alarm_dh_sensors=true" in line:
                alarm_at.append(t)
    assert alarm_at == list(range(300, 500))
    events = [(e["event"], e.get("station_supply_c")) for e in logs if e["event"].startswith("dh_sensors")]
    assert events == [("dh_sensors_disagree", 62.0), ("dh_sensors_agree", 69.3)]
    disagree = next(e for e in logs if e["event"] == "dh_sensors_disagree")
    assert disagree["meter"] == "heat-meter"
    assert disagree["station"] == "hp-plc"
    assert "scale" in disagree["hint"]
