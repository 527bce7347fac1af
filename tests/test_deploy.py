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
from urllib.parse import urlsplit

import pytest
from ruamel.yaml import YAML

from botsky.configload import check_config, load_config

REPO = Path(__file__).parent.parent
DEPLOY = REPO / "deploy"


def _yaml_docs(path: Path) -> list[Any]:
    return [d for d in YAML(typ="safe").load_all(path.read_text()) if d is not None]


def _env_example() -> dict[str, str]:
    """Every variable of deploy/.env.example with a real-looking value (placeholders replaced)."""
    names = re.findall(r"^([A-Z][A-Z0-9_]*)=", (DEPLOY / ".env.example").read_text(), re.M)
    env = {name: f"real{name.lower().replace('_', '')}" for name in names}
    return env | {"BOTSKY_KILL_SWITCH": ""}  # set means "stop posting"


def _shipped_env_example() -> dict[str, str]:
    """deploy/.env.example as shipped: its placeholders and empty values."""
    text = (DEPLOY / ".env.example").read_text()
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))


def _with_real_handles(src: Path, dst: Path) -> Path:
    """Copies of deploy/botsky.yaml and bots.yaml in ``dst``, the example handles replaced as
    the README says; the path of the copied botsky.yaml."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "botsky.yaml", dst / "botsky.yaml")
    bots = (src / "bots.yaml").read_text()
    assert ".example.bsky.social" in bots
    (dst / "bots.yaml").write_text(bots.replace(".example.bsky.social", "-bot.bsky.social"))
    return dst / "botsky.yaml"


def _compose_dsn(env: dict[str, str]) -> str:
    (compose,) = _yaml_docs(DEPLOY / "docker-compose.yml")
    template = compose["services"]["botsky"]["environment"]["BOTSKY_LEDGER__URL"]
    return re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], template)


def _k8s_env(secret_values: dict[str, str]) -> dict[str, str]:
    """The botsky container's environment in Kubernetes: the Secret (envFrom), then its env
    entries with ``$(VAR)`` expanded as the kubelet does."""
    (sts,) = _yaml_docs(DEPLOY / "k8s" / "statefulset.yaml")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "botsky-secrets"}}]
    env = dict(secret_values)
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "botsky-secrets"
            env[item["name"]] = secret_values[ref["key"]]
    return env


def test_container_config_validates_with_the_documented_secrets(tmp_path: Path) -> None:
    """deploy/ with .env.example filled in and the example handles replaced passes check-config."""
    env = {"PATH": os.environ.get("PATH", ""), **_env_example()}
    env["BOTSKY_LEDGER__URL"] = _compose_dsn(env)
    assert check_config(_with_real_handles(DEPLOY, tmp_path), environ=env) == []


def test_container_config_refuses_the_shipped_placeholders() -> None:
    """As shipped, check-config names every placeholder and example handle left to replace."""
    env = _shipped_env_example()
    env["BOTSKY_LEDGER__URL"] = _compose_dsn(env)
    problems = "\n".join(check_config(DEPLOY / "botsky.yaml", environ=env))
    assert "env BOTSKY_WEB__TOKEN web.token is the placeholder" in problems
    assert "env BOTSKY_LEDGER__URL ledger.url: the DSN's password is the placeholder" in problems
    for handle in ("ada", "basil", "similar", "random"):
        assert f"'{handle}.example.bsky.social' is an example handle" in problems


def test_container_config_fails_without_its_secrets() -> None:
    """Without the app passwords and the web token, check-config names what is missing."""
    no_token = "\n".join(check_config(DEPLOY / "botsky.yaml", environ={}))
    assert "BOTSKY_WEB__TOKEN" in no_token
    no_passwords = check_config(DEPLOY / "botsky.yaml", environ={"BOTSKY_WEB__TOKEN": "t0ken-x"})
    assert any("ADA_APP_PASSWORD" in line for line in no_passwords)


def test_kubernetes_runs_exactly_the_compose_army_and_settings() -> None:
    """The ConfigMap holds deploy/botsky.yaml and deploy/bots.yaml byte for byte (what the
    image and Compose use), mounted where both deployments read them."""
    (configmap,) = _yaml_docs(DEPLOY / "k8s" / "configmap.yaml")
    assert configmap["data"] == {
        "botsky.yaml": (DEPLOY / "botsky.yaml").read_text(),
        "bots.yaml": (DEPLOY / "bots.yaml").read_text(),
    }
    (sts,) = _yaml_docs(DEPLOY / "k8s" / "statefulset.yaml")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == "/etc/botsky"
    assert container["args"] == ["run", "-c", "/etc/botsky/botsky.yaml"]
    assert 'CMD ["run", "-c", "/etc/botsky/botsky.yaml"]' in (REPO / "Dockerfile").read_text()
    assert (
        "COPY deploy/botsky.yaml deploy/bots.yaml /etc/botsky/" in (REPO / "Dockerfile").read_text()
    )


def test_secret_and_env_example_hold_the_same_variables() -> None:
    """One deploy/.env feeds both: the Secret's keys are .env.example's, and they cover every
    variable the army names (app passwords, API keys) and the ledger's password."""
    (secret,) = _yaml_docs(DEPLOY / "k8s" / "secret.yaml")
    names = set(_shipped_env_example())
    assert secret["stringData"] == _shipped_env_example()  # same names, same placeholders
    bots = load_config(DEPLOY / "botsky.yaml", environ={"BOTSKY_WEB__TOKEN": "t0ken-x"}).bots
    needed = {b.account.password_env for b in bots} | {b.default_key_env for b in bots}
    assert needed - {None} <= names
    assert "POSTGRES_PASSWORD" in names and "BOTSKY_WEB__TOKEN" in names


def test_kubernetes_config_validates_with_the_secret_filled_in(tmp_path: Path) -> None:
    """The ConfigMap's files pass check-config with the container's environment in Kubernetes
    (the Secret filled in, the DSN built from its POSTGRES_PASSWORD), the same DSN as Compose."""
    (configmap,) = _yaml_docs(DEPLOY / "k8s" / "configmap.yaml")
    for name, text in configmap["data"].items():
        (tmp_path / "shipped" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "shipped" / name).write_text(text)
    filled = _env_example()
    env = _k8s_env(filled)
    assert env["BOTSKY_LEDGER__URL"] == _compose_dsn(filled)
    path = _with_real_handles(tmp_path / "shipped", tmp_path / "edited")
    assert check_config(path, environ=env) == []


def test_kubernetes_includes_postgres_wired_to_the_dsn() -> None:
    """PostgreSQL runs as a StatefulSet with a volume claim behind the Service the DSN names,
    with the user, database and password (from the Secret) of the DSN and of Compose."""
    docs = {d["kind"]: d for d in _yaml_docs(DEPLOY / "k8s" / "postgres.yaml")}
    sts, svc = docs["StatefulSet"], docs["Service"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    dsn = urlsplit(_k8s_env(_env_example())["BOTSKY_LEDGER__URL"])
    assert (dsn.hostname, dsn.port) == (svc["metadata"]["name"], svc["spec"]["ports"][0]["port"])
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (dsn.username, dsn.path.lstrip("/"))
    assert env["POSTGRES_PASSWORD"] == {
        "secretKeyRef": {"name": "botsky-secrets", "key": "POSTGRES_PASSWORD"}
    }
    assert dsn.password == _env_example()["POSTGRES_PASSWORD"]
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert claim in {m["name"] for m in container["volumeMounts"]}
    (compose,) = _yaml_docs(DEPLOY / "docker-compose.yml")
    pg = compose["services"]["postgres"]
    assert pg["image"] == container["image"]
    assert (pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_DB"]) == (
        env["POSTGRES_USER"],
        env["POSTGRES_DB"],
    )


def test_kustomization_applies_every_manifest_but_the_secret() -> None:
    """kustomization.yaml lists every manifest (the Secret is made from deploy/.env) and
    retags the botsky container's image."""
    (kustomization,) = _yaml_docs(DEPLOY / "k8s" / "kustomization.yaml")
    manifests = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {"secret.yaml"}
    (sts,) = _yaml_docs(DEPLOY / "k8s" / "statefulset.yaml")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert [i["name"] for i in kustomization["images"]] == [container["image"]]


def _k8s_documents() -> list[Any]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in _yaml_docs(path)]


@pytest.mark.parametrize("version", ["1.28", "1.33"])
def test_kubernetes_manifests_match_the_api_schemas(version: str) -> None:
    """Every manifest validates (strictly: no unknown field) against Kubernetes' own OpenAPI
    schemas, offline, for an old and a recent supported version."""
    import kubernetes_validate

    docs = [d for d in _k8s_documents() if d.get("kind") != "Kustomization"]
    assert {d["kind"] for d in docs} == {"ConfigMap", "Secret", "Service", "StatefulSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomize_renders_valid_manifests_where_kubectl_is_installed() -> None:
    """`kubectl kustomize deploy/k8s` (offline) renders manifests that validate, with the image
    retagged. Needs kubectl; the schema test above covers the files without it."""
    if shutil.which("kubectl") is None:  # pragma: no cover - machines without kubectl
        pytest.skip("kubectl is not installed")
    import kubernetes_validate

    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in YAML(typ="safe").load_all(out.stdout) if d]
    assert {d["kind"] for d in docs} == {"ConfigMap", "Service", "StatefulSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33", strict=True)
    images = [
        c["image"]
        for d in docs
        if d["kind"] == "StatefulSet"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert "registry.example.com/botsky:latest" in images


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
    env["BOTSKY_LEDGER__URL"] = _compose_dsn(env)
    config = _with_real_handles(context / "deploy", tmp_path / "edited")
    checked = subprocess.run(
        [str(venv / "bin" / "botsky"), "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_the_readme_walks_through_the_deploy() -> None:
    """README's Deploy section names the steps a newcomer needs: the handles to replace, the
    image build and push, where the image goes, the Secret from deploy/.env, the apply."""
    readme = (REPO / "README.md").read_text()
    deploy = readme[readme.index("## Deploy") :]
    for step in (
        "ada.example.bsky.social",
        "cp deploy/.env.example deploy/.env",
        'docker build -t "$IMAGE" . && docker push "$IMAGE"',
        "deploy/k8s/kustomization.yaml",
        "kubectl create secret generic botsky-secrets --from-env-file=deploy/.env",
        "kubectl apply -k deploy/k8s/",
        "External PostgreSQL",
    ):
        assert step in deploy, step
    (kustomization,) = _yaml_docs(DEPLOY / "k8s" / "kustomization.yaml")
    assert {"newName", "newTag"} <= set(kustomization["images"][0])
