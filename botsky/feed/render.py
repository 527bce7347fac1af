"""The feed's section of the leaderboard page: engagement per seen impression, per arm.

Plain escaped HTML, like the rest of the page; no viewer DID ever appears here (the figures are
counts per arm).
"""

from __future__ import annotations

import html

from botsky.feed.scores import FeedScore, feed_score_fields

__all__ = ["feed_section"]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def feed_section(scores: list[FeedScore], arm_by: str) -> str:
    """The ``<section id="feed">`` of the page."""
    rows = []
    for s in scores:
        f = feed_score_fields(s, arm_by)
        data = {
            "arm": s.arm,
            "served": s.served,
            "seen": s.seen,
            "engaged-seen": s.engaged_seen,
            "engaged-rate": "" if f["engaged_rate"] is None else f["engaged_rate"],
            "ci-low": f["ci_low"],
            "ci-high": f["ci_high"],
        }
        attrs = " ".join(f'data-{k}="{_e(v)}"' for k, v in data.items())
        per_seen = f["engagement_per_seen"]
        rows.append(
            f'<tr class="feed-arm" {attrs}>'
            f'<td class="group">{_e(s.arm)}</td>'
            f'<td class="num">{s.served}</td><td class="num">{s.seen}</td>'
            f'<td class="num">{s.engaged_seen}</td>'
            f'<td class="num">{_e(_pct(s.engaged_rate))}</td>'
            f'<td class="ci-text">{s.ci_low * 100:.1f}–{s.ci_high * 100:.1f}%</td>'
            f'<td class="num">{"–" if per_seen is None else f"{per_seen:.3f}"}</td>'
            f'<td class="num">{_e(_pct(s.engaged_per_served))}</td>'
            "</tr>"
        )
    body = "\n".join(rows) or '<tr><td colspan="8" class="empty">no feed impressions yet</td></tr>'
    return f"""
<section id="feed" class="board">
<h2>Feed: engagement per seen impression, by {_e(arm_by)}</h2>
<p class="lede">The fair-exposure feed shows every arm's replies equally (a randomized
round-robin per page). <em>Seen</em> counts items the app reported as seen; engaged = the viewer
liked, reposted, replied to or quoted the reply afterwards. Intervals are Wilson 95%.</p>
<table class="scores feed" data-by="{_e(arm_by)}">
<thead><tr><th>{_e(arm_by)}</th><th>served</th><th>seen</th><th>engaged</th>
<th>engaged / seen</th><th>95% interval</th><th>engagement / seen</th>
<th>engaged / served</th></tr></thead>
<tbody>
{body}
</tbody>
</table>
</section>"""
