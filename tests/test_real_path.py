"""A scenario on the real path, on the plant's clock (simulators/real_path.py).

The simulators serve 12 CDUs and the heat meter (Modbus TCP) and the heat-pump PLC and the panel
PC (OPC UA) on loopback sockets from one plant model; the gateway polls them through its own
drivers, runs its supervisor and writes through its executor, all on a virtual-time event loop
that runs the plant far faster than real time. The first 45 min of ``gateway-crash``: take-over
from local control, steady control, then the gateway task is cancelled at 30 min (nobody polls,
writes or sends heartbeats) and a new gateway starts 10 min later.

Judged by the scenario report on the plant's true values: no rack loop above its IT limit, no
write outside the profile limits and none refused by a device, DH supply on its requirement, the
heat order met, and every device on its local setpoints within its watchdog timeout after the
crash. The same window with a heat-meter profile whose word order is flipped must fail.

Both runs go at once, each in its own process (one per core): a real-path run is one process on
one core.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import socket
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway import clock
from simulators.harness import PROFILE_DIR
from simulators.virtual_time import VirtualTimeLoop

SCENARIO = "gateway-crash"
WINDOW_H = 0.75


def _run_quietly(profiles_dir: Path | None, report_dir: Path) -> tuple[Any, Any]:
    """One real-path run in a worker process, with the gateway's log at warning level."""
    from gateway.logs import setup_logging  # noqa: PLC0415 - in the worker process
    from simulators.real_path import run_real_path  # noqa: PLC0415

    setup_logging("warning", "auto")
    return run_real_path(SCENARIO, hours=WINDOW_H, profiles_dir=profiles_dir, report_dir=report_dir, plot=False)


def flipped_meter_profiles(folder: Path) -> Path:
    """The bundled profiles, with the heat meter's word order flipped (ABCD <-> CDAB) on every
    32-bit value: what a commissioning engineer gets wrong when the meter's gateway swaps words."""
    for path in PROFILE_DIR.glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    meter = folder / "heat-meter.yaml"
    text = meter.read_text(encoding="utf-8")
    flipped = text.replace("byte_order: CDAB", "byte_order: @@").replace("byte_order: ABCD", "byte_order: CDAB")
    flipped = flipped.replace("byte_order: @@", "byte_order: ABCD")
    assert flipped.count("byte_order: CDAB") == 1, "the meter profile's default order is no longer ABCD"
    assert flipped.count("byte_order: ABCD") == 3, "the meter's three counters are no longer CDAB"
    meter.write_text(flipped, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any, Path]]:
    """The window with the right profiles and with the flipped meter profile, side by side."""
    flipped = flipped_meter_profiles(tmp_path_factory.mktemp("flipped-profiles"))
    reports = {name: tmp_path_factory.mktemp(f"report-{name}") for name in ("right", "flipped")}
    # spawn: a clean interpreter per run (fork would copy whatever threads pytest runs)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        right = pool.submit(_run_quietly, None, reports["right"])
        wrong = pool.submit(_run_quietly, flipped, reports["flipped"])
        return {
            "right": (*right.result(), reports["right"]),
            "flipped": (*wrong.result(), reports["flipped"]),
        }


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_window_passes_on_the_real_path(runs: dict[str, tuple[Any, Any, Path]]) -> None:
    summary, run, report = runs["right"]
    checks = summary.checks
    t = summary.timings
    print(
        f"\nreal path {WINDOW_H:g} h of {SCENARIO}: {t['wall_s']} s wall (setup {t['setup_s']} s), "
        f"{t['cpu_s_per_plant_hour']} s CPU per plant hour, {t['speedup']}x; polls {run.polls} "
        f"({run.poll_failures} failed), cycles {run.cycles}, writes {summary.counts['setpoint_writes']} setpoint + "
        f"{summary.counts['heartbeats']} heartbeat; checks {json.dumps({n: c['value'] for n, c in checks.items()})}"
    )
    failed = {name: check for name, check in checks.items() if not check["ok"]}
    assert summary.passed, f"criteria failed on the real path: {failed}"
    # The checks the live test made, each by name in the report.
    assert checks["tcs_over_limit_s"]["value"] == 0, "a rack loop was above its IT limit"
    assert checks["writes_out_of_limits"]["value"] == 0, "a write outside the profile limits was proposed or sent"
    assert summary.counts["writes_outside_true_limits"] == 0, "a device received a value outside its limits"
    assert checks["writes_rejected"]["value"] == 0, "a device refused or failed a write"
    assert checks["dh_supply_dev_rms_k"]["ok"], checks["dh_supply_dev_rms_k"]
    assert checks["heat_within_2pct_share"]["ok"], checks["heat_within_2pct_share"]
    crash = checks["crash_at_1800s_local_within_watchdog"]
    assert crash["ok"], crash
    assert set(crash["value"]) == {*(f"cdu-{i}" for i in range(1, 13)), "hp-plc"}, crash
    # Everything went through the sockets: polls, setpoints and heartbeats reached the devices.
    assert run.gateway_starts == 2, "the gateway was not restarted after the crash"
    assert run.poll_failures == 0, "a poll failed on loopback (a reply overtaken by the virtual clock?)"
    assert summary.counts["setpoint_writes"] > 100
    assert summary.counts["heartbeats"] > 100
    assert sum(run.device_writes.values()) >= summary.counts["setpoint_writes"] + summary.counts["heartbeats"]
    assert json.loads((report / f"{SCENARIO}.json").read_text(encoding="utf-8"))["passed"] is True


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wrong_byte_order_fails_the_scenario(runs: dict[str, tuple[Any, Any, Path]]) -> None:
    summary, run, report = runs["flipped"]
    checks = summary.checks
    metrics = summary.metrics
    print(
        f"\nflipped heat-meter word order: the gateway read {run.meter_read} where the meter served "
        f"{run.meter_served}; heat delivered {metrics['energy_to_dh_mwh']} MWh of {metrics['energy_ordered_mwh']} "
        f"ordered; failed: {[name for name, check in checks.items() if not check['ok']]}"
    )
    assert not summary.passed
    saved = json.loads((report / f"{SCENARIO}.json").read_text(encoding="utf-8"))
    assert saved["passed"] is False
    failed = {name for name, check in saved["checks"].items() if not check["ok"]}
    # It fails for the reason that matters, every time: the garbled floats are outside the
    # physics of DH water (gateway.validity), so the meter's inputs are bad and the supervisor
    # holds the meter stale outside any fault window. (Whether the plant's own local control
    # happens to hold the targets meanwhile varies from run to run; this does not.)
    assert "stale_outside_faults_s" in failed, failed
    assert metrics["stale_outside_faults_devices"] == ["heat-meter"]
    # judged: 600-1800 s (after the take-over, before the crash and its settling window)
    assert metrics["stale_outside_faults_s"] > 600, metrics
    # Why, as the process image says: the meter's temperature decoded with the wrong word order
    # is bad with its value and the valid range named, never a number the loops act on (now and
    # then the garbage lands inside the range, then it is far from what the meter served).
    read, served = run.meter_read["flow_temp_c"], run.meter_served["flow_temp_c"]
    if read is None:
        assert "outside its valid range 1..150 (role heat_meter.flow_temp_c)" in run.meter_reasons["flow_temp_c"]
    else:
        assert abs(read - served) > 1.0, (read, served)
    # Garbage in must not stop the loop: no control cycle raised (NaN once did, 90 times a run).
    assert checks["control_cycles_failed"]["value"] == 0, checks["control_cycles_failed"]
    # A wrong profile must still never push anything outside the limits.
    assert checks["tcs_over_limit_s"]["ok"]
    assert checks["writes_out_of_limits"]["ok"]


# -- the virtual-time loop itself ----------------------------------------------------------------


def _in_virtual_time(coroutine_function: Any) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coroutine_function(loop))
    finally:
        loop.close()


def test_time_jumps_to_the_next_timer_only_when_idle() -> None:
    async def main(loop: VirtualTimeLoop) -> list[float]:
        seen = []
        for delay in (3600.0, 0.25, 59.75):
            await asyncio.sleep(delay)
            seen.append(loop.time())
        return seen

    assert _in_virtual_time(main) == [3600.0, 3600.25, 3660.0]


def test_a_loopback_round_trip_takes_no_virtual_time() -> None:
    """Requests and replies over real TCP sockets: the clock waits for them, never jumps past."""

    async def main(loop: VirtualTimeLoop) -> tuple[float, float, int]:
        done = asyncio.Event()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(100):
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
            done.set()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        before = loop.time()
        answered = 0
        for i in range(200):
            writer.write(f"{i:05d}".encode())
            async with asyncio.timeout(0.001):  # a thousandth of a plant second: plenty in virtual time
                assert await reader.readexactly(5) == f"{i:05d}".encode()
            answered += 1
            await asyncio.sleep(1.0)  # the next request one plant second later
        after = loop.time()
        writer.close()
        await writer.wait_closed()
        await done.wait()
        server.close()
        await server.wait_closed()
        return before, after, answered

    before, after, answered = _in_virtual_time(main)
    assert answered == 200
    assert after - before == pytest.approx(200.0)


def test_time_stands_still_while_a_thread_works_for_the_loop() -> None:
    async def main(loop: VirtualTimeLoop) -> tuple[float, float]:
        ticker = asyncio.create_task(asyncio.sleep(0.01))  # a timer that is due meanwhile
        before = loop.time()
        await asyncio.to_thread(lambda: socket.getaddrinfo("localhost", 80))  # real work, real time
        after = loop.time()
        await ticker
        return before, after

    before, after = _in_virtual_time(main)
    assert after == before


def test_the_gateway_clock_follows_the_virtual_loop_while_in_use() -> None:
    loop = VirtualTimeLoop()
    clock.use(wall_ns_fn=lambda: 1_000_000_000 + round(loop.time() * 1e9), monotonic_fn=loop.time)
    try:

        async def main() -> tuple[int, float]:
            await asyncio.sleep(90.0)
            return clock.wall_ns(), clock.monotonic()

        wall_ns, monotonic = loop.run_until_complete(main())
    finally:
        clock.reset()
        loop.close()
    assert wall_ns == 91_000_000_000
    assert monotonic == 90.0
    assert clock.wall_ns is time.time_ns


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["simulate", "--real-path"], "simulate --real-path needs --scenario NAME"),
        (["simulate", "--real-path", "--fast", "--scenario", SCENARIO], "simulate --real-path needs --scenario NAME"),
        (["simulate", "--real-path", "--scenario", SCENARIO, "--profiles", "/nonexistent/profiles"], "no such folder"),
        (["simulate", "--real-path", "--scenario", SCENARIO, "--hours", "0"], "--hours must be above 0"),
    ],
)
def test_real_path_usage_errors_exit_2_with_the_reason(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main  # noqa: PLC0415

    assert main(argv) == 2
    assert said in capsys.readouterr().err


def test_simulate_help_describes_the_real_path(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main  # noqa: PLC0415

    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--real-path", "--hours", "--profiles", "--poll-s", "--speed"):
        assert flag in text
    assert "write executor" in text


def test_a_harness_event_the_real_path_cannot_do_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from simulators import real_path  # noqa: PLC0415
    from simulators.scenario import ScenarioError  # noqa: PLC0415

    # As if device_silent had no real fault to map to (every kind shipped today has one).
    monkeypatch.setattr(real_path, "REAL_PATH_EVENTS", {"gateway_crash": "", "utility_link_lost": ""})
    with pytest.raises(ScenarioError, match=r"device-silent: device_silent cannot run on the real path .* --fast"):
        real_path.run_real_path("device-silent", hours=0.01)
