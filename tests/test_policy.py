"""Audience policy: opt-in by follow, mention or list; opt-out by block."""

from __future__ import annotations

from botsky.policy import AudiencePolicy
from botsky.testing import block, follow, post
from tests.conftest import T0

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


def test_blocking_a_bot_opts_out_for_good() -> None:
    """A block wins over any opt-in, is reported once, and holds in open mode too."""
    pol = AudiencePolicy(mode="open", bot_dids=[BOT], allow_list=["did:plc:u"])
    assert pol.observe(block("did:plc:u", T0, BOT)) == "did:plc:u"
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
