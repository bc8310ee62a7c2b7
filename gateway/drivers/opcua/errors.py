"""asyncua and socket exceptions turned into the driver error tree, with what to do about them.

Each error has a ``cause`` the poller logs with ``device_unavailable`` (one line per outage):
besides the driver tree's own (``timeout``, ``unavailable``, ``device_fault``, ...), OPC UA adds
``authentication`` (user, password or certificate refused, either way) and ``bad_status`` (the
server answers, but every node with a Bad status).
"""

from __future__ import annotations

from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from gateway.config.site import OpcUaDevice, OpcUaSecurityPolicy
from gateway.drivers.base import ConnectionRefused, DeviceFault, DeviceTimeout, DeviceUnavailable, DriverError
from gateway.drivers.opcua.status import AUTHENTICATION, CONNECTION_LOST, SECURITY, TIMED_OUT, status_name


class AuthenticationFailed(DeviceUnavailable):
    """The server refused the user or the gateway's certificate, or the gateway the server's.

    Retrying does not help until someone changes a password, a certificate or a trust list, so
    the message says which and where.
    """

    cause = "authentication"


class BadStatusOnly(DeviceFault):
    """The server answers, but with a Bad status for every node: nothing true to publish."""

    cause = "bad_status"

    def __init__(self, device: str, endpoint: str, statuses: dict[str, str]) -> None:
        self.statuses = dict(statuses)
        counts: dict[str, int] = {}
        for status in statuses.values():
            counts[status] = counts.get(status, 0) + 1
        names = ", ".join(f"{status} x{count}" if count > 1 else status for status, count in sorted(counts.items()))
        super().__init__(device, f"{endpoint}: every node answers a bad status: {names}")


def failure(  # noqa: PLR0911 - one return per kind of failure reads as a table
    device: OpcUaDevice, exc: BaseException, doing: str, address: str | None = None
) -> DriverError:
    """Turn an asyncua or socket exception into the driver error tree, with context."""
    name = device.name
    timeout = device.timeout_s
    if isinstance(exc, TimeoutError):
        return DeviceTimeout(name, f"{doing}: no reply within {timeout:g} s", address=address)
    if isinstance(exc, UaStatusCodeError):
        return _status_failure(device, exc, doing, address)
    if isinstance(exc, AssertionError) and channel_refused(exc):
        message = _security_message(device, doing, 0, "OpenSecureChannel answered with a fault")
        if device.security.policy is OpcUaSecurityPolicy.NONE:
            return DeviceUnavailable(name, f"{doing}: the server refused to open a channel")
        return AuthenticationFailed(name, message)
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefused(name, f"cannot connect to {device.endpoint}: connection refused")
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc) or type(exc).__name__
        return DeviceUnavailable(name, f"{doing}: connection lost ({what})", address=address)
    if isinstance(exc, UaError) and str(exc).startswith("No matching endpoints"):
        return _endpoint_failure(device, exc, doing)
    return DeviceUnavailable(name, f"{doing}: {type(exc).__name__}: {exc}", address=address)


def _status_failure(  # noqa: PLR0911 - one return per kind of status reads as a table
    device: OpcUaDevice, exc: UaStatusCodeError, doing: str, address: str | None
) -> DriverError:
    """A bad status code as the driver error its kind calls for (timeout, session, trust, fault)."""
    name = device.name
    code = int(exc.code or 0)
    status = status_name(code)
    if code in TIMED_OUT:
        return DeviceTimeout(name, f"{doing}: {status}", address=address)
    if code == StatusCodes.BadTooManySessions:
        return DeviceUnavailable(
            name,
            f"{doing}: the server has no session left ({status}); other clients use them, or "
            "sessions of an earlier gateway run that expire after their timeout",
        )
    if code in CONNECTION_LOST:
        return DeviceUnavailable(name, f"{doing}: session lost ({status})", address=address)
    if code in AUTHENTICATION:
        return AuthenticationFailed(name, f"{doing}: {_authentication_message(device, status)}", address=address)
    if code in SECURITY:
        message = _security_message(device, doing, code, status)
        if device.security.policy is OpcUaSecurityPolicy.NONE or code in _POLICY_MISMATCH:
            return DeviceUnavailable(name, message, address=address)  # configuration, not trust
        return AuthenticationFailed(name, message, address=address)
    return DeviceFault(name, f"{doing}: {status}", address=address)


def _endpoint_failure(device: OpcUaDevice, exc: UaError, doing: str) -> DriverError:
    """The server offers no endpoint with the configured security."""
    sec = device.security
    if sec.policy is OpcUaSecurityPolicy.NONE:
        return DeviceUnavailable(
            device.name, _security_message(device, doing, StatusCodes.BadSecurityModeRejected, "no None endpoint")
        )
    return DeviceUnavailable(
        device.name, f"{doing}: the server offers no endpoint with security {sec.policy}/{sec.mode} ({exc})"
    )


def channel_refused(exc: AssertionError) -> bool:
    """Whether asyncua's OpenSecureChannel raised it: how asyncua 2.1 reports a server that
    answers OpenSecureChannel with a fault (node-opcua does, for a client certificate it does
    not trust) instead of a response. The status code is lost on the way."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code.co_name == "open_secure_channel"


_POLICY_MISMATCH = {StatusCodes.BadSecurityPolicyRejected, StatusCodes.BadSecurityModeRejected}


def _security_message(device: OpcUaDevice, doing: str, code: int, status: str) -> str:
    sec = device.security
    if sec.policy is OpcUaSecurityPolicy.NONE:
        return (
            f"{doing}: the server refuses an unsecured channel ({status}); set security.policy "
            "Basic256Sha256 with mode, certificate and private_key"
        )
    if code in _POLICY_MISMATCH:
        return f"{doing}: the server refuses security {sec.policy}/{sec.mode} ({status})"
    return (
        f"{doing}: the server refused the secure channel ({status}); does it trust the gateway's "
        f"certificate {sec.certificate}? Many servers keep an unknown client certificate in a "
        "'rejected' folder until an operator trusts it"
    )


def _authentication_message(device: OpcUaDevice, status: str) -> str:
    if device.username is None:
        return (
            f"authentication failed: the server does not accept an anonymous session ({status}); "
            "set username and password"
        )
    return f"authentication failed for user {device.username!r} ({status}): wrong user name or password?"
