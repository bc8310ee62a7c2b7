"""Another vendor's CDU (Modbus) and heat pump (OPC UA) under control, over real sockets.

The profiles (tests/profiles/acme-cdu.yaml, nordheat-hp.yaml) read the way other vendors write
them: their own names, register numbers from 1, 0.1 degC, no IT-limit register, a pump-mode
register that happens to be called ``control_mode``, no plate exchanger or dry coolers, and
watchdogs that want their challenge echoed. The site binds them to the CDU and station-PLC
roles (``control.devices``). Simulators of those devices (simulators/vendor.py) sit in front of
the plant model, which runs the reference day SPEED times faster than real time; the heat
meter and the panel are the bundled ones. Five plant minutes under control, then the gateway
stops.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from pathlib import Path

import pytest

from gateway.commissioning.control import commission_control
from gateway.config import load_site
from gateway.config.profile import ModbusProfile, OpcUaProfile
from gateway.control_loop import ControlLoop
from gateway.service import Gateway
from simulators.modbus_server import ModbusEndpoint, UnitImage
from simulators.opcua_server import OpcUaDeviceServer
from simulators.plant import Plant
from simulators.scenario import ScenarioRunner, load_scenario
from simulators.site import SimulatedSite
from simulators.vendor import VendorCdu, VendorHeatPump
from tests.services import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SPEED = 6.0  # plant seconds per real second
UNDER_CONTROL_S = 300.0  # plant seconds
TICK_REAL_S = 0.05

ACME_SIGNALS = """
        tcs_supply_temp_c: supply_t1
        tcs_supply_temp_2_c: supply_t2
        valve_feedback_pct: valve_pos
        it_limit_c: 45
        local_setpoint_c: sp_local
        tcs_supply_setpoint_c: sp_ext
        control_mode: absent"""
NORDHEAT_SIGNALS = """
        dh_supply_temp_c: flow_out_c
        dh_return_temp_c: return_in_c
        hp_source_inlet_temp_c: source_in_c
        hp_source_outlet_temp_c: absent
        fws_supply_temp_c: source_header_c
        hp_running_count: compressors_on
        dh_pump_tripped: pump_fault
        hp_supply_setpoint_c: flow_setpoint_c
        heat_power_limit_kw: capacity_limit_kw
        hp_enable: run_permit
        interlock_status: absent
        hx_heat_kw: absent
        outdoor_temp_c: absent
        dry_cooler_setpoint_c: absent
        dry_cooler_enable: absent"""


def write_site(tmp_path: Path, mqtt_port: int, ports: dict[str, int]) -> Path:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in ("heat-meter", "panel-pc"):
        shutil.copy(REPO / "config" / "profiles" / f"{name}.yaml", profiles)
    for name in ("acme-cdu", "nordheat-hp"):
        shutil.copy(REPO / "tests" / "profiles" / f"{name}.yaml", profiles)
    poll = 0.2  # real seconds = 1.2 plant seconds
    common = f"poll_period_s: {poll}, timeout_s: 0.5, backoff_max_s: 0.5"
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: vendor\nprofiles_dir: {profiles}\nstate_dir: {tmp_path / 'state'}\n"
        "devices:\n"
        f"  - {{name: acme-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {ports['acme']}, "
        f"profile: acme-cdu, {common}}}\n"
        f"  - {{name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: {ports['meter']}, "
        f"unit_id: 10, profile: heat-meter, {common}}}\n"
        f"  - {{name: nordheat, kind: heat_pump_plc, protocol: opcua, "
        f"endpoint: 'opc.tcp://127.0.0.1:{ports['nordheat']}/', profile: nordheat-hp, {common}}}\n"
        f"  - {{name: panel-pc, kind: panel_pc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{ports['panel']}/', "
        f"profile: panel-pc, {common}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: vendor-{time.time_ns()}}}\n"
        # Times in plant seconds except input_max_age_s (wall clock: 1 real s = 6 plant s).
        "control:\n"
        "  heat_pump_plc_device: nordheat\n"
        "  cdu_devices: [acme-1]\n"
        "  input_max_age_s: 1.0\n"
        "  devices:\n"
        f"    acme-1:\n      heartbeat_period_s: 8\n      signals:{ACME_SIGNALS}\n"
        f"    nordheat:\n      heartbeat_period_s: 8\n      signals:{NORDHEAT_SIGNALS}\n",
        encoding="utf-8",
    )
    return path


async def test_another_vendors_cdu_and_heat_pump_under_control(tmp_path, mosquitto):
    ports = {name: free_port() for name in ("acme", "meter", "nordheat", "panel")}
    site = load_site(write_site(tmp_path, mosquitto.port, ports))
    scenario = load_scenario("reference-day")
    plant = Plant(scenario.plant_config(), seed=scenario.seed)
    runner = ScenarioRunner(scenario, plant=plant)
    simulated = SimulatedSite(site, plant)  # the bundled heat meter and panel
    assert set(simulated.units) | set(simulated.opcua_servers) == {"heat-meter", "panel-pc"}

    def clock() -> float:
        return plant.time_s

    acme = VendorCdu(plant, "cdu-1", timeout_s=30.0, clock=clock)
    nordheat = VendorHeatPump(plant, "hp-plc", timeout_s=40.0, clock=clock)
    acme_profile = site.profiles["acme-cdu"]
    nordheat_profile = site.profiles["nordheat-hp"]
    assert isinstance(acme_profile, ModbusProfile)
    assert isinstance(nordheat_profile, OpcUaProfile)
    acme_endpoint = ModbusEndpoint("127.0.0.1", ports["acme"])
    acme_unit = UnitImage("acme-1", acme_profile, on_write=acme.on_write)
    acme_unit.update(acme.values())
    acme_endpoint.units[1] = acme_unit
    nordheat_server = OpcUaDeviceServer(
        nordheat_profile, "127.0.0.1", ports["nordheat"], on_write=nordheat.on_write, initial=nordheat.values()
    )
    await acme_endpoint.start()
    await asyncio.gather(simulated.start(), nordheat_server.start())

    # Commissioning first (check --control): every role input read once, what auto would write,
    # and nothing written.
    commissioning = await commission_control(site)
    assert commissioning.unreachable == {}
    rows = {(row.device, row.signal): row for row in commissioning.rows}
    assert rows[("acme-1", "it_limit_c")].quality == "constant (site file)"
    assert rows[("acme-1", "control_mode")].quality.startswith("absent: the CDU is taken to act")
    assert rows[("acme-1", "tcs_supply_temp_c")].quality == "good"
    assert rows[("acme-1", "tcs_supply_temp_c")].binding == "signal supply_t1"
    assert rows[("nordheat", "hx_heat_kw")].quality.startswith("absent: no heat_pump_capacity override")
    bound = [row for row in commissioning.rows if row.binding.startswith("signal")]
    assert all(row.quality == "good" for row in bound), [row for row in bound if row.quality != "good"]
    would = {(w.device, w.signal): w for w in commissioning.writes}
    assert would[("acme-1", "wd_reply")].value == acme.watchdog.request  # the echo of what was read
    assert ("acme-1", "sp_ext") in would
    assert ("nordheat", "flow_setpoint_c") in would
    assert not any(signal == "control_mode" for _, signal in would)
    assert "acme-1: watchdog 30 s as declared" in "\n".join(commissioning.watchdogs)
    assert acme.writes == []
    assert nordheat.writes == []
    assert nordheat_server.writes == []

    gateway = Gateway(site)
    assert gateway.control is not None
    gateway.control = ControlLoop(
        site,
        gateway.image,
        {p.name: p.driver for p in gateway.pollers},
        gateway.outbox,
        clock=clock,
        cycle_real_s=1.0 / SPEED,
    )
    control = gateway.control
    stop = asyncio.Event()
    gateway_task = asyncio.create_task(gateway.run(stop), name="gateway")
    loop = asyncio.get_running_loop()
    hottest_c = 0.0
    armed_at: dict[str, float] = {}

    async def advance(dt_s: float) -> None:
        nonlocal hottest_c
        runner.advance(dt_s)
        acme.tick()
        nordheat.tick()
        for name, device in (("acme", acme), ("nordheat", nordheat)):
            if device.watchdog.armed:
                armed_at.setdefault(name, plant.time_s)
        hottest_c = max(hottest_c, plant.snapshot()["truth.cdu-1.tcs_supply_temp_c"])
        await simulated.refresh()
        acme_unit.update(acme.values())
        if nordheat_server.running:
            await nordheat_server.update(nordheat.values())

    try:
        last = loop.time()
        while plant.time_s < UNDER_CONTROL_S:
            await asyncio.sleep(TICK_REAL_S)
            now = loop.time()
            dt = min((now - last) * SPEED, 5.0)
            last = now
            await advance(dt)
            assert not gateway_task.done(), gateway_task
        state = control.state
        executor = control.executor

        # Every watchdog armed (from the first heartbeats on) and never tripped.
        assert set(armed_at) == {"acme", "nordheat"}, armed_at
        assert max(armed_at.values()) < 30.0, armed_at
        assert acme.watchdog.trips == 0, acme.watchdog.trip_times
        assert nordheat.watchdog.trips == 0, nordheat.watchdog.trip_times
        assert acme.watchdog.armed
        assert nordheat.watchdog.armed
        assert not plant.watchdog_tripped("cdu-1")
        assert not plant.watchdog_tripped("hp-plc")

        # Nothing written to a signal the site did not bind (the vendor's pump-mode register
        # called control_mode included), nothing refused, nothing failed.
        assert {signal for _, signal, _ in acme.writes} == {"sp_ext", "wd_reply"}
        assert {signal for _, signal, _ in nordheat.writes} <= {
            "flow_setpoint_c",
            "capacity_limit_kw",
            "run_permit",
            "alive_echo",
        }
        assert {"flow_setpoint_c", "capacity_limit_kw", "alive_echo"} <= {s for _, s, _ in nordheat.writes}
        panel_writes = {signal for device, signal in control.supervisor.limits if device == "panel-pc"}
        assert panel_writes == {"heartbeat"}
        assert not any(device == "heat-meter" for device, _ in control.supervisor.limits)
        assert executor.refused == 0
        assert executor.failed == 0

        # Setpoints move as the supervisor decides: the CDU's rises with the common ceiling from
        # its local value, in steps of at least 10 s; the heat pump holds what it was given.
        sp_ext = [(t, value) for t, signal, value in acme.writes if signal == "sp_ext"]
        assert len(sp_ext) >= 3
        assert sp_ext[-1][1] >= sp_ext[0][1] + 1.0, sp_ext
        assert all(b[0] - a[0] >= 10.0 - 1.5 for a, b in itertools.pairwise(sp_ext)), sp_ext
        lease = state.leases[("acme-1", "tcs_supply_setpoint_c")]
        assert lease.value == pytest.approx(sp_ext[-1][1])
        assert plant.read("cdu-1")["tcs_supply_setpoint_c"] == pytest.approx(lease.value)
        assert plant.read("cdu-1")["control_mode"] == 1
        for role_output, signal, plant_signal in (
            ("hp_supply_setpoint_c", "flow_setpoint_c", "hp_supply_setpoint_c"),
            ("heat_power_limit_kw", "capacity_limit_kw", "heat_power_limit_kw"),
        ):
            written = [value for _, name, value in nordheat.writes if name == signal]
            lease = state.leases[("nordheat", role_output)]
            assert written[-1] == pytest.approx(lease.value)
            assert plant.read("hp-plc")[plant_signal] == pytest.approx(lease.value)
        assert hottest_c < 45.0  # the IT limit the site gave as a constant

        # Heartbeats counted apart from setpoint writes: every 8 plant s to each of the two, and
        # 10 s to the panel (its profile's period).
        beats = [t for t, signal, _ in acme.writes if signal == "wd_reply"]
        assert len(beats) >= UNDER_CONTROL_S / 8.0 * 0.8
        assert state.heartbeat_writes_total >= len(beats)
        assert state.setpoint_writes_total >= len(sp_ext)
        print(
            f"\nvendor devices {UNDER_CONTROL_S:g} s at {SPEED:g}x: acme sp_ext writes {len(sp_ext)} "
            f"({sp_ext[0][1]:g} -> {sp_ext[-1][1]:g} degC), echo heartbeats {len(beats)}; nordheat writes "
            f"{len(nordheat.writes)}; setpoint writes {state.setpoint_writes_total}, heartbeats "
            f"{state.heartbeat_writes_total}; hottest rack loop {hottest_c:.2f} degC"
        )

        # The gateway stops: no more echoes, both vendor watchdogs trip within their timeouts.
        stop.set()
        await asyncio.wait_for(gateway_task, timeout=30)
        last_acme = max(t for t, signal, _ in acme.writes if signal == "wd_reply")
        last_nordheat = max(t for t, signal, _ in nordheat.writes if signal == "alive_echo")
        stopped_s = plant.time_s
        while plant.time_s < stopped_s + 60.0:
            await advance(1.0)
        assert acme.watchdog.trips == 1
        assert nordheat.watchdog.trips == 1
        assert acme.watchdog.trip_times[0] - last_acme <= 30.0 + 1.0
        assert nordheat.watchdog.trip_times[0] - last_nordheat <= 40.0 + 1.0
        assert plant.read("cdu-1")["control_mode"] == 0  # back on its local setpoint
    finally:
        stop.set()
        if not gateway_task.done():
            gateway_task.cancel()
            await asyncio.gather(gateway_task, return_exceptions=True)
        await acme_endpoint.stop()
        await nordheat_server.stop()
        await simulated.stop()
