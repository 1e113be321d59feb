"""Helpers and fixtures of the hostile tests (imported by each module: a second conftest.py
would shadow the root one), built without TensorFlow so the tests stay light.

A model here is a .keras archive holding only a configuration (the server reads no weights
to accept one); a dataset is a small .npz of float inputs and integer labels.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import ServerThread, settings_for

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
SAMPLE = 8
CLASSES = 4


def violated_fields(error: grpc.RpcError) -> list[str]:
    """The fields an error answer's BadRequest details name, in order."""
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


def model_config(units: int = CLASSES) -> dict:
    return {
        "class_name": "Sequential",
        "config": {
            "name": "tiny",
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_input_shape": [None, SAMPLE], "name": "input"}},
                {"class_name": "Dense", "config": {"name": "hidden", "units": 16, "activation": "relu"}},
                {"class_name": "Dense", "config": {"name": "out", "units": units}},
            ],
        },
    }


def keras_bytes(config: dict | None = None, version: str = "2.15.0") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", json.dumps(config or model_config()))
        z.writestr("metadata.json", json.dumps({"keras_version": version}))
        z.writestr("model.weights.h5", empty_h5())
    return out.getvalue()


def empty_h5() -> bytes:
    """A valid HDF5 file holding nothing: the weights member a .keras must have (these
    tests' models are read, not loaded)."""
    import h5py

    out = io.BytesIO()
    with h5py.File(out, "w"):
        pass
    return out.getvalue()


def npz_bytes(n_train: int = 64, n_test: int = 16, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    np.savez(
        out,
        x_train=rng.random((n_train, SAMPLE), dtype=np.float32),
        y_train=rng.integers(0, CLASSES, n_train),
        x_test=rng.random((n_test, SAMPLE), dtype=np.float32),
        y_test=rng.integers(0, CLASSES, n_test),
    )
    return out.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("tiny")
    (d / "tiny.keras").write_bytes(keras_bytes())
    (d / "tiny.npz").write_bytes(npz_bytes())
    return {"keras": d / "tiny.keras", "data": d / "tiny.npz"}


def hostile_server(env: dict, name: str, **overrides) -> ServerThread:
    """A server of its own, on a queue no worker reads (jobs stay QUEUED), with two tenants."""
    values = {"api_keys": ",".join(f"{k}={t}" for k, t in KEYS.items()), "queue": f"{env['PRUNING_QUEUE']}-{name}"}
    values.update(overrides)
    return ServerThread(settings_for(env, **values))


class ServerProcess:
    """The server in a process of its own (its memory measured alone, its death seen), with
    the two tenants, on a queue no worker reads."""

    def __init__(self, env: dict, state: pathlib.Path, name: str, **overrides: str):
        self.state, self.log = state, state / "server.log"
        port_file = state / "port"
        port_file.unlink(missing_ok=True)  # a killed server's
        server_env = {
            **os.environ,
            **env,
            "PRUNING_API_KEYS": ",".join(f"{k}={t}" for k, t in KEYS.items()),
            "PRUNING_QUEUE": f"{env['PRUNING_QUEUE']}-{name}",
            **overrides,
        }
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pruning_server", "--listen", "127.0.0.1:0", "--port-file", str(port_file)],
                env=server_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start:\n" + self.log.read_text()[-3000:])
            time.sleep(0.1)
        self.target = f"127.0.0.1:{port_file.read_text().strip()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
