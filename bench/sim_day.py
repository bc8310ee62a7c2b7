"""What a model-level simulated day costs, and where the time goes.

``python bench/sim_day.py [SCENARIO]`` runs the scenario in closed loop (plant model +
supervisor, ``heat-gateway simulate --fast``) and then, on a fresh plant of the same scenario,
the plant alone (steps, then the device reads the harness makes: the signals the supervisor
binds), so the shares come from one run on one machine.
Wall time on a shared machine depends on the load: CPU seconds (``process_time``) are the
figure to compare; the ratios between the parts are what matter.
"""

from __future__ import annotations

import sys
import time

from gateway.config.control import ControlConfig
from simulators.harness import plant_role_map, read_plan, run_scenario, with_profile_resolutions
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
    supervisor_cpu = timings["supervisor_cpu_s"]

    plant = Plant(with_profile_resolutions(scenario.plant_config()), seed=scenario.seed)
    seconds = int(scenario.duration_s)
    cpu = time.process_time()
    for _ in range(seconds):
        plant.step(1.0)
    step_cpu = time.process_time() - cpu
    # What the harness reads: the signals the supervisor binds (read_plan), every device every second.
    plan = read_plan(plant_role_map(plant, ControlConfig()), plant)
    reads = [(device, plan.get(device)) for device in plant.device_names()]
    readers = [plant.reader(device, signals) for device, signals in reads]
    cpu = time.process_time()
    for _ in range(seconds):
        plant.step(1e-3)  # moves the clock, so damped sensors and the meter's period behave as in a run
        for read in readers:
            read()
    read_cpu = time.process_time() - cpu - step_cpu  # the same number of (single sub-step) steps

    print(f"{name}: {seconds / 3600:g} h simulated")
    print(f"  closed loop      wall {wall_total:6.1f} s   cpu {cpu_total:6.1f} s")
    print(
        f"  supervisor.step  cpu  {supervisor_cpu:5.1f} s ({1e6 * supervisor_cpu / timings['cycles']:.0f} us/cycle; "
        f"wall {timings['cycle_mean_us']:.0f} us/cycle)"
    )
    print(f"  plant steps      cpu  {step_cpu:5.1f} s")
    values = sum(len(signals) if signals is not None else len(plant.signals(d)) for d, signals in reads)
    print(f"  device reads     cpu  {read_cpu:5.1f} s ({len(reads)} devices every second, {values} values)")
    rest = cpu_total - step_cpu - read_cpu - supervisor_cpu
    print(f"  harness rest     cpu ~{rest:5.1f} s (cycle view, trace, events, write checks, report)")


if __name__ == "__main__":
    main()
