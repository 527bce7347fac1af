"""compose: the mention facet is exact in UTF-8 bytes and the text obeys the post limits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from botsky.compose import Composed, Offered, byte_slice, compose, grapheme_len
from botsky.errors import DraftRejected

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
        "Ask alice.bsky.socialite about it @alice.bsky.social",
        ("removed_mention", "inserted_mention"),
        id="longer-handle-is-not-the-mention",
    ),
    pytest.param(
        "@carol.bsky.social and @alice.bsky.social should meet",
        "alice.bsky.social",
        {},
        "carol.bsky.social and @alice.bsky.social should meet",
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
        "@alice.bsky.social, yes you Alice.bsky.social!",
        ("removed_mention",),
        id="duplicate-mention-defanged",
    ),
    pytest.param(
        "@alice.bsky.social\u0301 hi",
        "alice.bsky.social",
        {},
        "alice.bsky.social\u0301 hi @alice.bsky.social",
        ("removed_mention", "inserted_mention"),
        id="mark-fused-to-handle-is-not-the-mention",
    ),
    pytest.param(
        "mail bob@example.org or @3.14, e.g. it.Really ends here. @alice.bsky.social",
        "alice.bsky.social",
        {},
        "mail bob@example.org or @3.14, e.g. it.Really ends here. @alice.bsky.social",
        (),
        id="not-links-not-mentions",
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
