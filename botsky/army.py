"""The bot army: personas on models with their own accounts, assigned to posts at random.

``pick`` draws a bot by weight from a seeded RNG among the bots that speak the post's language,
and logs the draw: each model's score then comes from a randomized assignment, so differences
between models are not explained by which posts they got.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from botsky.llm.base import Model

__all__ = ["Army", "Bot"]

log = structlog.get_logger("botsky.army")


@dataclass(frozen=True, slots=True)
class Bot:
    """One persona on one model with one account; ``picker`` chooses whom it mentions."""

    name: str
    persona: str
    model: Model
    picker: str
    handle: str
    did: str
    weight: float = 1.0
    languages: tuple[str, ...] = ()
    quality: float = 1.0  # picker noisy_oracle only (the simulation's planted arms)

    @property
    def model_name(self) -> str:
        return self.model.model

    @property
    def provider(self) -> str:
        return self.model.provider

    def speaks(self, langs: Sequence[str]) -> bool:
        # A post without langs, or a bot without languages, is not filtered out.
        return not langs or not self.languages or bool(set(langs) & set(self.languages))


class Army:
    """The bots and the seeded RNG that assigns them to posts."""

    STATE_VERSION: ClassVar[int] = 1  # of ``snapshot``'s value: bump when its keys change

    def __init__(self, bots: Sequence[Bot], rng: random.Random) -> None:
        if not bots:
            raise ValueError("an army needs at least one bot")
        self.bots = tuple(bots)
        self.rng = rng
        self.dids = frozenset(b.did for b in self.bots)
        self._by_did = {b.did: b for b in self.bots}

    def snapshot(self) -> dict[str, Any]:
        """``{"rng": ...}``: the assignment RNG's state (the bots are configuration)."""
        return {"rng": self.rng.getstate()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue the assignments from ``state`` (a ``snapshot``)."""
        self.rng.setstate(state["rng"])

    def replace_models(self, models: Mapping[str, Model]) -> None:
        """Put the named bots on other models (same personas, accounts and weights).

        In place, since the dispatcher holds this army: the simulation's tests script bots
        with a ``FakeModel`` this way. A name that is no bot of the army is an error.
        """
        unknown = set(models) - {b.name for b in self.bots}
        if unknown:
            raise ValueError(f"no bot named {', '.join(sorted(unknown))} in the army")
        self.bots = tuple(
            dataclasses.replace(b, model=models[b.name]) if b.name in models else b
            for b in self.bots
        )
        self._by_did = {b.did: b for b in self.bots}

    def is_bot(self, did: str) -> bool:
        return did in self.dids

    def by_did(self, did: str) -> Bot | None:
        return self._by_did.get(did)

    def pick(
        self,
        post_uri: str,
        langs: Sequence[str] = (),
        among: Callable[[Bot], bool] | None = None,
    ) -> Bot | None:
        """Draw a bot for ``post_uri`` by weight; None when no bot speaks the language.

        ``among`` limits the draw (a re-draw among the bots that are not paused); the weights
        of the bots left keep their proportions.
        """
        eligible = [b for b in self.bots if b.speaks(langs) and (among is None or among(b))]
        if not eligible:
            return None
        bot = self.rng.choices(eligible, weights=[b.weight for b in eligible], k=1)[0]
        log.debug("bot_assigned", post=post_uri, bot=bot.name, model=bot.model_name)
        return bot
