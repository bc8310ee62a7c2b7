"""What a SIGHUP reload restarts and keeps, decided from two validated site files (no I/O).

The live behaviour (a real process, RELOADING=1/READY=1, a refused file) is in test_systemd.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway.config import load_site
from gateway.service import ReloadPlan

REPO = Path(__file__).resolve().parent.parent


def cdu(i: int, period_s: float = 1.0) -> str:
    return (
        f"  - {{name: cdu-{i}, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {5020 + i}, profile: cdu, "
        f"poll_period_s: {period_s}}}"
    )


def site_file(folder: Path, devices: list[str], *, mqtt: str = "{host: 127.0.0.1}", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    profiles = folder / "profiles"
    if not profiles.exists():
        shutil.copytree(REPO / "config" / "profiles", profiles)
    path = folder / "site.yaml"
    path.write_text(
        "site: plan\nprofiles_dir: profiles\ndevices:\n" + "\n".join(devices) + f"\nmqtt: {mqtt}\n" + extra,
        encoding="utf-8",
    )
    return path


def plan(tmp_path: Path, before: list[str], after: list[str], **after_kwargs: str) -> ReloadPlan:
    # one file, rewritten in place, as an operator does before `systemctl reload`
    old = load_site(site_file(tmp_path, before))
    new = load_site(site_file(tmp_path, after, **after_kwargs))
    return ReloadPlan.between(old, new)


def test_same_file_changes_nothing(tmp_path):
    result = plan(tmp_path, [cdu(1), cdu(2)], [cdu(1), cdu(2)])
    assert result.kept == ["cdu-1", "cdu-2"]
    assert not result.devices_touched
    assert not result.publisher
    assert not result.control
    assert result.not_applied == []


def test_changed_added_and_removed_devices(tmp_path):
    result = plan(tmp_path, [cdu(1), cdu(2), cdu(3)], [cdu(1), cdu(2, period_s=2.0), cdu(4)])
    assert result.kept == ["cdu-1"]
    assert result.changed == ["cdu-2"]
    assert result.added == ["cdu-4"]
    assert result.removed == ["cdu-3"]
    assert not result.publisher  # the spool and the broker session go on


def test_a_changed_profile_restarts_the_devices_that_use_it(tmp_path):
    old = load_site(site_file(tmp_path, [cdu(1)]))
    folder = tmp_path
    profile = folder / "profiles" / "cdu.yaml"
    # the same model answering slower: a profile key, not a device key
    text = profile.read_text(encoding="utf-8")
    profile.write_text(text.replace("\nsignals:", "\npause_between_requests_s: 0.05\nsignals:", 1), encoding="utf-8")
    result = ReloadPlan.between(old, load_site(folder / "site.yaml"))
    assert result.changed == ["cdu-1"]


def test_another_state_dir_restarts_the_publisher(tmp_path):
    result = plan(tmp_path, [cdu(1)], [cdu(1)], extra="state_dir: elsewhere\n")
    assert result.publisher
    assert result.kept == ["cdu-1"]


def test_a_changed_broker_restarts_the_publisher_and_logging_waits_for_a_restart(tmp_path):
    result = plan(
        tmp_path, [cdu(1)], [cdu(1)], mqtt="{host: 127.0.0.1, port: 1884}", extra="logging: {level: debug}\n"
    )
    assert result.publisher
    assert result.kept == ["cdu-1"]
    assert result.not_applied == ["logging"]


def test_a_disabled_device_is_removed(tmp_path):
    disabled = cdu(2).replace("}", ", enabled: false}")
    result = plan(tmp_path, [cdu(1), cdu(2)], [cdu(1), disabled])
    assert result.removed == ["cdu-2"]
    assert result.kept == ["cdu-1"]


PLANT = [
    (
        "  - {name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: 5030, unit_id: 10, "
        "profile: heat-meter}"
    ),
    "  - {name: hp-plc, kind: heat_pump_plc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:4840/', profile: hp-plc}",
    "  - {name: panel-pc, kind: panel_pc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:4841/', profile: panel-pc}",
]


def test_control_keeps_its_state_unless_its_own_section_changed(tmp_path):
    def between(before: list[str], after: list[str], cycle_s: float = 1.0) -> ReloadPlan:
        old = load_site(site_file(tmp_path, before, extra="control: {cycle_s: 1.0}\n"))
        new = load_site(site_file(tmp_path, after, extra=f"control: {{cycle_s: {cycle_s}}}\n"))
        return ReloadPlan.between(old, new)

    devices = [cdu(1), cdu(2), *PLANT]
    assert not between(devices, devices).control
    # a device of the plant changed: the loop is rebuilt on the new drivers, mode and PIDs go on
    moved = between(devices, [cdu(1), cdu(2, period_s=2.0), *PLANT])
    assert moved.control
    assert moved.control_state_kept
    # its own section changed: rebuilt from its start-up state
    tuned = between(devices, devices, cycle_s=0.5)
    assert tuned.control
    assert not tuned.control_state_kept
    assert tuned.kept == ["cdu-1", "cdu-2", "heat-meter", "hp-plc", "panel-pc"]
