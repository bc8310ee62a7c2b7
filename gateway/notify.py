"""systemd notification (``Type=notify``, ``WatchdogSec=``) without extra dependencies.

Writes ``READY=1``, ``STATUS=...``, ``RELOADING=1``, ``WATCHDOG=1`` and ``STOPPING=1`` datagrams
to ``$NOTIFY_SOCKET`` (sd_notify(3)); does nothing when not started by systemd. What is sent
when, and why, is in gateway/service.py and gateway/historian.py.
"""

from __future__ import annotations

import os
import socket
import time


def sd_notify(state: str) -> bool:
    """Send one state line to systemd; False when there is no notify socket."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True


def sd_notify_reloading() -> bool:
    """``RELOADING=1`` with the ``MONOTONIC_USEC=`` sd_notify(3) asks for; READY=1 must follow."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return sd_notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog_period_s() -> float | None:
    """Half of systemd's watchdog interval, or ``None`` when the watchdog is off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
