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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

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


_NUMBER_TYPES: Final = frozenset({int, float})


def _is_number(value: Any) -> bool:
    """int or float, not bool (exact types first: the hidden state is JSON, so they are)."""
    t = type(value)
    if t is float or t is int:
        return True
    return t is not bool and isinstance(value, int | float)


def _all_numbers(values: Iterable[Any]) -> bool:
    # The set of exact types is built in C; subclasses (never in JSON) take the slow check.
    values = list(values)
    return _NUMBER_TYPES.issuperset(map(type, values)) or all(map(_is_number, values))


def _bound(value: Any, lim: StateLimits, depth: int) -> Any:
    t = type(value)
    if t is float:
        return round(value, 4)
    if t is str:
        return value[: lim.max_str]
    if value is None or t is bool:
        return value
    if _is_number(value):
        return round(float(value), 4)
    if isinstance(value, str):
        return value[: lim.max_str]
    if depth >= lim.max_depth:
        return None
    if isinstance(value, list):
        out = [_bound(v, lim, depth + 1) for v in value[-lim.max_list :]]
        return [v for v in out if v is not None]
    if isinstance(value, dict):
        return _bound_map(value, lim, depth)
    return str(value)[: lim.max_str]


def _key(k: Any, max_str: int) -> str:
    # str(k)[:max_str], without copying the common case
    return k if type(k) is str and len(k) <= max_str else str(k)[:max_str]


def _bound_map(value: dict[Any, Any], lim: StateLimits, depth: int) -> dict[str, Any]:
    if value and _all_numbers(value.values()):
        return _bound_numbers(value, lim)
    out: dict[str, Any] = {}
    for k, v in list(value.items())[: lim.max_keys]:
        bv = _bound(v, lim, depth + 1)
        if bv is not None:
            out[_key(k, lim.max_str)] = bv
    return out


def _bound_numbers(value: dict[Any, Any], lim: StateLimits) -> dict[str, float]:
    """A numeric map (interests, feelings) keeps its ``max_keys`` largest entries, rounded."""
    items = sorted(value.items(), key=_magnitude)[: lim.max_keys]
    return {_key(k, lim.max_str): round(float(v), 4) for k, v in items}


def _magnitude(kv: tuple[Any, Any]) -> float:
    return -abs(float(kv[1]))


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
    if new is None or type(new) is bool:
        return new
    if _is_number(new) and _is_number(old):
        return old * lim.decay + float(new) * (1 - lim.decay)
    if isinstance(new, list) and isinstance(old, list):
        merged: list[Any] = []
        for item in [*old, *new]:
            if item in merged:
                merged.remove(item)
            merged.append(item)
        return merged[-lim.max_list :]
    if isinstance(new, dict) and isinstance(old, dict):
        decay = lim.decay
        # What is not refreshed fades (a map of numbers is the common case: at C speed).
        if _all_numbers(old.values()):
            out = {k: v * decay for k, v in old.items()}
        else:
            out = {k: v * decay if _is_number(v) else v for k, v in old.items()}
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
