"""The identity contract: DID → handle, for the ``@handle`` text of a mention.

A mention is only offered for a DID whose handle is known, because the reply text must show a
handle that resolves to exactly that DID. Backends: ``memory`` (handles from ``#identity``
events and configuration) and ``resolving`` (PLC / DNS, verified both ways, in the background).
Every backend has the same lifecycle, so the runtime never asks which one it holds: ``run()``
is started as a task and cancelled at the end (a backend with no background work returns at
once), ``aclose()`` releases what it holds.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from botsky.events import Event

__all__ = ["Identity"]


@runtime_checkable
class Identity(Protocol):
    def handle(self, did: str) -> str | None:
        """The verified handle of ``did``, or None if unknown. Synchronous: cache only."""

    def observe(self, event: Event) -> None:
        """Learn from identity events."""

    async def run(self) -> None:
        """Background work (resolution) until cancelled; returns at once if there is none."""

    def resolving(self) -> int:
        """How many DIDs are queued or being resolved right now (0 without resolution)."""

    async def drain(self) -> None:
        """Wait until every queued DID is resolved (needs ``run`` running); at once if none."""

    async def aclose(self) -> None:
        """Release clients and cancel work in flight. Idempotent."""
