"""Conformance of ``botsky.syntax`` with the atproto interop vectors (tests/data/syntax)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botsky import syntax

DATA = Path(__file__).parent / "data" / "syntax"

# vector file stem -> validator kind. ``datetime_parse_invalid`` and ``language_parse_invalid``
# hold values whose shape is right but which name no real instant (month 13) or repeat a
# subtag; the reference implementation refuses them, and botsky wants values it can use, so
# they count as invalid here too.
FILES: dict[str, str] = {
    "did": "did",
    "handle": "handle",
    "atidentifier": "at_identifier",
    "aturi": "at_uri",
    "nsid": "nsid",
    "recordkey": "record_key",
    "tid": "tid",
    "datetime": "datetime",
    "language": "language",
    "cid": "cid",
}
INVALID_SUFFIXES = ("syntax_invalid", "parse_invalid")


def read_vectors(path: Path) -> list[str]:
    """Values of one vector file: spaces are part of a value, only the newline is not."""
    values = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("#") or line == "":
            continue
        values.append(line)
    return values


def cases(valid: bool) -> list[object]:
    params: list[object] = []
    for stem, kind in FILES.items():
        suffixes = ("syntax_valid",) if valid else INVALID_SUFFIXES
        for suffix in suffixes:
            path = DATA / f"{stem}_{suffix}.txt"
            if not path.exists():
                continue
            for n, value in enumerate(read_vectors(path)):
                params.append(pytest.param(kind, value, id=f"{path.stem}[{n}]"))
    return params


@pytest.mark.parametrize(("kind", "value"), cases(valid=True))
def test_valid_vector_accepted(kind: str, value: str) -> None:
    """Every value in a ``*_syntax_valid.txt`` file is accepted."""
    assert syntax.KINDS[kind](value), value
    syntax.validate(kind, value)


@pytest.mark.parametrize(("kind", "value"), cases(valid=False))
def test_invalid_vector_rejected(kind: str, value: str) -> None:
    """Every value in a ``*_syntax_invalid.txt`` or ``*_parse_invalid.txt`` file is refused."""
    assert not syntax.KINDS[kind](value), value
    with pytest.raises(ValueError, match=f"invalid {kind}"):
        syntax.validate(kind, value)


def test_vector_files_are_all_read() -> None:
    """Every copied vector file maps to a validator, so no file is silently left out."""
    stems = {p.stem.rsplit("_", 2)[0] for p in DATA.glob("*.txt")}
    # generic URIs are not an identifier botsky validates
    assert stems - set(FILES) == {"uri"}


def test_reader_keeps_spaces() -> None:
    """The vector reader keeps leading and trailing spaces, which the invalid files rely on."""
    values = read_vectors(DATA / "datetime_syntax_invalid.txt")
    assert " 1985-04-12T23:20:50.123Z" in values
    assert "1985-04-12T23:20:50.123Z " in values


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("did", "did:plc:z72i7hdynmk6r22z27h6tvur\n"),
        ("handle", "alice.bsky.social\n"),
        ("nsid", "app.bsky.feed.post\n"),
        ("tid", "3jzfcijpj2z2a\n"),
        ("record_key", "self\n"),
        ("at_uri", "at://did:plc:abc/app.bsky.feed.post/3jzfcijpj2z2a\n"),
        ("datetime", "1985-04-12T23:20:50.123Z\n"),
        ("language", "en\n"),
        ("cid", "bafyreiguce4jh7kcbmof3pmcvasifqtw24b6isakj5ve5ga2b4z4alpc4i\n"),
        ("handle", "alice.bsky.social\t"),
        ("did", "did:plc:abc\x00"),
        ("handle", "ålice.bsky.social"),
    ],
)
def test_trailing_newline_and_control_chars_rejected(kind: str, value: str) -> None:
    """A trailing newline or control character is refused (the SDK's ``$`` would allow it)."""
    assert not syntax.KINDS[kind](value)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("at_uri", "at://did:web:localhost%3A8080/app.bsky.feed.post/3jzfcijpj2z2a"),
        ("at_uri", "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3jzfcijpj2z2a"),
        ("at_uri", "at://alice.bsky.social/app.bsky.actor.profile/self"),
        ("datetime", "2024-02-29T00:00:00Z"),
        ("datetime", "0000-01-01T01:00:00+01:00"),
        ("language", "zh-min-nan"),
    ],
)
def test_extra_valid_values(kind: str, value: str) -> None:
    """Values the vectors do not cover but the specs allow are accepted."""
    assert syntax.KINDS[kind](value)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("datetime", "2023-02-29T00:00:00Z"),
        ("datetime", "1985-04-12T23:20:50.123+24:00"),
        ("datetime", "1985-04-12T23:20:60Z"),
        ("at_uri", "at://did:plc:abc/app.bsky.feed.post/3jzfcijpj2z2a?x=1"),
        ("language", "en-a-foo-A-bar"),
        ("cid", "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR"),
    ],
)
def test_extra_invalid_values(kind: str, value: str) -> None:
    """Values the vectors do not cover but the specs forbid are refused."""
    assert not syntax.KINDS[kind](value)


@pytest.mark.parametrize("value", [None, 42, b"did:plc:abc", ["did:plc:abc"], {"a": 1}])
@pytest.mark.parametrize("kind", list(syntax.KINDS))
def test_non_strings_rejected(kind: str, value: object) -> None:
    """Untyped JSON values (None, numbers, bytes, lists) are refused, not raised on."""
    assert syntax.KINDS[kind](value) is False


@given(st.text())
def test_validators_never_raise(value: str) -> None:
    """No validator raises on any string."""
    for check in syntax.KINDS.values():
        assert check(value) in (True, False)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789.:-/_~%#@ @T+Z", max_size=40))
def test_validators_never_raise_on_near_misses(value: str) -> None:
    """No validator raises on strings built from the identifiers' own characters."""
    checks: list[Callable[[object], bool]] = list(syntax.KINDS.values())
    for check in checks:
        assert check(value) in (True, False)
    assert syntax.is_valid_at_uri("at://" + value) in (True, False)


def test_validate_unknown_kind() -> None:
    """``validate`` names the known kinds when given an unknown one."""
    with pytest.raises(ValueError, match="unknown identifier kind 'email'"):
        syntax.validate("email", "a@b.c")
