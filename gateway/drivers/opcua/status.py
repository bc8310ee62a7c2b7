"""OPC UA status codes: their names, and which ones mean the session, the user or the channel failed."""

from __future__ import annotations

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes, get_name_and_doc

# Status codes after which the session or the connection is gone: reconnect.
CONNECTION_LOST = {
    StatusCodes.BadSessionIdInvalid,
    StatusCodes.BadSessionClosed,
    StatusCodes.BadSessionNotActivated,
    StatusCodes.BadSecureChannelIdInvalid,
    StatusCodes.BadSecureChannelClosed,
    StatusCodes.BadConnectionClosed,
    StatusCodes.BadServerHalted,
    StatusCodes.BadShutdown,
    StatusCodes.BadCommunicationError,
    StatusCodes.BadNotConnected,
    StatusCodes.BadServerNotConnected,
    StatusCodes.BadNoSubscription,
    StatusCodes.BadSubscriptionIdInvalid,
}
TIMED_OUT = {StatusCodes.BadTimeout, StatusCodes.BadRequestTimeout}
AUTHENTICATION = {
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadIdentityTokenInvalid,
    StatusCodes.BadUserSignatureInvalid,
}
SECURITY = {
    StatusCodes.BadSecurityChecksFailed,
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUriInvalid,
    StatusCodes.BadCertificateTimeInvalid,
    StatusCodes.BadCertificateRevoked,
    StatusCodes.BadSecurityPolicyRejected,
    StatusCodes.BadSecurityModeRejected,
    StatusCodes.BadNonceInvalid,
}


def standard_node(identifier: int) -> ua.NodeId:
    """A node of namespace 0 (the OPC UA standard nodes) by its number."""
    return ua.NodeId(ua.Int32(identifier))


def status_name(code: int) -> str:
    """``BadSensorFailure`` for 0x808B0000; the info bits of the low word are ignored."""
    name, doc = get_name_and_doc(code & 0xFFFF0000)
    if doc.startswith("Unknown StatusCode"):
        return f"0x{code:08X}"
    return str(name)
