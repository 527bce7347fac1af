"""The feed service in-process: auth, sessions, recording, limits, engagement, retention."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from botsky.events import Event, parse_at_uri
from botsky.feed.auth import DidKeys, ServiceAuth, Verdict
from botsky.feed.core import Cursor, arm_token
from botsky.feed.limits import RateLimiter
from botsky.feed.service import GET_SKELETON, SEND_INTERACTIONS, FeedService
from botsky.ledger.feed import SEEN_EVENT, Interaction
from botsky.ledger.sqlite import SqliteLedger
from botsky.testing import like, post
from tests.feed_tokens import Signer, b64url
from tests.test_ledger import make_mention

SERVICE = "did:web:feed.example.test"
FEED = "at://did:plc:publisher/app.bsky.feed.generator/botsky-fair"
VIEWER = "did:plc:viewer"
OTHER = "did:plc:other"
T0 = 1_783_175_888_000_000
S = 1_000_000
ARMS = ("gpt", "claude", "template-similar")


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    """A ledger holding 20 bot replies per arm, created a minute apart from T0."""
    led = SqliteLedger(tmp_path / "ledger.sqlite3")
    await led.open()
    n = 0
    for arm in ARMS:
        for _ in range(20):
            n += 1
            await led.record_mention(make_mention(n, model=arm, created_us=T0 + n * 60 * S))
    try:
        yield led
    finally:
        await led.close()


@pytest.fixture
def signer() -> Signer:
    s = Signer()
    for did in (VIEWER, OTHER):
        s.key(did)
    return s


def make_service(ledger: SqliteLedger, signer: Signer, clock: Clock, **kw: object) -> FeedService:
    auth = ServiceAuth(SERVICE, DidKeys(resolve=signer.resolve))
    options: dict[str, object] = {
        "ledger": ledger,
        "service_did": SERVICE,
        "feed_uri": FEED,
        "auth": auth,
        "clock": clock,
        "refresh_s": 0,
        "service_endpoint": "https://feed.example.test",
    }
    options.update(kw)
    return FeedService(**options)  # type: ignore[arg-type]


@pytest.fixture
async def feed(ledger: SqliteLedger, signer: Signer) -> AsyncIterator[FeedService]:
    service = make_service(ledger, signer, Clock(T0 + 3600 * S))
    await service.start()
    yield service
    await service.stop()


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_verified_viewer_gets_bot_replies_and_the_page_is_recorded(
    feed: FeedService, signer: Signer, ledger: SqliteLedger
) -> None:
    """A valid token: the page holds bot replies of every arm, each with the arm's token in
    feedContext; the page and its exposures are in the ledger under the viewer and reqId."""
    token = signer.token(VIEWER, SERVICE, GET_SKELETON)
    answer = await feed.skeleton(feed=FEED, limit=9, authorization=bearer(token))
    assert answer.status == 200
    body = answer.body
    assert len(body["feed"]) == 9 and body["cursor"] and len(body["reqId"]) <= 100
    await feed.sync()  # written behind the answer
    rows = await ledger.feed_exposures(body["reqId"])
    assert [r.exposure.item_uri for r in rows] == [i["post"] for i in body["feed"]]
    assert all(r.exposure.viewer == VIEWER for r in rows)
    assert Counter(r.exposure.arm for r in rows) == dict.fromkeys(ARMS, 3)
    for item, row in zip(body["feed"], rows, strict=True):
        assert item["feedContext"].split(".")[0] == arm_token(row.exposure.arm)
    assert feed.counts.auth["ok"] == 1


async def test_both_audience_forms_are_accepted(feed: FeedService, signer: Signer) -> None:
    """aud may be the service DID or its #bsky_fg service reference."""
    for aud in (SERVICE, f"{SERVICE}#bsky_fg"):
        verdict = await feed.auth.verify(
            bearer(signer.token(VIEWER, aud, GET_SKELETON)), GET_SKELETON
        )
        assert verdict == Verdict(VIEWER, "ok")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("none", "none"),
        ("garbage", "malformed"),
        ("not bearer", "malformed"),
        ("forged signature", "signature"),
        ("other key", "signature"),
        ("expired", "expired"),
        ("wrong audience", "audience"),
        ("wrong method", "method"),
        ("no method", "method"),
        ("no exp", "malformed"),
        ("refresh token", "type"),
        ("alg none", "algorithm"),
        ("unknown issuer", "unresolvable"),
        ("issuer with fragment", "issuer"),
    ],
)
async def test_bad_tokens_get_the_unpersonalized_feed(
    feed: FeedService, signer: Signer, ledger: SqliteLedger, case: str, reason: str
) -> None:
    """Every kind of bad token is an anonymous viewer: a 200 page, recorded without a viewer,
    never an error."""
    good = signer.token(VIEWER, SERVICE, GET_SKELETON)
    head, _, sig = good.split(".")
    # The viewer's signature over someone else's claims.
    claims = {"iss": OTHER, "aud": SERVICE, "exp": 9_999_999_999, "lxm": GET_SKELETON}
    forged = b64url(orjson.dumps(claims))
    tokens = {
        "none": None,
        "garbage": "Bearer not.a.jwt",
        "not bearer": f"Basic {good}",
        "forged signature": bearer(f"{head}.{forged}.{sig}"),
        "other key": bearer(signer.token(VIEWER, SERVICE, GET_SKELETON, sign_as=OTHER)),
        "expired": bearer(signer.token(VIEWER, SERVICE, GET_SKELETON, exp_in=-120)),
        "wrong audience": bearer(signer.token(VIEWER, "did:web:elsewhere.test", GET_SKELETON)),
        "wrong method": bearer(signer.token(VIEWER, SERVICE, SEND_INTERACTIONS)),
        "no method": bearer(signer.token(VIEWER, SERVICE, None)),
        "no exp": bearer(signer.token(VIEWER, SERVICE, GET_SKELETON, exp="soon")),
        "refresh token": bearer(
            signer.token(
                VIEWER, SERVICE, GET_SKELETON, header={"typ": "refresh+jwt", "alg": "ES256K"}
            )
        ),
        "alg none": bearer(signer.token(VIEWER, SERVICE, GET_SKELETON, header={"alg": "none"})),
        "unknown issuer": bearer(
            signer.token("did:plc:stranger", SERVICE, GET_SKELETON, sign_as=VIEWER)
        ),
        "issuer with fragment": bearer(
            signer.token(f"{VIEWER}#x", SERVICE, GET_SKELETON, sign_as=VIEWER)
        ),
    }
    answer = await feed.skeleton(feed=FEED, limit=5, authorization=tokens[case], ip="192.0.2.1")
    await feed.sync()
    assert answer.status == 200, answer.body
    assert len(answer.body["feed"]) == 5
    rows = await ledger.feed_exposures(answer.body["reqId"])
    assert rows and all(r.exposure.viewer is None for r in rows)
    assert feed.counts.auth == {reason: 1}


async def test_paging_with_the_cursor_never_repeats(feed: FeedService, signer: Signer) -> None:
    """A viewer pages through the whole feed: no item twice, every arm equally, then the end."""
    seen: list[str] = []
    cursor = None
    auth = bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    for _ in range(30):
        answer = await feed.skeleton(feed=FEED, limit=7, cursor=cursor, authorization=auth)
        assert answer.status == 200
        seen += [i["post"] for i in answer.body["feed"]]
        cursor = answer.body.get("cursor")
        if cursor is None:
            break
    assert cursor is None
    assert len(seen) == len(set(seen)) == 60  # 20 per arm: the whole pool, once


async def test_another_viewers_cursor_gets_nothing(feed: FeedService, signer: Signer) -> None:
    """A cursor replayed by someone else (or anonymously) is an empty page without cursor."""
    mine = bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    first = await feed.skeleton(feed=FEED, limit=3, authorization=mine)
    cursor = first.body["cursor"]
    theirs = bearer(signer.token(OTHER, SERVICE, GET_SKELETON))
    for auth in (theirs, None):
        answer = await feed.skeleton(feed=FEED, limit=3, cursor=cursor, authorization=auth)
        assert answer.status == 200 and answer.body["feed"] == [] and "cursor" not in answer.body
    again = await feed.skeleton(feed=FEED, limit=3, cursor=cursor, authorization=mine)
    assert len(again.body["feed"]) == 3


async def test_request_errors_are_xrpc_errors(feed: FeedService) -> None:
    """Unknown feed, missing feed, bad limit and a malformed cursor are 400s, named."""
    cases = [
        ({"feed": "at://did:plc:x/app.bsky.feed.generator/other"}, "UnknownFeed"),
        ({"feed": None}, "InvalidRequest"),
        ({"feed": FEED, "limit": "0"}, "InvalidRequest"),
        ({"feed": FEED, "limit": "101"}, "InvalidRequest"),
        ({"feed": FEED, "limit": "ten"}, "InvalidRequest"),
        ({"feed": FEED, "cursor": "%%%"}, "InvalidRequest"),
    ]
    for kwargs, name in cases:
        answer = await feed.skeleton(**kwargs)  # type: ignore[arg-type]
        assert (answer.status, answer.body["error"]) == (400, name)


async def test_rate_limits_per_viewer_and_per_ip(ledger: SqliteLedger, signer: Signer) -> None:
    """A viewer past their burst gets 429 while another viewer and anonymous IPs do not; an
    IP past its burst gets 429 for anonymous requests."""
    limits = {"viewer_limit": RateLimiter(0.001, 2), "ip_limit": RateLimiter(0.001, 2)}
    service = make_service(ledger, signer, Clock(T0 + 3600 * S), **limits)
    await service.start()
    mine = bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    statuses = [
        (await service.skeleton(feed=FEED, limit=1, authorization=mine, ip="a")).status
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    other = bearer(signer.token(OTHER, SERVICE, GET_SKELETON))
    assert (await service.skeleton(feed=FEED, limit=1, authorization=other, ip="a")).status == 200
    anon = [(await service.skeleton(feed=FEED, limit=1, ip="b")).status for _ in range(3)]
    assert anon == [200, 200, 429]
    assert (await service.skeleton(feed=FEED, limit=1, ip="c")).status == 200


async def test_interactions_need_a_viewer_and_touch_only_their_exposures(
    feed: FeedService, signer: Signer, ledger: SqliteLedger
) -> None:
    """sendInteractions without a valid token is 401; with one, seen and like land on the
    viewer's exposures of that page; another viewer's reports change nothing."""
    page = await feed.skeleton(
        feed=FEED, limit=3, authorization=bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    )
    req, items = page.body["reqId"], page.body["feed"]
    body = {
        "interactions": [
            {
                "item": i["post"],
                "event": "app.bsky.feed.defs#interactionSeen",
                "reqId": req,
                "feedContext": i["feedContext"],
            }
            for i in items[:2]
        ]
        + [{"item": items[0]["post"], "event": "app.bsky.feed.defs#interactionLike", "reqId": req}]
    }
    assert (await feed.interactions(body)).status == 401
    wrong_lxm = bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    assert (await feed.interactions(body, authorization=wrong_lxm)).status == 401
    theirs = bearer(signer.token(OTHER, SERVICE, SEND_INTERACTIONS))
    assert (await feed.interactions(body, authorization=theirs)).status == 200
    assert all(r.seen_us is None for r in await ledger.feed_exposures(req))
    mine = bearer(signer.token(VIEWER, SERVICE, SEND_INTERACTIONS))
    assert (await feed.interactions(body, authorization=mine)).status == 200
    rows = await ledger.feed_exposures(req)
    assert [r.seen_us is not None for r in rows] == [True, True, False]
    assert rows[0].like_us is not None
    assert (await feed.interactions({"interactions": "x"}, authorization=mine)).status == 400


async def test_firehose_engagement_joins_the_viewers_exposure(
    feed: FeedService, signer: Signer, ledger: SqliteLedger
) -> None:
    """A like and a reply by the viewer on served items join their exposures; a stranger's
    like joins nothing."""
    page = await feed.skeleton(
        feed=FEED, limit=3, authorization=bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    )
    a, b = (i["post"] for i in page.body["feed"][:2])
    now = feed.clock()
    feed.observe(like(VIEWER, now + S, a, "bafy"))
    feed.observe(like("did:plc:stranger", now + S, b, "bafy"))
    feed.observe(post(VIEWER, now + 2 * S, "nice", reply_to=_ref(b)))
    await feed.flush()
    rows = {r.exposure.item_uri: r for r in await ledger.feed_exposures(page.body["reqId"])}
    assert rows[a].like_us == now + S and rows[a].reply_us is None
    assert rows[b].like_us is None and rows[b].reply_us == now + 2 * S
    assert feed.counts.engagement_joined == {"like": 1, "reply": 1}


def _ref(uri: str) -> Event:
    """The served reply as a firehose event, to reply to it."""
    did, collection, rkey = parse_at_uri(uri)
    return Event(did, 0, "commit", operation="create", collection=collection, rkey=rkey, cid="c")


async def test_restart_keeps_impressions_and_sessions(ledger: SqliteLedger, signer: Signer) -> None:
    """A new service on the same ledger starts from the recorded impressions, and a cursor
    from before the restart continues its session without repeating an item."""
    clock = Clock(T0 + 3600 * S)
    first = make_service(ledger, signer, clock)
    await first.start()
    auth = bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    page1 = await first.skeleton(feed=FEED, limit=12, authorization=auth)
    await first.stop()
    second = make_service(ledger, signer, clock)
    await second.start()
    served = {e.mention_id for e in (r.exposure for r in await ledger.feed_exposures())}
    assert all(second.pool.impressions(m) == 1 for m in served)
    page2 = await second.skeleton(
        feed=FEED, limit=12, cursor=page1.body["cursor"], authorization=auth
    )
    uris1 = {i["post"] for i in page1.body["feed"]}
    uris2 = {i["post"] for i in page2.body["feed"]}
    assert len(uris2) == 12 and not uris1 & uris2
    assert Cursor.decode(page2.body["cursor"]).served == 24


async def test_opted_out_users_replies_are_never_served(
    ledger: SqliteLedger, signer: Signer
) -> None:
    """A reply that answers or mentions someone who opted out is not shown."""
    out = {"did:plc:author"}  # make_mention's post author: every reply answers them
    service = make_service(ledger, signer, Clock(T0 + 3600 * S), opted_out=out.__contains__)
    await service.start()
    answer = await service.skeleton(feed=FEED, limit=10)
    assert answer.body["feed"] == [] and "cursor" not in answer.body


async def test_old_replies_leave_and_viewers_are_purged(
    ledger: SqliteLedger, signer: Signer
) -> None:
    """Replies older than max_age are not served; viewer DIDs older than the retention are
    nulled by the refresh."""
    clock = Clock(T0 + 3600 * S)
    service = make_service(
        ledger, signer, clock, max_age_s=30 * 60, viewer_retention_s=3600, purge_every_s=0
    )
    await service.start()
    assert len(service.pool) == 31  # created in the last 30 minutes (minutes 30 to 60)
    auth = bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    await service.skeleton(feed=FEED, limit=3, authorization=auth)
    clock.now += 2 * 3600 * S
    await service.refresh()
    rows = await ledger.feed_exposures()
    assert rows and all(r.exposure.viewer is None for r in rows)
    assert len(service.pool) == 0


async def test_pages_are_written_behind_the_answer_and_all_written_by_stop(
    ledger: SqliteLedger, signer: Signer
) -> None:
    """A page is answered before it is in the ledger (written in batches); stop writes every
    page still queued."""
    service = make_service(ledger, signer, Clock(T0 + 3600 * S), record_batch_s=3600)
    await service.start()
    auth = bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    pages = [await service.skeleton(feed=FEED, limit=4, authorization=auth) for _ in range(5)]
    assert all(p.status == 200 for p in pages)
    assert await ledger.feed_exposures() == []  # queued: the writer waits an hour for more
    await service.stop()
    rows = await ledger.feed_exposures()
    assert sorted((r.exposure.req_id, r.exposure.item_uri) for r in rows) == sorted(
        (p.body["reqId"], i["post"]) for p in pages for i in p.body["feed"]
    )
    assert {r.exposure.viewer for r in rows} == {VIEWER}


async def test_interactions_and_engagement_find_pages_not_yet_written(
    ledger: SqliteLedger, signer: Signer
) -> None:
    """sendInteractions and the firehose joins right after a page is answered (its batch not
    yet due) still land on its exposures: they wait for the page to be written first."""
    service = make_service(ledger, signer, Clock(T0 + 3600 * S), record_batch_s=3600)
    await service.start()
    page = await service.skeleton(
        feed=FEED, limit=3, authorization=bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    )
    first, second = (i["post"] for i in page.body["feed"][:2])
    seen = {"item": first, "event": SEEN_EVENT, "reqId": page.body["reqId"]}
    auth = bearer(signer.token(VIEWER, SERVICE, SEND_INTERACTIONS))
    assert (await service.interactions({"interactions": [seen]}, authorization=auth)).status == 200
    await service.stop()  # nothing else queued: the page was written for the interaction
    service = make_service(ledger, signer, Clock(T0 + 3600 * S), record_batch_s=3600)
    await service.start()
    page2 = await service.skeleton(feed=FEED, limit=3, verdict=Verdict(OTHER, "sim"))
    liked = page2.body["feed"][0]["post"]
    service.observe(like(OTHER, service.clock() + S, liked, "bafy"))
    await service.flush()
    rows = {r.exposure.item_uri: r for r in await ledger.feed_exposures(page2.body["reqId"])}
    assert rows[liked].like_us == service.clock() + S
    rows1 = {r.exposure.item_uri: r for r in await ledger.feed_exposures(page.body["reqId"])}
    assert rows1[first].seen_us is not None and rows1[second].seen_us is None
    await service.stop()


async def test_a_locked_ledger_delays_pages_refuses_new_ones_and_loses_none(
    ledger: SqliteLedger, signer: Signer
) -> None:
    """While the ledger cannot take pages (another connection holds its write lock), the page
    already answered stays queued and is retried, new pages are refused with 503 before
    anything is counted, and once the lock is gone the queued page is written."""
    impatient = SqliteLedger(ledger.path, busy_timeout=0.05)
    await impatient.open()
    service = make_service(impatient, signer, Clock(T0 + 3600 * S))
    await service.start()
    auth = bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    lock = sqlite3.connect(ledger.path, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        first = await service.skeleton(feed=FEED, limit=3, authorization=auth)
        assert first.status == 200
        with pytest.raises(TimeoutError):  # retried for a second, never written
            async with asyncio.timeout(1.0):
                await service.sync()
        refused = await service.skeleton(feed=FEED, limit=3, authorization=auth)
        assert refused.status == 503 and refused.body["error"] == "ServiceUnavailable"
        assert sum(service.counts.served.values()) == 3
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    async with asyncio.timeout(10):
        await service.sync()
    rows = await ledger.feed_exposures(first.body["reqId"])
    assert [r.exposure.item_uri for r in rows] == [i["post"] for i in first.body["feed"]]
    again = await service.skeleton(feed=FEED, limit=3, authorization=auth)
    assert again.status == 200
    await service.stop()
    await impatient.close()
    assert len(await ledger.feed_exposures()) == 6


async def test_a_closed_ledger_gets_503_after_the_first_failed_write(
    ledger: SqliteLedger, signer: Signer
) -> None:
    """Once a page write has failed (here: the ledger is closed), new pages are 503."""
    service = make_service(ledger, signer, Clock(T0 + 3600 * S))
    await service.start()
    await ledger.close()
    assert (await service.skeleton(feed=FEED, limit=3)).status == 200  # queued
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await service.sync()
    answer = await service.skeleton(feed=FEED, limit=3)
    assert answer.status == 503 and answer.body["error"] == "ServiceUnavailable"


async def test_in_process_callers_pass_the_viewer(feed: FeedService, ledger: SqliteLedger) -> None:
    """The simulation's path: a known viewer without a token, same page building."""
    answer = await feed.skeleton(feed=FEED, limit=4, verdict=Verdict("did:plc:simuser", "sim"))
    await feed.sync()
    rows = await ledger.feed_exposures(answer.body["reqId"])
    assert [r.exposure.viewer for r in rows] == ["did:plc:simuser"] * 4


def test_did_document_and_describe(feed: FeedService) -> None:
    """The did:web document names the #bsky_fg service; describe lists the feed."""
    doc = feed.did_document()
    assert doc["id"] == SERVICE
    assert doc["service"] == [
        {
            "id": "#bsky_fg",
            "type": "BskyFeedGenerator",
            "serviceEndpoint": "https://feed.example.test",
        }
    ]
    assert feed.describe() == {"did": SERVICE, "feeds": [{"uri": FEED}]}


async def test_scores_are_logged_per_arm(feed: FeedService, signer: Signer) -> None:
    """log_scores writes one feed_score line per served arm, with served, seen and the
    engaged rate's interval."""
    from structlog.testing import capture_logs

    page = await feed.skeleton(
        feed=FEED, limit=3, authorization=bearer(signer.token(VIEWER, SERVICE, GET_SKELETON))
    )
    first = page.body["feed"][0]
    await feed.sync()
    await feed.ledger.record_feed_interactions(
        VIEWER, [Interaction(first["post"], SEEN_EVENT, page.body["reqId"])], feed.clock()
    )
    with capture_logs() as logs:
        await feed.log_scores()
    lines = [line for line in logs if line["event"] == "feed_score"]
    assert sorted(line["arm"] for line in lines) == sorted(ARMS)
    assert sum(line["served"] for line in lines) == 3 and sum(line["seen"] for line in lines) == 1
    seen = next(line for line in lines if line["seen"] == 1)
    assert seen["engaged_rate"] == 0.0 and seen["ci_low"] == 0.0 and 0 < seen["ci_high"] < 1
