"""Shared fixtures: a real SQLite ledger file, stream times, and the corpus path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from botsky.ledger.sqlite import SqliteLedger

DATA = Path(__file__).parent / "data"
T0 = 1_783_175_888_000_000  # a stream time in July 2026, in microseconds
MIN = 60_000_000  # one minute in microseconds


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    """A migrated SQLite ledger in a real file, closed after the test."""
    led = SqliteLedger(tmp_path / "ledger.sqlite3")
    await led.open()
    try:
        yield led
    finally:
        await led.close()
