"""Identity in memory: handles from ``#identity`` events and configuration, never resolved."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from botsky.events import Event
from botsky.syntax import is_valid_handle

__all__ = ["MemoryIdentity"]


class MemoryIdentity:
    """Handles from ``#identity`` events and a preloaded mapping; bounded by ``max_entries``."""

    STATE_VERSION: ClassVar[int] = 1  # of ``snapshot``'s value: bump when its keys change

    def __init__(self, known: Mapping[str, str] | None = None, max_entries: int = 2_000_000):
        self.max_entries = max_entries
        self._handles: dict[str, str] = {}
        for did, handle in (known or {}).items():
            self.set(did, handle)

    def set(self, did: str, handle: str | None) -> None:
        handle = handle.lower() if handle else None
        if handle is None or handle == "handle.invalid" or not is_valid_handle(handle):
            self._handles.pop(did, None)
            return
        self._handles.pop(did, None)  # re-insert so the newest entries survive the cap
        self._handles[did] = handle
        if len(self._handles) > self.max_entries:
            del self._handles[next(iter(self._handles))]

    def handle(self, did: str) -> str | None:
        return self._handles.get(did)

    def snapshot(self) -> dict[str, Any]:
        """``{"handles": {did: handle}}``, oldest entry first (the cap evicts in that order)."""
        return {"handles": dict(self._handles)}

    def restore(self, state: dict[str, Any]) -> None:
        """Know exactly the handles of ``state`` (a ``snapshot``), in its order."""
        self._handles = dict(state["handles"])

    def observe(self, event: Event) -> None:
        # An identity event without a handle means "re-resolve"; we cannot, so forget it.
        if event.kind == "identity":
            self.set(event.did, event.handle)

    async def run(self) -> None:
        """Nothing to resolve in the background."""

    def resolving(self) -> int:
        """Nothing is ever being resolved."""
        return 0

    async def drain(self) -> None:
        """Nothing to wait for."""

    async def aclose(self) -> None:
        """Nothing to release."""
