"""Role contracts: what `check` prints per device, and the role and heartbeat mistakes it refuses.

The base site binds another vendor's CDU and heat pump (tests/profiles) to the CDU and
station-PLC roles; each case breaks one thing in the site file or a profile and expects
`load_site` (what `check` and `run` call) to refuse it with a message naming the device, the
role and the signal.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_site
from gateway.control.roles import ROLES, role_map_of_site
from gateway.control.supervisor import supervisor_for_site

REPO = Path(__file__).resolve().parent.parent
PROFILES = {
    "heat-meter": (REPO / "config" / "profiles" / "heat-meter.yaml").read_text(encoding="utf-8"),
    "panel-pc": (REPO / "config" / "profiles" / "panel-pc.yaml").read_text(encoding="utf-8"),
    "acme-cdu": (REPO / "tests" / "profiles" / "acme-cdu.yaml").read_text(encoding="utf-8"),
    "nordheat-hp": (REPO / "tests" / "profiles" / "nordheat-hp.yaml").read_text(encoding="utf-8"),
}
ACME = {
    "tcs_supply_temp_c": "supply_t1",
    "tcs_supply_temp_2_c": "supply_t2",
    "valve_feedback_pct": "valve_pos",
    "it_limit_c": "45",
    "local_setpoint_c": "sp_local",
    "tcs_supply_setpoint_c": "sp_ext",
    "control_mode": "absent",
}
NORDHEAT = {
    "dh_supply_temp_c": "flow_out_c",
    "dh_return_temp_c": "return_in_c",
    "hp_source_inlet_temp_c": "source_in_c",
    "hp_source_outlet_temp_c": "absent",
    "fws_supply_temp_c": "source_header_c",
    "hp_running_count": "compressors_on",
    "dh_pump_tripped": "pump_fault",
    "hp_supply_setpoint_c": "flow_setpoint_c",
    "heat_power_limit_kw": "capacity_limit_kw",
    "hp_enable": "run_permit",
    "interlock_status": "absent",
    "hx_heat_kw": "absent",
    "outdoor_temp_c": "absent",
    "dry_cooler_setpoint_c": "absent",
    "dry_cooler_enable": "absent",
}


def write_site(
    folder: Path,
    *,
    acme: dict[str, str] | None = None,
    nordheat: dict[str, str] | None = None,
    acme_extra: str = "",
    control_extra: str = "",
    stray: str = "",
    profiles: dict[str, str] | None = None,
) -> Path:
    (folder / "profiles").mkdir(exist_ok=True)
    for name, text in {**PROFILES, **(profiles or {})}.items():
        (folder / "profiles" / f"{name}.yaml").write_text(text, encoding="utf-8")

    def block(signals: dict[str, str]) -> str:
        return "".join(f"\n        {key}: {value}" for key, value in signals.items())

    path = folder / "site.yaml"
    path.write_text(
        "site: vendor\n"
        "devices:\n"
        "  - {name: acme-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: 1502, profile: acme-cdu}\n"
        "  - {name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: 1503, profile: heat-meter}\n"
        "  - {name: nordheat, kind: heat_pump_plc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:4840/', "
        "profile: nordheat-hp}\n"
        "  - {name: panel-pc, kind: panel_pc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:4841/', "
        "profile: panel-pc}\n"
        "control:\n"
        "  heat_pump_plc_device: nordheat\n"
        "  cdu_devices: [acme-1]\n"
        f"{control_extra}"
        "  devices:\n"
        f"{stray}"
        f"    acme-1:\n{acme_extra}      signals:{block(ACME if acme is None else acme)}\n"
        f"    nordheat:\n      signals:{block(NORDHEAT if nordheat is None else nordheat)}\n",
        encoding="utf-8",
    )
    return path


def test_the_vendor_site_binds_and_check_prints_the_contract_per_device(tmp_path):
    site = load_site(write_site(tmp_path))
    roles = role_map_of_site(site.config, site.profiles)
    acme = roles.devices["acme-1"]
    assert acme.bindings["it_limit_c"].kind == "constant"
    assert acme.bindings["it_limit_c"].value == 45.0
    assert acme.bindings["tcs_supply_temp_c"].signal == "supply_t1"
    assert not acme.has("control_mode")
    # sp_ext is int16 x 0.1: its resolution (and default deadband) is 0.1 K, not the role's 0.01
    assert acme.outputs["tcs_supply_setpoint_c"].resolution == pytest.approx(0.1)
    assert acme.heartbeat is not None
    assert (acme.heartbeat.signal, acme.heartbeat.mode.value, acme.heartbeat.echo_of) == (
        "wd_reply",
        "echo",
        "wd_request",
    )
    # No signal is written because of its name: the vendor's pump-mode register is called
    # control_mode and is writable, but the site marked the role's control_mode absent.
    limits = supervisor_for_site(site).limits
    assert set(limits) == {
        ("acme-1", "sp_ext"),
        ("acme-1", "wd_reply"),
        ("nordheat", "flow_setpoint_c"),
        ("nordheat", "capacity_limit_kw"),
        ("nordheat", "run_permit"),
        ("nordheat", "alive_echo"),
        ("panel-pc", "heartbeat"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(tmp_path / "site.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in (
        "acme-1: role cdu",
        "reads  it_limit_c               constant 45",
        "reads  tcs_supply_temp_c        signal supply_t1",
        "writes control_mode             absent -> the CDU is taken to act on the written setpoint",
        "writes tcs_supply_setpoint_c    signal sp_ext [20..45, deadband 0.1, at most every 10 s]",
        "heartbeat: wd_reply (echo of wd_request) every 9 s [derived: a third of the watchdog timeout], watchdog 30 s",
        "nordheat: role station_plc",
        "reads  hx_heat_kw               absent -> no heat_pump_capacity override",
        "heartbeat: alive_echo (echo of alive_counter) every 13 s",
    ):
        assert line in out, f"{line!r} not in:\n{out}"


def _drop(signals: dict[str, str], key: str) -> dict[str, str]:
    return {k: v for k, v in signals.items() if k != key}


NO_WATCHDOG = PROFILES["acme-cdu"].split("watchdog:")[0]
CASES = [
    (
        "required input neither in the profile nor bound",
        {"acme": _drop(ACME, "tcs_supply_temp_c")},
        (
            "device 'acme-1' (role cdu): input tcs_supply_temp_c: no signal 'tcs_supply_temp_c' in profile 'acme-cdu'; "
            "map it to a profile signal under control.devices.acme-1.signals"
        ),
    ),
    (
        "no IT-limit register and no constant given",
        {"acme": _drop(ACME, "it_limit_c")},
        (
            "input it_limit_c: no signal 'it_limit_c' in profile 'acme-cdu'; map it to a profile signal or give a "
            "constant (it_limit_c: <value>)"
        ),
    ),
    (
        "bound to a signal the profile does not have",
        {"acme": {**ACME, "tcs_supply_temp_c": "supply_t9"}},
        "device 'acme-1' (role cdu): input tcs_supply_temp_c: no signal 'supply_t9' in profile 'acme-cdu'",
    ),
    (
        "a constant where the role needs a reading",
        {"acme": {**ACME, "tcs_supply_temp_c": "40"}},
        "device 'acme-1' (role cdu): input tcs_supply_temp_c cannot be a constant (40.0)",
    ),
    (
        "absent where the role cannot do without",
        {"acme": {**ACME, "tcs_supply_setpoint_c": "absent"}},
        "device 'acme-1' (role cdu): output tcs_supply_setpoint_c cannot be absent",
    ),
    (
        "an output bound to a read-only signal",
        {"acme": {**ACME, "tcs_supply_setpoint_c": "sp_local"}},
        "output tcs_supply_setpoint_c: signal 'sp_local' is read-only in profile 'acme-cdu'",
    ),
    (
        "a key that is not a signal of the role",
        {"acme": {**ACME, "it_limit": "45"}},
        "device 'acme-1' (role cdu): 'it_limit' is not a signal of role cdu",
    ),
    (
        "two outputs on one signal",
        {"nordheat": {**NORDHEAT, "dry_cooler_setpoint_c": "flow_setpoint_c"}},
        (
            "device 'nordheat' (role station_plc): outputs hp_supply_setpoint_c and dry_cooler_setpoint_c are both "
            "bound to signal 'flow_setpoint_c'"
        ),
    ),
    (
        "the heartbeat bound as a role output too",
        {"acme": {**ACME, "tcs_supply_setpoint_c": "wd_reply"}},
        "device 'acme-1' (role cdu): the heartbeat signal 'wd_reply' is also bound to a role output",
    ),
    (
        "a heartbeat period that cannot keep the watchdog armed",
        {"acme_extra": "      heartbeat_period_s: 15\n"},
        (
            "device 'acme-1' (role cdu): heartbeat period 15 s (site (control.devices)) cannot keep the 30 s watchdog "
            "armed: one lost heartbeat leaves a gap of 2 x (15 + cycle 1) + poll 1 s (echo) = 33 s; at most 13.5 s"
        ),
    ),
    (
        "a heartbeat period shorter than a control cycle",
        {"acme_extra": "      heartbeat_period_s: 0.5\n"},
        "heartbeat period 0.5 s (site (control.devices)) is shorter than control.cycle_s 1 s",
    ),
    (
        "a global heartbeat period too long for a watchdog",
        {"control_extra": "  heartbeat_period_s: 25\n"},
        (
            "device 'nordheat' (role station_plc): heartbeat period 25 s (site (control.heartbeat_period_s)) cannot "
            "keep the 40 s watchdog armed"
        ),
    ),
    (
        "a device the role writes to without a declared watchdog",
        {"profiles": {"acme-cdu": NO_WATCHDOG}},
        (
            "device 'acme-1' (role cdu): profile 'acme-cdu' declares no watchdog but the role writes sp_ext: "
            "the device would keep the last value written if the gateway stopped"
        ),
    ),
    (
        "a watchdog without a timeout on a device the role writes to",
        {"profiles": {"acme-cdu": PROFILES["acme-cdu"].replace(", timeout_s: 30", "")}},
        "device 'acme-1' (role cdu): watchdog.timeout_s is not declared but the role writes to the device",
    ),
    (
        "an echo heartbeat without the value to echo",
        {"profiles": {"acme-cdu": PROFILES["acme-cdu"].replace(", echo_of: wd_request", "")}},
        "watchdog: mode echo needs echo_of: the signal whose value is written back",
    ),
    (
        "a heartbeat signal that is read-only",
        {"profiles": {"acme-cdu": PROFILES["acme-cdu"].replace("heartbeat: wd_reply", "heartbeat: wd_timeout_s")}},
        "watchdog.heartbeat: signal 'wd_timeout_s' is read-only (access must be read_write)",
    ),
    (
        "a heartbeat signal the profile does not have",
        {"profiles": {"acme-cdu": PROFILES["acme-cdu"].replace("heartbeat: wd_reply", "heartbeat: wd_ack")}},
        "watchdog.heartbeat: no signal 'wd_ack' in signals",
    ),
    (
        "write economy for something that is not an output",
        {"acme_extra": "      writes: {it_limit_c: {deadband: 0.5}}\n"},
        (
            "control.devices.acme-1.writes: 'it_limit_c' is not an output of role cdu (its outputs: "
            "tcs_supply_setpoint_c, control_mode)"
        ),
    ),
    (
        "control settings for a device without a role",
        {"stray": "    heat-meterr: {heartbeat_period_s: 5}\n"},
        "control.devices.heat-meterr: 'heat-meterr' has no control role",
    ),
]


@pytest.mark.parametrize(("what", "change", "says"), CASES, ids=[case[0] for case in CASES])
def test_check_refuses_role_and_heartbeat_mistakes(tmp_path, what, change, says):
    del what
    path = write_site(tmp_path, **change)
    with pytest.raises(ConfigError) as error:
        load_site(path)
    message = str(error.value)
    assert says in message, message
    assert str(path.parent) in message  # the file is named


def test_at_least_eight_kinds_of_mistakes_are_refused():
    assert len(CASES) >= 8


def test_every_role_lists_its_inputs_and_outputs_once():
    for role in ROLES.values():
        names = [signal.name for signal in role.signals]
        assert len(names) == len(set(names)), role.name
    assert [s.name for s in ROLES["heat_meter"].signals if s.output] == []
    docs = (REPO / "docs" / "control.md").read_text(encoding="utf-8")
    plain = docs.replace("`", "")
    for role in ROLES.values():
        for signal in role.signals:
            assert f"`{signal.name}`" in docs, f"docs/control.md does not list {role.name}.{signal.name}"
            if signal.absent:
                assert signal.absent.split(";")[0].split(":")[0] in plain, (role.name, signal.name)
