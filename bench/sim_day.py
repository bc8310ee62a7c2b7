"""What a model-level simulated day costs, and where the time goes.

``python bench/sim_day.py [SCENARIO]`` runs the scenario in closed loop (plant model +
supervisor, ``heat-gateway simulate --fast``) and then, on a fresh plant of the same scenario,
the plant alone (steps, then device reads), so the shares come from one run on one machine.
Wall time on a shared machine depends on the load: CPU seconds (``process_time``) are the
figure to compare; the ratios between the parts are what matter.
"""

from __future__ import annotations

import sys
import time

from simulators.harness import run_scenario, with_profile_resolutions
from simulators.plant import Plant
from simulators.scenario import load_scenario


def main() -> None:
    """Print wall and CPU seconds of a closed-loop run and of its parts."""
    name = sys.argv[1] if len(sys.argv) > 1 else "reference-day"
    scenario = load_scenario(name)
    wall = time.perf_counter()
    cpu = time.process_time()
    summary = run_scenario(name, plot=False)
    cpu_total = time.process_time() - cpu
    wall_total = time.perf_counter() - wall
    timings = summary.timings
    supervisor_cpu = timings["cycle_mean_us"] * timings["cycles"] / 1e6

    plant = Plant(with_profile_resolutions(scenario.plant_config()), seed=scenario.seed)
    seconds = int(scenario.duration_s)
    cpu = time.process_time()
    for _ in range(seconds):
        plant.step(1.0)
    step_cpu = time.process_time() - cpu
    devices = plant.device_names()
    cpu = time.process_time()
    for _ in range(seconds):
        plant.step(1e-3)  # moves the clock, so damped sensors and the meter's period behave as in a run
        for device in devices:
            plant.read(device)
    read_cpu = time.process_time() - cpu - step_cpu  # the same number of (single sub-step) steps

    print(f"{name}: {seconds / 3600:g} h simulated")
    print(f"  closed loop      wall {wall_total:6.1f} s   cpu {cpu_total:6.1f} s")
    print(f"  supervisor.step  wall ~{supervisor_cpu:5.1f} s ({timings['cycle_mean_us']:.0f} us/cycle, wall clock)")
    print(f"  plant steps      cpu  {step_cpu:5.1f} s")
    print(f"  device reads     cpu  {read_cpu:5.1f} s ({len(devices)} devices every second)")
    rest = cpu_total - step_cpu - read_cpu
    print(f"  supervisor + harness cpu {rest:5.1f} s (process image, trace, events, write checks, report)")


if __name__ == "__main__":
    main()
