"""Load ``botsky.yaml`` and ``bots.yaml``, resolve secrets, and explain every problem precisely.

Precedence is pydantic-settings' own: ``BOTSKY_*`` environment variables (nested with ``__``)
beat the YAML file, which beats the defaults in ``botsky.config``. The YAML is read with ruamel's
round-trip loader because it keeps line numbers (PyYAML drops them), so each problem names the
file, the line and the field::

    configs/bots.yaml:14 bots[2].provider: 'opena1' is not one of openai, anthropic, ...
    env BOTSKY_LEDGER__URL ledger.url: ...

Relative paths:

- ``bots_file`` and ``source.path`` are relative to the directory of ``botsky.yaml`` (a config
  file names its neighbours), unless they come from the environment (then: the working directory);
- ``account.password_file`` is relative to the directory of ``bots.yaml``;
- ``data_dir`` is relative to the working directory, so the default ``./data`` is the directory
  botsky is run from.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, get_args

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
    "LoadedConfig",
    "Secrets",
    "account_password",
    "check_config",
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
    path = DEFAULT_CONFIG_PATH if path is None else Path(path)
    env = os.environ if environ is None else environ
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
    bots: list[BotConfig] = []
    bots_path: Path | None = None
    bots_doc: _Doc | None = None
    bots_file = _bots_file(settings, doc, env)
    if bots_file is not None:
        base = Path() if _env_var(("bots_file",), env) else path.parent
        bots_path = _relative_to(base, bots_file)
        bots_doc = _read_yaml(bots_path, problems)
    if bots_doc is not None:
        found = _duplicates(bots_doc)
        try:
            bots = BotsFile.model_validate(_plain(bots_doc.tree)).bots
        except ValidationError as exc:
            found += _explain(exc, bots_doc, BotsFile, None)
        problems += _by_line(found)

    if problems or settings is None or bots_path is None:
        raise ConfigError(problems)
    return LoadedConfig(
        settings=_resolve_paths(settings, path.parent, env),
        bots=[_resolve_password_file(bot, bots_path.parent) for bot in bots],
        path=path,
        bots_path=bots_path,
        _bots_doc=bots_doc,
    )


def resolve_secrets(
    loaded: LoadedConfig, *, environ: Mapping[str, str] | None = None, live: bool
) -> Secrets:
    """Read each bot's API key and app password from the environment or files.

    A missing API key is not an error (the app decides about keyless bots): it is None. With
    ``live`` a bot without a readable, non-empty password is an error; in dry runs it is None.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    secrets: dict[str, BotSecrets] = {}
    for i, bot in enumerate(loaded.bots):
        key_env = bot.default_key_env
        api_key = env.get(key_env) if key_env else None
        password, misses = _password(bot.account, env)
        secrets[bot.name] = BotSecrets(
            api_key=SecretStr(api_key) if api_key else None, password=password
        )
        if live:
            for key, reason in misses:
                loc: _Loc = ("bots", i, "account", key) if key else ("bots", i, "account")
                where = _where_in(loaded, loc)
                problems.append(f"{where} {_field_path(loc)}: {reason} (needed for live posting)")
    if problems:
        raise ConfigError(problems)
    return secrets


def account_password(
    account: AccountConfig, what: str, *, environ: Mapping[str, str] | None = None
) -> SecretStr:
    """The app password of a non-bot account (``what`` names it in errors), or ConfigError."""
    password, misses = _password(account, os.environ if environ is None else environ)
    if password is None:
        raise ConfigError([f"{what}.{key or 'account'}: {reason}" for key, reason in misses])
    return password


def check_config(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Validate the files and the environment without touching the network; [] means OK."""
    try:
        loaded = load_config(path, environ=environ)
        live = loaded.settings.posting.mode == "live"
        resolve_secrets(loaded, environ=environ, live=live)
    except ConfigError as exc:
        return exc.problems
    return []


# --- reading -------------------------------------------------------------------------------


def _read_yaml(path: Path, problems: list[str]) -> _Doc | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
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
    return Path(os.path.normpath(base / path.expanduser()))


def _resolve_paths(settings: Settings, config_dir: Path, environ: Mapping[str, str]) -> Settings:
    source = settings.source
    if source.path is not None:
        base = Path() if _env_var(("source", "path"), environ) else config_dir
        source = source.model_copy(update={"path": _relative_to(base, source.path)})
    return settings.model_copy(
        update={"data_dir": settings.data_dir.expanduser(), "source": source}
    )


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


def _where_in(loaded: LoadedConfig, loc: _Loc) -> str:
    doc = loaded._bots_doc
    return f"{doc.name}:{doc.line(loc)}" if doc is not None else str(loaded.bots_path)


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
