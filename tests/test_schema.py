"""`botsky schema`: JSON Schemas of the config files, shipped, referenced and obeyed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from botsky.schema import SCHEMA_FILES, config_schemas, render

REPO = Path(__file__).parent.parent
SCHEMA_DIR = REPO / "configs" / "schema"
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")

# Every hand-written config file we ship, and the schema it must satisfy.
SHIPPED = {
    "configs/botsky.yaml": "botsky.schema.json",
    "configs/sim.yaml": "botsky.schema.json",
    "configs/bots.yaml": "bots.schema.json",
    "configs/sim-bots.yaml": "bots.schema.json",
    "deploy/botsky.yaml": "botsky.schema.json",
    "deploy/bots.yaml": "bots.schema.json",
}


def _validator(name: str) -> Draft202012Validator:
    schema = config_schemas()[name]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _load(text: str) -> Any:
    return YAML(typ="safe").load(text)


def test_shipped_schema_files_equal_what_botsky_schema_generates() -> None:
    """configs/schema/ holds exactly the schemas the settings models give today."""
    assert sorted(p.name for p in SCHEMA_DIR.iterdir()) == sorted(SCHEMA_FILES)
    for name, schema in config_schemas().items():
        assert (SCHEMA_DIR / name).read_text(encoding="utf-8") == render(schema), name


@pytest.mark.parametrize("path", list(SHIPPED))
def test_shipped_configs_name_their_schema_and_satisfy_it(path: str) -> None:
    """Each shipped YAML's first line points editors at the right schema, which it satisfies."""
    file = REPO / path
    first = file.read_text(encoding="utf-8").splitlines()[0]
    match = MODELINE.match(first)
    assert match, first
    target = (file.parent / match[1]).resolve()
    assert target == (SCHEMA_DIR / SHIPPED[path]).resolve()
    errors = list(_validator(SHIPPED[path]).iter_errors(_load(file.read_text(encoding="utf-8"))))
    assert errors == [], [e.message for e in errors]


def test_the_kubernetes_configmap_files_satisfy_the_schemas() -> None:
    """The YAML embedded in deploy/k8s/configmap.yaml satisfies the schemas too."""
    (configmap,) = [
        d for d in YAML(typ="safe").load_all((REPO / "deploy/k8s/configmap.yaml").read_text()) if d
    ]
    for key, name in (("botsky.yaml", SCHEMA_FILES[0]), ("bots.yaml", SCHEMA_FILES[1])):
        errors = list(_validator(name).iter_errors(_load(configmap["data"][key])))
        assert errors == [], [e.message for e in errors]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("botsky.schema.json", "dispach: {workers: 2}\n", "'dispach' was unexpected"),
        ("botsky.schema.json", "posting: {mode: alive}\n", "'alive' is not one of"),
        ("botsky.schema.json", "dispatch: {workers: 0}\n", "0 is less than the minimum of 1"),
        (
            "bots.schema.json",
            "bots:\n  - {name: a, persona: p, provider: opena1, model: m, account: {handle: h}}\n",
            "'opena1' is not one of",
        ),
        ("bots.schema.json", "bots:\n  - {name: a, persona: p}\n", "'provider' is a required"),
    ],
)
def test_the_schemas_catch_what_an_editor_should_flag(name: str, text: str, message: str) -> None:
    """Misspelt keys, unknown choices, out-of-range numbers and missing fields are errors."""
    errors = [e.message for e in _validator(name).iter_errors(_load(text))]
    assert any(message in e for e in errors), errors


def test_schema_command_writes_and_checks(tmp_path: Path) -> None:
    """`botsky schema --out DIR` writes both files; `--check` passes on them and fails on a
    stale one, naming it."""

    def botsky(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "botsky", "schema", "--out", str(tmp_path), *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    assert botsky().returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SCHEMA_FILES)
    assert botsky("--check").returncode == 0
    (tmp_path / "bots.schema.json").write_text("{}\n")
    stale = botsky("--check")
    assert stale.returncode == 1
    assert f"{tmp_path / 'bots.schema.json'}: differs" in stale.stderr
