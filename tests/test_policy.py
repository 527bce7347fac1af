"""Audience policy: opt-in by follow, mention or list; opt-out by block."""

from __future__ import annotations

from pathlib import Path

import pytest

from botsky.events import PROFILE, Event
from botsky.policy import (
    FOLLOWED,
    MENTIONED,
    AccountStatus,
    AudiencePolicy,
    KillSwitch,
    OptIn,
    OptOut,
    account_status,
)
from botsky.testing import FakeClock, block, follow, post
from tests.support import T0

BOT = "did:plc:bot"


def test_opt_in_mode_answers_nobody_by_default() -> None:
    """Strangers are neither answered nor mentioned."""
    pol = AudiencePolicy(bot_dids=[BOT])
    assert not pol.may_answer("did:plc:u") and not pol.may_mention("did:plc:u")


def test_following_a_bot_or_mentioning_it_opts_in() -> None:
    """A follow of a bot or a post that mentions a bot opts the user in."""
    pol = AudiencePolicy(bot_dids=[BOT], allow_list=["did:plc:listed"])
    pol.observe(follow("did:plc:f", T0, BOT))
    pol.observe(post("did:plc:m", T0, "hey @bot.test", mentions=[(BOT, "bot.test")]))
    pol.observe(follow("did:plc:other", T0, "did:plc:someone"))
    assert pol.may_answer("did:plc:f") and pol.may_mention("did:plc:m")
    assert pol.may_answer("did:plc:listed")
    assert not pol.may_answer("did:plc:other")


def test_opt_ins_are_reported_once_with_their_reason_and_count_from_their_time() -> None:
    """A new opt-in is returned (for the ledger) once; a post made before its author's opt-in
    is not answered even when read after it (a restart reads posts again), one made at or
    after it is; opt-ins loaded from the ledger keep their time; the allow list has none."""
    pol = AudiencePolicy(
        bot_dids=[BOT], allow_list=["did:plc:listed"], opted_in={"did:plc:kept": T0 + 50}
    )
    assert pol.observe(follow("did:plc:f", T0 + 10, BOT)) == OptIn("did:plc:f", FOLLOWED)
    assert pol.observe(follow("did:plc:f", T0 + 10, BOT)) is None
    mention = post("did:plc:m", T0 + 20, "hi @bot.test", mentions=[(BOT, "bot.test")])
    assert pol.observe(mention) == OptIn("did:plc:m", MENTIONED)
    assert not pol.may_answer("did:plc:f", T0 + 9) and pol.may_answer("did:plc:f", T0 + 10)
    assert pol.may_answer("did:plc:m", T0 + 20)  # the post that mentions the bot itself
    assert not pol.may_answer("did:plc:kept", T0) and pol.may_answer("did:plc:kept", T0 + 50)
    assert pol.may_answer("did:plc:listed", 0)
    assert pol.may_mention("did:plc:f")  # mentioning is decided now: consent is given


def test_blocking_a_bot_opts_out_for_good() -> None:
    """A block wins over any opt-in, is reported once, and holds in open mode too."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT], allow_list=["did:plc:u"])
    assert pol.observe(block("did:plc:u", T0, BOT)) == OptOut("did:plc:u", "blocked a bot")
    assert pol.observe(block("did:plc:u", T0 + 1, BOT)) is None
    assert not pol.may_answer("did:plc:u") and not pol.may_mention("did:plc:u")
    assert pol.observe(block("did:plc:v", T0, "did:plc:notabot")) is None


def test_open_mode_answers_anyone_but_bots_and_opted_out() -> None:
    """Open audiences still exclude bots and users loaded as opted out."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT], opted_out=["did:plc:gone"])
    assert pol.may_answer("did:plc:u")
    assert not pol.may_mention(BOT) and not pol.may_mention("did:plc:gone")


def test_allow_list_accepts_dids_and_handles() -> None:
    """Handles on the allow list are matched through the identity lookup."""
    handles = {"did:plc:h": "alice.test"}
    pol = AudiencePolicy(allow_list=["@Alice.test", "did:plc:d"], handle_of=handles.get)
    assert pol.may_answer("did:plc:h") and pol.may_answer("did:plc:d")
    assert not pol.may_answer("did:plc:x")


# -- account status (#account events) ---------------------------------------------------------


def _account(did: str, time_us: int, active: bool | None, status: str | None = None) -> Event:
    return Event(did=did, time_us=time_us, kind="account", active=active, status=status)


@pytest.mark.parametrize(
    ("active", "status", "expected"),
    [
        (False, "deactivated", AccountStatus("did:plc:u", False, "deactivated", T0)),
        (False, "takendown", AccountStatus("did:plc:u", False, "takendown", T0)),
        (False, "Suspended", AccountStatus("did:plc:u", False, "suspended", T0)),
        (False, "deleted", AccountStatus("did:plc:u", False, "deleted", T0)),
        (False, "desynchronized", AccountStatus("did:plc:u", False, "desynchronized", T0)),
        (False, None, AccountStatus("did:plc:u", False, "inactive", T0)),
        (None, "takendown", AccountStatus("did:plc:u", False, "takendown", T0)),
        (True, None, AccountStatus("did:plc:u", True, "active", T0)),
        (None, None, None),
        (None, "throttled", None),
    ],
)
def test_account_status_reads_an_account_event(
    active: bool | None, status: str | None, expected: AccountStatus | None
) -> None:
    """active=false is inactive whatever the status; a known inactive status counts without
    ``active``; active=true is active; an event saying neither is no status."""
    assert account_status(_account("did:plc:u", T0, active, status)) == expected


def test_account_status_ignores_other_events() -> None:
    """Commits and identity events say nothing about an account's status."""
    assert account_status(post("did:plc:u", T0, "hi")) is None
    assert account_status(Event(did="did:plc:u", time_us=T0, kind="identity")) is None


def test_an_inactive_account_is_neither_answered_nor_mentioned_until_reactivated() -> None:
    """Deactivation removes consent in any mode (an allow list included); reactivation restores
    it; each change is reported once."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT], allow_list=["did:plc:u"])
    off = pol.observe_account(_account("did:plc:u", T0, False, "deactivated"))
    assert off == AccountStatus("did:plc:u", False, "deactivated", T0)
    assert not pol.is_active("did:plc:u")
    assert not pol.may_answer("did:plc:u") and not pol.may_mention("did:plc:u")
    assert pol.observe_account(_account("did:plc:u", T0 + 1, False, "deactivated")) is None
    taken = pol.observe_account(_account("did:plc:u", T0 + 2, False, "takendown"))
    assert taken == AccountStatus("did:plc:u", False, "takendown", T0 + 2)
    on = pol.observe_account(_account("did:plc:u", T0 + 3, True))
    assert on == AccountStatus("did:plc:u", True, "active", T0 + 3)
    assert pol.is_active("did:plc:u") and pol.may_answer("did:plc:u")
    # Creating an account (active from the start) changes nothing.
    assert pol.observe_account(_account("did:plc:new", T0, True)) is None


def test_an_older_reactivation_does_not_undo_a_newer_deactivation() -> None:
    """A rewound stream replays old events: a reactivation older than the known deactivation
    is ignored, so a status loaded from the ledger holds."""
    loaded = AccountStatus("did:plc:u", False, "suspended", T0 + 10)
    pol = AudiencePolicy(mode="open", inactive=[loaded])
    assert not pol.may_mention("did:plc:u")
    assert pol.observe_account(_account("did:plc:u", T0, True)) is None
    assert pol.observe_account(_account("did:plc:u", T0 + 5, False, "deactivated")) is None
    assert not pol.is_active("did:plc:u")


# -- opt-outs beyond blocks -------------------------------------------------------------------

BOT_POST = post(BOT, T0, "hello, @carol.test might know", rkey="3botpost")
OTHER_POST = post("did:plc:human", T0, "hello", rkey="3humanpost")
STOP = ["stop", "unsubscribe", "opt out", "opt-out", "go away"]


def _profile(did: str, description: object, operation: str = "create") -> Event:
    record = {"$type": PROFILE, "displayName": "X", "description": description}
    return Event(
        did=did,
        time_us=T0,
        kind="commit",
        cursor=T0,
        operation=operation,
        collection=PROFILE,
        rkey="self",
        cid="bafyprofile",
        record=record,
    )


@pytest.mark.parametrize(
    ("text", "opts_out"),
    [
        ("please STOP", True),
        ("stop.", True),
        ("Go   away bot", True),
        ("I want to opt-out", True),
        ("let me Opt Out now", True),
        ("unsubscribe", True),
        ("don't stop me now", True),
        ("unstoppable", False),
        ("bus stops here", False),
        ("go, away", False),
        ("great reply!", False),
    ],
)
def test_stop_phrase_in_a_reply_to_a_bot_opts_out(text: str, opts_out: bool) -> None:
    """A reply to a bot opts out when it contains a stop phrase as whole words, any case."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT], stop_phrases=STOP)
    got = pol.observe(post("did:plc:u", T0 + 1, text, reply_to=BOT_POST))
    assert got == (OptOut("did:plc:u", "asked a bot to stop") if opts_out else None)
    assert pol.may_answer("did:plc:u") is not opts_out


@pytest.mark.parametrize(
    "event",
    [
        post("did:plc:u", T0, "stop"),
        post("did:plc:u", T0, "stop", reply_to=OTHER_POST),
        post("did:plc:u", T0, "stop it", reply_to=post("did:plc:h", T0, "x", reply_to=BOT_POST)),
    ],
    ids=["top-level", "reply-to-human", "reply-in-bot-thread-to-human"],
)
def test_stop_phrase_elsewhere_does_not_opt_out(event: Event) -> None:
    """Only a direct reply to a bot's post counts as asking the bots to stop."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT], stop_phrases=STOP)
    assert pol.observe(event) is None and pol.may_answer("did:plc:u")


def test_no_stop_phrases_configured_means_no_stop_opt_out() -> None:
    """An empty stop-phrase list disables this kind of opt-out."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT], stop_phrases=[])
    assert pol.observe(post("did:plc:u", T0, "stop", reply_to=BOT_POST)) is None


@pytest.mark.parametrize(
    ("description", "operation", "opts_out"),
    [
        ("I post about birds #nobot", "create", True),
        ("#NoBot please", "update", True),
        ("#nobot", "update", True),
        ("I like #nobots", "create", False),
        ("nobot", "create", False),
        ("no bots please", "update", False),
        (None, "create", False),
        (42, "update", False),
        ("#nobot", "delete", False),
    ],
)
def test_nobot_in_profile_description_opts_out(
    description: object, operation: str, opts_out: bool
) -> None:
    """``#nobot`` as a whole tag in a created or updated profile opts the user out."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT])
    got = pol.observe(_profile("did:plc:u", description, operation))
    assert got == (OptOut("did:plc:u", "nobot in profile") if opts_out else None)


def test_an_opt_out_is_reported_once_and_beats_a_later_follow() -> None:
    """The same user opting out again returns None; following a bot afterwards does not opt in."""
    pol = AudiencePolicy(bot_dids=[BOT], stop_phrases=STOP)
    assert pol.observe(_profile("did:plc:u", "#nobot")) == OptOut("did:plc:u", "nobot in profile")
    assert pol.observe(post("did:plc:u", T0, "stop", reply_to=BOT_POST)) is None
    pol.observe(follow("did:plc:u", T0, BOT))
    assert not pol.may_answer("did:plc:u") and not pol.may_mention("did:plc:u")


def test_a_bot_never_opts_itself_out() -> None:
    """A bot's own profile or posts are not opt-outs (bots are excluded anyway)."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT], stop_phrases=STOP)
    assert pol.observe(_profile(BOT, "#nobot")) is None
    assert pol.observe(post(BOT, T0, "stop", reply_to=BOT_POST)) is None


# -- caps --------------------------------------------------------------------------------------

HOUR = 3_600_000_000


def test_mentions_per_target_cap_holds_for_a_day_of_stream_time() -> None:
    """A target mentioned ``cap`` times in 24 h is not offered again until the window passes."""
    clock = FakeClock(T0)
    pol = AudiencePolicy(mode="open", mentions_per_target_per_day=2, clock=clock)
    pol.note_reply("did:plc:a1", "did:plc:t", T0)
    assert pol.may_mention("did:plc:t")
    clock.now = T0 + HOUR
    pol.note_reply("did:plc:a2", "did:plc:t", clock())
    assert not pol.may_mention("did:plc:t") and pol.may_mention("did:plc:other")
    clock.now = T0 + 24 * HOUR  # the first mention leaves the window
    assert pol.may_mention("did:plc:t")
    clock.now = T0 + 25 * HOUR
    assert pol.may_mention("did:plc:t") and not pol._mentions


def test_replies_per_author_cap() -> None:
    """An author answered ``cap`` times today is not answered again; others still are."""
    pol = AudiencePolicy(mode="open", replies_per_author_per_day=1, clock=lambda: T0 + 1)
    pol.note_reply("did:plc:a", "did:plc:t", T0)
    assert not pol.may_answer("did:plc:a") and pol.may_answer("did:plc:b")


@pytest.mark.parametrize(
    ("cap", "allowed"), [(None, True), (0, False), (1, True)], ids=["none", "zero", "one"]
)
def test_cap_none_is_unlimited_and_zero_allows_nothing(cap: int | None, allowed: bool) -> None:
    """Without a cap anyone passes; a cap of 0 lets nobody be mentioned."""
    pol = AudiencePolicy(mode="open", mentions_per_target_per_day=cap, clock=lambda: T0)
    assert pol.may_mention("did:plc:t") is allowed


def test_caps_without_a_clock_use_the_newest_noted_time() -> None:
    """With no stream clock injected, the latest ``note_reply`` time is "now"."""
    pol = AudiencePolicy(mode="open", mentions_per_target_per_day=1)
    pol.note_reply("did:plc:a", "did:plc:t", T0)
    assert not pol.may_mention("did:plc:t")
    pol.note_reply("did:plc:a", "did:plc:x", T0 + 24 * HOUR)
    assert pol.may_mention("did:plc:t")


def test_caps_do_not_override_consent() -> None:
    """Being under the cap never makes a stranger answerable in opt-in mode."""
    pol = AudiencePolicy(mentions_per_target_per_day=5, clock=lambda: T0)
    assert not pol.may_mention("did:plc:stranger")


# -- kill switch -------------------------------------------------------------------------------


def test_kill_switch_file_is_checked_at_most_every_half_second(tmp_path: Path) -> None:
    """Creating the file pauses posting within 0.5 s of the clock; removing it resumes."""
    clock = FakeClock(100.0)
    flag = tmp_path / "STOP"
    switch = KillSwitch(file=flag, environ={}, clock=clock)
    pol = AudiencePolicy(kill_switch=switch)
    assert not pol.posting_paused()
    flag.touch()
    clock.advance(0.2)
    assert not pol.posting_paused()  # cached reading
    clock.advance(0.3)
    assert pol.posting_paused()
    flag.unlink()
    clock.advance(0.5)
    assert not pol.posting_paused()


@pytest.mark.parametrize(("value", "paused"), [("1", True), ("", False), (None, False)])
def test_kill_switch_env_var_must_be_non_empty(value: str | None, paused: bool) -> None:
    """The env var pauses posting only when set to a non-empty value."""
    environ = {} if value is None else {"BOTSKY_KILL_SWITCH": value}
    switch = KillSwitch(env="BOTSKY_KILL_SWITCH", environ=environ, clock=lambda: 0.0)
    assert switch() is paused


def test_no_kill_switch_never_pauses() -> None:
    """A policy built without a kill switch never pauses posting."""
    assert not AudiencePolicy().posting_paused()


def test_a_pickled_snapshot_keeps_consent_and_the_daily_caps() -> None:
    """Opt-ins, opt-outs, inactive accounts and the caps' counts survive ``snapshot``/``restore``
    through pickle; the configuration stays the new policy's."""
    import pickle

    def make() -> AudiencePolicy:
        return AudiencePolicy(bot_dids=[BOT], mentions_per_target_per_day=1,
                              replies_per_author_per_day=2)  # fmt: skip

    p = make()
    p.observe(follow("did:plc:fan", T0, BOT))
    p.observe(block("did:plc:foe", T0, BOT))
    p.note_reply("did:plc:fan", "did:plc:target", T0)
    p.observe_account(_account("did:plc:gone", T0, False, "takendown"))
    fresh = make()
    fresh.restore(pickle.loads(pickle.dumps(p.snapshot())))
    assert fresh.snapshot() == p.snapshot()
    assert fresh.may_answer("did:plc:fan") and not fresh.may_answer("did:plc:foe")
    assert not fresh.may_mention("did:plc:target")  # the cap of 1 is used
    assert not fresh.is_active("did:plc:gone")
    fresh.note_reply("did:plc:fan", "did:plc:other", T0 + 1)
    assert not fresh.may_answer("did:plc:fan")  # the second reply of the day
    assert p.may_answer("did:plc:fan")  # the original is not affected by the copy
