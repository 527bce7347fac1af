"""JSON Schemas of ``botsky.yaml`` and ``bots.yaml``, generated from the settings models.

Editors that speak the YAML language server (VS Code's YAML extension, Neovim, JetBrains, Helix)
complete and check a YAML file against the schema its first line names::

    # yaml-language-server: $schema=schema/botsky.schema.json

The shipped files live in ``configs/schema/`` and are what ``botsky schema`` writes; a test keeps
them equal to the models. The schemas describe one YAML file as written: rules that span fields
(``source.kind: replay`` needs ``source.path``) and the environment's ``BOTSKY_*`` overrides are
``botsky check-config``'s business.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

from botsky.config import BotsFile, Settings

__all__ = ["SCHEMA_FILES", "config_schemas", "render", "write_schemas"]

SCHEMA_FILES: Final = ("botsky.schema.json", "bots.schema.json")
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
_RST_LITERAL: Final = re.compile(r"``([^`]+)``")


def config_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema (draft 2020-12) for ``botsky.yaml`` and ``bots.yaml``."""
    out: dict[str, dict[str, Any]] = {}
    for name, model, title, about in (
        (
            SCHEMA_FILES[0],
            Settings,
            "botsky.yaml",
            "The botsky service configuration; every key can be overridden by a BOTSKY_* "
            "environment variable.",
        ),
        (
            SCHEMA_FILES[1],
            BotsFile,
            "bots.yaml",
            "The bot army: personas, models, pickers and Bluesky accounts. Secrets never "
            "live here: a bot names the environment variable or file that holds them.",
        ),
    ):
        schema = _markdown(model.model_json_schema(mode="validation"))
        out[name] = {"$schema": _DIALECT, **schema, "title": title, "description": about}
    return out


def render(schema: dict[str, Any]) -> str:
    """The file's text: stable key order as generated, two-space indents, a final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write both schemas into ``directory`` (created); the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in config_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def _markdown(node: Any) -> Any:
    """Docstrings use RST literals (``x``); editors render descriptions as Markdown (`x`)."""
    if isinstance(node, dict):
        return {
            k: _RST_LITERAL.sub(r"`\1`", v) if k == "description" and isinstance(v, str)
            else _markdown(v)
            for k, v in node.items()
        }  # fmt: skip
    if isinstance(node, list):
        return [_markdown(item) for item in node]
    return node
