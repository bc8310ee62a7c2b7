"""Rewrite the README's configuration reference from the models (`make docs`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

reference = subprocess.run(
    [sys.executable, str(ROOT / "scripts" / "config_reference.py")], capture_output=True, text=True, check=True
).stdout
readme = ROOT / "README.md"
text = readme.read_text(encoding="utf-8")
text = re.sub(
    r"<!-- config-reference:start -->\n.*<!-- config-reference:end -->",
    lambda _: f"<!-- config-reference:start -->\n{reference}<!-- config-reference:end -->",
    text,
    flags=re.DOTALL,
)
readme.write_text(text, encoding="utf-8")
print(f"updated {readme}")
