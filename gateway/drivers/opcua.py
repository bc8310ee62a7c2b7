"""OPC UA driver (asyncua client): one batched Read per poll, or a subscription.

One driver owns one asyncua ``Client``, that is one secure channel and one session. It never
reconnects by itself (asyncua's ``auto_reconnect`` stays off): when the session is lost,
:meth:`OpcUaDriver.read` raises :class:`DeviceUnavailable` and the poller calls
:meth:`OpcUaDriver.connect` again with backoff, which builds a fresh client, session and
subscription. So a device that is down costs nothing, and a reconnect always starts clean.

What :meth:`OpcUaDriver.connect` does, in order::

    [GetEndpoints on an unsecured channel, check the server certificate]   (secured only)
    open the channel and the session (anonymous or user name + password)
    Read NamespaceArray, MaxNodesPerRead, MaxMonitoredItemsPerCall         (one request)
    resolve every ``nsu=`` node id to its namespace index
    Read DataType (and Value of writable nodes) of every node              (batched)
        -> a missing namespace or node fails the connect, naming it
    [create the subscription and one monitored item per node]              (subscribe only)

Quality follows the status code of each value: Good -> ``values``, Uncertain -> ``uncertain``,
Bad -> ``bad`` with the status name (``BadSensorFailure``); a bad value is never a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeEvent, OverflowPolicy, StatusChangeEvent, Subscription
from asyncua.crypto import security_policies, uacrypto
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.status_codes import StatusCodes, get_name_and_doc
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from gateway.config import ConfigError
from gateway.config.profile import Access, OpcUaProfile, OpcUaSignal
from gateway.config.site import OpcUaDevice, OpcUaMode, OpcUaSecurityMode, OpcUaSecurityPolicy, OpcUaTrust
from gateway.drivers.base import (
    ConnectionScope,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
    MalformedReply,
    WriteRefused,
)
from gateway.logs import get_logger
from gateway.sample import Reading

log = get_logger(__name__)

# asyncua logs every lost connection several times, at warning and error level with tracebacks
# (publish loop, supervisor, socket). The poller reports a device once when it goes and once when
# it comes back, with context, so the library's own lines would only repeat that.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)

#: The session outlives a vanished gateway this long on the server. PLCs allow few sessions
#: (often 10-30); asyncua's default of one hour would let reconnects use them all up.
SESSION_TIMEOUT_MS = 60_000
#: The application URI the gateway announces when it has no certificate to take one from.
APPLICATION_URI = "urn:heat-gateway"
PRODUCT_URI = "urn:heat-gateway"

#: Profile type -> the variant a write sends when the server's DataType says nothing usable.
VARIANT_OF_TYPE: dict[str, ua.VariantType] = {
    "bool": ua.VariantType.Boolean,
    "int16": ua.VariantType.Int16,
    "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32,
    "uint32": ua.VariantType.UInt32,
    "int64": ua.VariantType.Int64,
    "uint64": ua.VariantType.UInt64,
    "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double,
    "string": ua.VariantType.String,
}

_INTEGER_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
_NUMERIC = {*_INTEGER_RANGES, ua.VariantType.Float, ua.VariantType.Double}

# Standard DataTypes that are not built-in types but always travel as one (OPC 10000-3 / -5).
_DATA_TYPE_ALIASES: dict[int, ua.VariantType] = {
    290: ua.VariantType.Double,  # Duration
    294: ua.VariantType.DateTime,  # UtcTime
    288: ua.VariantType.UInt32,  # IntegerId
    17588: ua.VariantType.UInt32,  # Index
    289: ua.VariantType.UInt32,  # Counter
}

# Status codes after which the session or the connection is gone: reconnect.
_CONNECTION_LOST = {
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
_TIMED_OUT = {StatusCodes.BadTimeout, StatusCodes.BadRequestTimeout}
_AUTHENTICATION = {
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadIdentityTokenInvalid,
    StatusCodes.BadUserSignatureInvalid,
}
_SECURITY = {
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


def _standard_node(identifier: int) -> ua.NodeId:
    """A node of namespace 0 (the OPC UA standard nodes) by its number."""
    return ua.NodeId(ua.Int32(identifier))


def status_name(code: int) -> str:
    """``BadSensorFailure`` for 0x808B0000; the info bits of the low word are ignored."""
    name, doc = get_name_and_doc(code & 0xFFFF0000)
    if doc.startswith("Unknown StatusCode"):
        return f"0x{code:08X}"
    return str(name)


# --- node ids -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A profile's node id, parsed; ``namespace_uri`` is set for ``nsu=`` ids."""

    text: str
    identifier: Any
    id_type: ua.NodeIdType
    namespace_index: int
    namespace_uri: str | None

    def resolve(self, namespaces: Sequence[str]) -> ua.NodeId:
        """The node id on this server; ``KeyError`` when its namespace URI is not there."""
        index = self.namespace_index
        if self.namespace_uri is not None:
            if self.namespace_uri not in namespaces:
                raise KeyError(self.namespace_uri)
            index = list(namespaces).index(self.namespace_uri)
        return ua.NodeId(self.identifier, ua.Int16(index), self.id_type)


def parse_node_id(text: str) -> NodeRef:
    """Parse ``ns=2;s=X``, ``ns=2;i=7``, ``nsu=urn:x;s=X`` (also ``g=`` and ``b=`` ids).

    ``ValueError`` when the text is not a node id.
    """
    try:
        node_id = ua.NodeId.from_string(text.strip())
    except (UaError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    uri = node_id.NamespaceUri if isinstance(node_id, ua.ExpandedNodeId) else None
    if isinstance(node_id, ua.ExpandedNodeId) and node_id.ServerIndex:
        raise ValueError("a node on another server (srv=) cannot be read here")
    id_type = node_id.NodeIdType
    if id_type in (ua.NodeIdType.TwoByte, ua.NodeIdType.FourByte):
        id_type = ua.NodeIdType.Numeric  # the encoding is chosen again for the resolved index
    return NodeRef(text, node_id.Identifier, id_type, node_id.NamespaceIndex, uri or None)


def node_id_text(node_id: ua.NodeId, namespaces: Sequence[str]) -> str:
    """A node id in the ``nsu=<uri>;s=...`` form that survives a server's namespace reordering."""
    plain = ua.NodeId(node_id.Identifier, ua.Int16(0), node_id.NodeIdType).to_string()
    index = node_id.NamespaceIndex
    if index == 0:
        return plain
    if index < len(namespaces):
        return f"nsu={namespaces[index]};{plain}"
    return node_id.to_string()


# --- values ---------------------------------------------------------------------------------------


def _datetime_ns(moment: datetime | None) -> int | None:
    if moment is None or moment.year < 1602:  # OPC UA's "no time" is 1601-01-01
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _number(value: Any) -> float | None:
    """A variant value as a float; ``None`` when it is not a single number."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _variant_for_write(value: float, vtype: ua.VariantType) -> Any:
    """The Python value asyncua encodes as ``vtype``; ``ValueError`` when it does not fit."""
    if vtype is ua.VariantType.Boolean:
        if value not in (0.0, 1.0):
            raise ValueError(f"a Boolean node takes 0 or 1, not {value:g}")
        return bool(value)
    if vtype in _INTEGER_RANGES:
        if not math.isfinite(value):
            raise ValueError(f"an {vtype.name} node cannot hold {value}")
        low, high = _INTEGER_RANGES[vtype]
        whole = round(value)
        if not low <= whole <= high:
            raise ValueError(f"{value:g} does not fit the node's type {vtype.name} [{low}, {high}]")
        return whole
    if vtype is ua.VariantType.Float:
        if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
            raise ValueError(f"{value:g} does not fit the node's type Float")
        return float(value)
    if vtype is ua.VariantType.Double:
        return float(value)
    raise ValueError(f"the node's type is {vtype.name}: the gateway writes numbers only")


def _as_sent(value: Any, vtype: ua.VariantType) -> float:
    """What the server should hold after the write, as the read-back will show it."""
    if vtype is ua.VariantType.Float:
        sent: float = struct.unpack("<f", struct.pack("<f", value))[0]
        return sent
    return float(value)


@dataclass(slots=True)
class _Node:
    """One signal's node on the connected server."""

    signal: str
    spec: OpcUaSignal
    ref: NodeRef
    node_id: ua.NodeId
    variant: ua.VariantType | None = None  # from the server's DataType; None when unknown


@dataclass(slots=True)
class _ReadOut:
    """Readings in the making: Reading's dicts plus the newest value timestamp."""

    values: dict[str, float] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    uncertain: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    newest_ns: int | None = None

    def add(self, node: _Node, data: ua.DataValue) -> None:
        """File one DataValue under good, uncertain or bad."""
        status = data.StatusCode.value if data.StatusCode is not None else 0
        name = node.signal
        severity = status & 0xC0000000
        if severity not in (0, 0x40000000):
            self.bad[name] = status_name(status)
            return
        raw = data.Value.Value if data.Value is not None else None
        if raw is None:
            self.bad[name] = "null value" if severity == 0 else f"{status_name(status)}, null value"
            return
        if node.spec.type == "string":
            if severity == 0:
                self.texts[name] = str(raw)
                self._stamp(data)
            else:  # texts holds good strings only
                self.bad[name] = status_name(status)
            return
        number = _number(raw)
        if number is None:
            self.bad[name] = f"not a number ({type(raw).__name__})"
            return
        if severity == 0:
            self.values[name] = number
        else:
            self.uncertain[name] = number
        self._stamp(data)

    def _stamp(self, data: ua.DataValue) -> None:
        stamp = _datetime_ns(data.SourceTimestamp) or _datetime_ns(data.ServerTimestamp)
        if stamp is not None and (self.newest_ns is None or stamp > self.newest_ns):
            self.newest_ns = stamp

    def reading(self, device: str, received_ns: int) -> Reading:
        """The Reading, stamped with the newest source timestamp (never later than receipt:
        a device clock running ahead must not make its values look fresher than they are)."""
        stamp = received_ns if self.newest_ns is None else min(self.newest_ns, received_ns)
        return Reading(device, stamp, self.values, self.bad, self.uncertain, self.texts)


# --- certificates and trust -----------------------------------------------------------------------


def _load_certificate_der(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.DER)


def _load_private_key_der(path: Path, password: str | None) -> bytes:
    data = path.read_bytes()
    secret = password.encode() if password else None
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=secret)
    else:
        key = serialization.load_der_private_key(data, password=secret)
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_uri(certificate_der: bytes) -> str | None:
    """The application URI in a certificate's subjectAltName, which servers match to the session's."""
    cert = x509.load_der_x509_certificate(certificate_der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def fingerprint(certificate_der: bytes) -> str:
    """SHA-256 fingerprint as the colon-separated hex that certificate tools print."""
    digest = hashlib.sha256(certificate_der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _first_certificate(der: bytes) -> bytes:
    """A server may send its certificate followed by its chain: keep the leaf (one DER SEQUENCE)."""
    if len(der) < 4 or der[0] != 0x30:
        return der
    first = der[1]
    if first < 0x80:
        return der[: 2 + first]
    count = first & 0x7F
    length = int.from_bytes(der[2 : 2 + count], "big")
    return der[: 2 + count + length]


def _trusted_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".der", ".pem", ".crt", ".cer"))


# --- the driver ---------------------------------------------------------------------------------


class OpcUaDriver(ConnectionScope):
    """Reads an OPC UA device's nodes (batched Read or subscription) and writes with read-back."""

    def __init__(self, device: OpcUaDevice, profile: OpcUaProfile, state_dir: Path) -> None:
        self.name = device.name
        self.device = device
        self.profile = profile
        self.state_dir = state_dir
        self._refs: dict[str, NodeRef] = {}
        for signal, spec in profile.signals.items():
            try:
                self._refs[signal] = parse_node_id(spec.node)
            except ValueError as exc:
                raise ConfigError(
                    f"profile {profile.model!r}: signals.{signal}.node: {spec.node!r} is not a node id "
                    f"(expected ns=<index>;s=<name>, ns=<index>;i=<number> or nsu=<uri>;s=<name>): {exc}"
                ) from None
        self._client: Client | None = None
        self._nodes: list[_Node] = []
        self._by_signal: dict[str, _Node] = {}
        self._chunk = 0
        # subscription mode
        self._subscription: Subscription | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._latest: list[tuple[ua.DataValue, float] | None] = []
        self._item_failed: dict[str, str] = {}
        self._subscription_lost: str | None = None
        self._subscribed_at = 0.0
        self._stale_after_s = 3 * device.poll_period_s
        self._first_data = asyncio.Event()
        self._warned_plaintext = False

    @property
    def connected(self) -> bool:
        """True while the session is up."""
        return self._client is not None and self._client.state is UaClientState.CONNECTED

    @property
    def stale_after_s(self) -> float:
        """subscribe: a value not confirmed by the server for this long is reported bad."""
        return self._stale_after_s

    # --- errors ---------------------------------------------------------------------------------

    def _failure(  # noqa: PLR0911 - one return per kind of failure reads as a table
        self, exc: BaseException, doing: str, address: str | None = None
    ) -> DriverError:
        """Turn an asyncua or socket exception into the driver error tree, with context."""
        timeout = self.device.timeout_s
        if isinstance(exc, TimeoutError):
            return DeviceTimeout(self.name, f"{doing}: no reply within {timeout:g} s", address=address)
        if isinstance(exc, UaStatusCodeError):
            code = int(exc.code or 0)
            name = status_name(code)
            if code in _TIMED_OUT:
                return DeviceTimeout(self.name, f"{doing}: {name}", address=address)
            if code == StatusCodes.BadTooManySessions:
                return DeviceUnavailable(
                    self.name,
                    f"{doing}: the server has no session left ({name}); other clients use them, or "
                    "sessions of an earlier gateway run that expire after their timeout",
                )
            if code in _CONNECTION_LOST:
                return DeviceUnavailable(self.name, f"{doing}: session lost ({name})", address=address)
            if code in _AUTHENTICATION:
                return DeviceUnavailable(self.name, self._authentication_message(name), address=address)
            if code in _SECURITY:
                return DeviceUnavailable(self.name, self._security_message(doing, code, name), address=address)
            return DeviceFault(self.name, f"{doing}: {name}", address=address)
        if isinstance(exc, ConnectionRefusedError):
            return DeviceUnavailable(self.name, f"cannot connect to {self.device.endpoint}: connection refused")
        if isinstance(exc, OSError):
            what = exc.strerror or str(exc) or type(exc).__name__
            return DeviceUnavailable(self.name, f"{doing}: connection lost ({what})", address=address)
        if isinstance(exc, UaError) and str(exc).startswith("No matching endpoints"):
            sec = self.device.security
            if sec.policy is OpcUaSecurityPolicy.NONE:
                return DeviceUnavailable(
                    self.name, self._security_message(doing, StatusCodes.BadSecurityModeRejected, "no None endpoint")
                )
            return DeviceUnavailable(
                self.name, f"{doing}: the server offers no endpoint with security {sec.policy}/{sec.mode} ({exc})"
            )
        return DeviceUnavailable(self.name, f"{doing}: {type(exc).__name__}: {exc}", address=address)

    def _security_message(self, doing: str, code: int, status: str) -> str:
        sec = self.device.security
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

    def _authentication_message(self, status: str) -> str:
        if self.device.username is None:
            return (
                f"authentication failed: the server does not accept an anonymous session ({status}); "
                "set username and password"
            )
        return f"authentication failed for user {self.device.username!r} ({status}): wrong user name or password?"

    # --- connect ----------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a fresh session and prepare the reads (and the subscription).

        :class:`DeviceUnavailable` when the server cannot be reached, refuses the channel or the
        user, :class:`DeviceFault` when a namespace or node of the profile is not on the server.
        """
        await self.close()
        # A backstop: asyncua bounds each request by timeout_s; a connect is about ten of them.
        budget_s = self.device.timeout_s * 12
        try:
            async with asyncio.timeout(budget_s):
                client = await self._open()
        except TimeoutError as exc:
            raise DeviceTimeout(
                self.name, f"connect to {self.device.endpoint}: no answer within {budget_s:g} s"
            ) from exc
        self._client = client
        try:
            async with asyncio.timeout(budget_s):
                await self._prepare(client)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, DriverError):
                raise
            if isinstance(exc, TimeoutError | OSError | UaError):
                raise self._failure(exc, "connect") from exc
            raise

    async def _open(self) -> Client:
        """A client with a session, or a :class:`DriverError`."""
        device = self.device
        client = Client(device.endpoint, timeout=device.timeout_s, watchdog_intervall=max(1.0, device.timeout_s))
        client.name = "heat-gateway"
        client.description = f"heat-gateway {self.name}"
        client.application_uri = APPLICATION_URI
        client.product_uri = PRODUCT_URI
        client.session_timeout = SESSION_TIMEOUT_MS
        if device.username is not None:
            client.set_user(device.username)
            client.set_password(device.password.get_secret_value() if device.password else "")
        try:
            if device.security.policy is not OpcUaSecurityPolicy.NONE:
                await self._secure(client)
            elif device.password is not None and not self._warned_plaintext:
                self._warned_plaintext = True  # once per run, not at every reconnect
                log.warning("opcua_password_unencrypted", device=self.name, endpoint=device.endpoint)
            await client.connect()
        except DriverError:
            client.disconnect_socket()
            raise
        except (TimeoutError, OSError, UaError) as exc:
            client.disconnect_socket()
            raise self._failure(exc, f"connect to {device.endpoint}") from exc
        except BaseException:
            # asyncua closes the socket of a failed connect, but not of a cancelled one.
            client.disconnect_socket()
            raise
        return client

    async def _secure(self, client: Client) -> None:
        """Load the gateway's certificate, check the server's, and configure the channel."""
        sec = self.device.security
        assert sec.certificate is not None
        assert sec.private_key is not None
        password = sec.private_key_password.get_secret_value() if sec.private_key_password else None
        try:
            certificate = await asyncio.to_thread(_load_certificate_der, sec.certificate)
            private_key = await asyncio.to_thread(_load_private_key_der, sec.private_key, password)
        except (OSError, ValueError, TypeError) as exc:
            raise DeviceUnavailable(
                self.name, f"cannot load the client certificate {sec.certificate} / key {sec.private_key}: {exc}"
            ) from exc
        client.application_uri = certificate_uri(certificate) or APPLICATION_URI
        server_certificate = await self._trusted_server_certificate()
        mode = (
            ua.MessageSecurityMode.SignAndEncrypt
            if sec.mode is OpcUaSecurityMode.SIGN_AND_ENCRYPT
            else ua.MessageSecurityMode.Sign
        )
        await client.set_security(
            security_policies.SecurityPolicyBasic256Sha256,
            certificate=uacrypto.CertProperties(certificate, "der"),
            private_key=uacrypto.CertProperties(private_key, "der"),
            server_certificate=uacrypto.CertProperties(server_certificate, "der"),
            mode=mode,
        )

    @property
    def trust_dir(self) -> Path:
        """Where trusted server certificates are (and, with tofu, stored)."""
        return self.device.security.trust_dir or self.state_dir / "opcua" / "trusted"

    async def _trusted_server_certificate(self) -> bytes:
        """The server's certificate from GetEndpoints, once it passed the trust check."""
        sec = self.device.security
        probe = Client(self.device.endpoint, timeout=self.device.timeout_s)
        endpoints = await probe.connect_and_get_server_endpoints()
        policy_uri = security_policies.SecurityPolicyBasic256Sha256.URI
        wanted = (
            ua.MessageSecurityMode.SignAndEncrypt
            if sec.mode is OpcUaSecurityMode.SIGN_AND_ENCRYPT
            else ua.MessageSecurityMode.Sign
        )
        offered = []
        presented: bytes | None = None
        for endpoint in endpoints:
            offered.append(f"{endpoint.SecurityPolicyUri.rsplit('#', 1)[-1]}/{endpoint.SecurityMode.name}")
            if (
                endpoint.SecurityPolicyUri == policy_uri
                and endpoint.SecurityMode == wanted
                and endpoint.ServerCertificate
            ):
                presented = _first_certificate(endpoint.ServerCertificate)
        if presented is None:
            raise DeviceUnavailable(
                self.name,
                f"the server offers no endpoint with security {sec.policy}/{sec.mode} "
                f"(it offers {', '.join(sorted(set(offered))) or 'none'})",
            )
        await asyncio.to_thread(self._check_trust, presented)
        return presented

    def _check_trust(self, presented: bytes) -> None:
        """Raise :class:`DeviceUnavailable` unless the server certificate is trusted (blocking I/O)."""
        sec = self.device.security
        seen = f"SHA-256 {fingerprint(presented)}"
        if sec.server_certificate is not None:
            try:
                pinned = _load_certificate_der(sec.server_certificate)
            except (OSError, ValueError) as exc:
                raise DeviceUnavailable(
                    self.name, f"cannot load server_certificate {sec.server_certificate}: {exc}"
                ) from exc
            if pinned != presented:
                raise DeviceUnavailable(
                    self.name, f"the server's certificate ({seen}) is not the pinned {sec.server_certificate}"
                )
            return
        folder = self.trust_dir
        if sec.trust is OpcUaTrust.TOFU:
            stored = folder / f"{self.name}.der"
            if not stored.exists():
                folder.mkdir(parents=True, exist_ok=True)
                temporary = stored.with_suffix(".der.tmp")
                temporary.write_bytes(presented)
                temporary.replace(stored)
                log.warning(
                    "opcua_certificate_trusted_on_first_use", device=self.name, fingerprint=seen, file=str(stored)
                )
                return
            if stored.read_bytes() != presented:
                rejected = self._keep_rejected(presented)
                raise DeviceUnavailable(
                    self.name,
                    f"the server's certificate changed since it was first trusted ({seen}, kept in {rejected}); "
                    f"if the server was re-keyed on purpose, delete {stored} to trust the new one",
                )
            return
        for path in _trusted_files(folder):
            try:
                if _load_certificate_der(path) == presented:
                    return
            except (OSError, ValueError):
                log.warning("opcua_trust_list_unreadable", device=self.name, file=str(path))
        rejected = self._keep_rejected(presented)
        raise DeviceUnavailable(
            self.name,
            f"the server's certificate ({seen}) is not in the trust list {folder}; to trust it, move {rejected} there",
        )

    def _keep_rejected(self, presented: bytes) -> Path:
        """Keep a refused certificate where an operator can inspect it and move it to trust_dir."""
        folder = self.state_dir / "opcua" / "rejected"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-{hashlib.sha256(presented).hexdigest()[:16]}.der"
        path.write_bytes(presented)
        return path

    async def _prepare(self, client: Client) -> None:
        """Resolve the nodes, check they exist, learn their types; subscribe if configured."""
        limits = await client.uaclient.read(
            ua.ReadParameters(
                NodesToRead=[
                    ua.ReadValueId(NodeId=_standard_node(nid), AttributeId=AttributeIds.Value)
                    for nid in (
                        ObjectIds.Server_NamespaceArray,
                        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
                        ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
                    )
                ]
            )
        )
        namespaces = [str(uri) for uri in (limits[0].Value.Value or [])] if limits[0].Value else []
        server_max_read = self._limit(limits[1])
        server_max_items = self._limit(limits[2])
        self._chunk = self.device.max_nodes_per_read or server_max_read or len(self.profile.signals) or 1
        missing_uris: dict[str, str] = {}
        nodes: list[_Node] = []
        for signal, ref in self._refs.items():
            try:
                node_id = ref.resolve(namespaces)
            except KeyError:
                missing_uris.setdefault(str(ref.namespace_uri), f"{signal} ({ref.text})")
                continue
            nodes.append(_Node(signal, self.profile.signals[signal], ref, node_id))
        if missing_uris:
            uri, first = next(iter(missing_uris.items()))
            raise DeviceFault(
                self.name,
                f"namespace {uri!r} is not on the server (used by {first}); the server's namespaces are "
                f"{', '.join(repr(n) for n in namespaces)}",
                address=first,
            )
        await self._learn_types(client, nodes)
        self._nodes = nodes
        self._by_signal = {node.signal: node for node in nodes}
        if self.device.mode is OpcUaMode.SUBSCRIBE:
            await self._subscribe(client, min(self._chunk, server_max_items or self._chunk))
        log.info(
            "opcua_connected",
            device=self.name,
            endpoint=self.device.endpoint,
            nodes=len(nodes),
            max_nodes_per_read=self._chunk,
            mode=str(self.device.mode),
        )

    @staticmethod
    def _limit(data: ua.DataValue) -> int:
        """An OperationLimits value; 0 when absent (no limit)."""
        if data.StatusCode is not None and not data.StatusCode.is_good():
            return 0
        value = data.Value.Value if data.Value is not None else None
        return int(value) if isinstance(value, int) and value > 0 else 0

    async def _learn_types(self, client: Client, nodes: list[_Node]) -> None:
        """Read every node's DataType (a missing node fails here) and the values of writable ones."""
        requests: list[tuple[_Node, AttributeIds]] = []
        for node in nodes:
            requests.append((node, AttributeIds.DataType))
            if node.spec.access is Access.READ_WRITE:
                requests.append((node, AttributeIds.Value))
        results: list[ua.DataValue] = []
        for start in range(0, len(requests), self._chunk):
            part = requests[start : start + self._chunk]
            params = ua.ReadParameters(
                NodesToRead=[ua.ReadValueId(NodeId=node.node_id, AttributeId=attr) for node, attr in part]
            )
            results.extend(await client.uaclient.read(params))
        if len(results) != len(requests):
            raise MalformedReply(self.name, f"asked for {len(requests)} attributes, got {len(results)}")
        missing: list[str] = []
        not_variables: list[str] = []
        for (node, attr), data in zip(requests, results, strict=True):
            status = data.StatusCode.value if data.StatusCode is not None else 0
            if attr is AttributeIds.DataType:
                if status in (StatusCodes.BadNodeIdUnknown, StatusCodes.BadNodeIdInvalid):
                    missing.append(f"{node.signal} ({node.ref.text})")
                    continue
                if status == StatusCodes.BadAttributeIdInvalid:  # an object or a method: no value
                    not_variables.append(f"{node.signal} ({node.ref.text})")
                    continue
                type_id = data.Value.Value if data.Value is not None else None
                if (
                    isinstance(type_id, ua.NodeId)
                    and type_id.NamespaceIndex == 0
                    and isinstance(type_id.Identifier, int)
                ):
                    if 1 <= type_id.Identifier <= 25:
                        node.variant = ua.VariantType(type_id.Identifier)
                    else:
                        node.variant = _DATA_TYPE_ALIASES.get(type_id.Identifier)
            elif node.variant is None and data.Value is not None and data.Value.Value is not None:
                # An enumeration or a vendor subtype: the value's own encoding tells what to send.
                node.variant = data.Value.VariantType
        if missing:
            raise DeviceFault(
                self.name,
                f"{len(missing)} node(s) of profile {self.profile.model!r} not on the server: {', '.join(missing)}",
                address=missing[0],
            )
        if not_variables:
            raise DeviceFault(
                self.name,
                f"node(s) of profile {self.profile.model!r} are not variables: {', '.join(not_variables)}",
                address=not_variables[0],
            )

    # --- subscription -----------------------------------------------------------------------------

    async def _subscribe(self, client: Client, per_call: int) -> None:
        """One subscription, one monitored item per node; initial values are awaited briefly."""
        device = self.device
        publishing_ms = device.poll_period_s * 1000.0
        self._latest = [None] * len(self._nodes)
        self._item_failed = {}
        self._subscription_lost = None
        self._first_data = asyncio.Event()
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_ms,
            # A keep-alive every empty publishing interval: it confirms unchanged values.
            RequestedMaxKeepAliveCount=1,
            # The server drops the subscription of a vanished gateway after about a minute.
            RequestedLifetimeCount=max(3, math.ceil(60_000 / publishing_ms)),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        # Built here rather than by client.create_subscription(), which keeps the server's
        # revised keep-alive to itself: the staleness limit needs it. asyncua's own stale
        # watchdog then leaves this subscription alone; read() rebuilds a silent one instead.
        subscription = Subscription(
            client.uaclient.session,
            params,
            None,
            queue_maxsize=max(1000, 4 * len(self._nodes) * device.queue_size),
            overflow=OverflowPolicy.DROP_OLDEST,
        )
        revised = await subscription.init()
        self._subscription = subscription
        self._consumer = asyncio.create_task(self._consume(subscription), name=f"opcua-subscription-{self.name}")
        interval_s = (revised.RevisedPublishingInterval or publishing_ms) / 1000.0
        keepalive_s = interval_s * max(1, int(revised.RevisedMaxKeepAliveCount or 1))
        # An unchanged value is confirmed by the keep-alive; 1.5 of its interval absorbs jitter.
        self._stale_after_s = max(3 * device.poll_period_s, 1.5 * keepalive_s)
        sampling = device.sampling_interval_ms if device.sampling_interval_ms is not None else publishing_ms
        requests = [self._monitored_item(index, node, sampling) for index, node in enumerate(self._nodes)]
        self._subscribed_at = time.monotonic()
        for start in range(0, len(requests), per_call):
            results = await subscription.create_monitored_items(requests[start : start + per_call])
            for offset, result in enumerate(results):
                if isinstance(result, ua.StatusCode):
                    self._item_failed[self._nodes[start + offset].signal] = status_name(result.value)
        if self._item_failed:
            log.warning("opcua_monitored_items_refused", device=self.name, items=self._item_failed)
        # The server sends every item's value right away; wait for it so the first poll has data.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(device.timeout_s, 2 * interval_s)):
                await self._first_data.wait()

    def _monitored_item(self, index: int, node: _Node, sampling_ms: float) -> ua.MonitoredItemCreateRequest:
        parameters = ua.MonitoringParameters(
            ClientHandle=index + 1, SamplingInterval=sampling_ms, QueueSize=self.device.queue_size, DiscardOldest=True
        )
        numeric = node.variant in _NUMERIC if node.variant is not None else node.spec.type not in ("bool", "string")
        if self.device.deadband_abs > 0 and numeric:
            parameters.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Absolute,
                DeadbandValue=self.device.deadband_abs,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node.node_id, AttributeId=AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=parameters,
        )

    async def _consume(self, subscription: Subscription) -> None:
        """Keep the latest DataValue of every item; note a subscription the server ended."""
        async for event in subscription:
            if isinstance(event, DataChangeEvent):
                index = int(event.data.monitored_item.ClientHandle) - 1
                if 0 <= index < len(self._latest) and event.data.monitored_item.Value is not None:
                    self._latest[index] = (event.data.monitored_item.Value, time.monotonic())
                    self._first_data.set()
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if status is not None and not status.is_good():
                    self._subscription_lost = status_name(status.value)

    def _read_latest(self) -> Reading:
        subscription = self._subscription
        if subscription is None or self._subscription_lost is not None:
            raise DeviceUnavailable(self.name, f"subscription ended by the server ({self._subscription_lost})")
        now = time.monotonic()
        heard = max(subscription.last_publish_at or 0.0, self._subscribed_at)
        if now - heard > 2 * self._stale_after_s:
            # Values went stale a while ago and the session did not notice: start over.
            raise DeviceUnavailable(self.name, f"subscription silent for {now - heard:.1f} s")
        out = _ReadOut()
        for index, node in enumerate(self._nodes):
            failed = self._item_failed.get(node.signal)
            latest = self._latest[index]
            if failed is not None:
                out.bad[node.signal] = failed
            elif latest is None:
                out.bad[node.signal] = "no value from the subscription yet"
            elif now - max(latest[1], heard) > self._stale_after_s:
                silent = now - max(latest[1], heard)
                out.bad[node.signal] = f"stale: not confirmed by the server for {silent:.1f} s"
            else:
                out.add(node, latest[0])
        return out.reading(self.name, time.time_ns())

    # --- read and write ---------------------------------------------------------------------------

    def _session(self) -> Client:
        client = self._client
        if client is None:
            raise DeviceUnavailable(self.name, f"not connected to {self.device.endpoint}")
        if client.state is not UaClientState.CONNECTED:
            raise DeviceUnavailable(self.name, f"connection to {self.device.endpoint} lost")
        return client

    async def read(self) -> Reading:
        """Every signal once: one Read service call (split only by MaxNodesPerRead), or the
        subscription's latest values."""
        client = self._session()
        if self.device.mode is OpcUaMode.SUBSCRIBE:
            return self._read_latest()
        nodes = self._nodes
        results: list[ua.DataValue] = []
        try:
            for start in range(0, len(nodes), self._chunk):
                params = ua.ReadParameters(
                    MaxAge=0,
                    TimestampsToReturn=ua.TimestampsToReturn.Both,
                    NodesToRead=[
                        ua.ReadValueId(NodeId=node.node_id, AttributeId=AttributeIds.Value)
                        for node in nodes[start : start + self._chunk]
                    ],
                )
                results.extend(await client.uaclient.read(params))
        except (TimeoutError, OSError, UaError) as exc:
            raise self._failure(exc, "read") from exc
        received_ns = time.time_ns()
        if len(results) != len(nodes):
            raise MalformedReply(self.name, f"asked for {len(nodes)} values, got {len(results)}")
        out = _ReadOut()
        for node, data in zip(nodes, results, strict=True):
            out.add(node, data)
        return out.reading(self.name, received_ns)

    def _writable(self, signal: str) -> _Node:
        spec = self.profile.signals.get(signal)
        if spec is None:
            raise WriteRefused(self.name, f"no signal {signal!r} in profile {self.profile.model!r}")
        if spec.access is not Access.READ_WRITE:
            raise WriteRefused(self.name, f"{signal} is read-only in the profile")
        node = self._by_signal.get(signal)
        if node is None:
            raise DeviceUnavailable(self.name, f"not connected to {self.device.endpoint}")
        return node

    async def write(self, signal: str, value: float) -> float:
        """Write one signal in the node's own data type, then read it back.

        Refuses values outside the profile's min/max (:class:`WriteRefused`, nothing is sent);
        a status such as BadOutOfRange or BadUserAccessDenied from the server is a
        :class:`DeviceFault` naming the node.
        """
        spec = self.profile.signals.get(signal)
        if spec is not None and spec.access is Access.READ_WRITE:
            assert spec.min is not None
            assert spec.max is not None
            if not spec.min <= value <= spec.max:
                raise WriteRefused(
                    self.name, f"{signal} = {value:g} is outside its limits [{spec.min:g}, {spec.max:g}]"
                )
        node = self._writable(signal)
        client = self._session()
        where = f"{node.ref.text} ({signal})"
        vtype = node.variant or VARIANT_OF_TYPE[node.spec.type]
        try:
            sent = _variant_for_write(value, vtype)
        except ValueError as exc:
            raise WriteRefused(self.name, f"{signal}: {exc}", address=where) from exc
        # No timestamps: many PLCs refuse a write that carries one (BadWriteNotSupported).
        write = ua.WriteValue(
            NodeId=node.node_id,
            AttributeId=AttributeIds.Value,
            Value=ua.DataValue(Value=ua.Variant(sent, vtype), StatusCode=None),
        )
        try:
            statuses = await client.uaclient.write(ua.WriteParameters(NodesToWrite=[write]))
            if not statuses:
                raise MalformedReply(self.name, "write answered without a status", address=where)
            status = statuses[0]
            if not status.is_good():
                raise DeviceFault(self.name, f"write refused: {status_name(status.value)}", address=where)
            back_values = await client.uaclient.read(
                ua.ReadParameters(
                    NodesToRead=[ua.ReadValueId(NodeId=node.node_id, AttributeId=AttributeIds.Value)],
                    TimestampsToReturn=ua.TimestampsToReturn.Neither,
                )
            )
        except (TimeoutError, OSError, UaError) as exc:
            raise self._failure(exc, "write", where) from exc
        out = _ReadOut()
        out.add(node, back_values[0])
        if signal in out.bad:
            raise DeviceFault(self.name, f"read-back after the write: {out.bad[signal]}", address=where)
        back = out.values.get(signal, out.uncertain.get(signal))
        if back is None:
            raise MalformedReply(self.name, "read-back after the write returned no number", address=where)
        expected = _as_sent(sent, vtype)
        if not math.isclose(back, expected, rel_tol=1e-6, abs_tol=1e-9):
            raise WriteRefused(self.name, f"{signal}: wrote {expected:g}, read back {back:g}", address=where)
        return back

    # --- browse -----------------------------------------------------------------------------------

    async def browse(self, *, depth: int, include_standard: bool, max_nodes: int) -> list[BrowsedNode]:
        """Walk the address space on a session of its own (no profile needed); see :func:`browse`."""
        await self.close()
        client = await self._open()
        self._client = client
        try:
            return await _browse_tree(client, depth, include_standard, max_nodes, self.name)
        except (TimeoutError, OSError, UaError) as exc:
            raise self._failure(exc, "browse") from exc
        finally:
            await self.close()

    # --- close ------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session and the socket; safe to call twice, never raises."""
        client, self._client = self._client, None
        consumer, self._consumer = self._consumer, None
        self._subscription = None
        if consumer is not None:
            consumer.cancel()
            # Waits for the consumer to end without taking its CancelledError for ours.
            await asyncio.wait([consumer])
        if client is None:
            return
        try:
            async with asyncio.timeout(self.device.timeout_s * 2):
                await client.disconnect()
        except Exception as exc:  # closing a dead session fails in many ways; none of them matter
            log.debug("opcua_close_failed", device=self.name, error=repr(exc))
        finally:
            client.disconnect_socket()  # a timed-out disconnect still releases the socket


# --- browse -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class BrowsedNode:
    """One node of a server's address space, as ``heat-gateway browse`` prints it."""

    depth: int
    name: str
    node_id: str
    node_class: str
    data_type: str = ""
    access: str = ""
    value: str = ""
    children: list[BrowsedNode] = field(default_factory=list)


def _access_text(level: Any) -> str:
    if not isinstance(level, int):
        return "?"
    readable = bool(level & (1 << ua.AccessLevel.CurrentRead))
    writable = bool(level & (1 << ua.AccessLevel.CurrentWrite))
    if writable:
        return "read_write" if readable else "write"
    return "read" if readable else "none"


def _value_text(data: ua.DataValue) -> str:
    status = data.StatusCode.value if data.StatusCode is not None else 0
    if status & 0x80000000:
        return status_name(status)
    raw = data.Value.Value if data.Value is not None else None
    if isinstance(raw, list):
        text = f"[{len(raw)} items]"
    elif isinstance(raw, float):
        text = f"{raw:.6g}"
    elif isinstance(raw, str):
        text = repr(raw)
    else:
        text = str(raw)
    return text if status == 0 else f"{text} ({status_name(status)})"


def _data_type_text(data: ua.DataValue, namespaces: Sequence[str]) -> str:
    type_id = data.Value.Value if data.Value is not None else None
    if not isinstance(type_id, ua.NodeId):
        return "?"
    if type_id.NamespaceIndex == 0 and isinstance(type_id.Identifier, int):
        return str(ObjectIdNames.get(type_id.Identifier, type_id.to_string()))
    return node_id_text(type_id, namespaces)


async def browse(
    endpoint: str,
    *,
    depth: int = 8,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 5.0,
    include_standard: bool = False,
    max_nodes: int = 50_000,
) -> list[BrowsedNode]:
    """The tree under Objects, level by level (one Browse and one Read per level).

    Namespace 0 (the standard Server object) is left out unless ``include_standard``: a profile
    never needs it. Security policy None only. Raises :class:`DeviceUnavailable` and the other
    driver errors.
    """
    device = OpcUaDevice(
        name="browse",
        kind="browse",
        profile="-",
        protocol="opcua",
        endpoint=endpoint,
        timeout_s=min(timeout_s, 60),
        username=username,
        password=SecretStr(password) if password is not None else None,
    )
    driver = OpcUaDriver(device, OpcUaProfile(protocol="opcua", model="browse", signals={}), Path())
    return await driver.browse(depth=depth, include_standard=include_standard, max_nodes=max_nodes)


async def _browse_tree(
    client: Client, depth: int, include_standard: bool, max_nodes: int, device: str
) -> list[BrowsedNode]:
    namespaces = [str(n) for n in await client.get_namespace_array()]
    objects = _standard_node(ObjectIds.ObjectsFolder)
    roots: list[BrowsedNode] = []
    level: list[tuple[ua.NodeId, list[BrowsedNode]]] = [(objects, roots)]
    seen = {objects}
    total = 0
    for current_depth in range(depth):
        if not level:
            break
        results = await _browse_level(client, [node_id for node_id, _ in level])
        variables: list[tuple[ua.NodeId, BrowsedNode]] = []
        next_level: list[tuple[ua.NodeId, list[BrowsedNode]]] = []
        for (_, siblings), references in zip(level, results, strict=True):
            for ref in references:
                # Browse answers with ExpandedNodeIds; requests take plain ones.
                child_id = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                if child_id in seen or (child_id.NamespaceIndex == 0 and not include_standard):
                    continue
                seen.add(child_id)
                total += 1
                item = BrowsedNode(
                    depth=current_depth,
                    name=ref.BrowseName.Name or str(ref.DisplayName.Text),
                    node_id=node_id_text(child_id, namespaces),
                    node_class=ref.NodeClass.name,
                )
                siblings.append(item)
                if ref.NodeClass == ua.NodeClass.Variable:
                    variables.append((child_id, item))
                next_level.append((child_id, item.children))
        if total > max_nodes:
            raise DeviceFault(device, f"more than {max_nodes} nodes: use a smaller --depth")
        await _describe_variables(client, variables, namespaces)
        level = next_level
    return roots


async def _browse_level(client: Client, node_ids: list[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
    out: list[list[ua.ReferenceDescription]] = []
    for start in range(0, len(node_ids), 500):
        params = ua.BrowseParameters(
            View=ua.ViewDescription(),
            RequestedMaxReferencesPerNode=0,
            NodesToBrowse=[
                ua.BrowseDescription(
                    NodeId=node_id,
                    BrowseDirection=ua.BrowseDirection.Forward,
                    ReferenceTypeId=_standard_node(ObjectIds.HierarchicalReferences),
                    IncludeSubtypes=True,
                    NodeClassMask=int(ua.NodeClass.Object) | int(ua.NodeClass.Variable),
                    ResultMask=int(ua.BrowseResultMask.All),
                )
                for node_id in node_ids[start : start + 500]
            ],
        )
        for result in await client.uaclient.browse(params):
            references = list(result.References or [])
            point = result.ContinuationPoint
            while point:
                more = await client.uaclient.browse_next(
                    ua.BrowseNextParameters(ReleaseContinuationPoints=False, ContinuationPoints=[point])
                )
                references.extend(more[0].References or [])
                point = more[0].ContinuationPoint
            out.append(references)
    return out


async def _describe_variables(
    client: Client, variables: list[tuple[ua.NodeId, BrowsedNode]], namespaces: Sequence[str]
) -> None:
    attributes = (AttributeIds.DataType, AttributeIds.UserAccessLevel, AttributeIds.Value)
    for start in range(0, len(variables), 300):
        part = variables[start : start + 300]
        params = ua.ReadParameters(
            NodesToRead=[ua.ReadValueId(NodeId=node_id, AttributeId=attr) for node_id, _ in part for attr in attributes]
        )
        results = await client.uaclient.read(params)
        for index, (_, item) in enumerate(part):
            data_type, access, value = results[3 * index : 3 * index + 3]
            item.data_type = _data_type_text(data_type, namespaces)
            item.access = _access_text(access.Value.Value if access.Value is not None else None)
            item.value = _value_text(value)


def format_tree(nodes: Sequence[BrowsedNode], indent: str = "  ") -> list[str]:
    """Indented lines: objects end in ``/``, variables show value, type and access; node ids last."""
    lines: list[str] = []

    def walk(items: Sequence[BrowsedNode], level: int) -> None:
        for item in items:
            pad = indent * level
            if item.node_class == "Variable":
                head = f"{pad}{item.name} = {item.value}"
                lines.append(f"{head:<48} {item.data_type:<10} {item.access:<10} {item.node_id}")
            else:
                lines.append(f"{pad + item.name + '/':<48} {item.node_id}")
            walk(item.children, level + 1)

    walk(nodes, 0)
    return lines
