"""The driver seam and its exception tree.

::

    DriverError                 anything a device did or did not do; has .device
    ├── DeviceUnavailable       cannot connect, connection lost, no reply in time
    │   ├── DeviceTimeout       no reply within the device's timeout_s
    │   └── ConnectionRefused   nothing listens at the address (TCP RST)
    ├── DeviceFault             the device answered with an error (Modbus exception code,
    │                           OPC UA bad status); has .address (register or node id)
    ├── MalformedReply          the reply does not fit the request
    └── WriteRefused            the gateway refused a write (not writable, outside limits,
                                not confirmed by read-back); nothing was sent or it was undone

A driver raises, it never returns ``None`` for a failed read. Each class has a ``cause``, a
short name the poller logs with ``device_unavailable`` and a dashboard can group by; a subclass
(an authentication failure, say) may set its own.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from gateway.sample import Reading


class DriverError(Exception):
    """A device-level failure; the message names the device and what failed."""

    cause = "driver_error"

    def __init__(self, device: str, message: str, *, address: str | None = None) -> None:
        self.device = device
        self.address = address
        where = f" at {address}" if address else ""
        super().__init__(f"{device}{where}: {message}")


class DeviceUnavailable(DriverError):
    """Cannot connect, or the connection was lost."""

    cause = "unavailable"


class DeviceTimeout(DeviceUnavailable):
    """The device did not answer within its timeout."""

    cause = "timeout"


class ConnectionRefused(DeviceUnavailable):
    """Nothing listens at the device's address: the host is up, the service is not."""

    cause = "refused"


class DeviceFault(DriverError):
    """The device answered with an error code or a bad status."""

    cause = "device_fault"


class MalformedReply(DriverError):
    """The reply does not match the request (function code, length, ids, type)."""

    cause = "malformed_reply"


class WriteRefused(DriverError):
    """A write was refused before or after it reached the device."""

    cause = "write_refused"


class ConnectionScope:
    """``async with driver:`` connects and closes: the part every driver shares."""

    async def connect(self) -> None:
        """Open the connection (each driver implements it)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close the connection (each driver implements it)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class Driver(Protocol):
    """What the poller and the controllers need from a device connection."""

    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def connect(self) -> None:
        """(Re)open the connection; raises :class:`DeviceUnavailable`."""

    async def close(self) -> None:
        """Close the connection; never raises."""

    async def read(self) -> Reading:
        """Read every signal of the device's plan once."""

    async def write(self, signal: str, value: float) -> float:
        """Write one signal (engineering units), confirm by read-back, return the value read back."""
