"""The one event type every source converges on, its builders, AT-URIs, and Jetstream v1 JSON.

An ``Event`` is shaped like a Jetstream commit because Jetstream is already the normalized form
of the firehose: relay frames, replay files and the simulated world are all turned into it, so
everything downstream (presence, outcomes, the selector) handles exactly one type.

Decoders build events only through ``commit_event``, ``identity_event`` and ``account_event``:
one builder per kind, each with the same checks on every wire (a DID that says ``did:``, a
non-negative time, one of ``OPERATIONS``, a record unless deleting) raising ``FrameError``.
AT-URIs are built with ``at_uri`` and read with ``split_at_uri`` (and its strict form
``parse_at_uri``, and ``uri_authority``): nothing else in botsky takes one apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from botsky.errors import FrameError

__all__ = [
    "BLOCK",
    "FOLLOW",
    "LIKE",
    "OPERATIONS",
    "POST",
    "PROFILE",
    "REPOST",
    "Event",
    "PostRef",
    "account_event",
    "at_uri",
    "check_did",
    "check_operation",
    "commit_event",
    "event_to_jetstream",
    "identity_event",
    "jetstream_commit",
    "parse_at_uri",
    "parse_jetstream",
    "split_at_uri",
    "uri_authority",
]

POST: Final = "app.bsky.feed.post"
LIKE: Final = "app.bsky.feed.like"
REPOST: Final = "app.bsky.feed.repost"
FOLLOW: Final = "app.bsky.graph.follow"
BLOCK: Final = "app.bsky.graph.block"
PROFILE: Final = "app.bsky.actor.profile"

_KINDS: Final = frozenset({"commit", "identity", "account"})
OPERATIONS: Final = frozenset({"create", "update", "delete"})
"""The operations a commit event may carry, on every wire (``check_operation``)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One firehose event, normalized.

    ``cursor`` is the source's own resume position (Jetstream: ``time_us``; relay: ``seq``);
    ``time_us`` is when the event happened in the stream's clock (microseconds since the epoch).
    Commit fields are ``None`` for identity and account events; ``handle`` is set on identity
    events that carry one; ``active``/``status`` on account events.
    """

    did: str
    time_us: int
    kind: str
    cursor: int = 0
    operation: str | None = None
    collection: str | None = None
    rkey: str | None = None
    cid: str | None = None
    record: dict[str, Any] | None = None
    rev: str | None = None
    handle: str | None = None
    active: bool | None = None
    status: str | None = None
    # ``post``'s answer, kept: four sinks read each new post in a row (consent, presence,
    # outcomes, selector). Not a field of the event's value.
    _post: PostRef | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def uri(self) -> str:
        """The AT-URI of the record this commit touches."""
        return f"at://{self.did}/{self.collection}/{self.rkey}"

    @property
    def post(self) -> PostRef:
        """The record read as a post (``PostRef.of``), parsed once per event."""
        post = self._post
        if post is None:
            post = PostRef.of(self.record)
            _SET_POST(self, post)
        return post

    @property
    def is_post_create(self) -> bool:
        return self.operation == "create" and self.collection == POST

    def subject_uri(self) -> str | None:
        """For a like or repost, the URI it points at; for a block, None (see ``subject_did``)."""
        subject = (self.record or {}).get("subject")
        if isinstance(subject, dict):
            uri = subject.get("uri")
            return uri if isinstance(uri, str) else None
        return None

    def subject_did(self) -> str | None:
        """For a follow or block, the DID it points at."""
        subject = (self.record or {}).get("subject")
        return subject if isinstance(subject, str) else None


@dataclass(frozen=True, slots=True)
class PostRef:
    """The parts of a post record botsky reads: text, languages, thread position, quote."""

    text: str
    langs: tuple[str, ...]
    root_uri: str | None
    root_cid: str | None
    parent_uri: str | None
    parent_cid: str | None
    quote_uri: str | None
    mention_dids: tuple[str, ...]

    @classmethod
    def of(cls, record: object) -> PostRef:
        """Read a post record defensively: any field may be missing or of the wrong type.

        Anything that is not a dict (``None`` included) reads as an empty post.
        """
        if not isinstance(record, dict):
            record = {}
        text = record.get("text")
        langs = record.get("langs")
        reply = record.get("reply")
        root = reply.get("root") if isinstance(reply, dict) else None
        parent = reply.get("parent") if isinstance(reply, dict) else None
        return cls(
            text=text if isinstance(text, str) else "",
            langs=tuple(x for x in langs if isinstance(x, str)) if isinstance(langs, list) else (),
            root_uri=_str_field(root, "uri"),
            root_cid=_str_field(root, "cid"),
            parent_uri=_str_field(parent, "uri"),
            parent_cid=_str_field(parent, "cid"),
            quote_uri=_quote_uri(record.get("embed")),
            mention_dids=_mention_dids(record.get("facets")),
        )

    @property
    def is_reply(self) -> bool:
        return self.parent_uri is not None


def _str_field(obj: object, key: str) -> str | None:
    if isinstance(obj, dict):
        value = obj.get(key)
        return value if isinstance(value, str) else None
    return None


def _quote_uri(embed: object) -> str | None:
    if not isinstance(embed, dict):
        return None
    # app.bsky.embed.record holds {record: strongRef}; recordWithMedia nests it once more.
    record = embed.get("record")
    if isinstance(record, dict) and isinstance(record.get("record"), dict):
        record = record["record"]
    return _str_field(record, "uri")


def _mention_dids(facets: object) -> tuple[str, ...]:
    if not isinstance(facets, list):
        return ()
    found: list[str] = []
    for facet in facets:
        features = facet.get("features") if isinstance(facet, dict) else None
        for feature in features if isinstance(features, list) else ():
            if (
                isinstance(feature, dict)
                and feature.get("$type") == "app.bsky.richtext.facet#mention"
                and isinstance(feature.get("did"), str)
            ):
                found.append(feature["did"])
    return tuple(found)


def at_uri(did: str, collection: str, rkey: str) -> str:
    """``at://did/collection/rkey``."""
    return f"at://{did}/{collection}/{rkey}"


def split_at_uri(uri: object) -> tuple[str, str | None, str | None] | None:
    """``at://AUTHORITY[/COLLECTION[/RKEY]]`` as (authority, collection, rkey); None if ``uri``
    is not an ``at://`` string. An absent part is None (an empty one ""); the rkey is the rest
    after the second slash, so it may hold more slashes (the strict readers refuse that).

    The one AT-URI splitter: ``parse_at_uri``, ``uri_authority``, the web page's links and
    ``syntax.is_valid_at_uri`` all read URIs through it.
    """
    if type(uri) is not str or not uri.startswith("at://"):
        return None
    end = uri.find("/", 5)
    if end < 0:
        return uri[5:], None, None
    mid = uri.find("/", end + 1)
    if mid < 0:
        return uri[5:end], uri[end + 1 :], None
    return uri[5:end], uri[end + 1 : mid], uri[mid + 1 :]


def uri_authority(uri: object) -> str:
    """The authority (a DID, for records) of an ``at://`` URI; "" for anything else.

    ``split_at_uri(uri)[0]`` without the rest: this runs for every like and reply on the
    network (is it about a bot's record?), and building the tuple would cost twice as much.
    """
    if type(uri) is not str or not uri.startswith("at://"):
        return ""
    end = uri.find("/", 5)
    return uri[5:end] if end >= 0 else uri[5:]


def parse_at_uri(uri: str) -> tuple[str, str, str]:
    """Split ``at://did/collection/rkey``; raise ``ValueError`` for anything else."""
    parts = split_at_uri(uri)
    if parts is None:
        raise ValueError(f"not an AT-URI: {uri!r}")
    did, collection, rkey = parts
    if not did or not collection or not rkey or "/" in rkey:
        raise ValueError(f"not a record AT-URI: {uri!r}")
    return did, collection, rkey


_new = object.__new__
# The slots' own setters: building an Event through them skips the frozen dataclass's
# ``__init__`` (an ``object.__setattr__`` call per field), about twice as fast. Hot paths
# (Jetstream and relay decoding) use ``commit_event``; everything else calls ``Event(...)``.
_SET_DID = Event.__dict__["did"].__set__
_SET_TIME = Event.__dict__["time_us"].__set__
_SET_KIND = Event.__dict__["kind"].__set__
_SET_CURSOR = Event.__dict__["cursor"].__set__
_SET_OP = Event.__dict__["operation"].__set__
_SET_COLLECTION = Event.__dict__["collection"].__set__
_SET_RKEY = Event.__dict__["rkey"].__set__
_SET_CID = Event.__dict__["cid"].__set__
_SET_RECORD = Event.__dict__["record"].__set__
_SET_REV = Event.__dict__["rev"].__set__
_SET_HANDLE = Event.__dict__["handle"].__set__
_SET_ACTIVE = Event.__dict__["active"].__set__
_SET_STATUS = Event.__dict__["status"].__set__
_SET_POST = Event.__dict__["_post"].__set__


def check_did(did: object) -> str:
    """``did`` if it is a DID string (``did:...``), else ``FrameError``."""
    if type(did) is not str or not did.startswith("did:"):
        raise FrameError(f"missing or invalid did: {did!r}"[:200])
    return did


def check_operation(operation: object) -> str:
    """``operation`` if it is one of ``OPERATIONS``, else ``FrameError``."""
    # The type test first: a list or object would make the set look-up raise TypeError.
    if type(operation) is not str or operation not in OPERATIONS:
        raise FrameError(f"unknown operation: {operation!r}"[:200])
    return operation


def _check_time(time_us: object) -> int:
    # bool is an int subclass, and ``type(...) is`` refuses it as a time too.
    if type(time_us) is not int or time_us < 0:
        raise FrameError(f"missing or invalid time_us: {time_us!r}"[:200])
    return time_us


def commit_event(
    did: object,
    time_us: object,
    cursor: int,
    operation: object,
    collection: object,
    rkey: object,
    cid: object,
    record: object,
    rev: object,
) -> Event:
    """A commit event from decoded wire values, checked (``FrameError`` when malformed).

    ``did``, ``time_us`` and ``operation`` as ``check_did``/``check_operation`` say; the
    collection and rkey must be strings; a create or update needs a record (a dict), a delete
    keeps one only if it is a dict. A ``cid`` or ``rev`` that is not a string is dropped.
    Built field by field through the slots (the decoders' hot path; same result as
    ``Event(...)``).
    """
    check_did(did)
    _check_time(time_us)
    check_operation(operation)
    if type(collection) is not str or type(rkey) is not str:
        raise FrameError("commit without collection or rkey")
    if type(record) is not dict:
        if operation != "delete":
            raise FrameError(f"{operation} without a record")
        record = None
    e = _new(Event)
    _SET_DID(e, did)
    _SET_TIME(e, time_us)
    _SET_KIND(e, "commit")
    _SET_CURSOR(e, cursor)
    _SET_OP(e, operation)
    _SET_COLLECTION(e, collection)
    _SET_RKEY(e, rkey)
    _SET_CID(e, cid if type(cid) is str else None)
    _SET_RECORD(e, record)
    _SET_REV(e, rev if type(rev) is str else None)
    _SET_HANDLE(e, None)
    _SET_ACTIVE(e, None)
    _SET_STATUS(e, None)
    _SET_POST(e, None)
    return e


def jetstream_commit(did: object, time_us: object, cursor: int, commit: dict[str, Any]) -> Event:
    """``commit_event`` from a Jetstream commit object: v1's ``commit``, or a v2 payload (the
    same field names)."""
    g = commit.get
    return commit_event(
        did,
        time_us,
        cursor,
        g("operation"),
        g("collection"),
        g("rkey"),
        g("cid"),
        g("record"),
        g("rev"),
    )


def identity_event(did: object, time_us: object, cursor: int, handle: object) -> Event:
    """An identity event from decoded wire values; a ``handle`` that is not a string is None."""
    return _checked("identity", did, time_us, cursor, handle=_str_or_none(handle))


def account_event(
    did: object, time_us: object, cursor: int, active: object, status: object
) -> Event:
    """An account event from decoded wire values; mistyped ``active``/``status`` are None."""
    flag = active if isinstance(active, bool) else None
    return _checked("account", did, time_us, cursor, active=flag, status=_str_or_none(status))


def _checked(kind: str, did: object, time_us: object, cursor: int, **fields: Any) -> Event:
    return Event(
        did=check_did(did), time_us=_check_time(time_us), kind=kind, cursor=cursor, **fields
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def parse_jetstream(line: bytes | str) -> Event:
    """Parse one Jetstream v1 JSON event (a websocket message or a replay line).

    Raises ``FrameError`` for anything that is not a well-formed event; callers skip and count.
    """
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"invalid JSON: {exc}") from exc
    # orjson gives exact builtin types (never a subclass but bool of int), so ``type(x) is``
    # checks are the isinstance checks, faster.
    if type(data) is not dict:
        raise FrameError("event is not a JSON object")
    kind = data.get("kind")
    # isinstance first: a list or object here would make the set lookup raise TypeError.
    if not isinstance(kind, str) or kind not in _KINDS:
        raise FrameError(f"unknown kind: {kind!r}"[:200])
    body = data.get(kind)
    if type(body) is not dict:
        raise FrameError(f"{kind} event without a {kind!r} object")
    did, time_us = data.get("did"), data.get("time_us")
    cursor = time_us if type(time_us) is int else 0  # the builders refuse a bad time
    if kind == "commit":
        return jetstream_commit(did, time_us, cursor, body)
    if kind == "identity":
        return identity_event(did, time_us, cursor, body.get("handle"))
    return account_event(did, time_us, cursor, body.get("active"), body.get("status"))


def event_to_jetstream(event: Event) -> bytes:
    """Serialize an event as a Jetstream v1 JSON line (no newline); undoes ``parse_jetstream``."""
    out: dict[str, Any] = {"did": event.did, "time_us": event.time_us, "kind": event.kind}
    if event.kind == "commit":
        commit: dict[str, Any] = {
            "operation": event.operation,
            "collection": event.collection,
            "rkey": event.rkey,
        }
        # Optional fields are written only when set, so parsing the line gives the same Event.
        if event.rev is not None:
            commit["rev"] = event.rev
        if event.record is not None:
            commit["record"] = event.record
        if event.cid is not None:
            commit["cid"] = event.cid
        out["commit"] = commit
    elif event.kind == "identity":
        identity: dict[str, Any] = {"did": event.did}
        if event.handle is not None:
            identity["handle"] = event.handle
        out["identity"] = identity
    else:
        account: dict[str, Any] = {"did": event.did}
        if event.active is not None:
            account["active"] = event.active
        if event.status is not None:
            account["status"] = event.status
        out["account"] = account
    return orjson.dumps(out)
