"""Print the configuration reference (Markdown) from the pydantic models' field descriptions.

The README's "Configuration reference" section is this script's output; a test keeps the two
equal, so a key cannot be added without being documented.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config.control import ControlConfig
from gateway.config.profile import ModbusProfile, ModbusSignal, OpcUaProfile, OpcUaSignal
from gateway.config.site import InfluxDb, Logging, ModbusDevice, Mqtt, OpcUaDevice, OpcUaSecurity, SiteConfig, Tls
from gateway.control.commands import CommandPolicy

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("site file (top level)", SiteConfig),
    ("devices[] with protocol: modbus", ModbusDevice),
    ("devices[] with protocol: opcua", OpcUaDevice),
    ("devices[].security (OPC UA)", OpcUaSecurity),
    ("mqtt", Mqtt),
    ("mqtt.tls", Tls),
    ("influxdb", InfluxDb),
    ("logging", Logging),
    ("control (supervisory control; design and tuning in docs/control.md)", ControlConfig),
    ("control.commands (operator commands over MQTT)", CommandPolicy),
    ("Modbus profile (top level)", ModbusProfile),
    ("Modbus profile: signals.NAME", ModbusSignal),
    ("OPC UA profile (top level)", OpcUaProfile),
    ("OPC UA profile: signals.NAME", OpcUaSignal),
]


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " / ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    if isinstance(annotation, type):
        return {"NoneType": "null", "SecretStr": "secret string"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(field: object) -> str:
    if getattr(field, "is_required", lambda: False)():
        return "required"
    default = getattr(field, "default", None)
    if getattr(field, "default_factory", None) is not None:
        return "(section defaults)"
    if default is None:
        return "-"
    value = getattr(default, "value", default)
    return f"`{value}`" if str(value) else '`""`'


def render() -> str:
    """The whole reference as Markdown."""
    out = []
    for title, model in SECTIONS:
        out.append(f"#### {title}\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|")
            type_name = _type_name(field.annotation).replace("|", "\\|")
            out.append(f"| `{name}` | {type_name} | {_default(field)} | {description} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
