"""A real headless Chromium loads the leaderboard of a real run and we read its DOM.

Chromium comes from the system (Debian's ``chromium`` package); without it the test skips
locally and fails in CI (``CI=true``). The screenshot is kept as an artifact in
``$BOTSKY_ARTIFACTS_DIR`` (default: the test's tmp dir).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from botsky.runtime import App
from botsky.scoring import leaderboard, scores_json
from botsky.testing import FakeVendorServer
from botsky.web import WebServer, serve
from tests.support import HOSTILE, hostile_answer, replay_app

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, offline and stateless: no sandbox (containers run as root), no GPU, no QUIC, no
# first-run or background traffic, a throwaway profile.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
_TIMEOUT_S = 60.0


@pytest.fixture
def chromium() -> str:
    """The system's Chromium; skipped locally without one, a failure in CI."""
    for name in _CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is not installed, and CI must run the browser test")
    pytest.skip("chromium is not installed (apt-get install chromium)")


async def _browse(chromium: str, profile: Path, *args: str) -> str:
    """Run chromium without blocking the event loop that serves the page; returns stdout."""
    proc = await asyncio.create_subprocess_exec(
        chromium,
        *_FLAGS,
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


class _Dom(HTMLParser):
    """Collects score rows per table, conversation reply texts and script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[dict[str, str]]] = {}
        self.scripts = 0
        self.quotes: list[str] = []
        self._table: str | None = None
        self._in_quote = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        elif tag == "table" and a.get("class") == "scores":
            self._table = a["data-by"]
            self.rows[self._table] = []
        elif tag == "tr" and self._table and a.get("class") == "score":
            self.rows[self._table].append({k[5:]: v for k, v in a.items() if k.startswith("data-")})
        elif tag == "blockquote" and a.get("class") == "reply-text":
            self._in_quote = True
            self.quotes.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "blockquote":
            self._in_quote = False

    def handle_data(self, data: str) -> None:
        if self._in_quote:
            self.quotes[-1] += data


def _artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("BOTSKY_ARTIFACTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[App, WebServer]]:
    """A finished replay run and its leaderboard on a free loopback port."""
    with FakeVendorServer(choose=hostile_answer) as vendor:
        app = await replay_app(tmp_path, vendor.url)
        try:
            await app.run()
            server = await serve(app, port=0, refresh_s=0.0)
            try:
                yield app, server
            finally:
                await server.stop()
        finally:
            await app.aclose()


@pytest.mark.slow
async def test_chromium_renders_one_row_per_model_with_the_scores_json_numbers(
    chromium: str, tmp_path: Path, served: tuple[App, WebServer]
) -> None:
    """The DOM Chromium builds has one row per model, equal to `botsky scores --json`."""
    app, server = served
    html = await _browse(chromium, tmp_path / "profile", "--dump-dom", server.url + "/")
    dom = _Dom()
    dom.feed(html)

    mentions, outcomes = await app.ledger.mentions(), await app.ledger.outcomes()
    for by in ("model", "persona", "picker"):
        board = leaderboard(
            mentions, outcomes, by=by, as_of_us=app.presence.now_us, options=app.scoring
        )
        expected = scores_json(board.scores)
        rows = dom.rows[by]
        assert [r["group"] for r in rows] == [e[by] for e in expected]
        for row, exp in zip(rows, expected, strict=True):
            got: dict[str, Any] = {
                "rank": int(row["rank"]),
                "tied": row["tied"] == "true",
                "mentions": int(row["mentions"]),
                "decided": int(row["decided"]),
                "pending": int(row["pending"]),
                "successes": int(row["successes"]),
                "success_rate": float(row["success-rate"]) if row["success-rate"] else None,
                "ci_low": float(row["ci-low"]),
                "ci_high": float(row["ci-high"]),
                "cs_low": float(row["cs-low"]),
                "cs_high": float(row["cs-high"]),
                "engagement_per_reply": (
                    float(row["engagement-per-reply"]) if row["engagement-per-reply"] else None
                ),
                "cost_per_success": (
                    float(row["cost-per-success"]) if row["cost-per-success"] else None
                ),
            }
            assert got == {k: exp[k] for k in got}
    assert len(dom.rows["model"]) == len({m.model for m in mentions}) == 3

    # The hostile reply text is text in the DOM, never an element.
    assert dom.scripts == 0
    assert any(q.startswith(HOSTILE) for q in dom.quotes)

    shot = _artifacts(tmp_path) / "leaderboard.png"
    await _browse(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,900",
        server.url + "/",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def _row_numbers(row: dict[str, str]) -> dict[str, Any]:
    return {
        "rank": int(row["rank"]),
        "mentions": int(row["mentions"]),
        "decided": int(row["decided"]),
        "pending": int(row["pending"]),
        "successes": int(row["successes"]),
        "cs_low": float(row["cs-low"]),
        "cs_high": float(row["cs-high"]),
        "success_rate": float(row["success-rate"]) if row["success-rate"] else None,
        "ci_low": float(row["ci-low"]),
        "ci_high": float(row["ci-high"]),
    }


@pytest.mark.slow
async def test_chromium_reads_the_page_of_a_served_simulation(
    chromium: str, tmp_path: Path
) -> None:
    """`botsky simulate --serve` keeps its page up after the run; Chromium's DOM has one row
    per model and per picker, equal to `botsky scores --json` over the same ledger, each with
    the world's truth of truth.json beside it, and no link to bsky.app."""
    repo = Path(__file__).parent.parent
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BOTSKY_", "OPENAI", "ANTHROPIC"))
    }
    env["BOTSKY_DATA_DIR"] = str(tmp_path / "data")
    cmd = ["-m", "botsky", "simulate", "-c", str(repo / "configs" / "sim.yaml")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *cmd,
        "--days",
        "3",
        "--users",
        "60",
        "--serve",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        url = ""
        async with asyncio.timeout(_TIMEOUT_S):
            while not url:
                line = (await proc.stdout.readline()).decode()
                assert line, "simulate exited before serving"
                # Announced at start, then again once the run is over: read after the run.
                if line.startswith("leaderboard page: ") and "run finished" in line:
                    url = line.split()[2]
        html = await _browse(chromium, tmp_path / "profile", "--dump-dom", url + "/")
        shot = _artifacts(tmp_path) / "simulation-leaderboard.png"
        await _browse(
            chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,900", url
        )
        scores = {}
        for by in ("model", "picker"):
            out = await asyncio.create_subprocess_exec(
                sys.executable,
                *cmd[:2],
                "scores",
                "-c",
                str(repo / "configs" / "sim.yaml"),
                "--json",
                "--by",
                by,
                env=env,
                stdout=asyncio.subprocess.PIPE,
            )
            stdout, _ = await out.communicate()
            assert out.returncode == 0
            scores[by] = orjson.loads(stdout)["scores"]
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), _TIMEOUT_S)
    assert proc.returncode == 0
    dom = _Dom()
    dom.feed(html)
    for by in ("model", "picker"):
        rows = dom.rows[by]
        assert [r["group"] for r in rows] == [e[by] for e in scores[by]]
        for row, exp in zip(rows, scores[by], strict=True):
            got = _row_numbers(row)
            assert got == {k: exp[k] for k in got}
    truth = orjson.loads((tmp_path / "data" / "truth.json").read_bytes())
    for by in ("model", "picker"):
        expected = {a["group"]: a for a in truth["arms"][by]}
        for row in dom.rows[by]:
            e = expected[row["group"]]
            assert int(row["true-decided"]) == e["mentions"] == int(row["decided"])
            assert float(row["true-rate"]) == pytest.approx(e["true_rate"], abs=5e-5)
            assert float(row["oracle"]) == pytest.approx(e["oracle"], abs=5e-5)
    assert "://bsky.app" not in html and dom.scripts == 0
    assert {r["group"] for r in dom.rows["picker"]} == {"similar", "random"}
    assert sum(r["mentions"] for r in scores["model"]) > 50
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
