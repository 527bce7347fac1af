"""``botsky.logs``: JSON lines, context, redaction, the file mirror and reconfiguration."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from pydantic import SecretStr

from botsky.logs import REDACTED, configure_logging, redact_secrets, register_secret


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Leave structlog as other tests expect it."""
    yield
    structlog.contextvars.clear_contextvars()
    configure_logging(stream=io.StringIO())  # closes a file a test opened
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in stream.getvalue().splitlines()]


def test_json_lines_have_expected_keys() -> None:
    """Each log call is one JSON line with event, level, logger, UTC timestamp and fields."""
    out = io.StringIO()
    configure_logging(stream=out)
    structlog.get_logger("botsky.test").info("reply_posted", bot="b1", tokens=12)
    [rec] = lines(out)
    assert rec["event"] == "reply_posted"
    assert rec["level"] == "info"
    assert rec["logger"] == "botsky.test"
    assert rec["bot"] == "b1"
    assert rec["tokens"] == 12
    assert rec["timestamp"].endswith("Z") and "T" in rec["timestamp"]


def test_level_filters() -> None:
    """Calls below the configured level write nothing."""
    out = io.StringIO()
    configure_logging(level="warning", stream=out)
    log = structlog.get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [r["event"] for r in lines(out)] == ["loud"]
    assert "logger" not in lines(out)[0]


def test_contextvars_appear() -> None:
    """Context bound with ``bind_contextvars`` shows up in every line until unbound."""
    out = io.StringIO()
    configure_logging(stream=out)
    log = structlog.get_logger()
    structlog.contextvars.bind_contextvars(post_uri="at://did:plc:a/app.bsky.feed.post/3k")
    log.info("selected")
    structlog.contextvars.unbind_contextvars("post_uri")
    log.info("idle")
    first, second = lines(out)
    assert first["post_uri"] == "at://did:plc:a/app.bsky.feed.post/3k"
    assert "post_uri" not in second


def test_secret_key_names_redacted() -> None:
    """Values under secret-looking keys are redacted; counts like ``prompt_tokens`` are not."""
    out = io.StringIO()
    configure_logging(stream=out)
    structlog.get_logger().info(
        "login",
        password="hunter2hunter2",
        app_password="abcd-efgh-ijkl-mnop",
        api_key="sk-live-123",
        accessJwt="eyJhbGciOi",
        headers={"Authorization": "Bearer abc", "x-api-key": "k", "accept": "json"},
        token="t0k3n",
        prompt_tokens=120,
        completion_tokens=30,
        post_author="did:plc:author",
        handle="bot.bsky.social",
    )
    [rec] = lines(out)
    for key in ("password", "app_password", "api_key", "accessJwt", "token"):
        assert rec[key] == REDACTED, key
    assert rec["headers"] == {"Authorization": REDACTED, "x-api-key": REDACTED, "accept": "json"}
    assert rec["prompt_tokens"] == 120 and rec["completion_tokens"] == 30
    assert rec["post_author"] == "did:plc:author"
    assert rec["handle"] == "bot.bsky.social"


def test_secretstr_redacted_anywhere() -> None:
    """A ``SecretStr`` is redacted under any key, nested in dicts and lists."""
    out = io.StringIO()
    configure_logging(stream=out)
    secret = SecretStr("very-secret-value")
    structlog.get_logger().info("config", bot={"name": "b1", "creds": [secret]}, value=secret)
    [rec] = lines(out)
    assert rec["value"] == REDACTED
    assert rec["bot"] == {"name": "b1", "creds": [REDACTED]}
    assert "very-secret-value" not in out.getvalue()


def test_registered_secret_scrubbed_inside_strings() -> None:
    """A registered literal is scrubbed wherever it appears inside a string, even the message."""
    out = io.StringIO()
    configure_logging(stream=out)
    register_secret("sk-embedded-4f9a1c")
    register_secret(SecretStr("xapp-pw-77aa"))
    structlog.get_logger().warning(
        "call failed with sk-embedded-4f9a1c",
        error="401: key sk-embedded-4f9a1c rejected",
        nested={"detail": ["retry with xapp-pw-77aa later"]},
        exc=RuntimeError("bad key sk-embedded-4f9a1c"),
    )
    [rec] = lines(out)
    assert rec["event"] == f"call failed with {REDACTED}"
    assert rec["error"] == f"401: key {REDACTED} rejected"
    assert rec["nested"] == {"detail": [f"retry with {REDACTED} later"]}
    assert rec["exc"] == f"RuntimeError: bad key {REDACTED}"
    assert "sk-embedded" not in out.getvalue() and "xapp-pw" not in out.getvalue()


def test_short_registered_secret_ignored() -> None:
    """Literals shorter than six characters are not scrubbed (they would mangle text)."""
    register_secret("abc")
    event = redact_secrets(None, "info", {"event": "abc abc"})
    assert event["event"] == "abc abc"


def test_secret_scrubbed_from_traceback() -> None:
    """A registered secret in an exception's message is scrubbed from the logged traceback."""
    out = io.StringIO()
    configure_logging(stream=out)
    register_secret("tb-secret-9911")
    try:
        raise ValueError("token tb-secret-9911 expired")
    except ValueError:
        structlog.get_logger().exception("post_failed")
    [rec] = lines(out)
    assert "ValueError" in rec["exception"]
    assert "tb-secret-9911" not in out.getvalue()


def test_url_password_redacted() -> None:
    """The password in a ``scheme://user:password@host`` URL is redacted."""
    event = redact_secrets(None, "info", {"event": "ledger", "url": "postgresql://bot:pw123@db/x"})
    assert event["url"] == f"postgresql://bot:{REDACTED}@db/x"


def test_redaction_copies_containers() -> None:
    """Redaction never changes the caller's dicts in place."""
    headers = {"authorization": "Bearer abc"}
    event = redact_secrets(None, "info", {"event": "e", "headers": headers})
    assert event["headers"] == {"authorization": REDACTED}
    assert headers == {"authorization": "Bearer abc"}


def test_file_mirrors_stream(tmp_path: Path) -> None:
    """With a file, the same JSON lines are appended there as on the stream."""
    out = io.StringIO()
    path = tmp_path / "logs" / "botsky.log.jsonl"
    configure_logging(fmt="json", file=path, stream=out)
    log = structlog.get_logger("botsky.app")
    log.info("one", n=1)
    log.warning("two", password="secret-pw-1")
    assert path.read_text() == out.getvalue()
    assert [r["event"] for r in lines(out)] == ["one", "two"]
    assert "secret-pw-1" not in path.read_text()


def test_file_is_json_when_stream_is_console(tmp_path: Path) -> None:
    """On a TTY the stream gets the console view while the file still gets JSON lines."""
    out = FakeTTY()
    path = tmp_path / "botsky.log.jsonl"
    configure_logging(file=path, stream=out)
    structlog.get_logger().info("hello", bot="b1", api_key="k-123456")
    assert "hello" in out.getvalue()
    assert not out.getvalue().startswith("{")
    assert "k-123456" not in out.getvalue()
    [rec] = [orjson.loads(x) for x in path.read_text().splitlines()]
    assert rec["event"] == "hello" and rec["api_key"] == REDACTED


def test_console_format_forced() -> None:
    """``fmt='console'`` renders for people even when the stream is not a TTY."""
    out = io.StringIO()
    configure_logging(fmt="console", stream=out)
    structlog.get_logger().info("hello", bot="b1")
    text = out.getvalue()
    assert "hello" in text and "bot=b1" in text and not text.startswith("{")
    assert "\x1b[" not in text  # no colours off a TTY


def test_console_renders_tracebacks() -> None:
    """The console view shows an exception's traceback, scrubbed, without warnings."""
    out = FakeTTY()
    configure_logging(stream=out)
    register_secret("console-secret-42")
    try:
        raise KeyError("console-secret-42")
    except KeyError:
        structlog.get_logger().exception("boom")
    assert "KeyError" in out.getvalue() and "Traceback" in out.getvalue()
    assert "console-secret-42" not in out.getvalue()


def test_json_format_forced_on_tty() -> None:
    """``fmt='json'`` writes JSON even to a TTY."""
    out = FakeTTY()
    configure_logging(fmt="json", stream=out)
    structlog.get_logger().info("hello")
    assert lines(out)[0]["event"] == "hello"


def test_reconfigure_is_idempotent(tmp_path: Path) -> None:
    """Configuring twice replaces the sinks: no duplicate lines, and the old file is closed."""
    first, second = io.StringIO(), io.StringIO()
    path = tmp_path / "a.jsonl"
    log = structlog.get_logger()  # handed out before configuration
    configure_logging(stream=first, file=path)
    configure_logging(stream=first, file=path)
    log.info("once")
    configure_logging(stream=second)
    log.info("moved")
    assert [r["event"] for r in lines(first)] == ["once"]
    assert [r["event"] for r in lines(second)] == ["moved"]
    assert path.read_text().count("once") == 1
    assert "moved" not in path.read_text()


def test_capture_logs_works_after_configuring() -> None:
    """``structlog.testing.capture_logs`` still captures once logging is configured."""
    out = io.StringIO()
    configure_logging(stream=out)
    with structlog.testing.capture_logs() as captured:
        structlog.get_logger().info("captured", n=1)
    assert captured == [{"event": "captured", "n": 1, "log_level": "info"}]
    assert out.getvalue() == ""


def test_unserializable_values_still_logged() -> None:
    """Objects JSON cannot hold (paths, sets, huge ints, int keys) are rendered, not fatal."""
    out = io.StringIO()
    configure_logging(stream=out)
    structlog.get_logger().info("odd", path=Path("/tmp/x"), tags={"b", "a"}, big=2**70, m={1: "x"})
    [rec] = lines(out)
    assert rec["path"] == "/tmp/x"
    assert rec["big"] == 2**70


def test_unknown_format_rejected() -> None:
    """An unknown format is a ``ValueError``, not a silent default."""
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging(fmt="xml")


# -- notices: what a person must see on the terminal -----------------------------------------


def test_notices_reach_standard_error_as_sentences(monkeypatch: pytest.MonkeyPatch) -> None:
    """A left-out bot is one plain, redacted sentence on stderr; other events are not."""
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    out = io.StringIO()
    configure_logging(stream=out, notices=True)
    register_secret("sk-notice-secret-77")
    log = structlog.get_logger()
    log.info("reply_posted", bot="cleo")
    log.warning(
        "bot_disabled",
        bot="cleo",
        reason="http://127.0.0.1:11434/v1 is not reachable (connection refused)",
        hint="start the server (sk-notice-secret-77)",
    )
    assert err.getvalue() == (
        "botsky: bot cleo left out: http://127.0.0.1:11434/v1 is not reachable (connection "
        f"refused). Fix: start the server ({REDACTED}).\n"
    )
    assert [r["event"] for r in lines(out)] == ["reply_posted", "bot_disabled"]


@pytest.mark.parametrize(
    ("stderr_tty", "stdout", "fmt", "shown"),
    [
        (True, io.StringIO, "auto", True),  # JSON on stdout (a pipe): the terminal needs them
        (True, FakeTTY, "json", True),
        (True, FakeTTY, "auto", False),  # the console view shows them already
        (False, io.StringIO, "auto", False),  # nobody is watching stderr
    ],
)
def test_notices_by_default_only_where_a_person_would_miss_them(
    monkeypatch: pytest.MonkeyPatch,
    stderr_tty: bool,
    stdout: type[io.StringIO],
    fmt: str,
    shown: bool,
) -> None:
    """Without ``notices``, sentences go to stderr when it is a terminal that does not already
    show the log as a console view."""
    err = FakeTTY() if stderr_tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    configure_logging(fmt=fmt, stream=stdout())
    structlog.get_logger().warning("bot_paused", bot="b", reason="r", pause_s=30, hint="h")
    assert (err.getvalue() != "") is shown
