"""systemd credentials (``LoadCredential=``) as the values of ``${NAME}`` in the site file.

The shipped units pass secrets as credentials: systemd reads ``/etc/heat-gateway/credentials/NAME``
as root and hands the service a private, read-only copy in ``$CREDENTIALS_DIRECTORY`` that no
other process sees and that never enters the environment (so no child process, crash dump or
``/proc/PID/environ`` carries it). The site file names it exactly as an environment variable:
``password: ${MQTT_PASSWORD}``. A credential wins over an environment variable of the same name;
outside systemd (``heat-gateway check`` in a shell) the environment is used as before.
"""

from __future__ import annotations

import os
from pathlib import Path

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class CredentialError(Exception):
    """A credential file exists but cannot be used (unreadable, not UTF-8)."""


def read_credential(name: str) -> str | None:
    """The credential ``name`` without its trailing newline, or ``None`` when there is none."""
    directory = os.environ.get(CREDENTIALS_ENV)
    if not directory:
        return None
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"credential {name} ({path}) cannot be read: {exc.strerror}"
        raise CredentialError(msg) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        msg = f"credential {name} ({path}) is not valid UTF-8"
        raise CredentialError(msg) from None
    # `echo secret > file` adds one newline, which is not part of the secret
    return text.removesuffix("\n")
