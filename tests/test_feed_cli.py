"""``botsky feed`` and the ``feed`` config section: validation, the record, user errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from botsky.cli import cli
from botsky.config import FeedConfig, Settings
from botsky.feed.cli import build_record, did_web_url, record_problems, skeleton_problems

PUBLISHER = {"handle": "pub.test", "did": "did:plc:publisher", "password_env": "NO_SUCH_PW_VAR"}


def _feed(**kw: object) -> FeedConfig:
    base: dict[str, object] = {
        "enabled": True,
        "service_did": "did:web:feed.example.com",
        "publisher": PUBLISHER,
    }
    base.update(kw)
    return FeedConfig.model_validate(base)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"display_name": "a name that is far too long for it"}, "24 graphemes"),
        ({"display_name": "   "}, "must not be empty"),
        ({"description": "x" * 301}, "300 graphemes"),
        ({"service_did": "did:plc:abc"}, "did:web"),
        ({"service_did": None}, "needs feed.service_did"),
        ({"publisher": None}, "needs feed.publisher"),
        ({"viewer_retention_s": 60, "attribution_window_s": 3600}, "retention"),
        ({"rkey": "bad/key"}, "rkey"),
    ],
)
def test_feed_config_rejects(changes: dict[str, object], message: str) -> None:
    """Each invalid feed setting is refused with a message naming it."""
    with pytest.raises(ValidationError, match=message):
        _feed(**changes)


def test_feed_config_needs_the_web_app_and_derives_uri_and_endpoint() -> None:
    """The feed is served by the web app; its URI and endpoint come from the config."""
    with pytest.raises(ValidationError, match=r"web\.enabled"):
        Settings(feed=_feed())
    cfg = _feed()
    assert cfg.feed_uri == "at://did:plc:publisher/app.bsky.feed.generator/botsky-fair"
    assert cfg.endpoint == "https://feed.example.com"
    assert _feed(service_did="did:web:localhost%3A8080").endpoint == "http://localhost:8080"


def test_record_matches_the_lexicon_and_the_check_reads_it_back() -> None:
    """The built record has every field; record_problems finds each kind of mismatch."""
    cfg = _feed(content_mode="video", accepts_interactions=False)
    record = build_record(cfg, "2026-01-01T00:00:00.000Z")
    assert record == {
        "$type": "app.bsky.feed.generator",
        "did": "did:web:feed.example.com",
        "displayName": cfg.display_name,
        "description": cfg.description,
        "acceptsInteractions": False,
        "contentMode": "app.bsky.feed.defs#contentModeVideo",
        "createdAt": "2026-01-01T00:00:00.000Z",
    }
    assert record_problems(record, cfg) == []
    wrong = {**record, "did": "did:web:other.example", "displayName": "x" * 30}
    problems = record_problems(wrong, cfg)
    assert any("did is" in p for p in problems) and any("displayName" in p for p in problems)
    assert record_problems("nope", cfg) == ["the record is not an object"]


def test_skeleton_answers_are_checked_by_the_lexicon() -> None:
    """The check accepts a well-formed skeleton and names what is wrong in others."""
    post = "at://did:plc:bot/app.bsky.feed.post/3k"
    assert skeleton_problems(200, {"feed": [{"post": post, "feedContext": "a.1"}]}) == []
    assert skeleton_problems(500, {"error": "x"})[0].startswith("answered 500")
    assert skeleton_problems(200, {"feed": [{"post": "https://x"}]})
    assert skeleton_problems(200, {"feed": [], "reqId": "x" * 101})
    assert (
        did_web_url("did:web:feed.example.com") == "https://feed.example.com/.well-known/did.json"
    )
    assert did_web_url("did:web:localhost%3A8080") == "http://localhost:8080/.well-known/did.json"


def _config(tmp: Path, port: int) -> Path:
    (tmp / "bots.yaml").write_text(
        json.dumps(
            {
                "bots": [
                    {
                        "name": "c",
                        "persona": "p",
                        "provider": "template",
                        "model": "t",
                        "picker": "random",
                        "account": {"handle": "c.test"},
                    }
                ]
            }
        )
    )
    cfg = tmp / "botsky.yaml"
    cfg.write_text(
        json.dumps(
            {
                "data_dir": str(tmp / "data"),
                "source": {"kind": "replay", "path": "none.jsonl"},
                "posting": {"pds_url": f"http://127.0.0.1:{port}"},
                "identity": {"plc_url": f"http://127.0.0.1:{port}"},
                "web": {"enabled": True},
                "feed": {
                    "enabled": True,
                    "service_did": f"did:web:localhost%3A{port}",
                    "publisher": PUBLISHER,
                },
            }
        )
    )
    return cfg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_publish_without_the_password_is_a_clear_error(tmp_path: Path) -> None:
    """No app password: one line naming the variable, exit 1, no traceback."""
    result = CliRunner().invoke(cli, ["feed", "publish", "-c", str(_config(tmp_path, 9))])
    assert result.exit_code == 1
    assert "NO_SUCH_PW_VAR" in result.output and "Traceback" not in result.output


def test_check_reports_an_unreachable_feed_line_by_line(tmp_path: Path) -> None:
    """Nothing listening: the DID document and record checks fail as lines, exit 1."""
    cfg = _config(tmp_path, _closed_port())
    result = CliRunner().invoke(cli, ["feed", "check", "--no-auth", "-c", str(cfg)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("FAIL\tDID document")
    assert any(line.startswith("FAIL\tgenerator record") for line in lines)
    assert "Traceback" not in result.output


def test_feed_commands_need_the_feed_section(tmp_path: Path) -> None:
    """Without feed.service_did and feed.publisher, the commands say what is missing."""
    cfg = _config(tmp_path, 9)
    data = json.loads(cfg.read_text())
    data["feed"] = {}
    cfg.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["feed", "publish", "-c", str(cfg)])
    assert result.exit_code == 1
    assert "feed.service_did is not set" in result.output
    assert "feed.publisher" in result.output
