"""``com.atproto.sync.subscribeRepos`` from a relay or PDS, normalized to Jetstream-shaped events.

Decoding (``RelayDecoder``) does only what botsky needs, on a hot path built for speed: one
``libipld.decode_dag_cbor_multi`` call splits a frame into header and body; a commit whose ops
touch no wanted collection is dropped before its CAR is looked at; otherwise the CAR's sections
are walked (lengths and CIDs only) to find the blocks the wanted ops point to, and only those
are decoded. The SDK's plain path (model parsing, a full CAR decode, a model per op) is several
times slower and builds objects botsky throws away. Signatures and MST proofs are not checked:
a relay has verified them, and botsky only reads.

A record is rendered as Jetstream renders it (the atproto data model's JSON form): a CID link
becomes ``{"$link": "bafy..."}``, a byte string ``{"$bytes": base64}`` (standard alphabet,
unpadded), so blobs come out as ``{"$type": "blob", "ref": {"$link": ...}, ...}``. libipld
returns links and byte strings both as ``bytes``; they are told apart by the raw block (no
tag 42 in it: no links at all) and otherwise by shape (a binary CIDv1 is ``0x01``, a codec, a
multihash of the stated length). A byte string that happens to be a well-formed binary CID
would be rendered as a link; records with byte strings are rare and this has not been seen.

Fields that legitimately differ from Jetstream for the same event: ``time_us`` (here the
frame's ``time``, when the PDS committed; Jetstream's is when Jetstream received the event,
a few hundred milliseconds later and not monotonic) and ``cursor`` (here ``seq``, which
exceeds 2**31; Jetstream's is its ``time_us``).

Frame policies (the relay's answer → what the source does):

- ``#commit``: one event per op on a wanted collection (create/update carry the record).
- ``#identity`` → an identity event (``handle`` when present); ``#account`` → an account event
  (``active``, ``status``).
- ``#sync`` (a repo's state was reset): no event; counted in ``frame_counts``.
- ``#info``: logged; ``OutdatedCursor`` means the relay resumed from the oldest event it still
  has (events were missed), so the stream simply continues.
- error frame ``ConsumerTooSlow``: reconnect (after the backoff) and resume from the last seq.
- error frame ``FutureCursor`` (the cursor is ahead of the relay, e.g. another relay's seq):
  forget the cursor and reconnect at the live tip.
- error frame ``OutdatedCursor``: forget the cursor and reconnect, continuing from the oldest
  (live) position the relay offers.
- any other error frame: reconnect from the last seq.
- a frame that cannot be decoded, or an unknown type: skipped and counted in ``stats``.
- a frame over ``max_frame_bytes``: the client library closes the connection (1009); the
  source counts it (``oversize_frame``) and resumes from ``seq + 1``, stepping past it.
- frames with ``seq`` at or below the last one yielded (a relay replaying from the cursor)
  are dropped, so no event is yielded twice.

The relay's cursor is a sequence number, not a time, so ``rewind_s`` does not apply: a restart
resumes right after the saved ``seq``, which is the low-water mark (``botsky.watermark``): the
``seq`` before the oldest event whose work was not finished.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final
from urllib.parse import urlencode

import libipld
import structlog

from botsky.errors import FrameError
from botsky.events import Event, account_event, check_operation, commit_event, identity_event
from botsky.sources._ws import Backoff, LiveSource, Reconnect, iso_time_us

__all__ = ["RelayDecoder", "RelaySource", "subscribe_url"]

log = structlog.get_logger("botsky.sources")

_METHOD: Final = "com.atproto.sync.subscribeRepos"
_TAG_CID: Final = b"\xd8\x2a"
# The CID prefix of every block in a repo CAR: CIDv1, dag-cbor, sha2-256, 32-byte digest.
_DAG_CBOR_SHA256: Final = b"\x01\x71\x12\x20"
_RAW_SHA256: Final = b"\x01\x55\x12\x20"  # blobs


def subscribe_url(base: str, cursor: int | None) -> str:
    """``{base}/xrpc/com.atproto.sync.subscribeRepos`` with ``?cursor=`` when one is known."""
    url = f"{base.rstrip('/')}/xrpc/{_METHOD}"
    return f"{url}?{urlencode({'cursor': cursor})}" if cursor is not None else url


class RelayDecoder:
    """Decode subscribeRepos frames into events; pure, no I/O.

    ``collections`` keeps commit ops on those collections only (``None``: all); identity and
    account events always pass. The policy for control frames (``#info``, errors) is
    ``RelaySource``'s: the decoder only reports them.
    """

    def __init__(self, collections: Iterable[str] | None = None) -> None:
        self.collections: frozenset[str] | None = (
            frozenset(collections) if collections is not None else None
        )
        self.frame_counts: Counter[str] = Counter()

    def decode(self, frame: bytes) -> tuple[str, int | None, list[Event], dict[str, Any]]:
        """Return ``(type, seq, events, body)``; raise ``FrameError`` for an undecodable frame.

        ``type`` is ``#commit``, ``#identity``, ... or ``error`` (then ``body`` holds
        ``error`` and ``message``).
        """
        try:
            parts = libipld.decode_dag_cbor_multi(frame)
        except (ValueError, RecursionError) as exc:
            raise FrameError(f"invalid cbor: {exc}") from exc
        if len(parts) != 2 or not isinstance(parts[0], dict) or not isinstance(parts[1], dict):
            raise FrameError("invalid frame: not a header and a body")
        header, body = parts
        op = header.get("op")
        if op == -1:
            self.frame_counts["error"] += 1
            return "error", None, [], body
        kind = header.get("t")
        if op != 1 or not isinstance(kind, str):
            raise FrameError(f"invalid header: {header!r}"[:200])
        self.frame_counts[kind] += 1
        seq = body.get("seq")
        if kind == "#info":
            return kind, None, [], body
        if not isinstance(seq, int):
            raise FrameError(f"missing seq: {kind}")
        if kind == "#commit":
            return kind, seq, self._commit(body, seq), body
        if kind == "#identity" or kind == "#account":
            return kind, seq, [_identity_or_account(kind, body, seq)], body
        if kind == "#sync":
            return kind, seq, [], body
        raise FrameError(f"unknown frame type: {kind!r}")

    def _commit(self, body: dict[str, Any], seq: int) -> list[Event]:
        ops = body.get("ops")
        did = body.get("repo")
        if type(ops) is not list or type(did) is not str:
            raise FrameError("invalid commit: no ops or repo")
        wanted = self.collections
        picked: list[tuple[str, str, str, Any]] = []
        # libipld gives exact builtin types, so ``type(x) is`` stands for isinstance here.
        for op in ops:
            path = op.get("path") if type(op) is dict else None
            if type(path) is not str:
                raise FrameError("invalid commit: op without path")
            collection, _, rkey = path.partition("/")
            if wanted is not None and collection not in wanted:
                continue
            picked.append((check_operation(op.get("action")), collection, rkey, op.get("cid")))
        if not picked:
            # The common case on a filtered stream: the CAR is never touched.
            return []
        time_us = iso_time_us(body.get("time"))
        rev = body.get("rev")
        rev = rev if type(rev) is str else None
        blocks = body.get("blocks")
        if len(picked) == 1:
            # Nearly every commit is one op: no list of wanted CIDs, no dict of blocks.
            action, collection, rkey, cid = picked[0]
            if action == "delete":
                return [commit_event(did, time_us, seq, action, collection, rkey, None, None, rev)]
            if type(cid) is not bytes:
                raise FrameError(f"invalid commit: {action} without cid")
            if not cid:
                raise FrameError("missing block: record not in the commit's CAR")
            if type(blocks) is not bytes:
                raise FrameError("invalid commit: blocks is not bytes")
            raw = _seek_block(blocks, cid)
            if raw is None:
                raw = _walk_blocks(blocks, {cid}).get(cid)
                if raw is None:
                    raise FrameError("missing block: record not in the commit's CAR")
            record = _record(raw)
            cid_str = libipld.encode_cid(cid)
            return [commit_event(did, time_us, seq, action, collection, rkey, cid_str, record, rev)]
        # Only well-typed CIDs are searched for; any other value is a FrameError just below.
        needed = [
            cid for action, _, _, cid in picked if action != "delete" and type(cid) is bytes and cid
        ]
        found = _find_blocks(blocks, needed) if needed else {}
        events = []
        for action, collection, rkey, cid in picked:
            rec: dict[str, Any] | None = None
            cid_text: str | None = None
            if action != "delete":
                if type(cid) is not bytes:
                    raise FrameError(f"invalid commit: {action} without cid")
                raw = found.get(cid)
                if raw is None:
                    raise FrameError("missing block: record not in the commit's CAR")
                rec = _record(raw)
                cid_text = libipld.encode_cid(cid)
            events.append(
                commit_event(did, time_us, seq, action, collection, rkey, cid_text, rec, rev)
            )
        return events


def _identity_or_account(kind: str, body: dict[str, Any], seq: int) -> Event:
    did, time_us = body.get("did"), iso_time_us(body.get("time"))
    if kind == "#identity":
        return identity_event(did, time_us, seq, body.get("handle"))
    return account_event(did, time_us, seq, body.get("active"), body.get("status"))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Read an unsigned LEB128 varint at ``pos``; return ``(value, next position)``."""
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise FrameError("invalid car: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _find_blocks(car: object, wanted: list[bytes]) -> dict[bytes, bytes]:
    """The raw blocks of ``car`` whose CID is in ``wanted``; other blocks are not decoded.

    This is the hot path. Each block is first looked up by searching for its CID's bytes (C
    speed, see ``_seek_block``); a block that search cannot place is found by walking the CAR.
    """
    if not isinstance(car, bytes):
        raise FrameError("invalid commit: blocks is not bytes")
    found: dict[bytes, bytes] = {}
    for cid in wanted:
        block = _seek_block(car, cid)
        if block is not None:
            found[cid] = block
    if len(found) < len(set(wanted)):
        found.update(_walk_blocks(car, {cid for cid in wanted if cid not in found}))
    return found


def _seek_block(car: bytes, cid: bytes) -> bytes | None:
    """Find the section ``varint(len) cid data`` for ``cid`` without walking the CAR.

    Inside blocks a CID is a link, always written after a 0x00 byte (the multibase prefix of
    DAG-CBOR tag 42); a section's CID follows its length varint, whose last byte is never 0x00.
    The varint's start is ambiguous read backwards, so each possible length (1-3 bytes) is
    accepted only if the section it implies ends exactly at the CAR's end or at the start of
    another section of a dag-cbor sha2-256 CID. Anything less certain returns ``None``.
    """
    size = len(car)
    pos = car.find(cid, 1)
    while pos > 0:
        last = car[pos - 1]
        if last and last < 0x80:
            length = last
            for back in (2, 3, 4):
                end = pos + length
                if end > pos + len(cid) and (
                    end == size or (end < size and _section_starts(car, end))
                ):
                    return car[pos + len(cid) : end]
                # One more byte of varint, read backwards: it must be a continuation byte.
                if pos - back < 0 or car[pos - back] < 0x80:
                    break
                length = (length << 7) | (car[pos - back] & 0x7F)
        pos = car.find(cid, pos + 1)
    return None


def _section_starts(car: bytes, pos: int) -> bool:
    for width in (1, 2, 3):
        if pos + width > len(car):
            return False
        if car[pos + width - 1] < 0x80:
            return car.startswith(_DAG_CBOR_SHA256, pos + width)
    return False


def _walk_blocks(car: bytes, todo: set[bytes]) -> dict[bytes, bytes]:
    """The general route: walk every section (``varint(len) cid data``) after the header."""
    found: dict[bytes, bytes] = {}
    size = len(car)
    header_len, pos = _varint(car, 0)
    pos += header_len
    while pos < size and todo:
        section_len, start = _varint(car, pos)
        end = start + section_len
        if start >= size:
            raise FrameError("invalid car: truncated block")
        cid_end = start + 36 if car.startswith(_DAG_CBOR_SHA256, start) else _cid_end(car, start)
        if end > size or cid_end > end:
            raise FrameError("invalid car: truncated block")
        cid = car[start:cid_end]
        if cid in todo:
            found[cid] = car[cid_end:end]
            todo.discard(cid)
        pos = end
    return found


def _cid_end(data: bytes, start: int) -> int:
    if data[start] != 1:
        raise FrameError("invalid car: not a CIDv1")
    _, p = _varint(data, start + 1)  # codec
    _, p = _varint(data, p)  # multihash code
    digest_len, p = _varint(data, p)
    return p + digest_len


def _record(raw: bytes) -> dict[str, Any]:
    try:
        value = libipld.decode_dag_cbor(raw)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"invalid record: {exc}") from exc
    if type(value) is not dict:
        raise FrameError("invalid record: not a map")
    _render(value, _TAG_CID in raw)
    return value


def _render(value: Any, links: bool) -> None:  # a map or a list
    """Render decoded DAG-CBOR in the data model's JSON form (``$link``, ``$bytes``), in place.

    The decoded objects are fresh and ours, so rewriting them in place saves rebuilding every
    map of every record. A map's values and a list's items are walked alike (replacing a
    map's value while iterating it is safe: the keys do not change).
    """
    for key, item in value.items() if type(value) is dict else enumerate(value):
        kind = type(item)
        if kind is dict or kind is list:
            _render(item, links)
        elif kind is bytes:
            value[key] = _render_bytes(item, links)


def _render_bytes(value: bytes, links: bool) -> dict[str, str]:
    if links and _is_cid(value):
        return {"$link": libipld.encode_cid(value)}
    return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}


def _is_cid(value: bytes) -> bool:
    if len(value) == 36 and (value.startswith(_DAG_CBOR_SHA256) or value.startswith(_RAW_SHA256)):
        return True
    # CIDv1: 0x01, codec varint, hash code varint, digest length varint, digest.
    if len(value) < 4 or value[0] != 1:
        return False
    try:
        _, p = _varint(value, 1)
        _, p = _varint(value, p)
        digest_len, p = _varint(value, p)
    except FrameError:
        return False
    return p + digest_len == len(value)


class RelaySource(LiveSource):
    """Events from ``{url}/xrpc/com.atproto.sync.subscribeRepos``; see the module docstring.

    ``after_cursor`` is the last ``seq`` handled (the saved cursor); the first dial resumes
    right after it. ``collections`` filters commit ops (``None``: all). ``backoff``, ``clock``
    and ``sleep`` are injectable for tests. Liveness is the websocket keepalive (a ping every
    20 s, dropped after 20 s without a pong); ``idle_timeout_s`` also redials after that long
    without a frame, off by default because a small PDS can be quiet for minutes.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        after_cursor: int | None = None,
        collections: Iterable[str] | None = None,
        max_frame_bytes: int = 5 * 1024 * 1024,
        backoff: Backoff | None = None,
        idle_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            name=name or f"relay:{url}",
            max_frame_bytes=max_frame_bytes,
            backoff=backoff or Backoff(),
            idle_timeout_s=idle_timeout_s,
            clock=clock,
            sleep=sleep,
        )
        self.url = url
        self.decoder = RelayDecoder(collections)
        # The last seq yielded (or handed to us): the resume point and the dedupe mark.
        self.cursor: int | None = after_cursor
        self._use_cursor = True

    @property
    def frame_counts(self) -> Counter[str]:
        """Frames seen per type (``#commit``, ``#sync``, ``error``, ...)."""
        return self.decoder.frame_counts

    @staticmethod
    def position_before(event: Event, previous: int | None) -> int:
        """The cursor to resume after to read ``event`` again: its ``seq - 1`` (the whole
        commit is read again; see ``botsky.watermark``)."""
        return event.cursor - 1

    def _frame_too_big(self) -> None:
        # Resuming from the same seq would fetch the same frame again, forever: step past it.
        # subscribeRepos resumes after the cursor, so this skips exactly the next seq.
        if self.cursor is not None:
            self.cursor += 1

    def _url(self) -> str:
        cursor = self.cursor if self._use_cursor else None
        self._use_cursor = True
        return subscribe_url(self.url, cursor)

    def _decode(self, message: bytes | str) -> list[Event]:
        if isinstance(message, str):
            raise FrameError("text frame: subscribeRepos sends binary frames")
        kind, seq, events, body = self.decoder.decode(message)
        if kind == "error":
            self._on_error(body)
        if kind == "#info":
            log.info(
                "relay_info",
                source=self.name,
                info=str(body.get("name")),
                message=str(body.get("message"))[:200],
            )
            return []
        if seq is None:
            return []
        if self.cursor is not None and seq <= self.cursor:
            return []
        self.cursor = seq
        return events

    def _on_error(self, body: dict[str, Any]) -> None:
        error = str(body.get("error"))
        log.warning(
            "relay_error_frame",
            source=self.name,
            error=error,
            message=str(body.get("message"))[:200],
        )
        if error in ("FutureCursor", "OutdatedCursor"):
            # The relay's seqs are not ours to compare with any more: forget the dedupe mark.
            self.cursor = None
            self._use_cursor = False
            raise Reconnect(f"{error}: reconnecting without a cursor")
        raise Reconnect(f"{error}: reconnecting from seq {self.cursor}")
