"""The README stays true: its configuration reference is what the models say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_config_reference_matches_the_models():
    generated = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "config_reference.py")], capture_output=True, text=True, check=True
    ).stdout
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- config-reference:start -->\n(.*)<!-- config-reference:end -->", readme, re.DOTALL)
    assert match, "README lost its config-reference markers"
    assert match.group(1) == generated, "README is stale: run `make docs`"


def test_readme_starts_with_the_two_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```sh", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block
    assert "make test" in first_block
