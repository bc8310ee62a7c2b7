"""What a closed-loop run did: a per-second trace, the metrics, the checks, JSON and a plot.

Metrics compare the plant's *true* values (no sensor noise) with what the utility really
asked, so a controller cannot look good by fooling its own sensors. Samples are left out of
the control-quality metrics (DH supply deviation, heat vs order) when they lie

- in the first ``STARTUP_S`` (the gateway takes over from the devices' local control),
- in a fault window: a scenario event (trip, silent device, crash, lost link, ...) from its
  start to ``FAULT_SETTLE_S`` after its end,
- where the DH side is not delivering (order 0, pump off, return too hot).

The safety figures (seconds of rack loop above its IT limit, writes outside profile limits)
count every second of the run, faults included.

Every scenario also checks ``stale_outside_faults_s == 0``: outside the take-over and the fault
windows, no second in which the supervisor found a device's inputs stale or bad. A data path
that loses or garbles a device's values (a wrong byte order in a profile, values outside their
valid range) fails the run even when the plant's own local control happens to hold the targets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.control import ControlConfig
from simulators.plant import HeatPumpState, Plant
from simulators.scenario import Scenario

if TYPE_CHECKING:
    from simulators.harness import Summary, Window

__all__ = ["FAULT_SETTLE_S", "ORDER_SETTLE_S", "REQUIREMENT_SETTLE_S", "STARTUP_S", "Trace", "evaluate", "write_report"]

STARTUP_S = 600.0
"""Take-over from local control at start: ramps from the local setpoints to the optimum."""
FAULT_SETTLE_S = 600.0
"""After a fault ends, this long still counts as its window (recovery)."""
REQUIREMENT_SETTLE_S = 300.0
"""After a requirement step: setpoint ramp (30 s) + DH pipe transport (~70 s) + mixing, with margin."""
ORDER_SETTLE_S = 300.0
"""After an order step: limit ramp (up to ~60 s) + heat-pump capacity ramp and staging (~90 s)."""
RESTART_SETTLE_S = 600.0
"""After the DH side starts delivering again (order back from 0, trip reset): heat pumps stage up
one by one and the water that stood in the DH pipe reaches the meter first."""
MIN_DELIVERY_DT_K = 5.0
IT_HEAT_MARGIN = 1.02
"""The IT heat suffices when liquid heat + compressor power >= order x this."""

_RUNNING = HeatPumpState.RUNNING


class Trace:
    """One sample per simulated second of what matters for the report (true plant values)."""

    CHANNELS = (
        "t_s",
        "requirement_c",
        "requirement_used_c",
        "meter_supply_c",
        "station_supply_c",
        "dh_return_c",
        "hp_setpoint_c",
        "order_kw",
        "order_used_kw",
        "delivered_kw",
        "heat_limit_kw",
        "liquid_kw",
        "hp_heat_kw",
        "hp_electric_kw",
        "dry_cooler_kw",
        "fws_supply_c",
        "dry_cooler_setpoint_c",
        "tcs_max_c",
        "tcs_min_c",
        "tcs_setpoint_max_c",
        "tcs_setpoint_min_c",
        "cdu_ceiling_c",
        "tcs_over_limit",
        "hp_running",
        "cdu_external",
    )

    LABELS = ("mode", "order_source", "overrides", "stale", "down")
    """What the supervisor said each second (and whether the gateway was down), after the channels."""

    def __init__(self, plant: Plant, scenario: Scenario) -> None:
        self.plant = plant
        self.scenario = scenario
        self.it_limit_c = min(cdu.cfg.it_limit_c for cdu in plant.cdus)
        # One tuple a second (CHANNELS then LABELS), turned into columns when first asked for:
        # a day is 86,400 rows, and one append each is the cheapest way to keep them.
        self._rows: list[tuple[Any, ...]] = []
        self._columns: dict[str, list[Any]] = {}
        self._columns_rows = -1
        self._order_mw = scenario.input_schedule("utility_heat_order_mw")
        self._order_default_kw = scenario.plant.district_heating.heat_order_mw * 1000.0
        limits = {cdu.cfg.it_limit_c for cdu in plant.cdus}
        # All CDUs share one IT limit (one CduConfig): above it is the hottest one above it.
        self._shared_it_limit_c = limits.pop() if len(limits) == 1 else None

    def record(self, time_s: float, status: dict[str, Any], *, down: bool, silent: Iterable[str]) -> None:
        """Append the plant's state at ``time_s`` and the supervisor's status (empty while down)."""
        plant = self.plant
        station = plant.station
        meter = plant.meter
        cdus = plant.cdus
        order_mw = self._order_mw(time_s) if self._order_mw is not None else None
        supplies = [cdu.supply_c for cdu in cdus]
        setpoints = [cdu.active_setpoint_c for cdu in cdus]
        hottest_c = max(supplies)
        limit_c = self._shared_it_limit_c
        if limit_c is not None:
            over_limit = hottest_c > limit_c
        else:
            over_limit = any(cdu.supply_c > cdu.cfg.it_limit_c for cdu in cdus)
        nan = math.nan
        get = status.get
        self._rows.append(
            (
                time_s,
                plant.utility_supply_temp_c,
                get("dh_requirement_c", nan),
                meter.flow_temp_c,
                station.dh_out_c,
                station.dh_return_c,
                station.hp_supply_setpoint_c,
                order_mw * 1000.0 if order_mw is not None else self._order_default_kw,
                get("heat_order_kw", nan),
                meter.power_kw,
                station.heat_power_limit_kw,
                sum(cdu.load_kw for cdu in cdus),
                station.hp_heat_kw,
                station.hp_electric_kw,
                station.dc_heat_kw,
                station.fws_supply_header_c,
                station.dry_cooler_setpoint_c,
                hottest_c,
                min(supplies),
                max(setpoints),
                min(setpoints),
                get("cdu_ceiling_c", nan),
                float(over_limit),
                float(sum(1 for pump in station.heat_pumps if pump.state is _RUNNING)),
                float(sum(1 for cdu in cdus if cdu.control_mode == 1)),
                "down" if down else str(get("mode", "")),
                str(get("order_source", "")),
                str(get("overrides", "")),
                ",".join(sorted(set(silent))) if down else str(get("stale_devices", "")),
                down,
            )
        )

    def _column(self, name: str) -> list[Any]:
        if self._columns_rows != len(self._rows):
            names = self.CHANNELS + self.LABELS
            columns = zip(*self._rows, strict=True) if self._rows else [()] * len(names)
            self._columns = {name: list(column) for name, column in zip(names, columns, strict=True)}
            self._columns_rows = len(self._rows)
        return self._columns[name]

    @property
    def data(self) -> dict[str, list[float]]:
        """Per channel (:attr:`CHANNELS`), one sample per recorded second."""
        self._column("t_s")
        return {name: self._columns[name] for name in self.CHANNELS}

    @property
    def mode(self) -> list[str]:
        """The supervisor's mode each second (``down`` while the gateway is)."""
        return self._column("mode")

    @property
    def order_source(self) -> list[str]:
        """Where the heat order came from each second (utility, held, weather curve)."""
        return self._column("order_source")

    @property
    def overrides(self) -> list[str]:
        """The active overrides each second, comma-separated."""
        return self._column("overrides")

    @property
    def stale(self) -> list[str]:
        """Devices with stale data each second (the silent ones while the gateway is down)."""
        return self._column("stale")

    @property
    def down(self) -> list[bool]:
        """True for the seconds the gateway was down."""
        return self._column("down")

    def __len__(self) -> int:
        return len(self._rows)


# -- metrics ------------------------------------------------------------------------------------


def _rms(values: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else math.nan


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _since_change(times: Sequence[float], values: Sequence[float], tolerance: float) -> list[float]:
    """Seconds since the value last changed by more than ``tolerance`` (inf before any change)."""
    out: list[float] = []
    last_change = -math.inf
    previous = values[0] if values else math.nan
    for t, value in zip(times, values, strict=True):
        if abs(value - previous) > tolerance:
            last_change = t
        previous = value
        out.append(t - last_change)
    return out


def _r(value: float, digits: int = 3) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def evaluate(
    trace: Trace,
    scenario: Scenario,
    windows: Sequence[Window],
    config: ControlConfig,
    *,
    crash_log: Sequence[dict[str, Any]],
    counts: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Metrics of a run and the checks of its targets (see the module docstring)."""
    d = trace.data
    t = d["t_s"]
    n = len(t)
    fault = [any(w.start_s <= ti < w.end_s + FAULT_SETTLE_S for w in windows) for ti in t]
    since_order = _since_change(t, d["order_kw"], 1.0)
    down = trace.down
    base = [t[i] >= STARTUP_S and not fault[i] and not down[i] for i in range(n)]
    delivering = [
        base[i]
        and d["order_kw"][i] > 0.0
        and d["delivered_kw"][i] > 0.05 * d["order_kw"][i]
        and d["meter_supply_c"][i] - d["dh_return_c"][i] > MIN_DELIVERY_DT_K
        for i in range(n)
    ]
    flowing = [
        d["delivered_kw"][i] > 0.05 * d["order_kw"][i]
        and d["meter_supply_c"][i] - d["dh_return_c"][i] > MIN_DELIVERY_DT_K
        for i in range(n)
    ]
    since_restart = _since_change(t, [0.0 if f else 1.0 for f in flowing], 0.5)
    delivering = [delivering[i] and since_restart[i] >= RESTART_SETTLE_S for i in range(n)]
    deviation = [d["meter_supply_c"][i] - d["requirement_c"][i] for i in range(n)]
    dev_all = [deviation[i] for i in range(n) if delivering[i]]
    steps = _step_metrics(trace, deviation, delivering)
    in_step = [False] * n
    for step in steps["requirement_steps"]:
        # A step is judged by its settling time and overshoot; until it has settled (at most
        # REQUIREMENT_SETTLE_S if it never does) it is left out of the "settled" figures.
        first = int(step["at_s"] - t[0])
        length = step["settling_s"] if step["settling_s"] is not None else REQUIREMENT_SETTLE_S
        for i in range(first, min(n, first + int(length))):
            in_step[i] = True
    settled_idx = [i for i in range(n) if delivering[i] and not in_step[i]]
    dev_settled = [deviation[i] for i in settled_idx]
    worst_settled = max(settled_idx, key=lambda i: abs(deviation[i]), default=None)
    worst_all = max((i for i in range(n) if delivering[i]), key=lambda i: abs(deviation[i]), default=None)

    suffices = [d["liquid_kw"][i] + d["hp_electric_kw"][i] >= IT_HEAT_MARGIN * d["order_kw"][i] for i in range(n)]
    heat_idx = [
        i
        for i in range(n)
        if delivering[i] and d["order_kw"][i] >= 1000.0 and suffices[i] and since_order[i] >= ORDER_SETTLE_S
    ]
    heat_err = [(d["delivered_kw"][i] - d["order_kw"][i]) / d["order_kw"][i] * 100.0 for i in heat_idx]
    abs_err = [abs(e) for e in heat_err]
    worst_heat = max(
        heat_idx, key=lambda i: abs(d["delivered_kw"][i] - d["order_kw"][i]) / d["order_kw"][i], default=None
    )
    ordered_samples = [i for i in range(n) if base[i] and d["order_kw"][i] >= 1000.0]
    insufficient = sum(1 for i in ordered_samples if not suffices[i])

    hourly: list[dict[str, Any]] = []
    for hour in range(math.ceil(scenario.duration_s / 3600.0)):
        idx = list(range(hour * 3600, min((hour + 1) * 3600, n)))  # one sample per second
        usable = [i for i in idx if base[i] and d["order_kw"][i] >= 1000.0 and suffices[i]]
        if not idx or len(usable) < 0.9 * len(idx):
            continue
        ordered = sum(d["order_kw"][i] for i in usable)
        delivered = sum(d["delivered_kw"][i] for i in usable)
        hourly.append({"hour": hour, "error_pct": round((delivered - ordered) / ordered * 100.0, 3)})

    seconds = 1.0  # one sample per simulated second
    hp_heat = sum(d["hp_heat_kw"])
    hp_el = sum(d["hp_electric_kw"])
    metrics: dict[str, Any] = {
        "dh_supply_dev_rms_k": _r(_rms(dev_all)),
        "dh_supply_dev_max_k": _r(max((abs(v) for v in dev_all), default=math.nan)),
        "dh_supply_dev_max_at_s": t[worst_all] if worst_all is not None else None,
        "dh_supply_dev_rms_settled_k": _r(_rms(dev_settled)),
        "dh_supply_dev_max_settled_k": _r(max((abs(v) for v in dev_settled), default=math.nan)),
        "dh_supply_dev_max_settled_at_s": t[worst_settled] if worst_settled is not None else None,
        "dh_supply_dev_over_0_5k_share": _r(sum(1 for v in dev_all if abs(v) > 0.5) / len(dev_all), 4)
        if dev_all
        else None,
        "dh_supply_samples": len(dev_all),
        "dh_supply_samples_settled": len(dev_settled),
        "heat_error_mean_pct": _r(sum(abs_err) / len(abs_err)) if abs_err else None,
        "heat_error_p95_pct": _r(_percentile(abs_err, 0.95)),
        "heat_error_max_pct": _r(max(abs_err, default=math.nan)),
        "heat_error_max_at_s": t[worst_heat] if worst_heat is not None else None,
        "heat_error_bias_pct": _r(sum(heat_err) / len(heat_err)) if heat_err else None,
        "heat_within_2pct_share": _r(sum(1 for e in abs_err if e <= 2.0) / len(abs_err), 4) if abs_err else None,
        "heat_error_samples": len(heat_err),
        "heat_it_insufficient_share": _r(insufficient / len(ordered_samples), 4) if ordered_samples else None,
        "heat_hourly_error_max_pct": max((abs(h["error_pct"]) for h in hourly), default=None),
        "heat_hourly": hourly,
        "tcs_over_limit_s": sum(d["tcs_over_limit"]) * seconds,
        "tcs_max_c": _r(max(d["tcs_max_c"])),
        "tcs_min_margin_k": _r(min(trace.it_limit_c - v for v in d["tcs_max_c"])),
        "tcs_setpoint_max_c": _r(max(d["tcs_setpoint_max_c"])),
        "fws_supply_max_c": _r(max(d["fws_supply_c"])),
        "writes_out_of_limits": counts["writes_out_of_limits"],
        "writes_rejected": counts["writes_rejected"],
        "energy_to_dh_mwh": _r(sum(d["delivered_kw"]) / 3.6e6),
        "energy_ordered_mwh": _r(sum(d["order_kw"]) / 3.6e6),
        "energy_dry_coolers_mwh": _r(sum(d["dry_cooler_kw"]) / 3.6e6),
        "energy_hp_electric_mwh": _r(hp_el / 3.6e6),
        "energy_it_liquid_mwh": _r(sum(d["liquid_kw"]) / 3.6e6),
        "hp_cop_mean": _r(hp_heat / hp_el) if hp_el > 0 else None,
        "override_share": _r(sum(1 for o in trace.overrides if "override:" in o) / n, 4) if n else None,
        "excluded": {
            "startup_s": STARTUP_S,
            "fault_settle_s": FAULT_SETTLE_S,
            "requirement_settle_s": REQUIREMENT_SETTLE_S,
            "order_settle_s": ORDER_SETTLE_S,
            "restart_settle_s": RESTART_SETTLE_S,
        },
        "excluded_why": {
            "per_second (dh_supply_dev_rms_k, dh_supply_dev_max_k)": (
                f"every second except: the first {STARTUP_S:g} s (take-over from local control); each fault "
                f"event from its start to {FAULT_SETTLE_S:g} s after its end; seconds the DH side does not "
                f"deliver (order 0, pump off, meter dT < {MIN_DELIVERY_DT_K:g} K) and {RESTART_SETTLE_S:g} s "
                "after it starts again (standing water leaves the pipe first)"
            ),
            "settled (dh_supply_dev_*_settled_k)": (
                f"as per second, and each requirement step (>= {STEP_MIN_K:g} K) until it settled within "
                f"{STEP_BAND_K:g} K (its settling time and overshoot are judged as step_* instead; "
                f"{REQUIREMENT_SETTLE_S:g} s if it never settles)"
            ),
            "heat (heat_*)": (
                f"as per second, and {ORDER_SETTLE_S:g} s after an order change, orders below 1 MW, and seconds "
                f"when the IT heat cannot cover the order (liquid heat + compressor power < {IT_HEAT_MARGIN:g} x order)"
            ),
        },
    }
    checks: dict[str, dict[str, Any]] = {
        "tcs_over_limit_s": _check(metrics["tcs_over_limit_s"], "== 0", ok=metrics["tcs_over_limit_s"] == 0),
        "writes_out_of_limits": _check(counts["writes_out_of_limits"], "== 0", ok=counts["writes_out_of_limits"] == 0),
        "writes_rejected": _check(counts["writes_rejected"], "== 0", ok=counts["writes_rejected"] == 0),
    }
    metrics.update(steps)
    offsets = [event.at_s for event in scenario.events if event.kind == "meter_offset"]
    metrics.update(_offset_metrics(t, deviation, delivering, start_s=min(offsets, default=None)))
    metrics["stale_handbacks"] = _stale_handbacks(trace, fault)
    stale = trace.stale
    stale_at = [i for i in range(n) if base[i] and stale[i]]
    metrics["stale_outside_faults_s"] = stale_s = len(stale_at)
    metrics["stale_outside_faults_devices"] = sorted({name for i in stale_at for name in stale[i].split(",")})
    checks["stale_outside_faults_s"] = _check(stale_s, "== 0", ok=stale_s == 0)
    metrics.update(_crash_metrics(trace, crash_log, config, checks))
    metrics.update(_link_metrics(trace, windows, config, checks))
    metrics.update(_detection_metrics(trace, windows))
    # The scenario's own criteria (its file says what it must show).
    for name, criterion in scenario.criteria.items():
        value = metrics.get(name)
        checks[name] = _check(value, criterion.target, ok=criterion.met(value))
    return metrics, checks


STEP_MIN_K = 0.5
"""A requirement change at least this large (in one second) is a step, judged by settling and overshoot."""
STEP_BAND_K = 0.5
"""A step has settled once the meter stays within this of the new requirement (for STEP_HOLD_S)."""


STEP_HOLD_S = 300
"""A step has settled once the meter has stayed within STEP_BAND_K for this long."""


def _step_metrics(trace: Trace, deviation: Sequence[float], delivering: Sequence[bool]) -> dict[str, Any]:
    """Per requirement step: seconds until the meter is within STEP_BAND_K for good, and the overshoot.

    Settling time: from the step to the first second after which the meter stays within
    STEP_BAND_K of the new requirement for STEP_HOLD_S (a later, unrelated disturbance, such as
    a heat pump starting an hour later, is not the step's). Overshoot: how far the meter went
    past the new requirement in the step's direction, from the step until it settled plus
    STEP_HOLD_S. A step is judged only when the DH side delivered through most of it.
    """
    d = trace.data
    t = d["t_s"]
    requirement = d["requirement_c"]
    n = len(t)
    starts = [i for i in range(1, n) if abs(requirement[i] - requirement[i - 1]) >= STEP_MIN_K]
    steps: list[dict[str, Any]] = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else n
        if sum(delivering[start:end]) < 0.9 * (end - start):
            continue
        direction = 1.0 if requirement[start] > requirement[start - 1] else -1.0
        settled_i: int | None = None
        inside_since: int | None = None
        for i in range(start, end):
            if abs(deviation[i]) <= STEP_BAND_K:
                inside_since = i if inside_since is None else inside_since
                if i - inside_since + 1 >= STEP_HOLD_S:
                    settled_i = inside_since
                    break
            else:
                inside_since = None
        window_end = min(end, (settled_i if settled_i is not None else end) + STEP_HOLD_S)
        overshoot = max((direction * deviation[i] for i in range(start, window_end)), default=0.0)
        steps.append(
            {
                "at_s": t[start],
                "step_k": round(requirement[start] - requirement[start - 1], 3),
                "settling_s": t[settled_i] - t[start] if settled_i is not None else None,
                "overshoot_k": round(max(overshoot, 0.0), 3),
            }
        )
    settlings = [s["settling_s"] for s in steps]
    return {
        "requirement_steps": steps,
        "step_settling_max_s": (None if None in settlings else max(settlings)) if settlings else None,
        "step_overshoot_max_k": max((s["overshoot_k"] for s in steps), default=None),
    }


OFFSET_WINDOW_S = 300
"""Offset learning is judged on the mean deviation over this many seconds."""
OFFSET_LEARNED_K = 0.2
"""The offset counts as learned once a window's mean deviation is within this."""


def _offset_metrics(
    t: Sequence[float], deviation: Sequence[float], delivering: Sequence[bool], *, start_s: float | None = None
) -> dict[str, Any]:
    """When the meter's mean deviation first came within OFFSET_LEARNED_K, and the RMS after it.

    Seconds from ``start_s`` (a scenario's ``meter_offset`` switching on: only windows that
    start after it count), or without one from the first judged sample (an offset present from
    the start). The RMS is every judged second from the end of that first window to the end.
    """
    first_s = -math.inf if start_s is None else start_s
    idx = [i for i in range(len(t)) if delivering[i] and t[i] >= first_s]
    if len(idx) < OFFSET_WINDOW_S:
        return {"dh_offset_learned_s": None, "dh_supply_dev_rms_after_learning_k": None}
    learned: int | None = None
    total = sum(deviation[i] for i in idx[:OFFSET_WINDOW_S])
    for k in range(OFFSET_WINDOW_S, len(idx) + 1):
        if abs(total / OFFSET_WINDOW_S) <= OFFSET_LEARNED_K:
            learned = k - 1
            break
        if k < len(idx):
            total += deviation[idx[k]] - deviation[idx[k - OFFSET_WINDOW_S]]
    if learned is None:
        return {"dh_offset_learned_s": None, "dh_supply_dev_rms_after_learning_k": None}
    after = [deviation[i] for i in idx[learned:]]
    return {
        "dh_offset_learned_s": t[idx[learned]] - (t[idx[0]] if start_s is None else start_s),
        "dh_supply_dev_rms_after_learning_k": _r(_rms(after)),
    }


def _stale_handbacks(trace: Trace, fault: Sequence[bool]) -> int:
    """CDUs newly reported stale (and so handed back to local control) outside any fault window."""
    count = 0
    previous: set[str] = set()
    down = trace.down
    for i, stale in enumerate(trace.stale):
        cdus = {name for name in stale.split(",") if name.startswith("cdu-")} if stale else set()
        if not fault[i] and not down[i]:
            count += len(cdus - previous)
        previous = cdus
    return count


def _check(value: object, target: str, *, ok: bool) -> dict[str, Any]:
    return {"value": value, "target": target, "ok": bool(ok)}


def _crash_metrics(
    trace: Trace, crash_log: Sequence[dict[str, Any]], config: ControlConfig, checks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Per crash and device: crash -> own watchdog fallback (local setpoints) vs its timeout."""
    if not crash_log:
        return {}
    events = trace.plant.event_log
    t = trace.data["t_s"]
    external = trace.data["cdu_external"]
    cdu_count = len(trace.plant.cdus)
    crashes: list[dict[str, Any]] = []
    all_ok = True
    for crash in crash_log:
        crash_s = crash["crash_s"]
        restart_s = crash.get("restart_s", math.inf)
        devices: dict[str, Any] = {}
        for device, info in crash["devices"].items():
            if not info["external"]:
                continue  # never under gateway control: nothing to fall back from
            fallback = next(
                (
                    e.time_s
                    for e in events
                    if e.device == device and e.kind == "watchdog_fallback" and e.time_s >= crash_s
                ),
                None,
            )
            delay = None if fallback is None else round(fallback - crash_s, 1)
            local = crash.get("at_restart", {}).get(device)
            ok = delay is not None and delay <= info["timeout_s"] + config.cycle_s and local is not False
            all_ok = all_ok and ok
            devices[device] = {
                "fallback_after_s": delay,
                "watchdog_timeout_s": info["timeout_s"],
                "on_local_values_at_restart": local,
                "ok": ok,
            }
        retake = next((t[i] - restart_s for i in range(len(t)) if t[i] >= restart_s and external[i] == cdu_count), None)
        crashes.append(
            {
                "crash_s": crash_s,
                "restart_s": restart_s if math.isfinite(restart_s) else None,
                "devices": devices,
                "cdus_back_under_control_after_s": retake,
            }
        )
        checks[f"crash_at_{crash_s:g}s_local_within_watchdog"] = _check(
            {name: info["fallback_after_s"] for name, info in devices.items()},
            "each <= its watchdog_timeout_s",
            ok=all(info["ok"] for info in devices.values()) and bool(devices),
        )
    return {"gateway_crash": crashes, "gateway_crash_ok": all_ok}


def _link_metrics(
    trace: Trace, windows: Sequence[Window], config: ControlConfig, checks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Per utility-link loss: when the weather curve took over (vs hold_s), when the utility was back."""
    losses = [w for w in windows if w.kind == "utility_link_lost"]
    if not losses:
        return {}
    t = trace.data["t_s"]
    source = trace.order_source
    results = []
    for loss in losses:
        curve_at = next((t[i] for i in range(len(t)) if t[i] >= loss.start_s and source[i] == "weather_curve"), None)
        held = any(source[i] == "held" for i in range(len(t)) if loss.start_s <= t[i] < loss.end_s)
        back_at = next((t[i] for i in range(len(t)) if t[i] >= loss.end_s and source[i] == "utility"), None)
        delay = None if curve_at is None else curve_at - loss.start_s
        results.append(
            {
                "lost_s": loss.start_s,
                "held_first": held,
                "weather_curve_after_s": delay,
                "hold_s": config.utility_hold_s,
                "utility_again_after_restore_s": None if back_at is None else back_at - loss.end_s,
            }
        )
        ok = (
            held
            and delay is not None
            and (
                loss.end_s - loss.start_s <= config.utility_hold_s
                or abs(delay - config.utility_hold_s) <= 2 * config.cycle_s
            )
        )
        checks[f"link_lost_at_{loss.start_s:g}s_weather_curve_after_hold"] = _check(
            delay, f"== {config.utility_hold_s:g} s (+/- {2 * config.cycle_s:g} s), held before", ok=ok
        )
    return {"utility_link_lost": results}


def _detection_metrics(trace: Trace, windows: Sequence[Window]) -> dict[str, Any]:
    """Per silent device or frozen sensor: how long until the supervisor called it stale."""
    t = trace.data["t_s"]
    found = []
    stale = trace.stale
    for window in windows:
        if window.kind not in ("device_silent", "sensor_freeze"):
            continue
        device = window.target.split(".", 1)[0]
        seen = next(
            (
                t[i]
                for i in range(len(t))
                if window.start_s <= t[i] < window.end_s and device in stale[i].split(",")
            ),
            None,
        )
        found.append(
            {
                "kind": window.kind,
                "target": window.target,
                "start_s": window.start_s,
                "stale_after_s": None if seen is None else seen - window.start_s,
            }
        )
    return {"stale_detection": found} if found else {}


# -- files ----------------------------------------------------------------------------------------


def write_report(
    summary: Summary, trace: Trace, windows: Sequence[Window], config: ControlConfig, folder: Path, *, plot: bool = True
) -> dict[str, str]:
    """Write ``<scenario>.json`` (and ``<scenario>.png``) into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"summary": str(folder / f"{summary.scenario}.json")}
    if plot:
        files["plot"] = str(folder / f"{summary.scenario}.png")
        plot_run(summary, trace, windows, config, Path(files["plot"]))
    summary.files = files
    Path(files["summary"]).write_text(json.dumps(summary.as_dict(), indent=2, default=_json_default) + "\n", "utf-8")
    return files


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


def _decimate(n: int, limit: int = 12000) -> int:
    return max(1, math.ceil(n / limit))


def plot_run(summary: Summary, trace: Trace, windows: Sequence[Window], config: ControlConfig, path: Path) -> None:
    """The stacked panels a control engineer looks at, one PNG (matplotlib, Agg backend)."""
    import matplotlib as mpl  # noqa: PLC0415 - plotting is optional (dev extra)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    d = trace.data
    n = len(trace)
    step = _decimate(n)
    hours = d["t_s"][::step]
    scale = 3600.0
    x = [v / scale for v in hours]

    def s(name: str, factor: float = 1.0) -> list[float]:
        return [v * factor for v in d[name][::step]]

    def block(name: str, pick: Any) -> list[float]:
        values = d[name]
        return [pick(values[i : i + step]) for i in range(0, n, step)]

    fig, axes = plt.subplots(
        6, 1, figsize=(15, 19), sharex=True, gridspec_kw={"height_ratios": [3, 3, 3, 2, 2, 1.6]}, layout="constrained"
    )
    m = summary.metrics
    fig.suptitle(
        f"{summary.scenario}: {summary.description}\n"
        f"DH supply dev RMS {m.get('dh_supply_dev_rms_k')} K, max {m.get('dh_supply_dev_max_k')} K "
        f"(settled {m.get('dh_supply_dev_max_settled_k')} K); heat error mean {m.get('heat_error_mean_pct')} %, "
        f"worst hour {m.get('heat_hourly_error_max_pct')} %; rack loop above IT limit {m.get('tcs_over_limit_s')} s; "
        f"writes outside limits {summary.counts['writes_out_of_limits']}; setpoint writes "
        f"{summary.counts['setpoint_writes']}, heartbeats {summary.counts['heartbeats']} — "
        f"{'PASSED' if summary.passed else 'FAILED'}",
        fontsize=11,
    )
    for ax in axes:
        for w in windows:
            end = min(w.end_s, summary.duration_s)
            ax.axvspan(w.start_s / scale, end / scale, color="tab:red", alpha=0.08, lw=0)
        ax.grid(visible=True, alpha=0.3)

    ax = axes[0]
    ax.plot(x, s("requirement_c"), color="black", lw=1.2, drawstyle="steps-post", label="requirement (utility)")
    ax.plot(x, s("meter_supply_c"), color="tab:red", lw=1.0, label="DH supply at meter")
    ax.plot(x, s("hp_setpoint_c"), color="tab:blue", lw=0.8, ls="--", label="heat-pump setpoint (in the PLC)")
    ax.plot(x, s("requirement_used_c"), color="tab:green", lw=0.8, ls=":", label="requirement used (held / curve)")
    req = [v for v in d["requirement_c"] if math.isfinite(v)]
    if req:
        ax.set_ylim(min(req) - 6.0, max(req) + 6.0)
    ax.set_ylabel("DH supply °C")
    ax.legend(loc="lower left", ncol=4, fontsize=8)

    ax = axes[1]
    ax.plot(x, s("order_kw", 1e-3), color="black", lw=1.2, drawstyle="steps-post", label="order (utility)")
    ax.plot(x, s("delivered_kw", 1e-3), color="tab:red", lw=1.0, label="delivered (meter)")
    ax.plot(x, s("heat_limit_kw", 1e-3), color="tab:blue", lw=0.8, ls="--", label="heat-power limit (in the PLC)")
    liquid = s("liquid_kw", 1e-3)
    electric = s("hp_electric_kw", 1e-3)
    ax.plot(
        x,
        [a + b for a, b in zip(liquid, electric, strict=True)],
        color="tab:gray",
        lw=0.8,
        ls=":",
        label="IT liquid heat + compressor power",
    )
    ax.set_ylabel("heat MW")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left", ncol=4, fontsize=8)

    ax = axes[2]
    ax.fill_between(
        x,
        block("tcs_min_c", min),
        block("tcs_max_c", max),
        color="tab:orange",
        alpha=0.3,
        label="TCS supply, all CDUs (min-max)",
    )
    ax.plot(x, block("tcs_max_c", max), color="tab:red", lw=0.8, label="hottest rack loop")
    ax.plot(x, s("tcs_setpoint_max_c"), color="tab:blue", lw=0.8, ls="--", label="CDU setpoint (highest active)")
    ax.axhline(trace.it_limit_c, color="darkred", lw=1.2, ls="-", label=f"IT limit {trace.it_limit_c:g} °C")
    ax.axhline(
        trace.it_limit_c - config.it_margin_k,
        color="darkred",
        lw=0.8,
        ls=":",
        label=f"limit - margin {config.it_margin_k:g} K",
    )
    ax.plot(x, s("fws_supply_c"), color="tab:cyan", lw=0.8, label="facility water supply")
    ax.axhline(config.fws_supply_limit_c, color="tab:cyan", lw=0.8, ls=":", label="facility supply limit")
    ax.set_ylabel("°C")
    ax.legend(loc="lower left", ncol=4, fontsize=8)

    ax = axes[3]
    ax.plot(x, s("hp_heat_kw", 1e-3), color="tab:purple", lw=1.0, label="heat-pump heat MW")
    ax.plot(x, s("hp_electric_kw", 1e-3), color="tab:pink", lw=0.8, label="compressor power MW")
    ax.set_ylabel("MW")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(x, s("hp_running"), color="black", lw=0.8, drawstyle="steps-post", label="heat pumps running")
    twin.set_ylabel("running")
    twin.set_ylim(-0.2, max(4.5, max(d["hp_running"]) + 0.5))
    lines = ax.get_legend_handles_labels()
    lines_twin = twin.get_legend_handles_labels()
    ax.legend(lines[0] + lines_twin[0], lines[1] + lines_twin[1], loc="lower left", ncol=3, fontsize=8)

    ax = axes[4]
    ax.plot(x, s("dry_cooler_kw", 1e-3), color="tab:green", lw=1.0, label="dry-cooler heat MW")
    ax.set_ylabel("MW")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(x, s("dry_cooler_setpoint_c"), color="tab:olive", lw=0.8, ls="--", label="dry-cooler setpoint °C")
    twin.set_ylabel("°C")
    lines = ax.get_legend_handles_labels()
    lines_twin = twin.get_legend_handles_labels()
    ax.legend(lines[0] + lines_twin[0], lines[1] + lines_twin[1], loc="upper left", ncol=2, fontsize=8)

    _state_bands(axes[5], trace, scale)
    axes[5].set_xlabel("time h")
    axes[5].set_xlim(0, summary.duration_s / scale)
    fig.savefig(path, dpi=80)
    plt.close(fig)


_IT_OVERRIDES = ("cdu_cannot_hold", "rack_near_limit", "fws_too_hot", "cdu_data_stale")
_BAND_COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink")


def _state_bands(ax: Any, trace: Trace, scale: float) -> None:
    """Shaded rows over time: mode, order source, IT and DH overrides, stale devices."""
    t = trace.data["t_s"]
    it_overrides = [_overrides(o, it=True) for o in trace.overrides]
    dh_overrides = [_overrides(o, it=False) for o in trace.overrides]
    rows: list[tuple[str, list[str], dict[str, str]]] = [
        ("mode", trace.mode, {"auto": "tab:green", "manual": "tab:orange", "off": "tab:gray", "down": "black"}),
        (
            "order source",
            trace.order_source,
            {"utility": "tab:green", "held": "tab:orange", "weather_curve": "tab:red"},
        ),
        ("IT overrides", it_overrides, {}),
        ("DH overrides", dh_overrides, {}),
        ("stale data", trace.stale, {}),
    ]
    labels = []
    handles: dict[str, Any] = {}
    for row, (label, values, colours) in enumerate(rows):
        labels.append(label)
        palette = dict(colours)
        start = 0
        for i in range(1, len(values) + 1):
            if i == len(values) or values[i] != values[start]:
                value = values[start]
                if value:
                    colour = palette.setdefault(value, _BAND_COLOURS[len(palette) % len(_BAND_COLOURS)])
                    end_s = t[i - 1] + 1.0
                    bar = ax.broken_barh(
                        [(t[start] / scale, (end_s - t[start]) / scale)], (row - 0.4, 0.8), color=colour, lw=0
                    )
                    handles.setdefault(f"{label}: {value}", bar)
                start = i
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.invert_yaxis()
    if handles:
        items = list(handles.items())[:16]
        ax.legend(
            [bar for _, bar in items],
            [name for name, _ in items],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.45),
            ncol=4,
            fontsize=8,
            frameon=False,
        )


def _overrides(overrides: str, *, it: bool) -> str:
    """The active overrides of one kind (IT side or DH side), joined with '+'."""
    names = [item.split(":", 1)[1] for item in overrides.split(",") if item.startswith("override:")]
    return "+".join(name for name in names if (name in _IT_OVERRIDES) == it)
