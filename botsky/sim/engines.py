"""Behaviour engines: how simulated users write, read and feel.

- ``StochasticEngine`` (no model): posts and replies are sentences from templates in the
  writer's own register of each topic (``text``); the probability of interacting with an item
  comes from how well it fits the reader's interests, their openness, activity and toxicity
  (civil users shy away from toxic authors; trolls engage with anything), and for a bot's reply
  to the reader's post, from how well the person it recommends suits the thread.
- ``LLMEngine``: the "Mock Threads" prompts through any ``botsky.llm`` Model: the model invents a
  new user's hidden state in whatever schema it likes, writes posts and replies, and rates what
  the user reads while rewriting the state (JSON) and giving their mood. The state is merged and
  bounded (``state.merge_state``). Any failed or malformed call falls back to the stochastic
  engine for that step, so a flaky model slows nothing down and never stops the world.

Whether a user answers a bot's @-mention is not an engine decision: it is the world's ground
truth (``World.answer_probability``), identical under both engines, so the oracle is exact. The
engine moves it only through the user's mood.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog

from botsky.errors import BotskyError
from botsky.llm.base import Model
from botsky.sim.state import DEFAULT_LIMITS, StateLimits, merge_state
from botsky.sim.text import post_text, reply_text
from botsky.sim.topics import TOPIC_NAMES

if TYPE_CHECKING:
    from botsky.sim.world import SimPost, SimUser

__all__ = ["Engine", "Item", "LLMEngine", "Rated", "StochasticEngine", "main_topic", "post_topic"]

log = structlog.get_logger("botsky.sim")


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build
class Item:
    """Something a user reads at logon: ``kind`` is reply, feed, recent or botsky_feed.

    ``suggestion`` is set for a bot's reply: how well the user it mentions suits the thread
    (their hidden fit, in [0, 1]); -1 otherwise. ``position``: its place on a page of botsky's
    feed (0 first), -1 for anything else.
    """

    kind: str
    post: SimPost
    author_toxicity: float
    follows_author: bool
    suggestion: float = -1.0
    position: int = -1


Rated = tuple[list[float], dict[str, Any], float | None]
"""What ``Engine.rate`` returns: per-item interaction probabilities, a hidden-state update and
the reader's mood after reading (0 awful .. 1 great; None: unchanged)."""


class Engine(Protocol):
    name: str

    async def init_state(self, user: SimUser, rng: random.Random) -> dict[str, Any]: ...

    async def write_post(self, user: SimUser, topic: int, rng: random.Random) -> str: ...

    async def rate(self, user: SimUser, items: list[Item], rng: random.Random) -> Rated: ...

    async def write_reply(self, user: SimUser, post: SimPost, rng: random.Random) -> str: ...


def main_topic(topics: tuple[float, ...]) -> int:
    return max(range(len(topics)), key=lambda k: topics[k]) if topics else 0


def post_topic(post: SimPost) -> int:
    """``main_topic(post.topics)``; the world precomputes it for single-topic posts."""
    return post.topic if post.topic >= 0 else main_topic(post.topics)


class StochasticEngine:
    """No model: templates and formulas; fast and deterministic for a seed."""

    name = "stochastic"

    async def init_state(self, user: SimUser, rng: random.Random) -> dict[str, Any]:
        interests = {TOPIC_NAMES[k]: round(w, 3) for k, w in enumerate(user.interests) if w > 0.01}
        return {
            "persona": user.archetype,
            "interests": interests,
            "facts": [f"joined on day {user.joined_day}"],
        }

    async def write_post(self, user: SimUser, topic: int, rng: random.Random) -> str:
        aside = None
        # An aside on another interest now and then ("... Also dahlias."): over a few posts,
        # a user's words cover what they care about.
        if rng.random() < 0.3:
            k = rng.choices(range(len(user.interests)), cum_weights=user.cum_interests)[0]
            if k != topic:
                aside = (k, user.registers[k])
        toxic = rng.random() < 0.6 * user.traits["toxicity"]
        return post_text(topic, user.registers[topic], aside, toxic, rng)

    async def rate(self, user: SimUser, items: list[Item], rng: random.Random) -> Rated:
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
            if item.suggestion >= 0:
                # A bot's reply is worth a like when the person it brings in suits the thread.
                p *= 0.4 + 0.6 * item.suggestion
            probs.append(min(1.0, p))
            name = TOPIC_NAMES[post_topic(post)]
            seen[name] = seen.get(name, 0.0) + 1.0
            moods.append(0.5 + 0.5 * m)
        # What the user read lately, kept in place: a map of at most one entry per topic that
        # fades like merge_state's numbers (which would cost ~0.15 ms a logon to get there).
        recent = user.state.get("recent_topics")
        if not isinstance(recent, dict):
            recent = user.state["recent_topics"] = {}
        for name in recent:
            recent[name] = round(recent[name] * 0.8, 4)
        for name, n in seen.items():
            recent[name] = round(recent.get(name, 0.0) + 0.2 * n, 4)
        return probs, {}, sum(moods) / len(moods) if moods else None

    async def write_reply(self, user: SimUser, post: SimPost, rng: random.Random) -> str:
        topic = post_topic(post)
        toxic = rng.random() < user.traits["toxicity"]
        return reply_text(topic, user.registers[topic], toxic, rng)


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
        "mood": {"type": "number", "description": "your mood now, 0 (awful) to 1 (great)"},
    },
    "required": ["probabilities", "state", "mood"],
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


def _level(x: float) -> str:
    return "very low" if x < 0.15 else "low" if x < 0.4 else "moderate" if x < 0.7 else "high"


def _describe(user: SimUser) -> str:
    """The user's hidden traits in words, for the model that plays them (never for bots)."""
    cares = sorted(
        ((w, TOPIC_NAMES[k]) for k, w in enumerate(user.interests) if w > 0.01), reverse=True
    )
    interests = ", ".join(f"{name} ({w:.0%})" for w, name in cares)
    t = user.traits
    return (
        f"Archetype: {user.archetype}. Interests, by weight: {interests}. Activity "
        f"{_level(t['activity'])}, replies {_level(t['reply'])}, likes {_level(t['like'])}, "
        f"answers when mentioned {_level(t['responsiveness'])}, toxicity "
        f"{t['toxicity']:.1f} on a 0-1 scale, open to other topics {_level(t['openness'])}."
    )


class LLMEngine:
    """The seed's prompts through ``model``; see the module docstring.

    ``model`` plays the users, so it must not be a model under test (``simulate`` checks it).
    """

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
        """The model's own state for a new user, in whatever schema it chooses (bounded by the
        world); the stochastic engine's if the model gives none."""
        user.state = {}
        data = await self._ask(
            user,
            "A new user joins. Invent their hidden state: whatever you need to play them "
            "consistently (personality, emotional state, important facts, how they talk), as a "
            f"JSON object of your own design. Who they are: {_describe(user)} "
            'Answer {"state": "<the state as a JSON object, in a string>"}.',
            _STATE_SCHEMA,
            "sim_user_state",
        )
        state = _state_of((data or {}).get("state"))
        if state:
            return merge_state({}, state, self.limits)
        return await self.fallback.init_state(user, rng)

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

    async def rate(self, user: SimUser, items: list[Item], rng: random.Random) -> Rated:
        if not items:
            return [], {}, None
        listing = "\n".join(
            f"{i + 1}. [{item.kind}] {item.post.text[:280]}" for i, item in enumerate(items)
        )
        data = await self._ask(
            user,
            "You logged on and read these posts:\n<posts>\n"
            + listing
            + "\n</posts>\nFor each post, give the probability (0 to 1) that you interact "
            "with it, rewrite your hidden state after reading (keep it short: it is cut to a "
            "few kilobytes), and say how you feel now. "
            'Answer {"probabilities": [...], "state": "<JSON object in a string>", "mood": 0.5}.',
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
        mood = (data or {}).get("mood")
        feel = (
            min(1.0, max(0.0, float(mood)))
            if isinstance(mood, int | float) and not isinstance(mood, bool)
            else None
        )
        return [min(1.0, max(0.0, float(p))) for p in probs], state or {}, feel

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
