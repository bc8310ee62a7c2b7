"""Shared fixtures: paths, and the real Mosquitto and victoria-metrics the tests run against.

Services (``tests/services.py``):

- ``mosquitto`` / ``victoria``: one private instance each for the whole session. Do not stop
  them; keep tests apart by topic prefix / labels (e.g. a unique ``site``).
- ``fresh_mosquitto`` / ``fresh_victoria``: a new instance per test, for fault injection
  (``stop()``, ``kill()``, ``restart()``); gone after the test.

A missing binary fails the test with the install hint: nothing is skipped. Every test that
uses one of these fixtures, directly or through another fixture, gets the ``services`` marker,
so ``pytest -m "not services"`` runs the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# tests/ has no __init__.py, so pytest puts only tests/ itself on sys.path; test modules import
# helpers as `tests.services`, which needs the repository root. (A no-op once pyproject's
# pytest options say `pythonpath = ["."]`.)
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

from tests.services import (  # noqa: E402 - needs the path set just above
    BinaryNotFoundError,
    MosquittoServer,
    ServiceError,
    VictoriaMetricsServer,
)

# Fixtures that start a real server; a test needing any of them is marked `services`.
SERVICE_FIXTURES = frozenset({"mosquitto", "victoria", "fresh_mosquitto", "fresh_victoria"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that (transitively) uses a service fixture with ``services``."""
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top folder."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def profiles_dir(repo_root: Path) -> Path:
    """``config/profiles``: the device profiles shipped with the project."""
    return repo_root / "config" / "profiles"


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------

Server = TypeVar("Server", MosquittoServer, VictoriaMetricsServer)


def _serve(make: Callable[[], Server]) -> Iterator[Server]:
    """Create and start a server, hand it to the test, then stop it (whatever the test did)."""
    try:
        server = make()
    except BinaryNotFoundError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        server.start()
    except ServiceError as error:
        server.close()
        pytest.fail(f"{error}\n(log: {server.log_path})", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """The session's private Mosquitto broker; shared, so do not stop it."""
    workdir = tmp_path_factory.mktemp("mosquitto")
    yield from _serve(lambda: MosquittoServer(workdir=workdir))


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """The session's private victoria-metrics; shared, so do not stop it."""
    workdir = tmp_path_factory.mktemp("victoria")
    yield from _serve(lambda: VictoriaMetricsServer(workdir=workdir))


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A Mosquitto broker of this test's own, free to stop, kill and restart."""
    yield from _serve(lambda: MosquittoServer(workdir=tmp_path / "mosquitto"))


@pytest.fixture
def fresh_victoria(tmp_path: Path) -> Iterator[VictoriaMetricsServer]:
    """A victoria-metrics of this test's own, free to stop, kill and restart."""
    yield from _serve(lambda: VictoriaMetricsServer(workdir=tmp_path / "victoria"))
