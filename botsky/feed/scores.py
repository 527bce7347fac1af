"""Engagement per seen impression, per arm: the feed's influencer figures (pure functions).

Over the exposure rows of the ledger (``FeedLedger.feed_arm_counts``), per arm:

- ``served``: items put on a page (``getFeedSkeleton`` answered with them);
- ``seen``: served items the client reported as seen (``interactionSeen`` through
  ``sendInteractions``, or a like/repost/reply/quote reported there, which implies it).
  Served is not seen: a page of 30 items is rarely scrolled to the end, and clients that do not
  send interactions report nothing, so ``seen`` is the denominator of the headline figure;
- ``engaged_rate``: the share of *seen* impressions after which the viewer liked, reposted,
  replied to or quoted the reply (each exposure counts once however many of those happened),
  with a Wilson 95% interval. Engagement is joined to the viewer's latest exposure of the item
  served within ``attribution_window_s`` before it (from the firehose or reported by the
  client), so one like is attributed to one impression;
- ``engagement_per_seen``: likes + reposts + replies + quotes per seen impression (each kind
  at most once per impression), the per-impression counterpart of the leaderboard's
  ``engagement_per_reply`` (which is per posted reply, whoever saw it);
- ``engaged_per_served``: engaged impressions / served impressions, for clients that never
  report seen items (a lower bound of the per-seen rate when some engagement comes from
  unseen-reported items).

The interval treats seen impressions as independent. Impressions of one viewer are correlated
(some viewers engage with everything), so it is somewhat too narrow; viewer DIDs are purged
after the retention, so a by-viewer cluster correction is not available over the whole history.
Arms are compared within viewers by design (every page interleaves all arms), which removes the
viewer mix from the difference between arms.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from rich.table import Table

from botsky.ledger.feed import ArmCounts
from botsky.scoring import wilson_interval

__all__ = ["FeedScore", "feed_score_fields", "feed_scores", "feed_scores_json", "render_feed"]

_DIGITS: Final = 4


@dataclass(frozen=True, slots=True)
class FeedScore:
    """One arm's per-impression figures (exact; rounded on output)."""

    arm: str
    served: int
    seen: int
    engaged_seen: int
    engaged_served: int
    engaged_rate: float | None
    ci_low: float
    ci_high: float
    engagement_per_seen: float | None
    engaged_per_served: float | None
    likes_seen: int
    reposts_seen: int
    replies_seen: int
    quotes_seen: int


def feed_scores(counts: Iterable[ArmCounts]) -> list[FeedScore]:
    """Per-arm figures, best engaged rate first (arms with nothing seen last), then by name."""
    out = []
    for c in counts:
        low, high = wilson_interval(c.engaged_seen, c.seen)
        engagements = c.likes_seen + c.reposts_seen + c.replies_seen + c.quotes_seen
        out.append(
            FeedScore(
                arm=c.arm,
                served=c.served,
                seen=c.seen,
                engaged_seen=c.engaged_seen,
                engaged_served=c.engaged_served,
                engaged_rate=c.engaged_seen / c.seen if c.seen else None,
                ci_low=low,
                ci_high=high,
                engagement_per_seen=engagements / c.seen if c.seen else None,
                engaged_per_served=c.engaged_served / c.served if c.served else None,
                likes_seen=c.likes_seen,
                reposts_seen=c.reposts_seen,
                replies_seen=c.replies_seen,
                quotes_seen=c.quotes_seen,
            )
        )
    out.sort(key=lambda s: (s.engaged_rate is None, -(s.engaged_rate or 0.0), s.arm))
    return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, _DIGITS)


def feed_score_fields(s: FeedScore, arm_by: str = "model") -> dict[str, Any]:
    """The ``feed_score`` log line of one arm (the one rounding point)."""
    return {
        "event": "feed_score",
        "arm": s.arm,
        "arm_by": arm_by,
        "served": s.served,
        "seen": s.seen,
        "engaged_seen": s.engaged_seen,
        "engaged_rate": _r(s.engaged_rate),
        "ci_low": _r(s.ci_low),
        "ci_high": _r(s.ci_high),
        "engagement_per_seen": _r(s.engagement_per_seen),
        "engaged_per_served": _r(s.engaged_per_served),
        "likes_seen": s.likes_seen,
        "reposts_seen": s.reposts_seen,
        "replies_seen": s.replies_seen,
        "quotes_seen": s.quotes_seen,
    }


def feed_scores_json(scores: Iterable[FeedScore], arm_by: str = "model") -> list[dict[str, Any]]:
    """``botsky feed scores --json``: the log fields without ``event``."""
    out = []
    for s in scores:
        fields = feed_score_fields(s, arm_by)
        del fields["event"]
        out.append(fields)
    return out


def render_feed(scores: list[FeedScore], arm_by: str = "model") -> Table:
    """The per-arm figures as a rich table."""
    table = Table(title=f"feed: engagement per seen impression, by {arm_by} (arm)")
    table.add_column(arm_by)
    for header in ("served", "seen", "engaged", "engaged % of seen", "95% CI (Wilson)"):
        table.add_column(header, justify="right")
    table.add_column("engagement / seen", justify="right")
    table.add_column("engaged % of served", justify="right")
    for s in scores:
        f = feed_score_fields(s, arm_by)
        table.add_row(
            s.arm,
            str(s.served),
            str(s.seen),
            str(s.engaged_seen),
            _fmt(f["engaged_rate"], "{:.1f}", 100),
            f"{f['ci_low'] * 100:.1f}–{f['ci_high'] * 100:.1f}",
            _fmt(f["engagement_per_seen"], "{:.3f}"),
            _fmt(f["engaged_per_served"], "{:.1f}", 100),
        )
    return table


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else spec.format(value * scale)
