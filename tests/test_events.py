"""``botsky.events``: Jetstream v1 parsing and serializing, and reading post records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import libipld
import orjson
import pytest

from botsky.errors import FrameError
from botsky.events import (
    BLOCK,
    LIKE,
    POST,
    Event,
    PostRef,
    at_uri,
    event_to_jetstream,
    parse_at_uri,
    parse_jetstream,
    split_at_uri,
    uri_authority,
)

DATA = Path(__file__).parent / "data"
LINES = (DATA / "jetstream" / "expected_v1.jsonl").read_bytes().splitlines()
DID = "did:plc:o2rolxey6s5k7d4lxcz3inl4"


def corpus(**match: Any) -> list[dict[str, Any]]:
    """Corpus events (as dicts) whose commit fields equal ``match``."""
    found = []
    for line in LINES:
        data = orjson.loads(line)
        commit = data.get("commit", {})
        if all(commit.get(k) == v for k, v in match.items()):
            found.append(data)
    return found


def line(**fields: Any) -> bytes:
    base: dict[str, Any] = {"did": DID, "time_us": 1_783_175_888_000_000}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_parse_commit_create() -> None:
    """A real post create becomes a commit Event with its record, cid, rev and cursor."""
    raw = next(x for x in LINES if b'"rkey":"3mptbyp7lu223"' in x)
    event = parse_jetstream(raw)
    assert event.kind == "commit"
    assert event.operation == "create"
    assert event.collection == POST
    assert event.rkey == "3mptbyp7lu223"
    assert event.did == DID
    assert event.cursor == event.time_us == 1_783_175_888_130_414
    assert event.cid == "bafyreifq66rnqqmr62ussjdhneebgoeaci5extyyjyqymkqwgtr4667gsi"
    assert event.rev == "3mptbypnxeq2i"
    assert event.record is not None and event.record["text"] == "이쁘시네용~~~"
    assert event.is_post_create
    assert event.uri == f"at://{DID}/{POST}/3mptbyp7lu223"


def test_parse_commit_delete() -> None:
    """A delete has no record and no cid."""
    event = parse_jetstream(orjson.dumps(corpus(operation="delete")[0]))
    assert event.operation == "delete"
    assert event.record is None
    assert event.cid is None
    assert not event.is_post_create


def test_parse_commit_update() -> None:
    """An update carries the new record."""
    event = parse_jetstream(orjson.dumps(corpus(operation="update")[0]))
    assert event.operation == "update"
    assert event.record is not None


def test_parse_identity() -> None:
    """An identity event has no commit fields; its handle is read when present."""
    event = parse_jetstream(next(x for x in LINES if b'"kind":"identity"' in x))
    assert event.kind == "identity"
    assert event.did == "did:plc:hqvhxrowqbemo5e4wjnj6zao"
    assert event.operation is None and event.collection is None and event.handle is None
    named = parse_jetstream(line(kind="identity", identity={"did": DID, "handle": "a.bsky.social"}))
    assert named.handle == "a.bsky.social"


def test_parse_account() -> None:
    """An account event reads ``active`` and ``status``."""
    event = parse_jetstream(next(x for x in LINES if b'"kind":"account"' in x))
    assert event.kind == "account"
    assert event.active is True
    assert event.status is None
    off = parse_jetstream(line(kind="account", account={"active": False, "status": "takendown"}))
    assert (off.active, off.status) == (False, "takendown")


def test_parse_accepts_str() -> None:
    """A websocket text message (str) parses like bytes."""
    assert parse_jetstream(LINES[0].decode()) == parse_jetstream(LINES[0])


def test_like_and_block_subjects() -> None:
    """A like points at a URI; a block points at a DID."""
    like = parse_jetstream(orjson.dumps(corpus(collection=LIKE)[0]))
    assert (like.subject_uri() or "").startswith("at://")
    assert like.subject_did() is None
    block = parse_jetstream(orjson.dumps(corpus(collection=BLOCK)[0]))
    assert block.subject_did() == "did:plc:wmv3rxaywejtjg4kmrq7bhsy"
    assert block.subject_uri() is None


COMMIT = {"operation": "create", "collection": POST, "rkey": "3k", "record": {"text": "hi"}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "invalid JSON"),
        (b'{"did":"did:plc:a"', "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[" * 2000, "invalid JSON"),
        (b'["did:plc:a"]', "not a JSON object"),
        (b"null", "not a JSON object"),
        (line(did=..., kind="identity", identity={}), "invalid did"),
        (line(did="alice", kind="identity", identity={}), "invalid did"),
        (line(did=7, kind="identity", identity={}), "invalid did"),
        (line(time_us=..., kind="identity", identity={}), "invalid time_us"),
        (line(time_us="1", kind="identity", identity={}), "invalid time_us"),
        (line(time_us=-1, kind="identity", identity={}), "invalid time_us"),
        (line(time_us=True, kind="identity", identity={}), "invalid time_us"),
        (line(time_us=1.5, kind="identity", identity={}), "invalid time_us"),
        (line(kind="tombstone"), "unknown kind"),
        (line(kind=None), "unknown kind"),
        (line(kind="commit"), "without a 'commit' object"),
        (line(kind="identity", identity="x"), "without a 'identity' object"),
        (line(kind="commit", commit={**COMMIT, "operation": "upsert"}), "unknown operation"),
        (line(kind="commit", commit={**COMMIT, "collection": None}), "collection or rkey"),
        (line(kind="commit", commit={**COMMIT, "rkey": 3}), "collection or rkey"),
        (line(kind="commit", commit={**COMMIT, "record": None}), "create without a record"),
        (line(kind="commit", commit={**COMMIT, "operation": "update", "record": []}), "update"),
    ],
)
def test_bad_shapes_raise_frame_error(raw: bytes, message: str) -> None:
    """Anything that is not a well-formed event raises ``FrameError`` (and nothing else)."""
    with pytest.raises(FrameError, match=message):
        parse_jetstream(raw)


@pytest.mark.parametrize("index", range(len(LINES)))
def test_corpus_line_round_trips(index: int) -> None:
    """parse → serialize → parse gives an equal Event for every corpus line."""
    event = parse_jetstream(LINES[index])
    assert parse_jetstream(event_to_jetstream(event)) == event


def test_commit_serialization_matches_jetstream() -> None:
    """A serialized commit is the same JSON object Jetstream sent."""
    for raw in LINES:
        original = orjson.loads(raw)
        if original["kind"] == "commit":
            assert orjson.loads(event_to_jetstream(parse_jetstream(raw))) == original


@pytest.mark.parametrize(
    "event",
    [
        Event(
            did=DID,
            time_us=5,
            kind="commit",
            cursor=5,
            operation="delete",
            collection=POST,
            rkey="3k",
        ),
        Event(did=DID, time_us=5, kind="account", cursor=5),
        Event(did=DID, time_us=5, kind="account", cursor=5, active=False, status="deleted"),
        Event(did=DID, time_us=5, kind="identity", cursor=5, handle="a.bsky.social"),
    ],
)
def test_optional_fields_round_trip(event: Event) -> None:
    """Events without rev, active or status round-trip unchanged (they used to gain defaults)."""
    assert parse_jetstream(event_to_jetstream(event)) == event


def test_post_ref_reply_and_langs() -> None:
    """A real reply post yields its text, languages and strong root/parent refs."""
    record = next(x for x in corpus(rkey="3mptbyp7lu223"))["commit"]["record"]
    ref = PostRef.of(record)
    parent = "at://did:plc:i5y2f3gtpjxs3qg6fwgb6jb4/app.bsky.feed.post/3mpt7u2vlgs2c"
    assert ref.text == "이쁘시네용~~~"
    assert ref.langs == ("ko",)
    assert ref.is_reply
    assert ref.root_uri == ref.parent_uri == parent
    assert (
        ref.root_cid
        == ref.parent_cid
        == "bafyreifzanogmt75wega3mdkjqiv5rg6usowy6hr3nrlvioezvu7jur3cq"
    )
    assert ref.quote_uri is None
    assert ref.mention_dids == ()


def test_post_ref_on_every_corpus_post() -> None:
    """Every corpus post reads without error; replies, languages and plain posts all appear."""
    refs = [PostRef.of(e["commit"]["record"]) for e in corpus(collection=POST, operation="create")]
    assert len(refs) == 17
    assert sum(r.is_reply for r in refs) == 8
    assert all(r.parent_uri and r.root_cid for r in refs if r.is_reply)
    assert ("en-US", "en") in {r.langs for r in refs}
    assert () in {r.langs for r in refs}  # a post without langs
    assert all(r.quote_uri is None and r.mention_dids == () for r in refs)


def test_post_ref_quote_with_media() -> None:
    """A real recordWithMedia quote (SDK sample) yields the quoted post's URI."""
    thread = json.loads(
        (DATA / "atproto-sdk-samples" / "thread_view_post_with_embed_media.json").read_text()
    )
    ref = PostRef.of(thread["thread"]["post"]["record"])
    assert ref.quote_uri == "at://did:plc:kvwvcn5iqfooopmyzvb4qzba/app.bsky.feed.post/3kahesw26il2z"
    assert ref.langs == ("en",)
    assert ref.text == ""
    assert not ref.is_reply


def test_post_ref_plain_quote_and_mentions() -> None:
    """An app.bsky.embed.record quote and mention facets (lexicon shapes) are read."""
    quoted = "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/app.bsky.feed.post/3k2yihcrp6f2c"
    record = {
        "$type": "app.bsky.feed.post",
        "text": "@alice.test and @bob.test look",
        "embed": {"$type": "app.bsky.embed.record", "record": {"uri": quoted, "cid": "bafyrei"}},
        "facets": [
            {
                "index": {"byteStart": 0, "byteEnd": 11},
                "features": [{"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:alice"}],
            },
            {
                "index": {"byteStart": 16, "byteEnd": 25},
                "features": [
                    {"$type": "app.bsky.richtext.facet#link", "uri": "https://x.test"},
                    {"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:bob"},
                ],
            },
        ],
        "createdAt": "2024-01-01T00:00:00Z",
    }
    ref = PostRef.of(record)
    assert ref.quote_uri == quoted
    assert ref.mention_dids == ("did:plc:alice", "did:plc:bob")


@pytest.mark.parametrize(
    "record",
    [
        None,
        {},
        "garbage",
        42,
        ["text", "hi"],
        {"text": 5, "langs": "en", "reply": "x", "embed": [], "facets": {}},
        {"langs": [1, None, "en"], "reply": {"root": "x", "parent": []}},
        {"embed": {"record": {"record": 5}}, "facets": [None, 3, {"features": "x"}]},
        {"facets": [{"features": [None, {"$type": "app.bsky.richtext.facet#mention", "did": 5}]}]},
        {"reply": {"root": {"uri": 1, "cid": None}, "parent": {"uri": ["a"]}}},
    ],
)
def test_post_ref_never_raises_on_garbage(record: object) -> None:
    """Garbage records read as (mostly) empty posts instead of raising."""
    ref = PostRef.of(record)
    assert isinstance(ref.text, str)
    assert all(isinstance(x, str) for x in ref.langs)
    assert ref.quote_uri is None
    assert ref.mention_dids == ()
    assert not ref.is_reply


def test_at_uri_helpers() -> None:
    """``at_uri`` and ``parse_at_uri`` are inverses; non-record URIs raise ``ValueError``."""
    uri = at_uri(DID, POST, "3k")
    assert parse_at_uri(uri) == (DID, POST, "3k")
    for bad in (
        "https://x",
        f"at://{DID}",
        f"at://{DID}/{POST}",
        f"at://{DID}//3k",
        f"at://{DID}/{POST}/3k/x",
    ):
        with pytest.raises(ValueError):
            parse_at_uri(bad)


@pytest.mark.parametrize(
    ("uri", "parts", "authority"),
    [
        (f"at://{DID}/{POST}/3k", (DID, POST, "3k"), DID),
        (f"at://{DID}/{POST}", (DID, POST, None), DID),
        (f"at://{DID}", (DID, None, None), DID),
        (f"at://{DID}/", (DID, "", None), DID),
        (f"at://{DID}/{POST}/3k/x", (DID, POST, "3k/x"), DID),
        ("at://", ("", None, None), ""),
        ("https://bsky.app/profile/x", None, ""),
        ("", None, ""),
        (None, None, ""),
        (7, None, ""),
    ],
)
def test_split_at_uri_and_its_authority(uri: object, parts: object, authority: str) -> None:
    """The one AT-URI splitter: absent parts are None, anything not at:// is None; the
    authority reads "" for what has none."""
    assert split_at_uri(uri) == parts
    assert uri_authority(uri) == authority


def test_every_wire_refuses_the_same_malformed_commit() -> None:
    """A commit with a non-DID repo or an unknown operation is refused with the same reason
    on Jetstream v1, Jetstream v2 and the relay (one builder, one set of checks)."""
    from botsky.sources.jetstream import _v2_event
    from botsky.sources.relay import RelayDecoder

    def relay_frame(repo: str, action: str) -> bytes:
        header = libipld.encode_dag_cbor({"op": 1, "t": "#commit"})
        op = {"action": action, "path": f"{POST}/3k", "cid": None}
        body = {"seq": 5, "repo": repo, "ops": [op], "time": "2026-01-01T00:00:00Z"}
        return header + libipld.encode_dag_cbor(body)

    for did, op, reason in (
        ("alice", "delete", "missing or invalid did"),
        (DID, "upsert", "unknown operation"),
    ):
        commit = {"operation": op, "collection": POST, "rkey": "3k"}
        v1 = orjson.dumps({"did": did, "time_us": 1, "kind": "commit", "commit": commit})
        v2 = {"did": did, "time": "2026-01-01T00:00:00Z", **commit}
        with pytest.raises(FrameError, match=reason):
            parse_jetstream(v1)
        with pytest.raises(FrameError, match=reason):
            _v2_event("commit", v2)
        with pytest.raises(FrameError, match=reason):
            RelayDecoder().decode(relay_frame(did, op))
