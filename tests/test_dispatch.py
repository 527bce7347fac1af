"""Dispatch: the selector's rules and one post's way from queue to recorded mention."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import orjson
import pytest

from botsky.army import Army, Bot
from botsky.dispatch import ComposeRules, Dispatcher, RetryPolicy, Selector
from botsky.errors import (
    LedgerUnavailable,
    ModelError,
    ModelUnavailable,
    PostError,
    PostOutcomeUnknown,
    PostRateLimited,
)
from botsky.events import Event, PostRef
from botsky.identity import MemoryIdentity
from botsky.ledger.base import MENTION_LOG_FIELDS, mention_from_log
from botsky.ledger.retry import RetryingLedger
from botsky.ledger.sqlite import SqliteLedger
from botsky.llm.openai import OpenAIModel
from botsky.outcomes import OutcomeWatcher
from botsky.policy import AudiencePolicy
from botsky.presence import Presence
from botsky.recommend import Recommender
from botsky.secretguard import SecretGuard
from botsky.testing import (
    FakeClock,
    FakeModel,
    RecordingPoster,
    block,
    handles_offered,
    like,
    post,
    profile,
)
from tests.support import MIN, T0

BOT_DID = "did:plc:bot"
AUTHOR = "did:plc:author"


# Selector ----------------------------------------------------------------------------------
def _selector(**kw: object) -> Selector:
    return Selector(is_bot=lambda d: d == BOT_DID, rng=random.Random(1), **kw)  # type: ignore[arg-type]


ROOT = post(AUTHOR, T0, "a root post")
BOT_POST = post(BOT_DID, T0, "a bot post")


@pytest.mark.parametrize(
    ("event", "kw", "expected"),
    [
        (post(AUTHOR, T0, "hello world"), {}, None),
        (like(AUTHOR, T0, ROOT.uri), {}, "not_a_new_post"),
        (post(BOT_DID, T0, "bots talk"), {}, "by_bot"),
        (post(AUTHOR, T0, "   "), {}, "no_text"),
        (post(AUTHOR, T0, "a reply", reply_to=ROOT), {"reply_to_replies": False}, "is_reply"),
        (post(AUTHOR, T0, "a reply", reply_to=ROOT), {}, None),
        (post(AUTHOR, T0, "to the bot", reply_to=BOT_POST), {}, "reply_to_bot"),
        (post(AUTHOR, T0, "to the bot", reply_to=BOT_POST), {"reply_to_bots": True}, None),
        (post(AUTHOR, T0, "bonjour", langs=("fr",)), {"languages": ("en",)}, "language"),
        (post(AUTHOR, T0, "no langs", langs=()), {"languages": ("en",)}, None),
        (post(AUTHOR, T0, "hi"), {"may_answer": lambda d, t: False}, "no_consent"),
        (post(AUTHOR, T0, "hi"), {"is_active": lambda d: False}, "inactive_account"),
        (post(AUTHOR, T0, "hi"), {"sample_rate": 0.0}, "sampled_out"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_selector_rules(event, kw, expected) -> None:  # type: ignore[no-untyped-def]
    """Each eligibility rule gives its reason, and eligible posts give None."""
    assert _selector(**kw).reason(event, PostRef.of(event.record)) == expected


def test_selector_author_cooldown() -> None:
    """After a post is accepted the author waits out the cooldown."""
    sel = _selector(author_cooldown_s=3600)
    first = post(AUTHOR, T0, "one")
    sel.accepted(first)
    second = post(AUTHOR, T0 + 30 * MIN, "two")
    third = post(AUTHOR, T0 + 61 * MIN, "three")
    assert sel.reason(second, PostRef.of(second.record)) == "author_cooldown"
    assert sel.reason(third, PostRef.of(third.record)) is None


def test_selector_sampling_rate() -> None:
    """A 25% sample rate keeps about a quarter of the posts."""
    sel = _selector(sample_rate=0.25)
    ev = post(AUTHOR, T0, "hello")
    kept = sum(sel.reason(ev, PostRef.of(ev.record)) is None for _ in range(4000))
    assert 850 < kept < 1150


# Dispatcher --------------------------------------------------------------------------------
@dataclass
class World:
    dispatcher: Dispatcher
    model: FakeModel
    poster: RecordingPoster
    ledger: SqliteLedger
    presence: Presence


@pytest.fixture
async def world(ledger: SqliteLedger) -> AsyncIterator[World]:
    """Three online users with known interests, one bot on a FakeModel, a real ledger."""
    presence = Presence()
    identity = MemoryIdentity(
        {"did:plc:baker": "baker.test", "did:plc:cook": "cook.test", AUTHOR: "author.test"}
    )
    presence.observe(post("did:plc:baker", T0, "sourdough bread baking starter"))
    presence.observe(post("did:plc:cook", T0 + 1, "bread soup kitchen recipes"))
    model = FakeModel(model="fake-1")
    bot = Bot("b1", "A friendly baker.", model, "llm", "bot.test", BOT_DID)
    army = Army([bot], random.Random(1))
    poster = RecordingPoster()
    d = Dispatcher(
        army=army,
        recommender=Recommender(presence, identity, is_bot=army.is_bot),
        presence=presence,
        identity=identity,
        ledger=ledger,
        poster=poster,
        outcomes=OutcomeWatcher(ledger),
        rules=ComposeRules(max_graphemes=120),
        queue_size=2,
        workers=1,
        guard=SecretGuard(),
    )
    yield World(d, model, poster, ledger, presence)


def _post(text: str = "How do I feed a sourdough starter for better bread?", dt: int = 10):
    ev = post(AUTHOR, T0 + dt, text)
    return ev, PostRef.of(ev.record)


async def test_a_post_becomes_one_reply_with_a_valid_mention(world: World) -> None:
    """The bot replies with a facet for an offered user; claim and mention are recorded."""
    ev, ref = _post()
    world.presence.observe(ev)
    assert await world.dispatcher.handle(ev, ref) == "posted"
    (sent,) = world.poster.posted
    (facet,) = sent.facets
    start, end = facet["index"]["byteStart"], facet["index"]["byteEnd"]
    assert sent.text.encode()[start:end] == b"@baker.test"
    assert facet["features"][0]["did"] == "did:plc:baker"
    assert sent.parent.uri == ev.uri and sent.root.uri == ev.uri
    (m,) = await world.ledger.mentions()
    assert (m.mentioned_did, m.model, m.rank, m.picker) == ("did:plc:baker", "fake-1", 0, "llm")
    assert m.candidates == ["did:plc:baker", "did:plc:cook"]
    assert m.prompt_tokens == 100 and m.cost_usd == pytest.approx(0.001)
    assert await world.ledger.claims_with_status("posted") == [(ev.uri, "b1")]
    # The prompt carried the post as untrusted text and the candidates.
    _system, user = world.model.calls[0]
    assert "<post>" in user and handles_offered(user) == ["baker.test", "cook.test"]


async def test_the_same_post_is_never_answered_twice(world: World) -> None:
    """A second handling of the same post stops at the claim."""
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "posted"
    world.dispatcher.recommender._last_mentioned.clear()
    assert await world.dispatcher.handle(ev, ref) == "already_claimed"
    assert len(world.poster.posted) == 1
    assert len(await world.ledger.mentions()) == 1


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (ModelUnavailable("429 after 4 attempts", retry_after=2.0), "model_unavailable"),
        (ModelError("refused"), "model_error"),
        ({"reply": "ask @mallory.test", "mention": "mallory.test"}, "rejected_mention_not_offered"),
        ({"reply": "no mention field"}, "rejected_malformed_answer"),
        ({"reply": "   ", "mention": "baker.test"}, "rejected_malformed_answer"),
    ],
    ids=["unavailable", "refused", "not_offered", "malformed", "empty"],
)
async def test_model_failures_leave_nothing_in_the_ledger(world: World, answer, expected) -> None:  # type: ignore[no-untyped-def]
    """A failed or rule-breaking model answer is skipped: no claim, no post, no mention."""
    world.model.script(answer)
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == expected
    assert world.poster.posted == []
    assert await world.ledger.mentions() == []
    assert await world.ledger.claims_with_status("posting") == []
    assert await world.ledger.claims_with_status("posted") == []


async def test_an_overlong_reply_is_trimmed_and_keeps_its_mention(world: World) -> None:
    """An answer over the grapheme limit is repaired, not rejected; the mention survives."""
    world.model.script({"reply": "🍞 " * 200 + "@baker.test", "mention": "baker.test"})
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "posted"
    (sent,) = world.poster.posted
    assert "@baker.test" in sent.text
    (m,) = await world.ledger.mentions()
    assert "trimmed" in m.extra["repaired"]  # type: ignore[operator]


async def test_a_failed_post_marks_the_claim_failed(world: World) -> None:
    """When the PDS refuses the post, no mention is recorded and the post is not retried."""
    world.poster.fail_with.append(PostError("parent deleted"))
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "post_failed"
    assert await world.ledger.mentions() == []
    assert await world.ledger.claims_with_status("failed") == [(ev.uri, "b1")]
    assert await world.dispatcher.handle(ev, ref) == "already_claimed"


async def test_no_candidates_means_no_model_call(world: World) -> None:
    """A post nobody online fits is skipped before the model is asked."""
    ev, ref = _post("Quantum chromodynamics lattice gauge theory")
    assert await world.dispatcher.handle(ev, ref) == "no_candidates"
    assert world.model.calls == []


async def test_ledger_blips_are_retried_so_a_posted_reply_is_recorded(world: World) -> None:
    """A transient ledger error while recording a posted reply is retried, not lost."""
    real = world.ledger.record_mention
    failures = [LedgerUnavailable("locked"), LedgerUnavailable("locked")]

    async def flaky(m):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return await real(m)

    world.ledger.record_mention = flaky  # type: ignore[method-assign]
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    world.dispatcher.ledger = RetryingLedger(world.ledger, sleep=no_sleep)  # type: ignore[assignment]
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "posted"
    assert len(await world.ledger.mentions()) == 1
    assert len(slept) == 2 and 0 < slept[0] <= slept[1] + 1  # jittered, growing backoff


async def test_a_full_queue_drops_and_counts_without_waiting(world: World) -> None:
    """offer never blocks: past the queue size posts are dropped and counted."""
    results = [world.dispatcher.offer(*_post(dt=i)) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert world.dispatcher.counts["dropped_queue_full"] == 3


async def test_workers_drain_the_queue_and_stop(world: World) -> None:
    """run() handles every queued post and returns after close()."""
    for i, text in enumerate(["sourdough bread question", "bread soup question"]):
        world.dispatcher.offer(*_post(text, dt=i))
    await world.dispatcher.close()
    await world.dispatcher.run()
    assert world.dispatcher.counts["posted"] == 2


# The model failure matrix, through the real OpenAI SDK over the vendor's wire format ---------
def _chat(content: str, *, refusal: str | None = None, finish: str = "stop") -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_783_175_888,
        "model": "gpt-4.1-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 300, "completion_tokens": 30, "total_tokens": 330},
    }


def _err(status: int, message: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return httpx2.Response(status, json=body, headers=headers or {})


def _ok(reply: str, mention: str = "baker.test"):  # type: ignore[no-untyped-def]
    return httpx2.Response(
        200, json=_chat(orjson.dumps({"reply": reply, "mention": mention}).decode())
    )


def _timeout(request: httpx2.Request) -> httpx2.Response:
    raise httpx2.ReadTimeout("timed out", request=request)


MATRIX = {
    # name: (responses in order, expected outcome, expected attempts)
    "timeout_then_ok": ([_timeout, _ok("Ask @baker.test!")], "posted", 2),
    "429_retry_after_then_ok": (
        [_err(429, "Rate limit", {"retry-after": "3"}), _ok("Ask @baker.test!")],
        "posted",
        2,
    ),
    "500_until_the_bound": ([_err(500, "boom")] * 4, "model_unavailable", 4),
    "malformed_json": ([httpx2.Response(200, json=_chat("{not json"))], "model_error", 1),
    "refusal": ([httpx2.Response(200, json=_chat("", refusal="I can't help"))], "model_error", 1),
    "mention_outside_candidates": (
        [_ok("Ask @mallory.test!", "mallory.test")],
        "rejected_mention_not_offered",
        1,
    ),
    "over_long_reply": ([_ok("Sourdough! " * 80 + "@baker.test")], "posted", 1),
}


@pytest.mark.parametrize("case", list(MATRIX))
async def test_model_failure_matrix_through_the_openai_backend(world: World, case: str) -> None:
    """Each failure ends as specified (retried, skipped and counted, or repaired); a skipped
    post leaves no claim and no mention behind."""
    steps, expected, attempts = MATRIX[case]
    calls: list[httpx2.Request] = []
    sleeps: list[float] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        step = steps[min(len(calls), len(steps)) - 1]
        return step(request) if callable(step) else step

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    model = OpenAIModel(
        "gpt-4.1-mini",
        api_key="sk-test",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
        max_attempts=4,
        sleep=no_sleep,
    )
    bot = Bot("gpt", "A baker.", model, "llm", "bot.test", BOT_DID)
    world.dispatcher.army = Army([bot], random.Random(1))
    try:
        ev, ref = _post()
        assert await world.dispatcher.handle(ev, ref) == expected
    finally:
        await model.aclose()
    assert len(calls) == attempts
    mentions = await world.ledger.mentions()
    if expected == "posted":
        (m,) = mentions
        (sent,) = world.poster.posted
        assert len(sent.text) <= 120 and "@baker.test" in sent.text
        assert m.prompt_tokens == 300 and m.model == "gpt-4.1-mini"
        if case.startswith("429"):
            assert sleeps == [pytest.approx(3.0)]
    else:
        assert mentions == [] and world.poster.posted == []
        assert not await world.ledger.is_claimed(ev.uri)


# Crash recovery ------------------------------------------------------------------------------
class CrashingPoster(RecordingPoster):
    """Posts, then 'crashes' (raises) before the caller can record the mention."""

    async def reply(self, p):  # type: ignore[no-untyped-def]
        await super().reply(p)
        raise KeyboardInterrupt  # stands for a process killed right after the post call


async def test_a_crash_after_posting_is_recovered_without_a_second_post(world: World) -> None:
    """A claim left 'posting' whose reply exists is recorded from its intent, not re-posted."""
    crashing = CrashingPoster()
    world.dispatcher.poster = crashing
    ev, ref = _post()
    with pytest.raises(KeyboardInterrupt):
        await world.dispatcher.handle(ev, ref)
    assert await world.ledger.mentions() == []
    [(uri, _owner, intent)] = await world.ledger.pending_claims()
    assert uri == ev.uri and intent is not None
    assert await world.dispatcher.recover() == {"posted": 1}
    assert len(crashing.posted) == 1  # found by lookup, not posted again
    (m,) = await world.ledger.mentions()
    assert m.reply_uri.endswith("/" + crashing.posted[0].rkey)
    assert m.mentioned_did == "did:plc:baker" and m.prompt_tokens == 100
    assert await world.ledger.pending_claims() == []
    assert len(world.dispatcher.outcomes) == 1  # and it is watched for outcomes


async def test_a_crash_before_posting_is_completed_by_recovery(world: World) -> None:
    """A claim whose reply never reached the repo is posted once, with its planned rkey."""
    ev, ref = _post()

    class DiesBeforePosting(RecordingPoster):
        async def reply(self, p):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    world.dispatcher.poster = DiesBeforePosting()
    with pytest.raises(KeyboardInterrupt):
        await world.dispatcher.handle(ev, ref)
    [(_, _, intent)] = await world.ledger.pending_claims()
    assert intent is not None
    world.dispatcher.poster = world.poster
    assert await world.dispatcher.recover() == {"posted": 1}
    (sent,) = world.poster.posted
    assert sent.rkey == intent["reply"]["rkey"] and sent.parent.uri == ev.uri
    assert len(await world.ledger.mentions()) == 1


async def test_a_claim_the_pds_cannot_settle_yet_waits_for_the_next_recovery(
    world: World,
) -> None:
    """When the PDS cannot tell whether a reply landed (lookup fails), recovery parks that
    claim as 'retry' (counted) instead of failing start-up; once due, it is settled."""
    ev, ref = _post()
    clock = _wall(world)

    class DiesBeforePosting(RecordingPoster):
        async def reply(self, p):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    class PdsCannotTell(RecordingPoster):
        async def lookup(self, bot_did, rkey, parent_uri):  # type: ignore[no-untyped-def]
            raise PostOutcomeUnknown(f"looking up {rkey}: 502 Bad Gateway")

    world.dispatcher.poster = DiesBeforePosting()
    with pytest.raises(KeyboardInterrupt):
        await world.dispatcher.handle(ev, ref)
    world.dispatcher.poster = PdsCannotTell()
    assert await world.dispatcher.recover() == {"post_unknown": 1}
    (waiting,) = await world.ledger.claims("retry")
    assert waiting.post_uri == ev.uri and waiting.attempts == 1
    assert "502 Bad Gateway" in waiting.reason
    world.dispatcher.poster = world.poster
    clock.advance(5.0)
    assert await world.dispatcher.settle_due() == {"posted": 1}
    assert len(world.poster.posted) == 1 and len(await world.ledger.mentions()) == 1


# Unknown is not failed ---------------------------------------------------------------------
def _wall(world: World) -> FakeClock:
    """A wall clock for the dispatcher's retry times."""
    clock = FakeClock(1_800_000_000.0)
    world.dispatcher.clock = clock
    return clock


class LandsButAnswerIsLost(RecordingPoster):
    """The create is committed, then the answer is lost (a dropped connection, a 502)."""

    async def reply(self, p):  # type: ignore[no-untyped-def]
        await super().reply(p)
        raise PostOutcomeUnknown("RemoteProtocolError: Server disconnected")


class NeverReaches(RecordingPoster):
    """Creates time out before reaching the PDS; lookups answer (optionally not at all)."""

    lookups_fail = False

    async def reply(self, p):  # type: ignore[no-untyped-def]
        raise PostOutcomeUnknown("InvokeTimeoutError")

    async def lookup(self, bot_did, rkey, parent_uri):  # type: ignore[no-untyped-def]
        if self.lookups_fail:
            raise PostOutcomeUnknown("InvokeTimeoutError")
        return await super().lookup(bot_did, rkey, parent_uri)


async def test_a_create_whose_answer_was_lost_is_found_and_recorded_once(world: World) -> None:
    """A create with an unknown outcome keeps its claim ('retry', the worker is free at once);
    when due, the reply is found in the repo by its record key and recorded, not re-posted."""
    clock = _wall(world)
    lossy = LandsButAnswerIsLost()
    world.dispatcher.poster = lossy
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "post_unknown"
    (waiting,) = await world.ledger.claims("retry")
    assert waiting.attempts == 1 and waiting.next_try_us == int((clock.now + 5.0) * 1e6)
    assert await world.dispatcher.handle(ev, ref) == "already_claimed"
    assert await world.dispatcher.settle_due() == {}  # not due yet
    clock.advance(5.0)
    assert await world.dispatcher.settle_due() == {"posted": 1}
    assert len(lossy.posted) == 1
    (m,) = await world.ledger.mentions()
    assert m.reply_uri.endswith("/" + lossy.posted[0].rkey)
    assert await world.ledger.claims("retry") == [] and await world.ledger.pending_claims() == []
    assert world.dispatcher.counts["settled_posted"] == 1


async def test_a_create_that_never_landed_is_posted_again_under_its_record_key(
    world: World,
) -> None:
    """A create that never reached the PDS is posted again, once, under the planned key."""
    clock = _wall(world)
    world.dispatcher.poster = NeverReaches()
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "post_unknown"
    [claim] = await world.ledger.claims("retry")
    assert claim.intent is not None
    world.dispatcher.poster = world.poster
    clock.advance(5.0)
    assert await world.dispatcher.settle_due() == {"posted": 1}
    (sent,) = world.poster.posted
    assert sent.rkey == claim.intent["reply"]["rkey"]
    assert len(await world.ledger.mentions()) == 1


async def test_retries_back_off_and_give_up_only_when_the_pds_says_it_is_not_there(
    world: World,
) -> None:
    """Each unknown outcome doubles the wait (capped); after the bound no create is sent: the
    claim waits while the PDS cannot answer, and fails (gave_up) once it says 'not there'."""
    clock = _wall(world)
    world.dispatcher.retry = RetryPolicy(attempts=4, initial_s=5.0, max_s=15.0)
    never = NeverReaches()
    world.dispatcher.poster = never
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "post_unknown"
    waits = []
    for _ in range(3):
        (c,) = await world.ledger.claims("retry")
        waits.append(c.next_try_us / 1e6 - clock.now)
        clock.now = c.next_try_us / 1e6
        assert await world.dispatcher.settle_due() == {"post_unknown": 1}
    (c,) = await world.ledger.claims("retry")
    assert waits == [5.0, 10.0, 15.0] and c.attempts == 4
    # The bound is reached: while lookups fail, the claim keeps waiting (max_s apart).
    never.lookups_fail = True
    clock.now = c.next_try_us / 1e6
    assert await world.dispatcher.settle_due() == {"post_unknown": 1}
    (c,) = await world.ledger.claims("retry")
    assert c.attempts == 5 and c.next_try_us / 1e6 - clock.now == 15.0
    never.lookups_fail = False
    clock.now = c.next_try_us / 1e6
    assert await world.dispatcher.settle_due() == {"gave_up": 1}
    (failed,) = await world.ledger.claims("failed")
    assert failed.reason == "gave_up" and await world.ledger.mentions() == []


async def test_a_definite_refusal_fails_at_once_with_its_reason(world: World) -> None:
    """A 4xx that means no (here InvalidRequest: the parent is gone) fails the claim with the
    error's name as its reason; nothing is retried."""
    world.poster.fail_with.append(PostError("InvalidRequest: parent deleted", "InvalidRequest"))
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "post_failed"
    (failed,) = await world.ledger.claims("failed")
    assert failed.reason == "InvalidRequest"
    assert await world.ledger.claims("retry") == []


@pytest.mark.parametrize("reason", ["budget_spent", "rate_limited", "posts_per_minute"])
async def test_a_reply_beyond_the_budget_is_refused_with_its_reason(
    world: World, reason: str
) -> None:
    """A new reply the write budget (or a 429's block) does not allow is refused, not dropped
    silently: its claim fails with the reason, and the outcome is counted under it."""
    world.poster.fail_with.append(PostRateLimited("spent", retry_after=3000.0, reason=reason))
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == reason
    (failed,) = await world.ledger.claims("failed")
    assert failed.reason == reason and world.poster.posted == []


async def test_a_retry_that_meets_a_spent_budget_waits_instead_of_failing(world: World) -> None:
    """A reply whose earlier create may have landed is never failed unseen: a spent budget
    postpones its retry by at least the budget's wait."""
    clock = _wall(world)
    world.dispatcher.poster = NeverReaches()
    ev, ref = _post()
    await world.dispatcher.handle(ev, ref)
    world.dispatcher.poster = world.poster
    world.poster.fail_with.append(
        PostRateLimited("spent", retry_after=600.0, reason="budget_spent")
    )
    clock.advance(5.0)
    assert await world.dispatcher.settle_due() == {"post_unknown": 1}
    (c,) = await world.ledger.claims("retry")
    assert c.next_try_us / 1e6 - clock.now == 600.0 and c.reason.startswith("PostRateLimited")
    clock.now = c.next_try_us / 1e6
    assert await world.dispatcher.settle_due() == {"posted": 1}


async def test_a_retry_asks_consent_again_before_posting(world: World) -> None:
    """Between an unknown outcome and its retry the mentioned user blocked a bot: the reply,
    not in the repo, is not posted again (and the claim fails with that reason)."""
    clock = _wall(world)
    policy, _ = _consent(world)
    world.dispatcher.poster = NeverReaches()
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == "post_unknown"
    assert policy.observe(block(BAKER, T0 + 11, BOT_DID)) is not None
    world.dispatcher.poster = world.poster
    clock.advance(5.0)
    assert await world.dispatcher.settle_due() == {"mention_opted_out": 1}
    assert world.poster.posted == []
    (failed,) = await world.ledger.claims("failed")
    assert failed.reason == "mention_opted_out"


async def test_two_dispatchers_never_settle_the_same_claim(world: World, tmp_path: Path) -> None:
    """Two processes on one ledger run their settle loops at once: the due claim is taken by
    one of them, posted once and recorded once."""
    clock = _wall(world)
    world.dispatcher.poster = NeverReaches()
    ev, ref = _post()
    await world.dispatcher.handle(ev, ref)
    other_ledger = SqliteLedger(world.ledger.path)
    await other_ledger.open()
    try:
        other = copy.copy(world.dispatcher)
        other.ledger, other.replica = other_ledger, "other"
        world.dispatcher.poster = other.poster = world.poster
        clock.advance(5.0)
        done = await asyncio.gather(world.dispatcher.settle_due(), other.settle_due())
        assert sum(d["posted"] for d in done) == 1
    finally:
        await other_ledger.close()
    assert len(world.poster.posted) == 1 and len(await world.ledger.mentions()) == 1


async def test_claims_without_intent_are_marked_failed(world: World) -> None:
    """A pending claim with no intent (nothing to post) is closed as failed."""
    assert await world.ledger.claim("at://did:plc:x/app.bsky.feed.post/1", "b1", T0)
    assert await world.dispatcher.recover() == {"no_intent": 1}
    assert await world.ledger.claims_with_status("failed") == [
        ("at://did:plc:x/app.bsky.feed.post/1", "b1")
    ]


# Consent checked again after the model call -----------------------------------------------
BAKER = "did:plc:baker"


def _consent(world: World) -> tuple[AudiencePolicy, list[bool]]:
    """An open-audience policy and a kill switch wired into the dispatcher, as build_app does."""
    switch = [False]
    policy = AudiencePolicy(
        mode="open", bot_dids=[BOT_DID], stop_phrases=["stop"], kill_switch=lambda: switch[0]
    )
    world.dispatcher.opted_out = policy.has_opted_out
    world.dispatcher.is_active = policy.is_active
    world.dispatcher.paused = policy.posting_paused
    return policy, switch


def _meanwhile(kind: str) -> Event:
    """What the stream delivers while the model is thinking."""
    if kind == "mentioned_blocks":
        return block(BAKER, T0 + 11, BOT_DID)
    if kind == "mentioned_says_stop":
        return post(BAKER, T0 + 11, "stop", reply_to=post(BOT_DID, T0, "a bot's reply"))
    if kind == "mentioned_nobot":
        return profile(BAKER, T0 + 11, "I bake. #nobot")
    if kind == "mentioned_deactivated":
        return Event(did=BAKER, time_us=T0 + 11, kind="account", active=False, status="takendown")
    if kind == "author_deactivated":
        return Event(did=AUTHOR, time_us=T0 + 11, kind="account", active=False)
    return block(AUTHOR, T0 + 11, BOT_DID)


def _learn(policy: AudiencePolicy, event: Event) -> None:
    """The router's consent step for ``event``: an opt-out or an account status."""
    learned = policy.observe_account(event) if event.kind == "account" else policy.observe(event)
    assert learned is not None


@pytest.mark.parametrize(
    ("meanwhile", "expected"),
    [
        ("mentioned_blocks", "mention_opted_out"),
        ("mentioned_says_stop", "mention_opted_out"),
        ("mentioned_nobot", "mention_opted_out"),
        ("author_blocks", "author_opted_out"),
        ("mentioned_deactivated", "mention_inactive"),
        ("author_deactivated", "author_inactive"),
        ("kill_switch", "paused_before_post"),
    ],
)
async def test_an_opt_out_during_the_model_call_drops_the_reply(
    world: World, meanwhile: str, expected: str
) -> None:
    """Consent, account status and the kill switch are asked again after the model call: a
    user who opted out or whose account was deactivated while it ran is not mentioned (nor an
    author answered); nothing is claimed or posted."""
    policy, switch = _consent(world)

    def slow_model(system: str, user: str) -> dict[str, str]:
        if meanwhile == "kill_switch":
            switch[0] = True
        else:
            _learn(policy, _meanwhile(meanwhile))
        return {"reply": "Ask @baker.test, a fine baker.", "mention": "baker.test"}

    world.model.script(slow_model)
    ev, ref = _post()
    assert await world.dispatcher.handle(ev, ref) == expected
    assert world.poster.posted == []
    assert await world.ledger.mentions() == []
    assert not await world.ledger.is_claimed(ev.uri)


@pytest.mark.parametrize(
    ("meanwhile", "expected"),
    [
        ("mentioned_blocks", "mention_opted_out"),
        ("author_blocks", "author_opted_out"),
        ("mentioned_deactivated", "mention_inactive"),
        ("kill_switch", "paused_before_post"),
    ],
)
async def test_recovery_does_not_post_what_consent_no_longer_allows(
    world: World, meanwhile: str, expected: str
) -> None:
    """A claim left 'posting' by a crash is not posted once its author or its mentioned user
    opted out (or the kill switch is on): the claim is closed as failed, nothing is posted."""
    policy, switch = _consent(world)
    ev, ref = _post()

    class DiesBeforePosting(RecordingPoster):
        async def reply(self, p):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    world.dispatcher.poster = DiesBeforePosting()
    with pytest.raises(KeyboardInterrupt):
        await world.dispatcher.handle(ev, ref)
    # Between the crash and the restart: the opt-out (or the kill switch).
    if meanwhile == "kill_switch":
        switch[0] = True
    else:
        _learn(policy, _meanwhile(meanwhile))
    world.dispatcher.poster = world.poster
    assert await world.dispatcher.recover() == {expected: 1}
    assert world.poster.posted == []
    assert await world.ledger.mentions() == []
    assert await world.ledger.claims_with_status("failed") == [(ev.uri, "b1")]


async def test_a_reply_found_in_the_repo_is_recorded_even_after_an_opt_out(world: World) -> None:
    """Recovery records a reply that was already posted before the opt-out: the ledger must
    agree with the repo (the mention happened); only re-posting is refused."""
    policy, _ = _consent(world)
    crashing = CrashingPoster()
    world.dispatcher.poster = crashing
    ev, ref = _post()
    with pytest.raises(KeyboardInterrupt):
        await world.dispatcher.handle(ev, ref)
    policy.observe(block(BAKER, T0 + 11, BOT_DID))
    assert await world.dispatcher.recover() == {"posted": 1}
    assert len(crashing.posted) == 1


def test_selector_memory_is_bounded() -> None:
    """Authors whose cooldown is over are forgotten once the map grows large."""
    sel = _selector(author_cooldown_s=60)
    for i in range(100_002):
        sel.accepted(Event(did=f"did:plc:a{i}", time_us=T0 + i * 1_000_000, kind="commit"))
    assert len(sel._last_answered) <= 61


def test_selector_snapshot_continues_sampling_and_cooldowns() -> None:
    """A selector restored from its pickled snapshot samples the same posts and keeps the
    authors' cooldowns."""
    import pickle

    sel = _selector(sample_rate=0.5, author_cooldown_s=3600)
    ev = post(AUTHOR, T0, "hello")
    for _ in range(7):
        sel.reason(ev, PostRef.of(ev.record))
    sel.accepted(ev)
    fresh = _selector(sample_rate=0.5, author_cooldown_s=3600)
    fresh.restore(pickle.loads(pickle.dumps(sel.snapshot())))
    other = post("did:plc:other", T0 + 1, "hi")
    ref = PostRef.of(other.record)
    assert [fresh.reason(other, ref) for _ in range(40)] == [
        sel.reason(other, ref) for _ in range(40)
    ]
    later = post(AUTHOR, T0 + 30 * MIN, "again")
    assert fresh.reason(later, PostRef.of(later.record)) == "author_cooldown"


async def test_dispatcher_snapshot_holds_its_rng_and_counts(world: World) -> None:
    """The dispatcher's snapshot carries the picker RNG and the outcome counts, nothing shared."""
    import pickle

    d = world.dispatcher
    assert await d.handle(*_post()) == "posted"
    d.counts["posted"] += 1
    d.rng.random()
    snap = pickle.loads(pickle.dumps(d.snapshot()))
    d.counts["posted"] += 5
    expected = d.rng.random()
    d.restore(snap)
    assert d.counts == {"posted": 1} and d.rng.random() == expected


async def test_the_reply_posted_line_reads_back_as_the_ledgers_mention(world: World) -> None:
    """A ``reply_posted`` log line, through JSON, reads back (``mention_from_log``) into the
    Mention the ledger recorded, on every field the line carries; it carries exactly those."""
    import dataclasses

    from structlog.testing import capture_logs

    world.model.script({"reply": "🍞 " * 200 + "@baker.test", "mention": "baker.test"})
    with capture_logs() as logs:
        assert await world.dispatcher.handle(*_post()) == "posted"
    (line,) = [e for e in logs if e["event"] == "reply_posted"]
    carried = {name for name, _ in MENTION_LOG_FIELDS}
    extras = {"mention_id", "candidates", "repaired", "window_s"}
    assert set(line) - {"event", "log_level"} == carried | extras
    read = mention_from_log(orjson.loads(orjson.dumps(line)))
    (recorded,) = await world.ledger.mentions()
    assert read is not None and read.id == recorded.id > 0
    assert read.extra == recorded.extra and "trimmed" in read.extra["repaired"]  # type: ignore[operator]
    for f in dataclasses.fields(recorded):
        if f.name in carried:
            assert getattr(read, f.name) == getattr(recorded, f.name), f.name
    assert line["candidates"] == len(recorded.candidates) == 2
