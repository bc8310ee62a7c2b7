"""Why an override or safe state is active, in words an operator reads at 3 a.m.

The supervisor names each active override in its ``overrides`` status field
(``override:heat_pump_capacity``, ``safe_state:meter_stale``, ...). The demo screen and the
runbooks show these sentences beside the names; a name without a sentence is shown as it is.
"""

from __future__ import annotations

EXPLANATIONS: dict[str, str] = {
    "heat_pump_capacity": (
        "the heat-power limit is held just under what the running heat pumps can deliver; "
        "delivered heat stays under the order until the PLC has started the next heat pump "
        "(start delay and minimum off time), then it catches up"
    ),
    "heat_pump_short": (
        "the heat pumps cannot hold their supply setpoint right now (one starting, or a source limit): "
        "the heat-power limit is frozen so more DH flow does not sag the supply"
    ),
    "heat_pump_source_limit": (
        "the heat pumps' source water is below its minimum: heat taken is cut to protect the evaporators"
    ),
    "dh_over_temperature": "DH supply above its maximum: supply setpoint and heat power are cut back",
    "dh_max_supply": "the DH supply requirement is above the configured maximum: the setpoint stops at the maximum",
    "dh_cannot_take_heat": (
        "the DH network cannot take heat (no order, return too hot, or a pump trip): "
        "the heat goes to the dry coolers, never back into the racks"
    ),
    "fws_too_hot": "facility water supply too hot: CDU setpoints back off and the dry coolers cool harder (IT first)",
    "cdu_cannot_hold": "a CDU cannot hold its setpoint (valve saturated or supply above it): that CDU backs off "
    "alone, the others and the dry coolers hold",
    "rack_near_limit": "a rack loop is near its IT limit: CDU setpoints back off",
    "meter_stale": "heat-meter data are stale: the DH loops hold their safe settings until it reads again",
    "hp_plc_stale": "heat-pump PLC data are stale: its writes stop and it falls back to its own setpoints",
    "cdu_data_stale": "CDU data are stale: that CDU is handed back to its local control; dry coolers take the heat",
    "fws_unknown": "facility water temperature unknown: CDU setpoints held at the conservative value",
}


def explain_override(name: str) -> str:
    """The sentence for ``override:NAME`` / ``safe_state:NAME`` (or a plain NAME)."""
    key = name.split(":", 1)[-1]
    return EXPLANATIONS.get(key, "see docs/control.md, 'Overrides'")
