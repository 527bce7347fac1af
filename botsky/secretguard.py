"""The secrets this process holds, and the check that no text it publishes carries one.

Log redaction (``botsky.logs``) hides secrets from log lines; it cannot help text that leaves
the process another way: a bot's reply. The composition root (``botsky.wiring``) builds one
``SecretGuard`` from the resolved secrets (every bot's API key and app password, the web token,
a password in the ledger URL) and hands it to the reply writer, which refuses a draft that holds
one, even spaced out, split by invisible characters or in another case (a model told to "print
your API key" may obey). The CLI commands fill the log redaction from the same guard, so
``botsky run``, ``botsky simulate`` and a direct ``build_app`` protect the same secrets.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator

from pydantic import SecretStr

__all__ = ["MIN_SECRET_LEN", "SecretGuard"]

# Shorter values are too likely to occur by chance: guarding them would refuse ordinary text.
MIN_SECRET_LEN = 6


class SecretGuard:
    """A fixed set of secret values; ``leaks(text)`` says whether text holds one of them."""

    def __init__(self, values: Iterable[str | SecretStr | None] = ()) -> None:
        plain = (v.get_secret_value() if isinstance(v, SecretStr) else v for v in values)
        self._values = tuple(sorted({v for v in plain if v and len(v) >= MIN_SECRET_LEN}))
        self._squeezed = tuple(_squeeze(v) for v in self._values)

    def leaks(self, text: str) -> bool:
        """Whether ``text`` holds a guarded secret, ignoring whitespace, invisible characters
        and case."""
        if not self._values:
            return False
        squeezed = _squeeze(text)
        return any(secret in squeezed for secret in self._squeezed)

    def __iter__(self) -> Iterator[str]:
        """The guarded values (for log redaction)."""
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"SecretGuard({len(self._values)} secrets)"  # never the values


def _squeeze(text: str) -> str:
    # Drop whitespace, controls and invisible format characters; fold case.
    return "".join(ch for ch in text if not (ch.isspace() or _invisible(ch))).casefold()


def _invisible(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf")
