"""A writer with no LLM, for the control arms and for demos without API keys.

The control arms (``similar``, ``random``) choose the mention without a model; they still need a
reply text, and that text should not carry a model's skill into the comparison. So it comes from
a few fixed templates, picked by a hash of the post text: the same post always gets the same
reply, in every process (``hash()`` is salted per process, so we use SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from botsky.errors import DraftRejected
from botsky.llm.base import Completion, Usage
from botsky.llm.reply import Candidate, Draft, ReplyRequest

__all__ = ["TemplateWriter"]

_TEMPLATES = (
    "@{h} might enjoy this one: they've been posting about {i}.",
    "This reminds me of @{h}'s posts on {i}. Worth a chat?",
    "@{h}, you might have thoughts on this ({i}).",
    "Good one! @{h} is into {i} too; you two should talk.",
)
_SHORT = "@{h} might enjoy this one."

# What TemplateWriter.complete_json reads back from reply.build_prompt's user message.
_POST_RE = re.compile(r"^<post>\n(.*?)\n</post>$", re.DOTALL | re.MULTILINE)
_FIRST_CANDIDATE_RE = re.compile(r"^<candidates>\n@(\S+)(?: \| interests: (.*?) \|)?", re.MULTILINE)
_LIMIT_RE = re.compile(r"at most (\d+) characters")


def _interests(words: str) -> str:
    # Three terms at most: a template reply names a topic, it does not recite a profile.
    terms = [t.strip() for t in re.split(r"[,;]", words) if t.strip()]
    if len(terms) <= 1:
        terms = words.split()
    return ", ".join(terms[:3])


def _compose(handle: str, interests: str, seed_text: str, max_graphemes: int) -> str:
    digest = hashlib.sha256(seed_text.encode("utf-8")).digest()
    template = _TEMPLATES[int.from_bytes(digest[:8], "big") % len(_TEMPLATES)]
    topic = _interests(interests)
    text = template.format(h=handle, i=topic) if topic else _SHORT.format(h=handle)
    # len() counts code points, never fewer than graphemes, so this keeps within the limit;
    # the bare mention is the last resort (compose rejects it if even that is too long).
    for fallback in (_SHORT.format(h=handle), f"@{handle}"):
        if len(text) <= max_graphemes:
            break
        text = fallback
    return text


class TemplateWriter:
    """The ``template`` provider: fixed templates naming the chosen user; free and instant."""

    provider = "template"

    def __init__(self, model: str = "template-v1") -> None:
        # The label scores are grouped under; each control arm names its own in bots.yaml.
        self.model = model

    def write(self, req: ReplyRequest) -> Draft:
        """Reply to ``req`` mentioning ``req.chosen``, else the top-ranked candidate."""
        target: Candidate | None = None
        if req.chosen:
            handle = req.chosen.strip().removeprefix("@")
            wanted = handle.casefold()
            target = next(
                (c for c in req.candidates if c.handle.removeprefix("@").casefold() == wanted),
                None,
            )
        elif req.candidates:
            target = min(req.candidates, key=lambda c: c.rank)
            handle = target.handle.removeprefix("@")
        else:
            raise DraftRejected("no_candidates", "nobody to recommend")
        interests = target.interests if target else ""
        reply = _compose(handle, interests, req.post_text, req.max_graphemes)
        return Draft(reply=reply, mention=handle, usage=Usage())

    async def complete_json(
        self, *, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> Completion:
        """Answer a prompt from ``reply.build_prompt`` (``write_reply`` calls ``write`` instead)."""
        candidate = _FIRST_CANDIDATE_RE.search(user)
        if candidate is None:
            return Completion(data={}, usage=Usage())
        handle, interests = candidate.group(1), candidate.group(2) or ""
        post = _POST_RE.search(user)
        limit = _LIMIT_RE.search(system)
        seed = post.group(1) if post else user
        reply = _compose(handle, interests, seed, int(limit.group(1)) if limit else 300)
        data = {"reply": reply, "mention": handle}
        return Completion(data=data, usage=Usage(), raw=json.dumps(data, ensure_ascii=False))

    async def aclose(self) -> None:
        """Nothing to release."""
