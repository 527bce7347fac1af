"""Replay a recorded JSONL file of Jetstream v1 events (plain or zstd-compressed).

The stream ends at EOF, so a replay run terminates by itself. A line that is not a valid event
is skipped, counted in ``stats`` and logged with its 1-based line number; it never ends the
stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO, Final

import structlog
import zstandard

from botsky.errors import FrameError
from botsky.events import Event, parse_jetstream
from botsky.sources.base import SourceStats

__all__ = ["ReplaySource"]

log = structlog.get_logger(__name__)

_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_CHUNK: Final = 256 * 1024
# Yield to the loop this often. Reads are small local-file reads done inline: a read handed to
# a thread cannot be interrupted when the consumer is cancelled, and closing the zstd reader
# under it is unsafe.
_LINES_PER_YIELD: Final = 500
# zstd's --long mode uses windows up to 2 GiB; the default cap (128 MiB) would refuse those.
_MAX_WINDOW: Final = 1 << 31


class ReplaySource:
    """An async iterator of the events in ``path``; see the module docstring.

    ``after_cursor`` resumes a replay: events whose cursor is at or below it are passed over
    (each on its own, since Jetstream's ``time_us`` is not strictly ordered within a file).
    Iterating again continues where the last iteration stopped.
    """

    def __init__(
        self, path: Path, *, name: str | None = None, after_cursor: int | None = None
    ) -> None:
        self.path = Path(path)
        self.name = name or f"replay:{self.path.name}"
        self.stats = SourceStats()
        self.after_cursor = after_cursor
        self._file: BinaryIO | None = None
        self._events: AsyncGenerator[Event, None] | None = None

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._events is None:
            self._events = self._read()
        return self._events

    async def aclose(self) -> None:
        """Stop the iteration and close the file; safe to call more than once."""
        if self._events is not None:
            await self._events.aclose()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def _read(self) -> AsyncGenerator[Event, None]:
        self._file = _open(self.path)
        try:
            for number, line in enumerate(_lines(self._file), start=1):
                if number % _LINES_PER_YIELD == 0:
                    await asyncio.sleep(0)
                if not line.strip():
                    continue
                try:
                    event = parse_jetstream(line)
                except FrameError as exc:
                    self._skip(number, exc)
                    continue
                if self.after_cursor is not None and event.cursor <= self.after_cursor:
                    continue
                self.stats.events += 1
                yield event
        except zstandard.ZstdError as exc:
            # A truncated or corrupt archive (say, copied while still being written): keep the
            # events read so far and end the stream, as EOF would.
            self.stats.skip("corrupt_zstd")
            log.error("replay_read_failed", path=str(self.path), error=str(exc))
        finally:
            self._close_file()

    def _skip(self, number: int, exc: FrameError) -> None:
        message = str(exc)
        # The text before the first colon never holds the offending value ("unknown kind: 'x'"),
        # so it is a low-cardinality reason to count by.
        reason = message.split(":", 1)[0]
        self.stats.skip(reason)
        log.warning(
            "replay_line_skipped",
            source=self.name,
            line=number,
            reason=reason,
            error=message[:200],
        )


def _open(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing when it starts with zstd's magic."""
    raw = path.open("rb")
    try:
        compressed = raw.read(4) == _ZSTD_MAGIC
        raw.seek(0)
        if not compressed:
            return raw
        # read_across_frames: files appended to frame by frame would otherwise end silently
        # after their first frame.
        reader = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).stream_reader(
            raw, read_size=_CHUNK, read_across_frames=True, closefd=True
        )
    except BaseException:
        raw.close()
        raise
    return reader


def _lines(file: BinaryIO) -> Iterator[bytes]:
    """Split a binary stream into lines (without the newline), a chunk at a time.

    Reading ``_CHUNK`` bytes at a time bounds memory and how long one step blocks; the last
    line is returned even without a trailing newline.
    """
    tail = b""
    while chunk := file.read(_CHUNK):
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail
