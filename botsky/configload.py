"""Load ``botsky.yaml`` and ``bots.yaml``, resolve secrets, and explain every problem precisely.

Precedence is pydantic-settings' own: ``BOTSKY_*`` environment variables (nested with ``__``)
beat the YAML file, which beats the defaults in ``botsky.config``. The YAML is read with ruamel's
round-trip loader because it keeps line numbers (PyYAML drops them), so each problem names the
file, the line and the field::

    configs/bots.yaml:14 bots[2].provider: 'opena1' is not one of openai, anthropic, ...
    env BOTSKY_LEDGER__URL ledger.url: ...

Relative paths:

- ``data_dir``, ``bots_file``, ``source.path`` and ``posting.kill_switch_file`` are relative to
  the directory of ``botsky.yaml`` (a config file names its neighbours, wherever botsky runs),
  unless they come from the environment (then: the working directory);
- ``account.password_file`` is relative to the directory of ``bots.yaml``;
- ``logging.file``, ``posting.dry_run_file`` and ``ledger.url: sqlite:<relative>`` are relative
  to ``data_dir``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars
from ruamel.yaml import YAML, CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from botsky.config import AccountConfig, BotConfig, BotsFile, Settings
from botsky.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "BotSecrets",
    "ConfigReport",
    "LoadedConfig",
    "Secrets",
    "account_password",
    "check_config",
    "env_warnings",
    "inspect_config",
    "is_placeholder",
    "load_config",
    "resolve_secrets",
]

DEFAULT_CONFIG_PATH = Path("configs/botsky.yaml")
_ENV_PREFIX = "BOTSKY_"
_Loc = tuple[int | str, ...]


class _Doc:
    """A parsed YAML file: the name shown in messages and the ruamel tree that knows lines."""

    def __init__(self, name: str, tree: CommentedMap) -> None:
        self.name = name
        self.tree = tree

    def line(self, loc: _Loc) -> int:
        """The 1-based line of the deepest key of ``loc`` present in the file.

        A missing field stops the walk at its parent, so it points at the parent's key.
        """
        node: Any = self.tree
        line = (self.tree.lc.line or 0) + 1  # None for an empty file
        for part in loc:
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
            else:
                break
            node = node[part]
        return line


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings and bots, with the files they came from."""

    settings: Settings
    bots: list[BotConfig]
    path: Path
    bots_path: Path
    # Kept for line numbers in resolve_secrets' messages; absent when built by hand.
    _bots_doc: _Doc | None = field(default=None, repr=False, compare=False)
    _doc: _Doc | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class BotSecrets:
    """A bot's credentials; ``SecretStr`` keeps them out of reprs and logs."""

    api_key: SecretStr | None
    password: SecretStr | None


Secrets: TypeAlias = Mapping[str, BotSecrets]
"""Bot name → its secrets."""


def load_config(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Read, merge and validate the configuration; raise ``ConfigError`` listing every problem.

    ``path`` defaults to ``configs/botsky.yaml`` under the working directory; ``environ``
    defaults to ``os.environ``.
    """
    attempt = _attempt(path, os.environ if environ is None else environ)
    if attempt.loaded is None:
        raise ConfigError(attempt.problems)
    return attempt.loaded


@dataclass
class _Attempt:
    """What reading the files gave: the config when it is valid, else the valid parts."""

    path: Path
    problems: list[str]
    loaded: LoadedConfig | None = None
    settings: Settings | None = None
    doc: _Doc | None = None
    bots: list[tuple[int, BotConfig]] = field(default_factory=list)  # (index in the file, bot)
    bots_path: Path | None = None
    bots_doc: _Doc | None = None


def _attempt(path: Path | None, env: Mapping[str, str]) -> _Attempt:
    path = DEFAULT_CONFIG_PATH if path is None else Path(path)
    problems: list[str] = []

    settings: Settings | None = None
    doc = _read_yaml(path, problems)
    if doc is not None:
        try:
            settings = _build_settings(_plain(doc.tree), env)
        except ValidationError as exc:
            problems += _by_line(_explain(exc, doc, Settings, env))
        except SettingsError as exc:
            problems.append(_explain_env_json(exc, env))

    # bots.yaml is checked even when botsky.yaml has bad values, so one run reports both files.
    bots: list[tuple[int, BotConfig]] = []
    bots_path: Path | None = None
    bots_doc: _Doc | None = None
    bots_file = _bots_file(settings, doc, env)
    if bots_file is not None:
        base = Path() if _env_var(("bots_file",), env) else path.parent
        bots_path = _relative_to(base, bots_file)
        bots_doc = _read_yaml(bots_path, problems)
    bots_valid = False
    if bots_doc is not None:
        found = _duplicates(bots_doc)
        data = _plain(bots_doc.tree)
        try:
            bots = list(enumerate(BotsFile.model_validate(data).bots))
            bots_valid = True
        except ValidationError as exc:
            found += _explain(exc, bots_doc, BotsFile, None)
            bots = _valid_items(data)
        if settings is not None:
            found += _sim_only_pickers(settings, bots, bots_doc)
        problems += _by_line(found)
        if bots_path is not None:
            bots = [(i, _resolve_password_file(bot, bots_path.parent)) for i, bot in bots]

    if settings is not None:
        settings = _resolve_paths(settings, path.parent, env)
    attempt = _Attempt(path, problems, None, settings, doc, bots, bots_path, bots_doc)
    if not problems and settings is not None and bots_path is not None and bots_valid:
        attempt.loaded = LoadedConfig(
            settings=settings,
            bots=[bot for _, bot in bots],
            path=path,
            bots_path=bots_path,
            _bots_doc=bots_doc,
            _doc=doc,
        )
    return attempt


def _valid_items(data: Any) -> list[tuple[int, BotConfig]]:
    """The bots of an invalid bots file that are valid on their own (checked further)."""
    items = data.get("bots") if isinstance(data, dict) else None
    valid: list[tuple[int, BotConfig]] = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        try:
            valid.append((i, BotConfig.model_validate(item)))
        except ValidationError:
            continue
    return valid


def resolve_secrets(
    loaded: LoadedConfig, *, environ: Mapping[str, str] | None = None, live: bool
) -> Secrets:
    """Read each bot's API key and app password from the environment or files.

    A missing API key is not an error (the app decides about keyless bots): it is None. With
    ``live`` a bot without a readable, non-empty password is an error; in dry runs it is None.
    """
    env = os.environ if environ is None else environ
    where = _Where(loaded._bots_doc, loaded.bots_path)
    secrets, problems = _secrets(list(enumerate(loaded.bots)), where, env, live)
    if problems:
        raise ConfigError(problems)
    return secrets


@dataclass(frozen=True)
class _Where:
    """Names a place in a file: ``file:line`` when the parsed file is at hand."""

    doc: _Doc | None
    path: Path | None

    def __call__(self, loc: _Loc) -> str:
        if self.doc is not None:
            return f"{self.doc.name}:{self.doc.line(loc)}"
        return str(self.path)


def _secrets(
    bots: list[tuple[int, BotConfig]], where: _Where, env: Mapping[str, str], live: bool
) -> tuple[dict[str, BotSecrets], list[str]]:
    problems: list[str] = []
    secrets: dict[str, BotSecrets] = {}
    for i, bot in bots:
        key_env = bot.default_key_env
        api_key = env.get(key_env) if key_env else None
        password, misses = _password(bot.account, env)
        secrets[bot.name] = BotSecrets(
            api_key=SecretStr(api_key) if api_key else None, password=password
        )
        if live:
            for key, reason in misses:
                loc: _Loc = ("bots", i, "account", key) if key else ("bots", i, "account")
                problems.append(
                    f"{where(loc)} {_field_path(loc)}: {reason} (needed for live posting)"
                )
    return secrets, problems


def account_password(
    account: AccountConfig, what: str, *, environ: Mapping[str, str] | None = None
) -> SecretStr:
    """The app password of a non-bot account (``what`` names it in errors), or ConfigError."""
    password, misses = _password(account, os.environ if environ is None else environ)
    if password is None:
        raise ConfigError([f"{what}.{key or 'account'}: {reason}" for key, reason in misses])
    return password


def _sim_only_pickers(
    settings: Settings, bots: list[tuple[int, BotConfig]], doc: _Doc
) -> list[tuple[int, str]]:
    """``noisy_oracle`` asks the simulated world for the truth: only a simulation has one."""
    if settings.source.kind == "sim":
        return []
    found: list[tuple[int, str]] = []
    for i, bot in bots:
        if bot.picker == "noisy_oracle":
            loc: _Loc = ("bots", i, "picker")
            found.append(
                (
                    doc.line(loc),
                    f"{doc.name}:{doc.line(loc)} {_field_path(loc)}: 'noisy_oracle' is a planted "
                    "arm of the simulation (it needs the simulated world's truth); it works only "
                    f"under `botsky simulate` (source.kind 'sim'), not with source.kind "
                    f"{settings.source.kind!r}",
                )
            )
    return found


def check_config(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Validate the files and the environment without touching the network; [] means OK."""
    return inspect_config(path, environ=environ).problems


@dataclass(frozen=True)
class ConfigReport:
    """What ``check-config`` found: problems (exit 1) and warnings (shown, not fatal)."""

    problems: list[str]
    warnings: list[str]


def inspect_config(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> ConfigReport:
    """Every problem in one pass, without touching the network.

    Problems: both files' schemas; each bot's app password when posting is live; files the
    configuration names (the replay file; data_dir must be a directory botsky can create or
    write); the placeholder secrets shipped in ``deploy/`` anywhere, and ``*.example.bsky.social``
    handles when posting is live. Where a file is invalid, the parts of it that are valid are
    still checked. Warnings: ``BOTSKY_*`` variables that match no setting (with a did-you-mean).
    """
    env = os.environ if environ is None else environ
    attempt = _attempt(path, env)
    st = attempt.settings
    mode = st.posting.mode if st is not None else _raw(attempt, env, ("posting", "mode"))
    live = mode == "live"
    where_bots = _Where(attempt.bots_doc, attempt.bots_path)
    problems = list(attempt.problems)
    problems += _secrets(attempt.bots, where_bots, env, live)[1]
    problems += _placeholders(attempt, env, live)
    if st is not None:
        problems += _file_problems(attempt, st, env)
    kill_env = st.posting.kill_switch_env if st is not None else "BOTSKY_KILL_SWITCH"
    return ConfigReport(problems, env_warnings(env, also_allowed=[kill_env] if kill_env else []))


# Variables under the prefix that botsky's own tooling reads, not settings: the test suite's
# (PostgreSQL DSN, the reference PDS cache, browser screenshots).
_NOT_SETTINGS: Final = frozenset(
    {"BOTSKY_TEST_POSTGRES_DSN", "BOTSKY_PDS_CACHE", "BOTSKY_ARTIFACTS_DIR"}
)


def env_warnings(
    environ: Mapping[str, str] | None = None,
    *,
    also_allowed: Sequence[str] = ("BOTSKY_KILL_SWITCH",),
) -> list[str]:
    """One line per ``BOTSKY_*`` variable that sets nothing (pydantic-settings ignores those
    silently): ``env BOTSKY_DISPACH__WORKERS matches no setting and is ignored; did you mean
    BOTSKY_DISPATCH__WORKERS?``. ``also_allowed``: variables read elsewhere (the kill switch)."""
    env = os.environ if environ is None else environ
    allowed = _NOT_SETTINGS | {name.upper() for name in also_allowed}
    names = _env_names(Settings)
    warnings = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or upper in allowed:
            continue
        first, *rest = upper.removeprefix(_ENV_PREFIX).lower().split("__")
        info = Settings.model_fields.get(first)
        # Inside a section pydantic reports an unknown key itself (an error with its place);
        # what it ignores is an unknown top-level name, or a sub-key of a plain value.
        if info is not None and (not rest or _is_section(_model_in(info.annotation))):
            continue
        line = f"env {name} matches no setting and is ignored"
        close = difflib.get_close_matches(upper, names, n=1, cutoff=0.75)
        warnings.append(f"{line}; did you mean {close[0]}?" if close else line)
    return warnings


def _model_in(annotation: Any) -> Any:
    """The type inside ``X | None``."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    return args[0] if len(args) == 1 and type(None) in get_args(annotation) else annotation


def _is_section(kind: Any) -> bool:
    return get_origin(kind) is dict or (isinstance(kind, type) and issubclass(kind, BaseModel))


def _env_names(model: Any, prefix: str = _ENV_PREFIX) -> list[str]:
    """Every variable that sets a field or a section, for 'did you mean'."""
    names = []
    for name, info in model.model_fields.items():
        var = f"{prefix}{name.upper()}"
        names.append(var)
        kind = _model_in(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names += _env_names(kind, f"{var}__")
    return names


def _raw(attempt: _Attempt, env: Mapping[str, str], loc: _Loc) -> Any:
    """A setting as written (env or YAML) when the settings as a whole did not validate."""
    var = _env_var(loc, env)
    if var is not None and var.upper() == (_ENV_PREFIX + "__".join(map(str, loc))).upper():
        return env[var]
    node: Any = attempt.doc.tree if attempt.doc is not None else None
    for part in loc:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _where_setting(attempt: _Attempt, env: Mapping[str, str], loc: _Loc) -> str:
    var = _env_var(loc, env)
    if var is not None:
        return f"env {var}"
    doc = attempt.doc
    return f"{doc.name}:{doc.line(loc)}" if doc is not None else str(attempt.path)


def _file_problems(attempt: _Attempt, st: Settings, env: Mapping[str, str]) -> list[str]:
    """Files the configuration names that are not there, and a data_dir that cannot be made."""
    problems: list[str] = []
    relative = f"relative paths are relative to {attempt.path.parent.as_posix() or '.'}/"
    source = st.source
    if source.kind == "replay" and source.path is not None and not source.path.is_file():
        loc: _Loc = ("source", "path")
        raw = _raw(attempt, env, loc)
        note = (
            f" ({relative})"
            if _env_var(loc, env) is None and not Path(str(raw)).is_absolute()
            else ""
        )
        what = "is a directory" if source.path.is_dir() else "no such file"
        problems.append(
            f"{_where_setting(attempt, env, loc)} source.path: {what}: {source.path}{note}"
        )
    reason = _not_creatable(st.data_dir)
    if reason is not None:
        loc = ("data_dir",)
        problems.append(f"{_where_setting(attempt, env, loc)} data_dir: {st.data_dir}: {reason}")
    elif st.ledger.url.startswith("sqlite:"):
        from botsky.ledger import open_ledger
        from botsky.ledger.sqlite import SqliteLedger

        try:
            ledger = open_ledger(st.ledger.url, st.data_dir)
        except ConfigError as exc:
            loc = ("ledger", "url")
            problems += [
                f"{_where_setting(attempt, env, loc)} ledger.url: {p}" for p in exc.problems
            ]
        else:
            if isinstance(ledger, SqliteLedger):
                reason = _not_creatable(ledger.path.parent)
                if reason is not None:
                    loc = ("ledger", "url")
                    where = _where_setting(attempt, env, loc)
                    problems.append(f"{where} ledger.url: {ledger.path.parent}: {reason}")
    return problems


def _not_creatable(directory: Path) -> str | None:
    """Why botsky could not create or write ``directory``, or None."""
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no write permission on {existing}"
    return None


# Placeholders shipped in deploy/.env.example and deploy/k8s/secret.yaml (a test keeps this in
# step with those files). A deploy that forgot to replace one would run with a public secret.
_PLACEHOLDER_PREFIXES: Final = ("change-me", "changeme", "replace-me")
_EXAMPLE_HANDLE_SUFFIX: Final = ".example.bsky.social"


def is_placeholder(value: str) -> bool:
    """Whether a secret is one of the placeholders shipped in ``deploy/``."""
    return value.strip().lower().startswith(_PLACEHOLDER_PREFIXES)


def _placeholders(attempt: _Attempt, env: Mapping[str, str], live: bool) -> list[str]:
    problems: list[str] = []
    fix = "is the placeholder shipped in deploy/: set a real secret"
    st = attempt.settings
    if st is not None:
        token = st.web.token
        if token is not None and is_placeholder(token.get_secret_value()):
            problems.append(f"{_where_setting(attempt, env, ('web', 'token'))} web.token {fix}")
        if st.ledger.url.startswith(("postgres://", "postgresql://")):
            password = _dsn_password(st.ledger.url)
            if password is not None and is_placeholder(password):
                at = _where_setting(attempt, env, ("ledger", "url"))
                problems.append(f"{at} ledger.url: the DSN's password {fix}")
    where = _Where(attempt.bots_doc, attempt.bots_path)
    for i, bot in attempt.bots:
        named = [
            ("api_key_env", bot.default_key_env),
            ("account.password_env", bot.account.password_env),
        ]
        for key, var in named:
            if var and is_placeholder(env.get(var, "")):
                loc: _Loc = ("bots", i, *key.split("."))
                problems.append(
                    f"{where(loc)} {_field_path(loc)}: environment variable {var} {fix}"
                )
        handle = bot.account.handle
        if live and handle.lower().endswith(_EXAMPLE_HANDLE_SUFFIX):
            loc = ("bots", i, "account", "handle")
            problems.append(
                f"{where(loc)} {_field_path(loc)}: {handle!r} is an example handle: put the "
                "bot's own Bluesky handle here (needed for live posting)"
            )
    return problems


def _dsn_password(dsn: str) -> str | None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict  # only for a PostgreSQL ledger

    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        return None  # reported where the ledger is opened, without echoing the DSN
    return str(password) if password is not None else None


# --- reading -------------------------------------------------------------------------------


def _read_yaml(path: Path, problems: list[str]) -> _Doc | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        # UnicodeEncodeError: a path holding lone surrogates ("\ud800" escapes in YAML).
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.append(f"{path}: cannot read: {reason}")
        return None
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        problems.append(f"{path}:{line} YAML syntax error: {exc.problem}")
        return None
    except (YAMLError, ValueError) as exc:  # e.g. `!!int x`: a tag whose value cannot be built
        problems.append(f"{path} YAML syntax error: {exc}")
        return None
    if tree is None:  # an empty file: every setting takes its default
        tree = CommentedMap()
    if not isinstance(tree, CommentedMap):
        problems.append(f"{path}:1 top level: {_show(tree)} is not a valid mapping")
        return None
    # Field names are strings; `1: x` or `null: x` would otherwise crash the settings loader.
    odd = [key for key in tree if not isinstance(key, str)]
    for key in odd:
        line = tree.lc.key(key)[0] + 1
        problems.append(f"{path}:{line} top level: {_show(key)} is not a valid field name")
    return None if odd else _Doc(str(path), tree)


def _bots_file(
    settings: Settings | None, doc: _Doc | None, environ: Mapping[str, str]
) -> Path | None:
    """``bots_file`` as validated, else a best guess; None when botsky.yaml could not be read."""
    if settings is not None:
        return settings.bots_file
    if doc is None:
        return None
    var = _env_var(("bots_file",), environ)
    raw = environ[var] if var else doc.tree.get("bots_file", "bots.yaml")
    return Path(raw) if isinstance(raw, str) else None


def _plain(node: Any) -> Any:
    """ruamel's round-trip types as plain Python, so models never hold YAML-specific objects."""
    if isinstance(node, dict):
        return {_plain(key): _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    if isinstance(node, bool | ScalarBoolean):  # ScalarBoolean (anchored bools) is an int
        return bool(node)
    for kind in (str, int, float):
        if isinstance(node, kind):
            return kind(node)
    return node


# --- precedence ----------------------------------------------------------------------------


class _EnvironSource(EnvSettingsSource):
    """``BOTSKY_*`` variables read from a given mapping (tests pass a dict) not ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # set first: the base __init__ calls _load_env_vars
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class _YamlSource(PydanticBaseSettingsSource):
    """The parsed ``botsky.yaml`` as is: keys match exactly, so a misspelt key is an error."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _build_settings(data: dict[str, Any], environ: Mapping[str, str]) -> Settings:
    # pydantic-settings chooses sources per class, so this call's YAML data and environment
    # ride on a throwaway subclass; the result is handed back as a plain Settings.
    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Earlier wins: env over the YAML file (defaults are appended last by the library).
            return _EnvironSource(settings_cls, environ), _YamlSource(settings_cls, data)

    layered = _Layered()
    return Settings.model_construct(_fields_set=layered.model_fields_set, **dict(layered))


def _env_var(loc: _Loc, environ: Mapping[str, str] | None) -> str | None:
    """The ``BOTSKY_*`` variable that supplied ``loc`` (or a parent of it, as JSON), if any."""
    if environ is None:
        return None
    # Settings are not case-sensitive, like pydantic-settings' env matching.
    names = {name.lower(): name for name in environ}
    for depth in range(len(loc), 0, -1):
        wanted = (_ENV_PREFIX + "__".join(str(part) for part in loc[:depth])).lower()
        if wanted in names:
            return names[wanted]
    return None


def _relative_to(base: Path, path: Path) -> Path:
    # normpath, not resolve(): a relative path stays relative to the working directory.
    # ~user of no such user raises: then it is a relative path that starts with "~".
    with contextlib.suppress(RuntimeError):
        path = path.expanduser()
    return Path(os.path.normpath(base / path))


def _resolve_paths(settings: Settings, config_dir: Path, environ: Mapping[str, str]) -> Settings:
    def resolve(loc: _Loc, path: Path) -> Path:
        # A path from the environment is relative to the working directory; from the file,
        # to the file's directory (a config file names its neighbours wherever it is run).
        return _relative_to(Path() if _env_var(loc, environ) else config_dir, path)

    source = settings.source
    if source.path is not None:
        source = source.model_copy(update={"path": resolve(("source", "path"), source.path)})
    posting = settings.posting
    if posting.kill_switch_file is not None:
        kill = resolve(("posting", "kill_switch_file"), posting.kill_switch_file)
        posting = posting.model_copy(update={"kill_switch_file": kill})
    data_dir = resolve(("data_dir",), settings.data_dir)
    return settings.model_copy(update={"data_dir": data_dir, "source": source, "posting": posting})


def _resolve_password_file(bot: BotConfig, bots_dir: Path) -> BotConfig:
    if bot.account.password_file is None:
        return bot
    password_file = _relative_to(bots_dir, bot.account.password_file)
    account = bot.account.model_copy(update={"password_file": password_file})
    return bot.model_copy(update={"account": account})


def _password(
    account: AccountConfig, environ: Mapping[str, str]
) -> tuple[SecretStr | None, list[tuple[str, str]]]:
    """The app password, or None and why not: (field, reason) for each place that was tried."""
    misses: list[tuple[str, str]] = []
    if account.password_env:
        value = environ.get(account.password_env, "")
        if value:
            return SecretStr(value), []
        state = "empty" if account.password_env in environ else "not set"
        misses.append(("password_env", f"environment variable {account.password_env} is {state}"))
    if account.password_file:
        try:
            value = account.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            misses.append(("password_file", f"cannot read {account.password_file}: {reason}"))
        else:
            if value:
                return SecretStr(value), []
            misses.append(("password_file", f"{account.password_file} is empty"))
    if not misses:
        misses.append(("", "has neither password_env nor password_file"))
    return None, misses


# --- explaining ----------------------------------------------------------------------------


def _duplicates(doc: _Doc) -> list[tuple[int, str]]:
    """Bot names and account handles used twice: each repeat, pointing at the first use."""
    items = doc.tree.get("bots")
    if not isinstance(items, list):
        return []
    found: list[tuple[int, str]] = []
    for keys in (("name",), ("account", "handle")):
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            value: Any = item
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if not isinstance(value, str):
                continue
            # Handles are DNS names: Ada.example.com and ada.example.com are one account.
            seen = value.lower() if keys[-1] == "handle" else value
            if seen in first:
                loc: _Loc = ("bots", i, *keys)
                line = doc.line(loc)
                text = f"{value!r} is used by bots[{first[seen]}] too"
                found.append((line, f"{doc.name}:{line} {_field_path(loc)}: {text}"))
            else:
                first[seen] = i
    return found


def _explain(
    exc: ValidationError,
    doc: _Doc,
    model: type[BaseModel],
    environ: Mapping[str, str] | None,
) -> list[tuple[int, str]]:
    """One line per pydantic error: where it is (file:line or env var), the field, what's wrong."""
    found: list[tuple[int, str]] = []
    for error in exc.errors():
        loc = error["loc"]
        var = _env_var(loc, environ)
        line = 0 if var else doc.line(loc)  # env problems sort first
        where = f"env {var}" if var else f"{doc.name}:{line}"
        found.append((line, f"{where} {_field_path(loc)}: {_describe(error, model)}"))
    return found


def _explain_env_json(exc: SettingsError, environ: Mapping[str, str]) -> str:
    # pydantic-settings raises this (not a ValidationError) when a whole section given in one
    # variable, e.g. BOTSKY_PRESENCE='{"window_s": 60}', is not JSON; the message names the field.
    match = re.search(r'field "([^"]+)"', str(exc))
    var = _env_var((match[1],), environ) if match else None
    if match is None or var is None:
        return f"env {_ENV_PREFIX}*: {exc}"
    return f"env {var} {match[1]}: {_show(environ[var])} is not valid JSON ({exc.__cause__})"


def _by_line(found: list[tuple[int, str]]) -> list[str]:
    # Pydantic reports in schema order; a reader fixes a file top to bottom.
    return [text for _, text in sorted(found, key=lambda item: item[0])]


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        known = _fields_at(model, error["loc"][:-1])
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"unknown field, did you mean {close[0]!r}?"
        return ("unknown field, expected one of " + ", ".join(known)) if known else "unknown field"
    if kind == "literal_error":
        expected = str((error.get("ctx") or {}).get("expected", ""))
        allowed = re.findall(r"'([^']*)'", expected) or [expected]
        return f"{_show(value)} is not one of {', '.join(allowed)}"
    if kind in ("value_error", "assertion_error"):  # our model validators: already a sentence
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if msg.startswith("Input should be a valid "):
        # "a valid dictionary or instance of SourceConfig, ..." → "a valid mapping"
        expected = msg.removeprefix("Input should be a valid ").split(",")[0]
        expected = expected.split(" or instance of ")[0].replace("dictionary", "mapping")
        return f"{_show(value)} is not a valid {expected}"
    if msg.startswith("Input should be "):
        return f"{_show(value)} should be {msg.removeprefix('Input should be ')}"
    return f"{_show(value)}: {msg[:1].lower()}{msg[1:]}"


def _fields_at(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The field names of the model found at ``loc`` (for 'did you mean')."""
    kind: Any = model
    for part in loc:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            info = kind.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return []
            kind = info.annotation
        else:  # a list item or a mapping value: step into the element type
            args = [arg for arg in get_args(kind) if arg is not type(None)]
            if not args:
                return []
            kind = args[-1]
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return list(kind.model_fields)
    return []


def _field_path(loc: Sequence[int | str]) -> str:
    """``("bots", 2, "provider")`` → ``bots[2].provider``; odd keys as ``prices['gpt-4.1']``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "top level"


def _show(value: Any) -> str:
    """A found value as the YAML user wrote it, briefly."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
