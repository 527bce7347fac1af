"""Why posts were not answered: a run summary's reasons, each with a one-line hint.

A run that answers nothing must say why. ``why_unanswered`` reads a run summary
(``RunSummary.as_dict()``) and returns, most frequent first, every reason a new post went
unanswered, from the selector (``no_consent``, ``author_cooldown``...) and from dispatch
(``no_candidates``, ``no_bot_for_language``, ``model_unavailable``...), each with a hint that
names the setting or the log line to look at. ``bot_notes`` adds the bots left out at start and
the posts re-drawn away from paused bots. ``unanswered_lines`` renders both as the lines
``botsky run`` and ``botsky simulate`` print at the end of a run on a terminal.

Pure functions of the summary and of the audience mode (the hint for ``no_consent`` depends on
it); the CLI reads the setting and passes it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HINTS", "Unanswered", "bot_notes", "unanswered_lines", "why_unanswered"]

# Outcomes that are not reasons for an unanswered post: the work went on, or the post is one
# nobody expects answered (the bots' own replies).
# A create whose outcome was unknown is not a final reason: its claim is settled later (the
# settle loop's settled_* counts), and what is still waiting at the end is ``unsettled``.
_NOT_REASONS = frozenset(
    {
        "queued",
        "posted",
        "by_bot",
        "not_a_new_post",
        "post_unknown",
        "settled_posted",
        "settled_post_unknown",
    }
)

# reason → hint. "{audience}" is filled with the audience mode's own hint.
HINTS: dict[str, str] = {
    # the selector: which new posts are worth a reply
    "no_consent": "{audience}",
    "inactive_account": (
        "the author's account is deactivated, suspended or taken down (an #account event); "
        "answered again once an #account event reactivates it"
    ),
    "no_text": "the post has no text (an image or an embed only)",
    "is_reply": "a reply in a thread, and dispatch.reply_to_replies is false",
    "reply_to_bot": "a reply to one of the bots; dispatch.reply_to_bots: true answers those",
    "language": "the post's language is not in dispatch.languages",
    "author_cooldown": "the author was answered less than dispatch.author_cooldown_s ago",
    "sampled_out": "dispatch.sample_rate is below 1: that share is skipped at random",
    "other_replica": "another replica owns this post's partition (scale.partitions)",
    # dispatch: what happened to a queued post
    "no_candidates": (
        "nobody online could be mentioned: a candidate needs a known handle (#identity events, "
        "or identity.resolve: true), consent (audience), no recent mention "
        "(recommend.cooldown_s) and a word in common with the post"
    ),
    "no_bot_for_language": (
        "no bot speaks the post's language: add it to a bot's languages in the bots file"
    ),
    "no_bot_available": (
        "every bot that speaks the language was paused (see the bot_paused lines)"
    ),
    "dropped_queue_full": "the queue was full: raise dispatch.workers or dispatch.queue_size",
    "paused": "the kill switch was on (posting.kill_switch_file or BOTSKY_KILL_SWITCH)",
    "already_claimed": "answered before (a replay or a restart saw it again): one reply per post",
    "model_unavailable": (
        "the model did not answer (no server, 429/5xx, timeout after retries): see the "
        "model_unavailable and bot_paused lines"
    ),
    "model_access_denied": "the vendor refused the API key, or the account has no quota left",
    "model_error": "the model call failed for good (a bad request, a refusal, a broken answer)",
    "post_failed": (
        "the PDS refused the reply (a 4xx such as InvalidRequest for a deleted parent): the "
        "claim records the error (post_failed lines)"
    ),
    # posting: limits, and creates whose outcome was unknown
    "budget_spent": (
        "the bot account's write budget (posting.points_per_hour / points_per_day x "
        "budget_headroom, shared by restarts and replicas) stayed spent past posting.max_wait_s"
    ),
    "posts_per_minute": "posting.posts_per_minute (all bots) stayed reached past max_wait_s",
    "rate_limited": (
        "the PDS answered 429 for this account: no write before its ratelimit-reset "
        "(pds_rate_limited lines)"
    ),
    "unsettled": (
        "replies whose create had an unknown outcome (timeout, 5xx, lost connection) and that "
        "are not settled yet: their claims wait in the ledger and are settled after the "
        "restart, found in the repo or posted under the same record key (post_unsettled lines)"
    ),
    "gave_up": (
        "posting.retry_attempts creates had an unknown outcome, then the PDS said the reply is "
        "not there"
    ),
    # consent asked again right before the post (a model call takes seconds)
    "author_opted_out": "the author opted out while the model was writing: the reply was dropped",
    "mention_opted_out": (
        "the user the reply mentions opted out while the model was writing: the reply was dropped"
    ),
    "author_inactive": (
        "the author's account was deactivated or taken down while the model was writing"
    ),
    "mention_inactive": (
        "the mentioned user's account was deactivated or taken down while the model was writing"
    ),
    "paused_before_post": "the kill switch was turned on while the model was writing",
    "error": "a bug: see the dispatch_failed lines and their tracebacks",
}

_AUDIENCE = {
    "opt_in": (
        "audience.mode is opt_in: add users to audience.allow_list or let them follow or "
        "mention a bot"
    ),
    "open": "the author opted out, or reached audience.replies_per_author_per_day",
}
_REJECTED = "the model's answer broke a rule ({rule}) and was not posted (draft_rejected lines)"
_UNKNOWN = "see the log lines for this reason"


@dataclass(frozen=True, slots=True)
class Unanswered:
    """``count`` posts were not answered for ``reason`` at ``stage`` (selector or dispatch)."""

    stage: str
    reason: str
    count: int
    hint: str


def _hint(reason: str, audience_mode: str) -> str:
    if reason.startswith("settled_"):
        # What became of a reply whose create had an unknown outcome, when it was settled.
        return "settled later: " + _hint(reason.removeprefix("settled_"), audience_mode)
    if reason.startswith("rejected_"):
        return _REJECTED.format(rule=reason.removeprefix("rejected_"))
    template = HINTS.get(reason)
    if template is None:
        return _UNKNOWN
    return template.format(audience=_AUDIENCE.get(audience_mode, _AUDIENCE["opt_in"]))


def why_unanswered(
    summary: Mapping[str, Any], *, audience_mode: str = "opt_in"
) -> list[Unanswered]:
    """Every reason a post went unanswered in ``summary`` (``RunSummary.as_dict()``), most
    frequent first (ties by stage, then name)."""
    found = []
    for stage in ("selector", "dispatch"):
        counts: Mapping[str, int] = summary.get(stage) or {}
        for reason, count in counts.items():
            if reason not in _NOT_REASONS and count > 0:
                found.append(Unanswered(stage, reason, count, _hint(reason, audience_mode)))
    found.sort(key=lambda u: (-u.count, u.stage != "selector", u.reason))
    return found


def bot_notes(summary: Mapping[str, Any]) -> list[str]:
    """One line per bot left out at start and per bot whose posts were re-drawn."""
    lines = []
    left_out: Mapping[str, str] = summary.get("left_out") or {}
    for bot, why in sorted(left_out.items()):
        lines.append(f"bot {bot} was left out: {why}")
    redrawn: Mapping[str, int] = summary.get("redrawn") or {}
    for bot, n in sorted(redrawn.items()):
        posts = "post" if n == 1 else "posts"
        lines.append(
            f"bot {bot} was paused: {n} {posts} drawn for it went to other bots "
            "(bot_redrawn lines; mentions keep extra.redrawn_from)"
        )
    return lines


def unanswered_lines(summary: Mapping[str, Any], *, audience_mode: str = "opt_in") -> list[str]:
    """What a terminal shows at the end of a run: why posts were not answered (one line per
    reason: count, reason, hint) and the notes on bots; nothing when there is nothing to say."""
    reasons = why_unanswered(summary, audience_mode=audience_mode)
    lines = []
    if reasons:
        width = max(len(str(u.count)) for u in reasons)
        name = max(len(u.reason) for u in reasons)
        lines.append("why posts were not answered:")
        lines += [f"  {u.count:>{width}}  {u.reason:<{name}}  {u.hint}" for u in reasons]
    notes = bot_notes(summary)
    if notes:
        lines.append("bots:")
        lines += [f"  {note}" for note in notes]
    return lines
