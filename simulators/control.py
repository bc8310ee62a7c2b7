"""Fault injection on command for a running ``heat-gateway simulate``.

``heat-gateway simulate -c site.yaml --control-port 15099`` listens on loopback for JSON
lines, one command each, and answers each with a JSON line::

    {"device": "cdu-3", "fault": "silent"}                 Modbus: silent, slow, exception,
    {"device": "cdu-3", "fault": "slow", "delay_s": 2}     drop, half_open, none (clears)
    {"device": "cdu-3", "fault": "exception", "code": 4}
    {"device": "cdu-3", "freeze": "tcs_supply_temp_c"}     hold a value (unfreeze: ...)
    {"device": "hp-plc", "bad": "dh_supply_temp_c", "status": "BadSensorFailure"}   OPC UA
    {"device": "hp-plc", "clear": "dh_supply_temp_c"}
    {"device": "hp-plc", "slow_s": 3}                      OPC UA: answer late
    {"device": "hp-plc", "stop": true} / {"device": "hp-plc", "start": true}   restart a server

e.g. ``heat-gateway fault '{"device": "cdu-3", "fault": "silent"}'`` (:func:`send`; any tool
that writes a line to a TCP socket does too).
Answers: ``{"ok": true}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from simulators.modbus_server import Fault
from simulators.site import SimulatedSite


async def apply(site: SimulatedSite, command: Any) -> None:
    """Carry out one command; ValueError/KeyError with a message when it cannot be."""
    if not isinstance(command, dict) or not isinstance(command.get("device"), str):
        raise TypeError('a command is a JSON object with "device" and one action')
    device = command["device"]
    if device in site.units:
        unit = site.units[device]
        if "fault" in command:
            delay_s, code = float(command.get("delay_s", 0)), int(command.get("code", 4))
            site.inject(device, Fault(command["fault"]), delay_s=delay_s, code=code)
        elif "freeze" in command:
            unit.frozen.add(str(command["freeze"]))
        elif "unfreeze" in command:
            unit.frozen.discard(str(command["unfreeze"]))
        else:
            raise ValueError("Modbus devices take fault, freeze or unfreeze")
        return
    server = site.opcua_servers.get(device)
    if server is None:
        known = ", ".join(sorted([*site.units, *site.opcua_servers]))
        raise KeyError(f"no simulated device {device!r} (simulated: {known})")
    if "bad" in command:
        await server.set_bad(str(command["bad"]), command.get("status", "BadSensorFailure"))
    elif "clear" in command:
        await server.clear(str(command["clear"]))
    elif "freeze" in command:
        server.freeze(str(command["freeze"]))
    elif "unfreeze" in command:
        server.unfreeze(str(command["unfreeze"]))
    elif "slow_s" in command:
        server.slow_s = float(command["slow_s"])
    elif command.get("stop"):
        await server.stop()
    elif command.get("start"):
        await server.start()
    else:
        raise ValueError("OPC UA devices take bad, clear, freeze, unfreeze, slow_s, stop or start")


async def serve_control(site: SimulatedSite, port: int, host: str = "127.0.0.1") -> asyncio.Server:
    """Start the command listener."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    await apply(site, json.loads(line))
                    answer: dict[str, Any] = {"ok": True}
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": str(exc).strip("'\"")}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def send(command: str, port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one command line (JSON text) to a running simulator and return its answer.

    ``OSError`` when nothing listens there, ``TimeoutError`` when it does not answer.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(command.strip().encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    if not line:
        raise OSError(f"{host}:{port} closed the connection without an answer")
    answer: dict[str, Any] = json.loads(line)
    return answer
