"""The supervisory controller live, over real Modbus and OPC UA sockets, on an accelerated plant.

The simulators serve 12 CDUs and the heat meter (Modbus) and the heat-pump PLC and the panel
PC (OPC UA) from one plant model that runs the reference day's first hours SPEED times faster
than real time. The gateway polls them, runs the same :class:`Supervisor` the fast harness
runs (its cycle and its clock scaled to the plant's) and writes setpoints through its drivers.
Checked on the plant's true values: no rack loop above its IT limit at any time, no write
outside the profile limits, DH supply on its requirement, the heat order met; then the gateway
dies and every device falls back to its local setpoints within its watchdog timeout.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from gateway.config import load_site
from gateway.control_loop import ControlLoop
from gateway.service import Gateway
from simulators.harness import _on_local_values
from simulators.plant import Plant
from simulators.scenario import ScenarioRunner, load_scenario
from simulators.site import SimulatedSite
from tests.services import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SPEED = 40.0  # plant seconds per real second
HOURS = 2.0
TICK_REAL_S = 0.05
WARMUP_PLANT_S = 900.0  # take-over from local control, not judged


def write_site(tmp_path: Path, mqtt_port: int) -> Path:
    poll = 0.1  # real seconds = 4 plant seconds
    lines = [
        f"  - {{name: cdu-{i}, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {free_port()}, profile: cdu, "
        f"poll_period_s: {poll}, timeout_s: 0.5, backoff_max_s: 0.5}}"
        for i in range(1, 13)
    ]
    lines.append(
        f"  - {{name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: {free_port()}, "
        f"unit_id: 10, profile: heat-meter, poll_period_s: {poll}, timeout_s: 0.5, backoff_max_s: 0.5}}"
    )
    for name, kind in (("hp-plc", "heat_pump_plc"), ("panel-pc", "panel_pc")):
        lines.append(
            f"  - {{name: {name}, kind: {kind}, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{free_port()}/', "
            f"profile: {name}, poll_period_s: {poll}, timeout_s: 1.0, backoff_max_s: 0.5}}"
        )
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: live\nprofiles_dir: {REPO / 'config' / 'profiles'}\nstate_dir: {tmp_path / 'state'}\n"
        "devices:\n" + "\n".join(lines) + "\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: live-{time.time_ns()}}}\n"
        # Times in plant seconds except input_max_age_s, which the snapshot measures on the wall
        # clock: 1 real second = 40 plant seconds.
        "control: {cycle_s: 1.0, heartbeat_period_s: 5.0, input_max_age_s: 1.0}\n",
        encoding="utf-8",
    )
    return path


class Judge:
    """Samples the plant's truth after every step and keeps the figures the issue names."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        self.cdus = [name for name in plant.device_names() if plant.device_kind(name) == "cdu"]
        self.limits = {name: plant.read(name)["it_limit_c"] for name in self.cdus}
        self.above_limit_s = 0.0
        self.hottest_c = -math.inf
        self.dh_errors: list[float] = []
        self.heat_errors_pct: list[float] = []
        self.last_requirement: float | None = None
        self.requirement_changed_s = -math.inf

    def sample(self, time_s: float, dt_s: float) -> None:
        truth = self.plant.snapshot()
        for name in self.cdus:
            supply = truth[f"truth.{name}.tcs_supply_temp_c"]
            self.hottest_c = max(self.hottest_c, supply)
            if supply > self.limits[name]:
                self.above_limit_s += dt_s
                break
        requirement = truth["truth.utility.supply_temp_c"]
        if requirement != self.last_requirement:
            self.last_requirement = requirement
            self.requirement_changed_s = time_s
        if time_s < WARMUP_PLANT_S or time_s - self.requirement_changed_s < 300:
            return
        self.dh_errors.append(truth["truth.dh.meter_flow_temp_c"] - requirement)
        order_kw = truth["truth.utility.heat_order_mw"] * 1000
        if order_kw > 0:
            self.heat_errors_pct.append(100 * (truth["truth.dh.meter_heat_kw"] - order_kw) / order_kw)


async def test_supervisor_live_over_modbus_and_opcua(tmp_path, mosquitto):
    site = load_site(write_site(tmp_path, mosquitto.port))
    scenario = load_scenario("reference-day")
    plant = Plant(scenario.plant_config(), seed=scenario.seed)
    runner = ScenarioRunner(scenario, plant=plant)
    simulated = SimulatedSite(site, plant)
    await simulated.start()
    gateway = Gateway(site)
    # The same supervisor, on the plant's clock: a control cycle every plant second.
    assert gateway.control is not None
    gateway.control = ControlLoop(
        site,
        gateway.image,
        {p.name: p.driver for p in gateway.pollers},
        gateway.outbox,
        clock=lambda: plant.time_s,
        cycle_real_s=1.0 / SPEED,
    )
    judge = Judge(plant)
    stop = asyncio.Event()
    gateway_task = asyncio.create_task(gateway.run(stop), name="gateway")
    loop = asyncio.get_running_loop()
    try:
        last = loop.time()
        end_s = HOURS * 3600
        while plant.time_s < end_s:
            await asyncio.sleep(TICK_REAL_S)
            now = loop.time()
            dt = min((now - last) * SPEED, 10.0)
            last = now
            runner.advance(dt)
            judge.sample(plant.time_s, dt)
            await simulated.refresh()
            assert not gateway_task.done(), gateway_task
        control = gateway.control
        executor = control.executor
        # While the gateway ran: control under way, no watchdog fell back.
        assert control.cycles > 0.8 * end_s, control.cycles
        assert not any(plant.watchdog_tripped(name) for name in [*judge.cdus, "hp-plc"])
        assert all(plant.read(name)["control_mode"] == 1 for name in judge.cdus)

        # The gateway dies: nobody polls, writes or sends heartbeats any more.
        gateway_task.cancel()
        await asyncio.gather(gateway_task, return_exceptions=True)
        crash_s = plant.time_s
        fallback_s: dict[str, float] = {}
        while plant.time_s < crash_s + 120 and len(fallback_s) < len(judge.cdus) + 1:
            runner.advance(1.0)
            judge.sample(plant.time_s, 1.0)
            for name, local in _on_local_values(plant).items():
                if local and name not in fallback_s:
                    fallback_s[name] = plant.time_s - crash_s
    finally:
        stop.set()
        if not gateway_task.done():
            gateway_task.cancel()
            await asyncio.gather(gateway_task, return_exceptions=True)
        await simulated.stop()

    rms = math.sqrt(sum(e * e for e in judge.dh_errors) / len(judge.dh_errors))
    worst = max(abs(e) for e in judge.dh_errors)
    heat_mean = sum(abs(e) for e in judge.heat_errors_pct) / len(judge.heat_errors_pct)
    print(
        f"\nlive {HOURS:g} h at {SPEED:g}x: cycles {control.cycles}, writes done {executor.done}, failed "
        f"{executor.failed}, refused {executor.refused}; DH dev RMS {rms:.3f} K max {worst:.2f} K; heat error "
        f"mean {heat_mean:.3f} %; hottest {judge.hottest_c:.2f} C; above limit {judge.above_limit_s} s; "
        f"fallback after crash {max(fallback_s.values()):.0f} s"
    )
    assert judge.above_limit_s == 0, f"a rack loop was above its IT limit for {judge.above_limit_s} s"
    assert executor.refused == 0, "a write outside the profile limits reached the executor"
    assert executor.failed == 0, "a device refused or failed a write"
    assert executor.done > 100
    assert rms <= 0.5
    assert heat_mean <= 2.0
    # Every device on its local setpoints within its watchdog timeout (60 s) plus one step.
    assert set(fallback_s) == {*judge.cdus, "hp-plc"}, fallback_s
    assert max(fallback_s.values()) <= 60 + 2, fallback_s
