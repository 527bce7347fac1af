"""Topic vocabularies: what simulated users talk about, so lexical similarity means something.

Each topic has its own words; posts draw most words from one topic and a few from a shared
filler list. The fillers give every pair of users some overlap (as real small talk does), so
the recommender ranks nearly every online user, and the topic words decide who ranks first.
"""

from __future__ import annotations

from operator import mul
from typing import Final

__all__ = ["FILLER", "TOPICS", "TOPIC_NAMES", "TOXIC", "fit"]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


TOPICS: Final[dict[str, tuple[str, ...]]] = {
    "baking": _words(
        "sourdough starter flour dough oven crust loaf yeast proofing bakery croissant butter "
        "pastry knead rye baguette crumb levain scones brioche"
    ),
    "running": _words(
        "marathon trail pace tempo intervals mileage sneakers stride splits halfmarathon "
        "hillrepeats racebib taper longrun parkrun ultra fartlek cadence finishline"
    ),
    "chess": _words(
        "opening gambit sicilian endgame rook bishop knight checkmate blitz elo tactics "
        "castling pawn grandmaster stalemate queen lichess puzzle"
    ),
    "astronomy": _words(
        "telescope nebula galaxy eclipse meteor jupiter saturn rings comet exoplanet "
        "observatory stargazing orion andromeda astrophotography aurora supernova"
    ),
    "gardening": _words(
        "tomatoes seedlings compost mulch raised beds pruning perennials roses soil "
        "greenhouse harvest zucchini herbs weeding bulbs orchard pollinators"
    ),
    "programming": _words(
        "python rust compiler refactor debugging async kernel database framework "
        "typescript repository pullrequest linter benchmark api deploy regex"
    ),
    "music": _words(
        "guitar synth vinyl album chords drummer setlist concert bassline jazz choir "
        "melody songwriting playlist amplifier orchestra riff"
    ),
    "cinema": _words(
        "director screenplay festival trailer cinematography sequel noir documentary "
        "premiere oscars actor soundtrack arthouse criterion editing remake"
    ),
    "birding": _words(
        "warbler heron binoculars migration raptor owl sparrow kingfisher wetland "
        "birdsong ebird plumage nesting falcon finch hummingbird"
    ),
    "climbing": _words(
        "bouldering crag belay carabiner chalk overhang crimp topo sendtrain rappel "
        "harness quickdraw multipitch boulderproblem gym dyno"
    ),
    "knitting": _words(
        "yarn sweater needles wool stitches purl cardigan pattern skein mohair "
        "cableknit mittens scarf fairisle gauge blocking"
    ),
    "football": _words(
        "striker goalkeeper penalty midfield derby league transfer offside formation "
        "stadium kickoff matchday header freekick relegation"
    ),
}

TOPIC_NAMES: Final[tuple[str, ...]] = tuple(TOPICS)

# Shared small talk (not in presence's stopword list, so it really is shared vocabulary).
FILLER: Final[tuple[str, ...]] = _words(
    "today week morning thinking people friends favorite feeling"
)

# Words an "incredibly toxic" persona sprinkles in.
TOXIC: Final[tuple[str, ...]] = _words(
    "idiots pathetic clowns garbage morons trash nonsense losers clueless"
)


def fit(interests: tuple[float, ...], topics: tuple[float, ...]) -> float:
    """How well content on ``topics`` fits a user's ``interests``, in [0, 1].

    1 means the content is entirely about the user's favourite topic; 0 that it touches none of
    their topics. Both vectors are topic weights summing to 1.
    """
    top = max(interests, default=0.0)
    if top <= 0:
        return 0.0
    # map(mul) adds the same products in the same order as a generator, three times faster.
    return min(1.0, sum(map(mul, interests, topics)) / top)
