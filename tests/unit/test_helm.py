"""The Helm chart in deploy/helm/pruning agrees with the code.

Two layers:

* Always: Chart.yaml and values.yaml parsed as YAML and checked against the settings the code
  reads; the templates checked statically (balanced and correctly scoped template actions,
  every ``.Values`` path and ``include`` defined, known functions only) and for what the
  deployment needs (gRPC probes on the gRPC port, the metrics port, the Celery command, a GPU
  per worker, one artifact volume shared by server and workers).
* With a ``helm`` binary on PATH: ``helm lint`` and ``helm template``, and the rendered
  manifests checked the same way; skipped without one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from conftest import ROOT
from pruning.v1 import pruning_pb2 as pb
from pruning_core.settings import Settings

CHART = ROOT / "deploy" / "helm" / "pruning"
TEMPLATES = CHART / "templates"
HELM = shutil.which("helm")
needs_helm = pytest.mark.skipif(HELM is None, reason="no helm binary on PATH")

SETTINGS = {f"PRUNING_{name.upper()}" for name in Settings.model_fields}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PruningService"].full_name
WORKER_COMMAND = ["celery", "-A", "pruning_worker.app", "worker", "--pool=solo", "-Q"]

ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)
BLOCKS = {"if", "with", "range", "define", "block"}
# Go template builtins and the Sprig/Helm functions a chart may use.
FUNCTIONS = {
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "len",
    "index",
    "print",
    "printf",
    "println",
    "html",
    "js",
    "urlquery",
    "call",
    "slice",
    "default",
    "empty",
    "coalesce",
    "required",
    "fail",
    "include",
    "tpl",
    "toYaml",
    "toJson",
    "fromYaml",
    "fromJson",
    "quote",
    "squote",
    "trim",
    "trimSuffix",
    "trimPrefix",
    "trunc",
    "nindent",
    "indent",
    "replace",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "lower",
    "upper",
    "title",
    "toString",
    "int",
    "int64",
    "float64",
    "list",
    "dict",
    "get",
    "set",
    "unset",
    "hasKey",
    "omit",
    "pick",
    "merge",
    "mergeOverwrite",
    "keys",
    "values",
    "join",
    "split",
    "splitList",
    "b64enc",
    "b64dec",
    "sha256sum",
    "semverCompare",
    "lookup",
    "ternary",
    "until",
    "add",
    "sub",
    "mul",
    "div",
    "mod",
    "max",
    "min",
    "deepCopy",
    "uniq",
    "first",
    "last",
    "append",
    "concat",
    "regexMatch",
    "kindIs",
    "typeOf",
}


@pytest.fixture(scope="module")
def chart():
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


@pytest.fixture(scope="module")
def values():
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def templates():
    return {p.name: p.read_text() for p in sorted(TEMPLATES.iterdir()) if p.is_file()}


def actions(text: str) -> list[str]:
    """The template actions of a file, comments left out."""
    return [a for a in ACTION.findall(text) if not a.startswith("/*")]


def lookup(tree: dict, dotted: str):
    node = tree
    for key in dotted.strip(".").split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def section(text: str, start: str, stop: str) -> str:
    """The part of ``text`` from the line holding ``start`` to the next line holding ``stop``."""
    begin = text.index(start)
    return text[begin : text.index(stop, begin + len(start))]


# -- Chart.yaml and values.yaml --------------------------------------------------------------


def test_chart_metadata(chart):
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "pruning"
    assert chart.get("type", "application") == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[\w.]+)?", chart["version"])
    server_version = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == server_version, "image tags default to appVersion"
    assert "1.24" in chart["kubeVersion"], "native gRPC probes need Kubernetes 1.24+"


def test_chart_files_present(templates):
    expected = {
        "_helpers.tpl",
        "server-deployment.yaml",
        "server-service.yaml",
        "worker-deployment.yaml",
        "redis.yaml",
        "pvc.yaml",
        "NOTES.txt",
    }
    assert expected <= set(templates)


def test_config_names_real_settings(values):
    config = values["config"]
    assert set(config) <= SETTINGS, f"unknown settings {set(config) - SETTINGS}"
    # Helm renders YAML numbers as floats (1073741824 -> 1.073741824e+09): strings only.
    assert all(isinstance(v, str) for v in config.values()), config
    assert not {"PRUNING_REDIS_URL", "PRUNING_STATE_DIR"} & set(config), "the chart sets these itself"
    Settings(**{k.removeprefix("PRUNING_").lower(): v for k, v in config.items()})


def test_values_defaults(values):
    assert values["server"]["grpcPort"] == 50051
    assert values["server"]["metrics"]["enabled"] and values["server"]["metrics"]["port"] == 9464
    assert values["server"]["readinessProbe"]["service"] == SERVICE_NAME
    worker = values["worker"]
    assert worker["gpu"] == {"count": 1, "resourceName": "nvidia.com/gpu"}
    assert worker["replicaCount"] >= 1
    assert isinstance(worker["nodeSelector"], dict) and isinstance(worker["tolerations"], list)
    # a stopping worker re-queues a job not done after drainSeconds, before the kubelet kills it
    assert 0 < worker["drainSeconds"] <= worker["terminationGracePeriodSeconds"] - 30
    assert "ReadWriteMany" in values["persistence"]["accessModes"]
    for part in ("server", "worker"):  # the image's unprivileged user, the volumes writable by it
        context = values[part]["podSecurityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == context["fsGroup"] == 10001
    assert values["redis"]["enabled"] is True
    assert "url" in values["externalRedis"]


# -- templates, statically ---------------------------------------------------------------------


def test_template_actions_balanced_and_scoped(templates):
    defined = set()
    for text in templates.values():
        defined |= set(re.findall(r'{{-?\s*define\s+"([^"]+)"', text))
    for name, text in templates.items():
        stack: list[str] = []
        for action in actions(text):
            words = action.split()
            keyword = words[0] if words else ""
            # `.Values` inside with/range (below the innermost define) is not the root any more.
            scoped = stack[len(stack) - stack[::-1].index("define") :] if "define" in stack else stack
            if keyword != "end" and re.search(r"(?<![\w$)])\.Values\b", action):
                assert not {"with", "range"} & set(scoped), f"{name}: .Values inside with/range: {action}"
            if keyword in BLOCKS:
                stack.append(keyword)
            elif keyword == "else":
                assert stack and stack[-1] in {"if", "with", "range"}, f"{name}: stray else"
            elif keyword == "end":
                assert stack, f"{name}: {{{{ end }}}} without a block"
                stack.pop()
            for include in re.findall(r'(?:include|template)\s+"([^"]+)"', action):
                assert include in defined, f"{name}: include of undefined {include!r}"
        assert not stack, f"{name}: unclosed {stack}"


def test_values_paths_exist(templates, values):
    for name, text in templates.items():
        for action in actions(text):
            for path in re.findall(r"\.Values((?:\.\w+)+)", action):
                try:
                    lookup(values, path)
                except KeyError:
                    pytest.fail(f"{name}: .Values{path} is not in values.yaml")


def test_functions_known(templates):
    for name, text in templates.items():
        for action in actions(text):
            bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', action)
            bare = re.sub(r"^(?:if|else if|else|with|range|define|block|template|end)\b", "", bare.strip())
            bare = re.sub(r"^\$\w+(?:\s*,\s*\$\w+)?\s*:?=", "", bare.strip())
            for word in set(re.findall(r"(?:^|[|(])\s*([A-Za-z]\w*)", bare.strip())) - {"true", "false", "nil"}:
                assert word in FUNCTIONS, f"{name}: unknown function {word!r} in {action!r}"


def test_env_names_are_real_settings(templates, values):
    names = set()
    for text in templates.values():
        names |= set(re.findall(r"name:\s*(PRUNING_[A-Z0-9_]+)", text))
    assert {"PRUNING_REDIS_URL", "PRUNING_STATE_DIR", "PRUNING_METRICS_LISTEN", "PRUNING_API_KEYS"} <= names
    assert names <= SETTINGS, f"unknown settings {names - SETTINGS}"
    helpers = templates["_helpers.tpl"]
    env = section(helpers, 'define "pruning.env"', "{{- end }}\n\n")
    assert "range $name, $value := .Values.config" in env
    assert "PRUNING_STATE_DIR\n  value: {{ .Values.persistence.mountPath" in env
    assert 'required "externalRedis.url' in env and ".Values.externalRedis.url" in env


def test_server_probes_use_the_grpc_port(templates):
    server = templates["server-deployment.yaml"]
    port = "{{ .Values.server.grpcPort }}"
    assert re.search(r"- name: grpc\n\s+containerPort: " + re.escape(port), server)
    assert f'"--listen", "0.0.0.0:{port}"' in server
    for probe in ("livenessProbe", "readinessProbe"):
        block = section(server, f"{probe}:", "readinessProbe:" if probe == "livenessProbe" else "resources:")
        assert re.search(r"grpc:\n\s+port: " + re.escape(port), block), f"{probe} is no gRPC probe on {port}"
        assert f".Values.server.{probe}.service" in block
    service = templates["server-service.yaml"]
    assert re.search(r"- name: grpc\n\s+port: " + re.escape(port) + r"\n\s+targetPort: grpc", service)
    assert "appProtocol: grpc" in service


def test_metrics_port_exposed(templates):
    server = templates["server-deployment.yaml"]
    assert "name: PRUNING_METRICS_LISTEN" in server
    assert 'value: "0.0.0.0:{{ .Values.server.metrics.port }}"' in server
    assert re.search(r"- name: metrics\n\s+containerPort: {{ \.Values\.server\.metrics\.port }}", server)
    assert re.search(
        r"- name: metrics\n\s+port: {{ \.Values\.server\.metrics\.port }}", templates["server-service.yaml"]
    )


def test_worker_command_gpu_and_placement(templates):
    worker = templates["worker-deployment.yaml"]
    command = re.findall(r"^\s+- (.+)$", section(worker, "command:", "env:"), re.M)
    assert command[: len(WORKER_COMMAND)] == WORKER_COMMAND
    assert ".Values.config.PRUNING_QUEUE" in command[len(WORKER_COMMAND)]
    assert re.search(r"name: TF_USE_LEGACY_KERAS\n\s+value: \"1\"", worker)
    limits = section(worker, "limits:", "volumeMounts:")
    assert "{{ .Values.worker.gpu.resourceName }}: {{ int .Values.worker.gpu.count }}" in limits
    for key in ("replicaCount", "nodeSelector", "tolerations", "affinity"):
        assert f".Values.worker.{key}" in worker


def test_one_artifact_volume_for_server_and_workers(templates):
    helpers = templates["_helpers.tpl"]
    assert 'claimName: {{ include "pruning.claimName" . }}' in helpers
    for name in ("server-deployment.yaml", "worker-deployment.yaml"):
        text = templates[name]
        assert 'include "pruning.artifactVolume" .' in text
        assert re.search(r"- name: artifacts\n\s+mountPath: {{ \.Values\.persistence\.mountPath }}", text)
        assert 'include "pruning.env" .' in text
    assert templates["pvc.yaml"].startswith("{{- if not .Values.persistence.existingClaim }}")


def test_a_workers_job_files_live_in_its_own_empty_dir(templates, values):
    """PRUNING_WORK_DIR (TensorFlow's scratch, epoch checkpoints) on an emptyDir of the pod:
    neither the container's writable layer nor the shared artifact volume."""
    worker = templates["worker-deployment.yaml"]
    assert re.search(r"name: PRUNING_WORK_DIR\n\s+value: {{ \.Values\.worker\.workDir\.mountPath \| quote }}", worker)
    assert re.search(r"- name: work\n\s+mountPath: {{ \.Values\.worker\.workDir\.mountPath }}", worker)
    assert re.search(r"- name: work\n\s+emptyDir:", worker)
    assert values["worker"]["workDir"]["mountPath"] != values["persistence"]["mountPath"]


def test_builtin_redis_is_optional(templates):
    redis = templates["redis.yaml"]
    assert redis.startswith("{{- if .Values.redis.enabled }}")
    assert "kind: StatefulSet" in redis and "kind: Service" in redis
    assert re.search(r'--appendonly\n\s+- "yes"', redis)


# -- helm ---------------------------------------------------------------------------------------


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def render(*sets: str) -> list[dict]:
    args = [a for s in sets for a in ("--set", s)]
    out = helm("template", "rel", str(CHART), "--namespace", "ns", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@needs_helm
def test_helm_lint():
    helm("lint", "--strict", str(CHART))
    helm(
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "redis.enabled=false",
        "--set",
        "externalRedis.url=redis://redis.example:6379/0",
    )


@needs_helm
def test_helm_template_default():
    docs = render()
    deployments = by_kind(docs, "Deployment")
    server = deployments["rel-pruning-server"]["spec"]["template"]["spec"]
    worker = deployments["rel-pruning-worker"]["spec"]["template"]["spec"]
    (server_c,), (worker_c,) = server["containers"], worker["containers"]

    grpc_port = {p["name"]: p["containerPort"] for p in server_c["ports"]}["grpc"]
    assert server_c["livenessProbe"]["grpc"]["port"] == grpc_port
    assert server_c["readinessProbe"]["grpc"] == {"port": grpc_port, "service": SERVICE_NAME}
    assert worker_c["command"][:6] == WORKER_COMMAND
    assert worker_c["resources"]["limits"]["nvidia.com/gpu"] == 1

    redis_services = [n for n in by_kind(docs, "Service") if n.endswith("-redis")]
    assert redis_services and by_kind(docs, "StatefulSet")
    for container in (server_c, worker_c):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert {k for k in env if k.startswith("PRUNING_")} <= SETTINGS
        assert re.match(r"redis://([^:/]+)", env["PRUNING_REDIS_URL"]).group(1) == redis_services[0]
        Settings(
            **{
                k.removeprefix("PRUNING_").lower(): v
                for k, v in env.items()
                if k.startswith("PRUNING_") and v is not None
            }
        )
    assert {e["name"]: e["value"] for e in worker_c["env"]}["TF_USE_LEGACY_KERAS"] == "1"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for spec in (server, worker)
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert "emptyDir" in {v["name"]: v for v in worker["volumes"]}["work"]
    assert claims == set(by_kind(docs, "PersistentVolumeClaim"))


@needs_helm
def test_helm_template_options():
    cpu = by_kind(render("worker.gpu.count=0"), "Deployment")["rel-pruning-worker"]
    limits = cpu["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits") or {}
    assert "nvidia.com/gpu" not in limits

    missing = helm("template", "rel", str(CHART), "--set", "redis.enabled=false", check=False)
    assert missing.returncode != 0 and "externalRedis.url" in missing.stderr

    docs = render(
        "redis.enabled=false", "externalRedis.url=redis://cache.example:6379/2", "persistence.existingClaim=shared"
    )
    assert not by_kind(docs, "StatefulSet") and not by_kind(docs, "PersistentVolumeClaim")
    server = by_kind(docs, "Deployment")["rel-pruning-server"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in server["containers"][0]["env"]}
    assert env["PRUNING_REDIS_URL"] == "redis://cache.example:6379/2"
    assert server["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared"
