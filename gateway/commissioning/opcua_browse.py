"""``heat-gateway browse``: an OPC UA server's address space as a tree, to help write a profile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.uaerrors import UaError
from pydantic import SecretStr

from gateway.config.profile import OpcUaProfile
from gateway.config.site import OpcUaDevice
from gateway.drivers.base import DeviceFault
from gateway.drivers.opcua import OpcUaDriver, node_id_text, status_name
from gateway.drivers.opcua.errors import failure
from gateway.drivers.opcua.status import standard_node


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
    # The driver opens the session (security None, user or anonymous) and names its failures.
    client = await driver.open_session()
    try:
        return await _browse_tree(client, depth, include_standard, max_nodes, device.name)
    except (TimeoutError, OSError, UaError) as exc:
        raise failure(device, exc, "browse") from exc
    finally:
        await driver.close()


async def _browse_tree(
    client: Client, depth: int, include_standard: bool, max_nodes: int, device: str
) -> list[BrowsedNode]:
    namespaces = [str(n) for n in await client.get_namespace_array()]
    objects = standard_node(ObjectIds.ObjectsFolder)
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
                    ReferenceTypeId=standard_node(ObjectIds.HierarchicalReferences),
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
