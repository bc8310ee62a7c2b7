"""The secrets of the loaded site, so that no log line or error message prints one.

The configuration keeps them as ``SecretStr`` (shown as ``**********``), but a library's
exception text or a driver's error can still quote a password it was given. The loader
remembers every secret value here; :func:`mask` takes them out of any text (the log
processor and the CLI's error lines use it).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

__all__ = ["mask", "mask_event", "remember_secrets"]

_MIN_LENGTH = 3  # shorter "secrets" cannot be told apart from ordinary words and numbers
_secrets: list[str] = []


def remember_secrets(values: Iterable[str]) -> None:
    """Add secret values to mask from now on (longest first, so one containing another goes whole)."""
    merged = set(_secrets) | {value for value in values if len(value) >= _MIN_LENGTH}
    _secrets[:] = sorted(merged, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def mask_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask every string value of a log event (the exception text included).

    With secrets remembered, an exception still waiting to be rendered (the console format)
    is turned into its text here, so that its message is masked too.
    """
    if _secrets:
        if event.get("exc_info"):
            event = structlog.processors.format_exc_info(_logger, _method, event)
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = mask(value)
            elif isinstance(value, BaseException):
                event[key] = mask(repr(value))
    return event
