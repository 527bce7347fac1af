"""Bounded hidden state: free-form JSON that cannot grow without bound.

The original "Mock Threads" experiment let each user's hidden state grow with every session
until prompts overflowed. Here every update is merged and then bounded:

- numbers are blended: ``old * decay + new * (1 - decay)``;
- lists (facts, memories) keep the newest ``max_list`` distinct items;
- maps of numbers (topic interest, feelings about people) decay every merge, take the update
  and keep the ``max_keys`` largest entries;
- strings are cut at ``max_str`` characters; nesting deeper than ``max_depth`` is dropped;
- as a last resort the largest fields are trimmed until the JSON fits in ``max_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["DEFAULT_LIMITS", "StateLimits", "bound_state", "merge_state"]


@dataclass(frozen=True, slots=True)
class StateLimits:
    max_keys: int = 12
    max_list: int = 8
    max_str: int = 160
    max_depth: int = 3
    max_bytes: int = 3000
    decay: float = 0.8


DEFAULT_LIMITS = StateLimits()


def _bound(value: Any, lim: StateLimits, depth: int) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return round(float(value), 4)
    if isinstance(value, str):
        return value[: lim.max_str]
    if depth >= lim.max_depth:
        return None
    if isinstance(value, list):
        out = [_bound(v, lim, depth + 1) for v in value[-lim.max_list :]]
        return [v for v in out if v is not None]
    if isinstance(value, dict):
        items = list(value.items())
        if items and all(isinstance(v, int | float) and not isinstance(v, bool) for _, v in items):
            items.sort(key=lambda kv: -abs(float(kv[1])))  # numeric maps keep their largest
        out_d = {}
        for k, v in items[: lim.max_keys]:
            bv = _bound(v, lim, depth + 1)
            if bv is not None:
                out_d[str(k)[: lim.max_str]] = bv
        return out_d
    return str(value)[: lim.max_str]


def bound_state(state: dict[str, Any], lim: StateLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A copy of ``state`` within ``lim`` (see the module docstring)."""
    out = _bound(state, lim, 0)
    if not isinstance(out, dict):
        return {}
    while len(orjson.dumps(out)) > lim.max_bytes and out:
        # Trim the biggest field: halve a list or map, cut a string, or drop a scalar.
        key = max(out, key=lambda k: len(orjson.dumps(out[k])))
        v = out[key]
        if isinstance(v, list) and len(v) > 1:
            out[key] = v[len(v) // 2 :]
        elif isinstance(v, dict) and len(v) > 1:
            out[key] = dict(list(v.items())[: len(v) // 2])
        elif isinstance(v, str) and len(v) > 16:
            out[key] = v[: len(v) // 2]
        else:
            del out[key]
    return out


def _merge(old: Any, new: Any, lim: StateLimits) -> Any:
    if isinstance(new, bool) or new is None:
        return new
    if isinstance(new, int | float) and isinstance(old, int | float) and not isinstance(old, bool):
        return old * lim.decay + float(new) * (1 - lim.decay)
    if isinstance(new, list) and isinstance(old, list):
        merged: list[Any] = []
        for item in [*old, *new]:
            if item in merged:
                merged.remove(item)
            merged.append(item)
        return merged[-lim.max_list :]
    if isinstance(new, dict) and isinstance(old, dict):
        out = dict(old)
        for k, v in old.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = v * lim.decay  # what is not refreshed fades
        for k, v in new.items():
            out[k] = _merge(old[k], v, lim) if k in old else v
        return out
    return new


def merge_state(
    old: dict[str, Any], update: dict[str, Any], lim: StateLimits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Merge an update into a state (decay, dedupe, caps); the result is bounded."""
    if not isinstance(update, dict):
        return bound_state(old, lim)
    return bound_state(_merge(old, update, lim), lim)
