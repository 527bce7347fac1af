"""OutcomeWatcher: success, engagement, negatives and expiry, read off events."""

from __future__ import annotations

from botsky.events import Event
from botsky.ledger.base import Mention
from botsky.ledger.sqlite import SqliteLedger
from botsky.outcomes import OutcomeWatcher
from botsky.testing import block, fake_cid, like, post, repost
from tests.support import MIN, T0

AUTHOR, TARGET, OTHER, BOT = "did:plc:author", "did:plc:target", "did:plc:other", "did:plc:bot"
HOUR = 60 * MIN


async def _setup(
    ledger: SqliteLedger, window_s: float = 86_400
) -> tuple[OutcomeWatcher, Mention, Event, Event]:
    root = post(AUTHOR, T0, "Who knows good hiking trails near Lyon?")
    bot_reply = post(BOT, T0 + 1000, "@target.test knows!", reply_to=root)
    assert await ledger.claim(root.uri, "bot", T0)
    m = Mention(
        post_uri=root.uri,
        post_cid=root.cid or "",
        post_author=AUTHOR,
        root_uri=root.uri,
        root_cid=root.cid or "",
        bot="bot",
        model="m1",
        provider="fake",
        persona="hiker",
        picker="llm",
        reply_uri=bot_reply.uri,
        reply_cid=bot_reply.cid or "",
        reply_text="@target.test knows!",
        mentioned_did=TARGET,
        mentioned_handle="target.test",
        candidates=[TARGET, OTHER],
        rank=0,
        created_us=T0 + 1000,
    )
    await ledger.record_mention(m)
    watcher = OutcomeWatcher(ledger, window_s=window_s)
    watcher.track(m)
    return watcher, m, root, bot_reply


async def _kinds(ledger: SqliteLedger) -> list[str]:
    return sorted(o.kind for o in await ledger.outcomes())


async def test_mentioned_user_posting_in_thread_is_a_success(ledger: SqliteLedger) -> None:
    """A reply anywhere in the thread by the mentioned user closes the mention as succeeded."""
    watcher, _m, _root, bot_reply = await _setup(ledger)
    await watcher.observe(post(TARGET, T0 + 5 * MIN, "Try the Monts d'Or!", reply_to=bot_reply))
    (row,) = await ledger.mentions()
    assert row.status == "succeeded" and row.outcome_us == T0 + 5 * MIN
    assert await _kinds(ledger) == ["success"]


async def test_other_users_and_other_threads_do_not_count(ledger: SqliteLedger) -> None:
    """A post by someone else in the thread, or by the target elsewhere, is no success."""
    watcher, _m, root, _bot_reply = await _setup(ledger)
    await watcher.observe(post(OTHER, T0 + MIN, "me too", reply_to=root))
    await watcher.observe(post(TARGET, T0 + MIN + 1, "unrelated post"))
    assert (await ledger.mentions())[0].status == "open"
    assert await _kinds(ledger) == []


async def test_engagement_on_the_bot_reply_is_recorded_once(ledger: SqliteLedger) -> None:
    """Likes, reposts, quotes and the author's reply count; replaying an event does not."""
    watcher, _m, _root, bot_reply = await _setup(ledger)
    events = [
        like(OTHER, T0 + MIN, bot_reply.uri),
        repost(OTHER, T0 + 2 * MIN, bot_reply.uri),
        post(OTHER, T0 + 3 * MIN, "look at this", quote=bot_reply),
        post(AUTHOR, T0 + 4 * MIN, "thanks bot", reply_to=bot_reply),
        like(OTHER, T0 + 5 * MIN, "at://did:plc:x/app.bsky.feed.post/unrelated"),
    ]
    for e in events + events[:2]:
        await watcher.observe(e)
    assert await _kinds(ledger) == ["author_reply", "like", "quote", "repost"]
    assert watcher.counts == {"like": 1, "repost": 1, "quote": 1, "author_reply": 1}


async def test_blocking_the_bot_is_a_negative(ledger: SqliteLedger) -> None:
    """A block of the bot by the mentioned user is recorded; a block of someone else is not."""
    watcher, *_ = await _setup(ledger)
    await watcher.observe(block(TARGET, T0 + MIN, "did:plc:someoneelse"))
    await watcher.observe(block(TARGET, T0 + 2 * MIN, BOT))
    assert await _kinds(ledger) == ["block"]


async def test_engagement_after_success_still_counts_until_the_window_ends(
    ledger: SqliteLedger,
) -> None:
    """After success the mention is still watched for likes; expiry then leaves it succeeded."""
    watcher, _m, _root, bot_reply = await _setup(ledger, window_s=3600)
    await watcher.observe(post(TARGET, T0 + MIN, "hi", reply_to=bot_reply))
    await watcher.observe(like(AUTHOR, T0 + 2 * MIN, bot_reply.uri))
    assert await watcher.expire(T0 + 2 * HOUR) == []
    assert len(watcher) == 0
    assert (await ledger.mentions())[0].status == "succeeded"
    assert await _kinds(ledger) == ["like", "success"]


async def test_mentions_expire_when_the_window_closes(ledger: SqliteLedger) -> None:
    """No reply within the window: the mention expires; a late reply is not a success."""
    watcher, m, _root, bot_reply = await _setup(ledger, window_s=3600)
    assert await watcher.expire(T0 + 30 * MIN) == []
    expired = await watcher.expire(T0 + 2 * HOUR)
    assert expired == [m.id]
    await watcher.observe(post(TARGET, T0 + 3 * HOUR, "late", reply_to=bot_reply))
    (row,) = await ledger.mentions()
    assert row.status == "expired"
    assert await _kinds(ledger) == []


async def test_a_success_after_the_window_is_ignored_even_before_expiry_runs(
    ledger: SqliteLedger,
) -> None:
    """The window is checked on the event itself, not only by the expiry sweep."""
    watcher, _m, _root, bot_reply = await _setup(ledger, window_s=3600)
    await watcher.observe(post(TARGET, T0 + 2 * HOUR, "late", reply_to=bot_reply))
    assert (await ledger.mentions())[0].status == "open"


async def test_open_mentions_are_reloaded_after_a_restart(ledger: SqliteLedger) -> None:
    """A new watcher loads open mentions from the ledger and still sees their success."""
    _, _m, _root, bot_reply = await _setup(ledger)
    fresh = OutcomeWatcher(ledger)
    assert await fresh.load() == 1
    await fresh.observe(post(TARGET, T0 + MIN, "hello", reply_to=bot_reply))
    assert (await ledger.mentions())[0].status == "succeeded"


def test_fake_cids_are_stable() -> None:
    """The test builders' CIDs are deterministic, so replays produce equal events."""
    assert fake_cid("a") == fake_cid("a") != fake_cid("b")
