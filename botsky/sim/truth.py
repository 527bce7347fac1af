"""The world's truth per arm, beside the pipeline's estimates: the table and ``truth.json``.

The world keeps sums per bot (``world.Truth``); an arm is any grouping of bots the scoreboard
uses (bot, model, persona, picker), so sums are added over the arm's bots and divided by its
mentions. What each figure is (the same words go into ``truth.json``'s ``definitions`` and the
printed legend):

- ``true_rate``: the mean, over the arm's mentions, of the probability the world used when the
  mentioned user decided whether to answer (0 when they never decided within the outcome
  window). It is what the arm's success rate estimates: its expectation is the arm's expected
  success rate (``world`` module docstring).
- ``upper_bound``: the mean answer probability of the mentioned users had they read the mention
  at once, without fatigue and in the best mood (ties with the author and the bot counted). An
  upper bound on ``true_rate``, not an estimate of anything.
- ``oracle``: the mean, over the same posts, of the highest upper bound among the users online
  when the bot chose (the author excepted): what the best possible pick would have had. No
  picker's ``upper_bound`` exceeds it.
- ``likes_per_reply``, ``author_replies_per_reply``, ``reposts_per_reply``,
  ``engagement_per_reply``: the true expected numbers per bot reply of likes of the reply,
  replies to it by the post's author, reposts of it (made by readers of botsky's feed), and
  their sum (the simulated network has no quotes), decided within the outcome window.
  These have no upper bound or oracle: they would need the readers' decisions about replies
  that were never written.

**The feed** (``truth.json``'s ``feed`` key, when simulated users subscribe to botsky's feed;
``botsky.sim.feed`` says how the world counts it), per arm over its *seen* impressions:

- ``impressions``: exposures the app reported seen (``served``: all that were served);
- ``true_engaged_rate``: the true expected share of seen impressions with at least one like,
  repost or reply joined to them: what the feed's ``engaged_rate`` (with its Wilson interval)
  estimates;
- ``true_engagement_per_impression``: the true expected likes + reposts + replies per seen
  impression (each at most once per impression): what ``engagement_per_seen`` estimates;
- ``true_likes_per_impression``, ``true_reposts_per_impression``,
  ``true_replies_per_impression``: the same per kind (``likes_seen / seen``...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from botsky.sim.feed import FeedTruth
from botsky.sim.world import Truth, World

__all__ = [
    "DEFINITIONS",
    "FEED_DEFINITIONS",
    "FORMAT",
    "GROUPINGS",
    "Arm",
    "ArmTruth",
    "FeedArmTruth",
    "LiveTruth",
    "arm_truths",
    "feed_arm_truths",
    "truth_document",
    "write_truth",
]

FORMAT: Final = 1
GROUPINGS: Final = ("bot", "model", "persona", "picker")
DEFINITIONS: Final = {
    "true_rate": (
        "mean over the arm's mentions of the probability the world used when the mentioned "
        "user decided whether to answer (0 if they never decided within the outcome window): "
        "what the arm's success rate estimates"
    ),
    "upper_bound": (
        "mean answer probability of the mentioned users had they read the mention at once, "
        "without fatigue and in the best mood: an upper bound on true_rate"
    ),
    "oracle": (
        "mean over the same posts of the highest upper bound among the users online when the "
        "bot chose (author excepted): the best possible pick's upper bound"
    ),
    "likes_per_reply": "true expected likes of a bot reply within the outcome window",
    "author_replies_per_reply": (
        "true expected replies to a bot reply by the post's author within the outcome window"
    ),
    "reposts_per_reply": "true expected reposts of a bot reply within the outcome window",
    "engagement_per_reply": (
        "likes_per_reply + reposts_per_reply + author_replies_per_reply (no quotes)"
    ),
}
FEED_DEFINITIONS: Final = {
    "served": "exposures of the arm's replies on pages of botsky's feed",
    "impressions": "served exposures the subscriber's app reported seen (interactionSeen)",
    "true_engaged_rate": (
        "true expected share of seen impressions with at least one like, repost or reply of "
        "the viewer joined to them (attribution as the feed joins it): what engaged_rate "
        "estimates"
    ),
    "true_engagement_per_impression": (
        "true expected likes + reposts + replies per seen impression, each at most once per "
        "impression (no quotes in the world): what engagement_per_seen estimates"
    ),
    "true_likes_per_impression": "true expected likes per seen impression (likes_seen / seen)",
    "true_reposts_per_impression": "true expected reposts per seen impression",
    "true_replies_per_impression": "true expected replies per seen impression",
}


@dataclass(frozen=True, slots=True)
class Arm:
    """What a bot is, in each grouping the scoreboard uses (as its mentions record it)."""

    bot: str
    model: str
    persona: str
    picker: str


@dataclass(frozen=True, slots=True)
class ArmTruth:
    """One arm's truth (see the module docstring); None where it has no mentions."""

    by: str
    group: str
    mentions: int
    true_rate: float | None
    upper_bound: float | None
    oracle: float | None
    likes_per_reply: float | None
    author_replies_per_reply: float | None
    engagement_per_reply: float | None
    reposts_per_reply: float | None = None


@dataclass(frozen=True, slots=True)
class FeedArmTruth:
    """One arm's truth on botsky's feed (see the module docstring); None without impressions."""

    by: str
    group: str
    served: int
    impressions: int
    true_engaged_rate: float | None
    true_engagement_per_impression: float | None
    true_likes_per_impression: float | None
    true_reposts_per_impression: float | None
    true_replies_per_impression: float | None


_Sums = TypeVar("_Sums", Truth, FeedTruth)


def _group_sums(
    truth: Mapping[str, _Sums], arms: Sequence[Arm], by: str, new: Callable[[], _Sums]
) -> dict[str, _Sums]:
    """Per-bot sums added up per group of ``by`` (every field of the dataclass is a sum)."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; expected one of {', '.join(GROUPINGS)}")
    sums: dict[str, _Sums] = {}
    for arm in arms:
        t = truth.get(arm.bot)
        if t is None:
            continue
        s = sums.setdefault(getattr(arm, by), new())
        for f in fields(s):
            setattr(s, f.name, getattr(s, f.name) + getattr(t, f.name))
    return sums


def arm_truths(truth: Mapping[str, Truth], arms: Sequence[Arm], by: str) -> list[ArmTruth]:
    """The truth of every arm of grouping ``by`` that made mentions, sorted by group."""
    sums = _group_sums(truth, arms, by, Truth)
    out = []
    for group, s in sorted(sums.items()):
        n = s.mentions

        def mean(x: float, n: int = n) -> float | None:
            return x / n if n else None

        out.append(
            ArmTruth(
                by=by,
                group=group,
                mentions=n,
                true_rate=mean(s.expected),
                upper_bound=mean(s.upper),
                oracle=mean(s.oracle),
                likes_per_reply=mean(s.likes),
                author_replies_per_reply=mean(s.author_replies),
                engagement_per_reply=mean(s.likes + s.author_replies + s.reposts),
                reposts_per_reply=mean(s.reposts),
            )
        )
    return out


def feed_arm_truths(
    truth: Mapping[str, FeedTruth], arms: Sequence[Arm], by: str
) -> list[FeedArmTruth]:
    """The feed truth of every arm of grouping ``by`` that was served, sorted by group."""
    sums = _group_sums(truth, arms, by, FeedTruth)
    out = []
    for group, s in sorted(sums.items()):
        n = s.seen

        def mean(x: float, n: int = n) -> float | None:
            return x / n if n else None

        out.append(
            FeedArmTruth(
                by=by,
                group=group,
                served=s.served,
                impressions=n,
                true_engaged_rate=mean(s.engaged),
                true_engagement_per_impression=mean(s.likes + s.reposts + s.replies),
                true_likes_per_impression=mean(s.likes),
                true_reposts_per_impression=mean(s.reposts),
                true_replies_per_impression=mean(s.replies),
            )
        )
    return out


def truth_document(
    truth: Mapping[str, Truth],
    arms: Sequence[Arm],
    about: Mapping[str, Any],
    feed: Mapping[str, FeedTruth] | None = None,
    feed_about: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``truth.json``'s content: ``about`` (seed, days, window...), definitions, every arm;
    with ``feed`` (the world's feed truth per bot), a ``feed`` key: ``feed_about`` (arm_by,
    subscribers, page size...), its definitions and every arm of every grouping."""
    groups = {by: [_row(a) for a in arm_truths(truth, arms, by)] for by in GROUPINGS}
    total = Truth()
    for t in truth.values():
        total.mentions += t.mentions
        total.oracle += t.oracle
    extra: dict[str, Any] = {}
    if feed is not None:
        extra["feed"] = {
            **(feed_about or {}),
            "definitions": FEED_DEFINITIONS,
            "arms": {by: [_row(a) for a in feed_arm_truths(feed, arms, by)] for by in GROUPINGS},
        }
    return {
        **extra,
        "format": FORMAT,
        **about,
        "definitions": DEFINITIONS,
        "arms": groups,
        "all_mentions": {
            "mentions": total.mentions,
            "oracle": total.oracle / total.mentions if total.mentions else None,
        },
    }


@dataclass(frozen=True)
class LiveTruth:
    """The world's truth for the web page of a running simulation (``App.simulation``).

    ``truth(as_of_us)`` is, per grouping, each arm's truth over the mentions *decided* at
    ``as_of_us`` (window closed: ``World.decided_truth``), the same mentions the page's
    estimates are over, so a reading mid-run is set beside the truth so far; ``mentions`` is
    then the number of decided mentions. At the end of a run it is ``truth.json``'s.
    """

    world: World
    arms: Sequence[Arm]

    @property
    def name(self) -> str:
        return self.world.name

    @property
    def definitions(self) -> Mapping[str, str]:
        return DEFINITIONS

    def truth(self, as_of_us: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """Rows like ``truth.json``'s ``arms``, per grouping, over decided mentions only."""
        decided = self.world.decided_truth(as_of_us)
        return {by: [_row(a) for a in arm_truths(decided, self.arms, by)] for by in GROUPINGS}


def _row(a: ArmTruth | FeedArmTruth) -> dict[str, Any]:
    row = asdict(a)
    del row["by"]
    return row


def write_truth(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``truth.json`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)
