"""Deactivated and taken-down accounts, end to end: ``#account`` events read from a relay's
real subscribeRepos frames and from Jetstream's v1 JSON, over loopback websockets, through
``build_app`` and ``App.run`` with a SQLite ledger and a model behind a loopback OpenAI server.

An account whose host says it is not active is never answered (selector reason
``inactive_account``) and never offered as a mention candidate, also after a restart, until an
``#account`` event reactivates it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import libipld
import pytest
from websockets.asyncio.server import ServerConnection

from botsky.configload import load_config, resolve_secrets
from botsky.events import Event, event_to_jetstream
from botsky.ledger.base import AccountStatus, Mention
from botsky.ledger.sqlite import SqliteLedger
from botsky.runtime import App
from botsky.testing import FakeVendorServer, identity, post
from botsky.wiring import build_app
from tests.support import T0
from tests.test_jetstream import iso
from tests.test_relay import frame_server, hold

BOB, CAROL = "did:plc:bob", "did:plc:carol"
ASKER = [f"did:plc:asker{i}" for i in range(4)]
TOPIC = "sourdough bread baking, rye starter and crumb"


# --- the wires --------------------------------------------------------------------------------


def _iso(time_us: int) -> str:
    """A firehose ``time``: RFC 3339 in UTC with milliseconds, as relays write it."""
    return iso(time_us // 1000 * 1000)[:19] + f".{time_us // 1000 % 1000:03d}Z"


def _cid(block: bytes) -> bytes:
    """The CIDv1 (dag-cbor, sha2-256) of a block, as raw bytes."""
    return b"\x01\x71\x12\x20" + hashlib.sha256(block).digest()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _car(root: bytes, blocks: list[bytes]) -> bytes:
    """A CAR v1 file: the header (roots) then each block as varint length, CID, bytes."""
    header = _links(libipld.encode_dag_cbor({"roots": [_link(root)], "version": 1}))
    body = b"".join(_varint(len(_cid(b)) + len(b)) + _cid(b) + b for b in blocks)
    return _varint(len(header)) + header + body


# libipld writes bytes, not CID links: a CID to be a link (tag 42) is written as a marked byte
# string, and ``_links`` turns those into links. No CID starts with these two bytes.
_MARK = b"\xfe\xed"


def _link(cid: bytes) -> bytes:
    return _MARK + cid


def _links(encoded: bytes) -> bytes:
    """Rewrite every marked byte string (``_link``) as a tag-42 CID link, as relays send them."""
    # A 38-byte string is 0x58 0x26 + mark + 36-byte CID; a link is tag 42 over 0x00 + CID.
    out, pos = bytearray(), 0
    while (i := encoded.find(b"\x58\x26" + _MARK, pos)) >= 0:
        cid = encoded[i + 4 : i + 40]
        out += encoded[pos:i] + b"\xd8\x2a\x58\x25\x00" + cid
        pos = i + 40
    return bytes(out + encoded[pos:])


def relay_frame(event: Event, seq: int) -> bytes:
    """``event`` as the subscribeRepos frame a relay sends (commit: a one-op CAR with the
    record and commit blocks, CIDs as links)."""
    time = _iso(event.time_us)
    if event.kind == "account":
        body: dict[str, object] = {"seq": seq, "did": event.did, "time": time}
        body["active"] = bool(event.active)
        if event.status is not None:
            body["status"] = event.status
        header = {"op": 1, "t": "#account"}
    elif event.kind == "identity":
        body = {"seq": seq, "did": event.did, "time": time}
        if event.handle is not None:
            body["handle"] = event.handle
        header = {"op": 1, "t": "#identity"}
    else:
        assert event.record is not None and event.rev is not None
        record = libipld.encode_dag_cbor(event.record)
        commit = libipld.encode_dag_cbor(
            {"did": event.did, "rev": event.rev, "version": 3, "data": _link(_cid(record))}
        )
        commit = _links(commit)
        body = {
            "seq": seq,
            "rebase": False,
            "tooBig": False,
            "repo": event.did,
            "commit": _link(_cid(commit)),
            "rev": event.rev,
            "since": None,
            "blocks": _car(_cid(commit), [commit, record]),
            "ops": [
                {
                    "action": "create",
                    "path": f"{event.collection}/{event.rkey}",
                    "cid": _link(_cid(record)),
                }
            ],
            "blobs": [],
            "time": time,
        }
        header = {"op": 1, "t": "#commit"}
    return libipld.encode_dag_cbor(header) + _links(libipld.encode_dag_cbor(body))


def jetstream_line(event: Event, seq: int) -> str:
    """``event`` as the v1 JSON line Jetstream sends (identity and account events carry the
    upstream frame's fields, as in the recorded corpus)."""
    if event.kind == "commit":
        return event_to_jetstream(event).decode()
    inner: dict[str, object] = {"did": event.did, "seq": seq, "time": _iso(event.time_us)}
    if event.kind == "account":
        inner["active"] = bool(event.active)
        if event.status is not None:
            inner["status"] = event.status
    elif event.handle is not None:
        inner["handle"] = event.handle
    line = {"did": event.did, "time_us": event.time_us, "kind": event.kind, event.kind: inner}
    return json.dumps(line)


def account(did: str, time_us: int, active: bool, status: str | None = None) -> Event:
    return Event(did=did, time_us=time_us, kind="account", active=active, status=status)


# --- a run ------------------------------------------------------------------------------------


def _config(tmp: Path, wire: str, url: str, model_url: str) -> Path:
    source = (
        {"kind": "relay", "url": url, "name": "stream"}
        if wire == "relay"
        else {"kind": "jetstream", "url": url, "name": "stream", "jetstream_version": "v1"}
    )
    cfg = {
        "data_dir": str(tmp / "data"),
        "seed": 3,
        "source": source | {"backoff_min_s": 0.05, "backoff_max_s": 0.1},
        "audience": {
            "mode": "open",
            "acknowledge_open_audience": True,
            "mentions_per_target_per_day": None,
            "replies_per_author_per_day": None,
        },
        "recommend": {"cooldown_s": 0},
        "dispatch": {"lockstep": True, "author_cooldown_s": 0},
        "logging": {"format": "json"},
    }
    (tmp / "botsky.yaml").write_text(json.dumps(cfg))
    bots = {
        "bots": [
            {
                "name": "ada",
                "persona": "You are Ada.",
                "provider": "openai_compatible",
                "base_url": f"{model_url}/v1",
                "model": "fake-ada",
                "picker": "llm",
                "account": {"handle": "ada.test", "did": "did:plc:ada"},
            }
        ]
    }
    (tmp / "bots.yaml").write_text(json.dumps(bots))
    return tmp / "botsky.yaml"


async def _run(tmp: Path, wire: str, events: list[Event], model_url: str, first_seq: int) -> App:
    """Serve ``events`` on ``wire`` (from ``first_seq`` on) and run botsky until every post in
    them has been handled; the run resumes from the cursor a previous run saved."""
    posts = sum(e.kind == "commit" for e in events)

    async def script(ws: ServerConnection, n: int, query: dict[str, list[str]]) -> None:
        after = int(query["cursor"][0]) if "cursor" in query else None
        for seq, event in enumerate(events, first_seq):
            if wire == "relay":
                if after is None or seq > after:
                    await ws.send(relay_frame(event, seq))
            elif after is None or event.time_us > after:
                await ws.send(jetstream_line(event, seq))
        await hold(ws)

    async with frame_server(script) as server:
        loaded = load_config(_config(tmp, wire, server.url, model_url), environ={})
        app = await build_app(loaded, resolve_secrets(loaded, environ={}, live=False))
        stop, handled = asyncio.Event(), asyncio.Event()
        route = app.route

        async def route_and_count(event: Event) -> None:
            await route(event)
            # Lockstep: a post is counted by the selector once its reply work is done.
            if sum(app.summary.selector.values()) >= posts:
                handled.set()

        app.route = route_and_count  # type: ignore[method-assign]
        running = asyncio.create_task(app.run(stop))
        try:
            async with asyncio.timeout(30):
                await handled.wait()
        finally:
            stop.set()
            await running
            await app.aclose()
    return app


async def _ledger(tmp: Path) -> tuple[list[Mention], list[AccountStatus]]:
    led = SqliteLedger(tmp / "data" / "botsky.sqlite3")
    await led.open()
    try:
        return await led.mentions(), await led.inactive_accounts()
    finally:
        await led.close()


def _prompts(model: FakeVendorServer) -> Callable[[], list[str]]:
    return lambda: [
        next(m["content"] for m in r["body"]["messages"] if m["role"] == "user")
        for r in model.requests
        if r["path"].endswith("/chat/completions")
    ]


@pytest.mark.parametrize("wire", ["relay", "jetstream"])
async def test_inactive_accounts_are_never_answered_or_mentioned(wire: str, tmp_path: Path) -> None:
    """After ``#account active=false`` a user's posts are refused (``inactive_account``) and
    nobody is offered them as a mention, also after a restart; ``active=true`` undoes it."""
    t, s = T0, 1_000_000  # one event a second: relay times have millisecond precision
    first = [
        identity(BOB, t, "bob.test"),
        identity(CAROL, t + 1 * s, "carol.test"),
        post(BOB, t + 2 * s, f"{TOPIC}, every day"),
        post(CAROL, t + 3 * s, f"{TOPIC}, on weekends"),
        account(BOB, t + 4 * s, False, "deactivated"),
        post(ASKER[0], t + 5 * s, "any sourdough bread tips for a rye starter?"),
        post(BOB, t + 6 * s, "sourdough bread baking question: is my rye starter dead?"),
    ]
    second = [
        # A new process: it knows nobody yet. Bob is online again (a relay that does not
        # validate still passes his post on) but stays inactive: what the ledger remembered.
        identity(BOB, t + 7 * s, "bob.test"),
        identity(CAROL, t + 8 * s, "carol.test"),
        post(CAROL, t + 9 * s, f"{TOPIC}, rye only"),
        post(BOB, t + 10 * s, f"{TOPIC}, and more crumb shots"),
        post(ASKER[1], t + 11 * s, "sourdough bread: how warm should a rye starter be?"),
        account(BOB, t + 12 * s, True),
        post(BOB, t + 13 * s, "sourdough bread is back on: rye starter revived"),
        post(ASKER[2], t + 14 * s, "sourdough rye starter bread crumb advice please"),
    ]
    with FakeVendorServer() as model:
        run1 = await _run(tmp_path, wire, first, model.url, first_seq=100)
        assert run1.summary.accounts == {"deactivated": 1}
        assert run1.summary.selector["inactive_account"] == 1
        mentions, inactive = await _ledger(tmp_path)
        assert inactive == [AccountStatus(BOB, False, "deactivated", t + 4 * s)]
        # Carol asked while bob was active: he was hers to mention. Then he was not.
        assert [(m.post_author, m.mentioned_did) for m in mentions] == [
            (CAROL, BOB),
            (ASKER[0], CAROL),
        ]
        assert BOB not in mentions[1].candidates

        run2 = await _run(tmp_path, wire, second, model.url, first_seq=200)
        assert run2.summary.selector["inactive_account"] == 1
        assert run2.summary.accounts == {"reactivated": 1}
        mentions, inactive = await _ledger(tmp_path)
        assert inactive == []
        assert [m.post_author for m in mentions[2:]] == [ASKER[1], BOB, ASKER[2]]
        assert BOB not in mentions[2].candidates  # still inactive: remembered by the ledger
        assert BOB in mentions[4].candidates  # reactivated
        # The model was never offered bob while he was inactive (asker0's and asker1's posts).
        offered = _prompts(model)()
        assert len(offered) == 5
        assert "bob.test" in offered[0] and "bob.test" in offered[4]
        assert "bob.test" not in offered[1] and "bob.test" not in offered[2]
