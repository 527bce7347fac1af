"""Find the JSON object in a model's answer when the server cannot enforce a schema.

Servers without structured output (many ``openai_compatible`` ones) answer with a bare object,
an object in a Markdown fence, or an object wrapped in prose ("Sure! Here it is: {...}"). We do
not repair broken JSON (trailing commas, single quotes): a model that cannot write JSON is a
model we want to score as failing, not one we want to guess for.
"""

from __future__ import annotations

import json
from typing import Any

from botsky.errors import ModelError

__all__ = ["parse_json_object"]

_decoder = json.JSONDecoder()


def parse_json_object(text: str) -> dict[str, Any]:
    """Return the first JSON object in ``text``; raise ``ModelError("unparseable answer")``.

    Tries the whole text first (the common case), then every ``{`` in order: ``raw_decode``
    parses one complete value from that position, so fences and surrounding prose are skipped
    without a brace-counting scanner of our own (which would get braces in strings wrong).
    """
    if not isinstance(text, str):
        raise ModelError("unparseable answer")
    stripped = text.strip()
    try:
        whole = json.loads(stripped)
    except ValueError:
        pass
    else:
        if isinstance(whole, dict):
            return whole
    start = stripped.find("{")
    while start != -1:
        try:
            value, _end = _decoder.raw_decode(stripped, start)
        except ValueError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = stripped.find("{", start + 1)
    raise ModelError("unparseable answer")
