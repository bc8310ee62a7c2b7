"""From the process image outwards: line-protocol encoding and the MQTT publisher."""
