"""InfluxDB line protocol, the payload of every metrics message.

``cdu,site=dk-cph-1,device=cdu-1 tcs_supply_temp_c=41.52,heat_load_kw=1520.0 1764090000000000000``

Names are validated at config time (site, device and kind match ``[a-z0-9][a-z0-9_-]*``,
signals ``[a-z][a-z0-9_]*``), so only tag values from elsewhere need escaping. Non-finite
values are left out: line protocol cannot carry NaN, and a NaN is not a good value anyway.
"""

from __future__ import annotations

import math
import re

_TAG_ESCAPE = re.compile(r"([,= \\])")


def escape_tag(value: str) -> str:
    """Escape a tag key or value (commas, equals signs, spaces, backslashes)."""
    return _TAG_ESCAPE.sub(r"\\\1", value)


def series_prefix(measurement: str, tags: dict[str, str]) -> str:
    """``measurement,tag=value,...`` once per device, reused for every line."""
    parts = [escape_tag(measurement)]
    parts.extend(f"{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)
    return ",".join(parts)


def encode_line(prefix: str, fields: dict[str, float], timestamp_ns: int) -> str | None:
    """One line; ``None`` when no field is finite (a line needs at least one field)."""
    isfinite = math.isfinite
    body = ",".join(f"{name}={value!r}" for name, value in fields.items() if isfinite(value))
    if not body:
        return None
    return f"{prefix} {body} {timestamp_ns}"


def encode_fields(fields: dict[str, float | int | bool | str]) -> str:
    """Mixed-type fields: floats as-is, ints with ``i``, bools as true/false, strings quoted."""
    parts = []
    for name, value in fields.items():
        if isinstance(value, bool):
            parts.append(f"{name}={'true' if value else 'false'}")
        elif isinstance(value, int):
            parts.append(f"{name}={value}i")
        elif isinstance(value, float):
            if math.isfinite(value):
                parts.append(f"{name}={value!r}")
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{name}="{escaped}"')
    return ",".join(parts)
