"""InfluxDB line protocol, the payload of every metrics message: the gateway's one encoder.

``cdu,site=dk-cph-1,device=cdu-1 tcs_supply_temp_c=41.52,heat_load_kw=1520.5 1764090000000000000``

Names are validated at config time (site, device and kind match ``[a-z0-9][a-z0-9_-]*``,
signals ``[a-z][a-z0-9_]*``), so only tag values from elsewhere need escaping. Non-finite
values are left out: line protocol cannot carry NaN, and a NaN is not a good value anyway.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from gateway.sample import Reading

_TAG_ESCAPE = re.compile(r"([,= \\])")


def escape_tag(value: str) -> str:
    """Escape a tag key or value (commas, equals signs, spaces, backslashes)."""
    return _TAG_ESCAPE.sub(r"\\\1", value)


def series_prefix(measurement: str, tags: dict[str, str]) -> str:
    """``measurement,tag=value,...`` once per device, reused for every line."""
    parts = [escape_tag(measurement)]
    parts.extend(f"{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)
    return ",".join(parts)


def encode_line(prefix: str, fields: Mapping[str, float], timestamp_ns: int) -> str | None:
    """One line of float fields (the hot path); ``None`` when no field is finite (a line needs one)."""
    isfinite = math.isfinite
    body = ",".join(f"{name}={value!r}" for name, value in fields.items() if isfinite(value))
    if not body:
        return None
    return f"{prefix} {body} {timestamp_ns}"


def encode_point(prefix: str, fields: Mapping[str, float | int | bool | str], timestamp_ns: int) -> str | None:
    """One line of mixed-type fields (see :func:`encode_fields`); ``None`` when no field is left."""
    body = encode_fields(fields)
    return f"{prefix} {body} {timestamp_ns}" if body else None


_TEMPLATES_KEPT = 16  # field layouts remembered per device (a block that fails leaves a gap)


class ReadingEncoder:
    """Encodes a poller's :class:`Reading` as its device's metrics line (UTF-8 bytes).

    Measurement = the device's kind, tags ``site`` and ``device``; good numbers as floats, good
    texts (nameplate strings) as string fields, bad and uncertain values left out (the
    ``gateway`` measurement reports quality).

    The hot path: a device's readings have the same signals, in the same order, poll after
    poll. For each such layout a ``%``-template of the whole line (``prefix a=%r,b=%r %d``) is
    built once and filled in one C-level call, when every value is finite (their sum is: a
    NaN or an infinity makes it NaN or infinite). When every value is also a whole number (raw
    registers, counters, most readings of integer registers without a scale) the template
    writes them as integers, ``a=1234`` rather than ``a=1234.0``: still a float field in line
    protocol (an integer field needs the ``i`` suffix), at half the cost of formatting floats.
    100 fields of uint16 registers: ~25 us instead of ~65 us with :func:`encode_line` (2026-12-01).
    """

    def __init__(self, site: str, device_kinds: Mapping[str, str]) -> None:
        self.prefixes = {
            device: series_prefix(kind, {"site": site, "device": device}) for device, kind in device_kinds.items()
        }
        """``measurement,tag=value,...`` of each device's lines."""
        self._templates: dict[str, dict[tuple[tuple[str, ...], bool], str]] = {device: {} for device in device_kinds}

    def _template(self, device: str, names: tuple[str, ...], whole: bool) -> str:
        templates = self._templates[device]
        template = templates.get((names, whole))
        if template is None:
            if len(templates) >= _TEMPLATES_KEPT:
                templates.clear()
            prefix = self.prefixes[device].replace("%", "%%")
            conversion = "%d" if whole else "%r"
            fields = ",".join(f"{name.replace('%', '%%')}={conversion}" for name in names)
            template = templates[names, whole] = f"{prefix} {fields} %d"
        return template

    def encode(self, reading: Reading) -> bytes | None:
        """The line, or ``None`` when the reading has no good value to send."""
        prefix = self.prefixes[reading.device]
        if not reading.texts:  # the hot path: numbers only
            values = reading.values
            if values and math.isfinite(sum(values.values())):
                try:
                    whole = all(map(float.is_integer, values.values()))
                except TypeError:  # not all floats (an int or bool from elsewhere): format each
                    whole = False
                template = self._template(reading.device, tuple(values), whole)
                return (template % (*values.values(), reading.timestamp_ns)).encode()
            line = encode_line(prefix, values, reading.timestamp_ns)
        else:
            # floats stay floats (an int would become an integer field and clash with the series' type)
            fields = {name: float(value) for name, value in reading.values.items()}
            line = encode_point(prefix, {**fields, **reading.texts}, reading.timestamp_ns)
        return line.encode() if line is not None else None


def encode_fields(fields: Mapping[str, float | int | bool | str]) -> str:
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
