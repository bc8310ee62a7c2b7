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

The package, one job per module:

- :mod:`.driver`: :class:`OpcUaDriver`: session, connect, read, write with read-back, close
- :mod:`.subscription`: ``mode: subscribe``, the latest values and their staleness
- :mod:`.nodes`: node ids as profiles write them, resolved per server
- :mod:`.values`: DataValue -> good / uncertain / bad; numbers encoded for writes
- :mod:`.trust`: certificates, the trust list, trust on first use
- :mod:`.errors`: asyncua exceptions -> the driver error tree, with what to do
- :mod:`.status`: status code names and classes

Browsing a server's address space is a commissioning tool: :mod:`gateway.commissioning.opcua_browse`.
"""

from gateway.drivers.opcua.driver import APPLICATION_URI, SESSION_TIMEOUT_MS, OpcUaDriver
from gateway.drivers.opcua.nodes import NodeRef, node_id_text, parse_node_id
from gateway.drivers.opcua.status import status_name
from gateway.drivers.opcua.trust import certificate_uri, fingerprint
from gateway.drivers.opcua.values import VARIANT_OF_TYPE

__all__ = [
    "APPLICATION_URI",
    "SESSION_TIMEOUT_MS",
    "VARIANT_OF_TYPE",
    "NodeRef",
    "OpcUaDriver",
    "certificate_uri",
    "fingerprint",
    "node_id_text",
    "parse_node_id",
    "status_name",
]
