"""A control cycle that raises is logged with its cause and the next one runs; while cycles keep
failing the loop reports no progress, so the service stops feeding systemd's watchdog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from structlog.testing import capture_logs

from gateway.config import load_site
from gateway.control.supervisor import ProcessView, StepResult, Supervisor, SupervisorState, supervisor_for_site
from gateway.control_loop import ControlLoop
from gateway.process_image import ProcessImage
from gateway.publish.outbox import Outbox

REPO = Path(__file__).resolve().parent.parent


class FaultySupervisor(Supervisor):
    """The real supervisor, with a fault injected into its step while ``failing`` is set."""

    failing = True

    def step(self, view: ProcessView, state: SupervisorState, now_s: float) -> StepResult:
        if self.failing:
            raise RuntimeError("injected fault")
        return super().step(view, state, now_s)


async def _until(predicate, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


async def test_failing_cycles_are_logged_run_on_and_report_no_progress() -> None:
    site = load_site(REPO / "config" / "site.example.yaml")
    real = supervisor_for_site(site)
    supervisor = FaultySupervisor(real.config, real.roles)
    loop = ControlLoop(site, ProcessImage(), {}, Outbox(1000), supervisor=supervisor, cycle_real_s=0.02)
    with capture_logs() as logs:
        task = asyncio.create_task(loop._run_cycles())
        try:
            await _until(lambda: loop.failed_cycles >= 5, "five failed cycles")
            assert loop.progress.steps == 0  # no progress while every cycle fails
            assert loop.cycles == 0
            supervisor.failing = False
            await _until(lambda: loop.progress.steps >= 3, "progress after the fault cleared")
            assert loop.cycles >= 3
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    failed = [e for e in logs if e["event"] == "control_cycle_failed"]
    assert len(failed) == loop.failed_cycles
    assert failed[0]["cause"] == "RuntimeError: injected fault"
    assert failed[0]["log_level"] == "error"
