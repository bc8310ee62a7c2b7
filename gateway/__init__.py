"""heat-gateway: telemetry and supervisory control between a data center's cooling plant and a
district heating network.

Data flow, one package per step::

    config -> drivers -> poller -> process image -> control -> writes
                                  process image -> publish (MQTT) -> historian (InfluxDB)
"""

__version__ = "0.1.0"
