"""asyncua and socket exceptions turned into the driver error tree, with what to do about them."""

from __future__ import annotations

from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from gateway.config.site import OpcUaDevice, OpcUaSecurityPolicy
from gateway.drivers.base import DeviceFault, DeviceTimeout, DeviceUnavailable, DriverError
from gateway.drivers.opcua.status import AUTHENTICATION, CONNECTION_LOST, SECURITY, TIMED_OUT, status_name


def failure(  # noqa: PLR0911 - one return per kind of failure reads as a table
    device: OpcUaDevice, exc: BaseException, doing: str, address: str | None = None
) -> DriverError:
    """Turn an asyncua or socket exception into the driver error tree, with context."""
    name = device.name
    timeout = device.timeout_s
    if isinstance(exc, TimeoutError):
        return DeviceTimeout(name, f"{doing}: no reply within {timeout:g} s", address=address)
    if isinstance(exc, UaStatusCodeError):
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
            return DeviceUnavailable(name, _authentication_message(device, status), address=address)
        if code in SECURITY:
            return DeviceUnavailable(name, _security_message(device, doing, code, status), address=address)
        return DeviceFault(name, f"{doing}: {status}", address=address)
    if isinstance(exc, ConnectionRefusedError):
        return DeviceUnavailable(name, f"cannot connect to {device.endpoint}: connection refused")
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc) or type(exc).__name__
        return DeviceUnavailable(name, f"{doing}: connection lost ({what})", address=address)
    if isinstance(exc, UaError) and str(exc).startswith("No matching endpoints"):
        sec = device.security
        if sec.policy is OpcUaSecurityPolicy.NONE:
            return DeviceUnavailable(
                name, _security_message(device, doing, StatusCodes.BadSecurityModeRejected, "no None endpoint")
            )
        return DeviceUnavailable(
            name, f"{doing}: the server offers no endpoint with security {sec.policy}/{sec.mode} ({exc})"
        )
    return DeviceUnavailable(name, f"{doing}: {type(exc).__name__}: {exc}", address=address)


def _security_message(device: OpcUaDevice, doing: str, code: int, status: str) -> str:
    sec = device.security
    if sec.policy is OpcUaSecurityPolicy.NONE:
        return (
            f"{doing}: the server refuses an unsecured channel ({status}); set security.policy "
            "Basic256Sha256 with mode, certificate and private_key"
        )
    if code in (StatusCodes.BadSecurityPolicyRejected, StatusCodes.BadSecurityModeRejected):
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
