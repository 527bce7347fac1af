"""The simulated network ("Mock Threads"): a world that is the pipeline's source and poster.

- ``world``: users (hidden interests and state), follows, posts, threads, notifications,
  several logons a day, a simulated clock, growth and churn; the truth behind every decision,
  the upper bound and the oracle.
- ``archetypes`` (+ ``archetypes.yaml``), ``topics``, ``text``, ``state``: personas, topic
  registers, what users write (templates, names, bios) and the bounded hidden state.
- ``engines``: ``stochastic`` (no model) and ``llm`` (any ``botsky.llm`` Model, never an arm's).
- ``truth``: the truth per arm beside the estimates (``truth.json``).
- ``run``: ``simulate``, the production pipeline (``wiring.build_app``) on the world, in
  lockstep; ``simulate_many``/``run_worlds`` for many worlds.
- ``checkpoint``: day-boundary checkpoints for ``--resume``; ``cli``: ``botsky simulate``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LLMEngine", "SimResult", "StochasticEngine", "World", "WorldConfig", "simulate"]

# Imported on first use: `botsky --help` must not load the whole pipeline through this package.
_WHERE = {
    "LLMEngine": "botsky.sim.engines",
    "StochasticEngine": "botsky.sim.engines",
    "SimResult": "botsky.sim.run",
    "simulate": "botsky.sim.run",
    "World": "botsky.sim.world",
    "WorldConfig": "botsky.sim.world",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'botsky.sim' has no attribute {name!r}")
