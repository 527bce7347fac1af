"""Topics and their vocabularies: what simulated users talk about, in more than one way.

Every topic has three *registers*, the words of one corner of it (baking: home bread, pastry,
casual cakes), so two people who care about the same topic need not share a word. Each user
speaks one register per topic (drawn when they join) and borrows from the topic's other
registers now and then; a few words belong to two topics at once ("pitch", "score", "stars",
"route"), as real words do. Lexical similarity therefore finds people who *write* alike, which
is a good but imperfect proxy for who *cares* about a thread: that is what makes recommending a
real task here (the hidden interests, not the words, decide who answers).

Within a register, word frequencies follow Zipf's law (the i-th word has weight 1/(i+1)), as in
real text: the head words recur, so people who write alike share words.
"""

from __future__ import annotations

from itertools import accumulate
from operator import mul
from typing import Final

__all__ = ["REGISTERS", "TOPICS", "TOPIC_NAMES", "fit", "register_words"]


def _r(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# topic -> its registers, each a tuple of words, most frequent first. Words shared by two
# topics on purpose: pitch, score, stars, route, project, mount, season, opening, rating,
# pipeline, cluster, cast, scales, record.
TOPICS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "baking": (
        _r("sourdough loaf starter crust crumb levain proofing banneton rye scoring"),
        _r("croissant butter lamination brioche pastry ganache choux tempering macarons glaze"),
        _r("cookies cake brownies frosting cupcakes muffins oven recipe sprinkles pancakes"),
    ),
    "running": (
        _r("marathon pace tempo intervals splits taper racebib stopwatch halfmarathon record"),
        _r("trail ultra elevation switchbacks headlamp singletrack descent mud vest route"),
        _r("jogging sneakers treadmill parkrun stretching cardio shins couchto5k steps sweat"),
    ),
    "chess": (
        _r("opening sicilian gambit najdorf repertoire catalan dragon theory novelty tabiya"),
        _r("blitz bullet lichess rating puzzles premove streak tilt arena elo"),
        _r("endgame rook pawn bishop knight zugzwang stalemate fortress checkmate opposition"),
    ),
    "astronomy": (
        _r("telescope eyepiece nebula galaxy stargazing darksky binoculars messier seeing stars"),
        _r("astrophotography exposure stacking guiding mount narrowband subframes pipeline sensor"),
        _r("exoplanet jwst redshift supernova launch rocket orbit blackhole cosmology cluster"),
    ),
    "gardening": (
        _r("tomatoes seedlings zucchini compost beans harvest potatoes garlic kale season"),
        _r("roses perennials pruning bulbs dahlias borders hedges peonies lavender hydrangeas"),
        _r("monstera pothos repotting propagation humidity succulents fern cuttings terracotta"),
    ),
    "programming": (
        _r("rust compiler kernel allocator linker concurrency segfault assembly borrow cluster"),
        _r("typescript react frontend css javascript framework deploy npm webpack api"),
        _r("python pandas notebook dataframe regression dataset jupyter numpy plotting pipeline"),
    ),
    "music": (
        _r("guitar chords riff fretboard bassline amp pedalboard drummer capo scales"),
        _r("vinyl album turntable playlist tracklist reissue discography headphones record pitch"),
        _r("choir orchestra symphony concerto rehearsal conductor sonata soprano cello score"),
    ),
    "cinema": (
        _r("arthouse criterion auteur cinematography director festival retrospective subtitles"),
        _r("sequel trailer franchise superhero boxoffice premiere popcorn imax spoilers stars"),
        _r("screenplay editing storyboard dialogue montage soundtrack casting cast opening rating"),
    ),
    "birding": (
        _r(
            "warbler migration heron sparrow wetland flycatcher shorebirds estuary lifer binoculars"
        ),
        _r("feeder finches chickadee suet birdbath robin cardinal nestbox titmouse wrens"),
        _r("raptor falcon osprey owl hawk telephoto eagle kestrel harrier buzzard"),
    ),
    "climbing": (
        _r("bouldering crimp dyno chalk pads overhang sloper heelhook gym project"),
        _r("trad multipitch belay cams rappel anchors alpine ridge harness approach"),
        _r("quickdraws redpoint onsight crag bolts beta whipper grade lead route"),
    ),
    "knitting": (
        _r("sweater cardigan yoke raglan gauge swatch colorwork fairisle cables sleeves"),
        _r("yarn skein wool mohair merino alpaca handdyed fiber spinning roving"),
        _r("socks mittens scarf crochet amigurumi stitches purl needles cast project"),
    ),
    "football": (
        _r("formation pressing midfield fullback striker possession counterattack lineup xg"),
        _r("derby matchday stadium chants away ticket kit relegation season score"),
        _r("transfer signing loan contract rumours medical fee deadline agent pitch"),
    ),
}

TOPIC_NAMES: Final[tuple[str, ...]] = tuple(TOPICS)
REGISTERS: Final = 3  # registers per topic


def _zipf(words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    # Cumulative weights, as ``random.choices`` would otherwise accumulate them on every call.
    return words, tuple(accumulate(1.0 / (i + 1) for i in range(len(words))))


_ZIPF: Final = tuple(tuple(_zipf(reg) for reg in TOPICS[name]) for name in TOPIC_NAMES)


def register_words(topic: int, register: int) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """(words, cumulative Zipf weights) of one register of ``topic``."""
    return _ZIPF[topic][register]


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
