"""Event sources: the ``Source`` contract and ``open_source``, the factory the app calls.

Backends are imported only when chosen, so a backend's dependencies load only when it runs.
Live sources (``jetstream``, ``relay``) reconnect forever with the configured backoff; their
cursors (Jetstream: ``time_us``; relay: ``seq``; replay: the byte offset of the next line) are
not interchangeable, so each keeps its own ``cursor_name``.
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
    if config.kind in ("jetstream", "relay") and not config.url:
        raise ConfigError(f"source.kind {config.kind!r} needs source.url")
    from botsky.sources._ws import Backoff

    backoff = Backoff(min_s=config.backoff_min_s, max_s=config.backoff_max_s)
    if config.kind == "relay":
        from botsky.sources.relay import RelaySource

        return RelaySource(
            config.url or "",
            name=config.cursor_name,
            after_cursor=after_cursor,
            collections=config.collections or None,
            max_frame_bytes=config.max_frame_bytes,
            backoff=backoff,
        )
    if config.kind == "jetstream":
        from botsky.sources.jetstream import JetstreamSource

        return JetstreamSource(
            config.url or "",
            version=config.jetstream_version,
            name=config.cursor_name,
            after_cursor=after_cursor,
            rewind_s=config.rewind_s,
            collections=config.collections or None,
            # v1 compression needs Jetstream's dictionary file, which the config cannot name.
            compress=config.compress and config.jetstream_version == "v2",
            max_frame_bytes=config.max_frame_bytes,
            backoff=backoff,
        )
    if config.kind == "sim":
        raise ConfigError(
            "source.kind 'sim' is the simulated network: run it with `botsky simulate`"
        )
    raise ConfigError(f"unknown source kind: {config.kind!r}")
