"""Recommender: which online users could be mentioned under a post, and which one to offer.

Candidates are online users ranked by lexical similarity (cosine of TF-IDF vectors) between the
post and their interest profile, after the policy filter: not the author, not a bot, not
mentioned within the cooldown, shares a language, allowed by the audience policy (consent), and
has a known handle. Pickers decide what the bot is offered:

- ``llm``: the top-k; the model chooses one.
- ``similar``: the top-1, no model in the choice (control arm).
- ``random``: one uniformly random online user that passes the filter (control arm).
- ``noisy_oracle``: a planted arm for the simulation only. With probability ``quality`` the
  eligible online user who fits the post best by the simulated world's truth (the ``truth``
  hook the world sets), otherwise a uniformly random eligible one, so its true expected rate is
  a known mix of the oracle's and random's. Anywhere else (no hook) it raises ``ConfigError``.

The control arms make every model's score interpretable: an LLM that cannot beat ``similar``
adds nothing as a recommender.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from botsky.errors import ConfigError
from botsky.identity import Identity
from botsky.llm.reply import Candidate
from botsky.presence import Presence, Profile, tokenize, weigh

__all__ = ["PICKERS", "Offer", "Recommender", "TruthHook"]

TruthHook = Callable[[str, str, list[str]], list[float]]
"""(post URI, bot DID, candidate DIDs) → how well each candidate fits a mention by that bot
under that post, by the simulated world's truth (``World.fits``)."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What a picker offers the bot, and whether the model chooses among it."""

    candidates: tuple[Candidate, ...]
    model_chooses: bool


class Recommender:
    """Ranks online users for a post. Pure over the presence snapshot; no I/O."""

    STATE_VERSION: ClassVar[int] = 1  # of ``snapshot``'s value: bump when its keys change

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
        max_candidates: int = 256,
    ) -> None:
        self.presence = presence
        self.identity = identity
        self.top_k = top_k
        self.cooldown_us = int(cooldown_s * 1e6)
        self.require_shared_language = require_shared_language
        self.is_bot = is_bot
        # The consent hook: the audience policy says who may be mentioned at all.
        self.may_mention = may_mention
        # Users scored per post at most (see Presence.matches): on the whole network a
        # common word is shared by 10^5 online users; scoring them all took ~0.1 s a post with
        # 20k online users already (BENCHMARKS.md). Scoring costs about 5 µs a user.
        self.max_candidates = max_candidates
        self._last_mentioned: dict[str, int] = {}
        # Set by the simulation only (``noisy_oracle``): a real network has no truth to ask.
        self.truth: TruthHook | None = None

    def snapshot(self) -> dict[str, Any]:
        """``{"last_mentioned": {did: time_us}}``: the mention cooldowns (the rest is config)."""
        return {"last_mentioned": dict(self._last_mentioned)}

    def restore(self, state: dict[str, Any]) -> None:
        """Take the cooldowns of ``state`` (a ``snapshot``)."""
        self._last_mentioned = dict(state["last_mentioned"])

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
        # cooldown_s: 0 means none (a mention at this very stream time does not exclude).
        if last is not None and self.cooldown_us and last > self.presence.now_us - self.cooldown_us:
            return False
        if self.require_shared_language and langs and p.langs and not set(langs) & set(p.langs):
            return False
        return self.may_mention(p.did) and self.identity.handle(p.did) is not None

    def ranked(self, text: str, author: str, langs: tuple[str, ...]) -> list[tuple[float, Profile]]:
        """Eligible users sharing a term with the post, most similar first.

        ``offer`` uses ``_rank`` (no Profile for users nobody is offered); this whole ranking
        as Profiles stays for the tests of order and filter, and for reading a ranking by hand.
        """
        profile = self.presence.profile
        return [(sim, p) for sim, did in self._rank(text, author, langs) if (p := profile(did))]

    def _rank(self, text: str, author: str, langs: tuple[str, ...]) -> list[tuple[float, str]]:
        """``ranked`` as (similarity, DID): no Profile is built for users nobody is offered."""
        presence = self.presence
        vec = weigh(tokenize(text), presence.stats)
        online = presence.now_us - presence.window_us
        # cooldown_s: 0 means none, as in ``eligible``: not even a mention "after" the stream
        # clock (a restart reads the stream again from its mark, behind mentions it made).
        cutoff = presence.now_us - self.cooldown_us if self.cooldown_us else None
        last_mentioned = self._last_mentioned
        wanted = set(langs) if self.require_shared_language and langs else None
        is_bot, may_mention, handle = self.is_bot, self.may_mention, self.identity.handle

        def keep(did: str, last_us: int, theirs: tuple[str, ...]) -> bool:
            """``eligible``, on what the presence's columns hold instead of a Profile."""
            if did == author or last_us < online or is_bot(did):
                return False
            last = last_mentioned.get(did)
            if last is not None and cutoff is not None and last >= cutoff:
                return False
            if wanted is not None and theirs and not wanted.intersection(theirs):
                return False
            return may_mention(did) and handle(did) is not None

        scored = [m for m in presence.matches(vec, self.max_candidates, keep) if m[0] > 0]
        # Ties broken by recency, then DID, so the order is deterministic for a seed.
        scored.sort(key=lambda sld: (-sld[0], -sld[1], sld[2]))
        return [(sim, did) for sim, _, did in scored]

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
        self,
        picker: str,
        text: str,
        author: str,
        langs: tuple[str, ...],
        rng: random.Random,
        *,
        post_uri: str = "",
        bot_did: str = "",
        quality: float = 1.0,
    ) -> Offer:
        """What ``picker`` offers for this post; an empty offer means nobody fits.

        ``post_uri``, ``bot_did`` and ``quality`` are read by ``noisy_oracle`` only.
        """
        return PICKERS[picker](
            self,
            self._rank(text, author, langs),
            author,
            langs,
            rng,
            post_uri=post_uri,
            bot_did=bot_did,
            quality=quality,
        )


def _offered(rec: Recommender, ranked: list[tuple[float, str]]) -> list[tuple[float, Profile]]:
    profile = rec.presence.profile
    return [(s, p) for s, did in ranked if (p := profile(did)) is not None]


def _llm(rec: Recommender, ranked: list[tuple[float, str]], *_: object, **__: object) -> Offer:
    top = _offered(rec, ranked[: rec.top_k])
    return Offer(tuple(rec.candidate(p, i, s) for i, (s, p) in enumerate(top)), True)


def _similar(rec: Recommender, ranked: list[tuple[float, str]], *_: object, **__: object) -> Offer:
    top = _offered(rec, ranked[:1])
    if not top:
        return Offer((), False)
    s, p = top[0]
    return Offer((rec.candidate(p, 0, s),), False)


def _random(
    rec: Recommender,
    ranked: list[tuple[float, str]],
    author: str,
    langs: tuple[str, ...],
    rng: random.Random,
    **__: object,
) -> Offer:
    for _ in range(32):
        p = rec.presence.sample(rng)
        if p is None:
            break
        if rec.eligible(p, author, langs):
            # Its similarity rank is recorded like any other pick's; users that share no term
            # with the post all tie after the ranked ones.
            for i, (s, did) in enumerate(ranked):
                if did == p.did:
                    return Offer((rec.candidate(p, i, s),), False)
            return Offer((rec.candidate(p, len(ranked), 0.0),), False)
    return Offer((), False)


def _noisy_oracle(
    rec: Recommender,
    ranked: list[tuple[float, str]],
    author: str,
    langs: tuple[str, ...],
    rng: random.Random,
    *,
    post_uri: str,
    bot_did: str,
    quality: float,
) -> Offer:
    if rec.truth is None:
        raise ConfigError(
            "picker 'noisy_oracle' needs the simulated world's truth: it runs only under "
            "`botsky simulate`"
        )
    # Every eligible online user, most recently active first (a deterministic order).
    pool = [p for p in rec.presence.online() if rec.eligible(p, author, langs)]
    if not pool:
        return Offer((), False)
    # One draw decides, before anything else, so the arm's quality is exactly ``quality``.
    if rng.random() < quality:
        fits = rec.truth(post_uri, bot_did, [p.did for p in pool])
        p = pool[max(range(len(pool)), key=fits.__getitem__)]  # the first of equal fits
    else:
        p = pool[rng.randrange(len(pool))]
    for i, (s, did) in enumerate(ranked):
        if did == p.did:
            return Offer((rec.candidate(p, i, s),), False)
    return Offer((rec.candidate(p, len(ranked), 0.0),), False)


PICKERS: dict[str, Callable[..., Offer]] = {
    "llm": _llm,
    "similar": _similar,
    "random": _random,
    "noisy_oracle": _noisy_oracle,
}
