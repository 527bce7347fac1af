"""SecretGuard: which text holds one of the process's secrets."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from botsky.secretguard import SecretGuard

KEY = "sk-guard-test-7f3a9c21"


@pytest.mark.parametrize(
    "text",
    [
        f"my key is {KEY}",
        " ".join(KEY),  # spaced out
        "\u200b".join(KEY),  # split by zero-width spaces
        KEY.upper(),
        f"{KEY[:8]}\n\t{KEY[8:]}",
    ],
    ids=["plain", "spaced", "zero-width", "upper", "split-by-newline"],
)
def test_a_secret_is_found_however_it_is_dressed(text: str) -> None:
    """Whitespace, invisible characters and case do not hide a secret."""
    assert SecretGuard([SecretStr(KEY)]).leaks(text)


def test_other_text_and_short_values_are_not_secrets() -> None:
    """Text without the secret passes; values under 6 characters and None are not guarded."""
    guard = SecretGuard([KEY, "abc", None, ""])
    assert len(guard) == 1 and list(guard) == [KEY]
    assert not guard.leaks("sk-guard-test and more")
    assert not guard.leaks("abc abc")
    assert not SecretGuard().leaks(KEY)


def test_the_guard_never_shows_its_values() -> None:
    """repr() names how many secrets, never which."""
    assert KEY not in repr(SecretGuard([KEY])) and "1" in repr(SecretGuard([KEY]))
