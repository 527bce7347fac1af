"""Replay a recorded JSONL file of Jetstream v1 events (plain or zstd-compressed).

The stream ends at EOF, so a replay run terminates by itself. A line that is not a valid event
is skipped, counted in ``stats`` and logged with its 1-based line number; it never ends the
stream.

**Cursor: a position, not a time.** Jetstream's ``time_us`` is not monotonic (the recorded
corpus steps back by up to 32 ms; live streams by more), so "resume after the last ``time_us``"
skips some events and repeats others. An event's ``cursor`` is instead the byte offset, in the
decompressed stream, where the line after it starts: strictly increasing in read order, so
cursors compare like positions, and resuming at it continues exactly at the next line, for
plain and ``.zst`` files alike (a ``.zst`` file is decompressed from the top up to it, as zstd
frames cannot be entered in the middle; the prefix is read in chunks, about 1 GB/s).

A saved cursor that does not fall on a line start, or lies past the end, is refused
(``ConfigError``: the file changed since the cursor was saved). Cursors saved by older botsky
versions were ``time_us`` values; any cursor from 10^15 up is read as one (a byte offset that
large would be a petabyte file, a ``time_us`` that small is before 2001-09-09): the replay
resumes after the first line carrying exactly that ``time_us`` (the event the old version
handled last; should two lines carry it, the later one is replayed again rather than skipped),
and a ``time_us`` no line carries is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO, Final

import structlog
import zstandard

from botsky.errors import ConfigError, FrameError
from botsky.events import Event, parse_jetstream
from botsky.sources.base import SourceStats

__all__ = ["LEGACY_CURSOR_MIN", "ReplaySource"]

log = structlog.get_logger(__name__)

_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_CHUNK: Final = 256 * 1024
# Yield to the loop this often. Reads are small local-file reads done inline: a read handed to
# a thread cannot be interrupted when the consumer is cancelled, and closing the zstd reader
# under it is unsafe.
_LINES_PER_YIELD: Final = 500
# zstd's --long mode uses windows up to 2 GiB; the default cap (128 MiB) would refuse those.
_MAX_WINDOW: Final = 1 << 31
# Cursors from here up are time_us values saved by older versions (see the module docstring).
LEGACY_CURSOR_MIN: Final = 10**15


class ReplaySource:
    """An async iterator of the events in ``path``; see the module docstring.

    ``after_cursor`` resumes a replay at that position: the first event is the one on the line
    that starts there (an older version's ``time_us`` cursor is converted, see above).
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
        try:
            self._file = _open(self.path)
        except OSError as exc:
            raise ConfigError(
                f"source {self.name}: cannot read {self.path}: {exc.strerror or exc}"
            ) from exc
        try:
            after = self.after_cursor
            if after is not None and after >= LEGACY_CURSOR_MIN:
                after = self._position_of_time(after)
            start = after or 0
            number = self._seek(self._file, start)
            for line, offset in _lines(self._file, start):
                number += 1
                if number % _LINES_PER_YIELD == 0:
                    await asyncio.sleep(0)
                if not line.strip():
                    continue
                try:
                    event = parse_jetstream(line)
                except FrameError as exc:
                    self._skip(number, exc)
                    continue
                # The builder sets Jetstream's time_us; a replay resumes by position instead.
                object.__setattr__(event, "cursor", offset)
                self.stats.events += 1
                yield event
        except zstandard.ZstdError as exc:
            # A truncated or corrupt archive (say, copied while still being written): keep the
            # events read so far and end the stream, as EOF would.
            self.stats.skip("corrupt_zstd")
            log.error("replay_read_failed", path=str(self.path), error=str(exc))
        finally:
            self._close_file()

    @staticmethod
    def position_before(event: Event, previous: int | None) -> int:
        """The position that reads ``event`` again: that of the event read before it (the
        start of the file for the first; see ``botsky.watermark``)."""
        return previous if previous is not None else 0

    def _seek(self, file: BinaryIO, position: int) -> int:
        """Read past the first ``position`` bytes; the number of lines they hold.

        The byte before ``position`` must end a line (or ``position`` be the end of the file).
        """
        if position == 0:
            return 0
        lines = done = 0
        last = b""
        while done < position:
            chunk = file.read(min(_CHUNK, position - done))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            done += len(chunk)
            last = chunk[-1:]
        if done < position:
            problem = f"lies past the end of the file ({done} bytes)"
        elif last == b"\n" or not file.read(1):  # a line start, or the end of the last line
            return lines
        else:
            problem = "is not at the start of a line"
        raise ConfigError(
            f"source {self.name}: the saved cursor {position} (a byte offset) {problem} of "
            f"{self.path}: the file changed since it was saved; set source.resume: false to "
            "replay it from the top"
        )

    def _position_of_time(self, time_us: int) -> int:
        """The position after the first line whose event has ``time_us`` (a legacy cursor)."""
        file = _open(self.path)
        try:
            for line, offset in _lines(file, 0):
                if b"time_us" not in line:
                    continue
                try:
                    event = parse_jetstream(line)
                except FrameError:
                    continue
                if event.time_us == time_us:
                    log.info(
                        "replay_cursor_converted", source=self.name, time_us=time_us, offset=offset
                    )
                    return offset
        except zstandard.ZstdError:
            pass
        finally:
            file.close()
        raise ConfigError(
            f"source {self.name}: the saved cursor {time_us} is a time_us from an older botsky "
            f"and no event of {self.path} has it: the file changed since it was saved; set "
            "source.resume: false to replay it from the top"
        )

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


def _lines(file: BinaryIO, offset: int) -> Iterator[tuple[bytes, int]]:
    """Split a binary stream into lines (without the newline), a chunk at a time.

    Each line comes with the offset where the next one starts (``offset`` being where the
    stream starts). Reading ``_CHUNK`` bytes at a time bounds memory and how long one step
    blocks; the last line is returned even without a trailing newline.
    """
    tail = b""
    while chunk := file.read(_CHUNK):
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            offset += len(line) + 1
            yield line, offset
    if tail:
        yield tail, offset + len(tail)
