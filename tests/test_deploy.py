"""deploy/: the image, compose file and Kubernetes base, checked by real validators.

* every Kubernetes manifest validates against the schemas of a pinned Kubernetes
  version, strictly (``kubernetes-validate``: unknown fields are errors);
* the Dockerfile passes ``hadolint`` with no finding at all; all YAML passes
  ``yamllint`` (``deploy/.yamllint``) in strict mode;
* the kustomize base is rendered here (its ``resources``, ``labels`` and ``images``)
  and the objects agree with each other: probes and ports, Services and pod labels,
  the ConfigMap and Secret the Deployment reads, the Redis URL and the Redis objects;
* the server runs EXACTLY as the container runs it: the Dockerfile's final-stage
  ENV, WORKDIR, ENTRYPOINT + CMD and HEALTHCHECK, with only the data dir and the port
  moved to a temp dir and a free port.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from yamllint import linter
from yamllint.config import YamlLintConfig

from paramsched.server.app import make_parser
from paramsched.server.auth import TokenRegistry
from paramsched.server.service.signing import StateKeys

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES_VERSION = "1.32.0"  # the schemas ship in kubernetes-validate's wheel
VENV_BIN = Path(sys.executable).parent
IMAGE_VENV = "/opt/venv"  # where the image installs the server


def serve_variables() -> set[str]:
    """``PARAMSCHED_<FLAG>`` of every ``paramsched serve`` flag (the CLI's convention)."""
    parser = make_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    serve = commands.choices["serve"]
    return {
        "PARAMSCHED_" + option[2:].upper().replace("-", "_")
        for action in serve._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def tool(name: str) -> str:
    """A validator's executable: next to this Python (the dev extra), else on PATH."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


# -- the Dockerfile, parsed --------------------------------------------------------------


@dataclass
class Stage:
    """The instructions of one build stage, continuation lines joined."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comments may sit inside a continuation
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def expand(value: str, env: dict[str, str]) -> str:
    """Docker's ``$VAR`` / ``${VAR}`` substitution in ENV values."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def image_env(stage: Stage, base: dict[str, str]) -> dict[str, str]:
    """The environment after the stage's ENV instructions (``KEY=value`` form)."""
    env = dict(base)
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=value form"
            env[key] = expand(value, env)
    return env


def exec_form(args: str) -> list[str]:
    command = json.loads(args)
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    return command


def healthcheck_command(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's options and its command (exec form)."""
    args = stage.last("HEALTHCHECK")
    assert args, "the image needs a HEALTHCHECK"
    options_part, _, command = args.partition("CMD ")
    options = dict(opt.lstrip("-").split("=", 1) for opt in options_part.split())
    return options, exec_form(command.strip())


@pytest.fixture(scope="module")
def runtime() -> Stage:
    stages = parse_dockerfile()
    assert len(stages) >= 1
    return stages[-1]


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_is_slim_python_without_torch_and_runs_as_non_root(runtime: Stage) -> None:
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", runtime.base), runtime.base
    installs = [a for s in parse_dockerfile() for a in s.all("RUN") if "pip install" in a]
    assert installs, "the image installs the project with pip"
    for install in installs:  # the `client`/`dev` extras would pull torch
        pip_args = install.split("pip install", 1)[1].split("&&")[0]
        assert "[" not in pip_args and "torch" not in pip_args, install
    assert runtime.last("COPY") == f"--from=build {IMAGE_VENV} {IMAGE_VENV}"
    user = runtime.last("USER")
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "numeric non-root USER"
    assert runtime.last("ENTRYPOINT") is not None and runtime.last("CMD") is not None
    assert exec_form(runtime.last("ENTRYPOINT") or "") + exec_form(runtime.last("CMD") or "") == [
        "paramsched", "serve",
    ]  # fmt: skip
    env = image_env(runtime, {"PATH": "/usr/local/bin"})
    assert env["PARAMSCHED_HOST"] == "0.0.0.0"  # reachable from outside the container
    assert env["PARAMSCHED_DATA_DIR"] == "/data" and exec_form(runtime.last("VOLUME") or "") == [
        "/data"
    ]
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert env["PARAMSCHED_PORT"] in (runtime.last("EXPOSE") or "").split()
    _, health = healthcheck_command(runtime)
    assert "paramsched health" in " ".join(health)


def test_the_files_the_dockerfile_copies_build_the_server(tmp_path: Path) -> None:
    """Only what COPY brings into the build stage, built like ``pip install .``."""
    build = parse_dockerfile()[0]
    context = tmp_path / "context"
    for args in build.all("COPY"):
        *sources, _ = args.split()
        for source in sources:
            src = ROOT / source.rstrip("/")
            assert src.exists(), f"COPY {source}: not in the repository"
            dest = context / source.rstrip("/")
            if src.is_dir():
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "-q", "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("paramsched-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(
            zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    assert {"paramsched/server/app.py", "paramsched/api/v1/scheduler_pb2.py"} <= names
    assert "paramsched = paramsched.cli:main" in entry_points
    torch_requirements = [line for line in metadata.splitlines()
                          if line.startswith("Requires-Dist: torch")]  # fmt: skip
    assert torch_requirements and all("extra ==" in line for line in torch_requirements)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_server_runs_exactly_as_the_container_runs_it(runtime: Stage, tmp_path: Path) -> None:
    """ENV + WORKDIR + ENTRYPOINT/CMD of the image; only data dir and port moved."""
    data_dir, port = tmp_path / "data", _free_port()
    data_dir.mkdir()
    # The base image's PATH stands in for python:3.11-slim's; the image's venv is ours.
    env = image_env(runtime, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    env["PATH"] = env["PATH"].replace(f"{IMAGE_VENV}/bin", str(VENV_BIN))
    assert env.get("PARAMSCHED_DATA_DIR") == runtime.last("WORKDIR") == "/data"
    env.update(PARAMSCHED_DATA_DIR=str(data_dir), PARAMSCHED_PORT=str(port))
    command = exec_form(runtime.last("ENTRYPOINT") or "[]") + exec_form(runtime.last("CMD") or "[]")
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, cwd=data_dir, stdout=log, stderr=log)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        options, health = healthcheck_command(runtime)
        checked = subprocess.run(health, env=env, cwd=data_dir, capture_output=True, text=True,
                                 timeout=float(options["timeout"].rstrip("s")) + 10)  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SERVING" in checked.stdout
        # The embedded store, in /data (its private subfolder: the dir is readable by others).
        assert list(data_dir.glob("**/paramsched.sqlite3"))
        assert f"listening on 0.0.0.0:{port}" in log_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        # Stopped: the same health check now fails.
        down = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
        assert down.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- YAML --------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), DEPLOY / ".yamllint"])


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_passes_yamllint_strictly(path: Path) -> None:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    assert not config.is_file_ignored(str(path))
    problems = [
        f"{path.name}:{p.line}:{p.column} [{p.level}] {p.message} ({p.rule})"
        for p in linter.run(path.read_text(), config, str(path))
    ]
    assert problems == []


# -- Kubernetes ----------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def render_kustomize_base() -> list[dict[str, Any]]:
    """What ``kustomize build`` makes of this base: its resources with ``labels`` and
    ``images`` applied (the only transformers the base uses; anything else fails)."""
    kust = kustomization()
    assert set(kust) <= {"apiVersion", "kind", "labels", "resources", "images"}, set(kust)
    docs: list[dict[str, Any]] = []
    for resource in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    for labels in kust.get("labels", []):
        assert labels.get("includeSelectors", False) is False
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(labels["pairs"])
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in
              kust.get("images", [])}  # fmt: skip
    for doc in docs:
        for container in pod_spec(doc).get("containers", []):
            container["image"] = images.get(container["image"], container["image"])
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("spec", {}).get("template", {}).get("spec", {})


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    """The rendered base, by (kind, name)."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in render_kustomize_base():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in objects, f"duplicate {key}"
        objects[key] = doc
    return objects


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_kustomization_lists_every_manifest_and_nothing_else() -> None:
    resources = kustomization()["resources"]
    assert len(resources) == len(set(resources))
    assert all((K8S / r).is_file() for r in resources), resources
    assert sorted(resources) == [p.name for p in k8s_manifests()]


@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda p: p.name)
def test_manifest_is_valid_for_the_pinned_kubernetes_version_strictly(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_strict_validator_really_rejects_a_misspelt_field(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    deployment = json.loads(json.dumps(k8s["Deployment", "paramsched"]))
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kubectl_kustomize_renders_the_same_objects(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """With kubectl (or kustomize) installed, the real renderer agrees with ours."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(K8S)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(K8S)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d
                for d in yaml.safe_load_all(result.stdout) if d}  # fmt: skip
    assert rendered == k8s
    for doc in rendered.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(doc)["containers"] if c["name"] == name]
    return container


def _selects(service_or_pdb: dict[str, Any], workload: dict[str, Any]) -> bool:
    selector = service_or_pdb["spec"]["selector"]
    selector = selector.get("matchLabels", selector)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def test_the_deployment_agrees_with_its_services_configmap_and_secret(
    k8s: dict[tuple[str, str], dict[str, Any]], runtime: Stage
) -> None:
    deployment = k8s["Deployment", "paramsched"]
    server = _container(deployment, "paramsched")
    config = k8s["ConfigMap", "paramsched-config"]["data"]
    grpc_port, metrics_port = (_port_number(server, "grpc"), _port_number(server, "metrics"))

    # Configuration: the ConfigMap (all of it, by envFrom) names real server variables.
    refs = [e["configMapRef"]["name"] for e in server["envFrom"] if "configMapRef" in e]
    assert refs == ["paramsched-config"]
    # Every key is a variable the server reads: PARAMSCHED_<FLAG> of a `serve` flag.
    known = serve_variables()
    assert {"PARAMSCHED_TOKENS_FILE", "PARAMSCHED_METRICS_PORT", "PARAMSCHED_TLS_CERT"} <= known
    assert set(config) <= known, set(config) - known
    assert all(isinstance(v, str) for v in config.values())
    assert config["PARAMSCHED_HOST"] == "0.0.0.0"
    assert int(config["PARAMSCHED_PORT"]) == grpc_port
    assert int(config["PARAMSCHED_METRICS_PORT"]) == metrics_port

    # Probes: native gRPC health checks on the serving port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == grpc_port, probe

    # The tokens and state-key Secrets are mounted where their variables point.
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    files: dict[str, str] = {}
    for volume in (v for v in volumes.values() if "secret" in v):
        secret = k8s["Secret", volume["secret"]["secretName"]]
        items = {i["key"]: i["path"] for i in volume["secret"]["items"]}
        assert set(items) <= set(secret["stringData"])
        assert mounts[volume["name"]]["readOnly"] is True
        for key, path in items.items():
            files[f"{mounts[volume['name']]['mountPath']}/{path}"] = secret["stringData"][key]
    assert config["PARAMSCHED_TOKENS_FILE"] in files
    # With tokens the server needs checkpoint keys; the placeholder is a valid key file.
    keys = json.loads(files[config["PARAMSCHED_STATE_KEY_FILE"]])
    StateKeys.from_document(keys, "state-keys.json")
    assert all("REPLACE-ME" in k["secret"] for k in keys["keys"])
    assert set(mounts) == set(volumes)

    # Services: the headless one for client-side balancing, the metrics one.
    headless = k8s["Service", "paramsched-headless"]
    assert headless["spec"]["clusterIP"] == "None" and _selects(headless, deployment)
    (gport,) = headless["spec"]["ports"]
    assert gport["port"] == grpc_port == _port_number(server, gport["targetPort"])
    metrics = k8s["Service", "paramsched-metrics"]
    assert metrics["spec"].get("clusterIP") != "None" and _selects(metrics, deployment)
    (mport,) = metrics["spec"]["ports"]
    assert _port_number(server, mport["targetPort"]) == metrics_port
    assert metrics["metadata"]["annotations"]["prometheus.io/port"] == str(mport["port"])

    # Availability: 3 replicas, a PDB that lets one go at a time.
    pdb = k8s["PodDisruptionBudget", "paramsched"]
    assert deployment["spec"]["replicas"] == 3 and _selects(pdb, deployment)
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert _selects({"spec": {"selector": deployment["spec"]["selector"]}}, deployment)

    # Resources and security: requests and limits; non-root, read-only root fs, the
    # image's own user.
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(server["resources"][kind])
    pod_security = pod_spec(deployment)["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    uid, gid = (runtime.last("USER") or "").split(":")
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (int(uid), int(gid))
    security = server["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in {m["mountPath"] for m in mounts.values()}  # writable scratch
    assert server["image"] == "paramsched:0.1.0"
    assert server.get("args", ["serve"]) == ["serve"]


def test_redis_is_a_statefulset_with_aof_on_a_persistent_volume(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    redis = k8s["StatefulSet", "paramsched-redis"]
    container = _container(redis, "redis")
    args = container.get("args", []) + container.get("command", [])
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert pairs["--appendonly"] == "yes" and pairs["--appendfsync"] == "everysec"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert mount["mountPath"] == pairs.get("--dir", "/data")
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    service = k8s["Service", redis["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None" and _selects(service, redis)
    (port,) = service["spec"]["ports"]
    assert _port_number(container, port["targetPort"]) == port["port"] == 6379
    assert pod_spec(redis)["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # The servers' Redis URL names this StatefulSet's pod through that Service.
    url = k8s["ConfigMap", "paramsched-config"]["data"]["PARAMSCHED_REDIS_URL"]
    match = re.fullmatch(r"redis://([\w-]+)\.([\w-]+):(\d+)/0", url)
    assert match, url
    assert match.group(1) == f"{redis['metadata']['name']}-0"
    assert match.group(2) == service["metadata"]["name"]
    assert int(match.group(3)) == port["port"]

    # Only the servers may reach it.
    policy = k8s["NetworkPolicy", "paramsched-redis"]
    assert policy["spec"]["podSelector"]["matchLabels"] == redis["spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    deployment = k8s["Deployment", "paramsched"]
    (source,) = rule["from"]
    assert _selects({"spec": {"selector": source["podSelector"]}}, deployment)


def _check_tokens(document: str) -> list[dict[str, Any]]:
    """The server's tokens-file format, and values that are obviously placeholders."""
    tokens = json.loads(document)["tokens"]
    assert tokens and any(t.get("role") == "admin" for t in tokens)
    for entry in tokens:
        assert set(entry) <= {"name", "token", "role", "jobs", "job_prefixes"}, entry
        assert entry["name"] and "REPLACE" in entry["token"], entry
        assert entry.get("role") == "admin" or entry.get("jobs") or entry.get("job_prefixes")
    assert len({t["token"] for t in tokens}) == len(tokens)
    registry = TokenRegistry.from_document(json.loads(document), "tokens")  # the server's
    assert registry.enabled
    return tokens


def test_the_tokens_secret_holds_placeholders_in_the_server_format(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    secret = k8s["Secret", "paramsched-tokens"]
    _check_tokens(secret["stringData"]["tokens.json"])
    assert "replace" in (K8S / "secret.yaml").read_text().lower().split("apiversion")[0]
    _check_tokens((DEPLOY / "tokens.example.json").read_text())


# -- compose -------------------------------------------------------------------------------


def test_compose_runs_redis_with_aof_and_two_server_replicas() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    redis = services["redis"]
    command = redis["command"]
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "redis-server"
    assert pairs["--appendonly"] == "yes" and pairs["--appendfsync"] == "everysec"
    (volume,) = redis["volumes"]
    name, _, target = volume.partition(":")
    assert name in compose["volumes"] and target == pairs.get("--dir", "/data")
    assert "redis-cli" in redis["healthcheck"]["test"]

    servers = {k: v for k, v in services.items() if k != "redis"}
    assert len(servers) == 2
    host_ports: list[str] = []
    for server in servers.values():
        assert server["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (COMPOSE.parent / server["build"]["context"] / "deploy" / "Dockerfile").exists()
        env = server["environment"]
        assert env["PARAMSCHED_REDIS_URL"] == "redis://redis:6379/0"
        assert server["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "paramsched" in server["healthcheck"]["test"]
        assert "health" in server["healthcheck"]["test"]
        secret_name = server["secrets"][0]
        assert env["PARAMSCHED_TOKENS_FILE"] == f"/run/secrets/{secret_name}"
        assert secret_name in compose["secrets"]
        host_ports += [p.split(":")[0] for p in server["ports"]]
        assert f"{env['PARAMSCHED_METRICS_PORT']}" in {p.split(":")[1] for p in server["ports"]}
        assert "50051" in {p.split(":")[1] for p in server["ports"]}
    assert len(host_ports) == len(set(host_ports))
    secret_file = compose["secrets"]["paramsched-tokens"]["file"]
    default = re.fullmatch(r"\$\{\w+:-(.+)\}", secret_file)
    assert default and (COMPOSE.parent / default.group(1)).is_file()


# -- docs ----------------------------------------------------------------------------------


def test_deploying_md_covers_every_topic() -> None:
    text = (DEPLOY / "DEPLOYING.md").read_text()
    for topic in ("compose", "Kubernetes", "Redis Cluster", "redis+cluster://", "token",
                  "TLS", "metrics", "round_robin", "dns:///paramsched-headless"):  # fmt: skip
        assert topic in text, topic
