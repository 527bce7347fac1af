"""Shared fixtures: real SQLite ledger files, the real PostgreSQL server, the reference PDS.

Shared helpers that are not fixtures (stream times, scenarios, servers) are in ``support.py``.
Tests that need the reference PDS (the ``local_pds`` or ``pds_factory`` fixture) are marked
``slow`` here: starting and driving a PDS costs seconds, so ``scripts/test --fast`` leaves them
out.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import structlog
from hypothesis import settings
from psycopg import sql

from botsky.ledger.sqlite import SqliteLedger
from tests.pds.harness import LocalPds, PdsUnavailable, ensure_installed

# CI replays the same hypothesis examples every run (a red CI must mean a change broke
# something); local runs draw fresh ones and keep hunting for new failures.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the reference PDS ``slow``."""
    for item in items:
        if {"local_pds", "pds_factory"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Only warnings and errors from structlog (thousands of info lines slow a run down)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True, scope="session")
def _own_state_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Runs note themselves for `botsky scores` under XDG_STATE_HOME (botsky.lastrun): the
    tests' runs, subprocesses included, note theirs in a directory of their own."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    """A migrated SQLite ledger in a real file, closed after the test."""
    led = SqliteLedger(tmp_path / "ledger.sqlite3")
    await led.open()
    try:
        yield led
    finally:
        await led.close()


POSTGRES_DSN = os.environ.get(
    "BOTSKY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test server's DSN; skips locally but fails in CI when the server is unreachable."""
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at BOTSKY_TEST_POSTGRES_DSN is unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_DSN


@pytest.fixture
def postgres_schema_dsn(postgres_dsn: str) -> Iterator[str]:
    """A DSN whose search_path is a fresh schema, dropped after the test."""
    schema = f"botsky_test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    # A URL (what ledger.url takes), with the schema as libpq's ``options`` parameter.
    sep = "&" if "?" in postgres_dsn else "?"
    yield f"{postgres_dsn}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


# --- the reference PDS (Node), one per session --------------------------------------------

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
    """A PDS of the test's own, to restart, kill, freeze or rate-limit (the shared ``local_pds``
    must not be): ``pds_factory(rate_limits=True)``; stopped when the test ends."""
    started: list[LocalPds] = []

    def start(**kw: Any) -> LocalPds:
        if _failure is not None:
            _unavailable(_failure)
        try:
            pds = LocalPds.start(ensure_installed(), **kw)
        except PdsUnavailable as exc:
            _unavailable(str(exc))
            raise  # not reached: _unavailable skips or fails
        started.append(pds)
        return pds

    yield start
    for pds in started:
        pds.stop()
