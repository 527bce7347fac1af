"""What simulated users write: posts and replies as sentences, names, handles and bios.

Posts are sentences from templates with a few topic words in their slots ("Quick question:
anyone into lamination? I need tips on croissant and butter."), not bags of keywords. The
templates' own words ("tips", "weekend", "honestly") are shared by everyone, so they add the
noise real small talk adds to lexical similarity.

**Toxicity.** A toxic user's insults are made of ordinary words that civil users write too
("Wrong again, as usual.", "Honestly, nobody asked."): every word of them also occurs in the
civil templates. Their document frequency is therefore high, their IDF low, and they cannot
become a toxic user's top terms (the "interests" a recommender shows a bot) the way a rare insult
word would; topic words, which a user repeats and few others share, stay on top. The recommender
still sees the insults (they are public text): it is simply not fooled into calling them
interests. ``tests/test_sim_world.py`` checks both properties.

Nothing here reveals hidden state: names, handles and bios are drawn without reference to a
user's archetype or traits (a bio names interests in the user's own words, as real bios do).
"""

from __future__ import annotations

import random
from typing import Final

from botsky.sim.topics import REGISTERS, TOPIC_NAMES, register_words

__all__ = [
    "CIVIL_OPENERS",
    "CORES",
    "OPENERS",
    "TEMPLATES",
    "TOXIC_PHRASES",
    "bio",
    "display_name",
    "handle_stem",
    "post_text",
    "reply_text",
    "words",
]

# A post is an opener and a core sentence; {a}, {b} and {c} are topic words ({B}: capitalized).
# The openers' and cores' words are few and each recurs in many posts, as small talk does:
# they add noise to lexical similarity without drowning the topic words. Every word of
# TOXIC_PHRASES occurs here too.
OPENERS: Final = (
    "",
    "",
    "Today:",
    "This week:",
    "Honestly,",
    "Good morning!",
    "Late night:",
    "New to this, but",
)
CORES: Final = (
    "{a} and {b}, then {c}.",
    "trying {a} with {b} and {c}.",
    "{a} is the best part of {b}.",
    "more {a}, less {b}. {C} today.",
    "anyone into {a}? I need tips on {b} and {c}.",
    "{a} went wrong, {b} went right. {C} next.",
    "is {a} better than {b}? Asking people who know.",
    "my {a} finally works. {B} and {c} next.",
    "nothing beats {a} with {b}.",
    "I love {a}, but {b} and {c} take time.",
    "{a}, always {a}. And some {b}.",
    "nobody told me about {a} and {c}.",
    "{a} needs more {b}, clearly.",
    "{a} was a terrible idea, {b} a good one.",
    "never thought I'd love {a} this much. {B} too.",
    "some {a}, some {b}, more {c}.",
    "all about {a} and {b} today.",
)
TEMPLATES: Final = tuple(
    (f"{o} {c}" if o else c[0].upper() + c[1:]) for o in OPENERS for c in CORES
)
# Insults from ordinary words (see the module docstring).
TOXIC_PHRASES: Final = (
    "Wrong again.",
    "Nobody needs this.",
    "What a terrible idea.",
    "You have no idea.",
    "Some people never get it.",
    "Clearly you know nothing.",
    "Honestly, people...",
)
CIVIL_OPENERS: Final = (
    "Love this!",
    "So true.",
    "Agreed!",
    "Same here!",
    "Nice.",
    "Yes!",
    "Good one.",
    "This is great.",
)
# A reply's line: {a} and {b} are words of the thread's topic, in the replier's register.
_REPLIES: Final = (
    "Have you tried {a}?",
    "{A} and {b}, yes.",
    "What about {a}?",
    "Same with my {a}.",
    "Try {a} with {b}.",
    "{A} is the best.",
    "All about {a} here.",
)


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST: Final = _split(
    "ada alex amara ana ben bea cam carmen dara dev eli emil esme fin gus hana ines ivan jae "
    "jo kai kemi lars lea leo lina luca maya mei milo nia noor omar oona pia raf rhea rosa "
    "sam sana theo tove una vera wen yara yusuf zoe"
)
_LAST: Final = _split(
    "abara achterberg baptiste bianchi castillo dahl delacroix eriksen fontaine garcia haddad "
    "hale ishikawa jensen kaur kowalski lindqvist marsh mbeki moreau nakamura novak okafor "
    "oliveira park petrov quinn reyes rossi sato silva tanaka thorne ueda varga walsh weber "
    "yilmaz zhou"
)
_BIO_FORMS: Final = (
    "{a}, {b} and too much coffee.",
    "Mostly {a}. Sometimes {b}.",
    "{a} on weekends, {b} whenever I can.",
    "Here for {a} talk.",
    "{a} | {b} | opinions my own",
    "",
)


def words(topic: int, register: int, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct words of one register of ``topic``, Zipf-weighted."""
    vocab, cum = register_words(topic, register)
    drawn = rng.choices(vocab, cum_weights=cum, k=2 * n)
    return list(dict.fromkeys(drawn))[:n]


def _topic_words(topic: int, register: int, n: int, rng: random.Random) -> list[str]:
    # One word in six comes from another register of the topic (people borrow words).
    out: list[str] = []
    for w in words(topic, register, n, rng):
        if rng.random() < 0.16:
            w = words(topic, rng.randrange(REGISTERS), 1, rng)[0]
        out.append(w)
    return out


def post_text(
    topic: int,
    register: int,
    aside: tuple[int, int] | None,
    toxic: bool,
    rng: random.Random,
) -> str:
    """A post on ``topic`` in the writer's ``register``; ``aside`` (topic, register) adds a
    sentence on another interest; ``toxic`` adds an insult."""
    a, b, c = _three(topic, register, rng)
    opener, core = rng.choice(OPENERS), rng.choice(CORES)
    text = core.format(a=a, b=b, c=c, B=b.capitalize(), C=c.capitalize())
    text = f"{opener} {text}" if opener else text[0].upper() + text[1:]
    if aside is not None:
        (x,) = _topic_words(aside[0], aside[1], 1, rng)
        text += f" Also {x}."
    if toxic:
        text += " " + rng.choice(TOXIC_PHRASES)
    return text


def _three(topic: int, register: int, rng: random.Random) -> tuple[str, str, str]:
    got = _topic_words(topic, register, 3, rng)
    while len(got) < 3:
        got.append(got[-1])
    return got[0], got[1], got[2]


def reply_text(topic: int, register: int, toxic: bool, rng: random.Random) -> str:
    """A short reply on ``topic``: an opener (civil, or an insult) and a line on the topic (an
    insult too is about something)."""
    a, b, _ = _three(topic, register, rng)
    opener = rng.choice(TOXIC_PHRASES if toxic else CIVIL_OPENERS)
    line = rng.choice(_REPLIES)
    return f"{opener} " + line.format(a=a, b=b, A=a.capitalize())


def handle_stem(rng: random.Random) -> str:
    """A name-like handle prefix ("lea-okafor"); the world makes it unique."""
    return f"{rng.choice(_FIRST)}-{rng.choice(_LAST)}"


def display_name(stem: str) -> str:
    return " ".join(part.capitalize() for part in stem.split("-"))


def bio(interests: tuple[float, ...], registers: tuple[int, ...], rng: random.Random) -> str:
    """A profile description naming the user's two main interests in their own words."""
    top = sorted(range(len(interests)), key=lambda k: -interests[k])[:2]
    form = rng.choice(_BIO_FORMS)
    if not form:
        return ""
    a, b = (words(k, registers[k], 1, rng)[0] for k in (top[0], top[-1]))
    if a == b:
        b = TOPIC_NAMES[top[-1]]
    return form.format(a=a.capitalize() if form.startswith("{a}") else a, b=b)
