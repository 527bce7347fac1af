"""The in-process web app: health checks, /metrics and the leaderboard page. Read-only.

Routes (all GET):

- ``/healthz``: the process is alive (always 200; never needs the token);
- ``/readyz``: 200 when the source is connected and the ledger answers, else 503 (no token);
- ``/metrics``: Prometheus text format (``botsky.metrics``);
- ``/``: the leaderboard per model, persona and picker, recent conversations, a health summary;
- ``/api/leaderboard?by=model``: exactly ``botsky scores --json`` (``scoring.leaderboard_json``),
  read as of the App's stream clock;
- ``/api/conversations?limit=50``: the latest mentions, newest first, with their outcomes;
- ``/api/truth?by=model``: a simulation's world truth per arm over the mentions decided at the
  page's reading (404 for a live run).

The page of a simulation (``view.simulation``, a ``SimulationView``) sets the world's truth
beside the estimates (the true rate, and the upper bound and oracle marked as ceilings), over the
same decided mentions, during the run and after it; and it links nothing to bsky.app, whose
users and posts these are not. A live run's posts and replies link to bsky.app.

When a token is configured, every route but the two health checks needs
``Authorization: Bearer <token>``. Binding to anything but loopback without a token is refused
(``ConfigError``): the page shows who was mentioned by whom.

Pages are server-rendered strings with no script, no external asset and every interpolated
value escaped; post and reply texts are hostile input. A ``Content-Security-Policy`` without
``script-src`` backs the escaping up. Charts are inline SVG.

``serve`` runs uvicorn as a task in the caller's event loop and returns a ``WebServer`` handle;
it keeps serving until ``stop()``, also after the App's run has returned (``simulate --serve``),
as long as the App's ledger stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import html
import ipaddress
import secrets
import socket
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from botsky.errors import ConfigError
from botsky.events import POST, parse_at_uri
from botsky.ledger.base import Mention
from botsky.metrics import CONTENT_TYPE, AppView, Metrics, ScoreCache
from botsky.scoring import (
    GROUP_BY,
    Comparison,
    Leaderboard,
    Score,
    comparison_fields,
    leaderboard_json,
    score_log_fields,
)

if TYPE_CHECKING:
    from botsky.feed.service import FeedService

__all__ = [
    "LEADERBOARD_GROUPS",
    "SimulationView",
    "WebServer",
    "bsky_url",
    "create_app",
    "serve",
]

log = structlog.get_logger("botsky.web")

# The page's sections, in order. /api/leaderboard accepts every scoring.GROUP_BY value.
LEADERBOARD_GROUPS: Final = ("model", "persona", "picker")
_OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
_READY_TIMEOUT_S: Final = 2.0
_MAX_CONVERSATIONS: Final = 500
# No script at all; inline styles only; SVG is inline markup, so no img-src is needed.
_SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class SimulationView(Protocol):
    """A simulation's world truth, for its page (``botsky.sim.truth.LiveTruth``)."""

    @property
    def name(self) -> str: ...
    @property
    def definitions(self) -> Mapping[str, str]: ...
    def truth(self, as_of_us: int | None = None) -> Mapping[str, list[dict[str, Any]]]:
        """Per grouping (at least model, persona, picker), per arm: ``group``, ``mentions``
        (decided at ``as_of_us``), ``true_rate``, ``upper_bound``, ``oracle``,
        ``engagement_per_reply``... (``truth.json`` rows)."""
        ...


def _simulation(view: object) -> SimulationView | None:
    return getattr(view, "simulation", None)


def bsky_url(uri: str) -> str | None:
    """The bsky.app page of an ``at://<did>/app.bsky.feed.post/<rkey>`` URI, else None."""
    try:
        did, collection, rkey = parse_at_uri(uri)
    except ValueError:
        return None
    return f"https://bsky.app/profile/{did}/post/{rkey}" if collection == POST else None


def create_app(
    view: AppView,
    *,
    metrics: Metrics | None = None,
    token: str | SecretStr | None = None,
    refresh_s: float = 5.0,
    feed: FeedService | None = None,
) -> Starlette:
    """The ASGI app over ``view``; ``metrics`` is created (and attached) if not given.

    Ledger numbers are reloaded at most every ``refresh_s`` seconds, shared by every route.
    ``feed``: also serve the fair-exposure feed's public routes (``botsky.feed.routes``).
    """
    metrics = metrics or Metrics()
    cache = metrics.watch(view, max_age_s=refresh_s)
    secret = _secret(token)
    sim = _simulation(view)
    # A simulation's truth, taken as of the ledger reading at each reload (the world moves
    # on between requests; the truth stays beside the numbers it was read with).
    truth = _TruthAtReload()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await _readiness(view)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    async def metrics_route(request: Request) -> Response:
        # A ledger outage must not hide the live counters: the scores are just older (their
        # age is botsky_scores_age_seconds).
        await refresh()
        await _feed_scores(feed, refresh_s)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def refresh() -> Response | None:
        """Reload the ledger numbers; on failure serve the last ones, or 503 if there are none."""
        try:
            await cache.refresh()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("web_ledger_unavailable", error=f"{type(exc).__name__}: {exc}")
            if cache.loaded_at is None:
                return JSONResponse({"error": "ledger unavailable"}, status_code=503)
        if sim is not None:
            truth.take(sim, cache)
        return None

    async def leaderboard_api(request: Request) -> Response:
        by = request.query_params.get("by", "model")
        if by not in GROUP_BY:
            return JSONResponse(
                {"error": f"by must be one of {', '.join(GROUP_BY)}"}, status_code=400
            )
        return await refresh() or JSONResponse(leaderboard_json(cache.board(by)))

    async def conversations_api(request: Request) -> Response:
        limit = _limit(request.query_params.get("limit"), default=50)
        if limit is None:
            return JSONResponse(
                {"error": f"limit must be an integer from 1 to {_MAX_CONVERSATIONS}"},
                status_code=400,
            )
        links = _simulation(view) is None
        return await refresh() or JSONResponse(list(_conversations(cache, limit, links=links)))

    async def truth_api(request: Request) -> Response:
        if sim is None:
            return JSONResponse({"error": "not a simulation: no world truth"}, status_code=404)
        by = request.query_params.get("by", "model")
        failed = await refresh()
        if failed is not None:
            return failed
        rows = truth.rows or {}
        if by not in rows:
            return JSONResponse({"error": f"by must be one of {', '.join(rows)}"}, status_code=400)
        return JSONResponse(
            {
                "world": sim.name,
                "by": by,
                "as_of_us": truth.as_of_us,
                "over": "mentions decided at as_of_us (outcome window closed)",
                "definitions": dict(sim.definitions),
                "arms": rows[by],
            }
        )

    async def index(request: Request) -> Response:
        failed = await refresh()
        if failed is not None:
            return failed
        extra = ""
        if feed is not None:
            from botsky.feed.render import feed_section

            extra = feed_section(await _feed_scores(feed, refresh_s), feed.arm_by)
        page = _render_page(
            view, cache, conversations=20, extra=extra, truth=truth if sim is not None else None
        )
        return HTMLResponse(page, headers=_SECURITY_HEADERS)

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_route),
        Route("/api/leaderboard", leaderboard_api),
        Route("/api/conversations", conversations_api),
        Route("/api/truth", truth_api),
    ]
    open_paths = _OPEN_PATHS
    if feed is not None:
        from botsky.feed.routes import OPEN_PATHS, feed_routes

        routes += feed_routes(feed)
        open_paths = open_paths | OPEN_PATHS
    app = Starlette(routes=routes)
    if secret is not None:
        app.add_middleware(_BearerAuth, token=secret, open_paths=open_paths)
    return app


# --- serving --------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # botsky's CLI owns SIGINT/SIGTERM (drain, save the cursor); uvicorn must not take them.
        yield


@dataclass
class WebServer:
    """A running web app: ``url`` to reach it, ``stop()`` to shut it down."""

    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """Stop accepting, finish open requests, and wait for the server task. Idempotent."""
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def wait(self) -> None:
        """Wait until the server stops (by ``stop()`` or an error)."""
        await asyncio.shield(self.task)


async def serve(
    view: AppView,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | SecretStr | None = None,
    metrics: Metrics | None = None,
    refresh_s: float = 5.0,
    feed: FeedService | None = None,
) -> WebServer:
    """Start the web app on ``host:port`` (0: any free port) and return once it accepts.

    Raises ``ConfigError`` if ``host`` is not loopback and no token is given, and ``OSError``
    if the port cannot be bound.
    """
    secret = _secret(token)
    if secret is None and not _is_loopback(host):
        raise ConfigError(
            f"web.host {host!r} is not loopback and web.token is unset: refusing to publish "
            "the leaderboard without authentication (set BOTSKY_WEB__TOKEN, or bind 127.0.0.1)"
        )
    app = create_app(view, metrics=metrics, token=secret, refresh_s=refresh_s, feed=feed)
    config = uvicorn.Config(
        app,
        lifespan="off",  # nothing to start or stop: the App owns every resource
        ws="none",  # no websockets; also keeps the websockets library's deprecations away
        # The C parser (httptools): pure-Python h11 cost ~0.09 ms more CPU per request (/healthz
        # 0.24 -> 0.15 ms, bench/bench_feed.py). uvicorn's "auto" would pick it too, but fall
        # back to h11 silently if it were missing; botsky depends on it, so name it.
        http="httptools",
        log_config=None,  # botsky configures logging; uvicorn's loggers propagate to it
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    sock = _bind(host, port)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="botsky-web")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # re-raise the failure
            raise RuntimeError("the web server stopped before it started")
        await asyncio.sleep(0.01)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return WebServer(url=f"http://{shown}:{bound_port}", server=server, task=task)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and accepted sockets inherit a 0 here. Without it, Nagle held back the body write until
    # the client's delayed ACK: +44 ms on every keep-alive request (bench/bench_feed.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(token: str | SecretStr | None) -> str | None:
    value = token.get_secret_value() if isinstance(token, SecretStr) else token
    return value or None


class _BearerAuth:
    """Every path but the health checks needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = _OPEN_PATHS) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            given = Headers(scope=scope).get("authorization", "").encode()
            if not secrets.compare_digest(given, self.expected):
                response = PlainTextResponse(
                    "unauthorized\n",
                    status_code=401,
                    headers={"www-authenticate": 'Bearer realm="botsky"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _readiness(view: AppView) -> dict[str, str]:
    checks: dict[str, str] = {}
    connected = getattr(view.source, "connected", True)
    checks["source"] = "ok" if connected else "disconnected"
    try:
        await asyncio.wait_for(view.ledger.load_cursor(view.cursor_name), _READY_TIMEOUT_S)
        checks["ledger"] = "ok"
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        checks["ledger"] = "timeout"
    except Exception as exc:
        checks["ledger"] = f"error: {type(exc).__name__}"
    return checks


def _limit(raw: str | None, *, default: int) -> int | None:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= _MAX_CONVERSATIONS else None


# --- data for the page and the API ----------------------------------------------------------


def _conversations(
    cache: ScoreCache, limit: int, *, links: bool = True
) -> Iterator[dict[str, Any]]:
    """The latest mentions; ``links``: their bsky.app URLs (not for a simulation's)."""
    by_mention: dict[int, Counter[str]] = {}
    for o in cache.outcomes:
        by_mention.setdefault(o.mention_id, Counter())[o.kind] += 1
    for m in _latest(cache.mentions, limit):
        yield _conversation(m, by_mention.get(m.id, Counter()), links=links)


def _latest(mentions: Sequence[Mention], limit: int) -> list[Mention]:
    return heapq.nlargest(limit, mentions, key=lambda m: (m.created_us, m.id))


def _conversation(m: Mention, outcomes: Counter[str], *, links: bool = True) -> dict[str, Any]:
    post_text = m.extra.get("post_text")
    return {
        "mention_id": m.id,
        "created_us": m.created_us,
        "post_uri": m.post_uri,
        "post_url": bsky_url(m.post_uri) if links else None,
        "post_author": m.post_author,
        "post_text": post_text if isinstance(post_text, str) else None,
        "bot": m.bot,
        "model": m.model,
        "persona": m.persona,
        "picker": m.picker,
        "reply_uri": m.reply_uri,
        "reply_url": bsky_url(m.reply_uri) if links else None,
        "reply_text": m.reply_text,
        "mentioned_did": m.mentioned_did,
        "mentioned_handle": m.mentioned_handle,
        "status": m.status,
        "outcome_us": m.outcome_us,
        "outcomes": dict(sorted(outcomes.items())),
    }


# --- HTML -----------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Escape for element text and double-quoted attributes."""
    return html.escape(str(value), quote=True)


def _num(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else spec.format(value * scale)


def _attr(value: object) -> str:
    # data-* attributes carry the API's rounded numbers; null is the empty string.
    return "" if value is None else _e(value)


def _ci_svg(cs: tuple[float, float], ci: tuple[float, float], rate: float | None) -> str:
    """The anytime-valid interval as a bar on a 0-100% track, the fixed-n (Wilson) interval as a
    thin line inside it, the point estimate as a tick."""
    w, h, pad = 200, 18, 4
    span = w - 2 * pad

    def x(v: float) -> float:
        return round(pad + v * span, 2)

    label = (
        f"anytime-valid 95% interval {cs[0] * 100:.1f}% to {cs[1] * 100:.1f}%; "
        f"fixed-n {ci[0] * 100:.1f}% to {ci[1] * 100:.1f}%"
    )
    parts = [
        f'<svg class="ci" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{_e(label)}"><title>{_e(label)}</title>',
        f'<line x1="{pad}" y1="{h / 2}" x2="{w - pad}" y2="{h / 2}" stroke="#ccd" />',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{x(tick)}" y1="5" x2="{x(tick)}" y2="13" stroke="#ccd" />')
    parts.append(
        f'<rect class="cs" x="{x(cs[0])}" y="5" width="{max(x(cs[1]) - x(cs[0]), 1.0):.2f}" '
        'height="8" rx="2" fill="#b9d0ee" />'
    )
    parts.append(
        f'<rect class="fixed" x="{x(ci[0])}" y="8" width="{max(x(ci[1]) - x(ci[0]), 1.0):.2f}" '
        'height="2" fill="#2f6db5" />'
    )
    if rate is not None:
        parts.append(f'<rect x="{x(rate) - 1.5:.2f}" y="2" width="3" height="14" fill="#1d3f73" />')
    parts.append("</svg>")
    return "".join(parts)


_TRUTH_FIELDS: Final = ("true_rate", "upper_bound", "oracle", "engagement_per_reply")


@dataclass
class _TruthAtReload:
    """A simulation's truth per grouping (``SimulationView.truth``), rounded like the API's
    scores, taken as of the score cache's reading once per reload of the cache."""

    loaded_at: float | None = None
    as_of_us: int | None = None
    rows: Mapping[str, list[dict[str, Any]]] | None = None

    def take(self, sim: SimulationView, cache: ScoreCache) -> None:
        if self.rows is not None and self.loaded_at == cache.loaded_at:
            return
        self.loaded_at, self.as_of_us = cache.loaded_at, cache.as_of_us
        self.rows = {
            by: [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rs]
            for by, rs in sim.truth(cache.as_of_us).items()
        }


def _truth_cells(t: Mapping[str, Any] | None) -> tuple[str, str]:
    """(data attributes, cells) of the world's truth beside an arm's estimates."""
    t = t or {}
    data = {
        "true-decided": t.get("mentions"),
        "true-rate": t.get("true_rate"),
        "upper-bound": t.get("upper_bound"),
        "oracle": t.get("oracle"),
        "true-engagement-per-reply": t.get("engagement_per_reply"),
    }
    attrs = " ".join(f'data-{k}="{_attr(v)}"' for k, v in data.items())
    cells = (
        f'<td class="true-rate num truth">{_e(_num(t.get("true_rate"), "{:.1f}%", 100))}</td>'
        f'<td class="upper-bound num ceiling">'
        f"{_e(_num(t.get('upper_bound'), '{:.1f}%', 100))}</td>"
        f'<td class="oracle num ceiling">{_e(_num(t.get("oracle"), "{:.1f}%", 100))}</td>'
    )
    return attrs, cells


def _score_rows(
    rows: list[Score], truth: Mapping[str, Mapping[str, Any]] | None = None, cost: bool = True
) -> str:
    """One row per arm; with ``truth`` (a simulation's, by group) the world's truth beside it;
    ``cost``: whether the cost column is shown (its data attribute always is)."""
    out = []
    for s in rows:
        f = score_log_fields(s)
        rank = f"{'=' if s.tied else ''}{s.rank}"
        group = s.group if len(s.group) <= 80 else s.group[:79] + "…"
        rate = _num(f["success_rate"], "{:.1f}%", 100)
        cs = f"{f['cs_low'] * 100:.1f}–{f['cs_high'] * 100:.1f}%"
        ci = f"{f['ci_low'] * 100:.1f}–{f['ci_high'] * 100:.1f}%"
        data = {
            "group": s.group,
            "rank": s.rank,
            "tied": "true" if s.tied else "false",
            "control": "true" if s.control else "false",
            "mentions": s.mentions,
            "decided": s.decided,
            "pending": s.pending,
            "successes": s.successes,
            "success-rate": f["success_rate"],
            "ci-low": f["ci_low"],
            "ci-high": f["ci_high"],
            "cs-low": f["cs_low"],
            "cs-high": f["cs_high"],
            "km-rate": f["km_rate"],
            "design-effect": f["design_effect"],
            "engagement-per-reply": f["engagement_per_reply"],
            "cost-per-success": f["cost_per_success"],
        }
        attrs = " ".join(f'data-{k}="{_attr(v)}"' for k, v in data.items())
        truth_attrs, truth_cells, true_engagement = "", "", ""
        if truth is not None:
            t = truth.get(s.group)
            truth_attrs, truth_cells = _truth_cells(t)
            truth_attrs = " " + truth_attrs
            value = _num(t.get("engagement_per_reply") if t else None, "{:.3f}")
            true_engagement = f'<td class="true-engagement-per-reply num truth">{_e(value)}</td>'
        control = ' <span class="control">control</span>' if s.control else ""
        bar = _ci_svg((s.cs_low, s.cs_high), (s.ci_low, s.ci_high), s.success_rate)
        out.append(
            f'<tr class="score" {attrs}{truth_attrs}>'
            f'<td class="rank">{_e(rank)}</td>'
            f'<td class="group" title="{_e(s.group)}">{_e(group)}{control}</td>'
            f'<td class="rate num">{_e(rate)}</td>'
            f'<td class="ci">{bar}'
            f'<span class="ci-text">{_e(cs)}</span>'
            f'<div class="fixed-text">fixed-n {_e(ci)}</div></td>'
            f"{truth_cells}"
            f'<td class="decided num">{s.decided}</td>'
            f'<td class="pending num">{s.pending}</td>'
            f'<td class="successes num">{s.successes}</td>'
            f'<td class="km num">{_e(_num(f["km_rate"], "{:.1f}%", 100))}</td>'
            f'<td class="design-effect num">{_e(_num(f["design_effect"], "{:.2f}"))}</td>'
            f'<td class="engagement-per-reply num">'
            f"{_e(_num(f['engagement_per_reply'], '{:.3f}'))}</td>"
            f"{true_engagement}"
            + (
                f'<td class="cost-per-success num">'
                f"{_e(_num(f['cost_per_success'], '${:.6f}'))}</td>"
                if cost
                else ""
            )
            + "</tr>"
        )
    return "\n".join(out)


def _comparison_rows(rows: list[Comparison]) -> str:
    out = []
    for c in rows:
        f = comparison_fields(c)
        days = f["days_to_separate"]
        out.append(
            f'<tr class="comparison" data-a="{_e(c.a)}" data-b="{_e(c.b)}" '
            f'data-verdict="{_e(c.verdict)}" data-diff="{_attr(f["diff"])}" '
            f'data-low="{_attr(f["low"])}" data-high="{_attr(f["high"])}" '
            f'data-days-to-separate="{_attr(days)}">'
            f'<td>{_e(c.a)}</td><td>{_e(c.b)}</td><td class="kind">{_e(c.kind)}</td>'
            f'<td class="num">{f["diff"] * 100:+.1f}</td>'
            f'<td class="num">{f["low"] * 100:+.1f} to {f["high"] * 100:+.1f}</td>'
            f'<td class="verdict verdict-{_e(c.verdict.replace(" ", "-"))}">{_e(c.verdict)}</td>'
            f'<td class="num">{"–" if days is None else f"{days:.0f}"}</td>'
            "</tr>"
        )
    return "\n".join(out)


def _leaderboard_section(
    by: str, board: Leaderboard, truth: Sequence[Mapping[str, Any]] | None = None
) -> str:
    """One grouping's scores (and comparisons); ``truth``: a simulation's, per arm."""
    by_group = None if truth is None else {str(t["group"]): t for t in truth}
    # No arm has a cost (template arms, local models): no column of zeros.
    cost = any(s.cost_usd > 0 for s in board.scores)
    columns = (11 if truth is None else 15) - (not cost)
    body = (
        _score_rows(board.scores, by_group, cost)
        or f'<tr><td colspan="{columns}" class="empty">no mentions yet</td></tr>'
    )
    truth_heads = true_engagement_head = ""
    if truth is not None:
        truth_heads = (
            '<th class="truth" title="the world\'s truth over the same decided mentions: what '
            "the success rate estimates\">world's true rate</th>"
            '<th class="ceiling" title="the same users had they read the mention at once, '
            'unfatigued, in the best mood: a ceiling, not an estimate">upper bound '
            "(ceiling)</th>"
            '<th class="ceiling" title="the best-fitting online user for the same posts: no '
            'pick does better; a ceiling, not an estimate">oracle (ceiling)</th>'
        )
        true_engagement_head = '<th class="truth">world\'s true engagement / reply</th>'
    cost_head = "<th>cost / success</th>" if cost else ""
    comparisons = ""
    if board.comparisons:
        comparisons = f"""
<table class="comparisons" data-by="{_e(by)}">
<caption>Differences in success rate, percentage points; anytime-valid intervals holding
together over {_plural(len(board.comparisons), "comparison")} (family-wise 95%).</caption>
<thead><tr><th>arm</th><th>vs</th><th>kind</th><th>difference</th><th>interval</th>
<th>verdict</th><th title="at the current rates and mention flow">days to separate</th></tr>
</thead>
<tbody>
{_comparison_rows(board.comparisons)}
</tbody>
</table>"""
    return f"""
<section id="by-{by}" class="board">
<h2>By {_e(by)}</h2>
<table class="scores" data-by="{_e(by)}">
<thead><tr><th>rank</th><th>{_e(by)}</th><th>success rate</th>
<th>95% interval: anytime-valid (bar), fixed-n (line)</th>{truth_heads}
<th title="window closed">decided</th><th title="window still open">pending</th>
<th>successes</th><th title="Kaplan-Meier, open mentions censored">KM estimate</th>
<th title="cluster-robust / binomial variance">design effect</th>
<th>engagement / reply</th>{true_engagement_head}{cost_head}</tr></thead>
<tbody>
{body}
</tbody>
</table>{comparisons}
</section>"""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"all {n} {word}s"


def _link(url: str | None, text: str) -> str:
    if url is None:
        return _e(text)
    return f'<a href="{_e(url)}" rel="noopener noreferrer nofollow">{_e(text)}</a>'


def _time(us: int | None) -> str:
    if us is None:
        return ""
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _conversation_rows(convs: list[dict[str, Any]]) -> str:
    out = []
    for c in convs:
        post = _link(c["post_url"], "post")
        if c["post_text"]:
            post += f'<blockquote class="post-text">{_e(c["post_text"])}</blockquote>'
        engagement = ", ".join(f"{k} ×{n}" for k, n in c["outcomes"].items() if k != "success")
        out.append(
            f'<tr class="conversation" data-mention-id="{c["mention_id"]}" '
            f'data-status="{_e(c["status"])}">'
            f'<td class="when">{_e(_time(c["created_us"]))}</td>'
            f'<td class="post"><span class="did">{_e(c["post_author"])}</span> {post}</td>'
            f'<td class="reply"><span class="bot">{_e(c["bot"])}</span> '
            f'<span class="model">({_e(c["model"])}, {_e(c["picker"])})</span> '
            f"{_link(c['reply_url'], 'reply')}"
            f'<blockquote class="reply-text">{_e(c["reply_text"])}</blockquote></td>'
            f'<td class="mention">@{_e(c["mentioned_handle"] or c["mentioned_did"])}</td>'
            f'<td class="outcome status-{_e(c["status"])}">{_e(c["status"])}'
            f'<div class="engagement">{_e(engagement)}</div></td>'
            "</tr>"
        )
    if not out:
        return '<tr><td colspan="5" class="empty">no conversations yet</td></tr>'
    return "\n".join(out)


def _health(view: AppView) -> list[tuple[str, str]]:
    s = view.summary
    stats = view.source.stats
    d = view.dispatcher
    now_us = view.presence.now_us
    counts = d.counts if d is not None else {}
    rows = [
        ("source", view.source.name),
        ("connected", "yes" if getattr(view.source, "connected", True) else "no"),
        ("events read", str(s.events)),
        ("newest event", _time(now_us) if now_us else "–"),
        ("skipped frames", str(stats.skipped)),
        ("reconnects", str(stats.reconnects)),
        (
            "dispatch queue",
            f"{min(d.queue.qsize(), d.queue_size)}/{d.queue_size}" if d is not None else "no bots",
        ),
        ("dropped (queue full)", str(counts.get("dropped_queue_full", 0))),
        ("replies posted", str(counts.get("posted", 0))),
        ("open mentions", str(len(view.outcomes))),
        ("opt-outs this run", str(s.opt_outs)),
    ]
    return rows


async def _feed_scores(feed: FeedService | None, max_age_s: float) -> list[Any]:
    """The feed's per-arm figures, reloaded if stale; the last ones if the ledger fails."""
    if feed is None:
        return []
    try:
        return await feed.load_scores(max_age_s=max_age_s)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("web_feed_scores_unavailable", error=f"{type(exc).__name__}: {exc}")
        return feed.scores


def _render_page(
    view: AppView,
    cache: ScoreCache,
    *,
    conversations: int,
    extra: str = "",
    truth: _TruthAtReload | None = None,
) -> str:
    sim = _simulation(view)
    rows = truth.rows if truth is not None else None
    sections = "\n".join(
        _leaderboard_section(by, cache.board(by), None if rows is None else rows.get(by, []))
        for by in LEADERBOARD_GROUPS
    )
    as_of = _time(cache.board("model").as_of_us) or "–"
    convs = list(_conversations(cache, conversations, links=sim is None))
    simulated = ""
    if sim is not None:
        simulated = f"""
<p class="simulation" data-world="{_e(sim.name)}"><strong>A simulation</strong>
(world {_e(sim.name)}). Beside each arm's estimates stands the <em>world's truth</em>, which
only a simulation knows, over the same decided mentions (so far, while the run goes on):
<em>world's true rate</em> is what the success rate estimates (the mean answer probability the
world used); <em>upper bound</em> and <em>oracle</em> are ceilings, not estimates: the same users
reading at once in the best mood, and the best-fitting online user for the same posts. The users
and posts are simulated and not on Bluesky: nothing here links to bsky.app.
<a href="/api/truth?by=model">truth JSON</a></p>"""
    health = "\n".join(
        f'<tr data-key="{_e(k)}"><th>{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in _health(view)
    )
    nav = " · ".join(f'<a href="#by-{by}">by {by}</a>' for by in LEADERBOARD_GROUPS)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>botsky leaderboard</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>botsky leaderboard</h1>
<p class="lede">As of <span class="as-of">{_e(as_of)}</span> (stream time). Success = the
@-mentioned user replied in the thread within the window. Rates use <em>decided</em> mentions
(window closed); <em>pending</em> ones are not in the rate, the Kaplan–Meier estimate uses them
as censored. Bars are anytime-valid 95% intervals (valid however often you reload), lines the
fixed-n Wilson intervals, both adjusted for repeated people (design effect). A row's rank is 1 +
the arms shown better than it; equal ranks are marked <code>=1</code>. Methods:
docs/statistics.md.</p>{simulated}
<nav>{nav} · <a href="#conversations">conversations</a> · <a href="#health">health</a> ·
<a href="/api/leaderboard?by=model">JSON</a> · <a href="/metrics">metrics</a></nav>
</header>
<main>
{sections}
{extra}
<section id="conversations">
<h2>Recent conversations</h2>
<table class="conversations">
<thead><tr><th>when</th><th>post</th><th>bot reply</th><th>mention</th><th>outcome</th></tr></thead>
<tbody>
{_conversation_rows(convs)}
</tbody>
</table>
</section>
<section id="health">
<h2>Health</h2>
<table class="health">
{health}
</table>
</section>
</main>
</body>
</html>
"""


_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;
background:#f6f8fa}
header,main{max-width:1680px;margin:0 auto;padding:0 20px}
main{overflow-x:auto}
header{padding-top:16px}
h1{font-size:22px;margin:8px 0}
h2{font-size:17px;margin:24px 0 8px}
.lede{color:#57606a;margin:4px 0 8px}
nav a{color:#0b5cad}
table{border-collapse:collapse;background:#fff;width:100%;border:1px solid #d0d7de}
th,td{padding:6px 10px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
thead th{background:#eef2f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.rank{font-weight:600;width:3em}
td.ci{white-space:nowrap}
td.ci svg{vertical-align:middle}
.ci-text{margin-left:8px;color:#57606a;font-variant-numeric:tabular-nums}
.fixed-text{color:#8c959f;font-size:12px;font-variant-numeric:tabular-nums}
.control{color:#8c959f;font-size:12px;margin-left:4px}
table.comparisons{margin-top:8px}
table.comparisons caption{text-align:left;color:#57606a;padding:4px 0}
.verdict-better{color:#1a7f37;font-weight:600}
.verdict-worse{color:#cf222e;font-weight:600}
blockquote{margin:4px 0 0;padding:2px 8px;border-left:3px solid #d0d7de;color:#333;
white-space:pre-wrap;word-break:break-word}
.did,.model{color:#57606a;font-size:12px}
.bot{font-weight:600}
.status-succeeded{color:#1a7f37;font-weight:600}
.status-expired{color:#8c959f}
.status-open{color:#9a6700}
.engagement{color:#57606a;font-size:12px}
.empty{color:#8c959f;text-align:center}
.simulation{background:#fff8e6;border:1px solid #e8d5a3;padding:6px 10px;margin:4px 0 8px}
td.truth,th.truth{background:#f1f8f3}
td.ceiling,th.ceiling{color:#8c959f}
table.health{width:auto}
table.health th{font-weight:500;color:#57606a}
"""
