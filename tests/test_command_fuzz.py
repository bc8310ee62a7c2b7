"""Hostile operator commands, one kind per row: each is refused (or taken) with its reason and
its id, through the same path a command from the broker takes (``ControlLoop.receive`` and the
cycle's ``_apply_commands``), and nothing raises.

The same table is sent over a real broker to a running control loop in
tests/test_command_flood.py, with a poison burst and a flood.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import load_site
from gateway.control.commands import MAX_COMMAND_BYTES, RateLimiter, parse_command
from gateway.control_loop import ControlLoop
from gateway.process_image import ProcessImage
from gateway.publish.outbox import Message, Outbox

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "config" / "site.example.yaml"
TOPIC = "heat/dk-cph-1/control/cmd"  # the example site's command topic


def _cmd(command_id: str, body: str) -> bytes:
    """A JSON object with ``"id"`` first and ``body`` (JSON members text) after it."""
    return f'{{"id": "{command_id}"{", " if body else ""}{body}}}'.encode()


# (kind, payload, retained, accepted, reason fragment, id expected in the ack)
FUZZ: list[tuple[str, bytes, bool, bool, str, object]] = [
    ("valid manual", _cmd("f01", '"mode": "manual", "manual_supply_temp_c": 70.0'), False, True, "mode manual", "f01"),
    ("valid auto", _cmd("f02", '"mode": "auto"'), False, True, "mode auto", "f02"),
    ("integer setpoint", _cmd("f03", '"manual_supply_temp_c": 72'), False, True, "mode auto", "f03"),
    ("integer id", b'{"id": 4, "mode": "auto"}', False, True, "mode auto", 4),
    ("mode not a mode", _cmd("f05", '"mode": "sideways"'), False, False, "mode must be auto, manual or off", "f05"),
    ("mode a number", _cmd("f06", '"mode": 2'), False, False, "mode must be auto", "f06"),
    ("mode null", _cmd("f07", '"mode": null'), False, False, "mode must be auto", "f07"),
    ("mode a list", _cmd("f08", '"mode": ["off"]'), False, False, "mode must be auto", "f08"),
    ("mode an object", _cmd("f09", '"mode": {"off": 1}'), False, False, "mode must be auto", "f09"),
    ("mode upper case", _cmd("f10", '"mode": "OFF"'), False, False, "mode must be auto", "f10"),
    ("setpoint a string", _cmd("f11", '"manual_supply_temp_c": "70"'), False, False, "must be a finite number", "f11"),
    ("setpoint a bool", _cmd("f12", '"manual_supply_temp_c": true'), False, False, "must be a finite number", "f12"),
    ("setpoint a list", _cmd("f13", '"manual_heat_power_kw": [1]'), False, False, "must be a finite number", "f13"),
    (
        "setpoint NaN",
        _cmd("f14", '"manual_supply_temp_c": NaN'),
        False,
        False,
        "must be a finite number, got nan",
        "f14",
    ),
    ("setpoint Infinity", _cmd("f15", '"manual_supply_temp_c": Infinity'), False, False, "got inf", "f15"),
    ("setpoint -Infinity", _cmd("f16", '"manual_heat_power_kw": -Infinity'), False, False, "got -inf", "f16"),
    ("float 1e400", _cmd("f17", '"manual_supply_temp_c": 1e400'), False, False, "got inf", "f17"),
    ("integer 10**400", _cmd("f18", f'"manual_supply_temp_c": {10**400}'), False, False, "401 digits", "f18"),
    ("integer 5000 digits", _cmd("f19", '"manual_heat_power_kw": ' + "9" * 4000), False, False, "4000 digits", "f19"),
    ("integer 21 digits", _cmd("f20", '"manual_heat_power_kw": ' + "1" * 21), False, False, "21 digits", "f20"),
    ("float 1e308 huge", _cmd("f21", '"manual_heat_power_kw": 1e308'), False, False, "is outside", "f21"),
    ("tiny float", _cmd("f22", '"manual_supply_temp_c": 1e-320'), False, False, "is outside", "f22"),
    ("supply too hot", _cmd("f23", '"mode": "manual", "manual_supply_temp_c": 99'), False, False, "is outside", "f23"),
    ("supply too cold", _cmd("f24", '"manual_supply_temp_c": -40'), False, False, "is outside", "f24"),
    ("heat negative", _cmd("f25", '"manual_heat_power_kw": -1'), False, False, "is outside", "f25"),
    ("unknown key", _cmd("f26", '"mode": "auto", "valve_pct": 100'), False, False, "unknown key(s) valve_pct", "f26"),
    ("only unknown keys", _cmd("f27", '"__proto__": {}'), False, False, "unknown key(s)", "f27"),
    ("id only", _cmd("f28", ""), False, False, "must name at least one of", "f28"),
    ("empty object", b"{}", False, False, "must name at least one of", None),
    ("duplicate key", _cmd("f30", '"mode": "off", "mode": "auto"'), False, False, "duplicate key 'mode'", "f30"),
    ("deep nesting 2000", _cmd("f31", '"mode": ' + "[" * 2000 + "]" * 2000), False, False, "nested deeper", "f31"),
    ("deep nesting 5", _cmd("f32", '"mode": [[[[["off"]]]]]'), False, False, "nested deeper than 4", "f32"),
    ("brackets in strings", _cmd("f33", '"mode": "' + "[" * 500 + '"'), False, False, "mode must be auto", "f33"),
    ("1 MB", _cmd("f34", '"mode": "' + "x" * 2**20 + '"'), False, False, f"larger than {MAX_COMMAND_BYTES}", "f34"),
    ("just over the limit", _cmd("f35", '"mode": "' + "x" * 4100 + '"'), False, False, "larger than", "f35"),
    ("non-UTF-8", b'{"id": "f36", "mode": "\xff\xfe"}', False, False, "not UTF-8 (byte 23 is 0xff)", "f36"),
    ("latin-1 text", '{"id": "f37", "mode": "auto", "é": 1}'.encode("latin-1"), False, False, "not UTF-8", "f37"),
    ("lone surrogate", _cmd("f38", '"mode": "\\ud800"'), False, False, "mode must be auto", "f38"),
    ("NUL in a string", _cmd("f39", '"mode": "off\\u0000"'), False, False, "mode must be auto", "f39"),
    ("not JSON", b'{"id": "f40", mode: off}', False, False, "not valid JSON", "f40"),
    ("truncated JSON", b'{"id": "f41", "mode": "of', False, False, "not valid JSON", "f41"),
    ("empty payload", b"", False, False, "not valid JSON", None),
    ("JSON list", b'[{"id": "f43", "mode": "off"}]', False, False, "must be a JSON object, got list", None),
    ("JSON string", b'"off"', False, False, "must be a JSON object, got str", None),
    ("JSON null", b"null", False, False, "must be a JSON object, got NoneType", None),
    ("id a list", b'{"id": ["f46"], "mode": "off"}', False, False, "id must be", None),
    ("id too long", b'{"id": "' + b"i" * 65 + b'", "mode": "off"}', False, False, "id must be", None),
    ("id with a newline", b'{"id": "a\\nb", "mode": "off"}', False, False, "id must be", None),
    ("id huge integer", b'{"id": ' + b"7" * 400 + b', "mode": "off"}', False, False, "id must be", None),
    ("id a bool", b'{"id": true, "mode": "off"}', False, False, "id must be", None),
    ("retained off", _cmd("f51", '"mode": "off"'), True, False, "retained command refused", "f51"),
    ("trailing garbage", _cmd("f52", '"mode": "off"') + b"]]]", False, False, "not valid JSON", "f52"),
    ("BOM", b"\xef\xbb\xbf" + _cmd("f53", '"mode": "off"'), False, False, "not valid JSON", "f53"),
]


def test_fuzz_table_has_the_kinds_the_issue_names() -> None:
    assert len(FUZZ) >= 40
    assert len({kind for kind, *_ in FUZZ}) == len(FUZZ)


def _loop(tmp_path: Path) -> tuple[ControlLoop, Outbox]:
    site = load_site(SITE)
    outbox: Outbox = Outbox(10_000)
    return ControlLoop(site, ProcessImage(), {}, outbox), outbox


def _acks(outbox: Outbox) -> list[dict]:
    return [json.loads(m.payload) for m in outbox.take_all() if isinstance(m, Message) and m.topic.endswith("/ack")]


@pytest.mark.parametrize(
    ("kind", "payload", "retained", "accepted", "reason", "command_id"), FUZZ, ids=[f[0] for f in FUZZ]
)
def test_each_hostile_command_is_answered_with_its_id_and_reason(
    tmp_path: Path, kind: str, payload: bytes, retained: bool, accepted: bool, reason: str, command_id: object
) -> None:
    loop, outbox = _loop(tmp_path)
    with capture_logs() as logs:
        loop.receive(payload, f"{TOPIC}/alice", retained)
        loop._apply_commands()  # what the next cycle does first
    acks = _acks(outbox)
    assert len(acks) == 1, (kind, acks)
    ack = acks[0]
    assert ack["accepted"] is accepted, (kind, ack)
    assert reason in ack["reason"], (kind, ack)
    assert ack.get("id") == command_id, (kind, ack)
    assert ack["sender"] == "alice"
    assert not [e for e in logs if e["log_level"] in {"error", "critical"}], logs
    # the state never holds anything a command could smuggle in
    state = loop.state
    for value in (state.manual_supply_temp_c, state.manual_heat_power_kw):
        assert value is None or (isinstance(value, float) and math.isfinite(value) and 50 <= value <= 1e6)
    assert loop.state.mode.value in {"auto", "manual", "off"}


def test_a_retained_command_is_applied_only_when_the_site_allows_it(tmp_path: Path) -> None:
    text = SITE.read_text(encoding="utf-8").replace("accept_retained: false", "accept_retained: true")
    assert "accept_retained: true" in text
    path = tmp_path / "site.yaml"
    path.write_text(
        text.replace("profiles_dir: profiles", f"profiles_dir: {REPO / 'config' / 'profiles'}"), encoding="utf-8"
    )
    site = load_site(path)
    outbox: Outbox = Outbox(100)
    loop = ControlLoop(site, ProcessImage(), {}, outbox)
    loop.receive(_cmd("r1", '"mode": "off"'), f"{TOPIC}/alice", True)
    loop._apply_commands()
    (ack,) = _acks(outbox)
    assert ack == {"accepted": True, "reason": "mode off", "mode": "off", "id": "r1", "sender": "alice"}


def test_queue_full_and_rate_limit_answers_carry_the_id_and_one_summary_line(tmp_path: Path) -> None:
    loop, outbox = _loop(tmp_path)
    with capture_logs() as logs:
        # 150 at once from 15 senders (10 each = the burst): the cycle's queue holds 100
        for n in range(150):
            loop.receive(_cmd(f"q{n}", '"mode": "auto"'), f"{TOPIC}/op{n % 15}")
        loop._apply_commands()
        # one sender far above its rate: the burst passes, the rest are refused, one log line
        for n in range(500):
            loop.receive(_cmd(f"r{n}", '"mode": "auto"'), f"{TOPIC}/flooder")
        loop._apply_commands()
    acks = {ack["id"]: ack for ack in _acks(outbox)}
    assert set(acks) == {f"q{n}" for n in range(150)} | {f"r{n}" for n in range(500)}
    full = [a for a in acks.values() if "too many commands queued" in a["reason"]]
    assert len(full) == 50
    assert all(not a["accepted"] for a in full)
    limited = [a for a in acks.values() if a["reason"].startswith("rate limit")]
    assert len(limited) == 500 - 10
    assert all(a["sender"] == "flooder" for a in limited)
    summaries = [e for e in logs if e["event"] == "control_commands_rate_limited"]
    assert len(summaries) == 1, summaries
    assert summaries[0]["sender"] == "flooder"
    assert summaries[0]["refused"] == 1  # the first refusal at once; the rest in the next summary, 10 s on
    rejected_lines = [e for e in logs if e["event"] == "control_command_rejected"]
    assert len(rejected_lines) == 50  # the queue-full ones; rate-limit refusals are summarised


def test_rate_limiter_summarises_refusals() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2, report_s=10.0)
    outcomes = [limiter.take("a", now_s=0.0) for _ in range(5)]
    assert outcomes == [(True, 0), (True, 0), (False, 1), (False, 0), (False, 0)]  # the first refusal at once
    assert limiter.take("b", now_s=0.0) == (True, 0)  # senders are counted apart
    assert limiter.take("a", now_s=5.0) == (True, 0)  # allowed again; 2 refusals not reported yet
    refused = [limiter.take("a", now_s=5.0 + n / 1000) for n in range(20)]
    assert sum(1 for allowed, _ in refused if allowed) == 1  # the one token left
    assert all(report == 0 for _, report in refused)  # within 10 s of the last line: counted
    assert limiter.overdue(now_s=9.9) == []
    assert limiter.overdue(now_s=10.0) == [("a", 2 + 19)]  # one line for all of them
    assert limiter.overdue(now_s=30.0) == []


def test_parse_never_raises_on_random_bytes() -> None:
    import random  # noqa: PLC0415 - only here

    rng = random.Random(8)
    alphabet = b'{}[]":,0123456789.eE+-NaInfinityul \\x\xff\x00'
    for _ in range(20_000):
        payload = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 64)))
        parsed = parse_command(payload)
        assert parsed.error is not None or parsed.values
