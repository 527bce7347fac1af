"""What the commands share: the ``-c/--config`` option, and loading the configuration and its
secrets or exiting with one line per problem.

Every command that loads secrets fills the log redaction from the app's ``SecretGuard``
(``botsky.wiring.secret_guard``), the same values ``build_app`` guards replies with, so
``botsky run``, ``botsky simulate`` and ``botsky accounts`` redact the same secrets.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from botsky.errors import ConfigError

if TYPE_CHECKING:
    from botsky.configload import LoadedConfig, Secrets

__all__ = ["config_option", "load_or_exit", "or_exit"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def config_option(default: str = "configs/botsky.yaml") -> Callable[[F], F]:
    """The ``-c/--config`` option; ``default`` is what the command reads without it."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help=f"botsky.yaml to read (default: {default} in the working directory).",
    )


def or_exit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; on a ``ConfigError`` print its problems and exit 1."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        for line in exc.problems:
            click.echo(line, err=True)
        sys.exit(1)


def load_or_exit(
    config_path: Path | None, *, live: bool | None = None
) -> tuple[LoadedConfig, Secrets]:
    """The configuration and the bots' secrets, or exit 1 with one line per problem.

    ``live``: whether every bot needs its app password (default: ``posting.mode`` is live).
    The secrets are registered for log redaction before anything is logged.
    """
    from botsky.configload import load_config, resolve_secrets
    from botsky.logs import register_secret
    from botsky.wiring import secret_guard

    loaded = or_exit(load_config, config_path)
    if live is None:
        live = loaded.settings.posting.mode == "live"
    secrets = or_exit(resolve_secrets, loaded, live=live)
    for value in secret_guard(loaded, secrets):
        register_secret(value)
    return loaded, secrets
