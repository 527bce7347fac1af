"""The composition root: what ``build_app`` wires from the configuration and the secrets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pydantic import SecretStr

from botsky.configload import BotSecrets, load_config
from botsky.testing import FakeModel, ListSource, RecordingPoster, identity, post
from botsky.wiring import build_app, secret_guard
from tests.support import T0

# Never registered anywhere else: only the guard build_app makes can know it.
KEY = "sk-wiring-only-5c1e88d0a7"


def _config(tmp: Path) -> Path:
    (tmp / "botsky.yaml").write_text(
        f"data_dir: {tmp / 'data'}\nsource: {{kind: replay, path: x.jsonl}}\n"
        "audience: {mode: open, acknowledge_open_audience: true}\n"
        "dispatch: {lockstep: true}\nweb: {token: web-token-8d2f61aa}\n"
    )
    (tmp / "bots.yaml").write_text(
        "bots:\n  - name: ada\n    persona: hi\n    provider: template\n    model: t\n"
        "    picker: similar\n    account: {handle: ada.test}\n"
    )
    return tmp / "botsky.yaml"


async def test_build_app_guards_replies_with_the_secrets_it_is_given(tmp_path: Path) -> None:
    """A direct build_app (no CLI, nothing registered process-wide) refuses a draft that
    echoes a secret from its Secrets, and posts the same answer without it."""
    loaded = load_config(_config(tmp_path), environ={})
    secrets = {"ada": BotSecrets(api_key=SecretStr(KEY), password=None)}
    events = [
        identity("did:plc:bob", T0, "bob.test"),
        post("did:plc:bob", T0 + 1, "sourdough bread baking all day"),
        post("did:plc:a1", T0 + 2, "any sourdough bread tips?"),
        post("did:plc:a2", T0 + 3, "any sourdough bread tips, anyone?"),
    ]
    poster = RecordingPoster()
    app = await build_app(loaded, secrets, source=ListSource(events), poster=poster)
    model = FakeModel().script(
        {"reply": f"ask @bob.test, and my key is {' '.join(KEY)}", "mention": "bob.test"},
        {"reply": "ask @bob.test", "mention": "bob.test"},
    )
    assert app.dispatcher is not None
    army = app.dispatcher.army
    army.bots = tuple(dataclasses.replace(b, model=model) for b in army.bots)
    try:
        summary = await app.run()
    finally:
        await app.aclose()
    assert summary.dispatch["rejected_leaked_secret"] == 1
    assert [p.text for p in poster.posted] == ["ask @bob.test"]


def test_the_guard_holds_every_secret_the_process_reads(tmp_path: Path) -> None:
    """API keys, app passwords, the web token and a ledger URL password are all guarded."""
    loaded = load_config(_config(tmp_path), environ={})
    loaded.settings.ledger.url = "postgresql://botsky:pg-pass-31f9c2@db:5432/botsky"
    secrets = {"ada": BotSecrets(api_key=SecretStr(KEY), password=SecretStr("app-pw-77e1c0"))}
    guard = secret_guard(loaded, secrets)
    assert set(guard) == {KEY, "app-pw-77e1c0", "web-token-8d2f61aa", "pg-pass-31f9c2"}
