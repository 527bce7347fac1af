"""Turn a model's draft into a valid Bluesky reply: one mention facet, clean text, within limits.

Pure: no I/O, no clock. The model's answer is untrusted, so everything here is defensive. The
steps, in order:

1. The chosen mention must be one of the offered candidates (``mention_not_offered``).
2. Control characters, bidi overrides and invisible separators (zero-width space, word joiner,
   soft hyphen) are stripped, blank lines collapsed, ends stripped.
3. Other ``@handle`` mentions are de-fanged (the ``@``, or a run of them, is dropped) and links
   removed, unless allowed; an ``@host/path`` is a link, not a mention. Only the chosen handle
   ever gets a facet.
4. ``@handle`` is appended when the text lacks it; its spelling is the offered one.
5. The text is trimmed to the post lexicon's limits at a grapheme boundary, keeping the mention.
6. The facet's ``byteStart``/``byteEnd`` are UTF-8 byte offsets, as the richtext lexicon says.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import regex

from botsky.errors import DraftRejected

__all__ = ["Composed", "Offered", "byte_slice", "compose", "grapheme_len"]

# The app.bsky.feed.post lexicon: ``text`` has maxGraphemes 300 and maxLength 3000 (UTF-8 bytes);
# ``langs`` has maxLength 3.
_MAX_GRAPHEMES = 300
_MAX_BYTES = 3000
_MAX_LANGS = 3

_ELLIPSIS = "…"
# Stands in for a removed link until spacing is tidied; no Cc character survives cleaning, so it
# cannot collide with the model's text.
_GAP = "\x00"
_MARK = "\x01"  # marks where the kept mention starts while the text is tidied, for the same reason

_GRAPHEME = regex.compile(r"\X")

# Cc controls except "\n" (tab becomes a space so words do not glue together), bidi
# embeddings/overrides/isolates (U+202A–U+202E, U+2066–U+2069: "Trojan Source" text disguises)
# and lone surrogates (they cannot be encoded as UTF-8). RLM/LRM and ZWJ are kept: RTL text and
# emoji sequences need them.
_CONTROLS: dict[int, str | None] = {
    cp: None
    for cp in (
        *range(0x00, 0x20),
        *range(0x7F, 0xA0),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
        *range(0xD800, 0xE000),
        # Invisible characters that only hide text from a reader or a scanner ("http\u200b://",
        # "@\u2060handle"): zero-width space, word joiner and invisible operators, the BOM as
        # a zero-width no-break space, soft hyphen, Mongolian vowel separator.
        0x200B,
        *range(0x2060, 0x2065),
        0xFEFF,
        0x00AD,
        0x180E,
    )
}
_CONTROLS[ord("\n")] = "\n"
_CONTROLS[ord("\t")] = " "

_BLANK_LINES = regex.compile(r"\n(?:[^\S\n]*\n){2,}")
_GAPS = regex.compile(r"[^\S\n]*(?:\x00[^\S\n]*)+")

# One left-to-right scan, so a handle inside a URL is part of the URL and a de-fanged handle is
# not scanned again as a bare domain. Boundaries are ASCII on purpose: CJK text often glues an
# @handle or a link to the words around it without a space.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_URL_BODY = r"[^\s\p{Lo}\p{So}]"
_TOKENS = regex.compile(
    rf"""
    (?P<url>
        [A-Za-z][A-Za-z0-9+.\-]*://{_URL_BODY}+
      | (?<![A-Za-z0-9_.@/-])(?i:www)\.{_URL_BODY}+
    )
  # A run of "@" is one mention: de-fanging only the last one of "@@handle" would leave a
  # live "@handle" behind.
  | (?<![A-Za-z0-9_.-])@+(?P<handle>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)
  | (?P<domain>
        # A bare domain: its TLD is 2+ letters of one case, so "it.Really" (a missing space) and
        # "e.g." stay words while "example.com" and "EXAMPLE.COM" are links.
        # "evil.com@mallory.test" is one link (user info, then the real host): removing only
        # its first half would also leave a live "@mallory.test" the scan has passed.
        (?<![A-Za-z0-9_.@/-])(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|[A-Z]{{2,63}})
        (?![A-Za-z0-9_-]|\.[A-Za-z0-9])
        (?::[0-9]{{1,5}})?(?:[/?#@]{_URL_BODY}*)?
    )
    """,
    regex.VERBOSE,
)

# An @-handle that is really a link once its "@" is dropped: a path, query, fragment, port or
# another "@" follows it, or it starts with "www.".
_HANDLE_LINK = regex.compile(
    rf"""
    @+(?:
        [A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::[0-9]{{0,5}})?[/?#@]{_URL_BODY}*
      | [A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+:[0-9]{{1,5}}(?![0-9])
      | (?i:www)\.[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*{_URL_BODY}*
    )
    """,
    regex.VERBOSE,
)


@dataclass(frozen=True)
class Offered:
    """A candidate as compose sees it: the DID for the facet, the handle for the text."""

    did: str
    handle: str


@dataclass(frozen=True)
class Composed:
    """A reply ready to post.

    ``repaired`` names what was fixed, each tag once, in the order it happened:
    ``stripped_controls``, ``removed_link``, ``removed_mention``, ``normalized_mention``,
    ``inserted_mention``, ``trimmed``.
    """

    text: str
    facets: list[dict[str, Any]]
    langs: list[str]
    mention: Offered
    repaired: tuple[str, ...]


def grapheme_len(text: str) -> int:
    """Number of extended grapheme clusters, the unit of Bluesky's 300-grapheme limit."""
    return len(_GRAPHEME.findall(text))


def byte_slice(text: str, start: int, end: int) -> str:
    """The text between UTF-8 byte offsets ``start`` and ``end`` (facet indices are bytes)."""
    return text.encode("utf-8")[start:end].decode("utf-8")


def compose(
    reply: str,
    mention: str,
    offered: Sequence[Offered],
    *,
    langs: Sequence[str] = (),
    max_graphemes: int = _MAX_GRAPHEMES,
    max_bytes: int = _MAX_BYTES,
    allow_links: bool = False,
    allow_other_mentions: bool = False,
) -> Composed:
    """Validate a draft reply and build the post text, its mention facet and its ``langs``.

    ``mention`` is the handle the model chose (a leading ``@`` and any case are accepted); it
    must be one of ``offered``. Raises ``DraftRejected`` with reason ``mention_not_offered``,
    ``empty_reply`` or ``mention_does_not_fit`` (the limits leave no room for the mention).
    """
    if max_graphemes < 1 or max_bytes < 1:
        raise ValueError("max_graphemes and max_bytes must be positive")
    target = _find_offered(mention, offered)
    at_handle = "@" + target.handle
    repaired: list[str] = []

    text = _clean(reply, repaired)
    text, start = _rewrite_tokens(text, target.handle, allow_links, allow_other_mentions, repaired)
    text, start = _tidy(text, start)
    if not _has_content(text, start, len(at_handle)):
        raise DraftRejected("empty_reply", "no text besides the mention")

    if start is None:
        # Appended rather than prepended: a reply that opens with @handle reads as addressed to
        # that user, not to the author.
        text = f"{text} {at_handle}"
        start = len(text) - len(at_handle)
        repaired.append("inserted_mention")

    if grapheme_len(text) > max_graphemes or len(text.encode("utf-8")) > max_bytes:
        text, start = _trim(text, start, at_handle, max_graphemes, max_bytes)
        repaired.append("trimmed")

    byte_start = len(text[:start].encode("utf-8"))
    facet = {
        "$type": "app.bsky.richtext.facet",
        "index": {"byteStart": byte_start, "byteEnd": byte_start + len(at_handle.encode("utf-8"))},
        "features": [{"$type": "app.bsky.richtext.facet#mention", "did": target.did}],
    }
    return Composed(
        text=text,
        facets=[facet],
        langs=_langs(langs),
        mention=target,
        repaired=tuple(dict.fromkeys(repaired)),
    )


def _find_offered(mention: str, offered: Sequence[Offered]) -> Offered:
    wanted = mention.strip().removeprefix("@").lower()
    for cand in offered:
        if cand.handle.lower() == wanted:
            return cand
    raise DraftRejected("mention_not_offered", mention[:100])


def _clean(reply: str, repaired: list[str]) -> str:
    text = reply.replace("\r\n", "\n").replace("\r", "\n")
    cleaned = text.translate(_CONTROLS)
    if len(cleaned) != len(text):
        repaired.append("stripped_controls")
    return cleaned


def _rewrite_tokens(
    text: str,
    handle: str,
    allow_links: bool,
    allow_other_mentions: bool,
    repaired: list[str],
) -> tuple[str, int | None]:
    """De-fang other mentions, remove links, normalize the first chosen @handle.

    Returns the new text and where the kept ``@handle`` starts in it (None when absent).
    """
    out: list[str] = []
    pos = 0  # end of the last match in ``text``
    size = 0  # length of ``out`` so far, to locate the kept mention in the new text
    start: int | None = None
    wanted = handle.lower()

    for m in _TOKENS.finditer(text):
        if m.start() < pos:
            continue  # inside an "@host/path" link already removed
        piece = m.group()
        end = m.end()
        if m.group("handle") is not None:
            found = m.group("handle")
            if not _is_handle_like(found):
                continue  # "@3.14" and friends are not mentions; leave them alone
            is_chosen = found.lower() == wanted
            link = None if allow_links else _HANDLE_LINK.match(text, m.start())
            if link is not None:
                # "@evil.com/x", "@host:8080", "@www.evil.com": without its "@" this is a
                # link, so it goes the way links go.
                piece = _GAP
                end = link.end()
                repaired.append("removed_link")
            elif is_chosen and start is None and _ends_token(text, m.end()):
                if m.group() != "@" + handle:
                    repaired.append("normalized_mention")
                piece = "@" + handle
                start = size + (m.start() - pos)
            elif is_chosen or not allow_other_mentions:
                # A repeated @chosen would be a second, facet-less mention: de-fang it even when
                # other mentions are allowed.
                piece = found  # de-fanged: the word stays, the notification does not happen
                repaired.append("removed_mention")
        elif not allow_links:
            link = m.group()
            kept = len(link)
            # Sentence punctuation after a link belongs to the sentence, not the link.
            while kept and unicodedata.category(link[kept - 1]).startswith("P"):
                if link[kept - 1] in "/-_":
                    break
                kept -= 1
            piece = _GAP + link[kept:]
            repaired.append("removed_link")
        chunk = text[pos : m.start()] + piece
        out.append(chunk)
        size += len(chunk)
        pos = end
    out.append(text[pos:])
    return "".join(out), start


def _is_handle_like(name: str) -> bool:
    # A handle is a domain name; its last label (the TLD) starts with a letter.
    labels = name.split(".")
    return all(labels) and labels[-1][0].isalpha()


def _ends_token(text: str, end: int) -> bool:
    # The handle pattern stops at "_" (not allowed in handles), so "@alice.bsky.social_x" is
    # some other word. "@alice.bsky.social" followed by U+0301 or a skin-tone modifier fuses
    # its last letter with that mark: visually a different word, so not a whole token either.
    if text.startswith("_", end):
        return False
    cluster = _GRAPHEME.match(text, end - 1)
    return cluster is not None and cluster.end() == end


def _tidy(text: str, start: int | None) -> tuple[str, int | None]:
    """Close the gaps left by removed links, collapse blank lines, strip the ends.

    A marker rides in front of the kept mention so its position survives the edits.
    """
    if start is not None:
        text = text[:start] + _MARK + text[start:]
    text = _GAPS.sub(_close_gap, text)
    text = _BLANK_LINES.sub("\n\n", text).strip()
    if start is None:
        return text, None
    start = text.index(_MARK)
    return text[:start] + text[start + 1 :], start


def _close_gap(m: regex.Match[str]) -> str:
    before = m.string[m.start() - 1] if m.start() else "\n"
    after = m.string[m.end()] if m.end() < len(m.string) else "\n"
    # "(see https://x.y)" becomes "(see)", "a link: https://x.y." becomes "a link:."
    # Nothing is needed at a line edge or before closing punctuation.
    if before == "\n" or after == "\n" or after in ".,;:!?)]}»”’。、，！？":
        return ""
    return " "


def _has_content(text: str, start: int | None, mention_len: int) -> bool:
    if start is not None:
        text = text[:start] + text[start + mention_len :]
    # Letters, numbers, punctuation or symbols (emoji are symbols); whitespace, invisible format
    # characters and lone combining marks do not make a reply.
    return any(unicodedata.category(ch)[0] in "LNPS" for ch in text)


def _trim(
    text: str, start: int, at_handle: str, max_graphemes: int, max_bytes: int
) -> tuple[str, int]:
    """Cut ``text`` to the limits at a grapheme boundary, adding "…" and keeping ``at_handle``.

    Prefers keeping the mention where it is and cutting after it; when the mention lies past
    the cut, the text before it is cut and the mention appended after the ellipsis.
    """
    end = start + len(at_handle)
    cut = _best_cut(text, end, "", max_graphemes, max_bytes)
    if cut is not None:
        return text[:cut] + _ELLIPSIS, start
    tail = " " + at_handle
    cut = _best_cut(text[:start], 0, tail, max_graphemes, max_bytes)
    if cut is None:
        raise DraftRejected("mention_does_not_fit", f"{at_handle} does not fit the limits")
    head = text[:cut] + _ELLIPSIS
    return head + tail, len(head) + 1


def _best_cut(
    text: str, not_before: int, tail: str, max_graphemes: int, max_bytes: int
) -> int | None:
    """The largest character offset ≥ ``not_before`` where ``text[:cut] + "…" + tail`` fits.

    Cuts are at grapheme boundaries and never right after whitespace; a cut before a space (a
    word boundary) is preferred when one is near. Counting "…" and ``tail`` as separate clusters
    is an upper bound: joining strings can merge clusters at the seam, never split them.
    """
    budget_g = max_graphemes - 1 - grapheme_len(tail)
    budget_b = max_bytes - len((_ELLIPSIS + tail).encode("utf-8"))
    best: int | None = None
    best_word: int | None = None
    best_i = best_word_i = 0
    offset = nbytes = 0
    if not_before == 0 and budget_g >= 0 and budget_b >= 0:
        best = 0
    clusters = _GRAPHEME.findall(text)
    for i, cluster in enumerate(clusters, start=1):
        offset += len(cluster)
        nbytes += len(cluster.encode("utf-8"))
        if i > budget_g or nbytes > budget_b:
            break
        if offset < not_before or cluster.isspace():
            continue
        best, best_i = offset, i
        if i < len(clusters) and clusters[i].isspace():
            best_word, best_word_i = offset, i
    # A word cut within a few words of the hard cut reads better than a cut mid-word; CJK text
    # has no spaces, so it falls back to the grapheme boundary.
    if best_word is not None and best_i - best_word_i <= 30:
        return best_word
    return best


def _langs(langs: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for lang in langs:
        lang = lang.strip()
        if lang and lang.lower() not in seen:
            seen[lang.lower()] = lang
    return list(seen.values())[:_MAX_LANGS]
