"""RelaySource and RelayDecoder: real recorded subscribeRepos frames against production Jetstream.

``frames.bin.zst`` and ``expected_v1.jsonl`` are the same window of the Bluesky network, recorded
from the main relay and from Jetstream v1 at the same time. Decoding the frames must give, event
for event and in order, what Jetstream served. ``time_us`` legitimately differs (the frame's
commit time here, Jetstream's receive time there), and so does ``cursor`` (seq vs time_us).
"""

from __future__ import annotations

import json

import libipld
import pytest
from websockets.asyncio.server import ServerConnection

from botsky.config import DEFAULT_COLLECTIONS, SourceConfig
from botsky.events import Event
from botsky.sources import open_source
from botsky.sources.relay import (
    RelayDecoder,
    RelaySource,
    _seek_block,
    _walk_blocks,
    subscribe_url,
)
from tests.support import (
    CORPUS,
    EXPECTED,
    FRAMES,
    frame_server,
    hold,
    relay,
    seq_of,
    take,
)

MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
COMPARED = ("did", "kind", "operation", "collection", "rkey", "cid", "record", "rev")
COMPARED += ("handle", "active", "status")


def assert_same(got: list[Event], expected: list[Event]) -> None:
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        for name in COMPARED:
            assert getattr(a, name) == getattr(b, name), (i, name)


# --- decoding ---------------------------------------------------------------------------


def test_corpus_is_what_the_manifest_says() -> None:
    """The recorded window has the manifest's frame count, seq range and event count."""
    assert len(FRAMES) == MANIFEST["frames"] == 150
    assert seq_of(FRAMES[0]) == MANIFEST["seq_first"]
    assert seq_of(FRAMES[-1]) == MANIFEST["seq_last"]
    assert len(EXPECTED) == MANIFEST["v1_events"] == 152


def test_decoded_frames_equal_production_jetstream_in_order() -> None:
    """Every frame decodes to exactly the events production Jetstream served, in order."""
    decoder = RelayDecoder()
    got = [event for frame in FRAMES for event in decoder.decode(frame)[2]]
    assert_same(got, EXPECTED)
    assert decoder.frame_counts == {
        "#commit": MANIFEST["commit_frames"],
        "#identity": MANIFEST["identity"],
        "#account": MANIFEST["account"],
    }


def test_decoded_operations_match_the_manifest_counts() -> None:
    """Creates, updates, deletes, identity and account events come out in the manifest's numbers."""
    decoder = RelayDecoder()
    got = [event for frame in FRAMES for event in decoder.decode(frame)[2]]
    ops = [e.operation for e in got if e.kind == "commit"]
    assert ops.count("create") == MANIFEST["creates"]
    assert ops.count("update") == MANIFEST["updates"]
    assert ops.count("delete") == MANIFEST["deletes"]
    assert sum(e.kind == "identity" for e in got) == MANIFEST["identity"]
    assert sum(e.kind == "account" for e in got) == MANIFEST["account"]
    assert {e.did for e in got if e.kind == "commit"} == set(MANIFEST["commit_dids"])


def test_events_match_by_key_and_only_time_differs() -> None:
    """Matched by (did, kind, collection, rkey, operation), events differ only in time_us."""
    expected = {(e.did, e.kind, e.collection, e.rkey, e.operation): e for e in EXPECTED}
    decoder = RelayDecoder()
    got = [event for frame in FRAMES for event in decoder.decode(frame)[2]]
    assert len(expected) == len(got)
    for event in got:
        twin = expected[(event.did, event.kind, event.collection, event.rkey, event.operation)]
        assert all(getattr(event, name) == getattr(twin, name) for name in COMPARED)
        # Jetstream stamps its own receive time; the relay frame carries the commit time.
        assert 0 <= twin.time_us - event.time_us < 5_000_000


def test_cursor_is_the_relay_seq_beyond_32_bits() -> None:
    """Event.cursor is the frame's seq, larger than 2**31."""
    events = RelayDecoder().decode(FRAMES[0])[2]
    assert events[0].cursor == MANIFEST["seq_first"] > 2**31


def test_blob_renders_as_jetstream_json() -> None:
    """A blob comes out as {$type: blob, ref: {$link}, mimeType, size}, as Jetstream renders it."""
    blobs = [
        e.record["embed"]["external"]["thumb"]
        for frame in FRAMES
        for e in RelayDecoder().decode(frame)[2]
        if e.record and "external" in e.record.get("embed", {})
    ]
    assert blobs
    assert blobs[0]["$type"] == "blob"
    assert set(blobs[0]) == {"$type", "ref", "mimeType", "size"}
    assert blobs[0]["ref"]["$link"].startswith("bafkrei")


def test_bytes_render_as_unpadded_base64() -> None:
    """A byte string in a record renders as {"$bytes": base64} without padding."""
    record = {"$type": "x.y.z", "data": b"\x01\x02\x03\x04"}
    car = _car({b"\x01\x71\x12\x20" + b"\x07" * 32: libipld.encode_dag_cbor(record)})
    frame = _commit_frame(car, b"\x01\x71\x12\x20" + b"\x07" * 32, "x.y.z/abc")
    event = RelayDecoder().decode(frame)[2][0]
    assert event.record == {"$type": "x.y.z", "data": {"$bytes": "AQIDBA"}}


def test_unwanted_collections_are_dropped_without_reading_the_car() -> None:
    """A commit on an unwanted collection yields nothing, even when its CAR is garbage."""
    frame = _commit_frame(b"not a car at all", b"\x01\x71\x12\x20" + b"\x07" * 32, "x.y.z/abc")
    decoder = RelayDecoder(DEFAULT_COLLECTIONS)
    assert decoder.decode(frame)[2] == []


def test_collection_filter_keeps_only_wanted_ops() -> None:
    """With a filter, only ops on the wanted collections come out."""
    decoder = RelayDecoder(["app.bsky.feed.like"])
    got = [event for frame in FRAMES for event in decoder.decode(frame)[2]]
    assert got
    assert {e.collection for e in got if e.kind == "commit"} == {"app.bsky.feed.like"}
    assert len(got) == sum(
        e.kind != "commit" or e.collection == "app.bsky.feed.like" for e in EXPECTED
    )


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xff\xfe garbage", "invalid cbor"),
        (libipld.encode_dag_cbor({"op": 1, "t": "#commit"}), "invalid frame"),
        (libipld.encode_dag_cbor({"op": 1}) + libipld.encode_dag_cbor({}), "invalid header"),
        (
            libipld.encode_dag_cbor({"op": 1, "t": "#what"}) + libipld.encode_dag_cbor({"seq": 1}),
            "unknown frame type",
        ),
    ],
)
def test_undecodable_frames_raise_frame_error(frame: bytes, reason: str) -> None:
    """Garbage, a missing body, a bad header or an unknown type raise FrameError with a reason."""
    from botsky.errors import FrameError

    with pytest.raises(FrameError, match=reason):
        RelayDecoder().decode(frame)


def test_fast_block_seek_agrees_with_walking_every_recorded_car() -> None:
    """Every block of every recorded CAR is found by the CID search exactly as the walk finds it."""
    checked = 0
    for frame in FRAMES:
        body = libipld.decode_dag_cbor_multi(frame)[1]
        if "blocks" not in body:
            continue
        blocks = libipld.decode_car(body["blocks"])[1]
        walked = _walk_blocks(body["blocks"], set(blocks))
        assert set(walked) == set(blocks)
        for cid, raw in walked.items():
            assert _seek_block(body["blocks"], cid) == raw
            assert libipld.decode_dag_cbor(raw) == blocks[cid]
            checked += 1
    assert checked > 1000


def test_block_the_search_cannot_place_is_found_by_walking() -> None:
    """A record followed by a block with an unusual CID (blake3) is still found."""
    record_cid = b"\x01\x71\x12\x20" + b"\x07" * 32
    odd_cid = b"\x01\x71\x1e\x20" + b"\x09" * 32
    record = {"$type": "x.y.z", "n": 1}
    car = _car({record_cid: libipld.encode_dag_cbor(record), odd_cid: b"\xa0"})
    assert _seek_block(car, record_cid) is None
    event = RelayDecoder().decode(_commit_frame(car, record_cid, "x.y.z/abc"))[2][0]
    assert event.record == record


def test_commit_whose_record_block_is_missing_is_a_frame_error() -> None:
    """A create whose record is not in the CAR raises FrameError (the frame is skipped)."""
    from botsky.errors import FrameError

    car = _car({b"\x01\x71\x12\x20" + b"\x01" * 32: b"\xa0"})
    with pytest.raises(FrameError, match="missing block"):
        RelayDecoder().decode(_commit_frame(car, b"\x01\x71\x12\x20" + b"\x07" * 32, "a.b/c"))


def test_subscribe_url_carries_the_cursor() -> None:
    """The subscription URL is {base}/xrpc/com.atproto.sync.subscribeRepos?cursor=N."""
    assert subscribe_url("ws://localhost:2583/", 7) == (
        "ws://localhost:2583/xrpc/com.atproto.sync.subscribeRepos?cursor=7"
    )
    assert subscribe_url("ws://h", None) == "ws://h/xrpc/com.atproto.sync.subscribeRepos"


def _car(blocks: dict[bytes, bytes]) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    header = libipld.encode_dag_cbor({"version": 1, "roots": []})
    body = b"".join(varint(len(cid) + len(data)) + cid + data for cid, data in blocks.items())
    return varint(len(header)) + header + body


def _commit_frame(car: bytes, cid: bytes, path: str) -> bytes:
    body = {
        "seq": 1,
        "repo": "did:plc:test",
        "rev": "3abc",
        "time": "2026-07-04T14:38:07.517Z",
        "ops": [{"action": "create", "path": path, "cid": cid}],
        "blocks": car,
    }
    return libipld.encode_dag_cbor({"op": 1, "t": "#commit"}) + libipld.encode_dag_cbor(body)


# --- the real websocket path --------------------------------------------------------------


async def test_source_over_websocket_equals_production_jetstream() -> None:
    """RelaySource reading the recorded frames from a loopback server yields Jetstream's events."""

    async def script(ws: ServerConnection, n: int, query: dict[str, list[str]]) -> None:
        for frame in FRAMES:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server)
        got = await take(source, len(EXPECTED))
        await source.aclose()
    assert_same(got, EXPECTED)
    assert server.paths == ["/xrpc/com.atproto.sync.subscribeRepos"]
    assert server.queries == [{}]
    assert source.stats.events == 152
    assert source.stats.skipped == 0
    assert source.cursor == MANIFEST["seq_last"]


async def test_source_resumes_after_the_saved_cursor() -> None:
    """after_cursor is sent as ?cursor= on the first dial and nothing at or below it is yielded."""
    saved = seq_of(FRAMES[99])

    async def script(ws: ServerConnection, n: int, query: dict[str, list[str]]) -> None:
        # A server that replays inclusively: the frame at the cursor comes again.
        for frame in FRAMES[99:]:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server, after_cursor=saved)
        rest = [e for frame in FRAMES[100:] for e in RelayDecoder().decode(frame)[2]]
        got = await take(source, len(rest))
        await source.aclose()
    assert server.queries[0] == {"cursor": [str(saved)]}
    assert got == rest
    assert min(e.cursor for e in got) > saved


async def test_open_source_builds_a_relay_source() -> None:
    """open_source turns a relay config into a RelaySource named by cursor_name."""
    config = SourceConfig(kind="relay", url="ws://127.0.0.1:9", backoff_min_s=0.5)
    source = open_source(config, after_cursor=42)
    assert isinstance(source, RelaySource)
    assert source.name == "relay:ws://127.0.0.1:9"
    assert source.cursor == 42
    assert source.backoff.min_s == 0.5
    await source.aclose()


@pytest.mark.parametrize(
    "value",
    [
        "2026-07-04T14:38:07.517Z",
        "2026-07-04T14:38:07Z",
        "2026-07-04T14:38:07.123456Z",
        "2026-07-04T14:38:07.5Z",
        "2026-07-04T16:38:07.517+02:00",
    ],
)
def test_frame_time_parses_like_fromisoformat(value: str) -> None:
    """A frame's time gives the same microseconds as datetime.fromisoformat, cached or not."""
    from datetime import datetime

    from botsky.sources._ws import iso_time_us

    parsed = datetime.fromisoformat(value)
    expected = int(parsed.timestamp()) * 1_000_000 + parsed.microsecond
    assert iso_time_us(value) == expected
    assert iso_time_us(value) == expected


@pytest.mark.parametrize("value", ["2026-07-04T14:38:07.5x7Z", "2026-07-04T14:38:07", "nope", 7])
def test_bad_frame_time_is_a_frame_error(value: object) -> None:
    """A time that is not RFC 3339 with a zone raises FrameError."""
    from botsky.errors import FrameError
    from botsky.sources._ws import iso_time_us

    with pytest.raises(FrameError, match="invalid time"):
        iso_time_us(value)
