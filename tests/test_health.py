"""Model health: the start-up check and the per-bot circuit breaker, against loopback model
servers speaking the vendors' real JSON (``FakeVendorServer``) that refuse, time out, answer
401, then recover."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from botsky.army import Bot
from botsky.configload import load_config, resolve_secrets
from botsky.errors import ModelAccessError, ModelUnavailable
from botsky.health import BotHealth, Breaker, check_models
from botsky.ledger.base import mention_from_log
from botsky.llm.anthropic import AnthropicModel
from botsky.llm.openai import OpenAIModel
from botsky.runtime import App
from botsky.testing import FakeModel, FakeVendorServer, ListSource, identity, post
from botsky.wiring import build_app
from tests.support import T0

UNAUTHORIZED = (
    401,
    {},
    {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
)
OVERLOADED = (503, {"retry-after": "0"}, {"error": {"message": "overloaded", "type": "server"}})


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


# --- the breaker, on a fake clock ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_only() -> None:
    """k consecutive failures open it; a success in between starts the count again."""
    b = Breaker(failures=3, pause_s=30, clock=Clock())
    assert not b.failure("x") and not b.failure("x")
    assert b.success() is False and b.closed
    assert not b.failure("x") and not b.failure("x")
    assert b.failure("model_unavailable: down")
    assert b.state == "open" and b.reason == "model_unavailable: down" and b.pause == 30


def test_breaker_half_opens_after_its_pause_and_doubles_it_on_a_failed_probe() -> None:
    """Open refuses probes until the pause is over; then one caller probes (half-open); a failed
    probe reopens for twice the pause (capped), a good one closes."""
    clock = Clock()
    b = Breaker(failures=1, pause_s=30, max_pause_s=100, clock=clock)
    b.failure("down")
    clock.now += 29.9
    assert not b.try_probe()
    clock.now += 0.1
    assert b.try_probe() and b.state == "half_open"
    assert not b.try_probe()  # one probe at a time
    assert b.failure("still down") and b.pause == 60
    clock.now += 60
    assert b.try_probe() and b.failure("still down") and b.pause == 100
    clock.now += 100
    assert b.try_probe()
    assert b.success() and b.closed and b.pause == 0


def test_an_abandoned_probe_leaves_the_breaker_due_at_once() -> None:
    """A probe cancelled midway tells nothing: the next caller may probe straight away."""
    clock = Clock()
    b = Breaker(failures=1, pause_s=30, clock=clock)
    b.failure("down")
    clock.now += 30
    assert b.try_probe()
    b.abandon()
    assert b.state == "open" and b.try_probe()


def test_only_unavailability_counts_toward_a_pause() -> None:
    """A refused answer or a bad request means the model is there: no pause."""
    from botsky.errors import DraftRejected, ModelError

    health = BotHealth(failures=1, clock=Clock())
    bot = _bot("ada", FakeModel())
    health.failed(bot, ModelError("HTTP 400: bad request"))
    health.failed(bot, DraftRejected("too_long"))
    assert health.available(bot)
    health.failed(bot, ModelAccessError("HTTP 401: bad key"))
    assert not health.available(bot) and health.reason("ada").startswith("model_access_denied")


# --- the start-up check over HTTP --------------------------------------------------------------


def _bot(name: str, model: Any) -> Bot:
    return Bot(name, "p", model, "llm", f"{name}.test", f"did:plc:{name}")


def _openai(url: str) -> OpenAIModel:
    return OpenAIModel("fake-1", api_key="k-test", base_url=f"{url}/v1", provider="openai")


def _anthropic(url: str) -> AnthropicModel:
    return AnthropicModel("fake-1", api_key="k-test", base_url=url)


@pytest.mark.parametrize("make", [_openai, _anthropic], ids=["openai", "anthropic"])
async def test_check_tells_apart_up_refused_slow_and_unauthorized(make: Any) -> None:
    """The free models listing: an answer passes (even a 404 from a server without the route);
    a refused connection or a timeout is ModelUnavailable; a 401 is ModelAccessError."""
    with FakeVendorServer() as up:
        model = make(up.url)
        assert await model.check(2.0)
        up.fail_next.append((404, {}, {"error": {"message": "no such route"}}))
        assert await model.check(2.0)
        up.fail_next.append(UNAUTHORIZED)
        with pytest.raises(ModelAccessError, match="refused the API key"):
            await model.check(2.0)
        assert len(up.checks) == 3 and up.requests == []  # nothing billed
        await model.aclose()
    refused = make(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelUnavailable, match="connection refused"):
        await refused.check(2.0)
    await refused.aclose()
    with FakeVendorServer(delay=1.5) as slow:
        model = make(slow.url)
        with pytest.raises(ModelUnavailable, match=r"did not answer within 0\.2 s"):
            await model.check(0.2)
        await model.aclose()


async def test_check_models_leaves_out_the_unreachable_and_the_unauthorized() -> None:
    """check_models keeps the bots that answered (and those with no endpoint), in order."""
    with FakeVendorServer() as up, FakeVendorServer() as locked:
        locked.fail_next.append(UNAUTHORIZED)
        bots = [
            _bot("up", _openai(up.url)),
            _bot("gone", _openai(f"http://127.0.0.1:{free_port()}")),
            _bot("template", FakeModel()),
            _bot("locked", _anthropic(locked.url)),
        ]
        kept, left_out = await check_models(bots, timeout_s=2.0)
        for b in bots:
            await b.model.aclose()
    assert [b.name for b in kept] == ["up", "template"]
    assert [(x.bot.name, type(x.error)) for x in left_out] == [
        ("gone", ModelUnavailable),
        ("locked", ModelAccessError),
    ]


# --- through the wiring -----------------------------------------------------------------------


def _config(tmp: Path, bots: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    cfg = {
        "data_dir": str(tmp / "data"),
        "seed": 5,
        "source": {"kind": "replay", "path": "x.jsonl"},
        "audience": {
            "mode": "open",
            "acknowledge_open_audience": True,
            "mentions_per_target_per_day": None,
            "replies_per_author_per_day": None,
        },
        "recommend": {"cooldown_s": 0},
        "dispatch": {"lockstep": True, "author_cooldown_s": 0},
        **(extra or {}),
    }
    (tmp / "botsky.yaml").write_text(json.dumps(cfg))
    (tmp / "bots.yaml").write_text(json.dumps({"bots": bots}))
    return tmp / "botsky.yaml"


def _compatible(name: str, url: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "persona": f"You are {name}.",
        "provider": "openai_compatible",
        "base_url": f"{url}/v1",
        "model": f"m-{name}",
        "account": {"handle": f"{name}.test", "did": f"did:plc:{name}"},
        **more,
    }


async def test_build_app_leaves_out_bots_that_cannot_answer(
    tmp_path: Path, captured: list[dict[str, Any]]
) -> None:
    """A bot with no server or a refused key is left out at start with one bot_disabled line
    (which bot, why, how to fix); the others run; the summary keeps the reasons."""
    with FakeVendorServer() as up, FakeVendorServer() as locked:
        locked.fail_next.append(UNAUTHORIZED)
        cfg = _config(
            tmp_path,
            [
                _compatible("cleo", f"http://127.0.0.1:{free_port()}"),
                _compatible("dora", locked.url, api_key_env="DORA_KEY"),
                _compatible("eve", up.url),
                {
                    "name": "ctrl",
                    "persona": "control",
                    "provider": "template",
                    "model": "t",
                    "picker": "similar",
                    "account": {"handle": "ctrl.test"},
                },
                {
                    "name": "ada",
                    "persona": "p",
                    "provider": "openai",
                    "model": "gpt-x",
                    "account": {"handle": "ada.test"},
                },
            ],
        )
        loaded = load_config(cfg, environ={})
        secrets = resolve_secrets(loaded, environ={"DORA_KEY": "k-revoked"}, live=False)
        app = await build_app(loaded, secrets, source=ListSource([]))
        await app.aclose()
    assert app.dispatcher is not None
    assert [b.name for b in app.dispatcher.army.bots] == ["eve", "ctrl"]
    disabled = {e["bot"]: e for e in captured if e["event"] == "bot_disabled"}
    assert set(disabled) == {"ada", "cleo", "dora"}
    assert "connection refused" in disabled["cleo"]["reason"]
    assert "ollama serve" in disabled["cleo"]["hint"] and "cleo" in disabled["cleo"]["hint"]
    assert "refused the API key" in disabled["dora"]["reason"]
    assert "DORA_KEY" in disabled["dora"]["hint"]
    assert disabled["ada"]["reason"] == "OPENAI_API_KEY is not set"
    assert set(app.summary.left_out) == {"ada", "cleo", "dora"}


# --- the breaker in the dispatcher ------------------------------------------------------------


async def _dispatch_app(tmp: Path, flaky_url: str, steady_url: str) -> App:
    # The draw: flaky weighs 10^6 times steady, so a draw picks steady first with probability
    # 10^-6; over the seven draws below the test fails by chance with probability below 10^-5.
    cfg = _config(
        tmp,
        [
            _compatible("flaky", flaky_url, weight=1_000_000),
            _compatible("steady", steady_url, weight=1),
        ],
        {"models": {"pause_after_failures": 2, "pause_s": 30, "max_pause_s": 100}},
    )
    loaded = load_config(cfg, environ={})
    app = await build_app(loaded, resolve_secrets(loaded, environ={}, live=False))
    for event in (
        identity("did:plc:bob", T0, "bob.test"),
        post("did:plc:bob", T0 + 1, "sourdough bread baking, rye starter and crumb"),
    ):
        app.identity.observe(event)
        app.presence.observe(event)
    return app


async def test_a_failing_bot_is_paused_its_posts_redrawn_and_it_comes_back(
    tmp_path: Path, captured: list[dict[str, Any]]
) -> None:
    """401 and 503s pause the bot (closed → open); while paused its posts go to the other bot,
    each re-draw logged and kept on the mention; probes that are refused or time out keep it
    paused for twice as long; once its server answers again, a probe closes it."""
    clock = Clock()
    port = free_port()
    with FakeVendorServer() as steady:
        with FakeVendorServer(port=port) as flaky:
            app = await _dispatch_app(tmp_path, flaky.url, steady.url)
            assert app.dispatcher is not None
            d, health = app.dispatcher, app.dispatcher.health
            health.clock = clock
            n = 0

            async def ask() -> str:
                nonlocal n
                n += 1
                event = post(f"did:plc:asker{n}", T0 + 10 + n, f"sourdough rye starter tip {n}?")
                app.presence.observe(event)  # the stream clock moves on
                return await d.handle(event, event.post)

            assert await ask() == "posted"  # flaky answers
            flaky.fail_next.append(UNAUTHORIZED)
            assert await ask() == "model_access_denied"
            flaky.fail_next.extend([OVERLOADED] * 4)  # the client's four attempts
            assert await ask() == "model_unavailable"
            assert health.breaker("flaky").state == "open"
            assert await ask() == "posted"  # re-drawn: steady answers
        # flaky's server is gone: connections are refused.
        clock.now += 30
        assert await ask() == "posted"  # the probe is refused: re-drawn again
        assert health.breaker("flaky").pause == 60
        with FakeVendorServer(port=port, delay=1.0):
            clock.now += 60
            health.probe_timeout_s = 0.3
            assert await ask() == "posted"  # the probe times out: re-drawn again
            assert health.breaker("flaky").pause == 100
        with FakeVendorServer(port=port) as back:
            clock.now += 100
            assert await ask() == "posted"  # the probe works: flaky answers this one
            assert len(back.requests) == 1 and len(back.checks) == 1
        mentions = await app.ledger.mentions()
        await app.aclose()
    assert [m.extra.get("redrawn_from") for m in mentions] == [None, *["flaky"] * 3, None]
    posted = [e for e in captured if e["event"] == "reply_posted"]
    assert [e["bot"] for e in posted] == ["flaky", "steady", "steady", "steady", "flaky"]
    assert [e.get("redrawn_from") for e in posted] == [None, "flaky", "flaky", "flaky", None]
    # `botsky scores --logs` reads the re-draw back from the line.
    rebuilt = mention_from_log(json.loads(json.dumps(posted[1], default=str)))
    assert rebuilt is not None and rebuilt.extra["redrawn_from"] == "flaky"
    redrawn = [e for e in captured if e["event"] == "bot_redrawn"]
    assert [(e["drawn"], e["bot"]) for e in redrawn] == [("flaky", "steady")] * 3
    assert "model_unavailable" in redrawn[0]["reason"]
    assert "connection refused" in redrawn[1]["reason"]
    assert "did not answer" in redrawn[2]["reason"]
    paused = [e for e in captured if e["event"] == "bot_paused"]
    assert [e["pause_s"] for e in paused] == [30, 60, 100]
    assert [e["event"] for e in captured if e["event"] == "bot_resumed"] == ["bot_resumed"]
    assert d.redraws == {"flaky": 3}


# --- the command, as a person sees it -----------------------------------------------------------


def _run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run ``botsky`` with standard error on a pseudo-terminal (stdout a pipe, as in
    ``botsky run > run.jsonl``); returns the exit code, stdout and what the terminal showed."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTSKY_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    with open(cwd / "stdout.txt", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "botsky", *args], cwd=cwd, env=env, stdout=out, stderr=slave
        )
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    code = proc.wait(timeout=120)
    return code, (cwd / "stdout.txt").read_text(), shown.decode(errors="replace")


@pytest.mark.slow
def test_botsky_run_leaves_out_a_bot_without_server_with_one_line_on_the_terminal(
    tmp_path: Path,
) -> None:
    """The shipped army's case: an Ollama bot with no server is left out at start with one
    sentence on the terminal (which bot, why, how to fix) and costs the posts nothing: the
    other bot answers them all and no model call is tried."""
    from botsky.events import event_to_jetstream

    users = [(f"did:plc:u{i}", f"user{i}.test") for i in range(12)]
    events = [identity(did, T0 + i, h) for i, (did, h) in enumerate(users)]
    events += [
        post(did, T0 + 100 + i, f"sourdough bread baking question number {i}")
        for i, (did, _) in enumerate(users)
    ]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(map(event_to_jetstream, events)))
    port = free_port()
    cfg = _config(tmp_path, [], {"logging": {"format": "json"}})
    text = json.loads(cfg.read_text())
    text["source"] = {"kind": "replay", "path": "events.jsonl"}
    cfg.write_text(json.dumps(text))
    (tmp_path / "bots.yaml").write_text(
        json.dumps(
            {
                "bots": [
                    _compatible("cleo", f"http://127.0.0.1:{port}", weight=5),
                    {
                        "name": "control",
                        "persona": "control",
                        "provider": "template",
                        "model": "template-similar",
                        "picker": "similar",
                        "account": {"handle": "control.test"},
                    },
                ]
            }
        )
    )
    code, stdout, terminal = _run_on_a_terminal(["run", "-c", str(cfg)], tmp_path)
    assert code == 0, terminal
    url = f"http://127.0.0.1:{port}/v1"
    notice = [line for line in terminal.splitlines() if line.startswith("botsky: ")]
    assert notice == [
        f"botsky: bot cleo left out: {url} is not reachable (connection refused). Fix: start "
        f"the server at {url} (for Ollama: `ollama serve` and `ollama pull <model>`), fix "
        "base_url, or remove cleo from the bots file."
    ]
    summary = next(json.loads(line) for line in stdout.splitlines() if '"run_summary"' in line)
    # The first asker has nobody to be recommended yet; every other post is answered.
    assert summary["dispatch"] == {"queued": 12, "posted": 11, "no_candidates": 1}
    assert summary["left_out"] == {"cleo": f"{url} is not reachable (connection refused)"}
    assert "model_unavailable" not in stdout
    assert "bot cleo was left out" in terminal  # and the run summary says so again
