"""Lenient JSON parsing of model answers, and parsing of servers' retry hints."""

from __future__ import annotations

import email.utils

import pytest

from botsky.errors import ModelError
from botsky.llm._retry import is_transient_status, retry_after_seconds
from botsky.llm.parse import parse_json_object

ANSWER = {"reply": "hi @bob.test", "mention": "bob.test"}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"reply": "hi @bob.test", "mention": "bob.test"}', id="bare"),
        pytest.param('  \n{"reply": "hi @bob.test", "mention": "bob.test"}\n ', id="whitespace"),
        pytest.param(
            '```json\n{"reply": "hi @bob.test", "mention": "bob.test"}\n```', id="json-fence"
        ),
        pytest.param('```\n{"reply": "hi @bob.test", "mention": "bob.test"}\n```', id="bare-fence"),
        pytest.param(
            'Sure! Here is my answer:\n{"reply": "hi @bob.test", "mention": "bob.test"}\nEnjoy.',
            id="prose-around",
        ),
        pytest.param(
            'I would pick {bob}. {"reply": "hi @bob.test", "mention": "bob.test"}',
            id="stray-brace-before",
        ),
        pytest.param(
            '[{"reply": "hi @bob.test", "mention": "bob.test"}]',
            id="object-inside-array",
        ),
    ],
)
def test_parse_finds_the_object(text: str) -> None:
    """Bare, fenced and prose-wrapped objects all parse to the same dict."""
    assert parse_json_object(text) == ANSWER


def test_parse_keeps_braces_inside_strings() -> None:
    """Braces inside JSON strings do not confuse the object boundaries."""
    text = 'Answer: {"reply": "a {curly} } reply @bob.test", "mention": "bob.test"} done'
    assert parse_json_object(text) == {
        "reply": "a {curly} } reply @bob.test",
        "mention": "bob.test",
    }


def test_parse_returns_the_outer_object_when_nested() -> None:
    """A nested object comes back whole, not as its inner part."""
    assert parse_json_object('{"a": {"b": 1}, "c": 2}') == {"a": {"b": 1}, "c": 2}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("I'd recommend @bob.test!", id="prose-only"),
        pytest.param('{"reply": "hi", "mention": "bob",}', id="trailing-comma"),
        pytest.param("{'reply': 'hi', 'mention': 'bob'}", id="single-quotes"),
        pytest.param('{"reply": "cut off at max_tok', id="truncated"),
        pytest.param("[1, 2, 3]", id="array"),
        pytest.param('"just a string"', id="string"),
    ],
)
def test_parse_rejects_answers_without_an_object(text: str) -> None:
    """No JSON object anywhere means ModelError('unparseable answer')."""
    with pytest.raises(ModelError, match="unparseable answer"):
        parse_json_object(text)


NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"retry-after": "7"}, 7.0, id="seconds"),
        pytest.param({"retry-after": "1.5"}, 1.5, id="float-seconds"),
        pytest.param({"retry-after-ms": "250"}, 0.25, id="ms"),
        pytest.param({"retry-after-ms": "250", "retry-after": "1"}, 0.25, id="ms-wins"),
        pytest.param({"retry-after-ms": "soon", "retry-after": "2"}, 2.0, id="bad-ms-falls-back"),
        pytest.param(
            {"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0, id="http-date"
        ),
        pytest.param(
            {"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0, id="past-date"
        ),
        pytest.param({"retry-after": "-3"}, 0.0, id="negative"),
        pytest.param({"retry-after": "whenever"}, None, id="garbage"),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms, retry-after seconds and HTTP dates become seconds to wait."""
    assert retry_after_seconds(headers, now=NOW) == expected


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        *[(status, False) for status in (400, 401, 403, 404, 422)],
        *[(status, True) for status in (408, 429, 500, 502, 503, 529)],
    ],
)
def test_transient_statuses(status: int, transient: bool) -> None:
    """408, 429 and 5xx are worth retrying; other 4xx are not."""
    assert is_transient_status(status) is transient
