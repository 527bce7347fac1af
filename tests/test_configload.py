"""Tests for botsky.configload: precedence, paths, precise problem lines, and secrets."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict
from ruamel.yaml import YAML

from botsky.configload import (
    check_config,
    env_warnings,
    inspect_config,
    is_placeholder,
    load_config,
    resolve_secrets,
)
from botsky.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Line numbers matter: the expected problems below point into these texts.
BOTSKY = """\
data_dir: ./data
cursor_every: 7
source:
  kind: replay
  path: events.jsonl
ledger:
  url: sqlite
posting:
  mode: dry_run
"""

BOTS = """\
bots:
  - name: ada
    persona: A kind generalist.
    provider: openai
    model: gpt-4.1-mini
    account:
      handle: ada.example.com
      password_env: ADA_APP_PASSWORD
  - name: basil
    persona: A science fan.
    provider: anthropic
    model: claude-haiku-4-5
    account:
      handle: basil.example.com
      password_env: BASIL_APP_PASSWORD
"""

LIVE = BOTSKY.replace("mode: dry_run", "mode: live")


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old  # keep the cases honest when the base texts change
    return text.replace(old, new, 1)


Write = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Write:
    """Write configs/botsky.yaml and configs/bots.yaml under tmp_path (the working directory),
    next to the (empty) replay file BOTSKY names."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "events.jsonl").write_bytes(b"")

    def _write(botsky: str | None = BOTSKY, bots: str | None = BOTS) -> Path:
        for name, text in (("botsky.yaml", botsky), ("bots.yaml", bots)):
            if text is not None:
                (tmp_path / "configs" / name).write_text(text, encoding="utf-8")
        return Path("configs/botsky.yaml")

    return _write


def test_shipped_configs_have_no_problems() -> None:
    """The example configs in configs/ load and check clean in dry-run mode."""
    path = REPO / "configs" / "botsky.yaml"
    assert check_config(path, environ={}) == []
    loaded = load_config(path, environ={})
    providers = {bot.provider for bot in loaded.bots}
    assert {"openai", "anthropic", "openai_compatible", "template"} <= providers
    assert {"llm", "similar", "random"} <= {bot.picker for bot in loaded.bots}
    priced = set(loaded.settings.prices)
    assert {bot.model for bot in loaded.bots if bot.provider != "template"} <= priced
    corpus = REPO / "tests" / "data" / "jetstream" / "expected_v1.jsonl"
    assert loaded.settings.source.path == corpus
    sim = REPO / "configs" / "sim.yaml"
    assert check_config(sim, environ={}) == []
    engine = load_config(sim, environ={}).settings.sim.engine
    assert engine.provider is not None and engine.model is not None  # the user model


ERROR_CASES = [
    pytest.param(
        BOTSKY,
        _edit(
            BOTS,
            "    model: gpt-4.1-mini\n",
            "    model: gpt-4.1-mini\n    picker: noisy_oracle\n    quality: 0.5\n",
        ),
        {},
        [
            "configs/bots.yaml:6 bots[0].picker: 'noisy_oracle' is a planted arm of the "
            "simulation (it needs the simulated world's truth); it works only under `botsky "
            "simulate` (source.kind 'sim'), not with source.kind 'replay'"
        ],
        id="noisy-oracle-outside-the-simulation",
    ),
    pytest.param(
        _edit(BOTSKY, "  kind: replay\n  path: events.jsonl", "  kind: sim"),
        _edit(
            BOTS, "    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    picker: noisy_oracle\n"
        ),
        {},
        ["configs/bots.yaml:2 bots[0]: picker 'noisy_oracle' needs quality (0 to 1)"],
        id="noisy-oracle-without-quality",
    ),
    pytest.param(
        BOTSKY,
        _edit(BOTS, "    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    quality: 0.5\n"),
        {},
        ["configs/bots.yaml:2 bots[0]: quality is a setting of picker 'noisy_oracle' only"],
        id="quality-without-noisy-oracle",
    ),
    pytest.param(
        BOTSKY,
        _edit(BOTS, "provider: anthropic", "provider: opena1"),
        {},
        [
            "configs/bots.yaml:11 bots[1].provider: 'opena1' is not one of "
            "openai, anthropic, openai_compatible, template"
        ],
        id="wrong-literal",
    ),
    pytest.param(
        _edit(BOTSKY, "data_dir:", "dat_dir:"),
        _edit(BOTS, "    persona: A science fan.", "    personna: A science fan."),
        {},
        [
            "configs/botsky.yaml:1 dat_dir: unknown field, did you mean 'data_dir'?",
            "configs/bots.yaml:9 bots[1].persona: required field is missing",
            "configs/bots.yaml:10 bots[1].personna: unknown field, did you mean 'persona'?",
        ],
        id="misspelt-key-with-suggestion",
    ),
    pytest.param(
        _edit(BOTSKY, "  url: sqlite", "  flavour: sqlite"),
        BOTS,
        {},
        [
            "configs/botsky.yaml:7 ledger.flavour: unknown field, "
            "expected one of url, retry_deadline_s"
        ],
        id="unknown-key-without-close-match",
    ),
    pytest.param(
        _edit(BOTSKY, "cursor_every: 7", "cursor_every: lots"),
        _edit(BOTS, "    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    temperature: hot\n"),
        {},
        [
            "configs/botsky.yaml:2 cursor_every: 'lots' is not a valid integer",
            "configs/bots.yaml:6 bots[0].temperature: 'hot' is not a valid number",
        ],
        id="wrong-type",
    ),
    pytest.param(
        _edit(BOTSKY, "ledger:\n  url: sqlite", "ledger: [sqlite]"),
        _edit(BOTS, "  - name: basil", "  - 5\n  - name: basil"),
        {},
        [
            "configs/botsky.yaml:6 ledger: a list is not a valid mapping",
            "configs/bots.yaml:9 bots[1]: 5 is not a valid mapping",
        ],
        id="list-or-scalar-where-a-mapping-belongs",
    ),
    pytest.param(
        BOTSKY,
        _edit(
            _edit(BOTS, "    model: gpt-4.1-mini\n", ""), "      handle: basil.example.com\n", ""
        ),
        {},
        [
            "configs/bots.yaml:2 bots[0].model: required field is missing",
            "configs/bots.yaml:12 bots[1].account.handle: required field is missing",
        ],
        id="missing-required-field",
    ),
    pytest.param(
        _edit(BOTSKY, "  kind: replay", "  kind: [replay"),
        _edit(BOTS, "persona: A science fan.", "persona: Science: fun."),
        {},
        # bots.yaml is not checked: a broken botsky.yaml may be the one that names it.
        ["configs/botsky.yaml:5 YAML syntax error: expected ',' or ']', but got ':'"],
        id="yaml-syntax-error-in-botsky",
    ),
    pytest.param(
        BOTSKY,
        _edit(BOTS, "persona: A science fan.", "persona: Science: fun."),
        {},
        ["configs/bots.yaml:10 YAML syntax error: mapping values are not allowed here"],
        id="yaml-syntax-error-in-bots",
    ),
    pytest.param(
        BOTSKY,
        _edit(BOTS, "  - name: ada\n", "  - name: ada\n    name: eve\n"),
        {},
        [
            'configs/bots.yaml:3 YAML syntax error: found duplicate key "name" with value "eve" '
            '(original value: "ada")'
        ],
        id="duplicate-yaml-key",
    ),
    pytest.param(
        BOTSKY,
        "- name: ada\n",
        {},
        ["configs/bots.yaml:1 top level: a list is not a valid mapping"],
        id="top-level-not-a-mapping",
    ),
    pytest.param(
        BOTSKY,
        "",
        {},
        ["configs/bots.yaml:1 bots: required field is missing"],
        id="empty-bots-file",
    ),
    pytest.param(
        None,
        BOTS,
        {},
        ["configs/botsky.yaml: cannot read: No such file or directory"],
        id="missing-botsky-file",
    ),
    pytest.param(
        BOTSKY,
        None,
        {},
        ["configs/bots.yaml: cannot read: No such file or directory"],
        id="missing-bots-file",
    ),
    pytest.param(
        "bots_file: .\n",
        None,
        {},
        ["configs: cannot read: Is a directory"],
        id="unreadable-bots-file",
    ),
    pytest.param(
        BOTSKY,
        _edit(BOTS, "name: basil", "name: ada"),
        {},
        ["configs/bots.yaml:9 bots[1].name: 'ada' is used by bots[0] too"],
        id="duplicate-bot-names",
    ),
    pytest.param(
        BOTSKY,
        _edit(BOTS, "handle: basil.example.com", "handle: ADA.example.com"),
        {},
        ["configs/bots.yaml:14 bots[1].account.handle: 'ADA.example.com' is used by bots[0] too"],
        id="duplicate-handles-ignore-case",
    ),
    pytest.param(
        BOTSKY,
        _edit(BOTS, "provider: anthropic", "provider: openai_compatible"),
        {},
        ["configs/bots.yaml:9 bots[1]: provider 'openai_compatible' needs base_url"],
        id="openai-compatible-without-base-url",
    ),
    pytest.param(
        BOTSKY + "audience:\n  mode: open\n",
        BOTS,
        {},
        [
            "configs/botsky.yaml:10 audience: audience.mode 'open' answers strangers; it is only "
            "for networks you operate and needs audience.acknowledge_open_audience: true"
        ],
        id="open-audience-without-acknowledgement",
    ),
    pytest.param(
        BOTSKY + "prices:\n  gpt-4.1-mini:\n    input_per_mtok: -1\n",
        BOTS,
        {},
        [
            "configs/botsky.yaml:12 prices['gpt-4.1-mini'].input_per_mtok: "
            "-1 should be greater than or equal to 0"
        ],
        id="out-of-range-under-a-dotted-key",
    ),
    pytest.param(
        BOTSKY,
        BOTS,
        {"BOTSKY_CURSOR_EVERY": "lots", "BOTSKY_DISPATCH__WORKERS": "0"},
        [
            "env BOTSKY_CURSOR_EVERY cursor_every: 'lots' is not a valid integer",
            "env BOTSKY_DISPATCH__WORKERS dispatch.workers: "
            "'0' should be greater than or equal to 1",
        ],
        id="bad-env-values",
    ),
    pytest.param(
        BOTSKY,
        BOTS,
        {"BOTSKY_PRESENCE": "nojson"},
        [
            "env BOTSKY_PRESENCE presence: 'nojson' is not valid JSON "
            "(Expecting value: line 1 column 1 (char 0))"
        ],
        id="env-section-not-json",
    ),
]


@pytest.mark.parametrize(("botsky", "bots", "environ", "expected"), ERROR_CASES)
def test_problems_are_reported_precisely(
    write: Write, botsky: str | None, bots: str | None, environ: dict[str, str], expected: list[str]
) -> None:
    """A broken config yields exactly these lines: where, field, what was found and expected."""
    path = write(botsky, bots)
    assert check_config(path, environ=environ) == expected
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    assert caught.value.problems == expected


def test_default_path_is_configs_botsky_yaml(write: Write) -> None:
    """Without a path, configs/botsky.yaml under the working directory is loaded."""
    write()
    loaded = load_config(environ={})
    assert (loaded.path, loaded.bots_path) == (
        Path("configs/botsky.yaml"),
        Path("configs/bots.yaml"),
    )
    assert [bot.name for bot in loaded.bots] == ["ada", "basil"]


def test_env_beats_yaml_beats_defaults(write: Write) -> None:
    """BOTSKY_DATA_DIR and BOTSKY_LEDGER__URL override the YAML; the YAML overrides defaults."""
    environ = {"BOTSKY_DATA_DIR": "/srv/botsky", "BOTSKY_LEDGER__URL": "postgresql://db/botsky"}
    settings = load_config(write(), environ=environ).settings
    assert settings.data_dir == Path("/srv/botsky")
    assert settings.ledger.url == "postgresql://db/botsky"
    assert settings.cursor_every == 7  # from the YAML, not the default 100
    assert settings.logging.level == "info"  # the default: neither YAML nor env sets it


def test_environ_argument_replaces_os_environ(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A given environ is the whole environment; without one, os.environ is read."""
    monkeypatch.setenv("BOTSKY_DATA_DIR", "/from/os")
    path = write()
    assert load_config(path, environ={}).settings.data_dir == Path("configs/data")
    assert load_config(path).settings.data_dir == Path("/from/os")


def test_relative_paths(write: Write) -> None:
    """source.path, bots_file and data_dir follow botsky.yaml's directory."""
    path = write(_edit(BOTSKY, "cursor_every: 7", "bots_file: army/bots.yaml"), None)
    (Path("configs") / "army").mkdir()
    (Path("configs") / "army" / "bots.yaml").write_text(BOTS, encoding="utf-8")
    loaded = load_config(path, environ={})
    assert loaded.bots_path == Path("configs/army/bots.yaml")
    assert loaded.settings.source.path == Path("configs/events.jsonl")
    assert loaded.settings.data_dir == Path("configs/data")


def test_relative_path_from_env_is_cwd_relative(write: Write) -> None:
    """A path given in the environment is relative to the working directory, not the YAML."""
    loaded = load_config(write(), environ={"BOTSKY_SOURCE__PATH": "replays/day1.jsonl"})
    assert loaded.settings.source.path == Path("replays/day1.jsonl")


def test_unset_password_env_is_an_error_when_live(write: Write) -> None:
    """Live posting needs every bot's app password; each missing one is its own line."""
    path = write(LIVE)
    assert check_config(path, environ={"BASIL_APP_PASSWORD": ""}) == [
        "configs/bots.yaml:8 bots[0].account.password_env: environment variable "
        "ADA_APP_PASSWORD is not set (needed for live posting)",
        "configs/bots.yaml:15 bots[1].account.password_env: environment variable "
        "BASIL_APP_PASSWORD is empty (needed for live posting)",
    ]


def test_unset_password_env_is_fine_in_dry_run(write: Write) -> None:
    """A dry run posts nothing, so missing passwords are None, not errors."""
    loaded = load_config(write(), environ={})
    assert check_config(loaded.path, environ={}) == []
    secrets = resolve_secrets(loaded, environ={}, live=False)
    assert secrets["ada"].password is None


def test_account_without_any_password_source_is_an_error_when_live(write: Write) -> None:
    """Live mode rejects a bot that names neither password_env nor password_file."""
    path = write(LIVE, _edit(BOTS, "      password_env: ADA_APP_PASSWORD\n", ""))
    assert check_config(path, environ={"BASIL_APP_PASSWORD": "pw"}) == [
        "configs/bots.yaml:6 bots[0].account: has neither password_env nor password_file "
        "(needed for live posting)"
    ]


def test_password_file_is_relative_to_bots_yaml_and_stripped(write: Write) -> None:
    """password_file is read next to bots.yaml, without its trailing newline."""
    bots = _edit(BOTS, "password_env: ADA_APP_PASSWORD", "password_file: secrets/ada.txt")
    path = write(LIVE, bots)
    (Path("configs") / "secrets").mkdir()
    (Path("configs") / "secrets" / "ada.txt").write_text("abcd-efgh-ijkl-mnop\n", encoding="utf-8")
    loaded = load_config(path, environ={})
    secrets = resolve_secrets(loaded, environ={"BASIL_APP_PASSWORD": "pw"}, live=True)
    password = secrets["ada"].password
    assert password is not None
    assert password.get_secret_value() == "abcd-efgh-ijkl-mnop"


def test_unreadable_password_file_is_an_error_when_live(write: Write) -> None:
    """A password file that cannot be read is reported with the file's line."""
    bots = _edit(BOTS, "password_env: ADA_APP_PASSWORD", "password_file: nope.txt")
    path = write(LIVE, bots)
    assert check_config(path, environ={"BASIL_APP_PASSWORD": "pw"}) == [
        "configs/bots.yaml:8 bots[0].account.password_file: cannot read configs/nope.txt: "
        "No such file or directory (needed for live posting)"
    ]


def test_api_keys_come_from_the_provider_default_env(write: Write) -> None:
    """OPENAI_API_KEY feeds openai bots; a missing key is None, not an error."""
    loaded = load_config(write(), environ={})
    secrets = resolve_secrets(loaded, environ={"OPENAI_API_KEY": "sk-test"}, live=False)
    api_key = secrets["ada"].api_key
    assert api_key is not None
    assert api_key.get_secret_value() == "sk-test"
    assert secrets["basil"].api_key is None


def test_secrets_never_show_in_repr_or_str(write: Write) -> None:
    """Printing the secrets (or logging them) shows no password or key."""
    loaded = load_config(write(LIVE), environ={})
    environ = {
        "ADA_APP_PASSWORD": "ada-secret-pw",
        "BASIL_APP_PASSWORD": "basil-secret-pw",
        "OPENAI_API_KEY": "sk-secret-key",
    }
    secrets = resolve_secrets(loaded, environ=environ, live=True)
    for shown in (repr(secrets), str(secrets), repr(secrets["ada"]), str(secrets["ada"])):
        for secret in environ.values():
            assert secret not in shown


# --- one pass, environment typos, placeholders (issue 16) --------------------------------------


def test_every_problem_is_reported_in_one_pass(write: Write) -> None:
    """Schema errors in both files, a missing password and a missing replay file: all at once
    (the valid bot of a broken bots file is still checked)."""
    botsky = _edit(
        _edit(LIVE, "cursor_every: 7", "cursor_every: lots"), "events.jsonl", "gone.jsonl"
    )
    bots = _edit(BOTS, "provider: anthropic", "provider: anthropik")
    assert check_config(write(botsky, bots), environ={}) == [
        "configs/botsky.yaml:2 cursor_every: 'lots' is not a valid integer",
        "configs/bots.yaml:11 bots[1].provider: 'anthropik' is not one of openai, anthropic, "
        "openai_compatible, template",
        "configs/bots.yaml:8 bots[0].account.password_env: environment variable "
        "ADA_APP_PASSWORD is not set (needed for live posting)",
    ]
    # With the schema right, the file the config names is checked too, in the same pass.
    botsky = _edit(LIVE, "events.jsonl", "gone.jsonl")
    assert check_config(write(botsky, BOTS), environ={"BASIL_APP_PASSWORD": "pw"}) == [
        "configs/bots.yaml:8 bots[0].account.password_env: environment variable "
        "ADA_APP_PASSWORD is not set (needed for live posting)",
        "configs/botsky.yaml:5 source.path: no such file: configs/gone.jsonl "
        "(relative paths are relative to configs/)",
    ]


def test_misspelt_botsky_variables_are_warned_about(write: Write) -> None:
    """A BOTSKY_* variable that sets nothing is a warning with the closest setting's name;
    settings, sections and the kill switch are not warned about, and nothing fails."""
    environ = {
        "BOTSKY_DISPACH__WORKERS": "8",
        "BOTSKY_DATA_DIR__X": "1",
        "BOTSKY_ZZZ": "1",
        "BOTSKY_DISPATCH__WORKERS": "8",
        "BOTSKY_PRESENCE": '{"window_s": 60}',
        "botsky_cursor_every": "9",
        "BOTSKY_KILL_SWITCH": "",
        "BOTSKY_TEST_POSTGRES_DSN": "postgresql://x",
    }
    report = inspect_config(write(), environ=environ)
    assert report.problems == []
    assert report.warnings == [
        "env BOTSKY_DATA_DIR__X matches no setting and is ignored; did you mean BOTSKY_DATA_DIR?",
        "env BOTSKY_DISPACH__WORKERS matches no setting and is ignored; "
        "did you mean BOTSKY_DISPATCH__WORKERS?",
        "env BOTSKY_ZZZ matches no setting and is ignored",
    ]
    assert env_warnings({"BOTSKY_STOP": "1"}, also_allowed=["BOTSKY_STOP"]) == []


def _deploy_placeholders() -> list[str]:
    env_example = (REPO / "deploy" / ".env.example").read_text()
    values = re.findall(r"^[A-Z][A-Z0-9_]*=(.+)$", env_example, re.M)
    secret = YAML(typ="safe").load((REPO / "deploy" / "k8s" / "secret.yaml").read_text())
    values += [v for v in secret["stringData"].values() if v and "://" not in v]
    values += [conninfo_to_dict(v)["password"] for v in secret["stringData"].values() if "://" in v]
    return values


def test_the_deploy_placeholders_are_recognised() -> None:
    """Every value shipped in deploy/.env.example and the k8s Secret is a known placeholder."""
    values = _deploy_placeholders()
    assert len(values) >= 3
    assert all(is_placeholder(v) for v in values), values
    assert not any(is_placeholder(v) for v in ("hunter2-real", "sk-live-abc", "x"))


def test_placeholder_secrets_are_refused(write: Write) -> None:
    """A placeholder web token, DSN password, API key or app password is a problem, in any mode."""
    environ = {
        "BOTSKY_WEB__TOKEN": "change-me-too",
        "BOTSKY_LEDGER__URL": "postgresql://botsky:change-me@db:5432/botsky",
        "OPENAI_API_KEY": "change-me",
        "BASIL_APP_PASSWORD": "CHANGE-ME",
    }
    fix = "is the placeholder shipped in deploy/: set a real secret"
    assert check_config(write(), environ=environ) == [
        f"env BOTSKY_WEB__TOKEN web.token {fix}",
        f"env BOTSKY_LEDGER__URL ledger.url: the DSN's password {fix}",
        f"configs/bots.yaml:2 bots[0].api_key_env: environment variable OPENAI_API_KEY {fix}",
        "configs/bots.yaml:15 bots[1].account.password_env: environment variable "
        f"BASIL_APP_PASSWORD {fix}",
    ]


def test_example_handles_are_refused_when_posting_is_live(write: Write) -> None:
    """*.example.bsky.social handles fail check-config for live posting, not for dry runs."""
    bots = _edit(BOTS, "ada.example.com", "ada.example.bsky.social")
    assert check_config(write(BOTSKY, bots), environ={}) == []
    passwords = {"ADA_APP_PASSWORD": "pw-a", "BASIL_APP_PASSWORD": "pw-b"}
    assert check_config(write(LIVE, bots), environ=passwords) == [
        "configs/bots.yaml:7 bots[0].account.handle: 'ada.example.bsky.social' is an example "
        "handle: put the bot's own Bluesky handle here (needed for live posting)"
    ]


def test_a_tilde_of_no_such_user_is_a_plain_path(write: Write) -> None:
    """`~nosuchuser/x` cannot be expanded: it is reported as a file, not raised (fuzz find)."""
    problems = check_config(write(), environ={"BOTSKY_BOTS_FILE": "~0"})
    assert problems == ["~0: cannot read: No such file or directory"]
