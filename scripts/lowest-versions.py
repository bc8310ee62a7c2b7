"""Print pip constraints that pin every runtime dependency to the lowest version pyproject allows.

``make test-min`` installs the project with these constraints and runs the unit tests, so a
floor in ``pyproject.toml`` is a tested claim, not a guess. A dependency without a ``>=`` floor
is an error: every dependency must say the oldest release we support.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)$")


def floors(pyproject: Path) -> list[str]:
    """``name==floor`` for each entry of ``[project] dependencies``."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = []
    for dep in deps:
        match = FLOOR.match(dep)
        if match is None:
            raise SystemExit(f"{pyproject}: cannot read dependency {dep!r}")
        name, spec = match.groups()
        lower = [part.strip()[2:].strip() for part in spec.split(",") if part.strip().startswith(">=")]
        if len(lower) != 1:
            raise SystemExit(f"{pyproject}: dependency {dep!r} needs exactly one '>=' floor")
        pins.append(f"{name}=={lower[0]}")
    return pins


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    print("\n".join(floors(root / "pyproject.toml")))
