"""JetstreamSource against a real loopback websocket server speaking the v1 and v2 wires.

The server replays the recorded production Jetstream window (``expected_v1.jsonl``): as v1 JSON
text, and as v2 ``xrpc.v1.json`` envelopes compressed with Jetstream's real v2 dictionary.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
import pytest
import zstandard
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from botsky.config import DEFAULT_COLLECTIONS, SourceConfig
from botsky.events import Event, event_to_jetstream
from botsky.sources import open_source
from botsky.sources.jetstream import JetstreamSource
from tests.support import (
    CORPUS,
    EXPECTED,
    FIXED_JITTER,
    FakeSleep,
    FrameServer,
    frame_server,
    hold,
    take,
)

Query = dict[str, list[str]]
LINES = [line for line in (CORPUS / "expected_v1.jsonl").read_bytes().splitlines() if line]
DICTIONARY = (CORPUS / "subscribe_events_20260811.zdict").read_bytes()
DICTIONARY_PATH = "/xrpc/network.bsky.jetstream.getZstdDictionary"
REWIND_US = 5_000_000


def cursor_of(query: Query) -> int | None:
    values = query.get("cursor")
    return int(values[0]) if values else None


def jetstream(server: FrameServer, **kwargs: Any) -> JetstreamSource:
    kwargs.setdefault("backoff", FIXED_JITTER)
    kwargs.setdefault("version", "v1")
    kwargs.setdefault("collections", None)
    return JetstreamSource(server.url, sleep=FakeSleep(), rewind_s=5.0, **kwargs)


def iso(time_us: int) -> str:
    stamp = datetime.fromtimestamp(time_us // 1_000_000, UTC).replace(microsecond=time_us % 10**6)
    return stamp.isoformat().replace("+00:00", "Z")


def v2_message(event: Event, seq: int) -> bytes:
    """The v2 envelope Jetstream sends for ``event``."""
    payload: dict[str, Any] = {
        "$type": f"network.bsky.jetstream.subscribeEvents#{event.kind}",
        "did": event.did,
        "seq": seq,
        "time": iso(event.time_us),
        "witnessed_at": iso(event.time_us),
    }
    if event.kind == "commit":
        payload |= {
            "operation": event.operation,
            "collection": event.collection,
            "rkey": event.rkey,
            "rev": event.rev,
        }
        if event.record is not None:
            payload |= {"record": event.record, "cid": event.cid}
    else:
        upstream = orjson.loads(event_to_jetstream(event))[event.kind]
        payload[event.kind] = upstream | {"seq": seq, "time": iso(event.time_us)}
    return orjson.dumps({"$type": "message", "payload": payload})


def serve_dictionary(connection: ServerConnection, request: Request) -> Response | None:
    if request.path.startswith(DICTIONARY_PATH):
        headers = Headers([("Content-Type", "application/octet-stream")])
        headers["Content-Length"] = str(len(DICTIONARY))
        return Response(200, "OK", headers, DICTIONARY)
    return None


COMPRESSOR = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(DICTIONARY))


# --- v1 -----------------------------------------------------------------------------------


async def test_v1_yields_the_recorded_window() -> None:
    """Over v1, every JSON line of the recorded window comes out as parse_jetstream reads it."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        for line in LINES:
            await ws.send(line.decode())
        await hold(ws)

    async with frame_server(script) as server:
        source = jetstream(server)
        got = await take(source, len(EXPECTED))
        await source.aclose()
    assert got == EXPECTED
    assert server.paths == ["/subscribe"]
    assert cursor_of(server.queries[0]) is None
    assert "compress" not in server.queries[0]


async def test_v1_asks_for_the_wanted_collections() -> None:
    """wantedCollections and maxMessageSizeBytes go in the query; other collections are dropped."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        for line in LINES:  # a server ignoring the filter: the source filters again
            await ws.send(line.decode())
        await hold(ws)

    wanted = [e for e in EXPECTED if e.kind != "commit" or e.collection in DEFAULT_COLLECTIONS]
    async with frame_server(script) as server:
        source = jetstream(server, collections=DEFAULT_COLLECTIONS, max_frame_bytes=2048)
        got = await take(source, len(wanted))
        await source.aclose()
    assert got == wanted
    assert server.queries[0]["wantedCollections"] == sorted(DEFAULT_COLLECTIONS)
    assert server.queries[0]["maxMessageSizeBytes"] == ["2048"]


async def test_v1_reconnects_with_the_cursor_rewound_and_yields_nothing_twice() -> None:
    """After a drop the source asks for highest time_us - rewind and drops the replayed overlap."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        cursor = cursor_of(query)
        if n == 1:
            for line in LINES[:40]:
                await ws.send(line)
            ws.transport.close()
            return
        assert cursor is not None
        # Jetstream replays every event at or after the cursor, the already-seen ones too.
        for line, event in zip(LINES, EXPECTED, strict=True):
            if event.time_us >= cursor:
                await ws.send(line)
        await hold(ws)

    async with frame_server(script) as server:
        source = jetstream(server)
        got = await take(source, len(EXPECTED))
        await source.aclose()
    highest = max(e.time_us for e in EXPECTED[:40])
    assert cursor_of(server.queries[1]) == highest - REWIND_US
    assert sorted(got, key=repr) == sorted(EXPECTED, key=repr)
    assert len(set(map(repr, got))) == len(EXPECTED)
    # time_us is not monotonic: events older than the highest one seen still got through.
    assert any(b.time_us < a.time_us for a, b in itertools.pairwise(got))


async def test_v1_resumes_from_the_saved_cursor_minus_rewind() -> None:
    """The first dial asks for after_cursor - rewind_s."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await ws.send(LINES[0])
        await hold(ws)

    async with frame_server(script) as server:
        source = jetstream(server, after_cursor=EXPECTED[0].time_us)
        await take(source, 1)
        await source.aclose()
    assert cursor_of(server.queries[0]) == EXPECTED[0].time_us - REWIND_US


async def test_v1_garbage_is_skipped_and_counted() -> None:
    """Lines that are not JSON events are skipped and counted; the stream continues."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await ws.send(LINES[0])
        await ws.send("{not json")
        await ws.send('{"did": "did:plc:x", "kind": "commit"}')
        await ws.send(b"\x28\xb5\x2f\xfd binary without compression")
        await ws.send(LINES[1])
        await hold(ws)

    async with frame_server(script) as server:
        source = jetstream(server)
        got = await take(source, 2)
        await source.aclose()
    assert got == EXPECTED[:2]
    assert source.stats.skipped == 3
    assert source.stats.reconnects == 0


async def test_v1_compressed_with_a_given_dictionary() -> None:
    """With a dictionary, v1 asks for compress=true and decompresses binary messages."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        for line in LINES[:3]:
            await ws.send(COMPRESSOR.compress(line))
        await hold(ws)

    async with frame_server(script) as server:
        source = jetstream(server, dictionary=DICTIONARY)
        got = await take(source, 3)
        await source.aclose()
    assert got == EXPECTED[:3]
    assert server.queries[0]["compress"] == ["true"]


# --- v2 -----------------------------------------------------------------------------------


async def test_v2_compressed_stream_equals_the_recorded_window() -> None:
    """v2 fetches the dictionary, asks for it by id and decodes compressed envelopes."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        assert ws.subprotocol == "xrpc.v1.json"
        for seq, event in enumerate(EXPECTED, start=1):
            await ws.send(COMPRESSOR.compress(v2_message(event, seq)))
        await hold(ws)

    async with frame_server(
        script, process_request=serve_dictionary, subprotocols=["xrpc.v1.json"]
    ) as server:
        source = jetstream(server, version="v2", collections=["app.bsky.feed.post"])
        posts_and_more = [
            e for e in EXPECTED if e.kind != "commit" or e.collection == "app.bsky.feed.post"
        ]
        got = await take(source, len(posts_and_more))
        await source.aclose()
    assert got == posts_and_more
    assert server.paths == ["/xrpc/network.bsky.jetstream.subscribeEvents"]
    assert server.queries[0]["zstdDictionary"] == ["20260811"]
    assert server.queries[0]["collections"] == ["app.bsky.feed.post"]


async def test_v2_without_a_dictionary_runs_uncompressed() -> None:
    """When the dictionary cannot be fetched, v2 connects without zstdDictionary and reads text."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        for seq, event in enumerate(EXPECTED[:3], start=1):
            await ws.send(v2_message(event, seq).decode())
        await hold(ws)

    def no_dictionary(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith(DICTIONARY_PATH):
            return connection.respond(HTTPStatus.NOT_FOUND, "no\n")
        return None

    async with frame_server(
        script, process_request=no_dictionary, subprotocols=["xrpc.v1.json"]
    ) as server:
        source = jetstream(server, version="v2")
        got = await take(source, 3)
        await source.aclose()
    assert got == EXPECTED[:3]
    assert "zstdDictionary" not in server.queries[0]


async def test_v2_rejected_dictionary_is_fetched_again() -> None:
    """When the server refuses the dictionary id before the upgrade, the next dial refetches it."""
    fetches = 0
    dials = 0

    def rotate(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal fetches, dials
        if request.path.startswith(DICTIONARY_PATH):
            fetches += 1
            return serve_dictionary(connection, request)
        dials += 1
        if dials == 1:
            body = orjson.dumps({"error": "UnknownZstdDictionary", "message": "rotated"})
            return connection.respond(HTTPStatus.BAD_REQUEST, body.decode())
        return None

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await ws.send(COMPRESSOR.compress(v2_message(EXPECTED[0], 1)))
        await hold(ws)

    async with frame_server(
        script, process_request=rotate, subprotocols=["xrpc.v1.json"]
    ) as server:
        source = jetstream(server, version="v2")
        got = await take(source, 1)
        await source.aclose()
    assert got == EXPECTED[:1]
    assert fetches == 2
    assert source.stats.reconnects == 1


async def test_v2_consumer_too_slow_reconnects_with_the_rewound_cursor() -> None:
    """A v2 error frame makes the source redial from its highest time_us minus the rewind."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        if n == 1:
            for seq, event in enumerate(EXPECTED[:5], start=1):
                await ws.send(v2_message(event, seq))
            await ws.send(orjson.dumps({"$type": "error", "error": "ConsumerTooSlow"}))
            await hold(ws)
            return
        for seq, event in enumerate(EXPECTED[:10], start=1):  # replays the first five too
            await ws.send(v2_message(event, seq))
        await hold(ws)

    async with frame_server(script, subprotocols=["xrpc.v1.json"]) as server:
        source = jetstream(server, version="v2", compress=False)
        got = await take(source, 10)
        await source.aclose()
    assert got == EXPECTED[:10]
    assert cursor_of(server.queries[1]) == max(e.time_us for e in EXPECTED[:5]) - REWIND_US
    assert source.frame_counts["error"] == 1


async def test_v2_info_and_sync_frames_yield_no_events() -> None:
    """#info is logged and #sync counted; neither becomes an event."""
    info = {"$type": "network.bsky.jetstream.subscribeEvents#info", "name": "OutdatedCursor"}
    sync = {"$type": "network.bsky.jetstream.subscribeEvents#sync", "did": "did:plc:x", "seq": 9}

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await ws.send(orjson.dumps({"$type": "message", "payload": info}))
        await ws.send(orjson.dumps({"$type": "message", "payload": sync}))
        await ws.send(v2_message(EXPECTED[0], 10))
        await hold(ws)

    async with frame_server(script, subprotocols=["xrpc.v1.json"]) as server:
        source = jetstream(server, version="v2", compress=False)
        got = await take(source, 1)
        await source.aclose()
    assert got == EXPECTED[:1]
    assert source.frame_counts["info"] == 1
    assert source.frame_counts["sync"] == 1
    assert source.stats.skipped == 0


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_open_source_builds_a_jetstream_source(version: str) -> None:
    """open_source turns a jetstream config into a JetstreamSource of the configured version."""
    config = SourceConfig(
        kind="jetstream", url="ws://127.0.0.1:9", jetstream_version=version, rewind_s=2
    )
    source = open_source(config, after_cursor=10_000_000)
    assert isinstance(source, JetstreamSource)
    assert source.version == version
    assert source.name == "jetstream:ws://127.0.0.1:9"
    assert "cursor=8000000" in source._url()
    await source.aclose()
