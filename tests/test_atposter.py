"""The live atproto poster: write budgets, sessions, replies and labels against the real PDS."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from botsky.accounts import accounts, add_bot_label, check_sessions, label_bots
from botsky.config import AccountConfig
from botsky.errors import PostError, PostOutcomeUnknown, PostRateLimited
from botsky.ledger.sqlite import SqliteLedger
from botsky.posting import (
    AtprotoPoster,
    BotSession,
    ReplyPost,
    StrongRef,
    WriteBudget,
    open_live_poster,
    reply_rkey,
    session_path,
)
from botsky.testing import FakeClock
from tests.pds.harness import LocalPds, TestAccount
from tests.support import unique_name

WALL = 1_800_000_000.0  # a realistic wall-clock time, in seconds


def _budget(clock: FakeClock, **kw: Any) -> WriteBudget:
    opts: dict[str, Any] = {"posts_per_minute": 1000.0, "max_wait_s": 5.0}
    opts.update(kw)
    return WriteBudget(clock=clock, sleep=clock.sleep, **opts)


async def _spend(budget: WriteBudget, account: str, n: int) -> None:
    for _ in range(n):
        async with budget.slot(account):
            pass


# -- the write budget (no PDS) -----------------------------------------------------------------


async def test_hour_budget_with_headroom_raises_past_the_cap() -> None:
    """30 points/h at 80% headroom is 24 usable points: 8 creates, the 9th raises."""
    clock = FakeClock(WALL)
    budget = _budget(clock, points_per_hour=30, points_per_day=10_000)
    await _spend(budget, "did:plc:a", 8)
    with pytest.raises(PostRateLimited) as info:
        async with budget.slot("did:plc:a"):
            pytest.fail("the body must not run past the cap")
    assert info.value.retry_after == pytest.approx(3600.0)
    assert info.value.reason == "budget_spent"
    assert budget.counts["refused_budget_spent"] == 1
    assert (await budget.remaining("did:plc:a"))[0] == 0


async def test_budget_is_per_account_and_frees_up_after_the_window() -> None:
    """Another account has its own budget; an hour later the first has room again."""
    clock = FakeClock(WALL)
    budget = _budget(clock, points_per_hour=30, points_per_day=10_000)
    await _spend(budget, "did:plc:a", 8)
    await _spend(budget, "did:plc:b", 8)
    clock.now += 3600.0
    await _spend(budget, "did:plc:a", 8)


async def test_sliding_window_frees_points_as_old_writes_age_out() -> None:
    """Room comes back write by write, exactly an hour after each was spent."""
    clock = FakeClock(WALL)
    budget = _budget(clock, points_per_hour=15, points_per_day=10_000, headroom=1.0)
    for _ in range(5):
        await _spend(budget, "did:plc:a", 1)
        clock.now += 600.0
    assert await budget.wait_time("did:plc:a") == pytest.approx(600.0)  # 3600 - 3000


async def test_day_budget_caps_even_when_the_hour_has_room() -> None:
    """The daily budget binds independently of the hourly one."""
    clock = FakeClock(WALL)
    budget = _budget(clock, points_per_hour=5000, points_per_day=30, headroom=0.5)
    await _spend(budget, "did:plc:a", 5)
    with pytest.raises(PostRateLimited) as info:
        await _spend(budget, "did:plc:a", 1)
    assert info.value.retry_after == pytest.approx(86_400.0)


async def test_global_posts_per_minute_waits_within_max_wait() -> None:
    """Over the per-minute cap across accounts, a post waits (on the clock) instead of failing."""
    clock = FakeClock(WALL)
    budget = _budget(clock, posts_per_minute=2.0, max_wait_s=60.0)
    await _spend(budget, "did:plc:a", 1)
    await _spend(budget, "did:plc:b", 1)
    await _spend(budget, "did:plc:c", 1)
    assert clock.slept == [pytest.approx(60.0)] and budget.counts["waited"] == 1


async def test_global_cap_below_one_per_minute_and_wait_past_max_raises() -> None:
    """0.5 posts/min is one post per 120 s; waiting longer than max_wait_s raises."""
    clock = FakeClock(WALL)
    budget = _budget(clock, posts_per_minute=0.5, max_wait_s=30.0)
    await _spend(budget, "did:plc:a", 1)
    with pytest.raises(PostRateLimited) as info:
        await _spend(budget, "did:plc:b", 1)
    assert info.value.retry_after == pytest.approx(120.0)
    assert info.value.reason == "posts_per_minute"


async def test_server_429_blocks_only_that_account_until_reset() -> None:
    """A 429's ratelimit-reset (epoch seconds) blocks the account until then."""
    clock = FakeClock(WALL)
    budget = _budget(clock)
    assert await budget.server_limited("did:plc:a", WALL + 90) == pytest.approx(90.0)
    assert await budget.wait_time("did:plc:a") == pytest.approx(90.0)
    assert await budget.wait_time("did:plc:b") == 0
    with pytest.raises(PostRateLimited) as info:
        await _spend(budget, "did:plc:a", 1)
    assert info.value.reason == "rate_limited"
    clock.now += 90.0
    assert await budget.wait_time("did:plc:a") == 0
    assert budget.counts["server_limited"] == 1


async def test_a_cost_above_the_whole_budget_never_fits() -> None:
    """A cost larger than the usable budget is refused at once with an infinite wait."""
    budget = _budget(FakeClock(WALL), points_per_hour=2)
    assert math.isinf(await budget.wait_time("did:plc:a", cost=3))


async def test_the_budget_and_blocks_survive_a_restart_in_the_ledger(tmp_path: Path) -> None:
    """Spends and a 429's block are in the ledger: a budget built after a restart (a new
    process, a new ledger connection) has no more room than the first left, and still waits
    for the reset."""
    clock = FakeClock(WALL)
    led = SqliteLedger(tmp_path / "ledger.sqlite3")
    await led.open()
    first = _budget(clock, points_per_hour=30, headroom=1.0, store=led)
    await _spend(first, "did:plc:a", 6)
    await first.server_limited("did:plc:b", WALL + 600, "429 createRecord")
    await led.close()

    clock.now += 60.0
    led = SqliteLedger(tmp_path / "ledger.sqlite3")
    await led.open()
    try:
        again = _budget(clock, points_per_hour=30, headroom=1.0, store=led)
        await _spend(again, "did:plc:a", 4)  # 30 points / 3 = 10 creates in the hour
        with pytest.raises(PostRateLimited) as info:
            await _spend(again, "did:plc:a", 1)
        assert info.value.retry_after == pytest.approx(3600.0 - 60.0)
        assert await again.wait_time("did:plc:b") == pytest.approx(540.0)
    finally:
        await led.close()


async def test_replicas_draw_on_one_budget(tmp_path: Path) -> None:
    """Three processes (three ledger connections, three budgets) spending on one account at
    once spend exactly the budget together, not a guessed share each."""
    clock = FakeClock(WALL)
    ledgers = [SqliteLedger(tmp_path / "ledger.sqlite3") for _ in range(3)]
    for led in ledgers:
        await led.open()
    try:
        budgets = [_budget(clock, points_per_hour=60, headroom=1.0, store=led) for led in ledgers]

        async def take(budget: WriteBudget) -> bool:
            try:
                await _spend(budget, "did:plc:a", 1)
            except PostRateLimited:
                return False
            return True

        got = await asyncio.gather(*(take(b) for _ in range(12) for b in budgets))
        assert got.count(True) == 20
    finally:
        for led in ledgers:
            await led.close()


# -- error translation, with the PDS's real JSON shapes on a mock transport -------------------

DID = "did:plc:mockbot"


def _jwt(scope: str, sub: str = DID) -> str:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"scope": scope, "sub": sub, "iat": 1_700_000_000, "exp": 4_102_444_800}
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.c2ln"


Answer = tuple[int, dict[str, str], dict[str, Any]] | Exception
"""What the mock PDS does for a call: (status, headers, JSON body), or an httpx error raised."""

RECORD_NOT_FOUND: Answer = (400, {}, {"error": "RecordNotFound", "message": "not found"})


def _pds_mock(
    create_record: Answer,
    *,
    get_record: Answer = RECORD_NOT_FOUND,
    create_session: Answer | None = None,
    calls: list[str] | None = None,
) -> httpx.MockTransport:
    """A PDS speaking the real JSON shapes; ``calls`` collects the XRPC methods it was sent."""

    def answer(request: httpx.Request, what: Answer) -> httpx.Response:
        if isinstance(what, Exception):
            raise what
        status, headers, body = what
        return httpx.Response(status, headers=headers, json=body)

    def handler(request: httpx.Request) -> httpx.Response:
        method = request.url.path.removeprefix("/xrpc/")
        if calls is not None:
            calls.append(method)
        if method == "com.atproto.server.createSession":
            if create_session is not None:
                return answer(request, create_session)
            return httpx.Response(
                200,
                json={
                    "did": DID,
                    "handle": "mockbot.test",
                    "accessJwt": _jwt("com.atproto.access"),
                    "refreshJwt": _jwt("com.atproto.refresh"),
                    "active": True,
                },
            )
        if method == "com.atproto.repo.createRecord":
            return answer(request, create_record)
        if method == "com.atproto.repo.getRecord":
            return answer(request, get_record)
        return httpx.Response(404, json={"error": "MethodNotImplemented"})

    return httpx.MockTransport(handler)


PARENT = StrongRef("at://did:plc:u/app.bsky.feed.post/3abc", "bafyparent")


def _reply(bot: str = "mock", bot_did: str = DID, rkey: str = "3mptbyplj5d2a") -> ReplyPost:
    return ReplyPost(
        bot=bot,
        bot_did=bot_did,
        text="hi",
        facets=[],
        langs=["en"],
        root=PARENT,
        parent=PARENT,
        created_at="2026-07-04T12:00:00.000Z",
        rkey=rkey,
    )


async def _mock_poster(
    tmp_path: Path,
    answer: Answer,
    *,
    get_record: Answer = RECORD_NOT_FOUND,
    create_session: Answer | None = None,
    calls: list[str] | None = None,
    **kw: Any,
) -> AtprotoPoster:
    return await open_live_poster(
        pds_url="http://pds.invalid",
        accounts=[("mock", AccountConfig(handle="mockbot.test"), SecretStr("pw"))],
        data_dir=tmp_path,
        transport=_pds_mock(
            answer, get_record=get_record, create_session=create_session, calls=calls
        ),
        **kw,
    )


def _limited(reset: int) -> Answer:
    """The PDS's real 429 for a write over the hour's points."""
    headers = {
        "ratelimit-limit": "5000",
        "ratelimit-remaining": "0",
        "ratelimit-reset": str(reset),
        "ratelimit-policy": "5000;w=3600",
        "retry-after": str(reset - int(time.time())),
    }
    return (429, headers, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"})


async def test_a_server_429_is_recorded_and_honoured_after_a_restart(tmp_path: Path) -> None:
    """A write 429 becomes PostRateLimited (retry_after from ratelimit-reset) and a block in the
    ledger: after a restart (new poster, new budget, same ledger) nothing is sent for that
    account until the reset; after it, the create goes out again."""
    reset = int(time.time()) + 120
    clock = FakeClock(time.time())
    led = SqliteLedger(tmp_path / "ledger.sqlite3")
    await led.open()
    try:
        first = await _mock_poster(tmp_path, _limited(reset), budget=_budget(clock, store=led))
        try:
            with pytest.raises(PostRateLimited) as info:
                await first.reply(_reply())
            assert info.value.retry_after == pytest.approx(120, abs=3)
            assert info.value.reason == "rate_limited"
            assert first.counts["rate_limited"] == 1
        finally:
            await first.aclose()
        until_us, why = (await led.account_blocks())[DID]
        assert until_us == reset * 1_000_000 and why == "429 createRecord 5000;w=3600"

        calls: list[str] = []
        ok: Answer = (200, {}, {"uri": f"at://{DID}/app.bsky.feed.post/3x", "cid": "bafy"})
        again = await _mock_poster(tmp_path, ok, calls=calls, budget=_budget(clock, store=led))
        try:
            with pytest.raises(PostRateLimited):
                await again.reply(_reply())
            assert "com.atproto.repo.createRecord" not in calls
            clock.now = reset + 1.0
            assert (await again.reply(_reply())).cid == "bafy"
            assert calls.count("com.atproto.repo.createRecord") == 1
        finally:
            await again.aclose()
    finally:
        await led.close()


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        ((400, {}, {"error": "InvalidRequest", "message": "parent deleted"}), "InvalidRequest"),
        ((400, {}, {"error": "InvalidSwap", "message": "nope"}), "InvalidSwap"),
        ((401, {}, {"error": "AccountTakedown", "message": "gone"}), "AccountTakedown"),
        ((413, {}, {"error": "PayloadTooLarge", "message": "big"}), "PayloadTooLarge"),
        ((500, {}, {"error": "InternalServerError", "message": "x"}), None),
        ((502, {}, {"error": "", "message": "bad gateway"}), None),
        ((503, {}, {"error": "", "message": "unavailable"}), None),
        ((504, {}, {"error": "", "message": "gateway timeout"}), None),
        (httpx.ConnectError("connection refused"), None),
        (httpx.ReadTimeout("timed out"), None),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), None),
    ],
    ids=[
        "invalid",
        "swap",
        "takedown",
        "too-large",
        "500",
        "502",
        "503",
        "504",
        "refused",
        "timeout",
        "cut",
    ],
)
async def test_refusals_fail_and_unknown_outcomes_do_not(
    tmp_path: Path, answer: Answer, refused: str | None
) -> None:
    """A 4xx that means no is PostError with the error's name as its reason; a 5xx, a timeout
    or a cut or refused connection is PostOutcomeUnknown (the reply may have landed), once the
    repo was looked up under the record key and did not have it."""
    calls: list[str] = []
    poster = await _mock_poster(tmp_path, answer, calls=calls)
    try:
        if refused is not None:
            with pytest.raises(PostError) as info:
                await poster.reply(_reply())
            assert info.value.reason == refused and poster.counts["refused"] == 1
        else:
            with pytest.raises(PostOutcomeUnknown):
                await poster.reply(_reply())
            assert poster.counts["unknown"] == 1
        assert calls[-1] == "com.atproto.repo.getRecord"
    finally:
        await poster.aclose()


async def test_a_lookup_the_pds_cannot_answer_is_an_unknown_outcome(tmp_path: Path) -> None:
    """lookup raises PostOutcomeUnknown when the PDS fails to answer, and None only when it
    says the record is not there."""
    cut = httpx.ConnectError("connection refused")
    poster = await _mock_poster(tmp_path, cut, get_record=cut)
    try:
        with pytest.raises(PostOutcomeUnknown):
            await poster.lookup(DID, "3mptbyplj5d2a", PARENT.uri)
        with pytest.raises(PostOutcomeUnknown):
            await poster.reply(_reply())
    finally:
        await poster.aclose()


async def test_a_create_refused_for_a_taken_key_is_the_reply_already_posted(
    tmp_path: Path,
) -> None:
    """A retry of a create that had landed: the PDS answers 500 for the taken record key, the
    repo holds the reply to this parent under it, and that is the result (no error)."""
    uri = f"at://{DID}/app.bsky.feed.post/3mptbyplj5d2a"
    ref = {"uri": PARENT.uri, "cid": PARENT.cid}
    stored = {
        "uri": uri,
        "cid": "bafystored",
        "value": {"text": "hi", "reply": {"root": ref, "parent": ref}},
    }
    poster = await _mock_poster(
        tmp_path,
        (500, {}, {"error": "InternalServerError", "message": "Internal Server Error"}),
        get_record=(200, {}, stored),
    )
    try:
        posted = await poster.reply(_reply())
        assert (posted.uri, posted.cid) == (uri, "bafystored")
        assert poster.counts["already_posted"] == 1
    finally:
        await poster.aclose()


async def test_a_login_429_is_recorded_and_no_login_is_tried_until_its_reset(
    tmp_path: Path,
) -> None:
    """createSession answered 429 (30 per 5 minutes per identifier): the start fails with
    PostRateLimited and the block is in the ledger; the next start does not call createSession
    at all before the reset."""
    reset = int(time.time()) + 300
    headers = {
        "ratelimit-limit": "30",
        "ratelimit-reset": str(reset),
        "ratelimit-policy": "30;w=300",
    }
    limited: Answer = (429, headers, {"error": "RateLimitExceeded", "message": "Rate Limit"})
    led = SqliteLedger(tmp_path / "ledger.sqlite3")
    await led.open()
    try:
        ok: Answer = (200, {}, {"uri": "at://x/y/z", "cid": "bafy"})
        with pytest.raises(PostRateLimited):
            await _mock_poster(tmp_path, ok, create_session=limited, budget=WriteBudget(store=led))
        assert (await led.account_blocks())["login:mockbot.test"][0] == reset * 1_000_000
        calls: list[str] = []
        with pytest.raises(PostRateLimited, match="will not try again"):
            await _mock_poster(tmp_path, ok, calls=calls, budget=WriteBudget(store=led))
        assert calls == []
    finally:
        await led.close()


async def test_unknown_bot_or_wrong_did_is_refused(tmp_path: Path) -> None:
    """A reply for a bot that is not logged in, or under another DID, is never sent."""
    poster = await _mock_poster(tmp_path, (200, {}, {"uri": "at://x/y/z", "cid": "bafy"}))
    try:
        with pytest.raises(PostError):
            await poster.reply(_reply(bot="ghost"))
        with pytest.raises(PostError):
            await poster.reply(_reply(bot_did="did:plc:other"))
    finally:
        await poster.aclose()


async def test_kill_switch_stops_posting_before_anything_is_sent(tmp_path: Path) -> None:
    """While ``paused`` is true, reply raises PostRateLimited and spends no budget."""
    poster = await _mock_poster(
        tmp_path, (200, {}, {"uri": "at://x/y/z", "cid": "bafy"}), paused=lambda: True
    )
    try:
        with pytest.raises(PostRateLimited) as info:
            await poster.reply(_reply())
        assert info.value.reason == "paused" and poster.counts["paused"] == 1
        assert (await poster.budget.remaining(DID))[0] == 4000
    finally:
        await poster.aclose()


# -- the bot self-label, pure ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            None,
            {
                "$type": "app.bsky.actor.profile",
                "labels": {
                    "$type": "com.atproto.label.defs#selfLabels",
                    "values": [{"val": "bot"}],
                },
            },
        ),
        (
            {"$type": "app.bsky.actor.profile", "displayName": "Ada", "description": "hi"},
            {
                "$type": "app.bsky.actor.profile",
                "displayName": "Ada",
                "description": "hi",
                "labels": {
                    "$type": "com.atproto.label.defs#selfLabels",
                    "values": [{"val": "bot"}],
                },
            },
        ),
        (
            {
                "$type": "app.bsky.actor.profile",
                "labels": {"$type": "com.atproto.label.defs#selfLabels", "values": [{"val": "x"}]},
            },
            {
                "$type": "app.bsky.actor.profile",
                "labels": {
                    "$type": "com.atproto.label.defs#selfLabels",
                    "values": [{"val": "x"}, {"val": "bot"}],
                },
            },
        ),
        (
            {
                "$type": "app.bsky.actor.profile",
                "labels": {
                    "$type": "com.atproto.label.defs#selfLabels",
                    "values": [{"val": "bot"}],
                },
            },
            None,
        ),
    ],
    ids=["no-profile", "keeps-fields", "adds-to-other-labels", "already-labelled"],
)
def test_add_bot_label(record: dict[str, Any] | None, expected: dict[str, Any] | None) -> None:
    """The bot label is added once, next to every existing field and label."""
    assert add_bot_label(record) == expected


# -- against the reference PDS -----------------------------------------------------------------


def _bot(pds: LocalPds, prefix: str = "bot") -> tuple[TestAccount, SecretStr]:
    account = pds.create_account(unique_name(prefix))
    return account, SecretStr(pds.app_password(account))


async def _open(
    pds: LocalPds, data_dir: Path, bots: list[tuple[str, TestAccount, SecretStr]], **kw: Any
) -> AtprotoPoster:
    return await open_live_poster(
        pds_url=pds.pds_url,
        accounts=[(name, AccountConfig(handle=a.handle), pw) for name, a, pw in bots],
        data_dir=data_dir,
        **kw,
    )


async def test_reply_with_mention_lands_on_the_pds(local_pds: LocalPds, tmp_path: Path) -> None:
    """A reply is created in the bot's repo with its facet byte range and reply refs intact."""
    bot, pw = _bot(local_pds)
    author = local_pds.create_account(unique_name("author"))
    friend = local_pds.create_account(unique_name("friend"))
    root = local_pds.create_record(
        author,
        "app.bsky.feed.post",
        {"$type": "app.bsky.feed.post", "text": "root", "createdAt": "2026-07-04T12:00:00.000Z"},
    )
    parent = local_pds.create_record(
        author,
        "app.bsky.feed.post",
        {
            "$type": "app.bsky.feed.post",
            "text": "gärtnern mit 🌱?",
            "createdAt": "2026-07-04T12:01:00.000Z",
            "reply": {"root": root, "parent": root},
        },
    )
    text = f"Schön 🌱! Frag @{friend.handle} dazu."
    start = text.encode().index(b"@")
    facet = {
        "$type": "app.bsky.richtext.facet",
        "index": {"byteStart": start, "byteEnd": start + 1 + len(friend.handle.encode())},
        "features": [{"$type": "app.bsky.richtext.facet#mention", "did": friend.did}],
    }
    poster = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    try:
        assert poster.did_of("ada") == bot.did
        posted = await poster.reply(
            ReplyPost(
                bot="ada",
                bot_did=bot.did,
                text=text,
                facets=[facet],
                langs=["de"],
                root=StrongRef(root["uri"], root["cid"]),
                parent=StrongRef(parent["uri"], parent["cid"]),
                created_at="2026-07-04T12:02:00.000Z",
            )
        )
    finally:
        await poster.aclose()
    assert posted.uri.startswith(f"at://{bot.did}/app.bsky.feed.post/")
    got = local_pds.get_record(posted.uri)
    assert got["cid"] == posted.cid
    value = got["value"]
    assert value["text"] == text and value["langs"] == ["de"]
    assert value["reply"] == {"root": root, "parent": parent}
    (stored,) = value["facets"]
    idx = stored["index"]
    assert text.encode()[idx["byteStart"] : idx["byteEnd"]] == f"@{friend.handle}".encode()
    assert stored["features"] == [{"$type": "app.bsky.richtext.facet#mention", "did": friend.did}]


async def test_session_is_saved_private_and_reused_across_restarts(
    local_pds: LocalPds, tmp_path: Path
) -> None:
    """A second poster reuses the saved session: no new createSession reaches the PDS."""
    bot, pw = _bot(local_pds)
    first = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    await first.aclose()
    path = session_path(tmp_path, "ada")
    assert first.logins == 1 and first.sessions["ada"].status == "created"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pw.get_secret_value() not in path.read_text()
    before = local_pds.counts().get("com.atproto.server.createSession", 0)

    second = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    try:
        assert second.logins == 0 and second.sessions["ada"].status == "reused"
        assert second.did_of("ada") == bot.did
        assert local_pds.counts().get("com.atproto.server.createSession", 0) == before
        root = local_pds.create_record(
            bot,
            "app.bsky.feed.post",
            {"$type": "app.bsky.feed.post", "text": "r", "createdAt": "2026-07-04T12:00:00.000Z"},
        )
        ref = StrongRef(root["uri"], root["cid"])
        await second.reply(
            ReplyPost("ada", bot.did, "again", [], ["en"], ref, ref, "2026-07-04T12:00:01.000Z")
        )
    finally:
        await second.aclose()


@pytest.mark.parametrize("kind", ["malformed", "forged"])
async def test_a_rejected_session_falls_back_to_the_password(
    local_pds: LocalPds, tmp_path: Path, kind: str
) -> None:
    """A stored session the PDS refuses (bad tokens) leads to one login, and is replaced."""
    bot, pw = _bot(local_pds)
    path = session_path(tmp_path, "ada")
    path.parent.mkdir(parents=True)
    if kind == "malformed":
        access, refresh = "bad.access", "bad.refresh"
    else:
        access, refresh = _jwt("com.atproto.access", bot.did), _jwt("com.atproto.refresh", bot.did)
    path.write_text(f"{bot.handle}:::{bot.did}:::{access}:::{refresh}:::{local_pds.pds_url}")
    poster = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    await poster.aclose()
    assert poster.logins == 1 and poster.sessions["ada"].status == "created"
    assert access not in path.read_text()


async def test_a_session_for_another_pds_is_not_reused(local_pds: LocalPds, tmp_path: Path) -> None:
    """A session string saved for a different PDS URL is ignored, not sent anywhere."""
    bot, pw = _bot(local_pds)
    path = session_path(tmp_path, "ada")
    path.parent.mkdir(parents=True)
    path.write_text(f"{bot.handle}:::{bot.did}:::a:::r:::https://elsewhere.invalid")
    poster = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    await poster.aclose()
    assert poster.logins == 1


async def test_wrong_password_fails_open_with_post_error(
    local_pds: LocalPds, tmp_path: Path
) -> None:
    """A bot that cannot log in fails the whole poster with PostError."""
    bot, _ = _bot(local_pds)
    with pytest.raises(PostError, match="cannot log in"):
        await _open(local_pds, tmp_path, [("ada", bot, SecretStr("wrong-password"))])


async def test_an_invalid_record_is_a_post_error(local_pds: LocalPds, tmp_path: Path) -> None:
    """The PDS's lexicon validation failure (text too long) is PostError, not a crash."""
    bot, pw = _bot(local_pds)
    poster = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    ref = StrongRef(f"at://{bot.did}/app.bsky.feed.post/3abc", "bafyreib2rxk3rh6kzwq")
    try:
        with pytest.raises(PostError):
            await poster.reply(
                ReplyPost("ada", bot.did, "x" * 3001, [], [], ref, ref, "2026-07-04T12:00:00Z")
            )
    finally:
        await poster.aclose()


async def test_budget_cap_raises_before_the_pds_sees_the_write(
    local_pds: LocalPds, tmp_path: Path
) -> None:
    """With a tiny budget the second reply raises PostRateLimited and is never created."""
    bot, pw = _bot(local_pds)
    root = local_pds.create_record(
        bot,
        "app.bsky.feed.post",
        {"$type": "app.bsky.feed.post", "text": "r", "createdAt": "2026-07-04T12:00:00.000Z"},
    )
    ref = StrongRef(root["uri"], root["cid"])
    poster = await _open(
        local_pds,
        tmp_path,
        [("ada", bot, pw)],
        budget=WriteBudget(points_per_hour=4, headroom=1.0, max_wait_s=1.0),
    )
    try:
        await poster.reply(
            ReplyPost("ada", bot.did, "one", [], [], ref, ref, "2026-07-04T12:00:00Z")
        )
        with pytest.raises(PostRateLimited):
            await poster.reply(
                ReplyPost("ada", bot.did, "two", [], [], ref, ref, "2026-07-04T12:00:00Z")
            )
    finally:
        await poster.aclose()
    texts = [r["value"]["text"] for r in local_pds.list_records(bot.did, "app.bsky.feed.post")]
    assert sorted(texts) == ["one", "r"]


async def test_label_keeps_other_profile_fields(local_pds: LocalPds, tmp_path: Path) -> None:
    """The bot label is added to the existing profile, other fields kept; a rerun is a no-op."""
    bot, pw = _bot(local_pds)
    local_pds.create_record(
        bot,
        "app.bsky.actor.profile",
        {"$type": "app.bsky.actor.profile", "displayName": "Ada", "description": "a bot"},
        rkey="self",
    )
    bare, bare_pw = _bot(local_pds, "bare")
    sessions = [
        BotSession(bot="ada", handle=bot.handle, password=pw, pds_url=local_pds.pds_url,
                   data_dir=tmp_path),
        BotSession(bot="bare", handle=bare.handle, password=bare_pw,
                   pds_url=local_pds.pds_url, data_dir=tmp_path),
    ]  # fmt: skip
    try:
        statuses = await check_sessions(sessions)
        assert [(s.did, s.session) for s in statuses] == [
            (bot.did, "created"),
            (bare.did, "created"),
        ]
        assert await label_bots(sessions) == {"ada": "added", "bare": "added"}
        assert await label_bots(sessions) == {"ada": "already", "bare": "already"}
    finally:
        for s in sessions:
            await s.aclose()
    profile = local_pds.get_record(f"at://{bot.did}/app.bsky.actor.profile/self")["value"]
    assert profile["displayName"] == "Ada" and profile["description"] == "a bot"
    assert profile["labels"] == {
        "$type": "com.atproto.label.defs#selfLabels",
        "values": [{"val": "bot"}],
    }
    bare_profile = local_pds.get_record(f"at://{bare.did}/app.bsky.actor.profile/self")["value"]
    assert bare_profile["labels"]["values"] == [{"val": "bot"}]


def _write_config(tmp_path: Path, pds_url: str, bots: list[tuple[str, str]]) -> Path:
    bots_yaml = {
        "bots": [
            {
                "name": name,
                "persona": "p",
                "provider": "template",
                "model": "template",
                "picker": "random",
                "account": {"handle": handle, "password_env": f"PW_{name.upper()}"},
            }
            for name, handle in bots
        ]
    }
    (tmp_path / "bots.yaml").write_text(json.dumps(bots_yaml))
    cfg = {
        "data_dir": str(tmp_path / "data"),
        "bots_file": "bots.yaml",
        "posting": {"mode": "live", "pds_url": pds_url},
    }
    path = tmp_path / "botsky.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_accounts_cli_check_and_label(local_pds: LocalPds, tmp_path: Path) -> None:
    """``accounts check`` lists DID and session per bot; a bad password makes it exit 1."""
    ada, ada_pw = _bot(local_pds)
    bad, _ = _bot(local_pds, "bad")
    cfg = _write_config(tmp_path, local_pds.pds_url, [("ada", ada.handle)])
    env = {"PW_ADA": ada_pw.get_secret_value()}
    runner = CliRunner()
    first = runner.invoke(accounts, ["check", "-c", str(cfg)], env=env)
    assert first.exit_code == 0, first.output
    assert ada.did in first.output and "session created" in first.output
    second = runner.invoke(accounts, ["label", "-c", str(cfg)], env=env)
    assert second.exit_code == 0 and "added" in second.output
    third = runner.invoke(accounts, ["check", "-c", str(cfg)], env=env)
    assert "session reused" in third.output

    cfg2 = _write_config(tmp_path, local_pds.pds_url, [("ada", ada.handle), ("bad", bad.handle)])
    failed = runner.invoke(
        accounts, ["check", "-c", str(cfg2)], env={**env, "PW_BAD": "not-the-password"}
    )
    assert failed.exit_code == 1 and "FAILED" in failed.output and ada.did in failed.output


async def test_reply_under_a_chosen_rkey_is_idempotent_and_found_by_lookup(
    local_pds: LocalPds, tmp_path: Path
) -> None:
    """Posting the same reply (same rkey) twice yields one record; lookup finds it by parent."""
    bot, pw = _bot(local_pds)
    author = local_pds.create_account(unique_name("author"))
    parent = local_pds.create_record(
        author,
        "app.bsky.feed.post",
        {"$type": "app.bsky.feed.post", "text": "p", "createdAt": "2026-07-04T12:00:00.000Z"},
    )
    ref = StrongRef(parent["uri"], parent["cid"])
    rkey = reply_rkey(1_783_175_888_000_000, parent["uri"])
    reply = ReplyPost("ada", bot.did, "hi", [], ["en"], ref, ref, "2026-07-04T12:00:01Z", rkey)
    poster = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    try:
        assert await poster.lookup(bot.did, rkey, parent["uri"]) is None
        first = await poster.reply(reply)
        again = await poster.reply(reply)
        assert first == again and first.uri.endswith(f"/app.bsky.feed.post/{rkey}")
        assert poster.counts["already_posted"] == 1
        assert await poster.lookup(bot.did, rkey, parent["uri"]) == first
        assert await poster.lookup(bot.did, rkey, "at://did:plc:x/app.bsky.feed.post/3x") is None
    finally:
        await poster.aclose()
    assert len(local_pds.list_records(bot.did, "app.bsky.feed.post")) == 1


def _expired(jwt: str) -> str:
    """The same token with its expiry moved into the past (the SDK reads exp unverified)."""
    header, payload, sig = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] = int(time.time()) - 60
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{body}.{sig}"


async def test_an_expired_access_token_is_refreshed_and_saved(
    local_pds: LocalPds, tmp_path: Path
) -> None:
    """At start, an expired access token is refreshed (no createSession) and the file updated."""
    bot, pw = _bot(local_pds)
    first = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    await first.aclose()
    path = session_path(tmp_path, "ada")
    handle, did, access, refresh, pds = path.read_text().split(":::")
    path.write_text(":::".join([handle, did, _expired(access), refresh, pds]))
    before = local_pds.counts()

    second = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    await second.aclose()
    after = local_pds.counts()
    assert second.logins == 0 and second.sessions["ada"].status == "reused"
    assert after.get("com.atproto.server.refreshSession", 0) == (
        before.get("com.atproto.server.refreshSession", 0) + 1
    )
    assert after.get("com.atproto.server.createSession") == before.get(
        "com.atproto.server.createSession"
    )
    assert path.read_text().split(":::")[3] != refresh  # the rotated refresh token is kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_a_failed_refresh_mid_run_logs_in_again_and_posts(
    local_pds: LocalPds, tmp_path: Path
) -> None:
    """When the SDK's refresh is refused while posting, the bot logs in once and the reply lands."""
    bot, pw = _bot(local_pds)
    root = local_pds.create_record(
        bot,
        "app.bsky.feed.post",
        {"$type": "app.bsky.feed.post", "text": "r", "createdAt": "2026-07-04T12:00:00.000Z"},
    )
    ref = StrongRef(root["uri"], root["cid"])
    poster = await _open(local_pds, tmp_path, [("ada", bot, pw)])
    try:
        session = poster.sessions["ada"].client._session
        assert session is not None
        session.access_jwt = _expired(session.access_jwt)
        session.refresh_jwt = _jwt("com.atproto.refresh", bot.did)  # forged: refused
        posted = await poster.reply(
            ReplyPost("ada", bot.did, "still here", [], [], ref, ref, "2026-07-04T12:00:01Z")
        )
        assert poster.logins == 2 and poster.sessions["ada"].status == "relogged"
    finally:
        await poster.aclose()
    assert local_pds.get_record(posted.uri)["value"]["text"] == "still here"
