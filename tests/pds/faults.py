"""A fault proxy: an HTTP/1.1 reverse proxy on loopback whose faults a test switches at runtime.

Put it between botsky (``posting.pds_url = proxy.url``) and the local PDS; with no fault it
forwards every request unchanged (keep-alive, one upstream connection per client connection).
A fault applies to the requests whose path contains ``match`` (all of them by default), to the
next ``times`` of them or until cleared:

- ``delay``: wait ``seconds``, then forward.
- ``hang``: stop answering for ``seconds`` (None: forever), or until the faults are set again
  (``set``/``clear``): the request is held, the PDS does not see it; then it is forwarded,
  unless the client has given up meanwhile (then it never reaches the PDS).
- ``drop_after_commit``: forward, read the PDS's whole answer (the write is committed), then
  cut the client's connection without a byte of it; the answers are kept in ``dropped``.
- ``error``: answer ``status`` (a 5xx) without forwarding: the PDS never sees the request.
- ``error_after_commit``: forward, then answer ``status`` instead of the PDS's answer.
- ``reset``: cut the connection without forwarding.

A PDS that cannot be reached is answered with 502, as a load balancer in front of one would.
The proxy runs its own event loop in a thread, so sync and async tests drive it alike. Only
HTTP requests are proxied (no websocket upgrade): point the firehose at the PDS itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import h11

__all__ = ["Fault", "FaultProxy", "Forwarded"]

FaultKind = Literal["delay", "hang", "drop_after_commit", "error", "error_after_commit", "reset"]
_READ = 65536


@dataclass
class Fault:
    """One fault and the requests it applies to."""

    kind: FaultKind
    match: str = ""  # a substring of the request path, e.g. "com.atproto.repo.createRecord"
    seconds: float | None = 0.0  # delay, or hang duration (None: until cleared)
    status: int = 503
    times: int | None = None  # the next N matching requests; None: until cleared


@dataclass(frozen=True)
class Forwarded:
    """One request the proxy saw, and what it did with it."""

    method: str
    path: str
    fault: str  # "" when forwarded unchanged
    status: int | None  # the status the client got (None: no answer)
    pds_status: int | None  # the status the PDS answered (None: the PDS never saw it)
    at: float = field(default_factory=time.monotonic)


class _Gone(Exception):
    """The client closed its connection."""


class FaultProxy:
    """Start with ``start()`` or ``with FaultProxy(port) as proxy``; ``url`` is its address."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.log: list[Forwarded] = []
        self.dropped: list[tuple[int, Any]] = []  # (status, JSON body) answers cut after commit
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._cleared: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()

    # -- control (from the test's thread) ------------------------------------------------------

    @property
    def url(self) -> str:
        # A host name, like the PDS's own URL (the atproto SDK and the PDS expect one).
        return f"http://localhost:{self.port}"

    def start(self) -> FaultProxy:
        if self._thread.is_alive():
            return self
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set(self, *faults: Fault) -> None:
        """Replace the faults in force (the first one that matches a request applies)."""
        with self._lock:
            self._faults = list(faults)
        self._loop.call_soon_threadsafe(self._wake)

    def clear(self) -> None:
        """No fault any more: held requests go on to the PDS."""
        self.set()

    def requests(self, match: str = "") -> list[Forwarded]:
        """The requests seen so far whose path contains ``match``."""
        with self._lock:
            return [f for f in self.log if match in f.path]

    # -- the proxy (in its own loop) --------------------------------------------------------------

    async def _listen(self) -> None:
        self._cleared = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        # Cutting every connection ends each handler on its own (cancelling them would make
        # asyncio's stream callback report the cancellation as an error).
        for transport in list(self._transports):
            transport.abort()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()

    def _wake(self) -> None:
        # Hanging requests wait on this event; a new fault set wakes them to look again.
        assert self._cleared is not None
        self._cleared.set()
        self._cleared = asyncio.Event()

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.match in path:
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _record(self, entry: Forwarded) -> None:
        with self._lock:
            self.log.append(entry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._transports.add(writer.transport)
        client = h11.Connection(h11.SERVER)
        upstream: _Upstream | None = None
        try:
            while True:
                got = await _read_request(client, reader)
                if got is None:
                    return
                request, body = got
                path = request.target.decode("latin-1")
                method = request.method.decode("latin-1")
                fault = self._take(path)
                kind = fault.kind if fault is not None else ""
                if fault is not None and fault.kind == "reset":
                    self._record(Forwarded(method, path, kind, None, None))
                    writer.transport.abort()
                    return
                if fault is not None and fault.kind == "error":
                    self._record(Forwarded(method, path, kind, fault.status, None))
                    await _answer_error(client, writer, fault.status, "fault proxy: error")
                    client.start_next_cycle()
                    continue
                if fault is not None and fault.kind == "delay":
                    await asyncio.sleep(fault.seconds or 0.0)
                if fault is not None and fault.kind == "hang":
                    try:
                        await self._hang(fault, reader, client)
                    except _Gone:
                        self._record(Forwarded(method, path, kind, None, None))
                        return
                if upstream is None:
                    try:
                        upstream = await _Upstream.open(*self.upstream)
                        self._transports.add(upstream.writer.transport)
                    except OSError as exc:
                        self._record(Forwarded(method, path, kind, 502, None))
                        await _answer_error(client, writer, 502, f"fault proxy: {exc}")
                        client.start_next_cycle()
                        continue
                try:
                    response, answer = await upstream.forward(request, body)
                except (OSError, h11.ProtocolError) as exc:
                    await self._close(upstream)
                    upstream = None
                    self._record(Forwarded(method, path, kind, 502, None))
                    await _answer_error(client, writer, 502, f"fault proxy: upstream {exc!r}")
                    client.start_next_cycle()
                    continue
                if not upstream.reusable:
                    await self._close(upstream)
                    upstream = None
                if fault is not None and fault.kind == "drop_after_commit":
                    self.dropped.append((response.status_code, _json(answer)))
                    self._record(Forwarded(method, path, kind, None, response.status_code))
                    writer.transport.abort()
                    return
                if fault is not None and fault.kind == "error_after_commit":
                    self._record(Forwarded(method, path, kind, fault.status, response.status_code))
                    await _answer_error(client, writer, fault.status, "fault proxy: after commit")
                else:
                    self._record(
                        Forwarded(method, path, kind, response.status_code, response.status_code)
                    )
                    writer.write(client.send(_relay(response)))
                    if answer:
                        writer.write(client.send(h11.Data(data=answer)))
                    writer.write(client.send(h11.EndOfMessage()))
                    await writer.drain()
                if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
                    return  # the client or the PDS closes after this exchange
                client.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, _Gone):
            return
        finally:
            if upstream is not None:
                await self._close(upstream)
            with contextlib.suppress(Exception):
                writer.close()
            self._transports.discard(writer.transport)
            self._tasks.discard(task)

    async def _close(self, upstream: _Upstream) -> None:
        self._transports.discard(upstream.writer.transport)
        await upstream.close()

    async def _hang(
        self, fault: Fault, reader: asyncio.StreamReader, client: h11.Connection
    ) -> None:
        """Hold a request for ``fault.seconds`` or until the faults are set again."""
        deadline = None if fault.seconds is None else time.monotonic() + fault.seconds
        assert self._cleared is not None
        changed = asyncio.create_task(self._cleared.wait())
        try:
            while not changed.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                readable = asyncio.create_task(reader.read(_READ))
                await asyncio.wait({changed, readable}, timeout=left, return_when="FIRST_COMPLETED")
                if not readable.done():
                    readable.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await readable
                    continue
                data = readable.result()
                if not data:
                    raise _Gone  # the client gave up: its request never reaches the PDS
                client.receive_data(data)  # pipelined bytes: kept for the next request
        finally:
            changed.cancel()


class _Upstream:
    """One keep-alive HTTP/1.1 connection to the PDS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, host: str, port: int) -> _Upstream:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def forward(self, request: h11.Request, body: bytes) -> tuple[h11.Response, bytes]:
        if self.reusable:
            self.conn.start_next_cycle()
        self.writer.write(self.conn.send(_relay(request)))
        if body:
            self.writer.write(self.conn.send(h11.Data(data=body)))
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()
        response: h11.Response | None = None
        chunks: list[bytes] = []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(_READ)
                self.conn.receive_data(data)
                if not data and self.conn.their_state is not h11.DONE:
                    raise ConnectionResetError("the PDS closed the connection")
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the PDS closed the connection")

    async def close(self) -> None:
        self.writer.transport.abort()


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request, bytes] | None:
    """The next request and its body; None when the client closed the connection."""
    request: h11.Request | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ))
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer"}


def _relay(message: h11.Request | h11.Response) -> h11.Request | h11.Response:
    """The same message for the other connection: hop-by-hop headers are its own business (h11
    frames the body again from content-length, or chunks it)."""
    headers = [(k, v) for k, v in message.headers if k.lower() not in _HOP_BY_HOP]
    if isinstance(message, h11.Request):
        return h11.Request(method=message.method, target=message.target, headers=headers)
    return h11.Response(status_code=message.status_code, headers=headers, reason=message.reason)


async def _answer_error(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str
) -> None:
    body = json.dumps({"error": "InternalServerError", "message": message}).encode()
    headers: Iterable[tuple[str, str]] = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
    ]
    writer.write(conn.send(h11.Response(status_code=status, headers=list(headers))))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")
