"""What a model file declares is bounded before it is allocated: weights datasets that expand
(gzip-compressed, or never written: a fill value) past PRUNING_MAX_DECOMPRESSED_BYTES are
refused at upload and by the worker, and a configuration whose layers are larger than its
weights file (twice, as Keras 3 builds a Bidirectional's layer twice) is refused by the worker
before Keras creates their variables.

The worker's loads run in a child process whose data segment is capped (RLIMIT_DATA): without
the bounds the child fails on a 40 GB allocation instead of taking the machine's memory."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from pruning_core import modelcheck
from pruning_core.modelcheck import ModelRejected

GiB = 1 << 30
LIMIT = 4 * GiB  # PRUNING_MAX_DECOMPRESSED_BYTES' default
N = 100_000  # a Dense(N) over N inputs: a 40 GB kernel
BOMB = 2 * N * N * 4 + 2 * 4 * 4  # what the weights declare once their two 4x4 kernels are N x N
CHILD_DATA = 3 * GiB  # the loading child's RLIMIT_DATA: TensorFlow and a small model fit in it
FILES = [(2, ".h5"), (2, ".keras"), (3, ".h5"), (3, ".keras")]  # (Keras version, format)


def _small(path: pathlib.Path, version: int) -> pathlib.Path:
    """Input(4) -> Dense(4, "d") -> Dense(4, "o"), saved by tf_keras (2) or Keras 3."""
    if version == 2:
        import tf_keras as k
    else:
        import keras as k
    model = k.Sequential([k.Input((4,)), k.layers.Dense(4, name="d"), k.layers.Dense(4, name="o")])
    if version == 2 and path.suffix == ".h5":
        k.models.save_model(model, path, save_format="h5")
    else:
        model.save(path)
    return path


def _widen(node, n: int):
    """The configuration with n inputs and a Dense "d" of n units (shapes [None, 4] become [None, n])."""
    if isinstance(node, dict):
        if isinstance(node.get("config"), dict) and node["config"].get("name") == "d":
            node["config"]["units"] = n
        return {k: [None, n] if v == [None, 4] else _widen(v, n) for k, v in node.items()}
    return [_widen(v, n) for v in node] if isinstance(node, list) else node


def _expand_kernels(f, n: int) -> None:
    """Every 4x4 kernel of an open weights file becomes n x n, gzip-compressed and never
    written: a few bytes on disk."""
    kernels: list[str] = []
    f.visititems(lambda name, obj: kernels.append(name) if getattr(obj, "shape", None) == (4, 4) else None)
    for name in kernels:
        del f[name]
        f.create_dataset(name, shape=(n, n), dtype="float32", chunks=True, compression="gzip", fillvalue=0.0)


def hostile(path: pathlib.Path, version: int, config_n: int = 4, kernels_n: int = 4) -> pathlib.Path:
    """A small model whose configuration declares ``config_n`` inputs and units and whose weights
    file declares ``kernels_n`` x ``kernels_n`` kernels."""
    import h5py

    _small(path, version)
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as f:
            f.attrs["model_config"] = json.dumps(_widen(json.loads(f.attrs["model_config"]), config_n))
            if kernels_n != 4:
                _expand_kernels(f["model_weights"], kernels_n)
        return path
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["config.json"] = json.dumps(_widen(json.loads(members["config.json"]), config_n)).encode()
    if kernels_n != 4:
        weights = io.BytesIO(members["model.weights.h5"])
        with h5py.File(weights, "r+") as f:
            _expand_kernels(f, kernels_n)
        members["model.weights.h5"] = weights.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


# --- at upload ----------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "suffix"), FILES)
def test_weights_that_expand_past_the_limit_are_refused_at_upload(tmp_path, version, suffix):
    path = hostile(tmp_path / f"bomb{suffix}", version, kernels_n=N)
    assert path.stat().st_size < 100_000  # 80 GB of kernels declared
    with pytest.raises(ModelRejected, match=rf"declare {BOMB} bytes .* over the limit of {LIMIT} bytes"):
        modelcheck.inspect_model(path, LIMIT)


def test_the_declared_size_is_held_to_the_configured_limit(tmp_path):
    """20000 x 20000 float32 kernels (2 of them, 3.2 GB) pass the default limit, not a 1 GiB one."""
    path = hostile(tmp_path / "bomb.h5", 2, kernels_n=20_000)
    assert modelcheck.inspect_model(path, LIMIT).weight_bytes == 2 * 20_000 * 20_000 * 4 + 2 * 4 * 4
    with pytest.raises(ModelRejected, match=f"over the limit of {GiB} bytes"):
        modelcheck.inspect_model(path, GiB)


@pytest.mark.parametrize(("version", "suffix"), FILES)
def test_an_ordinary_model_declares_what_its_weights_take(tmp_path, version, suffix):
    path = hostile(tmp_path / f"m{suffix}", version)
    assert modelcheck.inspect_model(path, LIMIT).weight_bytes == 2 * (4 * 4 + 4) * 4


# --- on the worker --------------------------------------------------------------------------

_LOAD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_DATA, (int(sys.argv[2]), int(sys.argv[2])))  # before TensorFlow
import json, os, pathlib
from pruning_worker import safe_load
from pruning_worker.errors import JobInputError
out = {}
for i, path in enumerate(json.loads(sys.argv[1])):
    work = pathlib.Path(sys.argv[3]) / str(i)
    work.mkdir()
    try:
        loaded = safe_load.load(path, work, int(sys.argv[4]))
        outcome = "loaded " + str([w.shape.as_list() for w in loaded.model.weights])
    except JobInputError as exc:
        outcome = "refused: " + str(exc)
    # the peak so far: no load up to this one went past it
    out[path] = {"outcome": outcome, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
print(json.dumps(out), flush=True)
os._exit(0)  # no interpreter teardown (gRPC's poller thread has aborted it)
"""

CONFIG_BOMBS = FILES
WEIGHT_BOMBS = [(2, ".h5"), (3, ".keras")]


@pytest.fixture(scope="module")
def loads(tmp_path_factory) -> dict[str, dict]:
    """safe_load.load of every file of the tests below, in one child process capped at
    CHILD_DATA (one TensorFlow import for them all): what each said, the peak RSS so far."""
    root = tmp_path_factory.mktemp("loads")
    paths = [str(hostile(root / f"config-{v}{s}", v, config_n=N)) for v, s in CONFIG_BOMBS]
    paths += [str(hostile(root / f"weights-{v}{s}", v, kernels_n=N)) for v, s in WEIGHT_BOMBS]
    paths += [str(hostile(root / f"ordinary-{v}{s}", v)) for v, s in FILES]
    (root / "work").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-c", _LOAD, json.dumps(paths), str(CHILD_DATA), str(root / "work"), str(LIMIT)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"the loads failed otherwise (rc {done.returncode}): {done.stderr[-3000:]}"
    return {pathlib.Path(path).name: result for path, result in json.loads(lines[-1]).items()}


@pytest.mark.parametrize(("version", "suffix"), CONFIG_BOMBS)
def test_a_configuration_larger_than_its_weights_is_refused_before_allocation(loads, tmp_path, version, suffix):
    """Dense(100000) over 100000 inputs (40 GB) with 4x4 weights: Keras would create the 40 GB
    kernel from its initializer before it read, and shape-checked, the weights."""
    modelcheck.inspect_model(hostile(tmp_path / f"bomb{suffix}", version, config_n=N), LIMIT)  # taken at upload
    result = loads[f"config-{version}{suffix}"]
    assert result["outcome"].startswith("refused: model: its configuration makes variables of")
    assert f"of shape [{N}, {N}]), but its weights file declares 160:" in result["outcome"]
    assert result["peak"] < 2 * GiB


@pytest.mark.parametrize(("version", "suffix"), WEIGHT_BOMBS)
def test_the_worker_refuses_weights_that_expand_past_the_limit(loads, version, suffix):
    result = loads[f"weights-{version}{suffix}"]
    assert result["outcome"].startswith(f"refused: model: the weights' datasets declare {BOMB} bytes")
    assert result["peak"] < 2 * GiB


@pytest.mark.parametrize(("version", "suffix"), FILES)
def test_an_ordinary_model_loads_within_its_declared_size(loads, version, suffix):
    assert loads[f"ordinary-{version}{suffix}"]["outcome"] == "loaded [[4, 4], [4], [4, 4], [4]]"


def test_keras3_builds_a_bidirectional_layer_twice_within_the_budget(tmp_path, monkeypatch):
    """Keras 3 builds the layer a Bidirectional wraps, then a copy of it: the variables a load
    creates reach 1.5 times the layer's. Within the budget without the slack."""
    import keras3_models

    from pruning_worker import bridge, safe_load

    monkeypatch.setattr(safe_load, "VARIABLE_SLACK", 0)
    path = keras3_models.rnn(tmp_path / "rnn.keras")
    budget = safe_load.VariableBudget(modelcheck.inspect_model(path, LIMIT).weight_bytes)
    model = bridge.load_keras3(path, tmp_path, LIMIT, budget)
    assert budget.declared < budget.created <= 2 * budget.declared
    assert sum(w.numpy().nbytes for w in model.weights) == budget.declared


def _hidden_weights(path: pathlib.Path, version: int, how: str, n: int) -> pathlib.Path:
    """A small .h5 model whose layer "d" names, in its weight_names, an n x n dataset (gzip,
    never written) that _h5_shapes does not count: outside model_weights (an absolute name, a
    soft link), or inside it once but named 40 times."""
    import h5py

    _small(path, version)
    with h5py.File(path, "r+") as f:
        g = f["model_weights/d"]
        big = dict(shape=(n, n), dtype="float32", chunks=True, compression="gzip", fillvalue=0.0)
        if how == "absolute":
            f.create_dataset("hidden", **big)
            g.attrs["weight_names"] = ["/hidden", "d/bias:0"]
        elif how == "soft_link":
            f.create_dataset("hidden", **big)
            g["d/big"] = h5py.SoftLink("/hidden")
            g.attrs["weight_names"] = ["d/big", "d/bias:0"]
        else:
            g.create_dataset("d/big", **big)
            g.attrs["weight_names"] = ["d/big"] * 40
    return path


@pytest.mark.parametrize("how", ["absolute", "soft_link", "named_again"])
@pytest.mark.parametrize("version", [2, 3])
def test_weights_an_h5_names_outside_model_weights_or_again_are_counted(tmp_path, version, how):
    """tf_keras reads ``np.asarray(layer_group[name])`` for every name of a layer's weight_names
    before it compares a shape or a count: an absolute name or a soft link reaches a dataset
    outside model_weights (80 GB declared in a few bytes of file), a name repeated reads one
    dataset again and again (40 x 1.6 GB). Counting model_weights' datasets once each let both
    through the upload and the worker."""
    n = N if how != "named_again" else 20_000
    path = _hidden_weights(tmp_path / "m.h5", version, how, n)
    assert path.stat().st_size < 100_000
    with pytest.raises(ModelRejected, match=f"over the limit of {LIMIT} bytes"):
        modelcheck.inspect_model(path, LIMIT)


def test_an_h5_model_saved_with_its_optimizer_declares_its_weights(tmp_path):
    """weight_names naming the layer's own datasets count them once each: unchanged."""
    import tf_keras as k

    model = k.Sequential([k.Input((4,)), k.layers.Dense(4, name="d"), k.layers.Dense(4, name="o")])
    model.compile("adam", "mse")
    model.fit(np.zeros((2, 4)), np.zeros((2, 4)), verbose=0)
    path = tmp_path / "m.h5"
    k.models.save_model(model, path, save_format="h5", include_optimizer=True)
    assert modelcheck.inspect_model(path, LIMIT).weight_bytes == 2 * (4 * 4 + 4) * 4
