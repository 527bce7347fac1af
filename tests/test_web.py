"""The web app: a real uvicorn on 127.0.0.1 over a real App run, queried with httpx.

``replay_app`` builds botsky from YAML like ``botsky run`` does, over a scripted replay, with
model vendors on a loopback ``FakeVendorServer``; the browser and metrics tests reuse it.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from botsky.errors import ConfigError
from botsky.runtime import App
from botsky.scoring import leaderboard, leaderboard_json
from botsky.testing import (
    FakeVendorServer,
)
from botsky.web import WebServer, _score_rows, bsky_url, serve
from tests.support import HOSTILE, hostile_answer, replay_app


@pytest.fixture
def vendor() -> Iterator[FakeVendorServer]:
    """Loopback OpenAI/Anthropic endpoints whose replies carry a <script> tag."""
    with FakeVendorServer(choose=hostile_answer) as server:
        yield server


@pytest.fixture
async def ran(tmp_path: Path, vendor: FakeVendorServer) -> AsyncIterator[App]:
    """An App that has run the whole replay; its ledger stays open until the test ends."""
    app = await replay_app(tmp_path, vendor.url)
    try:
        await app.run()
        yield app
    finally:
        await app.aclose()


@pytest.fixture
async def web(ran: App) -> AsyncIterator[WebServer]:
    """The web app on a free loopback port, over the finished run, without a token."""
    server = await serve(ran, host="127.0.0.1", port=0, token=None, refresh_s=0.0)
    try:
        yield server
    finally:
        await server.stop()


async def _get(url: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, **kw)


async def _board(app: App, by: str) -> dict[str, Any]:
    """What the page and the API must show: the reading as of the App's stream clock."""
    board = leaderboard(
        await app.ledger.mentions(),
        await app.ledger.outcomes(),
        by=by,
        as_of_us=app.presence.now_us,
        options=app.scoring,
    )
    return leaderboard_json(board)


async def _expected(app: App, by: str) -> list[dict[str, Any]]:
    return list((await _board(app, by))["scores"])


async def test_api_leaderboard_equals_scores_json_for_every_grouping(
    ran: App, web: WebServer
) -> None:
    """/api/leaderboard?by=X returns exactly scoring.leaderboard_json over the same ledger,
    read as of the App's stream clock."""
    for by in ("model", "persona", "bot", "picker", "provider"):
        r = await _get(f"{web.url}/api/leaderboard", params={"by": by})
        assert r.status_code == 200
        assert r.json() == await _board(ran, by)
    models = (await _get(f"{web.url}/api/leaderboard")).json()
    assert {row["model"] for row in models["scores"]} == {
        m.model for m in await ran.ledger.mentions()
    }
    assert models["as_of_us"] == ran.presence.now_us


async def test_api_leaderboard_rejects_an_unknown_grouping(web: WebServer) -> None:
    """An unknown ?by= is a 400 with the allowed values, not a 500."""
    r = await _get(f"{web.url}/api/leaderboard", params={"by": "colour"})
    assert r.status_code == 400 and "model" in r.json()["error"]


async def test_the_scenario_has_successes_expiries_and_engagement(ran: App) -> None:
    """The replay matures mentions both ways, so the page shows real intervals."""
    mentions = await ran.ledger.mentions()
    assert len(mentions) == 6
    assert {m.status for m in mentions} == {"succeeded", "expired"}
    assert {o.kind for o in await ran.ledger.outcomes()} >= {"success", "like"}


async def test_leaderboard_page_has_one_row_per_group_with_the_api_numbers(
    ran: App, web: WebServer
) -> None:
    """Each section's rows carry the API's rounded numbers and the tie-aware rank."""
    page = (await _get(web.url + "/")).text
    for by in ("model", "persona", "picker"):
        section = page.split(f'<table class="scores" data-by="{by}">', 1)[1].split("</table>")[0]
        rows = re.findall(r'<tr class="score" ([^>]*)>', section)
        expected = await _expected(ran, by)
        assert len(rows) == len(expected)
        for attrs, exp in zip(rows, expected, strict=True):
            data = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', attrs))
            assert data["rank"] == str(exp["rank"])
            assert data["decided"] == str(exp["decided"])
            assert data["pending"] == str(exp["pending"])
            assert data["mentions"] == str(exp["mentions"])
            assert data["ci-low"] == str(exp["ci_low"])
            assert data["ci-high"] == str(exp["ci_high"])
            assert data["cs-low"] == str(exp["cs_low"])
            assert data["cs-high"] == str(exp["cs_high"])
            deff = exp["design_effect"]
            assert data["design-effect"] == ("" if deff is None else str(deff))
            rate = exp["success_rate"]
            assert data["success-rate"] == ("" if rate is None else str(rate))
        for exp in expected:
            if exp["tied"]:
                assert f'<td class="rank">={exp["rank"]}</td>' in section
        # The comparisons follow the section's table, one row each, with their verdicts.
        comparisons = (await _board(ran, by))["comparisons"]
        rest = page.split(f'<table class="comparisons" data-by="{by}">', 1)
        if not comparisons:
            assert len(rest) == 1
            continue
        found = re.findall(r'<tr class="comparison" ([^>]*)>', rest[1].split("</table>")[0])
        assert len(found) == len(comparisons)
        for attrs, exp in zip(found, comparisons, strict=True):
            data = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', attrs))
            got = tuple(html.unescape(data[k]) for k in ("a", "b", "verdict"))
            assert got == (exp["a"], exp["b"], exp["verdict"])
            assert data["low"] == str(exp["low"])


async def test_leaderboard_page_escapes_hostile_text_and_forbids_scripts(
    web: WebServer,
) -> None:
    """Reply texts and personas are escaped; the CSP allows no script at all."""
    r = await _get(web.url + "/")
    assert r.status_code == 200
    assert "<script" not in r.text
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in r.text
    assert "<b>warm</b>" not in r.text and "&lt;b&gt;warm&lt;/b&gt;" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "<svg" in r.text


async def test_conversations_link_to_bsky_and_carry_outcomes(ran: App, web: WebServer) -> None:
    """/api/conversations lists the newest mention first with bsky.app links and outcomes."""
    r = await _get(f"{web.url}/api/conversations", params={"limit": 6})
    convs = r.json()
    assert [c["mention_id"] for c in convs] == sorted(
        (m.id for m in await ran.ledger.mentions()), reverse=True
    )
    first = convs[-1]
    assert first["post_url"].startswith("https://bsky.app/profile/did:plc:alice/post/")
    assert first["status"] == "succeeded" and first["outcomes"]["success"] == 1
    assert first["outcomes"].get("like") == 1
    assert HOSTILE in first["reply_text"]
    bad = await _get(f"{web.url}/api/conversations", params={"limit": "all"})
    assert bad.status_code == 400


async def test_a_live_run_links_to_bsky_and_has_no_world_truth(web: WebServer) -> None:
    """A live run's page links its posts and replies to bsky.app and shows no truth columns
    (those are a simulation's: tests/test_sim_page.py); /api/truth is 404."""
    page = (await _get(f"{web.url}/")).text
    assert 'href="https://bsky.app/profile/did:plc:alice/post/' in page
    assert "world's true rate" not in page and "data-true-rate" not in page
    r = await _get(f"{web.url}/api/truth")
    assert r.status_code == 404 and "not a simulation" in r.json()["error"]


async def test_health_endpoints_report_liveness_and_readiness(ran: App, web: WebServer) -> None:
    """/healthz is always 200; /readyz is 200 while the ledger answers and the source is up."""
    assert (await _get(web.url + "/healthz")).json() == {"status": "ok"}
    ready = await _get(web.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ledger"] == "ok"
    ran.source.connected = False  # type: ignore[attr-defined]
    down = await _get(web.url + "/readyz")
    assert down.status_code == 503 and down.json()["source"] == "disconnected"


async def test_the_server_parses_http_with_httptools(web: WebServer) -> None:
    """The web app (as `botsky run` serves it) runs on uvicorn's C parser, not h11: the
    feed's CPU budget per request assumes it (BENCHMARKS.md), and uvicorn would fall back
    to h11 silently."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert web.server.config.http_protocol_class is HttpToolsProtocol
    answer = await _get(web.url + "/healthz")  # and it answers through it
    assert answer.status_code == 200 and answer.http_version == "HTTP/1.1"


async def test_readyz_is_503_when_the_ledger_is_unreachable(tmp_path: Path, ran: App) -> None:
    """A closed ledger makes /readyz and the page fail; /healthz and /metrics still answer."""
    await ran.ledger.close()
    server = await serve(ran, port=0)
    try:
        r = await _get(server.url + "/readyz")
        assert r.status_code == 503 and r.json()["ledger"].startswith("error")
        assert (await _get(server.url + "/healthz")).status_code == 200
        assert (await _get(server.url + "/")).status_code == 503
        assert (await _get(server.url + "/metrics")).status_code == 200
    finally:
        await server.stop()
    await ran.ledger.open()  # the fixture closes it again


async def test_pages_serve_the_last_numbers_while_the_ledger_is_down(
    ran: App, web: WebServer
) -> None:
    """Once loaded, the leaderboard survives a ledger outage with the numbers it had."""
    before = (await _get(f"{web.url}/api/leaderboard")).json()
    await ran.ledger.close()
    try:
        assert (await _get(f"{web.url}/api/leaderboard")).json() == before
        assert (await _get(web.url + "/")).status_code == 200
    finally:
        await ran.ledger.open()


async def test_token_guards_every_route_but_the_health_checks(ran: App) -> None:
    """With a token, pages need the bearer header; health checks do not."""
    server = await serve(ran, port=0, token="s3cret-token")
    try:
        for path in ("/", "/metrics", "/api/leaderboard", "/api/conversations"):
            assert (await _get(server.url + path)).status_code == 401
            wrong = await _get(server.url + path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await _get(server.url + path, headers={"Authorization": "Bearer s3cret-token"})
            assert ok.status_code == 200
        assert (await _get(server.url + "/healthz")).status_code == 200
        assert (await _get(server.url + "/readyz")).status_code == 200
    finally:
        await server.stop()


async def test_serve_refuses_a_public_host_without_a_token(ran: App) -> None:
    """Binding beyond loopback without a token is a ConfigError, before any socket is bound."""
    for host in ("0.0.0.0", "192.0.2.10", "example.org"):
        with pytest.raises(ConfigError, match="not loopback"):
            await serve(ran, host=host, port=0)


async def test_stop_closes_the_port_and_is_idempotent(ran: App) -> None:
    """After stop() the server refuses connections; a second stop() is harmless."""
    server = await serve(ran, port=0)
    assert (await _get(server.url + "/healthz")).status_code == 200
    await server.stop()
    await server.stop()
    with pytest.raises(httpx.ConnectError):
        await _get(server.url + "/healthz")


async def test_serve_keeps_reading_the_ledger_after_the_run(
    tmp_path: Path, vendor: FakeVendorServer
) -> None:
    """Started before the run, the server shows the run's mentions once it has finished."""
    app = await replay_app(tmp_path, vendor.url)
    server = await serve(app, port=0, refresh_s=0.0)
    try:
        assert (await _get(server.url + "/api/leaderboard")).json()["scores"] == []
        await app.run()
        rows = (await _get(server.url + "/api/leaderboard")).json()["scores"]
        assert sum(r["mentions"] for r in rows) == 6
    finally:
        await server.stop()
        await app.aclose()


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        (
            "at://did:plc:abc/app.bsky.feed.post/3k2a",
            "https://bsky.app/profile/did:plc:abc/post/3k2a",
        ),
        ("at://did:plc:abc/app.bsky.feed.like/3k2a", None),
        ("at://did:plc:abc/app.bsky.feed.post", None),
        ("https://bsky.app/profile/x/post/y", None),
        ("", None),
    ],
)
def test_bsky_url_maps_post_uris_only(uri: str, url: str | None) -> None:
    """Only post URIs get a bsky.app link; anything else is shown as text."""
    assert bsky_url(uri) == url


async def test_the_cost_column_shows_only_when_some_arm_has_a_cost(
    ran: App, web: WebServer
) -> None:
    """A section whose arms cost nothing (templates, local models) has no column of zeros;
    every row has as many cells as the header, and the data attribute is always there."""
    page = (await _get(web.url + "/")).text
    shown = set()
    for by in ("model", "persona", "picker"):
        section = page.split(f'<table class="scores" data-by="{by}">', 1)[1].split("</table>")[0]
        head, body = section.split("</thead>", 1)
        costly = any((s["cost_usd"] or 0) > 0 for s in await _expected(ran, by))
        assert ("cost / success" in head) == costly, by
        shown.add(costly)
        columns = len(re.findall(r"<th[ >]", head))
        for row in re.findall(r'<tr class="score" ([^>]*)>(.*?)</tr>', body, re.S):
            assert "data-cost-per-success=" in row[0]
            assert row[1].count("<td") == columns, by
    assert shown == {True}  # the replay's LLM bots have prices: the column is there

    # Template arms only: no cost anywhere, no column.
    scores = leaderboard([], [], by="model", as_of_us=0).scores
    assert "cost-per-success num" not in _score_rows(scores, None, cost=False)
