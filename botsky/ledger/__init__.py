"""The ledger: what botsky remembers across restarts and replicas.

``open_ledger(url, data_dir)`` picks the backend from a URL; the contract is in ``base``.
"""

from __future__ import annotations

from pathlib import Path

from botsky.errors import ConfigError
from botsky.ledger.base import Ledger, Mention, Outcome
from botsky.ledger.sqlite import SqliteLedger

__all__ = ["Ledger", "Mention", "Outcome", "open_ledger"]

_DEFAULT_SQLITE_FILE = "botsky.sqlite3"


def open_ledger(
    url: str, data_dir: Path, *, inline: bool = False, read_only: bool = False
) -> Ledger:
    """The ledger ``url`` names, not yet opened (call ``await ledger.open()``).

    - ``sqlite``: ``data_dir/botsky.sqlite3``
    - ``sqlite:///abs/path.db`` or ``sqlite:relative.db`` (relative to ``data_dir``)
    - ``postgresql://...`` or ``postgres://...``: a PostgreSQL DSN

    ``inline``: a SQLite ledger runs its calls on the event loop's thread (lockstep runs; see
    ``SqliteLedger``). PostgreSQL is asynchronous already and ignores it. ``read_only``: for
    readers; ``open()`` neither creates nor migrates anything and fails with ``LedgerError``
    when there is no ledger yet or its schema is not current.
    """
    if url == "sqlite":
        return SqliteLedger(data_dir / _DEFAULT_SQLITE_FILE, inline=inline, read_only=read_only)
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:")
        if path.startswith("//"):
            # sqlite:///abs/path: the URL form, with an empty host.
            path = path.removeprefix("//")
            if not path.startswith("/"):
                raise ConfigError(
                    f"ledger URL {url!r} names a host; SQLite URLs are sqlite:///absolute/path "
                    "or sqlite:relative/path"
                )
        if not path:
            raise ConfigError(f"ledger URL {url!r} has no file path")
        # An absolute path replaces data_dir.
        return SqliteLedger(data_dir / path, inline=inline, read_only=read_only)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here so a SQLite-only install never loads psycopg.
        from botsky.ledger.postgres import PostgresLedger

        return PostgresLedger(url, read_only=read_only)
    # Only the scheme is echoed: the rest of a URL or DSN may hold a password.
    scheme = f"scheme {url.partition(':')[0]!r}" if ":" in url else "(no scheme)"
    raise ConfigError(
        f"unknown ledger URL {scheme}: use 'sqlite', 'sqlite:///abs/path.db', "
        "'sqlite:relative.db' or 'postgresql://user@host:port/dbname'"
    )
