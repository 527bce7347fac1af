"""Pytest fixtures for the reference PDS.

``local_pds``: one PLC + PDS per test session, shared by modules (rate limits off; never
restart it). ``pds_factory``: a test's own PDS (``pds_factory(rate_limits=True)``), to restart,
kill, freeze or rate-limit; stopped when the test ends. Import the fixtures into a test module
(``from tests.pds_fixtures import local_pds``). Locally the tests skip when Node/npm cannot
install or start the PDS; under ``CI=true`` they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.pds.harness import LocalPds, PdsUnavailable, ensure_installed

__all__ = ["local_pds", "pds_factory", "unique_name"]

_shared: LocalPds | None = None
_failure: str | None = None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the reference PDS is required in CI: {reason}")
    pytest.skip(f"the reference PDS is not available here: {reason}")


@pytest.fixture(scope="session")
def local_pds(request: pytest.FixtureRequest) -> LocalPds:
    """A running PLC + PDS on loopback, started once per session and stopped at its end."""
    global _shared, _failure
    if _failure is not None:
        _unavailable(_failure)
    if _shared is None:
        try:
            _shared = LocalPds.start(ensure_installed())
        except PdsUnavailable as exc:
            _failure = str(exc)
            _unavailable(_failure)
        request.session.config.add_cleanup(_stop_shared)
    assert _shared is not None
    return _shared


def _stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


@pytest.fixture
def pds_factory() -> Iterator[Callable[..., LocalPds]]:
    """Start a PDS of the test's own (keyword arguments go to ``LocalPds.start``)."""
    started: list[LocalPds] = []

    def start(**kw: object) -> LocalPds:
        if _failure is not None:
            _unavailable(_failure)
        try:
            pds = LocalPds.start(ensure_installed(), **kw)  # type: ignore[arg-type]
        except PdsUnavailable as exc:
            _unavailable(str(exc))
            raise  # not reached: _unavailable skips or fails
        started.append(pds)
        return pds

    yield start
    for pds in started:
        pds.stop()


def unique_name(prefix: str) -> str:
    """A fresh handle name (lowercase, no dots, long enough for ``.test``)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"
