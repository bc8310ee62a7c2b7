"""Values not to be believed: not a number, or outside what the instrument or the physics allows.

A device can send a float register that decodes to NaN or infinity (a sensor fault some vendors
signal that way), and a profile with the wrong byte order, word order or scale turns a 69.3 degC
supply into -3.8e17 or 5e-6. Neither may reach the loops or the database as a good value. The
poller runs each reading through the device's :class:`ValueCheck` before anything sees it; a
value that fails moves from ``values`` to ``bad`` with the reason, so it is published as missing
(the device's line leaves it out) and control finds no value (its safe state for that input).

The ranges come from two places:

- the profile's ``valid_min`` / ``valid_max`` of a signal: the instrument's measuring range
  (an EN 1434 temperature pair's range, a transmitter's 4-20 mA span);
- the control role's physics (:data:`gateway.control.roles.VALID_INPUTS`) for a signal bound to a
  role input, e.g. district-heating water between 1 and 150 degC.

Where both apply, a value must be inside both. Each signal is logged once when it goes bad
(``signal_invalid``, with its value and the range) and once when it has been good again for
:data:`RECOVERED_AFTER_S` (``signal_valid_again``), so a value that flaps in and out of range
(garbage from a swapped word order lands inside now and then) does not flood the log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from gateway import clock
from gateway.logs import get_logger
from gateway.sample import Reading

if TYPE_CHECKING:
    from gateway.config.loader import Site
    from gateway.config.site import Device
    from gateway.control.roles import RoleMap

log = get_logger(__name__)

RECOVERED_AFTER_S: Final = 60.0
"""A signal counts as valid again (and is logged so) after this long without an invalid value."""

HINT: Final = "check the profile's byte_order, word order, scale and offset against the device's manual"


class ValueCheck:
    """One device's check of its readings: finite values, and each ranged signal within its range."""

    __slots__ = ("_bad_since", "_last_bad", "device", "logs", "ranges")

    def __init__(self, device: str, ranges: Mapping[str, tuple[float, float, str]], *, logs: bool = True) -> None:
        """``ranges``: profile signal -> (lowest, highest, where the range comes from); ``logs``:
        False for a one-off read whose caller prints the reasons itself (``heat-gateway read``)."""
        self.device = device
        self.ranges = dict(ranges)
        self.logs = logs
        self._bad_since: dict[str, float] = {}  # signal -> monotonic time it went bad (logged)
        self._last_bad: dict[str, float] = {}  # signal -> monotonic time of its latest invalid value

    @property
    def invalid(self) -> int:
        """Signals invalid now: logged as signal_invalid and not yet valid again for a minute."""
        return len(self._bad_since)

    def apply(self, reading: Reading) -> None:
        """Move the reading's unbelievable values to ``reading.bad`` (the reading is the poller's own)."""
        values = reading.values
        failed: list[tuple[str, float, str]] | None = None
        if not math.isfinite(sum(values.values())):  # one C-level pass; a NaN or infinity makes the sum so
            failed = [(n, value, "not a finite number") for n, value in values.items() if not math.isfinite(value)]
        for name, (low, high, source) in self.ranges.items():
            value = values.get(name)
            if value is not None and not low <= value <= high and math.isfinite(value):
                failed = failed or []
                failed.append((name, value, f"outside its valid range {low:g}..{high:g} ({source})"))
        if failed:
            self._fail(reading, failed)
        elif self._bad_since:
            self._recover()
        uncertain = reading.uncertain
        if uncertain and not math.isfinite(sum(uncertain.values())):
            for name in [name for name, value in uncertain.items() if not math.isfinite(value)]:
                reading.bad[name] = f"not a finite number ({uncertain.pop(name)!r})"

    def _fail(self, reading: Reading, failed: list[tuple[str, float, str]]) -> None:
        now = clock.monotonic()
        for name, value, why in failed:
            del reading.values[name]
            reading.bad[name] = f"{value!r} is {why}"
            self._last_bad[name] = now
            if name not in self._bad_since:
                self._bad_since[name] = now
                if self.logs:
                    log.warning(
                        "signal_invalid", device=self.device, signal=name, value=repr(value), reason=why, hint=HINT
                    )
        if len(self._bad_since) > len(failed):
            self._recover(now)

    def _recover(self, now: float | None = None) -> None:
        now = clock.monotonic() if now is None else now
        for name, last in list(self._last_bad.items()):
            if now - last >= RECOVERED_AFTER_S:
                since = self._bad_since.pop(name)
                del self._last_bad[name]
                if self.logs:
                    invalid_for_s = round(last - since, 1)
                    log.info("signal_valid_again", device=self.device, signal=name, invalid_for_s=invalid_for_s)


def valid_ranges(
    profile_ranges: Mapping[str, tuple[float, float] | None], role_ranges: Mapping[str, tuple[float, float, str]]
) -> dict[str, tuple[float, float, str]]:
    """Each signal's range: the profile's measuring range, the role's physics, or both at once."""
    ranges: dict[str, tuple[float, float, str]] = {}
    for name, bounds in profile_ranges.items():
        if bounds is not None:
            ranges[name] = (*bounds, "the profile's valid_min/valid_max")
    for name, role in role_ranges.items():
        profile = ranges.get(name)
        if profile is None:
            ranges[name] = role
        else:
            ranges[name] = (
                max(role[0], profile[0]),
                min(role[1], profile[1]),
                f"the profile's valid_min/valid_max and {role[2]}",
            )
    return ranges


def site_ranges(site: Site, device: Device, roles: RoleMap | None) -> dict[str, tuple[float, float, str]]:
    """What a device's values must lie in: its profile's measuring ranges and, for the signals its
    control role reads (``roles``: the site's role map, None without a control section), the
    role's physics."""
    signals = site.profile_of(device).signals
    return valid_ranges(
        {name: signal.valid_range() for name, signal in signals.items()},
        roles.valid_ranges(device.name) if roles is not None else {},
    )


def site_roles(site: Site) -> RoleMap | None:
    """The site's control roles when it has a control section (for :func:`site_ranges`)."""
    from gateway.control.roles import role_map_of_site  # noqa: PLC0415 - the roles import the config models

    return role_map_of_site(site.config, site.profiles) if site.config.control is not None else None
