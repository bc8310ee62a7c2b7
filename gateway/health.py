"""An opt-in local HTTP endpoint: ``/healthz`` for a supervisor's probe, ``/metrics`` for Prometheus.

Off unless the site file has an ``http:`` section (``HttpConfig``); it listens on loopback by
default, answers GET only, one short request per connection, and never runs in a hot path:
figures are rendered when a scraper asks, from the same line-protocol stats the service
publishes over MQTT every 10 s (``Gateway.stats_message``, ``Historian.stats_message``), so
the two views of the service cannot disagree.

``/healthz``: 200 ``ok`` while every registered component made progress within its bound
(``gateway.liveness``), else 503 with the stalled components, one per line.

``/metrics``: Prometheus text format 0.0.4. A line-protocol line ``gateway,site=s,device=d
polls=5i,available=true`` becomes ``heat_gateway_polls{site="s",device="d"} 5`` and
``heat_gateway_available{...} 1``; string fields become an ``_info`` gauge of 1 with the text as
a label (``heat_control_mode_info{mode="auto"} 1``). Every metric is a gauge: counters such
as ``polls`` restart from 0 with the process, which ``rate()`` handles.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Iterable
from contextlib import suppress

from gateway.logs import get_logger

log = get_logger(__name__)

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 5.0
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(*parts: str) -> str:
    return "_".join(_NAME_OK.sub("_", part) for part in parts if part)


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(text: str) -> str:
    return text.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")


def _split(text: str, sep: str) -> list[str]:
    """Split line protocol at ``sep`` outside quotes and escapes."""
    out, start, quoted, escaped = [], 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            out.append(text[start:index])
            start = index + 1
    out.append(text[start:])
    return out


def prometheus_text(lines: Iterable[str], *, prefix: str = "heat") -> str:
    """Line-protocol lines -> Prometheus exposition text (one ``# TYPE`` per metric name)."""
    samples: dict[str, list[str]] = {}
    for raw_line in lines:
        line = raw_line.strip()
        if not line:
            continue
        parts = _split(line, " ")
        if len(parts) < 2:
            continue
        series, fields = parts[0], parts[1]
        measurement, *tag_pairs = _split(series, ",")
        labels = []
        for pair in tag_pairs:
            key, _, tag_value = pair.partition("=")
            labels.append(f'{_metric_name(_unescape(key))}="{_label_value(_unescape(tag_value))}"')
        for pair in _split(fields, ","):
            key, _, raw = pair.partition("=")
            name = _metric_name(prefix, _unescape(measurement), _unescape(key))
            label_text = ",".join(labels)
            if raw.startswith('"'):
                text = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                info_labels = ",".join([*labels, f'{_metric_name(_unescape(key))}="{_label_value(text)}"'])
                samples.setdefault(f"{name}_info", []).append(f"{name}_info{{{info_labels}}} 1")
                continue
            text_value = _sample_value(raw)
            if text_value is None:
                continue
            samples.setdefault(name, []).append(f"{name}{{{label_text}}} {text_value}")
    out = []
    for name, rows in samples.items():
        out.append(f"# TYPE {name} gauge")
        out.extend(rows)
    return "\n".join(out) + "\n"


def _sample_value(raw: str) -> str | None:
    """A line-protocol field value as a Prometheus sample value (None: not a number)."""
    if raw in ("true", "false"):
        value = 1.0 if raw == "true" else 0.0
    else:
        try:
            value = float(raw.rstrip("iu"))
        except ValueError:
            return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if not value.is_integer() else str(int(value))


class HealthServer:
    """Serves ``/healthz`` and ``/metrics`` on ``host:port`` until cancelled."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        stalled: Callable[[], list[str]],
        stats_lines: Callable[[], Iterable[str]],
        name: str,
    ) -> None:
        self.host = host
        self.port = port
        self._stalled = stalled
        self._stats_lines = stats_lines
        self._name = name
        self.requests = 0

    async def serve(self) -> None:
        """Listen until cancelled; a port in use is logged and the service runs on without it."""
        try:
            server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as error:
            # the reason (port in use, address not here) is the message; a traceback adds nothing
            log.error(  # noqa: TRY400
                "http_endpoint_failed", service=self._name, listen=f"{self.host}:{self.port}", error=str(error)
            )
            return
        sockets = server.sockets or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("http_endpoint_listening", service=self._name, listen=f"{self.host}:{self.port}")
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        self.requests += 1
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, body, kind = "405 Method Not Allowed", "GET only\n", "text/plain"
        elif path == "/healthz":
            stalled = self._stalled()
            if stalled:
                status, body = "503 Service Unavailable", "stalled\n" + "".join(f"{s}\n" for s in stalled)
            else:
                status, body = "200 OK", "ok\n"
            kind = "text/plain"
        elif path == "/metrics":
            status, kind = "200 OK", "text/plain; version=0.0.4"
            body = prometheus_text(self._stats_lines())
        else:
            status, body, kind = "404 Not Found", "try /healthz or /metrics\n", "text/plain"
        data = body.encode()
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with suppress(ConnectionError):
            writer.write(header if method == "HEAD" else header + data)
            await writer.drain()
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
