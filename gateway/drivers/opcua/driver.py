"""The OPC UA driver: one asyncua session per device, one batched Read per poll (or a subscription).

See the package docstring for what :meth:`OpcUaDriver.connect` does, in order.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies, uacrypto
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from gateway import clock
from gateway.config import ConfigError
from gateway.config.profile import Access, OpcUaProfile
from gateway.config.site import OpcUaDevice, OpcUaMode, OpcUaSecurityMode, OpcUaSecurityPolicy
from gateway.drivers.base import (
    ConnectionScope,
    DeviceFault,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
    MalformedReply,
    WriteRefused,
)
from gateway.drivers.opcua import trust
from gateway.drivers.opcua.errors import BadStatusOnly, channel_refused, failure
from gateway.drivers.opcua.nodes import NodeRef, parse_node_id
from gateway.drivers.opcua.status import standard_node, status_name
from gateway.drivers.opcua.subscription import LatestValues
from gateway.drivers.opcua.values import (
    DATA_TYPE_ALIASES,
    VARIANT_OF_TYPE,
    Node,
    ReadOut,
    as_sent,
    variant_for_write,
)
from gateway.logs import get_logger
from gateway.sample import Reading

log = get_logger(__name__)

#: (often 10-30); asyncua's default of one hour would let reconnects use them all up.
SESSION_TIMEOUT_MS = 60_000
#: The application URI the gateway announces when it has no certificate to take one from.
APPLICATION_URI = "urn:heat-gateway"
PRODUCT_URI = "urn:heat-gateway"


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
        self._nodes: list[Node] = []
        self._by_signal: dict[str, Node] = {}
        self._chunk = 0
        self._subscription: LatestValues | None = None  # mode: subscribe
        self._stale_after_s = 3 * device.poll_period_s
        self._warned_plaintext = False

    @property
    def connected(self) -> bool:
        """True while the session is up."""
        return self._client is not None and self._client.state is UaClientState.CONNECTED

    @property
    def stale_after_s(self) -> float:
        """subscribe: a value not confirmed by the server for this long is reported bad."""
        return self._stale_after_s

    # --- connect ----------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a fresh session and prepare the reads (and the subscription).

        :class:`DeviceUnavailable` when the server cannot be reached or refuses the channel,
        :class:`~gateway.drivers.opcua.errors.AuthenticationFailed` (a subclass) when a user,
        password or certificate is refused, :class:`DeviceFault` when a namespace or node of the
        profile is not on the server.
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
                raise failure(self.device, exc, "connect") from exc
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
            raise failure(self.device, exc, f"connect to {device.endpoint}") from exc
        except AssertionError as exc:
            client.disconnect_socket()
            if not channel_refused(exc):
                raise
            raise failure(self.device, exc, f"connect to {device.endpoint}") from exc
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
            certificate = await asyncio.to_thread(trust.load_certificate_der, sec.certificate)
            private_key = await asyncio.to_thread(trust.load_private_key_der, sec.private_key, password)
        except (OSError, ValueError, TypeError) as exc:
            raise DeviceUnavailable(
                self.name, f"cannot load the client certificate {sec.certificate} / key {sec.private_key}: {exc}"
            ) from exc
        client.application_uri = trust.certificate_uri(certificate) or APPLICATION_URI
        server_certificate = await trust.offered_certificate(self.device)
        await asyncio.to_thread(trust.check_trust, self.device, self.state_dir, server_certificate)
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
        return trust.trust_dir(self.device, self.state_dir)

    async def _prepare(self, client: Client) -> None:
        """Resolve the nodes, check they exist, learn their types; subscribe if configured."""
        limits = await client.uaclient.read(
            ua.ReadParameters(
                NodesToRead=[
                    ua.ReadValueId(NodeId=standard_node(nid), AttributeId=AttributeIds.Value)
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
        nodes: list[Node] = []
        for signal, ref in self._refs.items():
            try:
                node_id = ref.resolve(namespaces)
            except KeyError:
                missing_uris.setdefault(str(ref.namespace_uri), f"{signal} ({ref.text})")
                continue
            nodes.append(Node(signal, self.profile.signals[signal], ref, node_id))
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
            subscription = LatestValues(self.device, nodes)
            self._subscription = subscription
            await subscription.start(client, min(self._chunk, server_max_items or self._chunk))
            self._stale_after_s = subscription.stale_after_s
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

    async def _learn_types(self, client: Client, nodes: list[Node]) -> None:
        """Read every node's DataType (a missing node fails here) and the values of writable ones."""
        requests: list[tuple[Node, AttributeIds]] = []
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
        missing, not_variables = _take_types(requests, results)
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

    # --- a bare session ---------------------------------------------------------------------------

    async def open_session(self) -> Client:
        """A session with no nodes prepared (the commissioning tools browse on it); :meth:`close` ends it."""
        await self.close()
        self._client = await self._open()
        return self._client

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
            if self._subscription is None:
                raise DeviceUnavailable(self.name, f"no subscription on {self.device.endpoint}")
            return self._subscription.reading()
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
            raise failure(self.device, exc, "read") from exc
        received_ns = clock.wall_ns()
        if len(results) != len(nodes):
            raise MalformedReply(self.name, f"asked for {len(nodes)} values, got {len(results)}")
        out = ReadOut()
        for node, data in zip(nodes, results, strict=True):
            out.add(node, data)
        if out.only_bad_statuses():
            raise BadStatusOnly(self.name, self.device.endpoint, out.bad_status)
        return out.reading(self.name, received_ns)

    def _writable(self, signal: str) -> Node:
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
            sent = variant_for_write(value, vtype)
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
            raise failure(self.device, exc, "write", where) from exc
        out = ReadOut()
        out.add(node, back_values[0])
        if signal in out.bad:
            raise DeviceFault(self.name, f"read-back after the write: {out.bad[signal]}", address=where)
        back = out.values.get(signal, out.uncertain.get(signal))
        if back is None:
            raise MalformedReply(self.name, "read-back after the write returned no number", address=where)
        expected = as_sent(sent, vtype)
        if not math.isclose(back, expected, rel_tol=1e-6, abs_tol=1e-9):
            raise WriteRefused(self.name, f"{signal}: wrote {expected:g}, read back {back:g}", address=where)
        return back

    # --- close ------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session and the socket; safe to call twice, never raises."""
        client, self._client = self._client, None
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.stop()
        if client is None:
            return
        try:
            async with asyncio.timeout(self.device.timeout_s * 2):
                await client.disconnect()
        except Exception as exc:  # closing a dead session fails in many ways; none of them matter
            log.debug("opcua_close_failed", device=self.name, error=repr(exc))
        finally:
            client.disconnect_socket()  # a timed-out disconnect still releases the socket


def _take_types(
    requests: list[tuple[Node, AttributeIds]], results: list[ua.DataValue]
) -> tuple[list[str], list[str]]:
    """Set each node's variant type from its DataType (or, for a writable node of a vendor type, from
    its value's encoding); the nodes that are not on the server, and those that are not variables."""
    missing: list[str] = []
    not_variables: list[str] = []
    for (node, attr), data in zip(requests, results, strict=True):
        status = data.StatusCode.value if data.StatusCode is not None else 0
        if attr is AttributeIds.DataType:
            if status in (StatusCodes.BadNodeIdUnknown, StatusCodes.BadNodeIdInvalid):
                missing.append(f"{node.signal} ({node.ref.text})")
            elif status == StatusCodes.BadAttributeIdInvalid:  # an object or a method: no value
                not_variables.append(f"{node.signal} ({node.ref.text})")
            else:
                _take_data_type(node, data.Value.Value if data.Value is not None else None)
        elif node.variant is None and data.Value is not None and data.Value.Value is not None:
            # An enumeration or a vendor subtype: the value's own encoding tells what to send.
            node.variant = data.Value.VariantType
    return missing, not_variables


def _take_data_type(node: Node, type_id: object) -> None:
    """A built-in DataType (ns=0;i=1..25) is the variant; a standard alias maps to one; else unknown."""
    if isinstance(type_id, ua.NodeId) and type_id.NamespaceIndex == 0 and isinstance(type_id.Identifier, int):
        if 1 <= type_id.Identifier <= 25:
            node.variant = ua.VariantType(type_id.Identifier)
        else:
            node.variant = DATA_TYPE_ALIASES.get(type_id.Identifier)
