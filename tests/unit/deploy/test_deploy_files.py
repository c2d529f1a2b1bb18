"""examples/deploy: the Kubernetes manifests, the Dockerfile, docker-compose.yml and nginx.conf.

Docker and a cluster do not run here, so each file is checked by what can
be checked without them: YAML parses, every Kubernetes object validates
against the API schema (``kubernetes-validate``, strict: unknown fields are
errors), and the files agree with each other and with the app — probes on
the paths ``install()`` mounts, ports, selectors, the variables the app reads.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from harness.nginx_server import SHIPPED_CONF, TemplateMismatch, render_nginx_conf
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "examples" / "deploy"
K8S = DEPLOY / "k8s"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.taskapi.app import create_app  # noqa: E402
from examples.taskapi.config import TaskApiConfig  # noqa: E402
from scalekit import Settings  # noqa: E402

KUBERNETES_VERSION = kubernetes_validate.latest_version()
SETS = {
    "base": K8S,
    "blue-green": K8S / "blue-green",
    "canary": K8S / "canary",
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def objects(directory: Path) -> list[dict[str, Any]]:
    return [doc for path in sorted(directory.glob("*.yaml")) for doc in documents(path)]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return found


def manifest_paths() -> Iterator[Path]:
    yield from sorted(K8S.rglob("*.yaml"))


@pytest.mark.parametrize("path", list(manifest_paths()), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    [deployment] = of_kind(objects(K8S), "Deployment")
    containers(deployment)[0]["readinesProbe"] = containers(deployment)[0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.anyio
async def test_probes_point_at_the_paths_the_app_mounts(tmp_path: Path) -> None:
    config = TaskApiConfig.from_env(
        {"TASKAPI_JWT_SECRET": "x" * 40, "TASKAPI_DATA_DIR": str(tmp_path)}
    )
    app = create_app(config, registry=CollectorRegistry())
    paths = set()
    for directory in SETS.values():
        for deployment in of_kind(objects(directory), "Deployment"):
            for container in containers(deployment):
                live = container["livenessProbe"]["httpGet"]
                ready = container["readinessProbe"]["httpGet"]
                assert live["path"] == "/health/live"
                assert ready["path"] == "/health/ready"
                assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
                ports = {port["name"]: port["containerPort"] for port in container["ports"]}
                assert ports[live["port"]] == ports[ready["port"]] == 8000
                assert container["resources"]["requests"]["cpu"]
                assert container["resources"]["limits"]["memory"]
                paths |= {live["path"], ready["path"]}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            for path in sorted(paths):
                response = await client.get(path)
                assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("name", list(SETS))
def test_services_hpa_and_pdb_find_their_pods(name: str) -> None:
    docs = objects(SETS[name])
    if name != "base":
        docs += of_kind(objects(K8S), "PodDisruptionBudget")
    deployments = of_kind(docs, "Deployment")
    assert deployments
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()

    def pods_matching(selector: dict[str, str]) -> list[str]:
        return [
            deployment["metadata"]["name"]
            for deployment in deployments
            if selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ]

    for service in of_kind(docs, "Service"):
        assert pods_matching(service["spec"]["selector"]), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert any(
                port["targetPort"] in {p["name"], p["containerPort"]}
                for deployment in deployments
                for container in containers(deployment)
                for p in container["ports"]
            )
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert pods_matching(pdb["spec"]["selector"]["matchLabels"])
    names = {deployment["metadata"]["name"] for deployment in deployments}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in names
        assert hpa["spec"]["minReplicas"] >= 2


def test_blue_green_switches_by_one_selector_and_canary_splits_by_pods() -> None:
    blue_green = objects(SETS["blue-green"])
    blue, green = sorted(of_kind(blue_green, "Deployment"), key=lambda d: d["metadata"]["name"])
    [service] = of_kind(blue_green, "Service")
    assert service["spec"]["selector"] == {"app": "taskapi", "track": "blue"}
    assert blue["spec"]["replicas"] == green["spec"]["replicas"]

    def without_colour(deployment: dict[str, Any]) -> str:
        text = yaml.safe_dump(deployment["spec"]["template"]["spec"])
        return re.sub(r"image: \S+", "image: X", text)

    # The colours differ in their track and image only.
    assert without_colour(blue) == without_colour(green)
    assert containers(blue)[0]["image"] != containers(green)[0]["image"]

    canary_set = objects(SETS["canary"])
    [service] = of_kind(canary_set, "Service")
    assert service["spec"]["selector"] == {"app": "taskapi"}
    replicas = {
        d["metadata"]["labels"]["track"]: d["spec"]["replicas"]
        for d in of_kind(canary_set, "Deployment")
    }
    assert replicas == {"stable": 9, "canary": 1}  # about 10% of requests


def _settings_variables() -> set[str]:
    import dataclasses

    return {"SCALEKIT_" + field.name.upper() for field in dataclasses.fields(Settings)}


def test_configured_variables_are_ones_the_app_reads() -> None:
    known = _settings_variables() | {
        "TASKAPI_JWT_SECRET",
        "TASKAPI_TOKEN_TTL",
        "TASKAPI_LOGIN_LIMIT",
        "TASKAPI_DATA_DIR",
    }
    config = of_kind(objects(K8S), "ConfigMap")[0]["data"]
    secret = of_kind(objects(K8S), "Secret")[0]["stringData"]
    environment = {**config, **secret}
    assert set(environment) <= known
    parsed = TaskApiConfig.from_env({**environment, "TASKAPI_JWT_SECRET": "y" * 48})
    assert len(parsed.settings.shard_urls) == 2
    assert all(len(shard) == 2 for shard in parsed.settings.shard_urls)  # primary + replica

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    apis = {
        name: service for name, service in compose["services"].items() if name.startswith("api")
    }
    assert sorted(apis) == ["api1", "api2", "api3"]
    assert len({yaml.safe_dump(service) for service in apis.values()}) == 1
    env = apis["api1"]["environment"]
    assert set(env) <= known
    parsed = TaskApiConfig.from_env({**env, "TASKAPI_JWT_SECRET": "y" * 48})
    assert parsed.settings.redis_url == "redis://redis:6379/0"
    # nginx appends to X-Forwarded-For: that, and only that, carries the client
    assert parsed.settings.forwarded_header == "x-forwarded-for"
    assert config["SCALEKIT_FORWARDED_HEADER"] == "x-forwarded-for"
    assert [len(shard) for shard in parsed.settings.shard_urls] == [2, 2]
    assert not parsed.embedded


def test_compose_wires_nginx_databases_and_redis() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {
        "api1", "api2", "api3", "nginx", "mariadb-primary", "mariadb-replica", "redis",
    }  # fmt: skip
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    for volume in services["mariadb-primary"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), volume
    replica = services["mariadb-replica"]["environment"]
    assert replica["MARIADB_MASTER_HOST"] == "mariadb-primary"
    assert "--read-only=1" in services["mariadb-replica"]["command"]
    build = services["api1"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    initdb = (DEPLOY / "initdb.sh").read_text(encoding="utf-8")
    databases = re.search(r"for database in ([^;]+);", initdb)
    assert databases is not None
    urls = " ".join(services["api1"]["environment"][name] for name in
                    ("SCALEKIT_DATABASE_URL", "SCALEKIT_SHARD_URLS"))  # fmt: skip
    for database in databases.group(1).split():
        assert f"/{database}" in urls


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    instructions = _dockerfile()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0][0] == "FROM"
    assert instructions[0][1].endswith("-slim")
    user_at = keywords.index("USER")
    assert instructions[user_at][1] not in ("root", "0")
    assert user_at < keywords.index("CMD")
    assert "useradd" in dict(instructions)["RUN"]
    healthcheck = dict(instructions)["HEALTHCHECK"]
    assert "/health/live" in healthcheck
    assert dict(instructions)["EXPOSE"] == "8000"
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), source
    command = yaml.safe_load(dict(instructions)["CMD"])  # a JSON array
    assert command[:2] == ["uvicorn", "examples.taskapi.app:app"]
    assert command[command.index("--port") + 1] == "8000"
    # uvicorn must not rewrite the client address from X-Forwarded-For itself:
    # SCALEKIT_TRUSTED_PROXIES and SCALEKIT_FORWARDED_HEADER decide it
    assert "--no-proxy-headers" in command
    assert not any(argument.startswith("--forwarded-allow-ips") for argument in command)


def test_nginx_conf_balances_three_instances_and_forwards_the_client() -> None:
    text = SHIPPED_CONF.read_text(encoding="utf-8")
    upstream = re.search(r"upstream taskapi \{(.*?)\}", text, re.DOTALL)
    assert upstream is not None
    body = upstream.group(1)
    assert re.search(r"^\s*least_conn;", body, re.MULTILINE)
    servers = re.findall(r"^\s*server (\S+)", body, re.MULTILINE)
    assert servers == ["api1:8000", "api2:8000", "api3:8000"]
    for header in ("Host $host", "X-Real-IP $remote_addr",
                   "X-Forwarded-For $proxy_add_x_forwarded_for"):  # fmt: skip
        assert f"proxy_set_header {header};" in text
    assert "non_idempotent" not in text  # a POST is never sent to a second instance


def test_rendering_changes_only_the_templated_lines(tmp_path: Path) -> None:
    text = SHIPPED_CONF.read_text(encoding="utf-8")
    upstreams = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    rendered = render_nginx_conf(text, listen_port=9000, upstreams=upstreams, workdir=tmp_path)
    kept = [line for line in text.splitlines() if "# templated" not in line or
            line.lstrip().startswith("#")]  # fmt: skip
    assert [line for line in rendered.splitlines() if "# templated" not in line or
            line.lstrip().startswith("#")] == kept  # fmt: skip
    assert re.findall(r"server (\S+) max_fails", rendered) == upstreams
    assert "listen 127.0.0.1:9000;" in rendered
    with pytest.raises(TemplateMismatch, match="server"):
        render_nginx_conf(text, listen_port=9000, upstreams=upstreams[:2], workdir=tmp_path)
