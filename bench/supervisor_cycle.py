"""What one supervisor cycle costs, on the inputs of a real scenario.

``python bench/supervisor_cycle.py [SCENARIO] [--seconds N] [--against GIT_REV]`` runs the
scenario's first N simulated seconds in closed loop (``simulate --fast``), keeps every
snapshot the supervisor was given, and then times ``Supervisor.step`` alone on those snapshots
(the state carried from cycle to cycle, as in a run): best of several passes, in CPU time
(``process_time``), so a busy machine inflates it less than wall time.

With ``--against REV`` the supervisor of REV (from a temporary ``git worktree``) is loaded into
the same process and steps on the same snapshots, its passes alternating with this checkout's:
before/after figures from one run, under the same load, and their ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PASSES = 7


def _forget_packages() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in {"gateway", "simulators"}:
            del sys.modules[name]


def _short_scenario(name: str, seconds: float, scenarios: Path) -> Path:
    data = yaml.safe_load((scenarios / f"{name}.yaml").read_text())
    data["duration_s"] = seconds  # the first N seconds are enough: the cost per cycle is what counts
    data["events"] = [event for event in data.get("events", []) if event["at_s"] < seconds]
    path = Path(tempfile.mkdtemp()) / f"{name}-short.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def supervisor_of(
    tree: Path, scenario: str, seconds: float, record: list[tuple[Any, float]] | None
) -> tuple[Any, type]:
    """The scenario's supervisor and its state type as ``tree`` builds them (with ``record``, the snapshots)."""
    _forget_packages()
    sys.path.insert(0, str(tree))
    try:
        from gateway.control.supervisor import Supervisor, SupervisorState  # noqa: PLC0415 - the tree under test
        from simulators import harness  # noqa: PLC0415
    finally:
        sys.path.remove(str(tree))
    made: list[Any] = []
    original = Supervisor.step

    def recording(self: Any, view: Any, state: Any, now_s: float) -> Any:
        if not made:
            made.append(self)
        if record is not None:
            record.append((view, now_s))
        return original(self, view, state, now_s)

    short = _short_scenario(scenario, seconds if record is not None else 2.0, tree / "simulators" / "scenarios")
    Supervisor.step = recording  # type: ignore[method-assign]
    try:
        harness.run_scenario(short, plot=False)
    finally:
        Supervisor.step = original  # type: ignore[method-assign]
    return made[0], SupervisorState


def one_pass(supervisor: tuple[Any, type], recorded: list[tuple[Any, float]]) -> float:
    """CPU seconds of stepping through every recorded snapshot from a fresh state."""
    state = supervisor[1]()
    step = supervisor[0].step
    started = time.process_time()
    for view, now_s in recorded:
        state = step(view, state, now_s).state
    return time.process_time() - started


def main() -> None:
    """Print us/cycle (and with --against, REV's beside it and the ratio)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="reference-day")
    parser.add_argument("--seconds", type=float, default=1800.0, help="simulated seconds recorded (default 1800)")
    parser.add_argument("--against", help="git revision to compare with, in the same process")
    args = parser.parse_args()
    recorded: list[tuple[Any, float]] = []
    supervisors = {"this checkout": supervisor_of(REPO, args.scenario, args.seconds, recorded)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            other = Path(tmp) / "tree"
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--quiet", "--detach", str(other), args.against], check=True
            )
            try:
                supervisors[args.against] = supervisor_of(other, args.scenario, args.seconds, None)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], check=True)
        best = dict.fromkeys(supervisors, float("inf"))
        for _ in range(PASSES):
            for name, supervisor in supervisors.items():
                best[name] = min(best[name], one_pass(supervisor, recorded))
    cycles = len(recorded)
    print(f"{args.scenario}: {cycles} cycles recorded, Supervisor.step alone, best of {PASSES} passes (CPU):")
    for name, seconds in best.items():
        print(f"  {name:>14}: {1e6 * seconds / cycles:6.1f} us/cycle")
    if args.against:
        print(f"  ratio this / {args.against}: {best['this checkout'] / best[args.against]:.2f}")


if __name__ == "__main__":
    main()
