"""``heat-gateway`` as people run it: a real process, against simulated devices on real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import __version__
from gateway.config import load_site
from simulators.cli import make_plant
from simulators.control import serve_control
from simulators.site import SimulatedSite
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "site.example.yaml"
# Variables no test environment sets: a command that resolves them fails.
UNSET = {"HG_CLI_TEST_MQTT_PASSWORD", "HG_CLI_TEST_INFLUX_TOKEN", "HG_CLI_TEST_PLC_PASSWORD"}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in UNSET}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), capture_output=True, text=True, check=False, cwd=REPO, env=environment(), timeout=60
    )


def write_site(tmp_path: Path, *, plc: bool = False) -> Path:
    """One CDU on a free port; the broker and database secrets come from variables nobody set."""
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: clitest\nprofiles_dir: {REPO / 'config' / 'profiles'}\n"
        "devices:\n"
        f"  - {{name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {free_port()}, unit_id: 1,"
        " profile: cdu, timeout_s: 1.0}\n"
        + (
            f"  - {{name: hp-plc, kind: heat_pump_plc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{free_port()}/',"
            " profile: hp-plc, username: gateway, password: '${HG_CLI_TEST_PLC_PASSWORD}'}\n"
            if plc
            else ""
        )
        + "mqtt: {host: 127.0.0.1, username: gw, password: '${HG_CLI_TEST_MQTT_PASSWORD}'}\n"
        "influxdb: {url: 'http://127.0.0.1:8428', token: '${HG_CLI_TEST_INFLUX_TOKEN}'}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def site_file(tmp_path: Path) -> AsyncIterator[Path]:
    """The site file, with its CDU served by the bundled simulator."""
    path = write_site(tmp_path)
    simulated = SimulatedSite(load_site(path, unused=("mqtt", "influxdb")), make_plant(seed=1), speed=1.0, tick_s=0.05)
    await simulated.start()
    try:
        yield path
    finally:
        await simulated.stop()


async def run_async(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=environment()
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"heat-gateway {__version__}"


@pytest.mark.parametrize("args", [["check"], ["check", "--json"]], ids=["text", "json"])
def test_a_closed_pipe_ends_the_command_quietly(args):
    """``heat-gateway check | head``: no traceback, and the status a shell reports for SIGPIPE."""
    reading_end, writing_end = os.pipe()
    process = subprocess.Popen(
        command(*args, "-c", str(EXAMPLE)), stdout=writing_end, stderr=subprocess.PIPE, cwd=REPO, env=environment()
    )
    os.close(reading_end)  # the reader is gone before the first line is written
    os.close(writing_end)
    _, err = process.communicate(timeout=60)
    assert err.decode() == ""
    assert process.returncode == 141


def test_check_says_plainly_whether_the_site_writes_to_devices(tmp_path):
    secrets = {"HG_CLI_TEST_MQTT_PASSWORD": "x", "HG_CLI_TEST_INFLUX_TOKEN": "y"}
    result = subprocess.run(
        command("check", "-c", str(write_site(tmp_path))),
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**environment(), **secrets},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "writes: NONE, monitor only" in result.stdout
    result = run("check", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "writes: CONTROL IS ON" in result.stdout
    assert "      cdu-3: tcs_supply_setpoint_c" in result.stdout
    summary = json.loads(run("check", "--json", "-c", str(EXAMPLE)).stdout)
    assert summary["control"] is True
    assert "tcs_supply_setpoint_c" in summary["writes"]["cdu-3"]
    assert summary["devices"][0]["name"] == "cdu-1"
    assert summary["devices"][0]["reads"][0].startswith("read ")


def test_check_resolves_every_section_and_names_the_missing_variable(tmp_path):
    result = run("check", "-c", str(write_site(tmp_path)))
    assert result.returncode == 2
    assert "mqtt.password: environment variable HG_CLI_TEST_MQTT_PASSWORD is not set" in result.stderr
    assert "Traceback" not in result.stderr


async def test_read_needs_no_broker_or_database_secret_and_prints_a_header(site_file):
    code, out, err = await run_async("read", "-c", str(site_file), "cdu-1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("cdu-1 (cdu, modbus 127.0.0.1:")
    assert " read at 20" in lines[0]
    assert lines[1].split() == ["signal", "value", "unit", "quality"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["tcs_supply_temp_c"][2:] == ["degC", "good"]
    # degC x 100 on the wire: two decimals, all of them shown.
    assert len(rows["tcs_supply_temp_c"][1].partition(".")[2]) == 2


async def test_read_json_carries_full_values_and_the_text_agrees(site_file):
    code, out, err = await run_async("read", "--json", "-c", str(site_file), "cdu-1")
    assert code == 0, err
    data = json.loads(out)
    assert data["device"] == "cdu-1"
    assert data["timestamp"].endswith("Z")
    signals = data["signals"]
    assert signals["tcs_supply_temp_c"]["quality"] == "good"
    assert signals["tcs_supply_temp_c"]["unit"] == "degC"
    assert isinstance(signals["tcs_supply_temp_c"]["value"], float)
    code, out, _ = await run_async("read", "-c", str(site_file), "cdu-1", "tcs_supply_temp_c", "tcs_flow_lpm")
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert set(rows) == {"tcs_supply_temp_c", "tcs_flow_lpm"}
    assert abs(float(rows["tcs_flow_lpm"]) - signals["tcs_flow_lpm"]["value"]) < 0.2  # a second poll may differ


async def test_read_of_a_device_that_is_down_exits_1(tmp_path):
    code, out, err = await run_async("read", "-c", str(write_site(tmp_path)), "cdu-1")
    assert code == 1
    assert out == ""
    assert err.startswith("error: cdu-1")
    assert "Traceback" not in err


async def test_scan_json_lists_the_units_that_answer(site_file):
    port = load_site(site_file, unused=("mqtt", "influxdb")).config.devices[0].port  # type: ignore[union-attr]
    code, out, err = await run_async("scan", "127.0.0.1", "--port", str(port), "--units", "1-3", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["answering"] == [1]
    assert [result["unit_id"] for result in data["results"]] == [1, 2, 3]
    assert data["results"][0]["answers"] is True


async def test_the_readmes_fault_example_works_against_a_running_simulator(tmp_path):
    """The README's fault-injection line, run as written (plus the port), then the fault cleared."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"`heat-gateway fault '(\{[^']*\})'`", readme)
    assert example is not None, "the README shows no `heat-gateway fault '...'` example"
    site_path = write_site(tmp_path)
    site = load_site(site_path, unused=("mqtt", "influxdb"))
    simulated = SimulatedSite(site, make_plant(seed=1), speed=1.0, tick_s=0.05)
    await simulated.start()
    port = free_port()
    control = await serve_control(simulated, port)
    try:
        command = json.loads(example.group(1))
        command["device"] = "cdu-1"  # the README's site has cdu-3; this one has cdu-1
        code, out, err = await run_async("fault", "--control-port", str(port), json.dumps(command))
        assert (code, json.loads(out)) == (0, {"ok": True}), err
        for fault in ("half_open", "none"):
            code, out, err = await run_async(
                "fault", "--control-port", str(port), f'{{"device": "cdu-1", "fault": "{fault}"}}'
            )
            assert (code, json.loads(out)) == (0, {"ok": True}), err
        code, out, _ = await run_async(
            "fault", "--control-port", str(port), '{"device": "cdu-1", "fault": "half-open"}'
        )
        assert code == 1
        assert json.loads(out)["ok"] is False
    finally:
        control.close()
        await control.wait_closed()
        await simulated.stop()
    code, _, err = await run_async("fault", "--control-port", str(port), '{"device": "cdu-1", "fault": "none"}')
    assert code == 1
    assert err.startswith(f"error: no simulator control port at 127.0.0.1:{port}")


async def test_read_of_one_device_needs_no_secret_of_another(tmp_path):
    path = write_site(tmp_path, plc=True)
    code, _, err = await run_async("read", "-c", str(path), "hp-plc")
    assert code == 2
    assert "devices[1].password: environment variable HG_CLI_TEST_PLC_PASSWORD is not set" in err
    site = load_site(path, unused=("mqtt", "influxdb"), device="cdu-1")
    simulated = SimulatedSite(site, make_plant(seed=1), speed=1.0, tick_s=0.05)
    await simulated.start()
    try:
        code, out, err = await run_async("read", "--json", "-c", str(path), "cdu-1", "tcs_supply_temp_c")
    finally:
        await simulated.stop()
    assert code == 0, err
    assert json.loads(out)["signals"]["tcs_supply_temp_c"]["quality"] == "good"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: x\nevents: [[[\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: x\nduration_s: -5\nno_such_key: 1\n", "error(s) in the scenario"),
    ],
)
def test_a_broken_scenario_file_is_a_clear_error_not_a_traceback(tmp_path: Path, content: str, expected: str) -> None:
    scenario = tmp_path / "broken.yaml"
    scenario.write_text(content, encoding="utf-8")
    result = run("simulate", "--scenario", str(scenario), "--fast")
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(scenario) in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


async def test_read_shows_a_value_outside_its_valid_range_as_bad_with_the_range(tmp_path):
    """Commissioning with a wrong word order: the garbage is shown bad, with the range it broke."""
    port = free_port()
    served_dir, wrong_dir = tmp_path / "served", tmp_path / "wrong"
    served_dir.mkdir()
    wrong_dir.mkdir()
    meter = (REPO / "config" / "profiles" / "heat-meter.yaml").read_text(encoding="utf-8")
    (served_dir / "heat-meter.yaml").write_text(meter, encoding="utf-8")
    # the engineer's profile: word order flipped on the live floats, the meter's 2..180 degC range set
    wrong = meter.replace("byte_order: ABCD", "byte_order: CDAB", 1).replace(
        "unit: degC, stale_after_s: 120,", "unit: degC, stale_after_s: 120, valid_min: 2, valid_max: 180,"
    )
    assert wrong.count("valid_min: 2") == 2, "the meter profile's temperature lines changed"
    (wrong_dir / "heat-meter.yaml").write_text(wrong, encoding="utf-8")
    sites = {}
    for name, folder in (("served", served_dir), ("wrong", wrong_dir)):
        sites[name] = tmp_path / f"{name}.yaml"
        sites[name].write_text(
            f"site: clitest\nprofiles_dir: {folder}\ndevices:\n"
            f"  - {{name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: {port}, "
            "profile: heat-meter, timeout_s: 1.0}\n"
            "mqtt: {host: 127.0.0.1}\ninfluxdb: {url: 'http://127.0.0.1:8428', token: t}\n",
            encoding="utf-8",
        )
    simulated = SimulatedSite(load_site(sites["served"]), make_plant(seed=1), speed=1.0, tick_s=0.05)
    await simulated.start()
    try:
        # Garbage lands inside 2..180 degC about one read in 70 (the swapped low word is the
        # exponent): three reads, of which at least two must show it.
        texts = [await run_async("read", "-c", str(sites["wrong"]), "heat-meter", "flow_temp_c") for _ in range(3)]
        jsons = [await run_async("read", "--json", "-c", str(sites["wrong"]), "heat-meter") for _ in range(3)]
    finally:
        await simulated.stop()
    bad_rows = 0
    for code, out, err in texts:
        assert code == 0, err
        assert err == "", "a one-off read prints the reason in its table, not a log line"
        row = out.splitlines()[2]
        if row.split()[:3] == ["flow_temp_c", "-", "degC"]:
            assert re.search(r"bad: \S+ is outside its valid range 2\.\.180 \(the profile's valid_min/valid_max\)", row)
            bad_rows += 1
    assert bad_rows >= 2, texts
    signals = [json.loads(out)["signals"]["flow_temp_c"] for _, out, _ in jsons]
    bad = [s for s in signals if s["quality"] == "bad"]
    assert len(bad) >= 2, signals
    assert all(s["value"] is None and "outside its valid range 2..180" in s["reason"] for s in bad), bad
