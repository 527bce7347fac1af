"""The page of a simulation: served from the start of the run, the world's truth beside the
estimates (over the same decided mentions, during the run and after it), no bsky.app links.

A real simulation in this process with its web app on a free loopback port, read with httpx
while the run goes on (a polling task on the same event loop) and after it (``hold``).
"""

from __future__ import annotations

import asyncio
import random
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from botsky.configload import resolve_secrets
from botsky.runtime import App
from botsky.sim.run import SimResult, simulate
from botsky.sim.world import DAY_US, World
from tests.support import sim_config

GROUPS = ("model", "persona", "picker")


class _Rows(HTMLParser):
    """The data attributes of every score row, per table, and every link target."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[dict[str, str]]] = {}
        self.hrefs: list[str] = []
        self.heads: list[str] = []
        self._table: str | None = None
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table" and a.get("class") == "scores":
            self._table = a["data-by"]
            self.rows[self._table] = []
        elif tag == "tr" and self._table and a.get("class") == "score":
            self.rows[self._table].append({k[5:]: v for k, v in a.items() if k.startswith("data-")})
        elif tag == "a":
            self.hrefs.append(a.get("href", ""))
        elif tag == "th":
            self._in_th = True
            self.heads.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "th":
            self._in_th = False

    def handle_data(self, data: str) -> None:
        if self._in_th:
            self.heads[-1] += data


def _parse(page: str) -> _Rows:
    rows = _Rows()
    rows.feed(page)
    return rows


def _float(v: str) -> float | None:
    return float(v) if v else None


@pytest.mark.parametrize("refresh_s", [0.0, 0.05])
async def test_the_page_of_a_simulation_sets_the_truth_beside_the_estimates(
    tmp_path: Path, refresh_s: float
) -> None:
    """From the first event to the end: the URL is announced before the world emits anything;
    every poll of the page shows each arm's truth over exactly the mentions its estimate is
    over (decided = decided), also when the page's numbers are older than the world (the
    ledger reloaded at most every 0.05 s while the world runs on); at the end the page's and
    /api/truth's truth is truth.json's; nothing links to bsky.app. The world keeps no
    mention's record long after its window closed. Exact properties: any seed holds."""
    seed = random.randrange(2**31)
    loaded = sim_config(tmp_path)
    loaded.settings.web.enabled = True
    loaded.settings.web.port = 0
    loaded.settings.web.refresh_s = refresh_s
    secrets = resolve_secrets(loaded, environ={}, live=False)
    announced: list[tuple[str, int]] = []
    world: list[World] = []
    polls: list[str] = []
    at_end: dict[str, Any] = {}
    done, serving = asyncio.Event(), asyncio.Event()

    def on_serve(url: str) -> None:
        announced.append((url, sum(w.stats.events for w in world)))
        serving.set()

    kept_days: list[float] = []

    def on_day(w: World) -> None:
        if not world:
            world.append(w)
        if w._closing:  # records still kept: of mentions closed at most 3 days ago
            kept_days.append((w.clock_us - min(e for e, _, _ in w._closing)) / DAY_US)

    async def poll() -> None:
        await serving.wait()
        async with httpx.AsyncClient(base_url=announced[0][0], timeout=10) as client:
            while not done.is_set():
                r = await client.get("/")
                assert r.status_code == 200
                polls.append(r.text)
                await asyncio.sleep(0)

    async def hold(app: App, result: SimResult) -> None:
        done.set()
        assert app.web_server is not None
        async with httpx.AsyncClient(base_url=app.web_server.url, timeout=10) as client:
            at_end["page"] = (await client.get("/")).text
            for by in (*GROUPS, "bot"):
                at_end[by] = (await client.get("/api/truth", params={"by": by})).json()
            at_end["bad"] = await client.get("/api/truth", params={"by": "colour"})
            at_end["conversations"] = (
                await client.get("/api/conversations", params={"limit": 500})
            ).json()

    poller = asyncio.create_task(poll())
    result = await simulate(
        loaded, secrets, days=5, users=60, seed=seed, on_day=on_day, on_serve=on_serve, hold=hold
    )
    done.set()
    await poller

    assert kept_days and max(kept_days) <= 3 + 1e-6 and max(kept_days) > 0

    # Announced once, before the world's first event.
    assert len(announced) == 1 and announced[0][0].startswith("http://127.0.0.1:")
    assert announced[0][1] == 0

    # Mid-run: the truth so far is over the estimate's own decided mentions.
    assert result.truth_path is not None
    pages = [*polls, at_end["page"]]
    midway = 0
    for page in pages:
        dom = _parse(page)
        assert set(dom.rows) == set(GROUPS)
        for by in GROUPS:
            for row in dom.rows[by]:
                decided, pending = int(row["decided"]), int(row["pending"])
                true_decided = int(row["true-decided"]) if row["true-decided"] else 0
                assert true_decided == decided, (seed, by, row)
                if decided:
                    assert row["true-rate"] and 0 <= float(row["true-rate"]) <= 1
                midway += pending > 0 and decided > 0
    assert midway >= 3, f"seed {seed}: {midway} rows read mid-run"

    # Once every window has closed, the decided truth is the whole truth, engagement included.
    final = result.world.decided_truth()
    assert set(final) == set(result.world.truth)
    for bot, t in result.world.truth.items():
        d = final[bot]
        assert d.mentions == t.mentions
        for k in ("expected", "upper", "oracle", "likes", "author_replies"):
            assert getattr(d, k) == pytest.approx(getattr(t, k), rel=1e-9, abs=1e-12), (bot, k)

    # At the end: the truth of truth.json, on the page and in /api/truth, labelled.
    truth = orjson.loads(result.truth_path.read_bytes())
    dom = _parse(at_end["page"])
    for by in GROUPS:
        expected = {a["group"]: a for a in truth["arms"][by]}
        api = at_end[by]
        assert api["world"] == f"sim:{seed}" and api["by"] == by
        assert set(api["definitions"]) >= {"true_rate", "upper_bound", "oracle"}
        assert {a["group"] for a in api["arms"]} == set(expected)
        for a in api["arms"]:
            e = expected[a["group"]]
            assert a["mentions"] == e["mentions"]
            for k in ("true_rate", "upper_bound", "oracle", "engagement_per_reply"):
                assert a[k] == pytest.approx(e[k], abs=5e-5), (by, a["group"], k)
        assert {r["group"] for r in dom.rows[by]} == set(expected)
        for row in dom.rows[by]:
            e = expected[row["group"]]
            assert int(row["true-decided"]) == e["mentions"] == int(row["mentions"])
            for attr, k in (
                ("true-rate", "true_rate"),
                ("upper-bound", "upper_bound"),
                ("oracle", "oracle"),
                ("true-engagement-per-reply", "engagement_per_reply"),
            ):
                assert _float(row[attr]) == pytest.approx(e[k], abs=5e-5), (by, row, k)
    assert at_end["bot"]["arms"] and at_end["bad"].status_code == 400
    heads = " ".join(dom.heads)
    assert "world's true rate" in heads
    assert "upper bound (ceiling)" in heads and "oracle (ceiling)" in heads
    assert "A simulation" in at_end["page"]

    # Simulated users and posts: no link to bsky.app, on the page or in the API.
    convs = at_end["conversations"]
    assert convs and all(c["post_url"] is None and c["reply_url"] is None for c in convs)
    for page in pages:
        assert "://bsky.app" not in page
    assert not [h for h in dom.hrefs if not h.startswith(("/", "#"))]
