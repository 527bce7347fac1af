"""``--engine llm``: the users are played by a model of their own, never by a model under test.

The user model is configured in ``sim.engine`` (provider, model, base URL, key variable, like a
bot); here it is a ``FakeVendorServer`` speaking the OpenAI wire format on loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from botsky.configload import LoadedConfig, resolve_secrets
from botsky.errors import ConfigError
from botsky.sim.cli import simulate_cmd
from botsky.sim.run import TRUTH_FILE, simulate
from botsky.sim.state import DEFAULT_LIMITS
from botsky.testing import FakeModel, FakeVendorServer
from tests.support import CONTROL_BOTS, sim_config

pytestmark = pytest.mark.usefixtures("quiet_logs")

WITH_ARM = (
    CONTROL_BOTS
    + """\
  - {name: chooser, persona: p, provider: openai_compatible, base_url: "http://127.0.0.1:9/v1",
     model: shared-model, picker: llm, weight: 8, account: {handle: chooser.bots.sim.test}}
"""
)
_ENGINE = """sim:
  engine:
    provider: openai
    model: gpt-4o-mini
"""


def _config(tmp: Path, bots: str, engine: str) -> LoadedConfig:
    """The simulation config with ``engine`` (YAML lines under ``sim.engine:``) instead of the
    shipped user model."""
    sim_config(tmp, bots)
    path = tmp / "sim.yaml"
    text = path.read_text()
    start = text.index("sim:\n  engine:\n")
    end = text.index("\naudience:")
    section = "sim:\n  engine:\n" + engine if engine else "sim: {}\n"
    path.write_text(text[:start] + section + text[end:])
    from botsky.configload import load_config

    return load_config(path, environ={})


def _user(system: str, user: str) -> dict[str, Any]:
    """A user model with a hidden-state schema of its own (vibe, memories)."""
    if "Invent their hidden state" in user:
        memories = [f"memory {i}" for i in range(100)]
        state = {"vibe": "curious", "memories": memories, "diary": "x" * 9000}
        return {"state": orjson.dumps(state).decode()}
    if "You logged on" in user:
        n = user.count("\n", user.index("<posts>"), user.index("</posts>")) - 1
        state = {"vibe": "tired", "memories": ["read the feed"], "seen": n}
        return {"probabilities": [0.5] * n, "state": orjson.dumps(state).decode(), "mood": 0.3}
    if "Write a new post" in user:
        return {"text": "a post written by the user model"}
    return {"text": "a reply written by the user model"}


async def test_users_are_played_by_their_own_model(tmp_path: Path) -> None:
    """The user model at sim.engine's base URL writes, reads and keeps each user's state in a
    schema of its own (bounded); the arm's model gets only reply prompts, and the result and
    truth.json name the user model."""
    with FakeVendorServer(choose=_user) as server:
        engine = (
            f"    provider: openai_compatible\n    model: user-sim\n    base_url: {server.url}/v1\n"
        )
        loaded = _config(tmp_path, WITH_ARM, engine)
        secrets = resolve_secrets(loaded, environ={}, live=False)
        chooser = FakeModel(model="shared-model")
        result = await simulate(
            loaded, secrets, days=1, users=15, seed=2, engine="llm", models={"chooser": chooser}
        )
    assert server.requests and {r["body"]["model"] for r in server.requests} == {"user-sim"}
    assert all("<candidates>" not in orjson.dumps(r).decode() for r in server.requests)
    assert chooser.calls and all("<candidates>" in user for _, user in chooser.calls)
    for u in result.world.users:
        assert u.state["vibe"] in ("curious", "tired")
        assert len(u.state["memories"]) <= DEFAULT_LIMITS.max_list
        assert len(orjson.dumps(u.state)) <= DEFAULT_LIMITS.max_bytes
    posts = [p.text for p in result.world.posts.values() if not p.by_bot]
    assert "a post written by the user model" in posts
    assert result.user_model is not None and result.user_model.shared_with == ()
    assert "not a model under test" in result.user_model.describe()
    doc = orjson.loads((tmp_path / "data" / TRUTH_FILE).read_bytes())
    assert doc["user_model"]["model"] == "user-sim" and doc["engine"] == "llm"


async def test_an_arms_model_cannot_play_the_users_unless_acknowledged(tmp_path: Path) -> None:
    """The same model (spelt differently) as an arm is refused before anything runs, and a
    previous run's data stays; acknowledged, it runs and says which arms grade themselves."""
    loaded = _config(tmp_path, WITH_ARM, "    provider: openai_compatible\n    model: "
                     "Vendor/Shared-Model\n    base_url: http://127.0.0.1:9/v1\n")  # fmt: skip
    secrets = resolve_secrets(loaded, environ={}, live=False)
    chooser = FakeModel(model="shared-model")
    await simulate(loaded, secrets, days=1, users=5, seed=1, models={"chooser": chooser})
    before = (tmp_path / "data" / TRUTH_FILE).read_bytes()
    with pytest.raises(ConfigError, match=r"also the model of arm\(s\) chooser") as caught:
        await simulate(loaded, secrets, days=1, users=5, seed=2, engine="llm")
    assert "--allow-arm-model" in str(caught.value)
    assert (tmp_path / "data" / TRUTH_FILE).read_bytes() == before
    users = FakeModel(model="Vendor/Shared-Model")
    result = await simulate(
        loaded, secrets, days=1, users=5, seed=2, engine="llm", engine_model=users,
        allow_arm_model=True, models={"chooser": chooser},
    )  # fmt: skip
    assert result.user_model is not None and result.user_model.shared_with == ("chooser",)
    assert result.user_model.describe().startswith("WARNING")


@pytest.mark.parametrize(
    ("engine", "environ", "message"),
    [
        ("", {}, "set sim.engine.provider and sim.engine.model"),
        (_ENGINE.split("engine:\n")[1], {}, "set the environment variable OPENAI_API_KEY"),
        (
            "    provider: anthropic\n    model: claude-x\n    api_key_env: MY_KEY\n",
            {"ANTHROPIC_API_KEY": "not this one"},
            "set the environment variable MY_KEY",
        ),
    ],
)
async def test_a_missing_user_model_or_key_says_what_to_set(
    tmp_path: Path, engine: str, environ: dict[str, str], message: str
) -> None:
    """Without a user model, or without its key, the error names the settings or variables."""
    loaded = _config(tmp_path, CONTROL_BOTS, engine)
    secrets = resolve_secrets(loaded, environ={}, live=False)
    with pytest.raises(ConfigError, match=message):
        await simulate(loaded, secrets, days=1, users=5, engine="llm", environ=environ)


def test_the_command_refuses_an_arms_model_clearly_and_warns_when_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`botsky simulate --engine llm` exits 1 with the reason (no traceback) when the user
    model is an arm's; with --allow-arm-model it runs and prints the warning."""
    with FakeVendorServer(choose=_user) as server:
        bots = WITH_ARM.replace("http://127.0.0.1:9/v1", f"{server.url}/v1")
        engine = (
            f"    provider: openai_compatible\n    model: shared-model\n"
            f"    base_url: {server.url}/v1\n"
        )
        _config(tmp_path, bots, engine)
        monkeypatch.chdir(tmp_path)
        args = ["-c", "sim.yaml", "--days", "1", "--users", "5", "--engine", "llm"]
        refused = CliRunner().invoke(simulate_cmd, args)
        assert refused.exit_code == 1
        assert "also the model of arm(s) chooser" in refused.output
        assert "Traceback" not in refused.output
        ran = CliRunner().invoke(simulate_cmd, [*args, "--allow-arm-model"])
    assert ran.exit_code == 0, ran.output
    assert "WARNING: users played by openai_compatible shared-model" in ran.output
    assert "estimate vs truth by picker" in ran.output
