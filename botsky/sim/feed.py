"""Simulated subscribers of botsky's fair-exposure feed: their app, and the truth it is held to.

**The app.** ``ServiceClient`` is what a subscriber's Bluesky app and the AppView do, in
process: it asks the feed service (``botsky.feed.FeedService``, the object the HTTP routes
call) for a page with ``skeleton`` (``app.bsky.feed.getFeedSkeleton``) and reports the items
the user scrolled past with ``interactions`` (``app.bsky.feed.sendInteractions``, event
``interactionSeen``, echoing ``reqId`` and ``feedContext``), the viewer's DID standing in for
the verified service token. Before each page it runs the service's ``refresh`` (new bot replies
in, queued firehose engagement joined to exposures), which a live service runs on a wall-clock
timer: here the simulated clock drives it, so one seed gives one history. Likes, reposts and
replies reach the feed as they do on the network: as firehose events the app observes.

**The truth.** For every page the world keeps, per (viewer, item), the *latest* exposure
(``ExposureTruth``), which is the exposure the production join (``FeedLedger.
mark_feed_engagement``) attributes the viewer's next like, repost or reply of the item to,
within the attribution window. Every decision the world takes that could produce such an
engagement adds its probability to that exposure's truth, up to the first success of its kind
(after it, the column is set and the join changes nothing), and to the "engaged" truth up to
the first success of any kind. Summed over *seen* exposures per bot (``FeedTruth``), these are
compensators of the production counts: their expectation is the expected number of seen
exposures with a like (repost, reply, any engagement) joined to them, so per seen impression
they are the **true** values of the feed's ``likes_seen / seen`` (and so on), of
``engagement_per_seen`` and of ``engaged_rate`` (the figure with the Wilson interval).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from botsky.ledger.feed import SEEN_EVENT

if TYPE_CHECKING:
    from botsky.feed.service import FeedService

__all__ = [
    "ENGAGED",
    "FEED_KIND",
    "KINDS",
    "ExposureTruth",
    "FeedClient",
    "FeedTruth",
    "ServedPage",
    "ServiceClient",
]

FEED_KIND: Final = "botsky_feed"  # the ``Item.kind`` of what a subscriber reads in the feed
KINDS: Final = {"like": 1, "repost": 2, "reply": 4}  # engagement kinds the world produces
ENGAGED: Final = 8  # any of them


@dataclass(frozen=True, slots=True)
class ServedPage:
    """A page as the app got it: its ``reqId`` and (post URI, ``feedContext``) per item."""

    req_id: str
    items: tuple[tuple[str, str], ...]


class FeedClient(Protocol):
    """A subscriber's app, as the world uses it."""

    async def page(self, viewer: str, limit: int) -> ServedPage: ...

    async def seen(self, viewer: str, page: ServedPage, n: int) -> None: ...


class ServiceClient:
    """The app and AppView for simulated subscribers, over the feed service itself."""

    def __init__(self, feed: FeedService) -> None:
        from botsky.feed.auth import Verdict

        self.feed = feed
        self._verdict = Verdict
        self.pages = 0

    async def page(self, viewer: str, limit: int) -> ServedPage:
        """``getFeedSkeleton`` without cursor (a new session: the user opens the feed)."""
        await self.feed.refresh()
        answer = await self.feed.skeleton(
            feed=self.feed.feed_uri, limit=limit, verdict=self._verdict(viewer, "sim")
        )
        if answer.status != 200:  # only a failing ledger gets here: stop, do not skew the run
            raise RuntimeError(f"the simulation's feed answered {answer.status}: {answer.body}")
        self.pages += 1
        body = answer.body
        items = tuple((i["post"], i["feedContext"]) for i in body["feed"])
        return ServedPage(body["reqId"], items)

    async def seen(self, viewer: str, page: ServedPage, n: int) -> None:
        """``sendInteractions``: the first ``n`` items of ``page`` were seen."""
        if n <= 0:
            return
        body = {
            "interactions": [
                {"item": uri, "event": SEEN_EVENT, "reqId": page.req_id, "feedContext": context}
                for uri, context in page.items[:n]
            ]
        }
        answer = await self.feed.interactions(body, verdict=self._verdict(viewer, "sim"))
        if answer.status != 200:
            raise RuntimeError(f"the simulation's feed answered {answer.status}: {answer.body}")


@dataclass(slots=True)
class ExposureTruth:
    """The latest exposure of one item to one viewer (see the module docstring)."""

    bot: str
    served_us: int
    seen: bool
    done: int = 0  # KINDS bits whose engagement is joined to it, and ENGAGED


@dataclass
class FeedTruth:
    """Per bot: exposures served and seen, and over the seen ones the summed probabilities
    (compensators) of a like, repost, reply and any engagement joined to them."""

    served: int = 0
    seen: int = 0
    likes: float = 0.0
    reposts: float = 0.0
    replies: float = 0.0
    engaged: float = 0.0

    def add(self, kind: str, p: float) -> None:
        if kind == "like":
            self.likes += p
        elif kind == "repost":
            self.reposts += p
        else:
            self.replies += p
