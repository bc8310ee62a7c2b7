"""Node ids as profiles write them: ``ns=2;s=X``, ``nsu=<uri>;s=X``, resolved per server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.ua.uaerrors import UaError


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
