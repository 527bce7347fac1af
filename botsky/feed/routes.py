"""The feed's HTTP routes: thin shells over ``FeedService`` (mounted by ``botsky.web``).

- ``GET /.well-known/did.json``: the service's did:web document (``#bsky_fg``);
- ``GET /xrpc/app.bsky.feed.describeFeedGenerator``;
- ``GET /xrpc/app.bsky.feed.getFeedSkeleton?feed=&limit=&cursor=``;
- ``POST /xrpc/app.bsky.feed.sendInteractions``.

They are public (the AppView calls them), so the web app's bearer token never applies to
``OPEN_PATHS``. Errors are XRPC-shaped (``{"error", "message"}``); anything unexpected is logged
and answered 503, never 500 with a trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from botsky.feed.service import DESCRIBE, GET_SKELETON, SEND_INTERACTIONS, Answer, FeedService

__all__ = ["OPEN_PATHS", "feed_routes"]

log = structlog.get_logger("botsky.feed")

OPEN_PATHS: Final = frozenset(
    {
        "/.well-known/did.json",
        f"/xrpc/{DESCRIBE}",
        f"/xrpc/{GET_SKELETON}",
        f"/xrpc/{SEND_INTERACTIONS}",
    }
)
_MAX_BODY: Final = 256 * 1024
_HEADERS: Final = {"cache-control": "no-store"}


class _Json(Response):
    """JSON by orjson (botsky's hot-path JSON; Starlette's JSONResponse uses the json module)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def _answer(answer: Answer) -> Response:
    return _Json(answer.body, status_code=answer.status, headers=_HEADERS)


def _guarded(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("feed_route_failed", path=request.url.path)
            return _answer(Answer.error(503, "ServiceUnavailable", "the feed failed; try again"))

    return route


def feed_routes(feed: FeedService) -> list[Route]:
    """The four routes over ``feed``."""

    async def did_json(request: Request) -> Response:
        return _Json(feed.did_document())

    async def describe(request: Request) -> Response:
        return _Json(feed.describe())

    async def skeleton(request: Request) -> Response:
        q = request.query_params
        answer = await feed.skeleton(
            feed=q.get("feed"),
            limit=q.get("limit"),
            cursor=q.get("cursor"),
            authorization=request.headers.get("authorization"),
            ip=request.client.host if request.client else None,
        )
        return _answer(answer)

    async def interactions(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            return _answer(Answer.error(413, "PayloadTooLarge", "request body too large"))
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return _answer(Answer.error(400, "InvalidRequest", "the body is not JSON"))
        answer = await feed.interactions(
            body,
            authorization=request.headers.get("authorization"),
            ip=request.client.host if request.client else None,
        )
        return _answer(answer)

    return [
        Route("/.well-known/did.json", _guarded(did_json)),
        Route(f"/xrpc/{DESCRIBE}", _guarded(describe)),
        Route(f"/xrpc/{GET_SKELETON}", _guarded(skeleton)),
        Route(f"/xrpc/{SEND_INTERACTIONS}", _guarded(interactions), methods=["POST"]),
    ]
