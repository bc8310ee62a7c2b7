"""`make demo`: the plant simulators, a broker, the gateway and (when available) the historian,
with live readings in the terminal until Ctrl-C.

Uses a private Mosquitto when Debian's `mosquitto` is installed, otherwise the embedded
broker (`simulators.broker`); a private victoria-metrics (InfluxDB v2 write API) when
installed, otherwise runs without the historian. HEAT_GATEWAY_DEMO_BROKER=embedded forces the
embedded broker. Everything listens on loopback and writes
its logs and data under var/demo/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "config" / "site.example.yaml"
STATE = ROOT / "var" / "demo"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


class Demo:
    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        STATE.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (STATE / f"{name}.log").open("wb")
        # Own session: Ctrl-C reaches only this script, which then stops the parts in order.
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True
        )
        self.processes.append((name, process))
        return process

    def start_broker(self) -> str:
        port = free_port()
        sbin = Path("/usr/sbin/mosquitto")
        mosquitto = shutil.which("mosquitto") or (str(sbin) if sbin.exists() else None)
        if os.environ.get("HEAT_GATEWAY_DEMO_BROKER") == "embedded":
            mosquitto = None
        if mosquitto:
            conf = STATE / "mosquitto.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 100000\nmax_inflight_messages 100\nset_tcp_nodelay true\n",
                encoding="utf-8",
            )
            self.spawn("mosquitto", [mosquitto, "-c", str(conf)])
            kind = "private Mosquitto"
        else:
            self.spawn("broker", [sys.executable, "-m", "simulators.broker", "--port", str(port)])
            kind = "embedded broker (install mosquitto for the real one)"
        if not wait_port(port):
            raise SystemExit(f"the broker did not start; see {STATE}")
        self.env["MQTT_PORT"] = str(port)
        return f"{kind} on 127.0.0.1:{port}"

    def start_victoria(self) -> str | None:
        binary = shutil.which("victoria-metrics") or shutil.which("victoria-metrics-prod")
        if binary is None:
            return None
        port = free_port()
        self.spawn(
            "victoria-metrics",
            [
                binary,
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-storageDataPath={STATE / 'victoria-data'}",
                "-retentionPeriod=1d",
                "-search.latencyOffset=1s",
            ],
        )
        if not wait_port(port):
            return None
        self.env["INFLUX_URL"] = f"http://127.0.0.1:{port}"
        return self.env["INFLUX_URL"]

    def stop(self) -> None:
        # Newest first, one at a time: the historian flushes before the database goes away.
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=6)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


COLUMNS = [
    ("tcs_supply_temp_c", "TCS sup °C", "{:6.2f}"),
    ("tcs_supply_setpoint_c", "setpt °C", "{:6.2f}"),
    ("tcs_return_temp_c", "TCS ret °C", "{:6.2f}"),
    ("tcs_flow_lpm", "flow l/min", "{:7.0f}"),
    ("heat_load_kw", "load kW", "{:7.0f}"),
    ("valve_feedback_pct", "valve %", "{:5.1f}"),
    ("facility_inlet_temp_c", "FWS in °C", "{:6.2f}"),
]


def parse_line(line: str) -> tuple[str, dict[str, float | str]]:
    """(row key, fields): device readings by device name, the control state as "control"."""
    head, fields, _ts = line.rsplit(" ", 2)
    measurement, *tags = head.split(",")
    device = next((tag.split("=", 1)[1] for tag in tags if tag.startswith("device=")), "")
    key = "control" if measurement == "control" else device if measurement not in ("gateway", "control_write") else ""
    values: dict[str, float | str] = {}
    for item in fields.split(","):
        name, _, raw = item.partition("=")
        try:
            values[name] = float(raw.rstrip("i"))
        except ValueError:
            values[name] = raw.strip('"')
    return key, values


CONTROL_KEYS = [
    ("mode", "mode", "{}"),
    ("order_source", "order from", "{}"),
    ("heat_order_kw", "order kW", "{:.0f}"),
    ("heat_delivered_kw", "delivered kW", "{:.0f}"),
    ("dh_requirement_c", "DH required °C", "{:.2f}"),
    ("dh_supply_c", "DH supply °C", "{:.2f}"),
    ("hp_supply_setpoint_c", "HP setpoint °C", "{:.2f}"),
    ("cdu_ceiling_c", "CDU ceiling °C", "{:.2f}"),
    ("tcs_hottest_c", "hottest TCS °C", "{:.2f}"),
    ("overrides", "overrides", "{}"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until Ctrl-C)")
    args = parser.parse_args()
    demo = Demo()
    latest: dict[str, dict[str, float | str]] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()
    client = None
    try:
        broker = demo.start_broker()
        influx = demo.start_victoria()
        heat_gateway = str(BIN / "heat-gateway")
        demo.spawn("simulator", [heat_gateway, "simulate", "-c", str(SITE)])
        if not (wait_port(15021) and wait_port(14840) and wait_port(14841)):
            raise SystemExit(f"the simulator did not start; see {STATE / 'simulator.log'}")
        demo.spawn("gateway", [heat_gateway, "run", "-c", str(SITE)])
        if influx:
            demo.spawn("historian", [heat_gateway, "historian", "-c", str(SITE)])

        def on_message(_c: object, _u: object, message: paho.MQTTMessage) -> None:
            for line in message.payload.decode(errors="replace").splitlines():
                try:
                    device, values = parse_line(line)
                except ValueError:
                    continue
                if not device:
                    continue
                with lock:
                    latest.setdefault(device, {}).update(values)
                    seen[device] = time.time()

        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="heat-gateway-demo-viewer")
        client.on_message = on_message
        client.on_connect = lambda c, *_: c.subscribe("heat/+/+/metrics", qos=0)
        client.connect("127.0.0.1", int(demo.env["MQTT_PORT"]))
        client.loop_start()
        started = time.monotonic()
        while not args.seconds or time.monotonic() - started < args.seconds:
            time.sleep(1)
            for name, process in demo.processes:
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited with {process.returncode}; see {STATE / (name + '.log')}")
            with lock:
                rows = {d: dict(v) for d, v in latest.items()}
                ages = {d: time.time() - t for d, t in seen.items()}
            out = ["\033[2J\033[H" if sys.stdout.isatty() else "", "heat-gateway demo - Ctrl-C to stop"]
            out.append(f"broker: {broker}   historian: {influx or 'off (victoria-metrics not installed)'}")
            out.append(f"logs: {STATE}/*.log")
            out.append("")
            out.append(f"{'device':<8} " + " ".join(f"{title:>10}" for _, title, _ in COLUMNS) + "   age")
            for device in sorted((d for d in rows if d.startswith("cdu")), key=lambda d: int(d.split("-")[-1])):
                cells = [
                    (fmt.format(rows[device][key]) if key in rows[device] else "-").rjust(10) for key, _, fmt in COLUMNS
                ]
                out.append(f"{device:<8} " + " ".join(cells) + f"  {ages[device]:4.1f}s")
            for device in sorted(d for d in rows if not d.startswith("cdu") and d != "control"):
                pairs = ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(rows[device].items())[:10]
                )
                out.append(f"{device}: {pairs}")
            if "control" in rows:
                control = rows["control"]
                cells = []
                for key, title, fmt in CONTROL_KEYS:
                    value = control.get(key, "-")
                    cells.append(f"{title}: {fmt.format(value) if isinstance(value, float) else value}")
                out.append("")
                out.append("control  " + " | ".join(cells[:5]))
                out.append("         " + " | ".join(cells[5:]))
            if influx:
                try:
                    with urllib.request.urlopen(f"{influx}/api/v1/series/count", timeout=1) as response:  # noqa: S310
                        out.append(f"time-series: {response.read().decode().strip()}")
                except OSError:
                    pass
            print("\n".join(out), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
