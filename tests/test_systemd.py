"""What the services tell systemd, judged from a real AF_UNIX datagram socket, as systemd reads it.

The test binds a ``SOCK_DGRAM`` socket, hands its path to a real ``heat-gateway run`` (or
``historian``) process as ``$NOTIFY_SOCKET`` with ``$WATCHDOG_USEC``, and reads what arrives:
``READY=1``, ``STATUS=``, ``WATCHDOG=1``, ``RELOADING=1``, ``STOPPING=1``. Devices are the
bundled simulators (``heat-gateway simulate``, a separate process), the broker a private
Mosquitto, the database a private victoria-metrics.

A stuck poller or control task is injected with the test-only hook of gateway/liveness.py:
``HEAT_GATEWAY_TEST_HANG=<component>`` arms it, SIGUSR2 fires it, and the component's loop then
awaits forever, as a hung await would. Its stdout is a pipe whose device:inode is given as
``$JOURNAL_STREAM``, so the process writes what it would write to the journal: ``<N>``-prefixed
lines.

No timing is asserted: waits are generous deadlines for something to happen; "the pings stopped"
is judged by none arriving during 8 ping periods after the service said it withholds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
START_TIMEOUT_S = 60.0  # a loaded shared machine: generous, never a measurement


class NotifySocket:
    """The systemd side of sd_notify(3): a datagram socket that keeps every message with its arrival order."""

    def __init__(self) -> None:
        # sun_path is at most 107 bytes: pytest's tmp_path can be longer, so a short folder of our own
        self._dir = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
        self.path = str(self._dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None  # the service writing here, once started
        self.journal: JournalPipe | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.append(data.decode())

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[str], bool], what: str, *, after: int = 0, timeout_s: float = 30) -> int:
        """Index of the first message from ``after`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for index, message in enumerate(self.snapshot()[after:], start=after):
                if predicate(message):
                    return index
            if self.process is not None and self.process.poll() is not None:
                break  # it exited: no use waiting
            time.sleep(0.05)
        output = self.journal.text()[-3000:] if self.journal is not None else ""
        exited = "" if self.process is None else f" (exit status {self.process.poll()})"
        pytest.fail(
            f"no {what} on NOTIFY_SOCKET within {timeout_s} s{exited}; got {self.snapshot()[after:][-15:]}\n{output}"
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        with contextlib.suppress(OSError):
            Path(self.path).unlink()
            self._dir.rmdir()


def fields(message: str) -> dict[str, str]:
    """``KEY=value`` lines of one notification."""
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


class JournalPipe:
    """The process's stdout as journald would take it: a stream named by $JOURNAL_STREAM."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        stat = os.fstat(self.write_fd)
        self.journal_stream = f"{stat.st_dev}:{stat.st_ino}"
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="journal-pipe", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with os.fdopen(self.read_fd, "rb") as stream:
            for raw in stream:
                with self.lock:
                    self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def events(self, event: str) -> list[tuple[int, dict[str, object]]]:
        """(priority, JSON record) of every line of that event."""
        found = []
        with self.lock:
            lines = list(self.lines)
        for line in lines:
            if not line.startswith("<") or ">" not in line[:4]:
                continue
            priority, text = line[1 : line.index(">")], line[line.index(">") + 1 :]
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(text)
                if record.get("event") == event:
                    found.append((int(priority), record))
        return found

    def wait_event(self, event: str, *, count: int = 1, timeout_s: float = 30) -> list[tuple[int, dict[str, object]]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.events(event)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        with self.lock:
            tail = "\n".join(self.lines[-30:])
        pytest.fail(f"no {event!r} (x{count}) in the output within {timeout_s} s; last lines:\n{tail}")

    def text(self) -> str:
        with self.lock:
            return "\n".join(self.lines)


def site_text(tmp_path: Path, mqtt_port: int, ports: list[int], *, control: bool, extra: str = "") -> str:
    """Simulated CDUs on ``ports``; with ``control``, the other devices the control section needs."""
    lines = [
        f"  - {{name: cdu-{i}, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {port}, profile: cdu, "
        f"poll_period_s: 0.2, timeout_s: 0.3, backoff_max_s: 0.5}}"
        for i, port in enumerate(ports, start=1)
    ]
    if control:
        lines.append(
            f"  - {{name: heat-meter, kind: heat_meter, protocol: modbus, host: 127.0.0.1, port: {free_port()}, "
            "unit_id: 10, profile: heat-meter, poll_period_s: 0.5, timeout_s: 0.5, backoff_max_s: 0.5}"
        )
        lines += [
            f"  - {{name: {name}, kind: {kind}, protocol: opcua, endpoint: 'opc.tcp://127.0.0.1:{free_port()}/', "
            f"profile: {name}, poll_period_s: 0.5, timeout_s: 1.0, backoff_max_s: 0.5}}"
            for name, kind in (("hp-plc", "heat_pump_plc"), ("panel-pc", "panel_pc"))
        ]
    devices = "\n".join(lines)
    return (
        f"site: sd{os.getpid()}\nprofiles_dir: {REPO / 'config' / 'profiles'}\nstate_dir: {tmp_path / 'state'}\n"
        f"devices:\n{devices}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}, client_id: sd-{time.time_ns()}}}\n"
        + ("control: {cycle_s: 0.5}\n" if control else "")
        + extra
    )


@contextlib.contextmanager
def service(
    command: str, site: Path, notify: NotifySocket, *, hang: str = "", simulate: bool = True
) -> Iterator[tuple[subprocess.Popen[bytes], JournalPipe]]:
    """The simulators (when ``simulate``) and one ``heat-gateway`` process wired to ``notify``."""
    simulator = None
    if simulate:
        simulator = subprocess.Popen(
            [sys.executable, "-m", "gateway", "simulate", "-c", str(site)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    journal = JournalPipe()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "JOURNAL_STREAM": journal.journal_stream,
        "HEAT_GATEWAY_TEST_HANG": hang,
    }
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", command, "-c", str(site)],
        stdout=journal.write_fd,
        stderr=subprocess.STDOUT,
        env=env,
    )
    os.close(journal.write_fd)
    notify.process, notify.journal = process, journal
    try:
        yield process, journal
    except BaseException:
        # shown by pytest with the failure: what systemd got and what the service logged
        print("NOTIFY_SOCKET messages:", *notify.snapshot()[-40:], sep="\n  ")
        print("service output (last lines):", journal.text()[-6000:], sep="\n")
        raise
    finally:
        for proc in (process, simulator):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()


def assert_pings_stopped(notify: NotifySocket, since: int) -> None:
    """No WATCHDOG=1 after message ``since`` for 8 ping periods."""
    time.sleep(8 * WATCHDOG_USEC / 2e6)
    later = notify.snapshot()[since + 1 :]
    assert not [m for m in later if "WATCHDOG=1" in m.splitlines()], later


def test_gateway_ready_status_watchdog_reload_and_a_stuck_poller(tmp_path, mosquitto):
    ports = [free_port(), free_port()]
    site = tmp_path / "site.yaml"
    text = site_text(tmp_path, mosquitto.port, ports, control=True)
    site.write_text(text, encoding="utf-8")
    notify = NotifySocket()
    try:
        with service("run", site, notify, hang="poll:cdu-1") as (process, journal):
            ready = notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1", timeout_s=START_TIMEOUT_S)
            # READY=1 comes after every device's first poll was tried, and says so in its STATUS
            status = fields(notify.snapshot()[ready])["STATUS"]
            assert "first polls" not in status
            assert "broker connected" in status
            assert "control auto" in status
            notify.wait_for(
                lambda m: fields(m).get("STATUS", "").startswith("devices 5/5 up"), "all devices up", timeout_s=30
            )
            pings = notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1", after=ready)
            notify.wait_for(lambda m: m == "WATCHDOG=1", "a second WATCHDOG=1", after=pings + 1)
            (priority, _), *_ = journal.wait_event("gateway_ready")
            assert priority == 6  # info, for journalctl -p

            # SIGHUP with a valid file: cdu-2 changed (restarted), cdu-1 and the publisher kept.
            cdu2 = f"port: {ports[1]}, profile: cdu, poll_period_s: "
            site.write_text(text.replace(cdu2 + "0.2", cdu2 + "0.3"), encoding="utf-8")
            mark = len(notify.snapshot())
            process.send_signal(signal.SIGHUP)
            reloading = notify.wait_for(lambda m: "RELOADING=1" in m.splitlines(), "RELOADING=1", after=mark)
            assert int(fields(notify.snapshot()[reloading])["MONOTONIC_USEC"]) > 0
            notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1 after the reload", after=reloading)
            (_, applied), *_ = journal.wait_event("reload_applied")
            assert applied["restarted"] == ["cdu-2"]
            assert applied["added"] == applied["removed"] == []
            assert applied["kept"] == 4
            assert applied["publisher"] == "kept"
            assert applied["control"] == "rebuilt"
            assert applied["control_state"] == "kept"
            assert len(journal.events("mqtt_connected")) == 1  # the publisher (and its spool) went on
            notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1 after the reload", after=reloading)

            # SIGHUP with an invalid file: refused with its error, the running config kept.
            text = site.read_text(encoding="utf-8").replace("poll_period_s: 0.3", "poll_period_s: -1")
            site.write_text(text, encoding="utf-8")
            mark = len(notify.snapshot())
            process.send_signal(signal.SIGHUP)
            reloading = notify.wait_for(lambda m: "RELOADING=1" in m.splitlines(), "RELOADING=1", after=mark)
            ready = notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1 after refusing", after=reloading)
            (priority, refused), *_ = journal.wait_event("reload_refused")
            assert priority == 3  # error: journalctl -p warning shows it
            assert str(site) in str(refused["error"])
            assert "poll_period_s" in str(refused["error"])
            # still the five devices of the running file (one may be down a moment on a loaded machine)
            assert re.match(r"devices \d/5 up", fields(notify.snapshot()[ready])["STATUS"])
            assert len(journal.events("reload_applied")) == 1
            assert process.poll() is None
            pings = notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1 after refusing", after=ready)

            # A stuck poller: the pings stop and STATUS names it.
            process.send_signal(signal.SIGUSR2)
            journal.wait_event("test_hang_injected")
            stalled = notify.wait_for(
                lambda m: m.startswith("STATUS=") and "STALLED poll:cdu-1" in m, "STATUS naming the stall", after=pings
            )
            (priority, withheld), *_ = journal.wait_event("watchdog_withheld")
            assert priority == 3
            assert "poll:cdu-1" in str(withheld["stalled"])
            assert "poll:cdu-2" not in str(withheld["stalled"])
            assert_pings_stopped(notify, stalled)

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
            notify.wait_for(lambda m: m == "STOPPING=1", "STOPPING=1", after=stalled)
            assert "Traceback" not in journal.text()
    finally:
        notify.close()


def test_a_stuck_control_loop_stops_the_pings(tmp_path, mosquitto):
    site = tmp_path / "site.yaml"
    site.write_text(site_text(tmp_path, mosquitto.port, [free_port(), free_port()], control=True), encoding="utf-8")
    notify = NotifySocket()
    try:
        with service("run", site, notify, hang="control") as (process, journal):
            ready = notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1", timeout_s=START_TIMEOUT_S)
            journal.wait_event("control_started")
            pings = notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1", after=ready)
            process.send_signal(signal.SIGUSR2)
            journal.wait_event("test_hang_injected")
            stalled = notify.wait_for(
                lambda m: m.startswith("STATUS=") and "STALLED control" in m, "STATUS naming the stall", after=pings
            )
            # the pollers go on: only the control loop is stuck
            assert "poll:" not in notify.snapshot()[stalled]
            assert_pings_stopped(notify, stalled)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
    finally:
        notify.close()


def test_historian_ready_status_watchdog_reload_and_a_stuck_loop(tmp_path, mosquitto, victoria):
    site = tmp_path / "site.yaml"
    influx = f"influxdb: {{url: '{victoria.url}', org: heat, bucket: heat, token: t, timeout_s: 2}}\n"
    site.write_text(site_text(tmp_path, mosquitto.port, [free_port()], control=False, extra=influx), encoding="utf-8")
    notify = NotifySocket()
    try:
        with service("historian", site, notify, hang="historian", simulate=False) as (process, journal):
            ready = notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1", timeout_s=START_TIMEOUT_S)
            assert "broker connected" in fields(notify.snapshot()[ready])["STATUS"]
            pings = notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1", after=ready)

            # a valid file that changes the historian's section rebuilds it
            text = site.read_text(encoding="utf-8")
            site.write_text(text.replace("timeout_s: 2}", "timeout_s: 2, batch_lines: 500}"), encoding="utf-8")
            process.send_signal(signal.SIGHUP)
            reloading = notify.wait_for(lambda m: "RELOADING=1" in m.splitlines(), "RELOADING=1", after=pings)
            notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1 after the reload", after=reloading)
            (_, applied), *_ = journal.wait_event("reload_applied")
            assert applied["historian"] == "rebuilt"
            journal.wait_event("historian_subscribed", count=2)

            # an invalid one is refused; the historian goes on
            site.write_text("site: [\n", encoding="utf-8")
            mark = len(notify.snapshot())
            process.send_signal(signal.SIGHUP)
            reloading = notify.wait_for(lambda m: "RELOADING=1" in m.splitlines(), "RELOADING=1", after=mark)
            ready = notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1 after refusing", after=reloading)
            (priority, refused), *_ = journal.wait_event("reload_refused")
            assert priority == 3
            assert str(site) in str(refused["error"])
            pings = notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1 after refusing", after=ready)
            assert process.poll() is None

            process.send_signal(signal.SIGUSR2)
            stalled = notify.wait_for(
                lambda m: m.startswith("STATUS=") and "STALLED historian" in m, "STATUS naming the stall", after=pings
            )
            assert_pings_stopped(notify, stalled)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
            assert "Traceback" not in journal.text()
    finally:
        notify.close()


def test_ready_with_every_device_down_and_no_broker(tmp_path):
    # Nothing answers: the first polls fail (tried), the broker's first attempt fails and the
    # spool takes over. READY=1 all the same, and STATUS says what is wrong.
    site = tmp_path / "site.yaml"
    site.write_text(site_text(tmp_path, free_port(), [free_port()], control=False), encoding="utf-8")
    notify = NotifySocket()
    try:
        with service("run", site, notify, simulate=False) as (process, journal):
            ready = notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1", timeout_s=START_TIMEOUT_S)
            status = fields(notify.snapshot()[ready])["STATUS"]
            assert status.startswith("devices 0/1 up (down: cdu-1); broker unreachable, spooling"), status
            (priority, _), *_ = journal.wait_event("mqtt_unreachable")
            assert priority == 4  # warning: journalctl -p warning shows it
            notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1", after=ready)  # down devices are not stuck
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
    finally:
        notify.close()


def test_a_reload_whose_spool_cannot_open_keeps_a_publisher(tmp_path, mosquitto):
    # The new state_dir is under a regular file: the new publisher's spool cannot open. The
    # gateway goes on publishing with the running settings and says the reload failed.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    site = tmp_path / "site.yaml"
    text = site_text(tmp_path, mosquitto.port, [free_port()], control=False)
    site.write_text(text, encoding="utf-8")
    notify = NotifySocket()
    try:
        with service("run", site, notify, simulate=False) as (process, journal):
            ready = notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1", timeout_s=START_TIMEOUT_S)
            site.write_text(text.replace(f"state_dir: {tmp_path / 'state'}", f"state_dir: {blocker}"), encoding="utf-8")
            process.send_signal(signal.SIGHUP)
            reloading = notify.wait_for(lambda m: "RELOADING=1" in m.splitlines(), "RELOADING=1", after=ready)
            notify.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1 after the failed reload", after=reloading)
            (priority, failed), *_ = journal.wait_event("reload_failed")
            assert priority == 3
            assert "spool folder" in str(failed["error"])
            journal.wait_event("mqtt_connected", count=2)  # the replacement publisher, old settings
            notify.wait_for(lambda m: m == "WATCHDOG=1", "WATCHDOG=1 after the failed reload", after=reloading)
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
    finally:
        notify.close()
