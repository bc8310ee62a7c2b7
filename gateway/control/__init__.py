"""Pure control building blocks: PID, ramps, alarms, timers, selectors, fallbacks.

Nothing in this package does I/O, sleeps or reads a clock: every function takes the time
(`now_s`, seconds on a monotonic clock) as an argument and returns a new state, so the
supervisory controller can be tested as tables of cycles and run faster than real time
against the plant model.

- `gateway.control.pid`: the PID controller (back-calculation anti-windup, derivative on the
  measurement, bumpless manual/auto transfer, tracking input for override selection).
- `gateway.control.blocks`: clamp, ramp limiter, weather curve, delayed alarm, minimum
  on/off timer, staleness, hold-then-fallback, min/max select.
- `gateway.control.supervisor`: the supervisory controller, whose cycle is the chain of stages
  in `gateway.control.stages` over the state records of `gateway.control.state`; roles
  (`gateway.control.roles`), writes (`gateway.control.writes`), commands
  (`gateway.control.commands`).

What does I/O sits beside the service: `gateway.control_loop` (the live cycle) and
`gateway.write_executor` (the per-device writers); the ``control:`` settings are
`gateway.config.control`.
"""
