"""Plant model and simulated devices (Modbus and OPC UA servers) for tests and the demo."""
