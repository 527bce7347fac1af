"""Recommender: which online users could be mentioned under a post, and which one to offer.

Candidates are online users ranked by lexical similarity (cosine of TF-IDF vectors) between the
post and their interest profile, after the policy filter: not the author, not a bot, not
mentioned within the cooldown, shares a language, allowed by the audience policy (consent), and
has a known handle. Pickers decide what the bot is offered:

- ``llm``: the top-k; the model chooses one.
- ``similar``: the top-1, no model in the choice (control arm).
- ``random``: one uniformly random online user that passes the filter (control arm).

The control arms make every model's score interpretable: an LLM that cannot beat ``similar``
adds nothing as a recommender.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from botsky.identity import Identity
from botsky.llm.reply import Candidate
from botsky.presence import Presence, Profile, tokenize, weigh

__all__ = ["PICKERS", "Offer", "Recommender"]


@dataclass(frozen=True, slots=True)
class Offer:
    """What a picker offers the bot, and whether the model chooses among it."""

    candidates: tuple[Candidate, ...]
    model_chooses: bool


class Recommender:
    """Ranks online users for a post. Pure over the presence snapshot; no I/O."""

    def __init__(
        self,
        presence: Presence,
        identity: Identity,
        *,
        top_k: int = 8,
        cooldown_s: float = 86_400.0,
        require_shared_language: bool = True,
        is_bot: Callable[[str], bool] = lambda did: False,
        may_mention: Callable[[str], bool] = lambda did: True,
    ) -> None:
        self.presence = presence
        self.identity = identity
        self.top_k = top_k
        self.cooldown_us = int(cooldown_s * 1e6)
        self.require_shared_language = require_shared_language
        self.is_bot = is_bot
        # The consent hook: the audience policy says who may be mentioned at all.
        self.may_mention = may_mention
        self._last_mentioned: dict[str, int] = {}

    def note_mentioned(self, did: str, time_us: int) -> None:
        """Start the cooldown for ``did`` (called for every recorded mention)."""
        self._last_mentioned[did] = max(time_us, self._last_mentioned.get(did, 0))
        if len(self._last_mentioned) > 4 * max(1, len(self.presence)) + 1024:
            cutoff = self.presence.now_us - self.cooldown_us
            self._last_mentioned = {d: t for d, t in self._last_mentioned.items() if t >= cutoff}

    def eligible(self, p: Profile, author: str, langs: tuple[str, ...]) -> bool:
        """The candidate filter (policy, cooldown, language, identity)."""
        if p.did == author or self.is_bot(p.did) or not self.presence.is_online(p.did):
            return False
        last = self._last_mentioned.get(p.did)
        if last is not None and last >= self.presence.now_us - self.cooldown_us:
            return False
        if self.require_shared_language and langs and p.langs and not set(langs) & set(p.langs):
            return False
        return self.may_mention(p.did) and self.identity.handle(p.did) is not None

    def ranked(self, text: str, author: str, langs: tuple[str, ...]) -> list[tuple[float, Profile]]:
        """Eligible users sharing a term with the post, most similar first."""
        vec = weigh(tokenize(text), self.presence.stats)
        scored: list[tuple[float, Profile]] = []
        for did in self.presence.users_sharing(vec):
            p = self.presence.profile(did)
            if p is None or not self.eligible(p, author, langs):
                continue
            sim = sum(w * p.terms.get(t, 0.0) for t, w in vec.items())
            if sim > 0:
                scored.append((sim, p))
        # Ties broken by recency, then DID, so the order is deterministic for a seed.
        scored.sort(key=lambda sp: (-sp[0], -sp[1].last_us, sp[1].did))
        return scored

    def candidate(self, p: Profile, rank: int, score: float) -> Candidate:
        handle = self.identity.handle(p.did) or ""
        minutes = max(0.0, (self.presence.now_us - p.last_us) / 60e6)
        interests = ", ".join(p.top_terms(5))
        return Candidate(
            did=p.did,
            handle=handle,
            interests=interests,
            minutes_active=round(minutes, 1),
            rank=rank,
            score=round(score, 4),
        )

    def offer(
        self, picker: str, text: str, author: str, langs: tuple[str, ...], rng: random.Random
    ) -> Offer:
        """What ``picker`` offers for this post; an empty offer means nobody fits."""
        return PICKERS[picker](self, self.ranked(text, author, langs), author, langs, rng)


def _llm(rec: Recommender, ranked: list[tuple[float, Profile]], *_: object) -> Offer:
    top = ranked[: rec.top_k]
    return Offer(tuple(rec.candidate(p, i, s) for i, (s, p) in enumerate(top)), True)


def _similar(rec: Recommender, ranked: list[tuple[float, Profile]], *_: object) -> Offer:
    if not ranked:
        return Offer((), False)
    s, p = ranked[0]
    return Offer((rec.candidate(p, 0, s),), False)


def _random(
    rec: Recommender,
    ranked: list[tuple[float, Profile]],
    author: str,
    langs: tuple[str, ...],
    rng: random.Random,
) -> Offer:
    for _ in range(32):
        p = rec.presence.sample(rng)
        if p is None:
            break
        if rec.eligible(p, author, langs):
            # Its similarity rank is recorded like any other pick's; users that share no term
            # with the post all tie after the ranked ones.
            for i, (s, q) in enumerate(ranked):
                if q.did == p.did:
                    return Offer((rec.candidate(p, i, s),), False)
            return Offer((rec.candidate(p, len(ranked), 0.0),), False)
    return Offer((), False)


PICKERS: dict[str, Callable[..., Offer]] = {"llm": _llm, "similar": _similar, "random": _random}
