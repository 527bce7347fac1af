"""The feed against the reference PDS: real service tokens, real records, the real firehose.

``botsky run`` serves the feed (web app on a loopback port, its did:web
``did:web:localhost%3A<port>``) over a ledger holding four real bot replies posted on the PDS.
A viewer's PDS mints service tokens with ``com.atproto.server.getServiceAuth``; the feed
answers them with bot replies and records the exposure under the viewer; forged, expired and
wrong-audience tokens get the unpersonalized feed; ``sendInteractions`` marks an item seen; the
viewer's like on the PDS reaches botsky through the PDS firehose and joins the exposure;
``botsky feed publish`` writes the generator record and ``botsky feed check`` verifies it all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from botsky.ledger.feed import ExposureRow
from botsky.ledger.sqlite import SqliteLedger
from tests.pds.harness import LocalPds, TestAccount
from tests.support import unique_name
from tests.test_ledger import make_mention

pytestmark = pytest.mark.slow

POST = "app.bsky.feed.post"
SKELETON = "app.bsky.feed.getFeedSkeleton"
INTERACTIONS = "app.bsky.feed.sendInteractions"
WAIT_S = 60.0
T = TypeVar("T")


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, probe: Callable[[], T | None], proc: subprocess.Popen[str], out: Path) -> T:
    deadline = time.monotonic() + WAIT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"botsky exited before {what}:\n{out.read_text()[-5000:]}")
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{out.read_text()[-5000:]}")
        time.sleep(0.2)


def _exposures(path: Path) -> list[ExposureRow]:
    async def read() -> list[ExposureRow]:
        led = SqliteLedger(path)
        await led.open()
        try:
            return await led.feed_exposures()
        finally:
            await led.close()

    return asyncio.run(read())


def _page_rows(path: Path, req_id: str, n: int) -> list[ExposureRow]:
    """The ``n`` exposures of page ``req_id``: the feed writes pages just behind the answer,
    so wait (a few seconds at most) until they are all there."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in _exposures(path) if r.exposure.req_id == req_id]
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def _seed(path: Path, bot: TestAccount, replies: list[dict[str, str]]) -> None:
    async def write() -> None:
        led = SqliteLedger(path)
        await led.open()
        try:
            for i, ref in enumerate(replies):
                await led.record_mention(
                    make_mention(
                        i,
                        reply_uri=ref["uri"],
                        reply_cid=ref["cid"],
                        model=("model-a", "model-b")[i % 2],
                        created_us=time.time_ns() // 1000 - 60_000_000,
                    )
                )
        finally:
            await led.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(write())


def _token(pds: LocalPds, who: TestAccount, aud: str, lxm: str, exp: int | None = None) -> str:
    params: dict[str, Any] = {"aud": aud, "lxm": lxm}
    if exp is not None:
        params["exp"] = exp
    out = pds.xrpc("com.atproto.server.getServiceAuth", params=params, jwt=who.access_jwt)
    return str(out["token"])


def _forge(token: str, **claims: Any) -> str:
    head, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(claims)
    forged = base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")
    return f"{head}.{forged}.{sig}"


def test_feed_on_the_reference_pds(pds_factory: Callable[..., LocalPds], tmp_path: Path) -> None:
    """Tokens minted by the viewer's PDS get bot replies and an exposure under the viewer;
    bad tokens get the anonymous feed; seen and likes join; publish and check work."""
    # A PDS of its own: tests that replay the shared PDS's firehose from cursor 0
    # (test_pds_integration) would otherwise also see, and verify, this test's accounts.
    pds = pds_factory()
    bot = pds.create_account(unique_name("feedbot"))
    asker = pds.create_account(unique_name("asker"))
    viewer = pds.create_account(unique_name("viewer"))
    publisher = pds.create_account(unique_name("publisher"))
    question = pds.create_record(
        asker, POST, {"$type": POST, "text": "Any good rye recipes?", "createdAt": _now()}
    )
    replies = [
        pds.create_record(
            bot,
            POST,
            {
                "$type": POST,
                "text": f"Reply {i}: try a 100% rye with a long proof.",
                "createdAt": _now(),
                "reply": {"root": question, "parent": question},
            },
        )
        for i in range(4)
    ]
    port = _free_port()
    service_did = f"did:web:localhost%3A{port}"
    endpoint = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    _seed(data / "botsky.sqlite3", bot, replies)
    (tmp_path / "bots.yaml").write_text(
        json.dumps(
            {
                "bots": [
                    {
                        "name": "control",
                        "persona": "A template.",
                        "provider": "template",
                        "model": "model-a",
                        "picker": "similar",
                        "account": {"handle": bot.handle, "did": bot.did},
                    }
                ]
            }
        )
    )
    cfg = tmp_path / "botsky.yaml"
    cfg.write_text(
        json.dumps(
            {
                "data_dir": str(data),
                "bots_file": "bots.yaml",
                "source": {"kind": "relay", "url": pds.ws_url, "name": "feed-it"},
                "posting": {"mode": "dry_run", "pds_url": pds.pds_url},
                "identity": {"plc_url": pds.plc_url},
                "web": {"enabled": True, "host": "127.0.0.1", "port": port},
                "feed": {
                    "enabled": True,
                    "service_did": service_did,
                    "publisher": {
                        "handle": publisher.handle,
                        "did": publisher.did,
                        "password_env": "IT_FEED_PUBLISHER_PW",
                    },
                    "refresh_s": 0.3,
                },
                "logging": {"format": "json", "level": "info", "file": None},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    env["IT_FEED_PUBLISHER_PW"] = publisher.password
    out = tmp_path / "run.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "botsky", "run", "-c", str(cfg)],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    ledger = data / "botsky.sqlite3"
    feed_uri = f"at://{publisher.did}/app.bsky.feed.generator/botsky-fair"
    reply_uris = {r["uri"] for r in replies}
    try:

        def up() -> bool | None:
            try:
                r = httpx.get(f"{endpoint}/xrpc/app.bsky.feed.describeFeedGenerator", timeout=2)
            except httpx.HTTPError:
                return None
            return True if r.status_code == 200 else None

        _wait("the feed to answer", up, proc, out)

        def skeleton(auth: str | None, limit: int = 4, **params: str) -> dict[str, Any]:
            headers = {"authorization": f"Bearer {auth}"} if auth else {}
            r = httpx.get(
                f"{endpoint}/xrpc/{SKELETON}",
                params={"feed": feed_uri, "limit": limit, **params},
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 200, r.text
            return dict(r.json())

        # The viewer's PDS mints the token; the feed answers with bot replies, recorded.
        token = _token(pds, viewer, service_did, SKELETON)
        page = skeleton(token, limit=2)
        assert {i["post"] for i in page["feed"]} <= reply_uris and len(page["feed"]) == 2
        mine = _page_rows(ledger, page["reqId"], 2)
        assert [r.exposure.viewer for r in mine] == [viewer.did] * 2
        assert {r.exposure.arm for r in mine} == {"model-a", "model-b"}
        # The cursor continues the session without repeats.
        nxt = skeleton(token, limit=2, cursor=page["cursor"])
        assert not {i["post"] for i in nxt["feed"]} & {i["post"] for i in page["feed"]}
        # The did#bsky_fg audience form works too.
        fg = skeleton(_token(pds, viewer, f"{service_did}#bsky_fg", SKELETON), limit=1)
        fg_rows = _page_rows(ledger, fg["reqId"], 1)
        assert [r.exposure.viewer for r in fg_rows] == [viewer.did]

        # Forged, expired and wrong-audience tokens: the unpersonalized feed, no viewer.
        expiring = _token(pds, viewer, service_did, SKELETON, exp=int(time.time()) + 2)
        bad = {
            "forged": _forge(token, iss=asker.did),
            "wrong audience": _token(pds, viewer, "did:web:elsewhere.example.com", SKELETON),
            "wrong method": _token(pds, viewer, service_did, INTERACTIONS),
        }
        time.sleep(3.5)
        bad["expired"] = expiring
        for name, tok in bad.items():
            answer = skeleton(tok, limit=2)
            rows = _page_rows(ledger, answer["reqId"], 2)
            assert len(rows) == 2 and all(r.exposure.viewer is None for r in rows), name

        # sendInteractions: the viewer says the first item was seen.
        first = page["feed"][0]
        seen_token = _token(pds, viewer, service_did, INTERACTIONS)
        r = httpx.post(
            f"{endpoint}/xrpc/{INTERACTIONS}",
            json={
                "interactions": [
                    {
                        "item": first["post"],
                        "event": "app.bsky.feed.defs#interactionSeen",
                        "feedContext": first["feedContext"],
                        "reqId": page["reqId"],
                    }
                ]
            },
            headers={"authorization": f"Bearer {seen_token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        # The viewer likes it on the PDS: the firehose brings the like to the feed's join.
        liked = next(x for x in replies if x["uri"] == first["post"])
        pds.create_record(
            viewer,
            "app.bsky.feed.like",
            {"$type": "app.bsky.feed.like", "subject": liked, "createdAt": _now()},
        )

        def joined() -> ExposureRow | None:
            # The like joins the viewer's latest exposure of the item (a later session may
            # have shown it again).
            rows = [
                r
                for r in _exposures(ledger)
                if r.exposure.item_uri == first["post"] and r.exposure.viewer == viewer.did
            ]
            latest = max(rows, key=lambda r: r.exposure.served_us)
            return latest if latest.like_us is not None else None

        _wait("the like to join the exposure", joined, proc, out)
        (seen,) = [
            r
            for r in _exposures(ledger)
            if r.exposure.req_id == page["reqId"] and r.exposure.item_uri == first["post"]
        ]
        assert seen.seen_us is not None

        # botsky feed publish writes the generator record; getRecord returns it.
        published = subprocess.run(
            [sys.executable, "-m", "botsky", "feed", "publish", "-c", str(cfg)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert published.returncode == 0, published.stderr
        assert published.stdout.startswith("created\t" + feed_uri)
        record = pds.get_record(feed_uri)["value"]
        assert record["$type"] == "app.bsky.feed.generator"
        assert record["did"] == service_did
        assert record["displayName"] == "botsky: fair replies"
        assert record["acceptsInteractions"] is True
        assert record["contentMode"] == "app.bsky.feed.defs#contentModeUnspecified"
        assert record["description"].startswith("Recent replies of botsky's bots")
        again = subprocess.run(
            [sys.executable, "-m", "botsky", "feed", "publish", "-c", str(cfg)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0 and again.stdout.startswith("unchanged\t"), again.stderr
        # A changed setting updates the record in place and keeps its createdAt.
        renamed = json.loads(cfg.read_text())
        renamed["feed"]["display_name"] = "botsky: even replies"
        cfg2 = tmp_path / "renamed.yaml"
        cfg2.write_text(json.dumps(renamed))
        updated = subprocess.run(
            [sys.executable, "-m", "botsky", "feed", "publish", "-c", str(cfg2)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert updated.returncode == 0 and updated.stdout.startswith("updated\t"), updated.stderr
        record2 = pds.get_record(feed_uri)["value"]
        assert record2["displayName"] == "botsky: even replies"
        assert record2["createdAt"] == record["createdAt"]

        # botsky feed check: the DID document, the record and the endpoint, like the AppView.
        checked = subprocess.run(
            [sys.executable, "-m", "botsky", "feed", "check", "-c", str(cfg)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        lines = checked.stdout.splitlines()
        assert len(lines) == 5 and all(line.startswith("ok") for line in lines), lines
        assert any("with a service token" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode == 0, out.read_text()[-5000:]
    scores = subprocess.run(
        [sys.executable, "-m", "botsky", "scores", "-c", str(cfg)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scores.returncode == 0, scores.stderr
    assert "feed: engagement per seen impression" in scores.stdout
