"""structlog, configured once: JSON lines for machines, a console view for people, no secrets.

Every line carries an ISO timestamp (UTC), the level, the logger name and whatever the current
task bound with ``structlog.contextvars.bind_contextvars``. ``redact_secrets`` runs before
rendering, so neither the stream nor the file ever sees a password, key or token. The file, when
given, receives the same JSON lines as a JSON stream would (``botsky scores --logs`` reads it).

The logger is structlog's own (no stdlib ``logging``): a filtering bound logger over a small
writer that flushes every line to the stream and the file.

**Notices**: a few events need a person to act (a bot left out at start, a bot paused, no bot
left). With ``notices`` on, each of them is also written as one plain sentence to standard error
(``NOTICES`` holds the sentences), so they reach the terminal even when the log lines go to a
file only (``botsky simulate``) or to stdout as JSON (``botsky run > run.jsonl``). They are
redacted like every other line.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Collection
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, Final

import orjson
import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "NOTICES",
    "REDACTED",
    "configure_logging",
    "is_console",
    "redact_secrets",
    "register_secret",
]

REDACTED: Final = "[redacted]"

# A key is secret when one of its words (snake, kebab or camelCase) is one of these, or two
# neighbouring words make one of the pairs. Whole words, so ``prompt_tokens`` (a count) and
# ``post_author`` stay readable while ``access_token``, ``accessJwt`` and ``x-api-key`` do not.
_SECRET_WORDS: Final = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "credential",
        "credentials",
        "jwt",
        "passphrase",
        "passwd",
        "password",
        "secret",
        "token",
    }
)
_SECRET_PAIRS: Final = frozenset({("api", "key"), ("private", "key"), ("signing", "key")})
# user:password@ inside any URL, e.g. a PostgreSQL DSN.
_URL_PASSWORD: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+@")
# Registered literals shorter than this are too likely to occur by chance to scrub.
_MIN_SECRET_LEN: Final = 6
_MAX_DEPTH: Final = 8

_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None


def register_secret(value: str | SecretStr) -> None:
    """Scrub this literal (an API key, an app password) from every string logged from now on.

    Values shorter than 6 characters are ignored: scrubbing them would mangle ordinary text.
    The CLI commands register every value of the app's ``SecretGuard`` (``botsky.secretguard``).
    """
    global _secrets_pattern
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if len(value) < _MIN_SECRET_LEN or value in _secrets:
        return
    _secrets.add(value)
    # Longest first, so a secret that contains another is replaced whole.
    ordered = sorted(_secrets, key=len, reverse=True)
    _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


@lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    parts = [w for w in re.split(r"[^a-z0-9]+", words) if w]
    return any(w in _SECRET_WORDS for w in parts) or any(
        pair in _SECRET_PAIRS for pair in pairwise(parts)
    )


def _scrub(text: str) -> str:
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    pattern = _secrets_pattern
    return pattern.sub(REDACTED, text) if pattern is not None else text


def _redact(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {k: _redact_item(k, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, depth + 1) for v in value]
    if isinstance(value, BaseException):
        # Rendered here, not by the JSON fallback later, so its message is scrubbed too.
        return _scrub(f"{type(value).__name__}: {value}")
    return value


def _redact_item(key: object, value: Any, depth: int) -> Any:
    # Numbers and flags under a secret-looking key (token_count, password_set) are not secrets.
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(key, str) and _is_secret_key(key):
        return REDACTED
    return _redact(value, depth)


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide secrets anywhere in the event, at any nesting depth.

    Replaces (a) the value of any key whose name looks secret, (b) pydantic ``SecretStr`` and
    ``SecretBytes`` values, and (c) every literal passed to ``register_secret`` (and the
    password of any ``scheme://user:password@`` URL) inside every string, with ``[redacted]``.
    Containers are copied, never changed in place: they may belong to the caller.
    """
    return {k: _redact_item(k, v, 0) for k, v in event_dict.items()}


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _fallback(obj: object) -> object:
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    return str(obj)


def _json_line(event_dict: EventDict) -> str:
    try:
        return orjson.dumps(event_dict, default=_fallback, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        # orjson refuses what it cannot represent exactly (ints beyond 64 bits, say); a log
        # line must still be written.
        return json.dumps(event_dict, default=str, ensure_ascii=False)


class _Writer:
    """The wrapped logger: writes each rendered line to the stream and the file, flushed.

    The last processor hands it ``(stream_line, file_line)``; every level method is the same
    method, since filtering by level happens before (in the bound logger).
    """

    def __init__(self, name: str | None, sinks: _Sinks) -> None:
        self.name = name
        self._sinks = sinks

    def msg(self, stream_line: str | None, file_line: str | None = None) -> None:
        self._sinks.write(stream_line, file_line)

    debug = info = warning = warn = error = critical = fatal = exception = log = msg


class _Sinks:
    def __init__(self, stream: IO[str], file: IO[str] | None) -> None:
        self.stream = stream
        self.file = file
        # Lines may come from worker threads (asyncio.to_thread); keep them whole.
        self._lock = threading.Lock()

    def write(self, stream_line: str | None, file_line: str | None) -> None:
        with self._lock:
            if stream_line is not None:
                self.stream.write(stream_line + "\n")
                self.stream.flush()
            if self.file is not None and file_line is not None:
                self.file.write(file_line + "\n")
                self.file.flush()

    def logger(self, *args: Any) -> _Writer:
        """structlog logger factory: ``get_logger(__name__)`` passes the name through."""
        return _Writer(str(args[0]) if args else None, self)


class _Render:
    """Last processor: JSON for the file and a JSON stream, the console view for a TTY."""

    def __init__(
        self,
        console: structlog.dev.ConsoleRenderer | None,
        file: bool,
        file_only: frozenset[str] = frozenset(),
    ) -> None:
        self._console = console
        self._file = file
        self._file_only = file_only

    def __call__(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> tuple[tuple[str | None, str | None], dict[str, Any]]:
        line = _json_line(event_dict) if self._console is None or self._file else None
        if self._console is None:
            assert line is not None
            return (line, line), {}
        if event_dict.get("event") in self._file_only:
            return (None, line), {}
        return (self._console(logger, method_name, event_dict), line), {}


# The events a person must see, as one sentence each (``str.format`` over the event's fields).
NOTICES: Final[dict[str, str]] = {
    "bot_disabled": "bot {bot} left out: {reason}. Fix: {hint}.",
    "bot_paused": "bot {bot} paused for {pause_s} s: {reason}; {hint}.",
    "bot_resumed": "bot {bot} answers again.",
    "no_bots_enabled": "no bot can answer: {reason}. Fix: {hint}.",
}


class _Notices:
    """Processor: write the ``NOTICES`` events as sentences to standard error, looked up at
    each write (a progress display may have redirected it to print above itself)."""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        template = NOTICES.get(str(event_dict.get("event")))
        if template is not None:
            try:
                text = template.format(**event_dict)
            except (KeyError, IndexError, ValueError):
                text = " ".join(f"{k}={v}" for k, v in event_dict.items() if k != "timestamp")
            stream = sys.stderr
            stream.write(f"botsky: {text}\n")
            stream.flush()
        return event_dict


_open_file: IO[str] | None = None


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


def is_console(fmt: str = "auto", stream: IO[str] | None = None) -> bool:
    """Whether ``configure_logging(fmt=fmt, stream=stream)`` shows logs for people."""
    return fmt == "console" or (fmt == "auto" and _isatty(stream or sys.stdout))


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    file: Path | None = None,
    stream: IO[str] | None = None,
    file_only: Collection[str] = (),
    notices: bool | None = None,
) -> None:
    """Configure structlog for the whole process; calling it again replaces the configuration.

    ``fmt``: ``json`` (one JSON object a line), ``console`` (for people) or ``auto`` (console
    on a TTY, JSON otherwise). ``file``: also append JSON lines there, flushed per line.
    ``stream`` defaults to standard output. ``file_only``: events not shown on a console stream
    (the CLI prints them for people its own way; JSON streams and the file keep them).
    ``notices``: also write the ``NOTICES`` events to standard error as sentences; None (the
    default) does so when standard error is a terminal and the log lines are not already shown
    there as a console view. Loggers already handed out follow the new configuration, and
    ``structlog.testing.capture_logs`` keeps working.
    """
    global _open_file
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}; use auto, json or console")
    out = stream if stream is not None else sys.stdout
    tty = _isatty(out)
    console = is_console(fmt, out)

    if _open_file is not None:
        _open_file.close()
        _open_file = None
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        _open_file = file.open("a", encoding="utf-8")

    if notices is None:
        notices = _isatty(sys.stderr) and not (console and tty)
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become a plain string here, before redaction, so they are scrubbed too.
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    if notices:
        processors.append(_Notices())
    processors.append(
        _Render(
            structlog.dev.ConsoleRenderer(colors=tty) if console else None,
            file is not None,
            frozenset(file_only),
        )
    )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level.lower()),
        logger_factory=_Sinks(out, _open_file).logger,
        # Not cached: module-level loggers must follow a reconfiguration (and capture_logs).
        cache_logger_on_first_use=False,
    )
