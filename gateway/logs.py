"""structlog set-up: JSON lines for journald, a readable console on a terminal.

Standard-library loggers (pymodbus, asyncua, paho) go through the same
:class:`structlog.stdlib.ProcessorFormatter`, so every line has one shape. Their levels are set
here and nowhere else (:data:`LIBRARY_LEVELS`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from gateway.config.secrets import mask_event

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# syslog priorities (sd-daemon(3)): a "<N>" at the start of a line written to the journal's stdout
# stream sets that line's priority, so `journalctl -p warning` shows warnings and worse.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def connected_to_journal(stream: Any) -> bool:
    """Is ``stream`` the journal's stdout stream? ($JOURNAL_STREAM holds its device:inode.)"""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO in a test)
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


class _JournalPriority(logging.Formatter):
    """Prefixes each record with its syslog priority for journald (one record, one JSON line)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 3 if record.levelno > logging.WARNING else 6)
        return f"<{priority}>{self.inner.format(record)}"

#: The least severe level each library may log at; ``None`` follows the gateway's own level,
#: but never below warning (they are chatty at info).
#: asyncua and pymodbus log every lost connection or failed request, several times, at warning
#: and error level with tracebacks. The poller reports a device once when it goes and once when
#: it comes back, with context, so the libraries' own lines would only repeat that. asyncua is
#: off altogether: it logs a server's refusal of a channel as "fatal", with the raw message.
LIBRARY_LEVELS: dict[str, int | None] = {
    "asyncua": logging.CRITICAL + 1,
    "pymodbus": logging.CRITICAL,
    "paho": None,
    "urllib3": None,
    "influxdb_client": None,
}


def quiet_libraries(level: int = logging.INFO) -> None:
    """Set the third-party loggers' levels (:data:`LIBRARY_LEVELS`) for a gateway level of ``level``."""
    for name, fixed in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(fixed if fixed is not None else max(logging.WARNING, level))


def setup_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and the standard library once, at startup."""
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else structlog.processors.StackInfoRenderer(),
            mask_event,  # no password or token in any line, whoever (a library) put it there
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JournalPriority(formatter) if connected_to_journal(stream) else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    quiet_libraries(root.level)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger for a gateway module."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


# Also without setup_logging (tests, the simulators, a library user): every module that logs
# imports this one, so the libraries are quiet before they first run.
quiet_libraries()
