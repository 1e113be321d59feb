"""Health and reflection beside the pruning service; the worker app imports no TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

pytestmark = pytest.mark.integration


def test_reflection_lists_the_services(client):
    stub = reflection_pb2_grpc.ServerReflectionStub(client._channel)
    (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in reply.list_services_response.service}
    assert {"pruning.v1.PruningService", "grpc.health.v1.Health"} <= names


def test_celery_app_imports_no_tensorflow_before_a_fork():
    """The worker's parent process loads the app and tasks without TensorFlow; TF comes in
    the process that runs the tasks (solo pool) or in each child after the fork."""
    probe = (
        "import sys, json, pruning_worker.app, pruning_worker.tasks, pruning_worker.runner;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_solo_worker_runs_one_job_at_a_time_and_warms_tensorflow_once():
    """The solo pool sends both worker_process_init and worker_ready in one process: the
    device is found (and logged) once; the default concurrency is one job per process."""
    probe = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from celery.signals import worker_process_init, worker_ready;"
        "from celery.concurrency.solo import TaskPool;"
        "from pruning_worker.app import app; print('concurrency', app.conf.worker_concurrency);"
        "worker_process_init.send(sender=None);"
        "Worker = type('Worker', (), {'pool': TaskPool.__new__(TaskPool)});"
        "worker_ready.send(sender=Worker())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert "concurrency 1" in out.stdout
    assert out.stderr.count("TensorFlow ready: ") == 1, out.stderr[-2000:]
