"""What one supervisor cycle costs, on the inputs of a real scenario.

``python bench/supervisor_cycle.py [SCENARIO] [--seconds N] [--against GIT_REV]`` runs the
scenario's first N simulated seconds in closed loop (``simulate --fast``), keeps every
snapshot the supervisor was given, and then times ``Supervisor.step`` alone on those snapshots
(the state carried from cycle to cycle, as in a run), best of five passes, in CPU time
(``process_time``), so a busy machine inflates it less than wall time.

With ``--against REV`` the same measurement runs, alternately three times each, in a temporary
``git worktree`` of REV and in this checkout, and the ratio is printed: before/after figures
from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PASSES = 5


def measure(scenario: str, seconds: float) -> dict[str, Any]:
    """us per cycle of Supervisor.step on the scenario's recorded snapshots (best of PASSES)."""
    from gateway.control.supervisor import Supervisor, SupervisorState  # noqa: PLC0415 - the tree under test
    from simulators import harness  # noqa: PLC0415

    recorded: list[tuple[Any, float]] = []
    supervisors: list[Supervisor] = []
    original = Supervisor.step

    def recording(self: Supervisor, view: Any, state: SupervisorState, now_s: float) -> Any:
        if not supervisors:
            supervisors.append(self)
        recorded.append((view, now_s))
        return original(self, view, state, now_s)

    text = (Path(harness.__file__).parent / "scenarios" / f"{scenario}.yaml").read_text()
    data = yaml.safe_load(text)
    data["duration_s"] = seconds  # the first N seconds are enough: the cost per cycle is what counts
    data["events"] = [event for event in data.get("events", []) if event["at_s"] < seconds]
    path = Path(tempfile.mkdtemp()) / f"{scenario}-short.yaml"
    path.write_text(yaml.safe_dump(data))
    Supervisor.step = recording  # type: ignore[method-assign]
    try:
        harness.run_scenario(path, plot=False)
    finally:
        Supervisor.step = original  # type: ignore[method-assign]
    supervisor = supervisors[0]
    best = float("inf")
    for _ in range(PASSES):
        state = SupervisorState()
        step = supervisor.step
        started = time.process_time()
        for view, now_s in recorded:
            state = step(view, state, now_s).state
        best = min(best, time.process_time() - started)
    return {"cycles": len(recorded), "us_per_cycle": 1e6 * best / max(len(recorded), 1)}


def main() -> None:
    """Print us/cycle (and with --against, the ratio to another revision measured alternately)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="reference-day")
    parser.add_argument("--seconds", type=float, default=3600.0, help="simulated seconds recorded (default 3600)")
    parser.add_argument("--against", help="git revision to compare with, measured alternately in one run")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one measurement, for --against
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.scenario, args.seconds)))
        return
    if not args.against:
        result = measure(args.scenario, args.seconds)
        cycles, us = result["cycles"], result["us_per_cycle"]
        print(f"{args.scenario}: {cycles} cycles, Supervisor.step {us:.1f} us/cycle (CPU)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(other), args.against], check=True)
        try:
            trees = {args.against: other, "this checkout": REPO}
            figures: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(3):
                for name, tree in trees.items():
                    command = [sys.executable, str(Path(__file__).resolve()), args.scenario, "--json"]
                    command += ["--seconds", str(args.seconds)]
                    out = subprocess.run(
                        command, cwd=tree, env={"PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True
                    )
                    figures[name].append(json.loads(out.stdout.splitlines()[-1])["us_per_cycle"])
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], check=True)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, values in figures.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:>16}: {medians[name]:6.1f} us/cycle (median of {runs})")
    print(f"ratio this / {args.against}: {medians['this checkout'] / medians[args.against]:.2f}")


if __name__ == "__main__":
    main()
