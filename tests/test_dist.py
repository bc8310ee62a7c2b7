"""The release artifact: `make dist` builds it, `install.sh` installs it with no network.

The tarball is built once for the module, unpacked, and installed into a temporary prefix with
``--no-system`` (no user, no units). Every pip call is forced offline: ``PIP_NO_INDEX`` and a
proxy that points at a closed port, so a download attempt fails instead of quietly succeeding.
The installed commands run from a folder outside the checkout, so nothing is imported from
the source tree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.live import Collector
from tests.services import free_port

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

OFFLINE = {
    "PIP_NO_INDEX": "1",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
}


def _version() -> str:
    import tomllib  # noqa: PLC0415 - only this module needs it

    return str(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])


class Installed:
    """An unpacked release and the prefix it was installed into."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.release = root / f"heat-gateway-{_version()}"
        self.prefix = root / "opt"
        self.etc = root / "etc"

    def install(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.release / "install.sh"), "--prefix", str(self.prefix), "--etc", str(self.etc), "--no-system"],
            env={**os.environ, **OFFLINE},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def command(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.prefix / ".venv" / "bin" / "heat-gateway"), *args],
            cwd=self.root,
            env={**os.environ, **OFFLINE},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        ["bash", str(REPO / "scripts" / "make-dist.sh"), str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHON_FOR_DIST": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    tarball = out / f"heat-gateway-{_version()}.tar.gz"
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        root = tmp_path_factory.mktemp("site-box")
        archive.extractall(root, filter="data")
    release = f"heat-gateway-{_version()}"
    for expected in ("install.sh", "config/site.example.yaml", "config/profiles/cdu.yaml", "deploy", "docs"):
        assert f"{release}/{expected}" in names, expected
    wheels = [n for n in names if n.endswith(".whl")]
    assert any("/heat_gateway-" in n for n in wheels)
    assert any("/pymodbus-" in n for n in wheels)
    assert any("/asyncua-" in n for n in wheels)
    box = Installed(root)
    result = box.install()
    assert result.returncode == 0, result.stdout + result.stderr
    return box


def test_installed_offline_and_checks_the_example_site(installed: Installed) -> None:
    version = installed.command("--version")
    assert version.returncode == 0
    assert _version() in version.stdout
    assert (installed.prefix / ".venv").is_symlink()
    check = installed.command("check", "-c", str(installed.etc / "site.yaml"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "cdu-1" in check.stdout


def test_installed_fast_scenario_runs_from_the_wheel(installed: Installed) -> None:
    # The bundled scenarios, profiles and plant come from the wheel's package data: a short
    # scenario proves it (the README test runs the whole reference day from the checkout).
    result = installed.command("simulate", "--scenario", "device-silent", "--fast", timeout_s=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "PASSED" in result.stdout


def test_installed_gateway_runs_against_a_simulator(installed: Installed, mosquitto) -> None:
    # A small site in the installed etc folder: the installed profiles (profiles_dir: profiles),
    # devices on free ports, the test's private broker.
    site = installed.etc / "e2e.yaml"
    site.write_text(
        "site: e2e\nprofiles_dir: profiles\nstate_dir: state\ndevices:\n"
        f"  - {{name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: {free_port()}, unit_id: 1, "
        "profile: cdu, poll_period_s: 0.5, timeout_s: 0.5}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, client_id: dist-{os.getpid()}}}\n"
        "influxdb: {url: 'http://127.0.0.1:9', org: heat, bucket: heat, token: t}\n",
        encoding="utf-8",
    )
    binary = str(installed.prefix / ".venv" / "bin" / "heat-gateway")
    env = {**os.environ, **OFFLINE}
    simulator = subprocess.Popen(
        [binary, "simulate", "-c", str(site)],
        cwd=installed.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    collector = Collector(mosquitto.port)
    gateway = subprocess.Popen(
        [binary, "run", "-c", str(site)],
        cwd=installed.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "tcs_supply_temp_c" not in collector.fields("cdu-1"):
            time.sleep(0.1)
        fields = collector.fields("cdu-1")
        assert 20.0 < fields["tcs_supply_temp_c"] < 60.0, fields
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=10) == 0
    finally:
        for process in (gateway, simulator):
            if process.poll() is None:
                process.kill()
            process.wait()
        if gateway.stdout:
            gateway.stdout.close()
        collector.close()


def test_upgrade_keeps_configuration_and_state(installed: Installed) -> None:
    site = installed.etc / "site.yaml"
    site.write_text(site.read_text(encoding="utf-8") + "# edited on site\n", encoding="utf-8")
    profile = installed.etc / "profiles" / "cdu.yaml"
    profile.write_text(profile.read_text(encoding="utf-8") + "# local change\n", encoding="utf-8")
    state = installed.root / "var" / "spool-marker"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("kept", encoding="utf-8")
    before = site.read_text(encoding="utf-8")

    result = installed.install()

    assert result.returncode == 0, result.stdout + result.stderr
    assert site.read_text(encoding="utf-8") == before
    assert profile.read_text(encoding="utf-8").endswith("# local change\n")
    assert (installed.etc / "profiles" / "cdu.yaml.new").exists()
    assert "kept your" in result.stdout
    assert state.read_text(encoding="utf-8") == "kept"
    assert installed.command("--version").returncode == 0
