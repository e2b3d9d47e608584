"""The deploy files, read as Docker and Kubernetes would, without either: ``docker-compose.yml``
against the Compose specification's JSON schema (vendored in check-jsonschema), ``deploy/k8s/*``
against Kubernetes' schemas (vendored in kubernetes-validate, strict: no unknown fields); every
variable they set is a setting of the process it configures (the pydantic-settings models) or a
secret the config seed names; the settings they make are what the process needs (listening on
every interface, the hosts of Redis, ClickHouse and Qdrant); every port and health path they use
is one the gateway serves; ingester spools sit on volumes."""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from gateway.app import create_app
from gateway.routes import proxy_endpoints
from gateway.services import Opened
from gateway.settings import GatewaySettings
from ingester.settings import IngesterSettings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
K8S_VERSION = "1.30.0"
PROCESSES: dict[str, tuple[str, type[BaseSettings]]] = {
    "floopy-gateway": ("FLOOPY_GATEWAY_", GatewaySettings),
    "floopy-ingester": ("FLOOPY_INGESTER_", IngesterSettings),
}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def is_setting(model: type[BaseModel], name: str) -> bool:
    """``redis__url`` → ``model.redis.url`` exists (nested groups joined by ``__``)."""
    head, _, rest = name.lower().partition("__")
    field = model.model_fields.get(head)
    if field is None:
        return False
    if not rest:
        return True
    inner = field.annotation
    return isinstance(inner, type) and issubclass(inner, BaseModel) and is_setting(inner, rest)


def seed_secret_names() -> set[str]:
    """Environment variables the config seed reads (``secret_env``, ``api_key_env``)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("secret_env", "api_key_env") and isinstance(value, str):
                    names.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(tomllib.loads((ROOT / "deploy" / "floopy.toml").read_text()))
    return names


def wrong_names(command: str, env: dict[str, str]) -> list[str]:
    """Variables that configure nothing in the process ``command`` starts."""
    prefix, model = PROCESSES[command]
    allowed = seed_secret_names() if command == "floopy-gateway" else set()
    wrong = []
    for name in env:
        if name.startswith(prefix):
            if not is_setting(model, name.removeprefix(prefix)):
                wrong.append(name)
        elif name not in allowed:
            wrong.append(name)
    return wrong


def build_settings(
    monkeypatch: pytest.MonkeyPatch, command: str, env: dict[str, str]
) -> BaseSettings:
    """The settings the process would build from ``env`` (and nothing else)."""
    import os

    for name in list(os.environ):
        if name.startswith("FLOOPY_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return PROCESSES[command][1]()


def gateway_paths() -> set[str]:
    litestar = {route.path for route in create_app(GatewaySettings()).litestar.routes}
    return litestar | set(proxy_endpoints(Opened()))


# --- docker-compose.yml ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    assert isinstance(schema, dict)
    return schema


def interpolated(value: Any) -> str:
    """What Compose substitutes for ``${VAR:-default}`` / ``${VAR:?error}`` when VAR is set
    to a placeholder: the default when one is given, ``set-by-user`` otherwise."""
    return _INTERPOLATION.sub(lambda m: m[3] if m[2] == "-" else "set-by-user", str(value))


def compose_processes() -> Iterator[tuple[str, str, dict[str, str]]]:
    for name, service in compose()["services"].items():
        command = service.get("command", [""])[0]
        if command in PROCESSES:
            env = {k: interpolated(v) for k, v in service.get("environment", {}).items()}
            yield name, command, env


def test_compose_file_follows_the_compose_specification() -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    validator.validate(compose())
    typo = {"services": {"gateway": {"image": "x", "enviroment": {}}}}
    assert not validator.is_valid(typo)  # the schema is strict: a misspelt key fails


def test_compose_sets_only_real_settings_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = set()
    for name, command, env in compose_processes():
        assert wrong_names(command, env) == [], name
        build_settings(monkeypatch, command, env)  # types and validators pass
        seen.add(command)
    assert seen == set(PROCESSES)


def _host(value: str) -> str:
    return urlsplit(value).hostname or "" if "://" in value else value


def test_compose_gives_each_process_the_hosts_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    services = set(compose()["services"])
    for _, command, env in compose_processes():
        settings = build_settings(monkeypatch, command, env)
        hosts = {
            "redis": _host(settings.redis.url),  # type: ignore[attr-defined]
            "clickhouse": settings.clickhouse.host,  # type: ignore[attr-defined]
        }
        if isinstance(settings, GatewaySettings):
            hosts["qdrant"] = _host(settings.qdrant.url)
            assert settings.host == "0.0.0.0"
        assert hosts == {k: k for k in hosts}, command
        assert set(hosts.values()) <= services


def test_compose_ports_and_health_checks_are_the_gateways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = compose()["services"]["gateway"]
    env = dict(next(e for n, _, e in compose_processes() if n == "gateway"))
    port = build_settings(monkeypatch, "floopy-gateway", env).port  # type: ignore[attr-defined]
    published = [str(p).rsplit(":", 1)[-1] for p in gateway["ports"]]
    assert published == [str(port)]
    probe = re.search(
        r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", " ".join(gateway["healthcheck"]["test"])
    )
    assert probe is not None
    assert int(probe[1]) == port and probe[2] in gateway_paths()
    for name, service in compose()["services"].items():
        assert "healthcheck" in service or name == "ingester", name  # the ingester has no port


def test_compose_ingester_spool_and_dead_letters_are_on_a_volume() -> None:
    service = compose()["services"]["ingester"]
    mounts = [v.split(":")[1] for v in service["volumes"]]
    env = service["environment"]
    for name in ("FLOOPY_INGESTER_SPOOL_DIR", "FLOOPY_INGESTER_DEAD_LETTER_DIR"):
        assert any(env[name].startswith(m + "/") for m in mounts), name


# --- deploy/k8s -----------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    docs = [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "StatefulSet", "Service", "Secret"}
    return docs


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in manifests():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def secret_keys() -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
        for d in manifests()
        if d["kind"] == "Secret"
    }


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """Each variable's value; one from a Secret or the pod's fields stands for a placeholder
    after checking that the Secret declares the key."""
    env: dict[str, str] = {}
    secrets = secret_keys()
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["key"] in secrets.get(ref["name"], set()), item["name"]
        env[item["name"]] = item.get("value", "set-by-cluster")
    assert "envFrom" not in container  # every variable named here, so each one is checked
    return env


def test_manifests_follow_the_kubernetes_schemas() -> None:
    for doc in manifests():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    typo = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"prots": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_manifests_set_only_real_settings_and_the_needed_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = set()
    for doc, container in containers():
        command = container["command"][0]
        env = container_env(container)
        assert wrong_names(command, env) == [], doc["metadata"]["name"]
        settings = build_settings(monkeypatch, command, env)
        hosts = [settings.redis.url, settings.clickhouse.host]  # type: ignore[attr-defined]
        if isinstance(settings, GatewaySettings):
            hosts.append(settings.qdrant.url)
            assert settings.host == "0.0.0.0"
        for host in map(_host, hosts):
            assert host and host not in ("127.0.0.1", "localhost"), (command, host)
        seen.add(command)
    assert seen == set(PROCESSES)


def test_manifest_ports_and_probes_are_the_gateways(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = gateway_paths()
    for doc, container in containers():
        if container["command"][0] != "floopy-gateway":
            continue
        settings = build_settings(monkeypatch, "floopy-gateway", container_env(container))
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert list(ports.values()) == [settings.port]  # type: ignore[attr-defined]
        for probe in ("readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] in paths
            assert ports.get(get["port"], get["port"]) == settings.port  # type: ignore[attr-defined]
        selector = doc["spec"]["template"]["metadata"]["labels"]
        services = [
            s for s in manifests() if s["kind"] == "Service" and s["spec"]["selector"] == selector
        ]
        assert services
        for port in services[0]["spec"]["ports"]:
            assert port["targetPort"] in ports or port["targetPort"] in ports.values()


def test_each_ingester_replica_has_its_own_spool_volume() -> None:
    for doc, container in containers():
        if container["command"][0] != "floopy-ingester":
            continue
        assert doc["kind"] == "StatefulSet"  # a volume per replica, kept across restarts
        claims = {c["metadata"]["name"] for c in doc["spec"]["volumeClaimTemplates"]}
        mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims]
        env = container_env(container)
        for name in ("FLOOPY_INGESTER_SPOOL_DIR", "FLOOPY_INGESTER_DEAD_LETTER_DIR"):
            assert any(env[name].startswith(m + "/") for m in mounts), name


# --- deploy/Dockerfile ----------------------------------------------------------------------


def test_dockerfile_env_names_real_settings() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    env = dict(re.findall(r"(FLOOPY_\w+)=(\S+)", "\n".join(re.findall(r"^ENV (.*)$", text, re.M))))
    assert env["FLOOPY_GATEWAY_HOST"] == "0.0.0.0"
    for command, (prefix, _) in PROCESSES.items():
        mine = {k: v for k, v in env.items() if k.startswith(prefix)}
        assert mine and wrong_names(command, mine) == []
    assert set(env) == {k for k in env if k.startswith(("FLOOPY_GATEWAY_", "FLOOPY_INGESTER_"))}


def test_env_example_names_real_settings() -> None:
    names = re.findall(r"^(FLOOPY_\w+)=", (ROOT / "deploy" / "env.example").read_text(), re.M)
    for command, (prefix, _) in PROCESSES.items():
        mine = {name: "" for name in names if name.startswith(prefix)}
        assert mine and wrong_names(command, mine) == []
    assert all(name.startswith(("FLOOPY_GATEWAY_", "FLOOPY_INGESTER_")) for name in names)


def test_the_gateways_outage_spool_is_on_a_volume() -> None:
    service = compose()["services"]["gateway"]
    mounts = [v.split(":")[1] for v in service["volumes"]]
    assert any(service["environment"]["FLOOPY_GATEWAY_SPOOL__DIR"].startswith(m) for m in mounts)
    for _, container in containers():
        if container["command"][0] == "floopy-gateway":
            spool = container_env(container)["FLOOPY_GATEWAY_SPOOL__DIR"]
            assert any(spool.startswith(m["mountPath"]) for m in container["volumeMounts"])
