"""Event sources: the ``Source`` contract and ``open_source``, the factory the app calls.

Backends are imported only when chosen, so a backend's dependencies load only when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botsky.errors import ConfigError
from botsky.sources.base import Source, SourceStats

if TYPE_CHECKING:
    from botsky.config import SourceConfig

__all__ = ["Source", "SourceStats", "open_source"]


def open_source(config: SourceConfig, *, after_cursor: int | None = None) -> Source:
    """Build the source ``config`` describes, resuming after ``after_cursor`` when given.

    The source is named ``config.cursor_name``, so the cursor it reports is saved and loaded
    under the same key. Whether to resume at all (``config.resume``) is the caller's decision.
    """
    if config.kind == "replay":
        from botsky.sources.replay import ReplaySource

        if config.path is None:
            raise ConfigError("source.kind 'replay' needs source.path")
        return ReplaySource(config.path, name=config.cursor_name, after_cursor=after_cursor)
    raise ConfigError(f"unknown source kind: {config.kind!r}")
