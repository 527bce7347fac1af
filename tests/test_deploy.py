"""Deploy files: the configs they ship validate, the manifests fit together, and the
Dockerfile's install steps work in a clean virtualenv (no Docker engine runs here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from botsky.configload import check_config

REPO = Path(__file__).parent.parent
DEPLOY = REPO / "deploy"


def _yaml_docs(path: Path) -> list[Any]:
    return [d for d in YAML(typ="safe").load_all(path.read_text()) if d is not None]


def _env_example() -> dict[str, str]:
    """Every variable of deploy/.env.example, given a dummy value."""
    names = re.findall(r"^([A-Z][A-Z0-9_]*)=", (DEPLOY / ".env.example").read_text(), re.M)
    return {name: f"dummy-{name.lower()}" for name in names}


def test_container_config_validates_with_the_documented_secrets() -> None:
    """deploy/botsky.yaml + bots.yaml pass check-config when .env.example's variables are set."""
    env = {"PATH": os.environ.get("PATH", ""), **_env_example()}
    assert check_config(DEPLOY / "botsky.yaml", environ=env) == []


def test_container_config_fails_without_its_secrets() -> None:
    """Without the app passwords and the web token, check-config names what is missing."""
    no_token = "\n".join(check_config(DEPLOY / "botsky.yaml", environ={}))
    assert "BOTSKY_WEB__TOKEN" in no_token
    no_passwords = check_config(DEPLOY / "botsky.yaml", environ={"BOTSKY_WEB__TOKEN": "t0ken-x"})
    assert any("ADA_APP_PASSWORD" in line for line in no_passwords)


def test_kubernetes_configmap_validates_and_the_secret_covers_it(tmp_path: Path) -> None:
    """The ConfigMap's YAML passes check-config with exactly the Secret's variables."""
    (configmap,) = _yaml_docs(DEPLOY / "k8s" / "configmap.yaml")
    (secret,) = _yaml_docs(DEPLOY / "k8s" / "secret.yaml")
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    env = {k: v or f"dummy-{k.lower()}" for k, v in secret["stringData"].items()}
    assert check_config(tmp_path / "botsky.yaml", environ=env) == []


def test_statefulset_probes_ports_and_volumes_fit_together() -> None:
    """Probes hit /healthz and /readyz on a declared port the Service targets; mounts exist."""
    (sts,) = _yaml_docs(DEPLOY / "k8s" / "statefulset.yaml")
    services = _yaml_docs(DEPLOY / "k8s" / "service.yaml")
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] >= 2
    assert sts["spec"]["serviceName"] in {s["metadata"]["name"] for s in services}
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert ports["http"] == 8080
    for svc in services:
        assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    volumes = {v["name"] for v in pod["volumes"]} | {
        t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]
    }
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["envFrom"] == [{"secretRef": {"name": "botsky-secrets"}}]
    labels = sts["spec"]["selector"]["matchLabels"]
    assert sts["spec"]["template"]["metadata"]["labels"] == labels


def test_compose_file_wires_botsky_to_postgres() -> None:
    """Compose: botsky waits for a healthy PostgreSQL, reads .env, exposes loopback only."""
    (compose,) = _yaml_docs(DEPLOY / "docker-compose.yml")
    botsky, pg = compose["services"]["botsky"], compose["services"]["postgres"]
    assert botsky["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in pg
    assert botsky["env_file"] == ".env"
    assert botsky["environment"]["BOTSKY_LEDGER__URL"].startswith("postgresql://")
    assert all(p.startswith("127.0.0.1:") for p in botsky["ports"])
    assert (DEPLOY / botsky["build"]["context"] / botsky["build"]["dockerfile"]).exists()
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):  # pragma: no cover - only where the compose plugin is installed
        env = {**os.environ, **_env_example()}
        out = subprocess.run(
            ["docker", "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr


def _dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            stages.append([])
        if line and not line.startswith("#") and stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_runtime_stage_is_slim_and_non_root() -> None:
    """The final stage has no build tools, runs as a non-root user, with a health check."""
    build, runtime = _dockerfile_stages()
    assert runtime[0].startswith("FROM python:3.11-slim")
    joined = "\n".join(runtime)
    assert re.search(r"^USER botsky$", joined, re.M)
    assert "HEALTHCHECK" in joined and "/healthz" in joined
    assert 'ENTRYPOINT ["botsky"]' in joined
    assert not re.search(r"apt-get|gcc|build-essential|pip install", joined)
    assert any("pip install ." in line for line in build)


def _dockerignore_allows(rel: str) -> bool:
    allowed = False
    for pattern in (REPO / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(regex + "(/.*)?", rel):
            allowed = negate
    return allowed


@pytest.mark.slow
def test_dockerfile_install_steps_work_in_a_clean_venv(tmp_path: Path) -> None:
    """What the build stage copies installs into a fresh venv and runs `botsky`."""
    context = tmp_path / "context"
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and not rel.startswith((".git/", ".venv/")) and _dockerignore_allows(rel):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / rel)
    assert (context / "botsky" / "cli.py").exists() and not (context / "tests").exists()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "."],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    version = subprocess.run(
        [str(venv / "bin" / "botsky"), "--version"], capture_output=True, text=True, check=True
    )
    assert "botsky" in version.stdout
    env = {"PATH": os.environ.get("PATH", ""), **_env_example()}
    checked = subprocess.run(
        [str(venv / "bin" / "botsky"), "check-config", "-c", str(context / "deploy/botsky.yaml")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
