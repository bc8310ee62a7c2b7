"""An OPC UA server (asyncua) for simulated devices, with fault injection.

Serves the nodes of an :class:`OpcUaProfile` from a value source (the plant model), the way
:class:`simulators.modbus_server.UnitImage` serves a register map: ``update(values)`` pushes
engineering values into the variables, a client's write to a writable variable goes to
``on_write(signal, value)`` first, and tests can make single nodes bad, freeze them, slow the
server down or restart it on the same port.

Writes are checked on the server side as a PLC does (type, range, access) by an
:class:`asyncua.server.address_space.AttributeService` that wraps asyncua's, so the gateway
meets real status codes: BadTypeMismatch, BadOutOfRange, BadNotWritable, BadUserAccessDenied.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeService
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import DNSName, UniformResourceIdentifier
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.config.profile import Access, OpcUaProfile
from gateway.drivers.opcua import VARIANT_OF_TYPE

# asyncua's server logs every client that connects, disconnects or fails at info/warning level:
# gateway.logs (imported with the driver) sets its level, as for the gateway's own client.

_INTEGER = {
    ua.VariantType.Int16,
    ua.VariantType.UInt16,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
    ua.VariantType.Int64,
    ua.VariantType.UInt64,
}
#: variables per folder before the rest spill into sibling folders (asyncua builds a parent's
#: children in quadratic time: 10,000 under one parent take 43 s, spread over 100, 2.4 s)
MAX_CHILDREN = 200
#: writes between two yields to the event loop, so a big update never starves the sockets
YIELD_EVERY = 200


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def make_certificate(
    application_uri: str, *, host: str = "localhost", server: bool = True, days: int = 365
) -> tuple[bytes, bytes]:
    """A self-signed application instance certificate: (certificate DER, private key PEM)."""
    key = cert_gen.generate_private_key()
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    names = [UniformResourceIdentifier(application_uri), DNSName(host)]
    cert = cert_gen.generate_self_signed_app_certificate(
        key, application_uri.rsplit(":", 1)[-1], {}, names, usage, days=days
    )
    return cert.public_bytes(serialization.Encoding.DER), cert_gen.dump_private_key_as_pem(key)


def write_certificate(folder: Path, stem: str, application_uri: str, *, server: bool = False) -> tuple[Path, Path]:
    """Write ``stem.der`` and ``stem.pem`` (the key) into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(application_uri, server=server)
    cert_path, key_path = folder / f"{stem}.der", folder / f"{stem}.pem"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


@dataclass(frozen=True, slots=True)
class _Variable:
    signal: str
    node_id: ua.NodeId
    variant: ua.VariantType
    writable: bool


class _UserManager:
    """Accepts only the configured users; anonymous sessions are refused earlier, by token type."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        del iserver, certificate
        expected = self.users.get(username or "")
        if expected is None or not hmac.compare_digest(expected.encode(), (password or "").encode()):
            return None
        return User(role=UserRole.User, name=username)


class _CheckedAttributeService(AttributeService):
    """asyncua's attribute service, with a PLC's checks on writes to the simulated variables."""

    def __init__(self, base: AttributeService, owner: OpcUaDeviceServer) -> None:
        super().__init__(base._aspace)  # noqa: SLF001 - the same address space, wrapped
        self._owner = owner

    async def write(self, params: ua.WriteParameters, user: User = User(role=UserRole.Admin)) -> list[ua.StatusCode]:  # noqa: B008 - asyncua's own signature
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            variable = self._owner.variable_of(item.NodeId) if item.AttributeId == ua.AttributeIds.Value else None
            if variable is None:
                results.extend(await super().write(ua.WriteParameters(NodesToWrite=[item]), user))
                continue
            status = self._owner.check_write(variable, item.Value, user)
            if status is None:
                # Checked here; store as the server itself so asyncua's own access check passes.
                status = (await super().write(ua.WriteParameters(NodesToWrite=[item]), User(role=UserRole.Admin)))[0]
                if status.is_good():
                    self._owner.values[variable.signal] = float(item.Value.Value.Value)
                    self._owner.written(variable.signal)
            results.append(status)
        return results


class OpcUaDeviceServer:
    """One simulated OPC UA device: a profile's nodes on ``opc.tcp://endpoint_host:port/``.

    API (all coroutines unless noted)::

        server = OpcUaDeviceServer(profile, "127.0.0.1", 0, on_write=plant_write)
        await server.start()               # port 0 picks a free port: server.port, server.endpoint
        await server.update({"supply_temp_c": 45.2, ...})   # engineering values, batched
        server.set_bad("supply_temp_c", "BadSensorFailure") # this node reads bad until clear()
        server.clear("supply_temp_c")                       # good again from the next update
        server.freeze("flow_m3h")          # keeps value and source timestamp; unfreeze() ends it
        server.slow_s = 2.0                # every Read/Write is answered 2 s late
        await server.stop(); await server.start()           # a restart on the same port
        server.read_requests, server.nodes_read             # Read service calls seen, nodes in them

    ``on_write(signal, value)`` is called for a client's write that passed the checks (writable in
    the profile, right variant type, inside ``limits`` or the profile's min/max); raising
    ``ValueError`` or ``KeyError`` there answers BadOutOfRange and nothing is stored.

    Options: ``users`` (user name -> password) refuses anonymous sessions and every other user;
    ``read_only_users`` may read but their writes get BadUserAccessDenied; ``encrypted`` offers
    only Basic256Sha256 in ``security_modes`` (SignAndEncrypt; Sign may be added) with
    ``certificate``/``private_key`` (DER / PEM bytes, generated when omitted;
    :attr:`certificate` gives the DER); ``extra_namespaces`` are
    registered before the profile's so its namespace index differs from the usual 2;
    ``max_nodes_per_read`` is published in OperationLimits and enforced (BadTooManyOperations);
    ``trusted_clients`` (DER certificates) refuses every other client certificate at
    CreateSession with BadCertificateUntrusted, as a PLC with a trust list does.
    Nodes are organised in folders by the dotted prefix of their string ids
    (``nsu=...;s=Hall.Temp`` -> folder ``Hall``, variable ``Temp``), under a folder named after
    the profile's model.
    """

    def __init__(
        self,
        profile: OpcUaProfile,
        endpoint_host: str = "127.0.0.1",
        port: int = 0,
        on_write: Callable[[str, float], None] | None = None,
        *,
        initial: Mapping[str, float | str] | None = None,
        users: Mapping[str, str] | None = None,
        read_only_users: Collection[str] = (),
        encrypted: bool = False,
        security_modes: Sequence[str] = ("SignAndEncrypt",),
        certificate: bytes | None = None,
        private_key: bytes | None = None,
        application_uri: str = "urn:heat-gateway:simulator",
        extra_namespaces: Sequence[str] = (),
        limits: Mapping[str, tuple[float, float]] | None = None,
        max_nodes_per_read: int | None = None,
        trusted_clients: Collection[bytes] | None = None,
    ) -> None:
        self.profile = profile
        self.host = endpoint_host
        self.port = port
        self.on_write = on_write or (lambda _signal, _value: None)
        self.users = dict(users) if users is not None else None
        self.read_only_users = set(read_only_users)
        self.encrypted = encrypted
        self.security_modes = list(security_modes)
        self.application_uri = application_uri
        if encrypted and (certificate is None or private_key is None):
            certificate, private_key = make_certificate(application_uri)
        self.certificate = certificate
        self.private_key = private_key
        self.extra_namespaces = list(extra_namespaces)
        self.limits = dict(limits or {})
        self.max_nodes_per_read = max_nodes_per_read
        self.trusted_clients = None if trusted_clients is None else set(trusted_clients)
        self.values: dict[str, float | str] = {
            name: "" if spec.type == "string" else 0.0 for name, spec in profile.signals.items()
        }
        self.values.update(initial or {})
        self.bad: dict[str, int] = {}
        self.frozen: set[str] = set()
        self.slow_s = 0.0
        # Awaited before a client's Read is answered: a value source that refreshes on demand.
        self.before_read: Callable[[], Awaitable[None]] | None = None
        self._pushed: dict[str, tuple[float | str, int]] = {}  # what each node holds now
        self.read_requests = 0
        self.nodes_read = 0
        self.writes: list[tuple[str, float]] = []
        self._server: Server | None = None
        self._variables: dict[str, _Variable] = {}
        self._by_node: dict[ua.NodeId, _Variable] = {}

    @property
    def endpoint(self) -> str:
        """The URL a client connects to."""
        return f"opc.tcp://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the address space and listen; a restart keeps port, values and faults."""
        if self._server is not None:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        server = Server(user_manager=_UserManager(self.users) if self.users is not None else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"heat-gateway simulator: {self.profile.model}")
        await server.set_application_uri(self.application_uri)
        if self.encrypted:
            assert self.certificate is not None
            assert self.private_key is not None
            await server.load_certificate(self.certificate, format="der")
            await server.load_private_key(self.private_key, format="pem")
            server.set_security_policy(
                [getattr(ua.SecurityPolicyType, f"Basic256Sha256_{mode}") for mode in self.security_modes]
            )
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if self.trusted_clients is not None:
            server.set_certificate_validator(self._check_client_certificate)
        for uri in self.extra_namespaces:
            await server.register_namespace(uri)
        await self._build(server)
        if self.max_nodes_per_read is not None:
            limit = server.get_node(ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead))
            await limit.write_value(ua.Variant(self.max_nodes_per_read, ua.VariantType.UInt32))
        server.iserver.attribute_service = _CheckedAttributeService(server.iserver.attribute_service, self)
        server.subscribe_server_callback(CallbackType.PreRead, self._before_read)
        server.subscribe_server_callback(CallbackType.PreWrite, self._before_write)
        await server.start()
        self._server = server
        await self._push(self.values, force=True)

    def written(self, signal: str) -> None:
        """A client wrote the node: the next update writes it again whatever it brings."""
        self._pushed.pop(signal, None)

    async def stop_clock(self) -> None:
        """Stop asyncua's 1 s tick of the server's CurrentTime node (a simulation that runs the
        server on virtual time would pay for that tick every plant second; no client here reads it)."""
        server = self._server
        clock = server.iserver.time_task if server is not None else None
        if server is not None and clock is not None:
            clock.cancel()
            await asyncio.wait([clock])
            server.iserver.time_task = None

    async def stop(self) -> None:
        """Close every session and stop listening (clients see the connection drop)."""
        server, self._server = self._server, None
        if server is None:
            return
        # asyncua's clock task sleeps 1 s between ticks and stop() waits for it: end it now.
        clock = server.iserver.time_task
        if clock is not None:
            clock.cancel()
            await asyncio.wait([clock])
            server.iserver.time_task = None
        await server.stop()

    # --- address space ------------------------------------------------------------------------------

    async def _build(self, server: Server) -> None:
        namespace_uri = self.profile.namespace_uri or f"urn:heat-gateway:simulator:{self.profile.model}"
        home = await server.register_namespace(namespace_uri)
        root = await server.nodes.objects.add_folder(ua.NodeId(f"{self.profile.model}", home), self.profile.model)
        folders: dict[tuple[int, str], Any] = {(home, ""): root}
        children: dict[tuple[int, str], int] = {}
        taken = {ua.NodeId(f"{self.profile.model}", home)}
        self._variables.clear()
        self._by_node.clear()
        namespaces = await server.get_namespace_array()
        for count, (signal, spec) in enumerate(self.profile.signals.items(), start=1):
            node_id = ua.NodeId.from_string(spec.node)
            uri = getattr(node_id, "NamespaceUri", None)
            if uri:
                if uri not in namespaces:
                    await server.register_namespace(uri)
                    namespaces = await server.get_namespace_array()
                index = namespaces.index(uri)
            else:
                index = node_id.NamespaceIndex
                while len(namespaces) <= index:  # ns=<k> of a profile: make sure index k exists
                    await server.register_namespace(f"urn:heat-gateway:simulator:ns{len(namespaces)}")
                    namespaces = await server.get_namespace_array()
            plain = ua.NodeId(node_id.Identifier, index, node_id.NodeIdType)
            prefix, name = "", signal
            if isinstance(node_id.Identifier, str):
                prefix, _, name = node_id.Identifier.rpartition(".")
            parent = await self._folder(server, folders, children, taken, index, prefix, root)
            variant = VARIANT_OF_TYPE[str(spec.type)]
            initial: Any = "" if variant is ua.VariantType.String else self._typed(self.values[signal], variant)
            node = await parent.add_variable(plain, name or signal, initial, variant)
            taken.add(plain)
            writable = spec.access is Access.READ_WRITE
            if writable:
                await node.set_writable()
            variable = _Variable(signal, plain, variant, writable)
            self._variables[signal] = variable
            self._by_node[plain] = variable
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def _folder(
        self,
        server: Server,
        folders: dict[tuple[int, str], Any],
        children: dict[tuple[int, str], int],
        taken: set[ua.NodeId],
        index: int,
        prefix: str,
        root: Any,
    ) -> Any:
        """The folder for a dotted prefix (created on first use), spilling over when full."""
        key = (index, prefix)
        if key not in folders:
            parent = root
            if prefix:
                head, _, tail = prefix.rpartition(".")
                parent = await self._folder(server, folders, children, taken, index, head, root)
                folder_id = ua.NodeId(prefix, index)
                if folder_id in taken:  # a variable already has this id
                    folder_id = ua.NodeId(f"{prefix}/", index)
                folders[key] = await parent.add_folder(folder_id, tail)
                taken.add(folder_id)
            else:
                folders[key] = root
        used = children.get(key, 0)
        children[key] = used + 1
        if used < MAX_CHILDREN:
            return folders[key]
        spill_key = (index, f"{prefix}#{used // MAX_CHILDREN}")
        if spill_key not in folders:
            spill_id = ua.NodeId(f"{prefix}#group{used // MAX_CHILDREN}", index)
            folders[spill_key] = await folders[key].add_folder(spill_id, f"group {used // MAX_CHILDREN}")
            taken.add(spill_id)
        return folders[spill_key]

    def variable_of(self, node_id: ua.NodeId) -> _Variable | None:
        """The simulated variable with this node id (plain, resolved), if any."""
        return self._by_node.get(ua.NodeId(node_id.Identifier, node_id.NamespaceIndex, node_id.NodeIdType))

    @staticmethod
    def _typed(value: float | str, variant: ua.VariantType) -> Any:
        if variant is ua.VariantType.Boolean:
            return bool(value)
        if variant in _INTEGER:
            return round(value)
        if variant is ua.VariantType.String:
            if not isinstance(value, str):
                raise TypeError("a string node takes text")  # a number for a text node: keep the text
            return value
        return float(value)

    # --- values and faults ------------------------------------------------------------------------

    async def update(self, values: Mapping[str, float | str], *, source_time: datetime | None = None) -> None:
        """Push engineering values, text for string nodes (frozen signals keep what they have)."""
        self.values.update({k: v for k, v in values.items() if k in self.profile.signals})
        await self._push(values, source_time=source_time)

    async def _push(
        self, values: Mapping[str, float], *, force: bool = False, source_time: datetime | None = None
    ) -> None:
        server = self._server
        if server is None:
            return
        now = datetime.now(UTC)
        pushed = self._pushed
        for count, (signal, value) in enumerate(values.items(), start=1):
            variable = self._variables.get(signal)
            if variable is None or (signal in self.frozen and not force):
                continue
            status = self.bad.get(signal, 0)
            if not force and pushed.get(signal) == (value, status):
                continue  # unchanged: the node keeps its value and source timestamp, as a PLC's does
            pushed[signal] = (value, status)
            if status & 0x80000000:  # Bad: the value is gone, as the spec says a bad value is null
                variant = ua.Variant(None, ua.VariantType.Null)
            else:
                try:
                    variant = ua.Variant(self._typed(value, variable.variant), variable.variant)
                except (ValueError, OverflowError, TypeError):
                    continue  # NaN or infinity into an integer node, a number into a text: keep what is there
            data = ua.DataValue(
                variant, StatusCode=ua.StatusCode(status), SourceTimestamp=source_time or now, ServerTimestamp=now
            )
            await server.write_attribute_value(variable.node_id, data)
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the server answer its clients between batches

    async def _check_client_certificate(self, certificate: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        if self.trusted_clients is not None and certificate.public_bytes(Encoding.DER) not in self.trusted_clients:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    async def set_bad(self, signal: str, status: str | int = "BadSensorFailure") -> None:
        """From now on the node has this status (``BadOutOfService``, or an Uncertain one, which
        keeps the value); clear() ends it."""
        if signal not in self.profile.signals:
            raise KeyError(signal)
        self.bad[signal] = getattr(ua.StatusCodes, status) if isinstance(status, str) else int(status)
        await self._push({signal: self.values[signal]}, force=True)

    async def clear(self, signal: str) -> None:
        """End set_bad() and freeze() for a signal; its last value is written again."""
        self.bad.pop(signal, None)
        self.frozen.discard(signal)
        await self._push({signal: self.values[signal]}, force=True)

    def freeze(self, signal: str) -> None:
        """The node keeps its value and source timestamp whatever update() brings."""
        self.frozen.add(signal)

    def unfreeze(self, signal: str) -> None:
        """Let update() change the node again."""
        self.frozen.discard(signal)

    # --- request hooks --------------------------------------------------------------------------------

    async def _before_read(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        if not event.is_external:
            return
        count = len(event.request_params.NodesToRead)
        self.read_requests += 1
        self.nodes_read += count
        if self.max_nodes_per_read is not None and count > self.max_nodes_per_read:
            raise ServiceError(ua.StatusCodes.BadTooManyOperations)
        if self.slow_s > 0:
            await asyncio.sleep(self.slow_s)
        # Only a read of the device's own nodes (not a client's watchdog read of the server state).
        requested = event.request_params.NodesToRead
        if self.before_read is not None and any(self.variable_of(item.NodeId) is not None for item in requested):
            await self.before_read()

    async def _before_write(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        if event.is_external and self.slow_s > 0:
            await asyncio.sleep(self.slow_s)

    def check_write(self, variable: _Variable, data: ua.DataValue, user: User) -> ua.StatusCode | None:
        """A PLC's checks on a client's write; ``None`` when it may be stored."""
        if not variable.writable:
            return ua.StatusCode(ua.StatusCodes.BadNotWritable)
        if user.name is not None and user.name in self.read_only_users:
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        variant = data.Value
        if variant is None or variant.VariantType != variable.variant:
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        try:
            value = float(variant.Value)
        except (TypeError, ValueError):
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        spec = self.profile.signals[variable.signal]
        low, high = self.limits.get(variable.signal, (spec.min, spec.max))
        if (low is not None and value < low) or (high is not None and value > high):
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        try:
            self.on_write(variable.signal, value)
        except (KeyError, ValueError):
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        self.writes.append((variable.signal, value))
        return None
