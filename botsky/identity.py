"""Identity: DID → handle, for the ``@handle`` text of a mention.

A mention is only offered for a DID whose handle is known, because the reply text must show a
handle that resolves to exactly that DID. ``MemoryIdentity`` learns handles from ``#identity``
events and from configuration; the network resolver (PLC / DNS, verified both ways) is another
implementation of the same Protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from botsky.events import Event
from botsky.syntax import is_valid_handle

__all__ = ["Identity", "MemoryIdentity"]


@runtime_checkable
class Identity(Protocol):
    def handle(self, did: str) -> str | None:
        """The verified handle of ``did``, or None if unknown."""

    def observe(self, event: Event) -> None:
        """Learn from identity events."""


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
