"""``ReplaySource``: a JSONL file of Jetstream v1 events replayed as a finite stream."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import structlog
import zstandard

from botsky.config import SourceConfig
from botsky.configload import load_config, resolve_secrets
from botsky.errors import ConfigError
from botsky.events import Event
from botsky.sources import Source, open_source
from botsky.sources import replay as replay_module
from botsky.sources.replay import LEGACY_CURSOR_MIN, ReplaySource
from botsky.wiring import build_app

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


# --- resuming by position (issue 16) ---------------------------------------------------------


def _zst(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "copy.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    return path


def test_the_corpus_time_us_is_not_monotonic() -> None:
    """The premise: recorded Jetstream time_us steps backwards, so it cannot be a cursor."""
    times = [json.loads(line)["time_us"] for line in GOOD]
    assert any(b < a for a, b in pairwise(times))


async def test_cursors_are_line_end_offsets_strictly_increasing() -> None:
    """Each event's cursor is where the next line starts; they increase in read order."""
    events = await collect(ReplaySource(CORPUS))
    ends = [sum(len(line) + 1 for line in GOOD[: i + 1]) for i in range(len(GOOD))]
    assert [e.cursor for e in events] == ends
    assert ends[-1] == CORPUS.stat().st_size


@pytest.mark.parametrize("compressed", [False, True])
async def test_resume_after_any_event_continues_at_the_next_line(
    tmp_path: Path, compressed: bool
) -> None:
    """For every k, resuming at event k's cursor yields exactly events k+1.. (plain and .zst),
    in a file with blank and malformed lines between the events."""
    lines: list[bytes] = []
    for i, good in enumerate(GOOD):
        lines += [good, b"", b"garbage"] if i % 7 == 3 else [good]
    data = b"\n".join(lines) + b"\n"
    path = _zst(tmp_path, data) if compressed else tmp_path / "dirty.jsonl"
    if not compressed:
        path.write_bytes(data)
    with structlog.testing.capture_logs():
        everything = await collect(ReplaySource(path))
        assert len(everything) == 152
        for k, event in enumerate(everything):
            resumed = await collect(ReplaySource(path, after_cursor=event.cursor))
            assert resumed == everything[k + 1 :], k


async def test_a_stopped_replay_resumes_without_loss_or_repeat() -> None:
    """Stopping after 7 events and resuming at the last cursor reads each event exactly once."""
    source = ReplaySource(CORPUS)
    first: list[Event] = []
    async for event in source:
        first.append(event)
        if len(first) == 7:
            break
    await source.aclose()
    rest = await collect(ReplaySource(CORPUS, after_cursor=first[-1].cursor))
    assert first + rest == await collect(ReplaySource(CORPUS))


async def test_skipped_lines_keep_their_line_numbers_after_a_resume(tmp_path: Path) -> None:
    """A malformed line after the resume point is logged with its line number in the file."""
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(b"\n".join([*GOOD[:5], b"garbage", *GOOD[5:10]]) + b"\n")
    events = await collect(ReplaySource(path))
    with structlog.testing.capture_logs() as logs:
        resumed = await collect(ReplaySource(path, after_cursor=events[2].cursor))
    assert resumed == events[3:]
    assert [e["line"] for e in logs] == [6]


@pytest.mark.parametrize("compressed", [False, True])
async def test_a_cursor_off_a_line_start_or_past_the_end_is_refused(
    tmp_path: Path, compressed: bool
) -> None:
    """A saved position inside a line or past the end (the file changed) is a clear error."""
    path = _zst(tmp_path, CORPUS.read_bytes()) if compressed else CORPUS
    size = CORPUS.stat().st_size
    for cursor, problem in ((len(GOOD[0]) - 3, "not at the start"), (size + 10, "past the end")):
        with pytest.raises(ConfigError, match=problem) as err:
            await collect(ReplaySource(path, after_cursor=cursor))
        assert "source.resume: false" in str(err.value)
    assert await collect(ReplaySource(path, after_cursor=size)) == []


async def test_the_end_of_a_last_line_without_newline_is_a_valid_cursor(tmp_path: Path) -> None:
    """A file not ending in a newline: the last event's cursor resumes to an empty stream."""
    path = tmp_path / "tail.jsonl"
    path.write_bytes(b"\n".join(GOOD[:3]))
    events = await collect(ReplaySource(path))
    assert events[-1].cursor == path.stat().st_size
    assert await collect(ReplaySource(path, after_cursor=events[-1].cursor)) == []


async def test_an_older_versions_time_us_cursor_resumes_after_its_line() -> None:
    """A cursor saved as time_us (older botsky) resumes after the line carrying that time."""
    everything = await collect(ReplaySource(CORPUS))
    # Line 8 steps back in time: by time, resuming after line 7 would skip or repeat.
    assert everything[7].time_us < everything[6].time_us
    with structlog.testing.capture_logs() as logs:
        resumed = await collect(ReplaySource(CORPUS, after_cursor=everything[6].time_us))
    assert resumed == everything[7:]
    assert [e["event"] for e in logs] == ["replay_cursor_converted"]


async def test_an_ambiguous_time_us_cursor_repeats_rather_than_skips(tmp_path: Path) -> None:
    """Two lines with one time_us: an old cursor resumes after the first (the second repeats)."""
    second = json.loads(GOOD[3])
    second["time_us"] = json.loads(GOOD[1])["time_us"]
    path = tmp_path / "same-time.jsonl"
    path.write_bytes(b"\n".join([*GOOD[:3], json.dumps(second).encode(), *GOOD[4:8]]))
    everything = await collect(ReplaySource(path))
    resumed = await collect(ReplaySource(path, after_cursor=everything[1].time_us))
    assert resumed == everything[2:]


async def test_an_unknown_time_us_cursor_is_refused() -> None:
    """An old time_us cursor that no line carries names the fix."""
    with pytest.raises(ConfigError, match=r"time_us from an older botsky.*source\.resume: false"):
        await collect(ReplaySource(CORPUS, after_cursor=LEGACY_CURSOR_MIN + 1))


async def test_the_app_saves_the_position_and_resumes_a_grown_file(tmp_path: Path) -> None:
    """`source.resume: true` (no warm-start window): a run over the first 40 lines saves the
    position; after the file grows, the next run reads exactly the new lines. (With the
    window, it reads some before them too, observe-only: tests/test_restart.py.)"""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(GOOD[:40]) + b"\n")
    (tmp_path / "bots.yaml").write_text(
        "bots:\n  - {name: s, persona: p, provider: template, model: t, picker: similar,\n"
        "     account: {handle: s.test}}\n"
    )
    (tmp_path / "botsky.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\nsource: {{kind: replay, path: events.jsonl, "
        "resume: true, warm_start_s: 0}\nlogging: {file: null}\n"
    )
    loaded = load_config(tmp_path / "botsky.yaml", environ={})
    secrets = resolve_secrets(loaded, environ={}, live=False)
    seen: list[int] = []
    for _ in range(2):
        app = await build_app(loaded, secrets)
        try:
            with structlog.testing.capture_logs():
                summary = await app.run()
        finally:
            await app.aclose()
        seen.append(summary.events)
        assert summary.cursor == path.stat().st_size
        with path.open("ab") as fh:
            fh.write(b"\n".join(GOOD[40:]) + b"\n")
    assert seen == [40, 112]
