"""Files can't hurt: every kind of broken site file or profile, through the real CLI, with secrets set.

Each broken file is checked by `heat-gateway check` as a subprocess with passwords and tokens
in its environment: it must exit 2, name the file and the key (or the line), print no
traceback and none of the secrets, within 2 s: a hang guard (an alias bomb or a deep list used
to hang or overflow the stack), not a performance figure, so it is 2 s of CPU for the
subprocess (RLIMIT_CPU), which a loaded machine does not eat into, plus a wall-clock timeout.

Then every CLI command runs with the same secrets set, on good and bad files, and none of the
secret values may appear in any output.
"""

from __future__ import annotations

import io
import logging
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from gateway.config import ConfigError, load_site
from gateway.logs import get_logger, setup_logging
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "config" / "profiles"
CLI = str(Path(sys.executable).parent / "heat-gateway")
# The hang guard counts CPU seconds, not wall-clock seconds: on this shared 2-core machine at
# load 13 a `check` that used 0.3 s of CPU took 2.0-2.5 s of wall clock, while a file that
# makes the loader spin uses up its CPU allowance whatever the load. A process that blocks
# without spinning is caught by the wall-clock limit.
HANG_GUARD_S = 2.0
WALL_LIMIT_S = 60.0

# Secret values as an operator might choose them: YAML would read `*x` as an alias, `@x` as an
# error, `#x` as a comment, `~` as null and `0777` as 511 if they were ever parsed again.
SECRETS = {
    "HG_MQTT_PASSWORD": "*mqtt-Pa55 #word",
    "HG_INFLUX_TOKEN": "@influx-T0ken-8f3a9",
    "HG_OPCUA_PASSWORD": "0777-opcua-S3cret~",
    "HG_KEY_PASSWORD": "key-pa55phrase-~",
    "HG_INFLUX_URL_PASSWORD": "urlpass-77c1e0d",
}
BAD_UTF8_ENV = "HG_NOT_UTF8"


@pytest.fixture
def secrets_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets in this process's environment, for tests that load files in-process."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def secret_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(SECRETS)
    # \udcff is byte 0xff in the child's environment (POSIX surrogateescape): not valid UTF-8.
    env[BAD_UTF8_ENV] = "ab\udcffcd"
    return env


def assert_no_secret(text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"the value of {name} was printed:\n{text}"
        # ... nor a recognisable piece of it (a message that cut the value at its '#' or '~').
        for piece in value.replace("#", " ").replace("~", " ").split():
            if len(piece) >= 8:
                assert piece not in text, f"part of {name} was printed:\n{text}"


MODBUS_CDU = "{name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: 15021, profile: cdu}"
OPCUA_PANEL = (
    "{name: panel-pc, kind: panel_pc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:14841/', "
    "profile: panel-pc, username: operator, password: '${HG_OPCUA_PASSWORD}'}"
)
MQTT = "mqtt: {username: gateway, password: '${HG_MQTT_PASSWORD}'}"
INFLUX = "influxdb: {url: 'http://127.0.0.1:8428', token: '${HG_INFLUX_TOKEN}'}"


def site_text(
    devices: tuple[str, ...] = (MODBUS_CDU, OPCUA_PANEL),
    *,
    extra: str = "",
    mqtt: str = MQTT,
    profiles: str = "profiles",
) -> str:
    """A good site file (with every secret from the environment), plus ``extra`` lines."""
    listed = [f"  - {d}" for d in devices]
    lines = ["site: test", f"profiles_dir: {profiles}", "devices:" if listed else "devices: []", *listed, mqtt, INFLUX]
    return "\n".join(lines) + "\n" + extra


CONTROL_DEVICES = (
    "{name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: 15021, profile: cdu}",
    "{name: cdu-2, kind: cdu, protocol: modbus, host: 127.0.0.1, port: 15022, profile: cdu}",
    "{name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: 15040, profile: heat-meter}",
    "{name: hp-plc, kind: heat_pump_plc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:14840/', profile: hp-plc}",
    OPCUA_PANEL,
)


def control_site(*, devices: tuple[str, ...] = CONTROL_DEVICES, control: str = "{}") -> str:
    return site_text(devices, extra=f"control: {control}\n")


def with_device(device: str) -> str:
    return site_text((MODBUS_CDU, device))


def profile_site(profile: str = "dev") -> str:
    """A site whose one device uses the test's own profile ``dev``."""
    return site_text((f"{{name: d, kind: cdu, protocol: modbus, host: 127.0.0.1, profile: {profile}}}",))


CDU_PROFILE = (PROFILES / "cdu.yaml").read_text(encoding="utf-8")
HP_PLC_PROFILE = (PROFILES / "hp-plc.yaml").read_text(encoding="utf-8")
GOOD_PROFILE = "protocol: modbus\nmodel: test\nsignals:\n  a_c: {table: input_register, address: 0, type: int16}\n"

# 342 bytes standing for 9**9 (387 million) strings once its aliases are expanded.
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


@dataclass(frozen=True)
class Case:
    """A broken file: its site text, any profiles, the file the message must name and what it must say."""

    id: str
    site: str | bytes
    says: str
    profiles: dict[str, str | bytes] = field(default_factory=dict)
    file: str = "site.yaml"


def profile_case(case_id: str, profile: str | bytes, says: str) -> Case:
    return Case(case_id, profile_site(), says, profiles={"dev": profile}, file="profiles/dev.yaml")


CASES = [
    # -- not YAML text at all ----------------------------------------------------------------------
    Case("binary", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "is a binary file"),
    Case("latin-1", site_text(extra="# caf\xe9\n").encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 8)"),
    Case("utf-16", site_text().encode("utf-16"), "is UTF-16 text"),
    Case("larger than 1 MiB", site_text(extra="# " + "x" * 1_100_000 + "\n"), "larger than 1024 KiB"),
    Case("control character", site_text(extra="mqtt_note: a\x01b\n"), "line 8: not valid YAML: character #x0001"),
    Case("empty file", "", "expected a mapping"),
    Case("a list, not a mapping", "- site: test\n", "expected a mapping"),
    Case("a scalar, not a mapping", "just words\n", "expected a mapping"),
    # -- YAML that would hang, overflow or lie -----------------------------------------------------
    Case("alias bomb", ALIAS_BOMB, "more than 100,000 values once its aliases"),
    Case(
        "100,001 plain values", site_text(extra="x: [" + "1, " * 100_001 + "1]\n"), "line 8: more than 100,000 values"
    ),
    Case("recursive alias", site_text(extra="x: &loop [1, *loop]\n"), "line 8: an alias (*name) refers to"),
    Case("recursive alias in a mapping", site_text(extra="x: &m {a: *m}\n"), "line 8: an alias (*name) refers to"),
    Case("5,000-deep flow list", site_text(extra="x: " + "[" * 5000 + "]" * 5000 + "\n"), "line 8"),
    Case("5,000-deep block list", site_text(extra="x:\n  " + "- " * 5000 + "deep\n"), "line 9"),
    Case("5,000-deep mapping", site_text(extra="x: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n"), "line 8"),
    Case(
        "deep through aliases",
        site_text(extra="".join(f"l{i}: &l{i} [{f'*l{i - 1}' if i else 0}]\n" for i in range(40))),
        "nested more than 32 levels deep",
    ),
    Case("5,000-digit integer", site_text(extra="x: 1" + "0" * 5000 + "\n"), "line 8: an integer of 5001 digits"),
    Case("unclosed bracket", site_text(extra="x: [1, 2\n"), "not valid YAML"),
    Case("tab indentation", site_text(extra="mqtt2:\n\thost: x\n"), "line 9"),
    Case("duplicate key", site_text(extra="mqtt: {port: 1884}\n"), "line 8: key 'mqtt' appears twice"),
    Case("list as a key", site_text(extra="? [a, b]\n: 1\n"), "line 8: a key must be a plain word"),
    Case("two documents", site_text() + "---\nsite: other\n", "not valid YAML"),
    Case("python tag", site_text(extra="x: !!python/object/apply:os.system ['true']\n"), "line 8"),
    Case(
        "unquoted password starting with *",
        site_text(mqtt="mqtt: {username: gateway, password: *mqtt-Pa55word}"),
        "line 6: a value starting with * is an alias",
    ),
    Case(
        "unquoted password starting with @",
        site_text(mqtt="mqtt: {username: gateway, password: @influx-T0ken-8f3a9}"),
        "line 6",
    ),
    # -- environment --------------------------------------------------------------------------------
    Case("unset variable", site_text(extra="logging: {level: '${HG_UNSET_LEVEL}'}\n"), "logging.level: environment"),
    Case(
        "variable not UTF-8",
        with_device(f"{{name: d, kind: cdu, protocol: modbus, host: '${{{BAD_UTF8_ENV}}}', profile: cdu}}"),
        "devices[1].host: environment variable HG_NOT_UTF8 is not valid UTF-8",
    ),
    Case(
        "a secret in a number key",
        site_text(mqtt="mqtt: {port: '${HG_MQTT_PASSWORD}'}"),
        "mqtt.port: Input should be a valid integer",
    ),
    Case(
        "a secret in a device name",
        with_device("{name: '${HG_OPCUA_PASSWORD}', kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: String should match pattern",
    ),
    Case(
        "a secret as the protocol",
        with_device("{name: d, kind: cdu, protocol: '${HG_INFLUX_TOKEN}', host: h, profile: cdu}"),
        "devices[1]: Input tag '***'",
    ),
    Case("a secret key of the wrong type", site_text(mqtt="mqtt: {password: [1, 2]}"), "mqtt.password: Input should"),
    Case("a literal password as a number", site_text(mqtt="mqtt: {password: 12345678}"), "a secret: value not shown"),
    # -- site keys ----------------------------------------------------------------------------------
    Case("unknown top-level key", site_text(extra="devics: []\n"), "devics: unknown key"),
    Case("no site name", site_text().replace("site: test\n", ""), "site: required key is missing"),
    Case("site name upper case", site_text().replace("site: test", "site: Test"), "site: String should match"),
    Case("site name too long", site_text().replace("site: test", "site: " + "s" * 65), "site: String should have"),
    Case("no devices", site_text(()), "devices: List should have at least 1 item"),
    Case("devices a mapping", site_text().replace("devices:\n", "devices: {a: 1}\nx:\n"), "devices: Input should"),
    Case(
        "device named gateway",
        with_device("{name: gateway, kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: 'gateway' is a topic level",
    ),
    Case(
        "device named control",
        with_device("{name: control, kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: 'control' is a topic level",
    ),
    Case(
        "device named historian",
        with_device("{name: historian, kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: 'historian'",
    ),
    Case(
        "device name +",
        with_device("{name: '+', kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: String should match",
    ),
    Case(
        "device name #",
        with_device("{name: 'cdu#1', kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: String should match",
    ),
    Case(
        "device name /",
        with_device("{name: 'hall/cdu', kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: String should match",
    ),
    Case(
        "device name empty",
        with_device("{name: '', kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: String should match",
    ),
    Case(
        "device name NUL",
        with_device('{name: "cdu\\0", kind: cdu, protocol: modbus, host: h, profile: cdu}'),
        "devices[1].name: String should match",
    ),
    Case(
        "device name $SYS",
        with_device("{name: '$SYS', kind: cdu, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].name: String should match",
    ),
    Case(
        "kind with a space",
        with_device("{name: d, kind: heat pump, protocol: modbus, host: h, profile: cdu}"),
        "devices[1].kind: String should match",
    ),
    Case("duplicate device name", with_device(MODBUS_CDU), "devices[1].name: 'cdu-1' is already used by devices[0]"),
    Case(
        "unknown protocol",
        with_device("{name: d, kind: cdu, protocol: bacnet, host: h, profile: cdu}"),
        "devices[1]: Input tag 'bacnet'",
    ),
    Case(
        "port 70000",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, port: 70000, profile: cdu}"),
        "devices[1].port: Input should be less than or equal to 65535 (got 70000)",
    ),
    Case(
        "port a word",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, port: abc, profile: cdu}"),
        "devices[1].port: Input should be a valid integer",
    ),
    Case(
        "poll period NaN",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, poll_period_s: .nan, profile: cdu}"),
        "devices[1].poll_period_s: Input should be a finite number",
    ),
    Case(
        "poll period infinite",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, poll_period_s: .inf, profile: cdu}"),
        "devices[1].poll_period_s",
    ),
    Case(
        "negative timeout",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, timeout_s: -1, profile: cdu}"),
        "devices[1].timeout_s: Input should be greater than 0",
    ),
    Case(
        "unit id 256",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, unit_id: 256, profile: cdu}"),
        "devices[1].unit_id",
    ),
    Case(
        "profile outside profiles_dir",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, profile: ../../etc/passwd}"),
        "devices[1].profile: String should match",
    ),
    Case(
        "profile missing",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, profile: nope}"),
        "devices[1].profile: no profile 'nope'",
    ),
    Case(
        "profile for the other protocol",
        with_device("{name: d, kind: cdu, protocol: modbus, host: h, profile: panel-pc}"),
        "devices[1].profile: profile 'panel-pc' is for opcua",
    ),
    Case(
        "OPC UA endpoint not opc.tcp",
        with_device("{name: d, kind: panel_pc, protocol: opcua, endpoint: 'http://x', profile: panel-pc}"),
        "devices[1].endpoint: String should match",
    ),
    Case(
        "OPC UA password without user",
        with_device(
            "{name: d, kind: panel_pc, protocol: opcua, endpoint: 'opc.tcp://h:4840', profile: panel-pc, "
            "password: '${HG_OPCUA_PASSWORD}'}"
        ),
        "devices[1]: password is set but username is not",
    ),
    Case(
        "OPC UA Basic256Sha256 without certificate",
        with_device(
            "{name: d, kind: panel_pc, protocol: opcua, endpoint: 'opc.tcp://h:4840', profile: panel-pc, "
            "security: {policy: Basic256Sha256, mode: Sign, private_key_password: '${HG_KEY_PASSWORD}'}}"
        ),
        "devices[1].security: policy Basic256Sha256 needs certificate, private_key",
    ),
    Case(
        "topic prefix with #",
        site_text(mqtt="mqtt: {topic_prefix: 'heat/#'}"),
        "mqtt.topic_prefix: String should match",
    ),
    Case("topic prefix $SYS", site_text(mqtt="mqtt: {topic_prefix: '$SYS'}"), "mqtt.topic_prefix: String should match"),
    Case(
        "topic prefix empty level",
        site_text(mqtt="mqtt: {topic_prefix: 'heat//dk'}"),
        "mqtt.topic_prefix: String should match",
    ),
    Case(
        "MQTT port 0",
        site_text(mqtt="mqtt: {port: 0, password: '${HG_MQTT_PASSWORD}'}"),
        "mqtt.port: Input should be greater than or equal to 1",
    ),
    Case(
        "influxdb url not http",
        site_text().replace("url: 'http://127.0.0.1:8428'", "url: 'ftp://x'"),
        "influxdb.url: String should match",
    ),
    Case(
        "MQTT TLS CA file missing",
        site_text(mqtt="mqtt: {port: 8883, tls: {ca_file: /nonexistent/heat-ca.pem}}"),
        "mqtt.tls.ca_file: no such file: /nonexistent/heat-ca.pem",
    ),
    Case("log level loud", site_text(extra="logging: {level: loud}\n"), "logging.level: Input should be"),
    Case("state_dir a list", site_text(extra="state_dir: [a]\n"), "state_dir: Input is not a valid path"),
    # -- control roles ------------------------------------------------------------------------------
    Case("control without any CDU", control_site(devices=CONTROL_DEVICES[2:]), "control: no CDU to supervise"),
    Case(
        "control role device missing",
        control_site(control="{heat_meter_device: meter-9}"),
        "control.heat_meter_device: no device named 'meter-9'",
    ),
    Case(
        "control role device of the wrong kind",
        control_site(control="{heat_meter_device: cdu-2, cdu_devices: [cdu-1]}"),
        "control.heat_meter_device: device 'cdu-2' is of kind 'cdu'; the heat meter role needs kind 'heat_meter'",
    ),
    Case(
        "control CDU list names a PLC",
        control_site(control="{cdu_devices: [cdu-1, hp-plc]}"),
        "control.cdu_devices[1]: device 'hp-plc' already has a role",
    ),
    Case(
        "control CDU of another kind",
        control_site(
            devices=(*CONTROL_DEVICES, "{name: x, kind: pump, protocol: modbus, host: h, profile: cdu}"),
            control="{cdu_devices: [cdu-1, x]}",
        ),
        "control.cdu_devices[1]: device 'x' is of kind 'pump'; the CDU role needs kind 'cdu'",
    ),
    Case(
        "control CDU profile without it_limit_c",
        control_site(
            devices=(*CONTROL_DEVICES[1:], "{name: cdu-9, kind: cdu, protocol: modbus, host: h, profile: vendor-cdu}")
        ),
        "control: device 'cdu-9' (role cdu): input it_limit_c: no signal 'it_limit_c' in profile 'vendor-cdu'; "
        "map it to a profile signal or give a constant (it_limit_c: <value>)",
        profiles={"vendor-cdu": CDU_PROFILE.replace("  it_limit_c:", "  it_limit_2_c:")},
    ),
    Case(
        "control PLC setpoint read-only",
        control_site(
            devices=(
                *CONTROL_DEVICES[:3],
                "{name: hp-plc, kind: heat_pump_plc, protocol: opcua, endpoint: 'opc.tcp://h:4840', profile: ro-plc}",
                OPCUA_PANEL,
            )
        ),
        "control: device 'hp-plc' (role station_plc): output hp_supply_setpoint_c: signal 'hp_supply_setpoint_c' "
        "is read-only in profile 'ro-plc'",
        profiles={
            "ro-plc": HP_PLC_PROFILE.replace(
                'SupplySetpoint", type: float64, unit: "degC", access: read_write, min: 50, max: 85',
                'SupplySetpoint", type: float64, unit: "degC", access: read',
            )
        },
    ),
    Case(
        "control role device disabled",
        control_site(
            devices=(*CONTROL_DEVICES[:2], CONTROL_DEVICES[2].replace("}", ", enabled: false}"), *CONTROL_DEVICES[3:])
        ),
        "control.heat_meter_device: device 'heat-meter' is disabled",
    ),
    Case("control unknown key", control_site(control="{cycle: 1}"), "control.cycle: unknown key"),
    Case(
        "control limit NaN",
        control_site(control="{dh_max_supply_temp_c: .nan}"),
        "control.dh_max_supply_temp_c: Input should be a finite number",
    ),
    Case(
        "control min above max",
        control_site(control="{dh_min_supply_temp_c: 90}"),
        "control: dh_min_supply_temp_c must not exceed",
    ),
    # -- profiles -----------------------------------------------------------------------------------
    profile_case("profile binary", b"\x00\x01\x02\x03", "is a binary file"),
    profile_case(
        "profile not UTF-8", b"protocol: modbus\nmodel: \xff\xfe\xfa\n", "is not UTF-8 text (byte 0xff on line 2)"
    ),
    profile_case("profile alias bomb", ALIAS_BOMB, "more than 100,000 values"),
    profile_case("profile 5,000 deep", "signals: " + "[" * 5000 + "]" * 5000, "line 1"),
    profile_case("profile a list", "- protocol: modbus\n", "expected a mapping with protocol"),
    profile_case("profile unknown protocol", "protocol: bacnet\nmodel: x\nsignals: {}\n", "Input tag 'bacnet'"),
    profile_case(
        "profile signal address 70000", GOOD_PROFILE.replace("address: 0", "address: 70000"), "signals.a_c.address"
    ),
    profile_case(
        "profile signal name upper case",
        GOOD_PROFILE.replace("a_c:", "Supply:"),
        "signals.Supply.[key]: String should match",
    ),
    profile_case(
        "profile duplicate signal",
        GOOD_PROFILE + "  a_c: {table: coil, address: 0, type: bool}\n",
        "line 5: key 'a_c' appears twice",
    ),
    profile_case(
        "profile overlapping signals",
        GOOD_PROFILE + "  b_c: {table: input_register, address: 0, type: int16}\n",
        "signals.b_c overlaps signals.a_c",
    ),
    profile_case(
        "profile write limit NaN",
        GOOD_PROFILE.replace("input_register", "holding_register").replace(
            "int16}", "int16, access: read_write, min: 0, max: .nan}"
        ),
        "signals.a_c.max: Input should be a finite number",
    ),
    profile_case(
        "profile scale 0", GOOD_PROFILE.replace("int16}", "int16, scale: 0}"), "signals.a_c: scale must not be 0"
    ),
    profile_case(
        "profile secret from the environment",
        GOOD_PROFILE.replace("model: test", "model: test\naddressing: '${HG_MQTT_PASSWORD}'"),
        "addressing: Input should be",
    ),
]


def write_case(tmp_path: Path, case: Case) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir(parents=True)
    for name in ("cdu", "heat-meter", "hp-plc", "panel-pc"):
        (folder / f"{name}.yaml").write_text((PROFILES / f"{name}.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    for name, body in case.profiles.items():
        data = body if isinstance(body, bytes) else body.encode("utf-8")
        (folder / f"{name}.yaml").write_bytes(data)
    site = tmp_path / "site.yaml"
    site.write_bytes(case.site if isinstance(case.site, bytes) else case.site.encode("utf-8"))
    return site


def _limit_cpu() -> None:
    """In the child: SIGXCPU after HANG_GUARD_S seconds of CPU, SIGKILL a second later."""
    seconds = int(HANG_GUARD_S)
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))


def run_cli(*args: str, timeout_s: float = WALL_LIMIT_S, hang_guard: bool = False) -> subprocess.CompletedProcess[str]:
    """The installed `heat-gateway` with the secrets in its environment.

    ``hang_guard``: the process may use at most HANG_GUARD_S of CPU; one that spins (an alias
    bomb expanding, a runaway recursion) is killed and the test says so.
    """
    result = subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        env=secret_env(),
        timeout=timeout_s,
        check=False,
        errors="backslashreplace",
        preexec_fn=_limit_cpu if hang_guard else None,
    )
    if hang_guard:
        killed = result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
        assert not killed, f"{args}: still working after {HANG_GUARD_S:g} s of CPU (a hang)"
    return result


def test_the_table_has_at_least_60_kinds_of_broken_files():
    assert len({case.id for case in CASES}) == len(CASES) >= 60
    assert sum(case.file != "site.yaml" for case in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_broken_file_exits_2_naming_file_and_key_without_secrets(tmp_path, case):
    site = write_case(tmp_path, case)
    result = run_cli("check", "-c", str(site), hang_guard=True)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert str(tmp_path / case.file) in result.stderr, output
    assert case.says in result.stderr, output
    assert "Traceback" not in output
    assert_no_secret(output)


def test_the_good_base_files_pass_check_without_printing_secrets(tmp_path):
    for text in (site_text(), control_site()):
        site = write_case(tmp_path / str(len(text)), Case("good", text, ""))
        result = run_cli("check", "-c", str(site))
        assert result.returncode == 0, result.stdout + result.stderr
        assert_no_secret(result.stdout + result.stderr)


def test_every_command_with_secrets_set_prints_none_of_them(tmp_path):
    """Every command, on good and bad files, with the secrets in the environment (and on the command line)."""
    closed = free_port()  # nothing listens: the commands take their error paths, which quote the most
    good = tmp_path / "good"
    good.mkdir()
    text = site_text(
        (
            (
                f"{{name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {closed}, profile: cdu, "
                "timeout_s: 0.5}"
            ),
            (
                f"{{name: panel-pc, kind: panel_pc, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{closed}/', "
                "profile: panel-pc, username: operator, password: '${HG_OPCUA_PASSWORD}', timeout_s: 0.5}"
            ),
        ),
        extra="state_dir: state-is-a-file\n",
    ).replace("http://127.0.0.1:8428", "http://historian:${HG_INFLUX_URL_PASSWORD}@127.0.0.1:8428")
    site = write_case(good, Case("good", text, ""))
    (good / "state-is-a-file").write_text("not a folder\n", encoding="utf-8")
    bad = write_case(tmp_path / "bad", Case("bad", site_text(mqtt="mqtt: {port: '${HG_MQTT_PASSWORD}'}"), ""))
    opcua_password = SECRETS["HG_OPCUA_PASSWORD"]
    runs: list[tuple[tuple[str, ...], int]] = [
        (("--help",), 0),
        (("--version",), 0),
        (("check", "-c", str(site)), 0),
        (("check", "--json", "-c", str(site)), 0),
        (("check", "--json", "-c", str(bad)), 2),
        (("check", "-c", str(bad)), 2),
        (("read", "-c", str(site), "cdu-1"), 1),
        (("read", "-c", str(site), "panel-pc"), 1),
        (("read", "--json", "-c", str(site), "panel-pc"), 1),
        (("read", "-c", str(site), "no-such-device"), 2),
        (("read", "-c", str(bad), "cdu-1"), 2),
        (("write", "-c", str(site), "cdu-1", "tcs_supply_setpoint_c", "40"), 1),
        (("write", "-c", str(bad), "cdu-1", "tcs_supply_setpoint_c", "40"), 2),
        (("scan", "127.0.0.1", "--port", str(closed), "--units", "1-2", "--timeout", "0.2"), 1),
        (
            (
                "browse",
                f"opc.tcp://127.0.0.1:{closed}/",
                "--user",
                "operator",
                "--password",
                opcua_password,
                "--timeout",
                "1",
            ),
            1,
        ),
        (("simulate", "--help"), 0),
        (("fault", "--control-port", str(closed), '{"device": "cdu-1", "fault": "silent"}'), 1),
        (("run", "-c", str(bad)), 2),
        (("run", "-c", str(site)), 1),  # the spool folder is a file: one line, exit 1
        (("historian", "-c", str(bad)), 2),
    ]
    for args, expected in runs:
        result = run_cli(*args)
        output = result.stdout + result.stderr
        assert result.returncode == expected, f"{args}: {output}"
        assert "Traceback" not in output, f"{args}: {output}"
        assert_no_secret(output)


@pytest.mark.parametrize(
    ("value", "key", "expected"),
    [
        ("abc #x", "username", "abc #x"),  # not cut at a YAML comment
        ("0777", "username", "0777"),  # not read as the octal number 511
        ("~", "username", "~"),  # not null
        ("*secret", "password", "*secret"),  # not an alias
        ("@secret", "password", "@secret"),  # not a syntax error
        ("yes", "client_id", "yes"),  # not a boolean
        ("1884", "port", 1884),  # a number key: pydantic converts the text
        ("[a, b]", "host", "[a, b]"),  # not a list
    ],
)
def test_env_values_are_substituted_as_text_never_parsed(tmp_path, monkeypatch, secrets_set, value, key, expected):
    monkeypatch.setenv("HG_VALUE", value)
    site = write_case(
        tmp_path,
        Case(
            "env",
            site_text(
                mqtt=f"mqtt: {{{key}: '${{HG_VALUE}}', username: u}}"
                if key != "username"
                else f"mqtt: {{{key}: '${{HG_VALUE}}'}}"
            ),
            "",
        ),
    )
    mqtt = load_site(site).config.mqtt
    got = getattr(mqtt, key)
    assert (got.get_secret_value() if key == "password" else got) == expected


def test_env_value_inside_a_longer_string_and_defaults(tmp_path, monkeypatch, secrets_set):
    monkeypatch.setenv("HG_HOST", "broker")
    monkeypatch.delenv("HG_UNSET", raising=False)
    site = write_case(
        tmp_path,
        Case(
            "env",
            site_text(mqtt="mqtt: {host: '${HG_HOST}.site-${HG_UNSET:-1}.local', client_id: '${HG_UNSET:-}'}"),
            "",
        ),
    )
    mqtt = load_site(site).config.mqtt
    assert mqtt.host == "broker.site-1.local"
    assert mqtt.client_id == ""


def test_a_yaml_merge_key_still_works(tmp_path, secrets_set):
    """Anchors and `<<` merges are fine below the limits; a key beside a merge overrides it."""
    text = site_text(("&d " + MODBUS_CDU, "{<<: *d, name: cdu-2, port: 1502}"))
    devices = load_site(write_case(tmp_path, Case("merge", text, ""))).config.devices
    assert [(d.name, getattr(d, "port", None)) for d in devices] == [("cdu-1", 15021), ("cdu-2", 1502)]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_lines_mask_the_loaded_secrets(tmp_path, secrets_set, fmt):
    """A library that quotes a password in its message: the log line still does not show it."""
    load_site(write_case(tmp_path, Case("good", site_text(), "")))
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("info", fmt, stream)
        log = get_logger("tests.hostile")
        log.warning("login_failed", detail=f"user operator password {SECRETS['HG_OPCUA_PASSWORD']} refused")
        try:
            raise RuntimeError(f"token {SECRETS['HG_INFLUX_TOKEN']} rejected")  # noqa: TRY301 - the exception logged
        except RuntimeError:
            log.exception("write_failed")
        # A standard-library logger, as paho, pymodbus and asyncua use.
        logging.getLogger("tests.hostile.library").error("bad password %s", SECRETS["HG_MQTT_PASSWORD"])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    text = stream.getvalue()
    assert text.count("***") >= 3, text
    assert_no_secret(text)


def test_read_does_not_hold_a_broken_control_section_against_the_device(tmp_path, secrets_set):
    """`read` never uses control: a role still being set up does not stop commissioning a device."""
    site = write_case(tmp_path, Case("roles", control_site(control="{heat_meter_device: meter-9}"), ""))
    assert load_site(site, unused=("control",)).config.control is not None
    with pytest.raises(ConfigError, match=r"control\.heat_meter_device: no device named 'meter-9'"):
        load_site(site)
