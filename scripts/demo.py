"""`make demo`: the plant simulators, a private Mosquitto, the gateway and (when available) the
historian, with live readings in the terminal until Ctrl-C.

Needs Debian's `mosquitto` (`make demo` installs it as root); runs the historian into a
private victoria-metrics (InfluxDB v2 write API) when that is installed. Before anything starts
it checks that the example site's simulator ports are free. Everything listens on loopback and
writes its logs and data under var/demo/.
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
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config.loader import load_site
from gateway.config.profile import Access
from gateway.config.site import ModbusDevice
from gateway.control.explain import explain_override

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "config" / "site.example.yaml"
STATE = ROOT / "var" / "demo"
BIN = Path(sys.executable).parent
OTHER_SIGNALS_SHOWN = 8  # per non-CDU device: its writable signals, then this many more in profile order


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_port(port: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def device_ports() -> dict[int, str]:
    """The loopback ports the example site's simulated devices listen on, and whose they are."""
    ports: dict[int, str] = {}
    for device in load_site(SITE).config.devices:
        if isinstance(device, ModbusDevice):
            ports.setdefault(device.port, device.name)
        else:
            port = int(device.endpoint.rsplit(":", 1)[1].split("/", 1)[0])
            ports.setdefault(port, device.name)
    return ports


def check_ports() -> list[int]:
    """Exit with a clear message when a simulator port is taken; the ports otherwise."""
    ports = device_ports()
    busy = sorted(port for port in ports if port_in_use(port))
    if busy:
        names = ", ".join(f"{port} ({ports[port]})" for port in busy)
        raise SystemExit(
            f"make demo: port(s) {names} on 127.0.0.1 are in use, by another demo or simulator?\n"
            f"  see who holds them: ss -ltnp '( sport = :{busy[0]} )'\n"
            f"  stop it, or change the ports in {SITE.relative_to(ROOT)}"
        )
    return sorted(ports)


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
        sbin = Path("/usr/sbin/mosquitto")
        mosquitto = shutil.which("mosquitto") or (str(sbin) if sbin.exists() else None)
        if mosquitto is None:
            raise SystemExit(
                "make demo needs Debian's mosquitto: as root, `make demo` installs it "
                "(scripts/ensure-services.sh); otherwise: sudo apt-get install mosquitto"
            )
        port = free_port()
        conf = STATE / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\nmax_inflight_messages 100\nset_tcp_nodelay true\n",
            encoding="utf-8",
        )
        self.spawn("mosquitto", [mosquitto, "-c", str(conf)])
        if not wait_port(port):
            raise SystemExit(f"mosquitto did not start; see {STATE / 'mosquitto.log'}")
        self.env["MQTT_PORT"] = str(port)
        return f"private Mosquitto on 127.0.0.1:{port}"

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


def fmt(value: float | str | None, width: int = 0) -> str:
    """A reading as a person reads it: no exponents, decimals by size, booleans as words."""
    if value is None:
        text = "-"
    elif isinstance(value, str):
        text = value or "-"
    elif isinstance(value, int):  # counters
        text = f"{value:,}".replace(",", " ")
    elif value != value:  # NaN  # noqa: PLR0124
        text = "-"
    elif abs(value) >= 1000:
        text = f"{value:,.0f}".replace(",", " ")
    elif abs(value) >= 100:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text.rjust(width) if width else text


CDU_COLUMNS = [
    ("tcs_supply_temp_c", "TCS supply", "°C"),
    ("tcs_supply_setpoint_c", "setpoint", "°C"),
    ("tcs_return_temp_c", "TCS return", "°C"),
    ("tcs_flow_lpm", "flow", "l/min"),
    ("heat_load_kw", "heat load", "kW"),
    ("valve_feedback_pct", "valve", "%"),
    ("facility_inlet_temp_c", "FWS in", "°C"),
]

CONTROL_KEYS = [
    ("mode", "mode"),
    ("order_source", "order from"),
    ("heat_order_kw", "order kW"),
    ("heat_delivered_kw", "delivered kW"),
    ("heat_error_pct", "error %"),
    ("dh_requirement_c", "DH required °C"),
    ("dh_supply_c", "DH supply °C"),
    ("hp_supply_setpoint_c", "HP setpoint °C"),
    ("cdu_ceiling_c", "CDU ceiling °C"),
    ("tcs_hottest_c", "hottest TCS °C"),
]

LEGEND = [
    "legend: TCS = rack loop (technology cooling system), FWS = facility water; setpoint = what the",
    "        gateway wrote to the CDU; age = seconds since the device's last reading reached the broker;",
    "        '-' = not read (device down or signal bad: the gateway never publishes a guess).",
]


def parse_line(line: str) -> tuple[str, dict[str, float | str]]:
    """(row key, fields): device readings by device name, control and historian by measurement."""
    head, fields, _ts = line.rsplit(" ", 2)
    measurement, *tags = head.split(",")
    device = next((tag.split("=", 1)[1] for tag in tags if tag.startswith("device=")), "")
    if measurement in ("control", "historian"):
        key = measurement
    elif measurement in ("gateway", "control_write"):
        key = ""
    else:
        key = device
    values: dict[str, float | str] = {}
    for item in fields.split(","):
        name, _, raw = item.partition("=")
        if raw in ("true", "false"):
            values[name] = raw
            continue
        try:
            values[name] = float(raw.rstrip("iu"))
        except ValueError:
            values[name] = raw.strip('"')
    return key, values


def shown_signals() -> dict[str, list[str]]:
    """Per non-CDU device: its writable signals first, then the profile's own order (never the alphabet)."""
    site = load_site(SITE)
    out: dict[str, list[str]] = {}
    for device in site.config.devices:
        if device.kind == "cdu":
            continue
        signals = site.profile_of(device).signals
        writable = [name for name, spec in signals.items() if spec.access is Access.READ_WRITE]
        others = [name for name in signals if name not in writable][:OTHER_SIGNALS_SHOWN]
        out[device.name] = writable + others
    return out


class Screen:
    """What the terminal shows, rebuilt once a second from the newest readings."""

    def __init__(self, broker: str, influx: str | None, control_on: bool) -> None:
        self.broker = broker
        self.influx = influx
        self.control_on = control_on
        self.signals = shown_signals()
        self._written: tuple[float, float] | None = None  # (time, lines_written) at the last screen
        self.points_per_s: float | None = None

    def historian_rate(self, rows: dict[str, dict[str, float | str]]) -> str:
        written = rows.get("historian", {}).get("lines_written")
        if not isinstance(written, float):
            return "waiting for its first report (every 10 s)"
        now = time.monotonic()
        if self._written is not None and written > self._written[1]:
            self.points_per_s = (written - self._written[1]) / max(now - self._written[0], 1e-3)
        if self._written is None or written != self._written[1]:
            self._written = (now, written)
        lag = rows["historian"].get("lag_s")
        rate = f"{self.points_per_s:.0f} lines/s" if self.points_per_s is not None else "measuring"
        return f"{fmt(round(written))} lines written, {rate}, newest {fmt(lag)} s old when written"

    def render(self, rows: dict[str, dict[str, float | str]], ages: dict[str, float]) -> str:
        out = ["\033[2J\033[H" if sys.stdout.isatty() else "", "heat-gateway demo - Ctrl-C to stop"]
        out.append(f"broker: {self.broker}   logs: {STATE}/*.log")
        if self.control_on:
            out.append(
                "CONTROL IS ON: the gateway writes setpoints to the simulated CDUs and PLCs "
                "(the example site has a control: section)"
            )
        out.extend(LEGEND)
        out.append("")
        header = f"{'CDU':<7}" + "".join(f"{title:>11}" for _, title, _ in CDU_COLUMNS) + "    age"
        units = f"{'':<7}" + "".join(f"{unit:>11}" for _, _, unit in CDU_COLUMNS) + "      s"
        out += [header, units]
        for device in sorted((d for d in rows if d.startswith("cdu")), key=lambda d: int(d.split("-")[-1])):
            cells = "".join(fmt(rows[device].get(key), 11) for key, _, _ in CDU_COLUMNS)
            out.append(f"{device:<7}{cells}  {ages.get(device, 0):5.1f}")
        for device, names in self.signals.items():
            values = rows.get(device, {})
            age = f"  (age {ages[device]:.1f} s)" if device in ages else "  (no reading yet)"
            out.append("")
            out.append(f"{device}{age}: " + ", ".join(f"{name}={fmt(values.get(name))}" for name in names[:6]))
            if len(names) > 6:
                out.append(" " * (len(device) + 2) + ", ".join(f"{n}={fmt(values.get(n))}" for n in names[6:]))
        if "control" in rows:
            control = rows["control"]
            cells = [f"{title}: {fmt(control.get(key))}" for key, title in CONTROL_KEYS]
            out.append("")
            out.append("control  " + " | ".join(cells[:5]))
            out.append("         " + " | ".join(cells[5:]))
            overrides = [o for o in str(control.get("overrides", "")).split(",") if o and o != "-"]
            for override in overrides:
                out.append(f"  why {override}: {explain_override(override)}")
        out.append("")
        if self.influx:
            out.append(f"historian -> {self.influx}: {self.historian_rate(rows)}")
        else:
            out.append("historian: off (victoria-metrics not installed)")
        return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until Ctrl-C)")
    args = parser.parse_args()
    ports = check_ports()
    # SIGTERM (a `timeout`, a closed terminal's SIGHUP) stops the parts in order, as Ctrl-C does:
    # the children run in their own sessions and would otherwise outlive the demo.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
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
        if not all(wait_port(port) for port in ports):
            raise SystemExit(f"the simulator did not start; see {STATE / 'simulator.log'}")
        demo.spawn("gateway", [heat_gateway, "run", "-c", str(SITE)])
        if influx:
            demo.spawn("historian", [heat_gateway, "historian", "-c", str(SITE)])
        screen = Screen(broker, influx, control_on=load_site(SITE).config.control is not None)

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
            print(screen.render(rows, ages), flush=True)
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
