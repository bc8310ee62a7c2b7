"""What a poll produces: values with their time and quality."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Quality(StrEnum):
    """OPC UA's three quality classes; Modbus values are good or bad."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(slots=True)
class Reading:
    """One poll of one device.

    ``values`` holds only good values. A signal that could not be read, or whose source said it
    is bad, is in ``bad`` with the reason, so a bad value can never pass as a good number.
    ``texts`` holds good string values (a Modbus ``type: string`` such as a serial number):
    text is metadata, not a number a controller could use, so it stays out of ``values``.

    ``timestamp_ns`` is wall-clock time (ns since the epoch) of the read itself, never of the
    schedule: for Modbus when the poll's first request was handed to the socket, after any wait
    for a shared connection.
    """

    device: str
    timestamp_ns: int
    values: dict[str, float]
    bad: dict[str, str] = field(default_factory=dict)
    uncertain: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
