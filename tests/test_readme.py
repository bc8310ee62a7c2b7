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


def test_the_mqtt_topics_table_is_one_table():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## MQTT topics and payloads", 1)[1].split("\n## ", 1)[0]
    table = section[section.index("| topic |") :].split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("|") for line in table)
    topics = [line.split("|")[1].strip() for line in table[2:]]
    assert "`heat/{site}/gateway/metrics`" in topics
    assert "`heat/{site}/control/metrics`" in topics, "a blank line splits the table in two"


# Spelled in pieces so that this file does not cite them itself.
OUTSIDE = ("MEASURED" + ".md", "DOMAIN" + ".md", "STYLE" + ".md", "../" + "shared/", "/work/" + "shared")


def test_no_file_cites_anything_outside_the_project():
    """The project carries its facts itself (docs/library-limits.md), with figures and dates."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    cited = []
    for name in files:
        path = REPO / name
        if name.startswith("tests/interop/") or not path.is_file() or path.suffix in (".png", ".der", ".pem"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        cited += [f"{name}: {word}" for word in OUTSIDE if word in text]
    assert cited == [], cited
