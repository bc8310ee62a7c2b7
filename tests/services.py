"""Private Mosquitto and victoria-metrics instances for tests, on free loopback ports.

Each server runs as a child process in its own folder (config, data, log), so a test can stop,
kill and restart it to inject faults without touching any system service. ``restart()`` keeps
the port and the data folder: Mosquitto's persistent sessions and victoria-metrics' stored
samples survive it, as they would on a site box. Only the standard library is used.

Error tree::

    ServiceError              a server did not start, or a request to it failed
    +-- BinaryNotFoundError   the Debian package is not installed (``make services``)

victoria-metrics 1.79 (Debian bookworm), verified by experiment against this module:

- InfluxDB line protocol is accepted at ``/api/v2/write`` (what influxdb-client sends; ``org``,
  ``bucket`` and the token are ignored) and at ``/write``.
- Metric name = ``{measurement}_{field}``, tags become labels:
  ``cdu,site=s,device=d tcs_supply_temp_c=41.5`` -> ``cdu_tcs_supply_temp_c{device="d",site="s"}``.
  Dots are kept (``m.x,a.b=c value=2`` -> ``m.x_value{a.b="c"}``). Integer fields (``3i``)
  become 3, booleans 1/0, and *string fields are stored as 0*, not dropped.
- ``/write?db=NAME`` adds a label ``db="NAME"``; ``/api/v2/write?bucket=...`` adds none.
- Timestamps are stored in milliseconds. A line without a timestamp gets the server's time.
- Samples more than 2 days in the future, or older than ``-retentionPeriod``, are dropped with
  only a warning in the server log: the write still answers 204.
- There is no flush-interval flag in 1.79: rows become searchable ~1 s after the write.
  ``GET /internal/force_flush`` makes pending rows searchable at once, but a *new* series can
  still take up to ~1 s to appear, so poll (``wait_for_export``) rather than sleep.
- ``/api/v1/export`` returns samples up to ``end`` (default: now), one JSON object per line:
  ``{"metric": {"__name__": ..., labels...}, "values": [...], "timestamps": [ms, ...]}``.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypedDict

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "run `make services` (or, as root, `bash scripts/ensure-services.sh`)"

# Search these as well as $PATH: Debian puts mosquitto in /usr/sbin, which a normal user's PATH
# does not contain.
_EXTRA_BINARY_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin")


class ServiceError(RuntimeError):
    """A private server did not start or did not answer."""


class BinaryNotFoundError(ServiceError):
    """The server's executable is not installed."""


class ExportedSeries(TypedDict):
    """One series from victoria-metrics' ``/api/v1/export``."""

    metric: dict[str, str]  # "__name__" plus the labels
    values: list[float]
    timestamps: list[int]  # milliseconds since the epoch


# --------------------------------------------------------------------------------------------
# Ports and binaries
# --------------------------------------------------------------------------------------------

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def _ephemeral_port_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that is free now and was not handed out before in this process.

    Ports are picked *below* the kernel's ephemeral range, so a client's outgoing connection
    cannot take a server's port while that server is stopped for a restart.
    """
    high = _ephemeral_port_low() - 1
    low = min(20000, high - 1000)
    with _ports_lock:
        for _ in range(200):
            port = random.randint(low, high)
            if port in _ports_handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _ports_handed_out.add(port)
            return port
    raise ServiceError(f"no free TCP port found on {host} in {low}-{high}")


def find_binary(name: str, env_var: str) -> str:
    """Path of executable ``name``; ``$env_var`` overrides the search.

    Raises ``BinaryNotFoundError`` with the install hint when it is missing.
    """
    override = os.environ.get(env_var)
    if override:
        if os.access(override, os.X_OK):
            return override
        raise BinaryNotFoundError(f"{env_var}={override} is not an executable file")
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_BINARY_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        raise BinaryNotFoundError(f"`{name}` is not installed: {INSTALL_HINT}; or set {env_var} to its path")
    return found


def port_accepts(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# A child process with a folder, a log and a readiness check
# --------------------------------------------------------------------------------------------


class _ServerProcess:
    """Start/stop/kill/restart of one server process; subclasses give the command and readiness."""

    name = "server"
    startup_timeout_s = 20.0

    def __init__(self, *, port: int | None, workdir: Path | None) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port(self.host)
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"heat-gateway-{self.name}-") if workdir is None else workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0  # where this start's output begins in the log

    # -- subclass hooks ------------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> None:
        """Start the server and wait until it serves; a no-op when it is running."""
        if self.running:
            return
        self._reap()
        command = self._command()
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(command)}\n".encode())
        self._log.flush()
        self._log_offset = self._log.tell()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                self._reap()
                raise ServiceError(f"{self.name} exited with code {code} on start\n{self.log_tail()}")
            # Ready only if it is still ours: a process that lost a race for the port would
            # exit just after another server answered on it.
            if self._is_ready() and self._process.poll() is None:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"{self.name} did not get ready on port {self.port} within "
                    f"{self.startup_timeout_s:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM, as systemd does); SIGKILL if it takes longer than ``timeout_s``."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reap()

    def kill(self) -> None:
        """Crash: SIGKILL, no chance to save state."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._reap()

    def restart(self) -> None:
        """Graceful stop, then start on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove the folder if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log (for failure messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def _output_since_start(self) -> bytes:
        """What the process wrote since the last ``start()``."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read()
        except OSError:
            return b""

    def _reap(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._process = None
        if self._process is None and self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} {self.workdir}>"


# --------------------------------------------------------------------------------------------
# Mosquitto
# --------------------------------------------------------------------------------------------


class MosquittoServer(_ServerProcess):
    """A private Mosquitto 2.0 broker on ``host:port`` with persistence in ``workdir/data``.

    The settings match ``deploy/mosquitto.conf`` where it matters for behaviour under load:
    ``max_queued_messages 100000`` (the default 1000 drops a QoS 1 backlog, docs/library-limits.md),
    ``max_inflight_messages 100`` and ``set_tcp_nodelay true``. Anonymous clients are allowed.
    The in-memory database is saved on a graceful ``stop()``; ``kill()`` loses what was queued
    since the last autosave (``autosave_interval_s``), like a power cut.
    """

    name = "mosquitto"
    startup_timeout_s = 10.0

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        max_queued_messages: int = 100_000,
        max_inflight_messages: int = 100,
        autosave_interval_s: int = 1800,
        extra_config: str = "",
    ) -> None:
        super().__init__(port=port, workdir=workdir)
        self.binary = find_binary("mosquitto", "HEAT_GATEWAY_MOSQUITTO")
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.workdir / "mosquitto.conf"
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.autosave_interval_s = autosave_interval_s
        self.extra_config = extra_config

    def config_text(self) -> str:
        """The configuration file this broker runs with."""
        # Mosquitto started as root drops to user "mosquitto", which could not write our
        # folder; naming the current user keeps it as is (ignored when not root).
        user = pwd.getpwuid(os.geteuid()).pw_name
        return (
            f"# private test broker, written by tests/services.py\n"
            f"user {user}\n"
            f"listener {self.port} {self.host}\n"
            f"allow_anonymous true\n"
            f"persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            f"autosave_interval {self.autosave_interval_s}\n"
            f"max_queued_messages {self.max_queued_messages}\n"
            f"max_inflight_messages {self.max_inflight_messages}\n"
            f"set_tcp_nodelay true\n"
            f"log_dest stderr\n"
            f"log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"{self.extra_config}\n"
        )

    def _command(self) -> list[str]:
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        return [self.binary, "-c", str(self.config_path)]

    def _is_ready(self) -> bool:
        # Mosquitto logs "running" once its listeners are open (and exits if the port is taken).
        return b" running" in self._output_since_start() and port_accepts(self.host, self.port)


# --------------------------------------------------------------------------------------------
# victoria-metrics
# --------------------------------------------------------------------------------------------


class VictoriaMetricsServer(_ServerProcess):
    """A private single-node victoria-metrics on ``url``, data in ``workdir/data``.

    Flags (see the module docstring for what was measured):

    - ``-retentionPeriod=100y``: samples older than the retention are dropped silently, and
      tests replay fixed historical timestamps.
    - ``-search.latencyOffset=0s``: instant queries otherwise hide the last 30 s of samples.
    - ``-search.disableCache``: ``query_range`` results are otherwise cached, so a re-query after
      a later write could miss points.
    - ``-memory.allowedBytes=1GiB``: caches otherwise size themselves to 60 % of the machine's
      memory, which several instances on a shared 2-core box should not claim.
    - No flush-interval flag exists in 1.79; ``flush()`` (``/internal/force_flush``) stands in.

    ``extra_args`` come last, and a repeated flag overrides the earlier one.

    Write with influxdb-client (``url``, any token/org/bucket) or with ``write()``; read with
    ``export()`` or, for data just written, ``wait_for_export()``.
    """

    name = "victoria-metrics"
    startup_timeout_s = 30.0

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        retention_period: str = "100y",
        memory_allowed: str = "1GiB",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(port=port, workdir=workdir)
        self.binary = find_binary("victoria-metrics", "HEAT_GATEWAY_VICTORIA_METRICS")
        self.data_dir = self.workdir / "data"
        self.retention_period = retention_period
        self.memory_allowed = memory_allowed
        self.extra_args = extra_args

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:23456`` (InfluxDB clients take this as is)."""
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            f"-retentionPeriod={self.retention_period}",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            f"-memory.allowedBytes={self.memory_allowed}",
            *self.extra_args,
        ]

    def _is_ready(self) -> bool:
        # /health says it serves; /flags says it is this instance (our data path), not another
        # server that answered on the port first.
        try:
            if self._get("/health", timeout_s=0.5).strip() != b"OK":
                return False
            flags = self._get("/flags", timeout_s=0.5).decode("utf-8", errors="replace")
        except ServiceError:
            return False
        return f'-storageDataPath="{self.data_dir}"' in flags

    # -- HTTP helpers -----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        body: bytes | None = None,
        timeout_s: float = 10.0,
    ) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(f"{self.url}{path}{query}", data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:
                answer: bytes = reply.read()
                return answer
        except urllib.error.HTTPError as error:
            with error:
                detail = error.read().decode("utf-8", errors="replace").strip()
            raise ServiceError(f"{method} {path}: HTTP {error.code}: {detail}") from error
        except OSError as error:
            raise ServiceError(f"{method} {path}: {error}") from error

    def _get(self, path: str, params: dict[str, str] | None = None, timeout_s: float = 10.0) -> bytes:
        return self._request("GET", path, params, timeout_s=timeout_s)

    def write(self, lines: str | list[str], precision: str = "ns") -> None:
        """Write InfluxDB line protocol through ``/api/v2/write`` (no client library needed)."""
        body = (lines if isinstance(lines, str) else "\n".join(lines)).encode()
        self._request("POST", "/api/v2/write", {"precision": precision}, body=body)

    def flush(self) -> None:
        """Make rows written so far searchable now (``/internal/force_flush``)."""
        self._get("/internal/force_flush")

    def export(self, match: str, *, start: float | None = None, end: float | None = None) -> list[ExportedSeries]:
        """Series matching a selector such as ``cdu_tcs_supply_temp_c{site="s"}`` or ``{device="d"}``.

        ``start``/``end`` are Unix seconds (default: all time up to now). Sorted by name and labels.
        Does not flush: call ``flush()`` first, or use ``wait_for_export()`` for fresh data.
        """
        params = {"match[]": match}
        if start is not None:
            params["start"] = f"{start:.3f}"
        if end is not None:
            params["end"] = f"{end:.3f}"
        body = self._get("/api/v1/export", params)
        series: list[ExportedSeries] = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        series.sort(key=lambda s: sorted(s["metric"].items()))
        return series

    def wait_for_export(
        self,
        match: str,
        *,
        min_points: int = 1,
        timeout_s: float = 10.0,
        start: float | None = None,
        end: float | None = None,
    ) -> list[ExportedSeries]:
        """Flush and poll ``export(match)`` until its series hold ``min_points`` samples in total.

        Raises ``ServiceError`` naming what was found when ``timeout_s`` passes first.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.flush()
            series = self.export(match, start=start, end=end)
            points = sum(len(s["values"]) for s in series)
            if points >= min_points:
                return series
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"export {match!r}: {points} of {min_points} points after {timeout_s} s ({len(series)} series)"
                )
            time.sleep(0.1)
