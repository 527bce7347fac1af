"""Jetstream: the v2 ``network.bsky.jetstream.subscribeEvents`` wire, or the v1 ``/subscribe`` JSON.

The installed atproto SDK (0.0.73) ships a Jetstream v2 client (``atproto_jetstream``). Its
frame parser (``parse_frame``: the ``xrpc.v1.json`` envelope, message or error) is used here as
it is; importing it loads the SDK's models, about a second once per process, so v1 never does.
Its reconnect loop is not used: it is callback-driven, its backoff is fixed
(2**n s up to 64 s, module-level ``random``) and its cursor is a per-instance ``seq``. botsky
needs an async iterator, the configured and injectable backoff of ``_ws.LiveSource``, and a
cursor that survives a switch of instance or of wire version and can be rewound by seconds.

**Cursor.** ``Event.cursor`` is ``time_us`` on both wires (v2: the event's ``witnessed_at``, or
``time`` from servers predating it; v2 reads any cursor >= 1e15 as unix microseconds). Every
dial asks for ``cursor = highest time_us yielded - rewind_s`` (the first dial uses
``after_cursor``, the saved cursor), because v1's ``time_us`` is not monotonic: events a little
older than the highest seen may still be on their way. The replayed overlap is deduplicated
exactly: an event whose key (time_us, did, kind, collection, rkey) was yielded within the rewind
window is dropped, while an event merely older than the highest yielded one still gets through.
After a restart the first ``rewind_s`` of events are yielded again; work downstream is
idempotent (DESIGN.md). The saved cursor is the low-water mark (``botsky.watermark``):
``time_us - 1`` of the oldest event whose work was not finished, else the highest read.

**Compression.** v2: with ``compress`` the dictionary is fetched from
``network.bsky.jetstream.getZstdDictionary`` before dialing and its id sent as
``zstdDictionary``; if the fetch fails, or the server rejects the id before the upgrade, the
next dial refetches, and a stream that cannot get a dictionary runs uncompressed. v1: with a
``dictionary`` (Jetstream's ``zstd_dictionary`` file, not served over HTTP) ``compress=true``
is sent and binary messages are decompressed; without one the stream is plain JSON.

**Policies.** The server is asked not to send events over ``max_frame_bytes``
(``maxMessageSizeBytes``); one that still arrives closes the connection and is counted. A
message that cannot be decompressed or parsed is skipped and counted. An error frame
(``ConsumerTooSlow`` and any other) → reconnect after the backoff from the cursor. ``#info``
(``OutdatedCursor``: the cursor was clamped to the oldest retained event; ``FutureCursor``:
started at the live tip) → logged, the stream continues. ``#sync`` → counted, no event.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Literal
from urllib.parse import urlencode

import httpx
import structlog
import zstandard

from botsky.errors import FrameError
from botsky.events import (
    Event,
    account_event,
    identity_event,
    jetstream_commit,
    parse_jetstream,
)
from botsky.sources._ws import Backoff, LiveSource, Reconnect, iso_time_us

__all__ = ["JetstreamSource"]

log = structlog.get_logger("botsky.sources")

_V2_METHOD: Final = "network.bsky.jetstream.subscribeEvents"
_V2_DICTIONARY: Final = "network.bsky.jetstream.getZstdDictionary"
_V2_TYPE: Final = _V2_METHOD + "#"
_SUBPROTOCOL: Final = "xrpc.v1.json"
_DICTIONARY_MAGIC: Final = b"\x37\xa4\x30\xec"
# Keys are kept this much longer than the rewind, for events that arrive late.
_DEDUPE_SLACK_US: Final = 10_000_000
_Key = tuple[int, str, str, str | None, str | None]


class JetstreamSource(LiveSource):
    """Events from a Jetstream server at ``url`` (``wss://host``); see the module docstring.

    ``version`` picks the wire; ``collections`` filters commits server-side (and is checked
    again here); ``after_cursor`` is the saved ``time_us`` to resume from; ``dictionary`` is a
    zstd dictionary to use instead of fetching one (v2) or the legacy one (v1).
    ``idle_timeout_s`` redials after that long without a message (the SDK's default, 60 s),
    on top of the websocket keepalive pings.
    """

    def __init__(
        self,
        url: str,
        *,
        version: Literal["v1", "v2"] = "v2",
        name: str | None = None,
        after_cursor: int | None = None,
        rewind_s: float = 5.0,
        collections: Iterable[str] | None = None,
        compress: bool = True,
        dictionary: bytes | None = None,
        max_frame_bytes: int = 5 * 1024 * 1024,
        backoff: Backoff | None = None,
        idle_timeout_s: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            name=name or f"jetstream:{url}",
            max_frame_bytes=max_frame_bytes,
            backoff=backoff or Backoff(),
            idle_timeout_s=idle_timeout_s,
            clock=clock,
            sleep=sleep,
            subprotocols=(_SUBPROTOCOL,) if version == "v2" else (),
        )
        base = url.rstrip("/")
        self.url = base.removesuffix("/xrpc") if version == "v2" else base
        self.version = version
        self.collections = sorted(set(collections)) if collections is not None else None
        self._wanted = frozenset(self.collections) if self.collections is not None else None
        self.rewind_us = int(rewind_s * 1_000_000)
        self.compress = compress
        self.frame_counts: Counter[str] = Counter()
        # The highest time_us yielded (or the saved one): resume point and dedupe window.
        self.cursor: int | None = after_cursor
        self._recent: deque[_Key] = deque()
        self._seen: set[_Key] = set()
        self._decompressor: zstandard.ZstdDecompressor | None = None
        self._dictionary_id: int | None = None
        self._fixed_dictionary = dictionary
        if dictionary is not None and compress:
            self._load_dictionary(dictionary)
        if version == "v2":
            # Import the SDK now, not on the first message: it blocks the loop for a second.
            import atproto_jetstream.models  # noqa: F401

    @staticmethod
    def position_before(event: Event, previous: int | None) -> int:
        """The cursor that reads ``event`` again: ``time_us - 1`` (every dial also rewinds
        ``rewind_s``, for events that arrive out of time order; see ``botsky.watermark``)."""
        return event.time_us - 1

    # --- dialing ----------------------------------------------------------------------------

    def _url(self) -> str:
        params: list[tuple[str, str | int]] = []
        if self.version == "v1":
            params += [("wantedCollections", c) for c in self.collections or ()]
            if self._decompressor is not None:
                params.append(("compress", "true"))
            path = "/subscribe"
        else:
            params += [("collections", c) for c in self.collections or ()]
            if self._decompressor is not None and self._dictionary_id is not None:
                params.append(("zstdDictionary", self._dictionary_id))
            path = f"/xrpc/{_V2_METHOD}"
        params.append(("maxMessageSizeBytes", self.max_frame_bytes))
        if self.cursor is not None:
            params.append(("cursor", max(self.cursor - self.rewind_us, 0)))
        query = f"?{urlencode(params)}" if params else ""
        return f"{self.url}{path}{query}"

    async def _before_connect(self) -> None:
        if self.version != "v2" or not self.compress or self._decompressor is not None:
            return
        http_url = "http" + self.url.removeprefix("ws") + f"/xrpc/{_V2_DICTIONARY}"
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(http_url)
                response.raise_for_status()
            self._load_dictionary(response.content)
        except (httpx.HTTPError, FrameError) as exc:
            log.warning("jetstream_dictionary_unavailable", source=self.name, error=str(exc))

    def _load_dictionary(self, blob: bytes) -> None:
        # A zstd dictionary starts with its magic and its 32-bit id (RFC 8878, section 5).
        if len(blob) < 8 or blob[:4] != _DICTIONARY_MAGIC:
            raise FrameError("invalid dictionary: not a zstd dictionary")
        self._dictionary_id = int.from_bytes(blob[4:8], "little")
        self._decompressor = zstandard.ZstdDecompressor(
            dict_data=zstandard.ZstdCompressionDict(blob)
        )

    def _handshake_rejected(self) -> None:
        # A rotated dictionary is refused before the upgrade: refetch it on the next dial.
        if self.version == "v2" and self._fixed_dictionary is None:
            self._decompressor = None
            self._dictionary_id = None

    # --- decoding ---------------------------------------------------------------------------

    def _decode(self, message: bytes | str) -> list[Event]:
        # Without compression a binary message is read as JSON, like a text one.
        if isinstance(message, bytes) and self._decompressor is not None:
            try:
                message = self._decompressor.decompress(
                    message, max_output_size=self.max_frame_bytes * 8
                )
            except zstandard.ZstdError as exc:
                raise FrameError(f"invalid zstd: {exc}") from exc
        event = parse_jetstream(message) if self.version == "v1" else self._decode_v2(message)
        if event is None:
            return []
        if (
            event.kind == "commit"
            and self._wanted is not None
            and event.collection not in self._wanted
        ):
            return []
        return [event] if self._first_time(event) else []

    def _decode_v2(self, message: bytes | str) -> Event | None:
        from atproto_jetstream.exceptions import JetstreamDecodingError
        from atproto_jetstream.models import ErrorFrame, parse_frame

        try:
            frame = parse_frame(message)
        except JetstreamDecodingError as exc:
            raise FrameError(f"invalid frame: {exc}") from exc
        if isinstance(frame, ErrorFrame):
            self.frame_counts["error"] += 1
            log.warning(
                "jetstream_error_frame",
                source=self.name,
                error=frame.error,
                message=str(frame.message)[:200],
            )
            raise Reconnect(f"{frame.error}: reconnecting from cursor {self.cursor}")
        payload = frame.payload
        kind = (frame.type or "").removeprefix(_V2_TYPE)
        self.frame_counts[kind] += 1
        if kind == "info":
            log.info(
                "jetstream_info",
                source=self.name,
                info=str(payload.get("name")),
                message=str(payload.get("message"))[:200],
            )
            return None
        if kind == "sync":
            return None
        return _v2_event(kind, payload)

    def _first_time(self, event: Event) -> bool:
        """Record ``event`` as yielded unless it already was (within the dedupe window)."""
        key: _Key = (event.time_us, event.did, event.kind, event.collection, event.rkey)
        if key in self._seen:
            return False
        high = event.time_us if self.cursor is None else max(self.cursor, event.time_us)
        self.cursor = high
        self._seen.add(key)
        self._recent.append(key)
        floor = high - self.rewind_us - _DEDUPE_SLACK_US
        while self._recent and self._recent[0][0] < floor:
            self._seen.discard(self._recent.popleft())
        return True


def _v2_event(kind: str, payload: dict[str, Any]) -> Event:
    """A v2 payload as an event: the same builders (and checks) as every other wire."""
    did = payload.get("did")
    time_us = iso_time_us(payload.get("witnessed_at") or payload.get("time"))
    if kind == "commit":
        return jetstream_commit(did, time_us, time_us, payload)
    if kind == "identity":
        upstream = payload.get("identity")
        handle = upstream.get("handle") if isinstance(upstream, dict) else None
        return identity_event(did, time_us, time_us, handle)
    if kind == "account":
        upstream = payload.get("account")
        upstream = upstream if isinstance(upstream, dict) else {}
        return account_event(did, time_us, time_us, upstream.get("active"), upstream.get("status"))
    raise FrameError(f"unknown kind: {kind!r}"[:200])
