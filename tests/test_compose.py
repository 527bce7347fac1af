"""compose: the mention facet is exact in UTF-8 bytes and the text obeys the post limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from botsky.compose import Composed, Offered, byte_slice, compose, grapheme_len
from botsky.errors import DraftRejected
from tests.support import link_texts

ALICE = Offered("did:plc:alice", "alice.bsky.social")
BOB = Offered("did:plc:bob", "Bob.Example.com")  # offered spelling is kept exactly
OFFERED = [ALICE, BOB]

FAMILY = "👨‍👩‍👧‍👦"  # four people joined by ZWJ: one grapheme, 25 bytes
FLAG_FR = "🇫🇷"  # two regional indicators: one grapheme, 8 bytes
THUMB_DARK = "👍🏿"  # emoji + skin-tone modifier: one grapheme, 8 bytes
E_ACUTE = "e\u0301"  # e + combining acute accent: one grapheme, 3 bytes


def assert_valid(
    result: Composed,
    handle: str,
    *,
    max_graphemes: int = 300,
    max_bytes: int = 3000,
) -> None:
    """The invariants every composed reply keeps."""
    assert len(result.facets) == 1
    facet = result.facets[0]
    assert facet["$type"] == "app.bsky.richtext.facet"
    assert facet["features"] == [
        {"$type": "app.bsky.richtext.facet#mention", "did": result.mention.did}
    ]
    index = facet["index"]
    assert byte_slice(result.text, index["byteStart"], index["byteEnd"]) == "@" + handle
    assert grapheme_len(result.text) <= max_graphemes
    assert len(result.text.encode("utf-8")) <= max_bytes


# --- text, mention and repairs -------------------------------------------------------------

CASES: list[Any] = [
    pytest.param(
        "Great point @alice.bsky.social, agreed!",
        "alice.bsky.social",
        {},
        "Great point @alice.bsky.social, agreed!",
        (),
        id="plain-ascii",
    ),
    pytest.param(
        "🎉🔥 @alice.bsky.social you'd love this",
        "alice.bsky.social",
        {},
        "🎉🔥 @alice.bsky.social you'd love this",
        (),
        id="emoji-before-mention",
    ),
    pytest.param(
        f"{FAMILY} {FLAG_FR} {THUMB_DARK} ask @alice.bsky.social {FAMILY}",
        "alice.bsky.social",
        {},
        f"{FAMILY} {FLAG_FR} {THUMB_DARK} ask @alice.bsky.social {FAMILY}",
        (),
        id="zwj-family-flag-skin-tone",
    ),
    pytest.param(
        f"caf{E_ACUTE} r{E_ACUTE}sum{E_ACUTE} @alice.bsky.social na\u0308ive",
        "alice.bsky.social",
        {},
        f"caf{E_ACUTE} r{E_ACUTE}sum{E_ACUTE} @alice.bsky.social na\u0308ive",
        (),
        id="combining-marks",
    ),
    pytest.param(
        "مرحبا @alice.bsky.social كيف حالك؟",
        "alice.bsky.social",
        {},
        "مرحبا @alice.bsky.social كيف حالك؟",
        (),
        id="rtl-arabic",
    ),
    pytest.param(
        "שלום\u200f @alice.bsky.social מה שלומך?",
        "alice.bsky.social",
        {},
        "שלום\u200f @alice.bsky.social מה שלומך?",
        (),
        id="rtl-hebrew-keeps-rlm",
    ),
    pytest.param(
        "这个话题@alice.bsky.social一定喜欢。",
        "alice.bsky.social",
        {},
        "这个话题@alice.bsky.social一定喜欢。",
        (),
        id="cjk-no-spaces",
    ),
    pytest.param(
        "日本語のテキスト、とても面白いです",
        "alice.bsky.social",
        {},
        "日本語のテキスト、とても面白いです @alice.bsky.social",
        ("inserted_mention",),
        id="cjk-mention-inserted",
    ),
    pytest.param(
        "You two should talk!",
        "@alice.bsky.social",
        {},
        "You two should talk! @alice.bsky.social",
        ("inserted_mention",),
        id="mention-missing-inserted",
    ),
    pytest.param(
        "Ask @BOB.example.COM about it",
        "bob.example.com",
        {},
        "Ask @Bob.Example.com about it",
        ("normalized_mention",),
        id="mention-case-normalized",
    ),
    pytest.param(
        "Ask @alice.bsky.socialite about it",
        "alice.bsky.social",
        {},
        "Ask alice about it @alice.bsky.social",
        ("removed_mention", "inserted_mention"),
        id="longer-handle-is-not-the-mention",
    ),
    pytest.param(
        "@carol.bsky.social and @alice.bsky.social should meet",
        "alice.bsky.social",
        {},
        "carol and @alice.bsky.social should meet",
        ("removed_mention",),
        id="second-mention-defanged",
    ),
    pytest.param(
        "@carol.bsky.social and @alice.bsky.social should meet",
        "alice.bsky.social",
        {"allow_other_mentions": True},
        "@carol.bsky.social and @alice.bsky.social should meet",
        (),
        id="second-mention-kept-when-allowed",
    ),
    pytest.param(
        "@alice.bsky.social, yes you @Alice.bsky.social!",
        "alice.bsky.social",
        {"allow_other_mentions": True},
        "@alice.bsky.social, yes you Alice!",
        ("removed_mention",),
        id="duplicate-mention-defanged",
    ),
    pytest.param(
        "@alice.bsky.social\u0301 hi",
        "alice.bsky.social",
        {},
        "alice hi @alice.bsky.social",
        ("removed_mention", "inserted_mention"),
        id="mark-fused-to-handle-is-not-the-mention",
    ),
    pytest.param(
        "pi @3.14, e.g. it.Really ends here. @alice.bsky.social",
        "alice.bsky.social",
        {},
        "pi @3.14, e.g. it.Really ends here. @alice.bsky.social",
        (),
        id="not-links-not-mentions",
    ),
    pytest.param(
        "mail bob@example.org or mailto:eve@example.org today @alice.bsky.social",
        "alice.bsky.social",
        {},
        "mail or today @alice.bsky.social",
        ("removed_link",),
        id="mail-addresses-removed",
    ),
    pytest.param(
        "Read https://evil.example/x?a=1. Or www.spam.net, or shop.example.com/deal! "
        "@alice.bsky.social",
        "alice.bsky.social",
        {},
        "Read. Or, or! @alice.bsky.social",
        ("removed_link",),
        id="links-removed",
    ),
    pytest.param(
        "(see https://bsky.app/profile/@alice.bsky.social) hi",
        "alice.bsky.social",
        {},
        "(see) hi @alice.bsky.social",
        ("removed_link", "inserted_mention"),
        id="handle-inside-link-removed-with-it",
    ),
    pytest.param(
        "Read https://example.com/x and www.example.org @alice.bsky.social",
        "alice.bsky.social",
        {"allow_links": True},
        "Read https://example.com/x and www.example.org @alice.bsky.social",
        (),
        id="links-kept-when-allowed",
    ),
    pytest.param(
        "https://spam.example\n\n\n\nHello\x07 @alice.bsky.social",
        "alice.bsky.social",
        {},
        "Hello @alice.bsky.social",
        ("stripped_controls", "removed_link"),
        id="link-on-its-own-line",
    ),
    pytest.param(
        "a\x00b \u202eolleh\u202c c\u2066d\u2069\te\r\n\n\n\n\nf @alice.bsky.social",
        "alice.bsky.social",
        {},
        "ab olleh cd e\n\nf @alice.bsky.social",
        ("stripped_controls",),
        id="control-and-bidi-stripped",
    ),
    pytest.param(
        "  \n\n hi @alice.bsky.social \n\n  ",
        "alice.bsky.social",
        {},
        "hi @alice.bsky.social",
        (),
        id="ends-stripped",
    ),
]


@pytest.mark.parametrize(("reply", "mention", "options", "text", "repaired"), CASES)
def test_compose_text_and_repairs(
    reply: str, mention: str, options: dict[str, Any], text: str, repaired: tuple[str, ...]
) -> None:
    """The draft becomes the expected text, with the repairs named and the facet exact."""
    result = compose(reply, mention, OFFERED, **options)
    assert result.text == text
    assert result.repaired == repaired
    assert_valid(result, result.mention.handle)


# --- link text in disguise ------------------------------------------------------------------
# Each class of link that survived composition before: written with confusable dots, letters
# or invisible characters, as an internationalized domain, a mail address, or "@host.tld".
DISGUISED = [
    pytest.param("go to evil\u3002com now", "go to now", id="ideographic-full-stop"),
    pytest.param("go to evil\uff61com now", "go to now", id="halfwidth-ideographic-stop"),
    pytest.param(
        "go to \uff45\uff56\uff49\uff4c\uff0e\uff43\uff4f\uff4d now", "go to now", id="fullwidth"
    ),
    pytest.param("go to evil\ufe52com and evil\u2024com now", "go to and now", id="small-dots"),
    pytest.param(
        "go to \U0001d41e\U0001d42f\U0001d422\U0001d425.com now", "go to now", id="math-letters"
    ),
    pytest.param("go to \u2488com now", "go to now", id="digit-full-stop"),
    pytest.param("go to evil\u200d.com now", "go to now", id="zero-width-joiner"),
    pytest.param("go to evil\u034f.com now", "go to now", id="grapheme-joiner"),
    pytest.param(
        "go to https\uff1a\uff0f\uff0fevil.example/x now", "go to now", id="fullwidth-scheme"
    ),
    pytest.param("go to evil.Com now", "go to now", id="mixed-case-real-tld"),
    pytest.param("go to evil.com\u0301 now", "go to now", id="mark-after-tld"),
    pytest.param("go to evil.com\u00e9 or evil.com\u662f now", "go to or \u662f now", id="glued"),
    pytest.param(
        "go to -evil.com or ...evil.com now", "go to - or ... now", id="after-punctuation"
    ),
    pytest.param(
        "go to \u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444 now",
        "go to now",
        id="idn-cyrillic",
    ),
    pytest.param(
        "go to \u043f\u0440\u0438\u043c\u0435\u0440\u3002\u0440\u0444 now",
        "go to now",
        id="idn-ideographic-stop",
    ),
    pytest.param("go to b\u00fccher.de and bu\u0308cher.de now", "go to and now", id="idn-latin"),
    pytest.param("go to \u4f8b\u3048.\u4e2d\u56fd now", "go to now", id="idn-cjk"),
    pytest.param("go to xn--bcher-kva.xn--p1ai now", "go to now", id="punycode"),
    pytest.param("go to //evil.example/x now", "go to now", id="scheme-relative"),
    pytest.param("mail bob@evil.com now", "mail now", id="user-at-host"),
    pytest.param("mail bob\uff20evil\uff0ecom now", "mail now", id="fullwidth-user-at-host"),
    pytest.param("mail mailto:bob@evil.example?subject=hi now", "mail now", id="mailto"),
    pytest.param("call tel:+15551234 or SMS:+15551234 now", "call or now", id="tel-sms"),
    pytest.param("ask @evil.com now", "ask evil now", id="at-host-not-bare-domain"),
    pytest.param("ask @mallory.bsky.social now", "ask mallory now", id="other-handle"),
    pytest.param("ask \uff20mallory\uff0etest now", "ask mallory now", id="fullwidth-handle"),
    pytest.param(
        "ask @\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444 now",
        "ask \u043f\u0440\u0438\u043c\u0435\u0440 now",
        id="at-idn",
    ),
    pytest.param("ask thanks@alice.bsky.social now", "ask now", id="user-glued-to-chosen"),
]


@pytest.mark.parametrize(("reply", "text"), DISGUISED)
def test_disguised_links_and_mentions_are_removed(reply: str, text: str) -> None:
    """Links behind confusable dots and letters, IDN, punycode, mail forms and @host are
    removed (or de-fanged to the handle's first label); the chosen mention keeps its facet."""
    result = compose(reply, "alice.bsky.social", OFFERED)
    assert result.text == f"{text} @alice.bsky.social"
    assert_valid(result, "alice.bsky.social")


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        pytest.param(
            "Ask \uff20\uff41\uff4c\uff49\uff43\uff45\uff0e\uff42\uff53\uff4b\uff59"
            "\uff0e\uff53\uff4f\uff43\uff49\uff41\uff4c today",
            "Ask @alice.bsky.social today",
            id="fullwidth",
        ),
        pytest.param(
            "Ask @alice\u3002bsky\u3002social today",
            "Ask @alice.bsky.social today",
            id="ideographic-stops",
        ),
        pytest.param(
            "Ask @ali\u200dce.bsky.social today", "Ask @alice.bsky.social today", id="joiner"
        ),
        pytest.param(
            "\u8c22\u8c22\uff20alice.bsky.social\uff01",
            "\u8c22\u8c22@alice.bsky.social\uff01",
            id="cjk-glued",
        ),
    ],
)
def test_a_disguised_chosen_mention_keeps_its_place_and_facet(reply: str, text: str) -> None:
    """The chosen @handle written with confusable characters is the mention: spelled as
    offered, where the model put it, with its facet (and no second copy appended)."""
    result = compose(reply, "alice.bsky.social", OFFERED)
    assert result.text == text
    assert result.repaired == ("normalized_mention",)
    assert_valid(result, "alice.bsky.social")


# Legitimate text that looks a little like a domain, a mail address or a mention.
LEGIT = [
    pytest.param("3.5 stars, and 4.25 out of 5", id="decimals"),
    pytest.param("e.g. this, i.e. that, etc. and so on", id="latin-abbreviations"),
    pytest.param("Mr. Smith met Dr.Jones at 5 p.m. in the U.S.A.", id="titles-and-initials"),
    pytest.param("Wait... what? So…good. Really..?", id="ellipses"),
    pytest.param("I loved it.Then we left. It rained.Really.", id="sentence-then-sentence"),
    pytest.param("Version 2.0.1 costs $3.50 (about 3.2 \u20ac)", id="versions-and-prices"),
    pytest.param(
        "\u4eca\u65e5\u306f\u6674\u308c\u3002\u660e\u65e5\u306f\u96e8\u3002",
        id="japanese-full-stops",
    ),
    pytest.param("\u3042\u308a\u304c\u3068\u3046\u3002see you soon", id="japanese-then-english"),
    pytest.param(
        "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u6211\u7231\u4f60\u3002\u4e16\u754c",
        id="chinese-fullwidth-punctuation",
    ),
    pytest.param("\uff21\uff22\uff23 and \ufb01ne and \u00bd cup", id="compatibility-forms-kept"),
    pytest.param(
        "\u041f\u0440\u0438\u0432\u0435\u0442.\u041a\u0430\u043a \u0434\u0435\u043b\u0430",
        id="cyrillic-sentences",
    ),
    pytest.param("ratio 16:9, at 10:30, note: bring data: none", id="colons"),
    pytest.param("and/or, 1/2 cup, @ 5 dollars, pi @3.14", id="slashes-and-lone-at"),
]


@pytest.mark.parametrize("reply", LEGIT)
def test_legitimate_text_is_kept_as_written(reply: str) -> None:
    """Decimals, abbreviations, ellipses, CJK full stops and compatibility characters are
    neither links nor mentions: the text is posted exactly as written."""
    result = compose(f"{reply} @alice.bsky.social", "alice.bsky.social", OFFERED)
    assert result.text == f"{reply} @alice.bsky.social"
    assert result.repaired == ()


@pytest.mark.parametrize(
    ("reply", "text"),
    [
        pytest.param(
            "see evil dot com or evil[.]com", "see evil dot com or evil[.]com", id="spelled-out"
        ),
        pytest.param(
            "\u4f8b\u3048\u3002\u4e2d\u56fd", "\u4f8b\u3048\u3002\u4e2d\u56fd", id="cjk-full-stop"
        ),
        pytest.param("it.Really, Mr.Smith", "it.Really, Mr.Smith", id="mixed-case-no-tld"),
        pytest.param("ok.fine and Node.js rock", "and rock", id="lower-case-glued"),
        pytest.param("It was great.Today we rest", "It was we rest", id="capitalized-tld"),
    ],
)
def test_the_documented_edges_of_link_removal(reply: str, text: str) -> None:
    """Exactly what the README says: spelled-out links, "。" between CJK letters and mixed-case
    non-TLDs stay; glued lower-case words and capitalized TLDs go."""
    assert compose(reply, "alice.bsky.social", OFFERED).text == f"{text} @alice.bsky.social"


def test_a_word_cut_short_is_scanned_again() -> None:
    """Trimming "x.Refined" to "x.Re…" would make a link (.re is a TLD): it is removed too."""
    reply = "x.Refined " + "word " * 20  # cut after "x.Re" with the "…" and the mention
    result = compose(reply, "alice.bsky.social", OFFERED, max_graphemes=24)
    assert "x.Re" not in result.text and not link_texts(result.text)
    assert_valid(result, "alice.bsky.social", max_graphemes=24)


@pytest.mark.parametrize(
    ("reply", "mention", "byte_start", "char_start"),
    [
        pytest.param("hi @alice.bsky.social", "alice.bsky.social", 3, 3, id="ascii"),
        pytest.param("🎉 @alice.bsky.social", "alice.bsky.social", 5, 2, id="emoji"),
        pytest.param(f"{FAMILY} @alice.bsky.social", "alice.bsky.social", 26, 8, id="zwj"),
        pytest.param(f"{E_ACUTE} @alice.bsky.social", "alice.bsky.social", 4, 3, id="combining"),
        pytest.param("مرحبا @alice.bsky.social", "alice.bsky.social", 11, 6, id="arabic"),
        pytest.param("你好 @Bob.Example.com", "bob.example.com", 7, 3, id="cjk"),
    ],
)
def test_facet_offsets_are_bytes(
    reply: str, mention: str, byte_start: int, char_start: int
) -> None:
    """byteStart counts UTF-8 bytes, not characters, before the mention."""
    result = compose(reply, mention, OFFERED)
    index = result.facets[0]["index"]
    assert result.text.index("@") == char_start
    assert index["byteStart"] == byte_start
    assert index["byteEnd"] == byte_start + len("@" + result.mention.handle)


@pytest.mark.parametrize(
    ("mention", "did"),
    [
        pytest.param("alice.bsky.social", "did:plc:alice", id="exact"),
        pytest.param("@ALICE.BSKY.SOCIAL", "did:plc:alice", id="at-and-upper"),
        pytest.param("  bob.example.com ", "did:plc:bob", id="spaces-and-lower"),
    ],
)
def test_mention_matches_offered_handle(mention: str, did: str) -> None:
    """The chosen handle matches an offered one case-insensitively, with or without '@'."""
    result = compose("hello", mention, OFFERED)
    assert result.mention.did == did
    assert result.facets[0]["features"][0]["did"] == did


@pytest.mark.parametrize(
    ("reply", "mention", "reason"),
    [
        pytest.param("hi", "carol.bsky.social", "mention_not_offered", id="not-offered"),
        pytest.param("hi", "alice.bsky", "mention_not_offered", id="prefix-not-offered"),
        pytest.param("", "alice.bsky.social", "empty_reply", id="empty"),
        pytest.param(" \n\t ", "alice.bsky.social", "empty_reply", id="whitespace"),
        pytest.param("\u202e\x00\u2066", "alice.bsky.social", "empty_reply", id="only-controls"),
        pytest.param("@alice.bsky.social", "alice.bsky.social", "empty_reply", id="only-mention"),
        pytest.param("https://spam.example", "alice.bsky.social", "empty_reply", id="only-link"),
    ],
)
def test_rejected(reply: str, mention: str, reason: str) -> None:
    """A draft that breaks the rules raises DraftRejected with a machine-friendly reason."""
    with pytest.raises(DraftRejected) as info:
        compose(reply, mention, OFFERED)
    assert info.value.reason == reason


def test_mention_that_cannot_fit_is_rejected() -> None:
    """Limits too small for the mention itself reject the draft instead of breaking it."""
    with pytest.raises(DraftRejected) as info:
        compose("hello there", "alice.bsky.social", OFFERED, max_graphemes=10)
    assert info.value.reason == "mention_does_not_fit"


# --- limits ---------------------------------------------------------------------------------

TRIM_CASES: list[Any] = [
    pytest.param(
        "@alice.bsky.social " + "word " * 100,
        {},
        "@alice.bsky.social word",
        id="ascii-mention-first",
    ),
    pytest.param(
        "Hey " + "x" * 400 + " @alice.bsky.social",
        {},
        "Hey x",
        id="mention-past-cut-moved",
    ),
    pytest.param(
        "word " * 100,
        {},
        "word word",
        id="inserted-mention-trimmed",
    ),
    pytest.param(
        "🎉" * 300 + " @alice.bsky.social",
        {"max_bytes": 500},
        "🎉🎉",
        id="bytes-bind-before-graphemes",
    ),
    pytest.param(
        FAMILY * 200 + " @alice.bsky.social",
        {},
        FAMILY * 2,
        id="zwj-families",
    ),
    pytest.param(
        (FLAG_FR + THUMB_DARK) * 200 + " @alice.bsky.social",
        {},
        FLAG_FR + THUMB_DARK,
        id="flags-and-skin-tones",
    ),
    pytest.param(
        E_ACUTE * 400 + " @alice.bsky.social",
        {},
        E_ACUTE * 2,
        id="combining-marks",
    ),
    pytest.param(
        "a" + "\u0301" * 1000 + "b " * 200 + "@alice.bsky.social",
        {},
        "a" + "\u0301" * 1000 + "b",
        id="one-huge-cluster",
    ),
    pytest.param(
        "中文" * 200 + "@alice.bsky.social",
        {},
        "中文中文",
        id="cjk-no-word-boundaries",
    ),
    pytest.param(
        "كلمة " * 100 + "@alice.bsky.social",
        {},
        "كلمة كلمة",
        id="rtl-arabic",
    ),
    pytest.param(
        "short enough " * 3 + "@alice.bsky.social " + "tail " * 10,
        {"max_graphemes": 60},
        "short enough",
        id="small-grapheme-limit",
    ),
]


@pytest.mark.parametrize(("reply", "options", "starts_with"), TRIM_CASES)
def test_trimmed_to_limits(reply: str, options: dict[str, Any], starts_with: str) -> None:
    """An over-long draft is cut at a grapheme boundary with '…', keeping the mention whole."""
    result = compose(reply, "alice.bsky.social", OFFERED, **options)
    assert "trimmed" in result.repaired
    assert result.text.startswith(starts_with)
    assert "…" in result.text
    assert_valid(result, "alice.bsky.social", **options)
    # Trimming uses the room it has rather than cutting early.
    limit = options.get("max_graphemes", 300)
    assert grapheme_len(result.text) > limit - 40 or len(result.text.encode()) > 400


def test_trim_keeps_mention_in_place_when_it_fits() -> None:
    """A mention before the cut stays where the model put it and the tail is cut."""
    result = compose("Hi @alice.bsky.social " + "blah " * 100, "alice.bsky.social", OFFERED)
    assert result.text.startswith("Hi @alice.bsky.social blah")
    assert result.text.endswith("blah…")
    assert result.facets[0]["index"] == {"byteStart": 3, "byteEnd": 21}


def test_trim_moves_mention_past_the_cut() -> None:
    """A mention beyond the cut is appended after the ellipsis, once."""
    result = compose("blah " * 100 + "@alice.bsky.social wow", "alice.bsky.social", OFFERED)
    assert result.text.endswith("blah… @alice.bsky.social")
    assert result.text.count("alice.bsky.social") == 1


def test_text_at_limit_is_untouched() -> None:
    """Exactly 300 graphemes (4-byte emoji included) is within the limit and not trimmed."""
    reply = "🎉" * (300 - len(" @alice.bsky.social")) + " @alice.bsky.social"
    result = compose(reply, "alice.bsky.social", OFFERED)
    assert result.text == reply
    assert result.repaired == ()
    assert grapheme_len(result.text) == 300


# --- langs and helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("langs", "expected"),
    [
        pytest.param((), [], id="none"),
        pytest.param(["en"], ["en"], id="one"),
        pytest.param(["en", "EN", "ja", "en"], ["en", "ja"], id="deduplicated"),
        pytest.param(["fr", "", "de", "es", "it"], ["fr", "de", "es"], id="at-most-three"),
    ],
)
def test_langs(langs: list[str], expected: list[str]) -> None:
    """langs are deduplicated, in order, at most three (the post lexicon's maximum)."""
    assert compose("hi", "alice.bsky.social", OFFERED, langs=langs).langs == expected


@pytest.mark.parametrize(
    ("text", "graphemes"),
    [
        pytest.param("", 0, id="empty"),
        pytest.param("abc", 3, id="ascii"),
        pytest.param(FAMILY, 1, id="zwj"),
        pytest.param(FLAG_FR + FLAG_FR, 2, id="flags"),
        pytest.param(THUMB_DARK, 1, id="skin-tone"),
        pytest.param(E_ACUTE, 1, id="combining"),
        pytest.param("한국어", 3, id="hangul"),
    ],
)
def test_grapheme_len(text: str, graphemes: int) -> None:
    """grapheme_len counts user-perceived characters."""
    assert grapheme_len(text) == graphemes


def test_byte_slice() -> None:
    """byte_slice cuts by UTF-8 byte offsets."""
    assert byte_slice("🎉 @a.b", 5, 9) == "@a.b"


# --- property -------------------------------------------------------------------------------

_SPICE = st.sampled_from(
    [
        FAMILY,
        FLAG_FR,
        THUMB_DARK,
        "\u200d",
        "\u0301",
        "\u0308",
        "\U0001f3fb",
        "\u0600",  # Arabic number sign: a grapheme "prepend" character
        "مرحبا",
        "שלום",
        "\u200f",
        "\u202e",
        "\u2066",
        "中文",
        "한",
        " ",
        "\n",
        "\r",
        "\t",
        "\x00",
        ".",
        "@",
        "@alice.bsky.social",
        "@ALICE.bsky.social",
        "@bob.example.com",
        "https://x.example/y",
        "example.com",
        "www.",
        "…",
    ]
)
_TEXT = st.lists(st.one_of(st.text(max_size=20), _SPICE), max_size=60).map("".join)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    reply=_TEXT,
    mention=st.sampled_from(["alice.bsky.social", "@Bob.example.com"]),
    max_graphemes=st.sampled_from([20, 50, 300]),
    max_bytes=st.sampled_from([100, 200, 3000]),
    allow_links=st.booleans(),
    allow_other_mentions=st.booleans(),
)
def test_invariants_hold_for_any_text(
    reply: str,
    mention: str,
    max_graphemes: int,
    max_bytes: int,
    allow_links: bool,
    allow_other_mentions: bool,
) -> None:
    """For any text the facet is exact and the limits hold, or the reply is rejected as empty."""
    try:
        result = compose(
            reply,
            mention,
            OFFERED,
            max_graphemes=max_graphemes,
            max_bytes=max_bytes,
            allow_links=allow_links,
            allow_other_mentions=allow_other_mentions,
        )
    except DraftRejected as exc:
        assert exc.reason == "empty_reply"
        return
    assert_valid(result, result.mention.handle, max_graphemes=max_graphemes, max_bytes=max_bytes)
    assert not set(result.text) & {"\x00", "\x01", "\r", "\u202e", "\u2066"}
    assert "\n\n\n" not in result.text
    assert result.text == result.text.strip()
