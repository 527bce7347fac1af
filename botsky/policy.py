"""Audience policy: consent decides whom botsky may answer and whom it may mention.

Bluesky's developer guidelines forbid unsolicited automated replies and mentions, so the
default is ``opt_in``: a user opts in by following a bot, by mentioning a bot in a post, or by
being on the configured allow list. ``open`` answers anyone and is only for networks you
operate (configuration requires an explicit acknowledgement). In every mode an opt-out wins:
blocking any bot opts a user out permanently (recorded in the ledger by the app).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from botsky.events import BLOCK, FOLLOW, POST, Event, PostRef

__all__ = ["AudiencePolicy"]


class AudiencePolicy:
    """Consent decisions. ``observe`` returns the DID that just opted out, if any."""

    def __init__(
        self,
        *,
        mode: str = "opt_in",
        bot_dids: Iterable[str] = (),
        allow_list: Iterable[str] = (),
        opted_out: Iterable[str] = (),
        handle_of: Callable[[str], str | None] = lambda did: None,
    ) -> None:
        if mode not in ("opt_in", "open"):
            raise ValueError(f"unknown audience mode {mode!r}")
        self.mode = mode
        self.bot_dids = frozenset(bot_dids)
        # The allow list may name DIDs or handles; handles are checked through identity.
        allowed = [a.strip().lower() for a in allow_list]
        self.opted_in: set[str] = {a for a in allowed if a.startswith("did:")}
        self.allowed_handles = frozenset(a.lstrip("@") for a in allowed if not a.startswith("did:"))
        self.handle_of = handle_of
        self.opted_out: set[str] = set(opted_out)

    def may_answer(self, did: str) -> bool:
        return self._consents(did)

    def may_mention(self, did: str) -> bool:
        return self._consents(did)

    def _consents(self, did: str) -> bool:
        if did in self.opted_out or did in self.bot_dids:
            return False
        if self.mode == "open" or did in self.opted_in:
            return True
        return bool(self.allowed_handles) and self.handle_of(did) in self.allowed_handles

    def observe(self, event: Event) -> str | None:
        """Learn opt-ins (follow or mention of a bot) and opt-outs (block of a bot)."""
        if event.kind != "commit" or event.operation != "create":
            return None
        if event.collection == BLOCK and event.subject_did() in self.bot_dids:
            if event.did not in self.opted_out:
                self.opted_out.add(event.did)
                return event.did
            return None
        if (event.collection == FOLLOW and event.subject_did() in self.bot_dids) or (
            event.collection == POST
            and any(d in self.bot_dids for d in PostRef.of(event.record).mention_dids)
        ):
            self.opted_in.add(event.did)
        return None
