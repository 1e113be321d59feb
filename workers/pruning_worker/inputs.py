"""A job's inputs: the model file and the dataset arrays, checked against each other."""

from __future__ import annotations

import pathlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pruning.v1 import pruning_pb2 as pb
from pruning_core import modelcheck, plan, validation
from pruning_core.settings import Settings

from . import datasets
from .cache import InputCache
from .errors import JobInputError

Data = Any  # an array, or a dict of arrays by input (output) name
Arrays = tuple[Data, Data, Data, Data]


@dataclass
class Inputs:
    model_path: pathlib.Path
    data: Arrays
    max_decompressed: int
    seconds: float = 0.0  # what resolving took (a dataset cached in this process costs nothing)
    cache: InputCache | None = None  # holds the files the job reads from the host's cache

    @classmethod
    def resolve(cls, spec: pb.JobSpec, tenant: str, store: Any, settings: Settings) -> Inputs:
        started = time.monotonic()
        inputs = InputCache.for_settings(settings)  # fetched from the store once per host
        try:
            _recorded(store, tenant, spec.model_id, "model")
            model_path = inputs.path(spec.model_id)
            loaded = datasets.loaded(settings.dataset_cache_bytes)  # a second job on the data reads nothing
            if spec.dataset.WhichOneof("source") == "artifact_id":
                data_id = spec.dataset.artifact_id
                _recorded(store, tenant, data_id, "dataset")
                data = loaded.get(
                    f"npz:{data_id}", lambda: datasets.load_npz(inputs.path(data_id, keep=(spec.model_id,)))
                )
            else:
                name = spec.dataset.builtin
                data = loaded.get(f"builtin:{name}", lambda: datasets.load_builtin(name, settings.data_path))
        except BaseException:
            inputs.release()
            raise
        return cls(model_path, data, settings.max_decompressed_bytes, time.monotonic() - started, inputs)

    def release(self) -> None:
        """Lets go of the host's cached files the job held (eviction may take them again)."""
        if self.cache is not None:
            self.cache.release()


def as_tensors(data: Data) -> Data:
    """``data`` with its NumPy arrays made tensors, as Keras makes them (floating arrays in
    ``floatx``): once for the job, where each ``fit``, ``predict`` and ``evaluate`` handed an
    array converted it again, with two copies each time (TensorFlow copies the array, then
    the unaligned copy into the tensor). A tensor's validation split slices it in place. In
    host memory, as Keras keeps an array: batches go to a GPU as they are trained on."""
    import tensorflow as tf
    import tf_keras as keras

    def convert(x: Any) -> Any:
        if not isinstance(x, np.ndarray):
            return x
        with tf.device("/CPU:0"):
            return tf.convert_to_tensor(
                x, dtype=keras.backend.floatx() if np.issubdtype(x.dtype, np.floating) else None
            )

    if isinstance(data, dict):
        return {k: convert(v) for k, v in data.items()}
    return [convert(v) for v in data] if isinstance(data, list) else convert(data)


def length(data: Data) -> int:
    """The number of samples of an array or a dict of arrays."""
    return len(next(iter(data.values())) if isinstance(data, dict) else data)


def rows(data: Data, start: int, stop: int) -> Data:
    """Samples ``start`` to ``stop`` (of each array, for a dict by name or a list by output)."""
    if isinstance(data, list):
        return [v[start:stop] for v in data]
    return {k: v[start:stop] for k, v in data.items()} if isinstance(data, dict) else data[start:stop]


def head(data: Data, n: int) -> Data:
    """The first ``n`` samples (of each array, for a dict by name or a list by output)."""
    return rows(data, 0, n)


def output_keys(model: Any) -> list[str] | None:
    """The keys of a model whose outputs are a dict (``Model(x, {"cls": ..., "aux": ...})``),
    else None."""
    nested = getattr(model, "_nested_outputs", None)
    return sorted(nested) if isinstance(nested, dict) else None


def by_output(model: Any, y: Data) -> Data:
    """Targets of a model of several outputs: for dict outputs a dict by the same keys (pruning
    leaves them as they are); otherwise a list in the order of its outputs (pruning wraps, and
    so renames, the output layers that Keras would match a dict against)."""
    keys = output_keys(model)
    names = keys if keys is not None else list(model.output_names)
    if not isinstance(y, dict):
        if len(names) > 1:
            raise JobInputError(
                f"dataset: the model has {len(names)} outputs {sorted(names)}; store one array per output, "
                "named y_train.<output name> and y_test.<output name>"
            )
        return {names[0]: y} if keys is not None else y
    if sorted(y) != sorted(names):
        raise JobInputError(f"dataset: y arrays for outputs {sorted(y)}; the model's outputs are {sorted(names)}")
    return {name: y[name] for name in names} if keys is not None else [y[name] for name in names]


def _input_names(model: Any) -> list[str]:
    """The model's input names, in the order of its inputs."""
    return list(getattr(model, "input_names", None) or [t.name.split(":")[0] for t in model.inputs])


def _check_inputs(model: Any, name: str, x: Data) -> None:
    if isinstance(x, dict):
        wanted = {t.name.split(":")[0] for t in model.inputs} | set(getattr(model, "input_names", []))
        unknown = sorted(set(x) - wanted)
        missing = sorted(set(getattr(model, "input_names", [])) - set(x))
        if unknown or missing:
            raise JobInputError(
                f"dataset: {name} has arrays for inputs {sorted(x)}; the model's inputs are "
                f"{sorted(getattr(model, 'input_names', wanted))}"
            )
        return
    if len(model.inputs) > 1:
        names = sorted(_input_names(model))
        raise JobInputError(
            f"dataset: the model has {len(names)} inputs {names}; store one array per input, named {name}.<input name>"
        )
    expected = list(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if not modelcheck.shapes_fit(expected, list(x.shape[1:])):
        raise JobInputError(f"dataset: {name} samples have shape {list(x.shape[1:])}, the model expects {expected}")


def _embeddings_fed(input_tensor: Any) -> list[Any]:
    """The Embedding layers an input feeds directly (through nested models' own inputs too)."""
    found = []
    source = input_tensor._keras_history.layer
    for node in getattr(source, "_outbound_nodes", []):
        consumer = node.outbound_layer
        if type(consumer).__name__ == "Embedding":
            found.append(consumer)
        elif hasattr(consumer, "inputs") and hasattr(consumer, "layers") and consumer.inputs:
            # only the nested model's own inputs that this one feeds (not every input it has)
            given = list(node.keras_inputs)
            if len(given) != len(consumer.inputs):
                continue  # not matched one to one: left unchecked rather than refuse good data
            fed = [inner for inner, t in zip(consumer.inputs, given) if t._keras_history.layer is source]
            found += [layer for inner in fed for layer in _embeddings_fed(inner)]
    return found


def _check_token_ids(model: Any, name: str, x: Data) -> None:
    """Ids an Embedding has no row for: on a CPU every step fails on them, but on a GPU the
    lookup gives zeros and the job trains and reports on data the model cannot take, so they
    are refused before any step on every device."""
    for key, tensor in zip(_input_names(model), model.inputs, strict=False):
        layers = _embeddings_fed(tensor)
        a = x.get(key) if isinstance(x, dict) else x if len(model.inputs) == 1 else None
        if not layers or a is None or not a.size or not np.issubdtype(a.dtype, np.number):
            continue
        smallest = min(layers, key=lambda layer: layer.input_dim)
        low, high = a.min(), a.max()
        if low < 0 or high >= smallest.input_dim:
            flat = a.reshape(len(a), -1)
            first = int(np.argmax(((flat < 0) | (flat >= smallest.input_dim)).any(axis=1)))
            label = f"{name}.{key}" if isinstance(x, dict) else name
            raise JobInputError(
                f"dataset: {label} holds ids in [{low:g}, {high:g}] (the first outside in sample {first}), but "
                f"Embedding {smallest.name!r} has input_dim {smallest.input_dim}: ids must be in "
                f"[0, {smallest.input_dim - 1}]"
            )


def _output_tensors(model: Any) -> list[tuple[str, Any]]:
    """(the name its loss goes by, tensor) of each output."""
    keys = output_keys(model)
    if keys is not None:
        return [(key, model._nested_outputs[key]) for key in keys]
    return list(zip(model.output_names, model.outputs, strict=True))


def output_activations(model: Any) -> dict[str, str]:
    """The last activation of each output (by the names their losses go by) where its layer
    says: "softmax", "sigmoid", "linear" (logits), ... A loss ``*_from_logits`` on
    probabilities, or one taking probabilities on logits, trains badly and fails nothing
    (see :func:`pruning_core.validation.logits_warning`)."""
    out = {}
    for name, tensor in _output_tensors(model):
        layer = getattr(getattr(tensor, "_keras_history", None), "layer", None)
        if layer is None:
            continue
        if type(layer).__name__ == "Softmax":
            out[name] = "softmax"
        elif activation := getattr(getattr(layer, "activation", None), "__name__", ""):
            out[name] = activation
    return out


def output_units(model: Any) -> dict[str, int | None]:
    """The last dimension of each output (by the names their losses go by), where known."""
    out: dict[str, int | None] = {}
    for name, tensor in _output_tensors(model):
        last = tensor.shape[-1] if tensor.shape.rank else None
        out[name] = int(last) if last is not None else None
    return out


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_finite(name: str, data: Data) -> None:
    parts = data.items() if isinstance(data, dict) else [("", data)]
    for part, a in parts:
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
            first = int(np.argmax(~np.isfinite(bad).all(axis=1)))
            count = int(np.count_nonzero(~np.isfinite(a)))
            label = f"{name}.{part}" if part else name
            raise JobInputError(f"dataset: {label} holds {count} NaN or infinite values (the first in sample {first})")
        # finite in float64, infinite once Keras casts it to the model's float32
        wide = np.issubdtype(a.dtype, np.floating) and a.dtype.itemsize > 4 and a.size
        if wide and max(float(a.max()), -float(a.min())) > _FLOAT32_MAX:
            over = np.abs(a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)) > _FLOAT32_MAX
            label = f"{name}.{part}" if part else name
            raise JobInputError(
                f"dataset: {label} holds {int(over.sum())} values beyond float32's range (+-3.4e38, the first in "
                f"sample {int(np.argmax(over.any(axis=1)))}), which become infinite in the model"
            )


def check_split(n_train: int, validation_split: float) -> None:
    """Refuses a validation split that leaves no sample to train on or none to validate on (as
    CreateJob does from the upload's headers)."""
    problem = plan.split_problem(n_train, validation_split)
    if problem:
        raise JobInputError(f"spec.training.validation_split: {problem}")


def _check_class_indices(output_shape: Any, name: str, y: Any) -> None:
    """Labels of a sparse categorical loss: whole class indices, one per output position."""
    position = list(output_shape[1:-1])
    sample = list(y.shape[1:])
    if not (modelcheck.shapes_fit(position, sample) or modelcheck.shapes_fit([*position, 1], sample)):
        raise JobInputError(
            f"dataset: {name} samples have shape {sample}, but a sparse categorical loss takes one class index "
            f"per output position (shape {position} or {[*position, 1]}); one-hot labels take the loss "
            "categorical_crossentropy (categorical_crossentropy_from_logits for an output of logits)"
        )
    if np.issubdtype(y.dtype, np.floating) and y.size:
        flat = y.reshape(len(y), -1)
        bad = flat != np.floor(flat)
        if bad.any():
            first = int(np.argmax(bad.any(axis=1)))
            value = flat[first][bad[first]][0]
            raise JobInputError(
                f"dataset: {name} holds {value:g} (sample {first}), but a sparse categorical loss takes whole "
                "class indices"
            )


def _label_pairs(model: Any, y_train: Any, y_test: Any) -> list[tuple[str, str, Any, str, Any]]:
    """(output, array name, labels, what they are for, the output's shape) of each output's labels."""
    keys = output_keys(model)
    if keys is not None:  # labels go by the dict's keys, which need not be the layers' names
        outputs = {key: tuple(model._nested_outputs[key].shape) for key in keys}
    else:
        outputs = {name: tuple(t.shape) for name, t in zip(model.output_names, model.outputs, strict=True)}
    if not isinstance(y_train, dict):
        if len(outputs) != 1:
            return []
        ((output, shape),) = outputs.items()
        return [(output, name, y, "the model has", shape) for name, y in (("y_train", y_train), ("y_test", y_test))]
    return [
        (output, f"{split}.{output}", labels[output], f"output {output!r} has", shape)
        for output, shape in outputs.items()
        for split, labels in (("y_train", y_train), ("y_test", y_test))
        if isinstance(labels, dict) and output in labels
    ]


def check(model: Any, data: Arrays, t: pb.TrainingSpec) -> None:
    """Refuses data the model cannot take before any step runs: sample shapes, NaN or infinite
    values, empty splits, ids past an Embedding's rows, and, for the outputs of a sparse categorical loss, labels that are not
    whole class indices of the output's units."""
    x_train, y_train, x_test, y_test = data
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        _check_inputs(model, name, x)
    for name, arrays in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        _check_finite(name, arrays)
    if length(x_train) == 0 or length(x_test) == 0:
        raise JobInputError("dataset: x_train and x_test must not be empty")
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        _check_token_ids(model, name, x)
    for output, name, y, owner, shape in _label_pairs(model, y_train, y_test):
        loss = validation.output_loss(t, output)
        units = shape[-1] if shape and shape[-1] else 0
        integers = np.issubdtype(getattr(y, "dtype", np.float32), np.integer)
        if problem := plan.unit_labels_problem(loss, name, list(y.shape[1:]), units, bool(integers)):
            raise JobInputError(f"dataset: {problem}")
        if loss not in plan.SPARSE_LOSSES:
            continue
        _check_class_indices(shape, name, y)
        if units and y.size and np.issubdtype(y.dtype, np.number) and (y.min() < 0 or y.max() >= units):
            raise JobInputError(
                f"dataset: {name} holds labels in [{y.min():g}, {y.max():g}], "
                f"but {owner} {units} output units (labels must be in [0, {units - 1}])"
            )


def _recorded(store: Any, tenant: str, artifact_id: str, what: str) -> None:
    """The tenant still holds a record of the artifact (one deleted since the job was created
    is not used, even while its bytes remain)."""
    try:
        store.get_artifact(tenant, artifact_id)
    except KeyError:
        raise JobInputError(f"{what}: no artifact {artifact_id}") from None
