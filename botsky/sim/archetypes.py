"""User archetypes (``archetypes.yaml``): traits, interest breadth and behaviour propensities.

A simulated user mixes two archetypes with random weights, so personas are not a handful of
clones: traits are the weighted mean of the two, and the interest mixture is drawn with the
breadth of the dominant one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ruamel.yaml import YAML

__all__ = ["TRAITS", "Archetype", "load_archetypes", "mix"]

TRAITS: Final = (
    "activity",
    "reply",
    "like",
    "follow",
    "responsiveness",
    "toxicity",
    "openness",
)
_DEFAULT_FILE: Final = Path(__file__).with_name("archetypes.yaml")


@dataclass(frozen=True, slots=True)
class Archetype:
    name: str
    weight: float
    topics: tuple[int, int]
    traits: dict[str, float]


def load_archetypes(path: Path | None = None) -> tuple[Archetype, ...]:
    """Read and check the archetype file (default: the one shipped with botsky)."""
    data: Any = YAML(typ="safe").load((path or _DEFAULT_FILE).read_text(encoding="utf-8"))
    found: list[Archetype] = []
    for name, spec in sorted((data or {}).get("archetypes", {}).items()):
        lo, hi = (int(x) for x in spec["topics"])
        traits = {t: float(spec[t]) for t in TRAITS}
        if not 1 <= lo <= hi or not all(0.0 <= v <= 1.0 for v in traits.values()):
            raise ValueError(
                f"archetype {name!r}: topics must be 1 <= min <= max, traits in [0, 1]"
            )
        found.append(Archetype(name, float(spec.get("weight", 1.0)), (lo, hi), traits))
    if not found:
        raise ValueError("no archetypes defined")
    return tuple(found)


def mix(
    archetypes: tuple[Archetype, ...], rng: random.Random
) -> tuple[str, dict[str, float], tuple[int, int]]:
    """Draw two archetypes by weight and blend them: (label, traits, topic breadth)."""
    a, b = rng.choices(archetypes, weights=[x.weight for x in archetypes], k=2)
    w = rng.uniform(0.55, 1.0)  # the first one dominates
    traits = {t: round(w * a.traits[t] + (1 - w) * b.traits[t], 4) for t in TRAITS}
    label = a.name if a is b else f"{a.name}+{b.name}"
    return label, traits, a.topics
