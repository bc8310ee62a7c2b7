"""Node-RED doing the speed cases' job: the gateway most sites would otherwise use.

``python bench/nodered_loop.py SITE.yaml SECONDS OUT.json [--warmup S]`` reads the same site
file as the gateway and runs Node-RED 4 (bench/nodered/node_modules, installed by
scripts/ensure-node-red.sh) with a flow of, per device: a ``modbus-read`` node
(node-red-contrib-modbus 5.23, one read of all registers every period, its own TCP connection),
a ``function`` node that writes the raw values as a line-protocol line stamped with the time
the reply reached it, and an ``mqtt out`` node (QoS 1) to ``heat/{site}/{device}/metrics``, one
broker connection for all. It prints ``measuring`` after Node-RED has started its flows and the
warm-up has passed, ``done`` at the end, like gateway_probe.py; bench/run.py reads the CPU of
this process and its children (Node-RED) from /proc.

The stamp is the reply's arrival, not the request's departure as in the gateway and the bare
loop, so Node-RED's sample -> broker figure leaves out the Modbus round trip: it flatters
Node-RED a little. Exit status 3 when Node-RED is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RED_JS = ROOT / "bench" / "nodered" / "node_modules" / "node-red" / "red.js"
sys.path.insert(0, str(ROOT))

from gateway.config import load_site  # noqa: E402 - after the path is set

SETTINGS = """module.exports = {
    uiPort: 0,
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    credentialSecret: false,
    flowFile: "flows.json",
    logging: { console: { level: "info", metrics: false, audit: false } },
    editorTheme: { tours: false },
    externalModules: { autoInstall: false },
    diagnostics: { enabled: false },
    telemetry: { enabled: false },
};
"""

# The function node: raw register values -> one line-protocol line, stamped in ns (BigInt: a JS
# number cannot hold ns since the epoch exactly).
FUNCTION = """const stamp = BigInt(Date.now()) * 1000000n;
const regs = msg.payload;
const parts = new Array(regs.length);
for (let i = 0; i < regs.length; i++) { parts[i] = NAMES[i] + regs[i]; }
return { topic: TOPIC, payload: PREFIX + parts.join(",") + " " + stamp.toString() };
"""


def flow(site_path: Path) -> list[dict[str, object]]:
    """The flow for every Modbus device of the site."""
    site = load_site(site_path)
    mqtt = site.config.mqtt
    nodes: list[dict[str, object]] = [
        {"id": "tab", "type": "tab", "label": "bench"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "broker": mqtt.host,
            "port": str(mqtt.port),
            "clientid": "bench-nodered",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
    ]
    for index, device in enumerate(site.config.devices):
        count = len(site.profiles[device.profile].signals)
        names = json.dumps([f"r{i:03d}=" for i in range(count)])
        code = (
            f"const NAMES = {names};\nconst TOPIC = {json.dumps(f'heat/{site.config.site}/{device.name}/metrics')};\n"
            f"const PREFIX = {json.dumps(f'bench,device={device.name},site={site.config.site} ')};\n{FUNCTION}"
        )
        nodes += [
            {
                "id": f"client{index}",
                "type": "modbus-client",
                "clienttype": "tcp",
                "bufferCommands": True,
                "stateLogEnabled": False,
                "queueLogEnabled": False,
                "failureLogEnabled": False,
                "tcpHost": device.host,
                "tcpPort": str(device.port),
                "tcpType": "DEFAULT",
                "unit_id": str(device.unit_id),
                "commandDelay": "1",
                "clientTimeout": str(int(device.timeout_s * 1000)),
                "reconnectOnTimeout": True,
                "reconnectTimeout": "2000",
                "parallelUnitIdsAllowed": True,
            },
            {
                "id": f"read{index}",
                "type": "modbus-read",
                "z": "tab",
                "showStatusActivities": False,
                "logIOActivities": False,
                "showErrors": False,
                "unitid": str(device.unit_id),
                "dataType": "HoldingRegister",
                "adr": "0",
                "quantity": str(count),
                "rate": str(round(device.poll_period_s * 1000)),
                "rateUnit": "ms",
                "delayOnStart": False,
                "server": f"client{index}",
                "useIOFile": False,
                "useIOForPayload": False,
                "emptyMsgOnFail": False,
                "wires": [[f"line{index}"], []],
            },
            {"id": f"line{index}", "type": "function", "z": "tab", "func": code, "outputs": 1, "wires": [["out"]]},
        ]
    nodes.append({"id": "out", "type": "mqtt out", "z": "tab", "qos": "1", "retain": "false", "broker": "broker"})
    return nodes


def main() -> int:
    site_path, seconds, out = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
    warmup_s = float(sys.argv[sys.argv.index("--warmup") + 1]) if "--warmup" in sys.argv else 3.0
    node = shutil.which("node")
    if node is None or not RED_JS.exists():
        print("Node-RED is not installed: run scripts/ensure-node-red.sh", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="bench-nodered-") as tmp:
        user_dir = Path(tmp)
        (user_dir / "settings.js").write_text(SETTINGS, encoding="utf-8")
        (user_dir / "flows.json").write_text(json.dumps(flow(site_path)), encoding="utf-8")
        log_path = user_dir / "node-red.log"
        with log_path.open("w") as log:
            red = subprocess.Popen(
                [node, str(RED_JS), "--userDir", str(user_dir), "--settings", str(user_dir / "settings.js")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while "Started flows" not in log_path.read_text(errors="replace"):
                if red.poll() is not None or time.monotonic() > deadline:
                    print(f"Node-RED did not start: {log_path.read_text(errors='replace')[-2000:]}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            time.sleep(warmup_s)
            print("measuring", flush=True)
            time.sleep(seconds)
            print("done", flush=True)
            time.sleep(1.0)  # bench/run.py reads Node-RED's CPU time now: it must still be there
        finally:
            red.terminate()
            try:
                red.wait(timeout=10)
            except subprocess.TimeoutExpired:
                red.kill()
                red.wait()
    out.write_text(json.dumps({"polls": 0, "values": 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
