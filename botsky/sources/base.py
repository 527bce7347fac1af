"""The source contract: an async iterator of ``Event``s that hides reconnection.

Finite sources (replay, simulation) end at EOF so ``botsky run`` terminates (arq's burst mode);
live sources reconnect forever. A frame that cannot be decoded is skipped and counted in
``stats``, never raised to the consumer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from botsky.events import Event

__all__ = ["Source", "SourceStats"]


@dataclass(slots=True)
class SourceStats:
    """Counters every source keeps; the app logs them in its summary."""

    events: int = 0
    skipped: int = 0
    reconnects: int = 0
    skip_reasons: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.skip_reasons[reason] += 1


@runtime_checkable
class Source(Protocol):
    name: str
    stats: SourceStats

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...
