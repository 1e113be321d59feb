"""docker-compose.yml is valid against the Compose schema and agrees with the code."""

import importlib
import json
import re
import tomllib

import jsonschema
import pytest
import yaml

from conftest import ROOT
from pruning_core.settings import Settings


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_valid_against_compose_schema(compose):
    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    jsonschema.validate(compose, schema)


def test_services_are_all_there(compose):
    assert set(compose["services"]) == {"redis", "s3", "s3-bucket", "server", "worker", "flower"}
    redis_cmd = compose["services"]["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in compose["services"]["redis"]["volumes"])


def test_worker_reserves_a_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)


def test_environment_names_real_settings(compose):
    fields = {f"PRUNING_{name.upper()}" for name in Settings.model_fields}
    for name in ("server", "worker"):
        env = compose["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("PRUNING_")} - fields
        assert not unknown, f"{name} sets unknown settings {unknown}"
        Settings(**{k.removeprefix("PRUNING_").lower(): v for k, v in env.items() if k.startswith("PRUNING_")})
        host = re.match(r"redis://([^:/]+)", env["PRUNING_REDIS_URL"]).group(1)
        assert host in compose["services"]


def test_server_and_worker_share_no_volume_only_the_object_store(compose):
    server, worker = compose["services"]["server"], compose["services"]["worker"]
    mounted = [{v.split(":")[0] for v in service.get("volumes", [])} for service in (server, worker)]
    assert not mounted[0] & mounted[1]
    for name in ("PRUNING_ARTIFACT_STORE", "PRUNING_S3_ENDPOINT", "PRUNING_S3_BUCKET", "PRUNING_S3_PREFIX"):
        assert server["environment"][name] == worker["environment"][name]
    assert server["environment"]["PRUNING_ARTIFACT_STORE"] == "s3"
    endpoint = re.match(r"https?://([^:/]+):(\d+)", server["environment"]["PRUNING_S3_ENDPOINT"])
    assert endpoint.group(1) in compose["services"]
    assert any(p.endswith(f":{endpoint.group(2)}") for p in compose["services"][endpoint.group(1)]["ports"])
    for service in (server, worker):
        assert service["depends_on"]["s3-bucket"]["condition"] == "service_completed_successfully"
    bucket = server["environment"]["PRUNING_S3_BUCKET"]
    assert f"/buckets/{bucket}/" in " ".join(compose["services"]["s3-bucket"]["entrypoint"])


def test_commands_match_the_code(compose):
    scripts = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())["project"]["scripts"]
    server_cmd = compose["services"]["server"]["command"]
    assert server_cmd[0] in scripts
    assert server_cmd[server_cmd.index("--listen") + 1].endswith(":50051")
    assert "50051:50051" in compose["services"]["server"]["ports"]

    worker_cmd = compose["services"]["worker"]["command"]
    module = worker_cmd[worker_cmd.index("-A") + 1]
    assert hasattr(importlib.import_module(module), "app")
    # The worker consumes its app's default queue, PRUNING_QUEUE from its environment (a -Q here
    # would have to change with it)
    assert "-Q" not in worker_cmd and "PRUNING_QUEUE" in compose["services"]["worker"]["environment"]
    assert "--pool=solo" in worker_cmd  # TensorFlow is never initialised before a fork

    flower = " ".join(compose["services"]["flower"]["command"])
    assert f"--broker={compose['services']['worker']['environment']['PRUNING_REDIS_URL']}" in flower


def test_dockerfile_targets_exist(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    for name in ("server", "worker"):
        assert compose["services"][name]["build"]["target"] in stages
    cmd = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert [json.loads(c)[0] for c in cmd] == ["pruning-server", "celery"]


def test_a_stopping_worker_has_time_to_finish_its_job(compose):
    """Docker's default 10 s would kill a worker mid-job; the Helm chart gives 300 s too. The
    worker's drain time ends before the grace does, so a job not done by then is re-queued by
    its worker rather than killed with it."""
    worker = compose["services"]["worker"]
    assert worker["stop_grace_period"] == "5m"
    assert 0 < float(worker["environment"]["PRUNING_WORKER_DRAIN_S"]) <= 300 - 30


def test_both_images_run_as_an_unprivileged_user_owning_the_state_directory(compose):
    """A model or a dataset is untrusted input: the server and the worker ran as root."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)
    for target in ("server", "worker"):
        (stage,) = [s for s in stages if re.match(rf"\S+ AS {target}$", s.splitlines()[0])]
        users = re.findall(r"^USER (\S+)$", stage, re.M)
        assert users and users[-1] not in ("root", "0", "0:0"), target
        assert stage.index(f"USER {users[-1]}") > max(m.start() for m in re.finditer(r"^RUN ", stage, re.M))
    uid = users[-1].split(":")[0]
    assert re.search(rf"useradd [^\n]*--uid {uid}\b", dockerfile)
    # the state directory (and the worker's cache volume in it) belongs to that user
    state = compose["x-pruning-env"]["PRUNING_STATE_DIR"]
    assert re.search(rf"mkdir -p {re.escape(state)}/cache && chown -R {uid}:{uid} {re.escape(state)}", dockerfile)
    assert any(v.startswith("worker-cache:" + state) for v in compose["services"]["worker"]["volumes"])
