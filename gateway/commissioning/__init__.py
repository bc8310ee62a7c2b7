"""Commissioning tools: find what is on the network and how to read it, before a site file exists.

- :mod:`.modbus_scan`: which Modbus unit ids answer at an endpoint (``heat-gateway scan``)
- :mod:`.opcua_browse`: an OPC UA server's address space as a tree (``heat-gateway browse``)

They use the drivers' connections but are not part of the data path: the gateway never scans
or browses while it runs.
"""
