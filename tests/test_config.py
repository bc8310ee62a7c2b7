"""`heat-gateway check`: good files pass, each kind of bad file exits 2 naming file and key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_site

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "config" / "profiles"

GOOD_DEVICE = "{name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: 15021, profile: cdu}"


def write_site(tmp_path: Path, devices: str = f"  - {GOOD_DEVICE}", extra: str = "", profiles: Path = PROFILES) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(f"site: test\nprofiles_dir: {profiles}\ndevices:\n{devices}\n{extra}", encoding="utf-8")
    return path


def write_profile(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / "dev.yaml").write_text(textwrap.dedent(body), encoding="utf-8")
    return folder


def check(path: Path, capsys) -> tuple[int, str]:
    code = main(["check", "-c", str(path)])
    captured = capsys.readouterr()
    return code, captured.err


def test_example_config_is_valid(capsys):
    code = main(["check", "-c", str(REPO / "config" / "site.example.yaml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "cdu-12" in out
    assert "read input_register 0-21 (17 signals)" in out


@pytest.mark.parametrize(
    ("devices", "extra", "expected"),
    [
        # unknown key
        (f"  - {GOOD_DEVICE}", "mqtt: {hots: x}\n", "mqtt.hots: unknown key"),
        # wrong type
        (f"  - {GOOD_DEVICE}", "mqtt: {port: abc}\n", "mqtt.port: Input should be a valid integer"),
        # port out of range, with the list index
        (
            f"  - {GOOD_DEVICE}\n  - {{name: cdu-2, kind: cdu, protocol: modbus, host: h, port: 70000, profile: cdu}}",
            "",
            "devices[1].port: Input should be less than or equal to 65535 (got 70000)",
        ),
        # missing profile
        (
            "  - {name: cdu-1, kind: cdu, protocol: modbus, host: h, profile: nope}",
            "",
            "devices[0].profile: no profile 'nope'",
        ),
        # duplicate device name
        (f"  - {GOOD_DEVICE}\n  - {GOOD_DEVICE}", "", "devices[1].name: 'cdu-1' is already used by devices[0]"),
        # undefined environment variable
        (
            f"  - {GOOD_DEVICE}",
            "mqtt: {password: '${HEAT_GATEWAY_TEST_UNSET}'}\n",
            "mqtt.password: environment variable HEAT_GATEWAY_TEST_UNSET is not set",
        ),
        # missing required key
        (
            "  - {name: cdu-1, kind: cdu, protocol: modbus, profile: cdu}",
            "",
            "devices[0].host: required key is missing",
        ),
        # unknown protocol
        ("  - {name: cdu-1, kind: cdu, protocol: bacnet, host: h, profile: cdu}", "", "devices[0]: Input tag 'bacnet'"),
        # duplicate YAML key
        (f"  - {GOOD_DEVICE}", "mqtt: {port: 1}\nmqtt: {port: 2}\n", "key 'mqtt' appears twice"),
        # invalid name (would break MQTT topics)
        (
            "  - {name: 'CDU 1', kind: cdu, protocol: modbus, host: h, profile: cdu}",
            "",
            "devices[0].name: String should match pattern",
        ),
        # no devices at all
        ("  []", "", "devices: List should have at least 1 item"),
    ],
)
def test_bad_site_files(tmp_path, capsys, devices, extra, expected):
    path = write_site(tmp_path, devices, extra)
    code, err = check(path, capsys)
    assert code == 2
    assert str(path) in err
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        # address out of range
        (
            "a: {table: holding_register, address: 70000, type: uint16}",
            "signals.a.address: Input should be less than or equal to 65535",
        ),
        # multi-register value running past the end
        ("a: {table: holding_register, address: 65535, type: float32}", "runs past register 65535"),
        # overlapping signals
        (
            (
                "a: {table: holding_register, address: 0, type: float32}\n"
                "  b: {table: holding_register, address: 1, type: uint16}"
            ),
            "signals.b overlaps signals.a in holding_register at address 1",
        ),
        # write limits min > max
        (
            "a: {table: holding_register, address: 0, type: int16, access: read_write, min: 50, max: 20}",
            "signals.a: write limits: min 50.0 is greater than max 20.0",
        ),
        # writable without limits
        ("a: {table: holding_register, address: 0, type: int16, access: read_write}", "needs both min and max"),
        # unknown data type
        ("a: {table: holding_register, address: 0, type: float16}", "signals.a.type: Input should be 'bool'"),
        # unknown byte order
        ("a: {table: holding_register, address: 0, type: float32, byte_order: ACBD}", "signals.a.byte_order"),
        # bool in a register table
        ("a: {table: holding_register, address: 0, type: bool}", "type bool needs table coil or discrete_input"),
        # write to an input register
        (
            "a: {table: input_register, address: 0, type: int16, access: read_write, min: 0, max: 1}",
            "cannot be written",
        ),
        # zero scale
        ("a: {table: input_register, address: 0, type: int16, scale: 0}", "scale must not be 0"),
        # bad signal name
        ("Supply Temp: {table: input_register, address: 0, type: int16}", "String should match pattern"),
        # a bit field overlapping a word signal
        (
            (
                "a: {table: holding_register, address: 0, type: uint16}\n"
                "  b: {table: holding_register, address: 0, type: bool, bit: 3}"
            ),
            "signals.b overlaps signals.a in holding_register at address 0",
        ),
        # a bit field inside a multi-register value
        (
            (
                "a: {table: input_register, address: 10, type: float32}\n"
                "  b: {table: input_register, address: 11, type: bool, bit: 0}"
            ),
            "signals.b overlaps signals.a in input_register at address 11",
        ),
        # two signals on the same bit
        (
            (
                "a: {table: holding_register, address: 5, type: bool, bit: 3}\n"
                "  b: {table: holding_register, address: 5, type: bool, bit: 3}"
            ),
            "signals.b uses bit 3 of holding_register 5 like signals.a",
        ),
        # bit out of range
        ("a: {table: holding_register, address: 0, type: bool, bit: 16}", "signals.a.bit: Input should be less"),
        # bit on a word type
        ("a: {table: holding_register, address: 0, type: uint16, bit: 1}", "bit is for type bool"),
        # bit on a coil
        ("a: {table: coil, address: 0, type: bool, bit: 1}", "bit is for type bool"),
        # string without length
        ("a: {table: holding_register, address: 0, type: string}", "type string needs length_registers"),
        # string with a word order
        (
            "a: {table: holding_register, address: 0, type: string, length_registers: 4, byte_order: CDAB}",
            "a string's byte_order is ABCD or BADC",
        ),
        # writable string
        (
            (
                "a: {table: holding_register, address: 0, type: string, length_registers: 4, access: read_write, "
                "min: 0, max: 1}"
            ),
            "a string is read-only",
        ),
        # length on a number
        ("a: {table: holding_register, address: 0, type: uint16, length_registers: 2}", "length_registers is for"),
        # string overlapping the next signal
        (
            (
                "a: {table: holding_register, address: 0, type: string, length_registers: 4}\n"
                "  b: {table: holding_register, address: 3, type: uint16}"
            ),
            "signals.b overlaps signals.a in holding_register at address 3",
        ),
        # address 0 does not exist with 1-based addressing
        (
            "a: {table: holding_register, address: 0, type: uint16}",
            "0 is not a register number with addressing 1",
        ),
        # unknown quirk value
        ("a: {table: holding_register, address: 0, type: uint16}", "write_out_of_range: Input should be"),
    ],
)
def test_bad_profiles_name_the_profile_file_and_key(tmp_path, capsys, signals, expected):
    head = "protocol: modbus\nmodel: test\n"
    if "addressing 1" in expected:
        head += "addressing: 1\n"
    if "write_out_of_range" in expected:
        head += "write_out_of_range: wrap\n"
    folder = write_profile(tmp_path, f"{head}signals:\n  {signals}\n")
    path = write_site(tmp_path, "  - {name: d, kind: cdu, protocol: modbus, host: h, profile: dev}", profiles=folder)
    code, err = check(path, capsys)
    assert code == 2
    assert "profiles/dev.yaml" in err
    assert expected in err


def test_profile_protocol_must_match_device(tmp_path, capsys):
    folder = write_profile(tmp_path, "protocol: opcua\nmodel: t\nsignals:\n  a: {node: 'ns=2;s=A', type: float64}\n")
    path = write_site(tmp_path, "  - {name: d, kind: cdu, protocol: modbus, host: h, profile: dev}", profiles=folder)
    code, err = check(path, capsys)
    assert code == 2
    assert "devices[0].profile: profile 'dev' is for opcua but the device's protocol is modbus" in err


def test_yaml_syntax_error_names_line(tmp_path, capsys):
    path = tmp_path / "site.yaml"
    path.write_text("site: x\ndevices: [\n  - a: b\n", encoding="utf-8")
    code, err = check(path, capsys)
    assert code == 2
    assert "line" in err
    assert "not valid YAML" in err


def test_missing_file(tmp_path, capsys):
    code, err = check(tmp_path / "nope.yaml", capsys)
    assert code == 2
    assert "file not found" in err


def test_env_substitution_types_values(tmp_path, monkeypatch):
    monkeypatch.setenv("HG_TEST_PORT", "1884")
    monkeypatch.setenv("HG_TEST_PASSWORD", "s3cret")
    path = write_site(
        tmp_path,
        extra="mqtt: {port: '${HG_TEST_PORT}', password: '${HG_TEST_PASSWORD}', "
        "host: '${HG_UNSET_HOST:-broker.local}'}\n",
    )
    site = load_site(path)
    assert site.config.mqtt.port == 1884
    assert site.config.mqtt.password is not None
    assert site.config.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(site.config)
    assert site.config.mqtt.host == "broker.local"


def test_check_exits_2_without_traceback_as_a_process(tmp_path):
    path = write_site(tmp_path, extra="mqtt: {port: 0}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "mqtt.port: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_bit_fields_sharing_a_register_and_strings_are_valid(tmp_path, capsys):
    folder = write_profile(
        tmp_path,
        """\
        protocol: modbus
        model: test
        addressing: 1
        pause_after_connect_s: 0.2
        write_out_of_range: clamp
        signals:
          pump_on: {table: holding_register, address: 1, type: bool, bit: 0}
          valve_open: {table: holding_register, address: 1, type: bool, bit: 1, access: read_write, min: 0, max: 1}
          speed_pct: {table: holding_register, address: 2, type: uint16}
          serial: {table: input_register, address: 1, type: string, length_registers: 8, byte_order: BADC}
        """,
    )
    path = write_site(
        tmp_path,
        "  - {name: d, kind: cdu, protocol: modbus, host: h, profile: dev, pause_between_requests_s: 0.05}",
        profiles=folder,
    )
    code = main(["check", "-c", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "read input_register 1-8 (1 signals)" in out
    assert "read holding_register 1-2 (3 signals)" in out
    site = load_site(path)
    assert site.config.devices[0].profile_overrides() == {"pause_between_requests_s": 0.05}
