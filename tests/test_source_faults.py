"""Network faults against a real websocket server on loopback, one named scenario per test.

Each scenario ends in the stated behaviour: the source reconnects with the injected backoff,
resumes from the last seq it yielded (the server checks the ``cursor`` it receives) and never
yields an event twice.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from http import HTTPStatus

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from botsky.errors import ConfigError
from botsky.sources._ws import Backoff
from botsky.sources.relay import RelayDecoder
from botsky.testing import FakeClock
from tests.support import (
    FIXED_JITTER,
    FRAMES,
    FakeSleep,
    error_frame,
    frame_server,
    hold,
    info_frame,
    relay,
    seq_of,
    take,
)

# Single-commit frames keep the arithmetic simple: one frame, one event.
ONE = [f for f in FRAMES if len(RelayDecoder().decode(f)[2]) == 1]
SEQS = [seq_of(f) for f in ONE]
Query = dict[str, list[str]]


def cursor_of(query: Query) -> int | None:
    values = query.get("cursor")
    return int(values[0]) if values else None


def after(cursor: int | None) -> list[bytes]:
    """What a relay sends for ``cursor``: every frame after it (all of them without one)."""
    return [f for f, s in zip(ONE, SEQS, strict=True) if cursor is None or s > cursor]


def replaying(cursor: int | None) -> list[bytes]:
    """A sloppy relay that also resends a few frames at and before the cursor."""
    if cursor is None:
        return list(ONE)
    first = max(SEQS.index(cursor) - 2, 0)
    return ONE[first:]


def reset(ws: ServerConnection) -> None:
    """Drop the TCP connection with a RST: no close frame, no FIN."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def test_abnormal_close_reconnects_from_the_last_seq() -> None:
    """A connection closed without a close frame is redialed with ?cursor=<last seq>."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        frames = after(cursor_of(query))
        if n == 1:
            for frame in frames[:5]:
                await ws.send(frame)
            ws.transport.close()  # FIN without a close frame: code 1006 on the client
            return
        for frame in frames[:5]:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        sleep = FakeSleep()
        source = relay(server, sleep)
        got = await take(source, 10)
        await source.aclose()
    assert [e.cursor for e in got] == SEQS[:10]
    assert [cursor_of(q) for q in server.queries] == [None, SEQS[4]]
    assert source.stats.reconnects == 1
    assert sleep.delays == [FIXED_JITTER.delay(1)]


async def test_close_1011_reconnects_from_the_last_seq() -> None:
    """A server closing with 1011 (internal error) is redialed from the last seq."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        frames = after(cursor_of(query))
        for frame in frames[:3]:
            await ws.send(frame)
        if n == 1:
            await ws.close(1011, "boom")
            return
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server)
        with capture_logs() as logs:
            got = await take(source, 6)
        await source.aclose()
    assert [e.cursor for e in got] == SEQS[:6]
    assert cursor_of(server.queries[1]) == SEQS[2]
    assert any(log["event"] == "source_disconnected" and "1011" in log["reason"] for log in logs)


async def test_tcp_reset_reconnects_and_replayed_frames_are_dropped() -> None:
    """After a TCP reset, frames the server resends at or below the cursor are not yielded."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        frames = replaying(cursor_of(query))
        for frame in frames[:4] if n == 1 else frames[:7]:
            await ws.send(frame)
        if n == 1:
            await asyncio.sleep(0.05)
            reset(ws)
            return
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server)
        got = await take(source, 8)
        await source.aclose()
    assert [e.cursor for e in got] == SEQS[:8]
    assert cursor_of(server.queries[1]) == SEQS[3]
    assert source.stats.reconnects == 1


async def test_garbage_frame_is_skipped_and_counted() -> None:
    """A binary frame that is not CBOR is skipped and counted; the stream goes on."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await ws.send(ONE[0])
        await ws.send(b"\x00\xffthis is not cbor")
        await ws.send("a text frame")
        await ws.send(ONE[1])
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server)
        got = await take(source, 2)
        await source.aclose()
    assert [e.cursor for e in got] == SEQS[:2]
    assert source.stats.skip_reasons == {"invalid cbor": 1, "text frame": 1}
    assert source.stats.reconnects == 0


async def test_consumer_too_slow_reconnects_from_the_last_seq() -> None:
    """An error frame ConsumerTooSlow makes the source redial from the last seq it yielded."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        frames = after(cursor_of(query))
        if n == 1:
            for frame in frames[:3]:
                await ws.send(frame)
            await ws.send(error_frame("ConsumerTooSlow", "you are slow"))
            await hold(ws)
            return
        for frame in frames[:3]:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server)
        got = await take(source, 6)
        await source.aclose()
    assert [e.cursor for e in got] == SEQS[:6]
    assert [cursor_of(q) for q in server.queries] == [None, SEQS[2]]
    assert source.frame_counts["error"] == 1


@pytest.mark.parametrize("error", ["FutureCursor", "OutdatedCursor"])
async def test_cursor_error_reconnects_without_a_cursor(error: str) -> None:
    """FutureCursor/OutdatedCursor error frames: redial without a cursor and take what comes."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        if n == 1:
            await ws.send(error_frame(error))
            await hold(ws)
            return
        for frame in ONE[:3]:  # seqs far below the saved cursor: still yielded
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server, after_cursor=SEQS[-1] + 1000)
        got = await take(source, 3)
        await source.aclose()
    assert [cursor_of(q) for q in server.queries] == [SEQS[-1] + 1000, None]
    assert [e.cursor for e in got] == SEQS[:3]


async def test_outdated_cursor_info_is_logged_and_the_stream_continues() -> None:
    """An #info OutdatedCursor frame is logged; no reconnect, the next frames are yielded."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await ws.send(info_frame("OutdatedCursor"))
        for frame in ONE[:2]:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server, after_cursor=1)
        with capture_logs() as logs:
            got = await take(source, 2)
        await source.aclose()
    assert len(got) == 2
    assert source.stats.reconnects == 0
    assert [log["info"] for log in logs if log["event"] == "relay_info"] == ["OutdatedCursor"]


async def test_silence_then_data_is_delivered_without_reconnecting() -> None:
    """A quiet connection that later sends frames delivers them; no reconnect happens."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await asyncio.sleep(0.3)
        for frame in ONE[:2]:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server, idle_timeout_s=2.0)
        got = await take(source, 2)
        await source.aclose()
    assert len(got) == 2
    assert source.stats.reconnects == 0


async def test_silence_past_the_idle_timeout_reconnects() -> None:
    """A connection silent for longer than idle_timeout_s is dropped and redialed."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        if n == 1:
            await ws.send(ONE[0])
            await hold(ws)  # then silence
            return
        for frame in after(cursor_of(query))[:2]:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server, idle_timeout_s=0.2)
        with capture_logs() as logs:
            got = await take(source, 3)
        await source.aclose()
    assert [e.cursor for e in got] == SEQS[:3]
    assert cursor_of(server.queries[1]) == SEQS[0]
    assert any(log.get("reason") == "idle_timeout" for log in logs)


async def test_oversize_frame_is_counted_and_stepped_over() -> None:
    """A frame over max_frame_bytes closes the connection; the redial skips past its seq."""
    small = [f for f in ONE if len(f) <= 4096]
    big = next(f for f in ONE if len(f) > 8192)
    seqs = [seq_of(f) for f in small]

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        if n == 1:
            await ws.send(small[0])
            await ws.send(big)
            await hold(ws)
            return
        for frame in small[1:3]:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server, max_frame_bytes=4096)
        got = await take(source, 3)
        await source.aclose()
    assert [e.cursor for e in got] == seqs[:3]
    assert cursor_of(server.queries[1]) == seqs[0] + 1
    assert source.stats.skip_reasons["oversize_frame"] == 1


async def test_rejected_handshake_is_retried_with_backoff() -> None:
    """An HTTP 503 to the upgrade is retried after the backoff, which grows each attempt."""
    calls = 0

    def refuse_twice(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
        return None

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await ws.send(ONE[0])
        await hold(ws)

    async with frame_server(script, process_request=refuse_twice) as server:
        sleep = FakeSleep()
        source = relay(server, sleep)
        got = await take(source, 1)
        await source.aclose()
    assert len(got) == 1
    assert sleep.delays == [FIXED_JITTER.delay(1), FIXED_JITTER.delay(2)]
    assert sleep.delays[1] > sleep.delays[0]


async def test_backoff_resets_after_a_healthy_minute() -> None:
    """Failed dials escalate the delay; a connection up for a minute resets it to the first step."""
    clock = FakeClock(0.0)

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        frames = after(cursor_of(query))
        if n <= 2:  # two short-lived connections: the delay escalates
            await ws.send(frames[0])
            await ws.close(1011)
            return
        if n == 3:  # a healthy one: up for "61 seconds"
            await ws.send(frames[0])
            await asyncio.sleep(0.05)  # the client has noted when it connected
            clock.advance(61)
            await ws.close(1011)
            return
        await ws.send(frames[0])
        await hold(ws)

    async with frame_server(script) as server:
        sleep = FakeSleep()
        source = relay(server, sleep, clock=clock)
        got = await take(source, 4)
        await source.aclose()
    assert [e.cursor for e in got] == SEQS[:4]
    delay = FIXED_JITTER.delay
    assert sleep.delays == [delay(1), delay(2), delay(1)]


async def test_cancellation_propagates_and_closes_the_socket() -> None:
    """Cancelling the consumer raises CancelledError in it and closes the connection."""
    closed = asyncio.Event()

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        await ws.send(ONE[0])
        await ws.wait_closed()
        closed.set()

    async with frame_server(script) as server:
        source = relay(server)
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in source:
                first.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(5):
            await first.wait()
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await source.aclose()
            await closed.wait()
    assert source.stats.events == 1


async def test_aclose_ends_iteration() -> None:
    """After aclose the source yields nothing more and a second aclose is harmless."""

    async def script(ws: ServerConnection, n: int, query: Query) -> None:
        for frame in ONE[:3]:
            await ws.send(frame)
        await hold(ws)

    async with frame_server(script) as server:
        source = relay(server)
        await take(source, 1)
        await source.aclose()
        await source.aclose()
        assert [e async for e in source] == []


def test_backoff_doubles_up_to_the_cap() -> None:
    """Delays double from min_s and stop at max_s."""
    backoff = Backoff(min_s=1, max_s=8, rng=lambda: 0.999999)
    assert [round(backoff.delay(n)) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999])
def test_backoff_jitter_stays_in_the_upper_half(draw: float) -> None:
    """Jitter keeps each delay within [base/2, base]."""
    delay = Backoff(min_s=2, max_s=60, rng=lambda: draw).delay(3)
    assert 4 <= delay <= 8


def test_backoff_rejects_min_above_max() -> None:
    """A backoff whose min exceeds its max is a configuration error."""
    with pytest.raises(ConfigError):
        Backoff(min_s=10, max_s=1)
