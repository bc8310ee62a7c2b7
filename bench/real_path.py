"""What a real-path accelerated run costs: wall and CPU per plant hour, and how many times real time.

``python bench/real_path.py [SCENARIO] [HOURS]`` runs the scenario's first HOURS (default
reference-day, 0.5 h) through sockets, drivers, pollers and the write executor on virtual plant
time (``heat-gateway simulate --real-path``, simulators/real_path.py) and prints the figures of
that one run. CPU seconds (``process_time``) are the figure to compare between machines and
commits; wall time is the CPU time divided by the share of a core the process got, so the load
average is printed beside it.
"""

from __future__ import annotations

import logging
import os
import sys

from gateway.logs import setup_logging
from simulators.real_path import run_real_path


def main() -> None:
    """Print the run's figures."""
    name = sys.argv[1] if len(sys.argv) > 1 else "reference-day"
    hours = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    setup_logging("warning", "auto")
    for logger in ("gateway.mqtt", "gateway.publish.mqtt"):  # nobody listens: MQTT is not in the loop
        logging.getLogger(logger).setLevel(logging.ERROR)
    load_before = os.getloadavg()[0]
    summary, run = run_real_path(name, hours=hours, plot=False)
    load_after = os.getloadavg()[0]
    t = summary.timings
    loop_wall = run.wall_s - run.setup_wall_s
    loop_cpu = run.cpu_s - run.setup_cpu_s
    plant_h = summary.duration_s / 3600.0
    print(f"{name}: first {plant_h:g} h on the real path, {'PASSED' if summary.passed else 'FAILED'}")
    print(f"  load average      {load_before:.1f} at start, {load_after:.1f} at the end (2 cores)")
    print(f"  setup             wall {run.setup_wall_s:6.1f} s   cpu {run.setup_cpu_s:6.1f} s (servers, gateway)")
    print(f"  run               wall {loop_wall:6.1f} s   cpu {loop_cpu:6.1f} s ({loop_cpu / loop_wall:.0%} of a core)")
    print(f"  per plant hour    wall {loop_wall / plant_h:6.1f} s   cpu {loop_cpu / plant_h:6.1f} s")
    print(f"  times real time   {t['speedup']:.0f}x wall, {3600.0 / (loop_cpu / plant_h):.0f}x on one free core (CPU)")
    print(f"  a day would take  {24 * loop_cpu / plant_h / 60:.1f} min of one free core")
    print(f"  polls {run.polls} ({run.poll_failures} failed), cycles {run.cycles}, clock jumps {run.jumps}")


if __name__ == "__main__":
    main()
