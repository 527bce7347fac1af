"""Behaviour engines: how simulated users write and decide.

- ``StochasticEngine`` (no model): posts are drawn from topic vocabularies; the probability of
  interacting with an item comes from how well it fits the reader's interests, their openness,
  activity and toxicity (civil users shy away from toxic authors; trolls engage with anything).
- ``LLMEngine``: the "Mock Threads" prompts through any ``botsky.llm`` Model: invent a user's
  hidden state, write a post, rate interaction probabilities while updating the hidden state
  (JSON), write a reply. The state it returns is merged and bounded (``state.merge_state``). Any
  failed or malformed call falls back to the stochastic engine for that step, so a flaky
  model slows nothing down and never stops the world.

Whether a user answers a bot's @-mention is not an engine decision: it is the world's ground
truth (``World.mention_probability``), identical under both engines, so the oracle is exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
import structlog

from botsky.errors import BotskyError
from botsky.llm.base import Model
from botsky.sim.state import DEFAULT_LIMITS, StateLimits, merge_state
from botsky.sim.topics import FILLER, TOPIC_NAMES, TOPICS, TOXIC

if TYPE_CHECKING:
    from botsky.sim.world import SimPost, SimUser

__all__ = ["Engine", "Item", "LLMEngine", "StochasticEngine", "main_topic", "post_topic"]

log = structlog.get_logger("botsky.sim")

_CIVIL_OPENERS = ("Love this", "So true", "Interesting", "Great point", "Agreed", "Nice")
_TOXIC_OPENERS = ("What nonsense", "Typical", "Wrong again", "Nobody asked", "Pathetic take")


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build
class Item:
    """Something a user reads at logon: ``kind`` is reply, feed or recent."""

    kind: str
    post: SimPost
    author_toxicity: float
    follows_author: bool


class Engine(Protocol):
    name: str

    async def init_state(self, user: SimUser, rng: random.Random) -> dict[str, Any]: ...

    async def write_post(self, user: SimUser, topic: int, rng: random.Random) -> str: ...

    async def rate(
        self, user: SimUser, items: list[Item], rng: random.Random
    ) -> tuple[list[float], dict[str, Any]]: ...

    async def write_reply(self, user: SimUser, post: SimPost, rng: random.Random) -> str: ...


def main_topic(topics: tuple[float, ...]) -> int:
    return max(range(len(topics)), key=lambda k: topics[k]) if topics else 0


# Word frequencies within a topic follow Zipf's law (the i-th word has weight 1/(i+1)), as in
# real text: the head words ("sourdough", "marathon") recur, so two people who care about a
# topic share words, and lexical similarity finds them.
# Cumulative, as ``choices`` would otherwise accumulate them on every call (same floats, so the
# same draws).
_ZIPF: Final = tuple(
    (TOPICS[name], tuple(accumulate(1.0 / (i + 1) for i in range(len(TOPICS[name])))))
    for name in TOPIC_NAMES
)


def _words(topic: int, n: int, rng: random.Random) -> list[str]:
    words, cum_weights = _ZIPF[topic]
    drawn = rng.choices(words, cum_weights=cum_weights, k=2 * n)
    return list(dict.fromkeys(drawn))[:n]


def post_topic(post: SimPost) -> int:
    """``main_topic(post.topics)``; the world precomputes it for single-topic posts."""
    return post.topic if post.topic >= 0 else main_topic(post.topics)


class StochasticEngine:
    """No model: vocabularies and formulas; fast and deterministic for a seed."""

    name = "stochastic"

    async def init_state(self, user: SimUser, rng: random.Random) -> dict[str, Any]:
        interests = {TOPIC_NAMES[k]: round(w, 3) for k, w in enumerate(user.interests) if w > 0.01}
        return {
            "persona": user.archetype,
            "mood": round(rng.uniform(0.4, 0.9), 3),
            "interests": interests,
            "facts": [f"joined on day {user.joined_day}"],
        }

    async def write_post(self, user: SimUser, topic: int, rng: random.Random) -> str:
        words = _words(topic, rng.randint(4, 6), rng) + rng.sample(FILLER, 3)
        # Asides on the user's other interests, as people make them ("... and the garden"):
        # over a few posts, their words cover everything the user cares about.
        for k, w in enumerate(user.interests):
            if w > 0 and k != topic:
                words += _words(k, 1, rng)
        if rng.random() < user.traits["toxicity"]:
            words.append(rng.choice(TOXIC))
        rng.shuffle(words)
        return " ".join(words).capitalize()

    async def rate(
        self, user: SimUser, items: list[Item], rng: random.Random
    ) -> tuple[list[float], dict[str, Any]]:
        t = user.traits
        activity, openness = t["activity"], t["openness"]
        civil, troll = t["toxicity"] < 0.5, t["toxicity"] > 0.5
        floor = 0.5 * activity
        probs: list[float] = []
        moods: list[float] = []
        seen: dict[str, float] = {}
        for item in items:
            post = item.post
            m = user.fit(post)
            m += openness * (1.0 - m) * 0.3  # open minds find off-topic posts interesting
            p = activity * m
            if civil and item.author_toxicity > 0.5:
                p *= 0.4
                moods.append(0.2)
            if troll:
                p = max(p, floor)  # trolls bite on anything
            if item.follows_author:
                p *= 1.3
            if item.kind == "reply":
                p = max(p, floor)  # people answer replies to their own posts
            probs.append(min(1.0, p))
            name = TOPIC_NAMES[post_topic(post)]
            seen[name] = seen.get(name, 0.0) + 1.0
            moods.append(0.5 + 0.5 * m)
        update: dict[str, Any] = {"recent_topics": seen}
        if moods:
            update["mood"] = sum(moods) / len(moods)
        return probs, update

    async def write_reply(self, user: SimUser, post: SimPost, rng: random.Random) -> str:
        toxic = rng.random() < user.traits["toxicity"]
        opener = rng.choice(_TOXIC_OPENERS if toxic else _CIVIL_OPENERS)
        # One word of the thread's topic and one of the replier's own: a reply says little
        # about what its author cares about, so it barely moves their interest profile.
        words = _words(post_topic(post), 1, rng) + _words(user.favourite, 1, rng)
        words += rng.sample(FILLER, 1)
        if toxic:
            words.append(rng.choice(TOXIC))
        return f"{opener}! " + " ".join(words)


_TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}
# The state travels as a JSON string: strict structured-output modes reject free-form objects.
_STATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"state": {"type": "string", "description": "the hidden state, a JSON object"}},
    "required": ["state"],
    "additionalProperties": False,
}
_RATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "probabilities": {"type": "array", "items": {"type": "number"}},
        "state": {"type": "string", "description": "the updated hidden state, a JSON object"},
    },
    "required": ["probabilities", "state"],
    "additionalProperties": False,
}
_SYSTEM = (
    "You simulate one user of a small social network (like Bluesky) for a research "
    "experiment. Stay in character. Your hidden state (JSON, never shown to others):\n{state}\n"
    "Answer with a single JSON object only."
)


def _state_of(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


class LLMEngine:
    """The seed's prompts through ``model``; see the module docstring."""

    name = "llm"

    def __init__(self, model: Model, *, limits: StateLimits = DEFAULT_LIMITS) -> None:
        self.model = model
        self.limits = limits
        self.fallback = StochasticEngine()
        self.calls = 0
        self.failures = 0

    async def _ask(
        self, user: SimUser, prompt: str, schema: dict[str, Any], name: str
    ) -> dict[str, Any] | None:
        self.calls += 1
        system = _SYSTEM.format(state=orjson.dumps(user.state).decode())
        try:
            done = await self.model.complete_json(
                system=system, user=prompt, schema=schema, schema_name=name
            )
        except BotskyError as exc:
            self.failures += 1
            log.warning("sim_llm_failed", task=name, error=str(exc)[:200])
            return None
        return done.data

    async def init_state(self, user: SimUser, rng: random.Random) -> dict[str, Any]:
        base = await self.fallback.init_state(user, rng)
        user.state = base
        topics = ", ".join(base["interests"])
        data = await self._ask(
            user,
            f"Invent this user's hidden state: personality traits, emotional state, important "
            f"facts, interests ({topics}). They are a '{user.archetype}' (toxicity "
            f"{user.traits['toxicity']:.1f} on a 0-1 scale). "
            'Answer {"state": "<the state as a JSON object, in a string>"}.',
            _STATE_SCHEMA,
            "sim_user_state",
        )
        state = _state_of((data or {}).get("state"))
        return merge_state(base, state, self.limits) if state else base

    async def write_post(self, user: SimUser, topic: int, rng: random.Random) -> str:
        data = await self._ask(
            user,
            f"Write a new post (at most 280 characters) about {TOPIC_NAMES[topic]}. "
            'Answer {"text": "..."}.',
            _TEXT_SCHEMA,
            "sim_post",
        )
        text = (data or {}).get("text")
        if isinstance(text, str) and text.strip():
            return text.strip()[:280]
        return await self.fallback.write_post(user, topic, rng)

    async def rate(
        self, user: SimUser, items: list[Item], rng: random.Random
    ) -> tuple[list[float], dict[str, Any]]:
        if not items:
            return [], {}
        listing = "\n".join(
            f"{i + 1}. [{item.kind}] {item.post.text[:280]}" for i, item in enumerate(items)
        )
        data = await self._ask(
            user,
            "You logged on and read these posts:\n<posts>\n"
            + listing
            + "\n</posts>\nFor each post, give the probability (0 to 1) that you interact "
            "with it, and update your hidden state (emotional state, facts, interests) after "
            'reading. Answer {"probabilities": [...], "state": "<JSON object in a string>"}.',
            _RATE_SCHEMA,
            "sim_rate",
        )
        probs = (data or {}).get("probabilities")
        state = _state_of((data or {}).get("state"))
        if (
            not isinstance(probs, list)
            or len(probs) != len(items)
            or not all(isinstance(p, int | float) and not isinstance(p, bool) for p in probs)
        ):
            return await self.fallback.rate(user, items, rng)
        return [min(1.0, max(0.0, float(p))) for p in probs], state or {}

    async def write_reply(self, user: SimUser, post: SimPost, rng: random.Random) -> str:
        data = await self._ask(
            user,
            f"Write a reply (at most 280 characters) to this post:\n<post>\n{post.text[:280]}\n"
            '</post>\nAnswer {"text": "..."}.',
            _TEXT_SCHEMA,
            "sim_reply",
        )
        text = (data or {}).get("text")
        if isinstance(text, str) and text.strip():
            return text.strip()[:280]
        return await self.fallback.write_reply(user, post, rng)
