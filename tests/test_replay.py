"""``ReplaySource``: a JSONL file of Jetstream v1 events replayed as a finite stream."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
import structlog
import zstandard

from botsky.config import SourceConfig
from botsky.events import Event
from botsky.sources import Source, open_source
from botsky.sources import replay as replay_module
from botsky.sources.replay import ReplaySource

CORPUS = Path(__file__).parent / "data" / "jetstream" / "expected_v1.jsonl"
MANIFEST = json.loads((CORPUS.parent / "manifest.json").read_text())
GOOD = CORPUS.read_bytes().splitlines()


async def collect(source: ReplaySource) -> list[Event]:
    return [event async for event in source]


def counts(events: list[Event]) -> dict[str, int]:
    by: Counter[str] = Counter(e.operation or e.kind for e in events)
    return {k: by[k] for k in ("create", "update", "delete", "identity", "account")}


def expected_counts() -> dict[str, int]:
    return {
        "create": MANIFEST["creates"],
        "update": MANIFEST["updates"],
        "delete": MANIFEST["deletes"],
        "identity": MANIFEST["identity"],
        "account": MANIFEST["account"],
    }


async def test_corpus_event_count_matches_manifest() -> None:
    """Replaying the corpus yields exactly the manifest's number of v1 events."""
    source = ReplaySource(CORPUS)
    events = await collect(source)
    assert len(events) == MANIFEST["v1_events"] == 152
    assert source.stats.events == 152
    assert source.stats.skipped == 0


async def test_corpus_counts_by_kind_and_operation() -> None:
    """Counts by operation and kind equal the manifest's (creates, updates, deletes, ...)."""
    events = await collect(ReplaySource(CORPUS))
    assert counts(events) == expected_counts()
    assert {e.did for e in events if e.kind == "commit"} == set(MANIFEST["commit_dids"])


async def test_zstd_file_replays_the_same_events(tmp_path: Path) -> None:
    """A zstd-compressed copy yields the same events as the plain file."""
    path = tmp_path / "corpus.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(CORPUS.read_bytes()))
    source = ReplaySource(path)
    events = await collect(source)
    assert events == await collect(ReplaySource(CORPUS))
    assert counts(events) == expected_counts()
    assert source.name == "replay:corpus.jsonl.zst"


async def test_zstd_file_of_several_frames(tmp_path: Path) -> None:
    """A zstd file appended to frame by frame is read to its end, not just its first frame."""
    data = CORPUS.read_bytes()
    half = data.index(b"\n", len(data) // 2) + 1
    compressor = zstandard.ZstdCompressor()
    path = tmp_path / "two-frames.jsonl.zst"
    path.write_bytes(compressor.compress(data[:half]) + compressor.compress(data[half:]))
    assert len(await collect(ReplaySource(path))) == 152


async def test_lines_split_across_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Lines cut by chunk boundaries are put back together, plain and compressed."""
    monkeypatch.setattr(replay_module, "_CHUNK", 97)
    path = tmp_path / "corpus.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(CORPUS.read_bytes()))
    assert len(await collect(ReplaySource(CORPUS))) == 152
    assert len(await collect(ReplaySource(path))) == 152


MALFORMED = [
    (b"garbage, not json", "invalid JSON"),
    (b'{"did":"did:plc:abc","time_us":17831758880', "invalid JSON"),
    (b'{"did":"did:plc:abc","time_us":1,"kind":"tombstone"}', "unknown kind"),
    (b'{"time_us":1,"kind":"identity","identity":{"handle":"a.b.c"}}', "missing or invalid did"),
    (b'["did:plc:abc", 1, "commit"]', "event is not a JSON object"),
]


async def test_malformed_lines_skipped_counted_and_logged(tmp_path: Path) -> None:
    """Malformed lines are skipped, counted and logged with their line number; good ones arrive."""
    lines: list[bytes] = []
    expected_skips: list[tuple[int, str]] = []
    for i, good in enumerate(GOOD):
        lines.append(good)
        if i % 30 == 0 and i // 30 < len(MALFORMED):
            bad, reason = MALFORMED[i // 30]
            lines.append(bad)
            expected_skips.append((len(lines), reason))
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    source = ReplaySource(path)
    with structlog.testing.capture_logs() as logs:
        events = await collect(source)

    assert len(events) == 152
    assert counts(events) == expected_counts()
    skipped = [(e["line"], e["reason"]) for e in logs if e["event"] == "replay_line_skipped"]
    assert skipped == expected_skips
    assert all(e["log_level"] == "warning" for e in logs)
    assert source.stats.skipped == len(MALFORMED)
    assert source.stats.skip_reasons == Counter(reason for _, reason in MALFORMED)


async def test_bad_line_as_last_line_without_newline(tmp_path: Path) -> None:
    """A malformed final line without a newline is still seen, skipped and numbered."""
    path = tmp_path / "tail.jsonl"
    path.write_bytes(GOOD[0] + b"\n" + GOOD[1] + b"\n" + b'{"did":')
    source = ReplaySource(path)
    with structlog.testing.capture_logs() as logs:
        events = await collect(source)
    assert len(events) == 2
    assert [e["line"] for e in logs] == [3]


async def test_wrong_commit_shape_is_skipped(tmp_path: Path) -> None:
    """A commit without a record, or with an unknown operation, is skipped like garbage."""
    bad = [
        b'{"did":"did:plc:abc","time_us":5,"kind":"commit","commit":{"operation":"create",'
        b'"collection":"app.bsky.feed.post","rkey":"3k"}}',
        b'{"did":"did:plc:abc","time_us":5,"kind":"commit","commit":{"operation":"upsert",'
        b'"collection":"app.bsky.feed.post","rkey":"3k","record":{}}}',
    ]
    path = tmp_path / "shape.jsonl"
    path.write_bytes(b"\n".join([*bad, GOOD[0]]))
    source = ReplaySource(path)
    with structlog.testing.capture_logs():
        events = await collect(source)
    assert len(events) == 1
    assert source.stats.skip_reasons == {"create without a record": 1, "unknown operation": 1}


async def test_blank_lines_ignored_silently(tmp_path: Path) -> None:
    """Blank and whitespace-only lines (and CRLF endings) are neither events nor skips."""
    body = b"\n\n".join(GOOD[:10]) + b"\n   \n\t\n" + b"\r\n".join(GOOD[10:20]) + b"\r\n\n"
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n" + body)
    source = ReplaySource(path)
    with structlog.testing.capture_logs() as logs:
        events = await collect(source)
    assert len(events) == 20
    assert logs == []
    assert source.stats.skipped == 0


async def test_after_cursor_resumes() -> None:
    """Events at or before ``after_cursor`` are passed over; the rest arrive in file order."""
    everything = await collect(ReplaySource(CORPUS))
    cursor = sorted(e.cursor for e in everything)[100]
    source = ReplaySource(CORPUS, after_cursor=cursor)
    resumed = await collect(source)
    assert resumed == [e for e in everything if e.cursor > cursor]
    assert len(resumed) == 51
    assert source.stats.events == 51
    assert source.stats.skipped == 0


async def test_after_last_cursor_yields_nothing() -> None:
    """Resuming after the newest cursor yields no events and ends."""
    last = max(e.cursor for e in await collect(ReplaySource(CORPUS)))
    assert await collect(ReplaySource(CORPUS, after_cursor=last)) == []


async def test_empty_file_ends_at_once(tmp_path: Path) -> None:
    """An empty file is an empty stream."""
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert await collect(ReplaySource(path)) == []


async def test_corrupt_zstd_ends_stream_and_counts(tmp_path: Path) -> None:
    """A corrupt zstd archive ends the stream with an error log instead of raising."""
    data = zstandard.ZstdCompressor().compress(CORPUS.read_bytes())
    path = tmp_path / "corrupt.zst"
    path.write_bytes(data[:20] + bytes(200) + data[220:])
    source = ReplaySource(path)
    with structlog.testing.capture_logs() as logs:
        await collect(source)
    assert source.stats.skip_reasons == {"corrupt_zstd": 1}
    assert [e["event"] for e in logs] == ["replay_read_failed"]


async def test_aclose_stops_iteration_and_closes_file() -> None:
    """``aclose`` mid-stream closes the file, and the stream then ends."""
    source = ReplaySource(CORPUS)
    iterator = aiter(source)
    await anext(iterator)
    assert source._file is not None
    await source.aclose()
    assert source._file is None
    assert [e async for e in source] == []
    await source.aclose()


async def test_iterating_again_continues() -> None:
    """A second ``async for`` continues where the first one stopped."""
    source = ReplaySource(CORPUS)
    first = []
    async for event in source:
        first.append(event)
        if len(first) == 10:
            break
    rest = [e async for e in source]
    assert len(first) + len(rest) == 152
    await source.aclose()


async def test_replay_lets_other_tasks_run(tmp_path: Path) -> None:
    """A long replay yields to the event loop, so other tasks make progress meanwhile."""
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"\n".join(GOOD * 20))
    ticks = 0
    seen_at: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    async for _ in ReplaySource(path):
        seen_at.append(ticks)
    task.cancel()
    assert len(seen_at) == 152 * 20
    assert seen_at[-1] - seen_at[0] >= 5


def test_replay_source_is_a_source() -> None:
    """``ReplaySource`` satisfies the ``Source`` protocol and names itself after the file."""
    source = ReplaySource(CORPUS)
    assert isinstance(source, Source)
    assert source.name == "replay:expected_v1.jsonl"
    assert ReplaySource(CORPUS, name="mine").name == "mine"


async def test_open_source_builds_a_replay() -> None:
    """The factory builds a replay named after the config's cursor key, resuming when asked."""
    config = SourceConfig(kind="replay", path=CORPUS)
    source = open_source(config, after_cursor=0)
    assert isinstance(source, ReplaySource)
    assert source.name == config.cursor_name
    assert source.after_cursor == 0
    assert len([e async for e in source]) == 152
    named = open_source(SourceConfig(kind="replay", path=CORPUS, name="exp-1"))
    assert named.name == "exp-1"
