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
- ``likes_per_reply``, ``author_replies_per_reply``, ``engagement_per_reply``: the true
  expected numbers per bot reply of likes of the reply, replies to it by the post's author, and
  both (the simulated network has no reposts or quotes), decided within the outcome window.
  These have no upper bound or oracle: they would need the readers' decisions about replies
  that were never written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from botsky.sim.world import Truth, World

__all__ = [
    "DEFINITIONS",
    "FORMAT",
    "GROUPINGS",
    "Arm",
    "ArmTruth",
    "LiveTruth",
    "arm_truths",
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
    "engagement_per_reply": "likes_per_reply + author_replies_per_reply (no reposts or quotes)",
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


def arm_truths(truth: Mapping[str, Truth], arms: Sequence[Arm], by: str) -> list[ArmTruth]:
    """The truth of every arm of grouping ``by`` that made mentions, sorted by group."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; expected one of {', '.join(GROUPINGS)}")
    sums: dict[str, Truth] = {}
    for arm in arms:
        t = truth.get(arm.bot)
        if t is None:
            continue
        s = sums.setdefault(getattr(arm, by), Truth())
        s.mentions += t.mentions
        s.expected += t.expected
        s.upper += t.upper
        s.oracle += t.oracle
        s.likes += t.likes
        s.author_replies += t.author_replies
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
                engagement_per_reply=mean(s.likes + s.author_replies),
            )
        )
    return out


def truth_document(
    truth: Mapping[str, Truth], arms: Sequence[Arm], about: Mapping[str, Any]
) -> dict[str, Any]:
    """``truth.json``'s content: ``about`` (seed, days, window...), definitions, every arm."""
    groups = {by: [_row(a) for a in arm_truths(truth, arms, by)] for by in GROUPINGS}
    total = Truth()
    for t in truth.values():
        total.mentions += t.mentions
        total.oracle += t.oracle
    return {
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


def _row(a: ArmTruth) -> dict[str, Any]:
    row = asdict(a)
    del row["by"]
    return row


def write_truth(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``truth.json`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)
