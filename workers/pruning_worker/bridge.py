"""Translates Keras 3 models into tf_keras (Keras 2) models for TFMOT, and back.

TFMOT prunes tf_keras models only, and a Keras 3 ``.keras`` file does not load in tf_keras
(its configuration format differs). No maintained tool bridges the two, so this module does,
for a fixed list of built-in layers (:data:`SUPPORTED`) and nothing else:

* :func:`to_tf_keras` rebuilds the Keras 3 graph (Sequential, Functional, several inputs
  and outputs, shared layers, nested models) out of tf_keras layers made from translated
  configurations, then copies the weights variable by variable, paired by name and checked
  by shape and dtype. Layer names stay identical.
* :func:`compare` (and :func:`check_equivalence`) compares the two models' outputs on a probe batch.
* :func:`to_keras3` copies the (pruned, stripped) tf_keras weights back into a clone of the
  original Keras 3 model, so the result saves as a plain Keras 3 file.

A layer, option or serialised object the bridge does not know is refused with
:class:`UnsupportedLayer`, naming the layer and its class; nothing is guessed. A Keras 3
option without a tf_keras counterpart is dropped only while it holds its default value.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import pathlib
import re
import threading
import zipfile
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import h5py
import keras  # Keras 3
import numpy as np
import tensorflow as tf
import tf_keras
from keras.src.models.functional import Functional as _Functional3

from pruning_core import preflight

from .errors import JobInputError

if TYPE_CHECKING:
    from .safe_load import VariableBudget

__all__ = [
    "SUPPORTED",
    "SUPPORTED_LAYERS",
    "BridgeError",
    "UnsupportedLayer",
    "check_equivalence",
    "compare",
    "keras_version_of",
    "load_keras3",
    "make_probe",
    "relative_difference",
    "to_keras3",
    "to_tf_keras",
]

# The Keras 3 classes the bridge translates (layers, and the two model classes a nested model
# may have): pruning_core's list, which the server checks uploads against without TensorFlow.
SUPPORTED: frozenset[str] = preflight.KERAS3_CONVERTIBLE - {"Model"}
SUPPORTED_LAYERS: tuple[str, ...] = tuple(sorted(SUPPORTED))

_MODELS = frozenset({"Sequential", "Functional"})
_RNNS = frozenset({"LSTM", "GRU", "SimpleRNN"})
_ACTIVATIONS = preflight.KERAS3_ACTIVATIONS
_OBJECTS = {
    "initializers": frozenset({
        "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
        "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "LecunUniform", "LecunNormal",
        "Orthogonal", "Identity",
    }),
    "regularizers": frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer"}),
    "constraints": frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"}),
}  # fmt: skip
_FLOAT_POLICIES = frozenset({"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"})
# Keyword arguments tf_keras' base Layer takes (through **kwargs) besides those in signatures.
_TF_KERAS_BASE_KWARGS = frozenset({
    "name", "trainable", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape", "batch_size",
    "weights", "activity_regularizer", "autocast",
})  # fmt: skip
# tf_keras options taken from **kwargs by the class itself, out of sight of its signature.
_TF_KERAS_EXTRA = {name: frozenset({"zero_output_for_mask"}) for name in _RNNS}
_RENAMED = {"LeakyReLU": {"negative_slope": "alpha"}}
# Keras 3 options that only steer training randomness: tf_keras RNNs and attention take no seed.
_TRAINING_ONLY = {name: frozenset({"seed"}) for name in (*_RNNS, "MultiHeadAttention")}
# tf_keras options its from_config requires and Keras 3 does not write: the shapes the
# attention's sub-layers were built for (None: built on the first call, as the bridge makes it).
_TF_KERAS_REQUIRED = {"MultiHeadAttention": {"query_shape": None, "key_shape": None, "value_shape": None}}
# A layer's sub-layers whose variables share names: paired sub-layer by sub-layer.
_SUBLAYERS = {"MultiHeadAttention": ("_query_dense", "_key_dense", "_value_dense", "_output_dense")}
# Keras 3 options read from **kwargs, out of sight of the signature, with their defaults.
_KERAS3_HIDDEN_DEFAULTS = {"LayerNormalization": {"rms_scaling": False}}
# Variables tf_keras has and Keras 3 has not (they matter only while adapting).
_TF_KERAS_ONLY_VARIABLES = {"Normalization": frozenset({"count"})}
# Keras 3 variable names -> tf_keras ones, where they differ.
_VARIABLE_NAMES = {name: {"kernel": "depthwise_kernel"} for name in ("DepthwiseConv1D", "DepthwiseConv2D")}
_PROBE_INT_HIGH = 10
MAX_METADATA_BYTES = 1 << 16


Refuse = Callable[[str], NoReturn]


class BridgeError(ValueError):
    """The model cannot be translated between Keras 3 and tf_keras."""


class UnsupportedLayer(BridgeError):
    """A layer (or an option or object in its configuration) the bridge does not translate."""

    def __init__(self, layer: str, class_name: str, reason: str = "is not supported by the Keras 3 bridge"):
        super().__init__(f"layer {layer!r} of class {class_name}: {reason}")
        self.layer = layer
        self.class_name = class_name


# --- file version and loading -------------------------------------------------------------


def keras_version_of(path: os.PathLike | str, limit: int = MAX_METADATA_BYTES) -> int:
    """The major Keras version (2 or 3) that wrote a ``.keras`` or ``.h5`` model file.

    Reads ``keras_version`` from the zip's ``metadata.json`` or the HDF5 root attributes,
    never more than ``limit`` bytes of either.

    Raises:
        ValueError: not a Keras model file, no version recorded, or the record is too large.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("metadata.json")
                if info.file_size > limit:
                    raise ValueError(f"metadata.json holds {info.file_size} bytes, over the limit of {limit}")
                with archive.open(info) as member:
                    raw = member.read(limit + 1)
        except KeyError:
            raise ValueError("the archive has no metadata.json") from None
        except zipfile.BadZipFile as exc:
            raise ValueError(f"the archive is corrupt: {exc}") from None
        if len(raw) > limit:
            raise ValueError(f"metadata.json is over the limit of {limit} bytes")
        try:
            version = json.loads(raw).get("keras_version")
        except (ValueError, AttributeError):
            raise ValueError("metadata.json is not a JSON object") from None
    elif head.startswith(b"\x89HDF\r\n\x1a\n"):
        try:
            with h5py.File(path, "r") as f:
                if "keras_version" not in f.attrs:
                    raise ValueError("the HDF5 file records no keras_version")
                # Fixed-length data: its size is known before reading. Both Keras versions write
                # a variable-length string, which HDF5 only reads whole; it lies within the file,
                # whose size the caller bounds, and its length is checked once read.
                size = f.attrs.get_id("keras_version").get_storage_size()
                if size > limit:
                    raise ValueError(f"the keras_version attribute holds {size} bytes, over the limit of {limit}")
                version = f.attrs["keras_version"]
        except OSError as exc:
            raise ValueError(f"the HDF5 file is unreadable: {exc}") from None
        if isinstance(version, bytes):
            version = version.decode("utf-8", "replace")
        if isinstance(version, str) and len(version) > limit:
            raise ValueError(f"the keras_version attribute is over the limit of {limit} bytes")
    else:
        raise ValueError("not a Keras model: expected a .keras (zip) or .h5 (HDF5) file")
    if not isinstance(version, str) or not version.split(".")[0].isdigit():
        raise ValueError(f"unreadable keras_version {version!r}")
    major = int(version.split(".")[0])
    if major not in (2, 3):
        raise ValueError(f"keras_version {version} is neither Keras 2 nor Keras 3")
    return major


# Keras 3 runs a variable's initializer before TensorFlow's variable creators see the variable
# (safe_load.VariableBudget counts tf_keras' there): the load in progress in a thread counts its
# variables where the shape is known and the initializer has not run yet (installed once, it
# counts nothing outside load_keras3).
_LOADING = threading.local()
_initialize_with_initializer = keras.Variable._initialize_with_initializer


def _counted_initialize(self: Any, initializer: Any) -> None:
    budget = getattr(_LOADING, "budget", None)
    if budget is not None:
        budget.count(self.path, self._shape, self._dtype)
    _initialize_with_initializer(self, initializer)


keras.Variable._initialize_with_initializer = _counted_initialize


def load_keras3(
    path: os.PathLike | str, workdir: pathlib.Path, max_decompressed: int, budget: VariableBudget | None = None
) -> Any:
    """Loads a Keras 3 ``.keras`` or ``.h5`` file uncompiled, with Keras' safe mode on.

    The server has inspected the configuration before the job started; this bounds the
    archive's expanded size again and lets Keras 3 refuse code (``safe_mode=True``).
    ``path`` may lack a suffix (the artifact store names files by hash). The variables the
    configuration makes are counted against ``budget`` (by default ``max_decompressed``) before
    they are allocated.

    Raises:
        JobInputError: the file is not a loadable Keras 3 model.
    """
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04"):
        suffix = ".keras"
        try:
            with zipfile.ZipFile(path) as archive:
                total = sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise JobInputError(f"model: the archive is truncated or corrupt: {exc}") from None
        if total > max_decompressed:
            raise JobInputError(f"model: the archive expands to {total} bytes, over the limit of {max_decompressed}")
    elif head.startswith(b"\x89HDF\r\n\x1a\n"):
        suffix = ".h5"
    else:
        raise JobInputError("model: not a Keras model: expected a .keras (zip) or .h5 (HDF5) file")
    named = workdir / f"model3{suffix}"  # Keras picks the format from the suffix
    os.symlink(os.path.abspath(path), named)
    if budget is None:
        from .safe_load import VariableBudget

        budget = VariableBudget(max_decompressed)
    _LOADING.budget = budget
    try:
        model = keras.saving.load_model(named, compile=False, safe_mode=True)
    except (ValueError, OSError, TypeError, KeyError, AttributeError) as exc:
        budget.check()  # the refusal, as Keras may have wrapped it
        raise JobInputError(f"model: cannot be loaded with Keras 3: {exc}") from None
    finally:
        _LOADING.budget = None
    budget.check()
    return model


# --- configurations -----------------------------------------------------------------------


def _class_name(op: Any) -> str:
    """The class name of a supported Keras 3 layer or model; refuses anything else, subclasses
    of built-in layers included."""
    name = type(op).__name__
    if name == "Functional":
        builtin: Any = _Functional3
    elif name == "Sequential":
        builtin = keras.Sequential
    else:
        builtin = getattr(keras.layers, name, None)
    if name not in SUPPORTED or type(op) is not builtin:
        raise UnsupportedLayer(getattr(op, "name", "?"), name)
    return name


def _plain(value: Any) -> Any:
    """Keras 3 serialised tuples and arrays as plain Python values."""
    if isinstance(value, dict) and value.get("class_name") in ("__tuple__", "__numpy__"):
        inner = value.get("config", {}).get("value")
        return tuple(_plain(v) for v in inner) if value["class_name"] == "__tuple__" else np.asarray(inner).tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    """Config values equal up to list/tuple and int/float differences (never bool/number)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``cls.__init__`` and of the bases it forwards **kwargs to."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        for name, param in params.items():
            if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                found.setdefault(name, param)
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return found


def _at_default(cls3: type, key: str, value: Any) -> bool:
    hidden = _KERAS3_HIDDEN_DEFAULTS.get(cls3.__name__, {})
    if key in hidden:
        return _same(hidden[key], value)
    param = _parameters(cls3).get(key)
    if param is None or param.default is param.empty:
        return False
    if key == "data_format" and param.default is None:  # None means the global default: channels_last
        return value in (None, "channels_last")
    return _same(_plain(param.default), value)


def _options(
    cls3: type,
    cls2: type,
    config: dict,
    refuse: Refuse,
    extra: Iterable[str] = (),
    renamed: dict[str, str] | None = None,
    training_only: Iterable[str] = (),
) -> dict:
    """Keeps the options tf_keras takes (renamed where needed); drops the others only at
    their Keras 3 default (or when they steer training randomness only)."""
    accepted = set(_parameters(cls2)) | set(extra)
    kept = {}
    for key, value in config.items():
        key2 = (renamed or {}).get(key, key)
        if key2 in accepted:
            kept[key2] = value
        elif key not in training_only and not _at_default(cls3, key, _plain(value)):
            refuse(f"option {key}={value!r} has no tf_keras equivalent")
    return kept


def _object(value: Any, kind: str, refuse: Refuse) -> dict | None:
    """A Keras 3 initializer, regularizer or constraint as a tf_keras serialisation."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("config", {}), dict):
        refuse(f"cannot translate the {kind[:-1]} {value!r}")
    name = value.get("class_name")
    builtin = value.get("module", f"keras.{kind}") == f"keras.{kind}" and value.get("registered_name") in (None, name)
    if name not in _OBJECTS[kind] or not builtin:
        refuse(f"the {kind[:-1]} {name!r} is not translated")
    cls3, cls2 = getattr(getattr(keras, kind), name), getattr(getattr(tf_keras, kind), name)

    def refuse_option(reason: str) -> NoReturn:
        refuse(f"{kind[:-1]} {name}: {reason}")

    config = {k: _plain(v) for k, v in value.get("config", {}).items()}
    return {"class_name": name, "config": _options(cls3, cls2, config, refuse_option)}


def _activation(value: Any, refuse: Refuse) -> str:
    if isinstance(value, dict) and value.get("class_name") == "function":
        value = value.get("config")
    if value is None:
        return "linear"
    if not isinstance(value, str) or value not in _ACTIVATIONS:
        refuse(f"the activation {value!r} is not translated")
    return _ACTIVATIONS[value]


def _dtype(value: Any, refuse: Refuse) -> str:
    if isinstance(value, dict):
        policy = value.get("class_name")
        if policy not in ("DTypePolicy", "FloatDTypePolicy") or value.get("module") not in (None, "keras"):
            refuse(f"the dtype policy {policy!r} is not translated")
        value = value.get("config", {}).get("name")
    if value not in _FLOAT_POLICIES:
        refuse(f"the dtype policy {value!r} is not translated")
    return str(value)


def _layer_config(class_name: str, config3: dict) -> dict:
    """A Keras 3 layer configuration translated into the tf_keras one."""
    name = str(config3.get("name", "?"))

    def refuse(reason: str) -> NoReturn:
        raise UnsupportedLayer(name, class_name, reason)

    out: dict[str, Any] = {}
    for key, value in config3.items():
        if key == "dtype":
            out[key] = _dtype(value, refuse)
        elif key.endswith("_initializer"):
            out[key] = _object(value, "initializers", refuse)
        elif key.endswith("_regularizer"):
            out[key] = _object(value, "regularizers", refuse)
        elif key.endswith("_constraint"):
            out[key] = _object(value, "constraints", refuse)
        elif key in ("activation", "recurrent_activation"):
            out[key] = _activation(value, refuse)
        elif class_name == "Bidirectional" and key in ("layer", "backward_layer"):
            out[key] = _wrapped_config(value, key == "layer", refuse)
        elif class_name == "TimeDistributed" and key == "layer":
            out[key] = _distributed_config(value, refuse)
        else:
            out[key] = _plain(value)
    return {
        **_options(
            getattr(keras.layers, class_name),
            getattr(tf_keras.layers, class_name),
            out,
            refuse,
            extra=_TF_KERAS_EXTRA.get(class_name, frozenset()) | _TF_KERAS_BASE_KWARGS,
            renamed=_RENAMED.get(class_name),
            training_only=_TRAINING_ONLY.get(class_name, ()),
        ),
        **_TF_KERAS_REQUIRED.get(class_name, {}),
    }


def _wrapped_config(value: Any, forward: bool, refuse: Refuse) -> dict | None:
    """The RNN inside a Bidirectional, as the tf_keras serialisation Bidirectional expects."""
    if value is None and not forward:
        return None
    wrapped = value.get("class_name") if isinstance(value, dict) else value
    if wrapped not in _RNNS or value.get("module") not in (None, "keras.layers"):
        refuse(f"wraps {wrapped!r}, not a built-in LSTM, GRU or SimpleRNN")
    config = _layer_config(value["class_name"], value.get("config", {}))
    if forward:  # tf_keras adds the prefix itself
        config["name"] = str(config.get("name", "")).removeprefix("forward_") or "rnn"
    return {"class_name": value["class_name"], "config": config}


def _distributed_config(value: Any, refuse: Refuse) -> dict:
    """The layer inside a TimeDistributed: any single built-in layer the bridge translates."""
    wrapped = value.get("class_name") if isinstance(value, dict) else value
    if (
        not isinstance(value, dict)
        or wrapped not in SUPPORTED
        or wrapped in preflight.NOT_DISTRIBUTED
        or value.get("module") not in (None, "keras.layers")
    ):
        refuse(f"wraps {wrapped!r}; the bridge translates a TimeDistributed of a single built-in layer")
    return {"class_name": wrapped, "config": _layer_config(wrapped, value.get("config", {}))}


def _tf_keras_layer(layer3: Any) -> Any:
    """A fresh tf_keras layer configured like the Keras 3 ``layer3`` (no weights yet)."""
    class_name = _class_name(layer3)
    config = _layer_config(class_name, layer3.get_config())
    try:
        return getattr(tf_keras.layers, class_name).from_config(config)
    except (ValueError, TypeError, KeyError) as exc:
        raise UnsupportedLayer(
            layer3.name, class_name, f"tf_keras refuses the translated configuration: {exc}"
        ) from None


def _input_options(input_layer: Any) -> dict:
    """The options of a Keras 3 ``InputLayer`` as tf_keras' ``InputLayer`` and ``Input`` take them."""
    config = input_layer.get_config()
    name = input_layer.name
    if config.get("optional") or config.get("ragged"):
        raise UnsupportedLayer(name, "InputLayer", "optional and ragged inputs are not translated")
    unknown = set(config) - {"batch_shape", "dtype", "sparse", "ragged", "name", "optional"}
    if unknown:
        raise UnsupportedLayer(name, "InputLayer", f"options {sorted(unknown)} are not translated")
    return {
        "batch_input_shape": tuple(config["batch_shape"]),
        "dtype": config.get("dtype"),
        "sparse": bool(config.get("sparse")),
        "name": name,
    }


# --- graphs ---------------------------------------------------------------------------------


def _made_by(tensor: Any, class_name: str) -> tuple[Any, tuple] | None:
    """(the operation, its call's arguments) when ``tensor`` is the output of a ``class_name``."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or type(history.operation).__name__ != class_name:
        return None
    return history.operation, tuple(history.operation._inbound_nodes[history.node_index].arguments.args)


def _mask_source(mask: Any, depth: int = 0) -> Any:
    """What a Keras 3 mask tensor is: ("not_equal", id(x)) for ``x != 0`` (an Embedding's),
    ("masking", id(x), v) for ``any(x != v, axis=-1)`` (a Masking layer's), else what computed
    it (:func:`_made_of`)."""
    if mask is None:
        return None
    while (made := _made_by(mask, "ConvertToTensor")) is not None and len(made[1]) == 1:
        mask = made[1][0]  # an attention layer's output mask: its query's, converted
    if (made := _made_by(mask, "NotEqual")) is not None:
        args = made[1]
        if len(args) == 2 and isinstance(args[0], keras.KerasTensor) and _same(args[1], 0):
            return ("not_equal", id(args[0]))
    if (made := _made_by(mask, "Any")) is not None:
        op, args = made
        inner = _made_by(args[0], "NotEqual") if len(args) == 1 else None
        if inner is not None and list(np.atleast_1d(op.axis)) == [-1] and not op.keepdims:
            x, value = (inner[1] + (None, None))[:2]
            if isinstance(x, keras.KerasTensor) and value is not None and np.ndim(value) == 0:
                return ("masking", id(x), float(value))
    return _made_of(mask, depth)


def _made_of(tensor: Any, depth: int) -> Any:
    """What computed ``tensor``: the operation (not a layer), its axis and the sources of its
    arguments, recursively (a merge layer's mask: ``logical_or``, ``expand_dims``, ``any`` ...
    of its inputs' masks), else the tensor's id. Two computations of one mask, the one a model
    file records and the one Keras makes again as it rebuilds the model, compare equal."""
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None)
    if history is None or op is None or isinstance(op, keras.layers.Layer) or depth > _MASK_DEPTH:
        return ("tensor", id(tensor))
    node = op._inbound_nodes[history.node_index]

    def source(value: Any) -> Any:
        if isinstance(value, keras.KerasTensor):
            return _mask_source(value, depth + 1)
        if isinstance(value, (list, tuple)):
            return tuple(source(v) for v in value)
        return repr(value)

    attributes = tuple(repr(getattr(op, name, None)) for name in ("axis", "keepdims"))
    return (type(op).__name__, attributes, source(node.arguments.args), history.tensor_index)


_MASK_DEPTH = 64  # operations computing one mask, followed back


def _carried_mask(x: Any) -> Any:
    """The source of the mask Keras carries along with ``x`` (a Masking layer's output carries
    ``any(input != mask_value, axis=-1)``; a reloaded model records that graph, not the tensor)."""
    if (made := _made_by(x, "Masking")) is not None:
        op, args = made
        if len(args) == 1 and isinstance(args[0], keras.KerasTensor):
            return ("masking", id(args[0]), float(op.mask_value))
    return _mask_source(getattr(x, "_keras_mask", None))


def _implicit_mask(inputs: Any, mask: Any) -> bool:
    """Whether a recorded ``mask`` argument is the mask Keras propagates with ``inputs`` anyway."""
    flat = keras.tree.flatten(inputs)
    masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
    return len(flat) == len(masks) and all(_mask_source(m) == _carried_mask(x) for x, m in zip(flat, masks))


def _expanded_activation_name(op: Any) -> str | None:
    """The activation of a Keras 3 Activation layer the bridge makes of several tf_keras layers
    (:data:`preflight.KERAS3_LAYER_ACTIVATIONS`), or None."""
    if _class_name(op) != "Activation":
        return None
    name = op.get_config().get("activation")
    return name if isinstance(name, str) and name in preflight.KERAS3_LAYER_ACTIVATIONS else None


def _expanded_activation(op: Any) -> Callable[[Any], Any] | None:
    """For Activation("hard_sigmoid" | "hard_silu" | "hard_swish"): a function applying tf_keras
    layers that compute it exactly (Keras 3: hard_sigmoid(x) = relu6(x + 3) / 6, hard_silu(x) =
    x * hard_sigmoid(x); tf_keras's own hard_sigmoid is clip(0.2 x + 0.5), another function).
    The last layer takes the Activation's name, so the model's outputs and layer names stay;
    none holds a weight. Made once per layer, shared by each of its calls."""
    activation = _expanded_activation_name(op)
    if activation is None:
        return None
    silu = activation != "hard_sigmoid"

    def refuse(reason: str) -> NoReturn:
        raise UnsupportedLayer(op.name, "Activation", reason)

    dtype = op.get_config().get("dtype")
    options = {"dtype": _dtype(dtype, refuse)} if dtype is not None else {}
    scale_name, *clip_name = preflight.expanded_activation_parts(op.name, activation)
    scale = tf_keras.layers.Rescaling(1.0 / 6.0, offset=0.5, name=scale_name, **options)
    clip = tf_keras.layers.ReLU(max_value=1.0, name=clip_name[0] if silu else op.name, **options)
    times = tf_keras.layers.Multiply(name=op.name, **options) if silu else None

    def apply(x: Any, **kwargs: Any) -> Any:
        if not silu and getattr(x, "_keras_mask", None) is not None:  # Rescaling drops a padding mask
            refuse("is hard_sigmoid over a masked sequence, whose padding mask its tf_keras layers drop")
        gate = clip(scale(x))
        return times([x, gate]) if times is not None else gate

    return apply


def _check_mask_propagated(op: Any, inputs3: Any, tensors: dict[int, Any]) -> None:
    for x in keras.tree.flatten(inputs3):
        masked3 = getattr(x, "_keras_mask", None) is not None
        if masked3 and id(x) in tensors and getattr(tensors[id(x)], "_keras_mask", None) is None:
            raise BridgeError(f"layer {op.name!r}: tf_keras does not carry the input's mask along")


_MASK_MERGES = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Concatenate,
)


# Keras 3 merges that also rewrite the padded steps of their output (``Merge._apply_merge_op_and_or_mask``,
# ``Multiply._merge_function``); tf_keras computes every step from the inputs.
_FILLING_MERGES = (keras.layers.Multiply, keras.layers.Maximum, keras.layers.Minimum)


def _check_merged_masks(op: Any, inputs3: Any) -> None:
    """Refuses a merge layer whose inputs carry different padding masks. Keras 3 passes on an OR
    of them (none at all from Add and the like where an input has none), tf_keras an AND: the
    same mask only when every input carries one and the same (a residual connection over a
    masked sequence), or, along a concatenation's steps, when every input carries one. Refuses
    Multiply, Maximum and Minimum over any padding mask: Keras 3 fills their padded steps (zeros,
    the first input's values), tf_keras does not."""
    if not isinstance(op, _MASK_MERGES):
        return
    carried = [_carried_mask(x) for x in keras.tree.flatten(inputs3) if isinstance(x, keras.KerasTensor)]
    if all(m is None for m in carried):
        return
    if isinstance(op, _FILLING_MERGES):
        raise UnsupportedLayer(
            op.name,
            type(op).__name__,
            "merges padded sequences: Keras 3's Multiply, Maximum and Minimum fill the padded steps (Multiply "
            "with zeros, Maximum and Minimum with the first input's values) where tf_keras computes them from "
            "every input, and a layer reading those steps (GlobalMaxPooling1D, Flatten, Conv1D, a sequence "
            "output) gives other outputs; use Add, Subtract, Average or Concatenate, or pool the sequences "
            "(GlobalAveragePooling1D) before the merge",
        )
    if None not in carried and len(set(carried)) == 1:
        return
    if isinstance(op, keras.layers.Concatenate) and None not in carried:
        rank = len(keras.tree.flatten(inputs3)[0].shape)
        if op.axis % rank != rank - 1:
            return  # each input's mask keeps its own steps in both
    raise UnsupportedLayer(
        op.name,
        type(op).__name__,
        "merges inputs that carry different padding masks (or a masked one with an unmasked one): Keras 3 "
        "passes on an OR of them, tf_keras an AND; give every input the same mask (Embedding mask_zero or "
        "Masking), or pool the sequences (GlobalAveragePooling1D) before the merge",
    )


def _refuse_skipped(tensors: Iterable[Any], skipped: dict[int, Any]) -> None:
    """Refuses the first non-layer operation that made one of ``tensors``."""
    for kt in tensors:
        if id(kt) in skipped:
            raise UnsupportedLayer(skipped[id(kt)].name, type(skipped[id(kt)]).__name__, "is not a layer")


def _input_layers(model3: Any) -> list[Any]:
    if isinstance(model3, keras.Sequential):
        first = model3._layers[0] if model3._layers else None
        if not isinstance(first, keras.layers.InputLayer):
            raise UnsupportedLayer(model3.name, "Sequential", "has no input shape (build it with an Input first)")
        return [first]
    return [kt._keras_history.operation for kt in model3.inputs]


def _training_default(op: Any) -> Any:
    """The default of ``training`` in ``op.call``'s signature (None where it has none)."""
    try:
        parameter = inspect.signature(op.call).parameters.get("training")
    except (TypeError, ValueError):
        return None
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def _bound(structure: Any, tensors: dict[int, Any], skipped: dict[int, Any]) -> Any:
    """``structure`` (a call's arguments) with each Keras 3 tensor replaced by its tf_keras
    one; None when one is not connected to the inputs (Keras skips the call too). Refuses a
    tensor made by an operation the bridge did not translate."""
    needed = [x for x in keras.tree.flatten(structure) if isinstance(x, keras.KerasTensor)]
    _refuse_skipped(needed, skipped)
    if any(id(kt) not in tensors for kt in needed):
        return None
    return keras.tree.map_structure(lambda x: tensors[id(x)] if isinstance(x, keras.KerasTensor) else x, structure)


def _arithmetic(op: Any, args: Any, kwargs: Any, outputs: Any) -> tuple[Any, tuple] | None:
    """The tf_keras layer doing what a Keras 3 arithmetic operation on tensors does (``h + r``,
    ``x / 255.0``, ``keras.ops.multiply(a, b)``), and what it is called on: two tensors of one
    shape (Add, Subtract, Multiply), or a float tensor and a number (Rescaling); None for any
    other operation (``core/pruning_core/preflight.operation_translated`` says the same of a
    configuration)."""
    name = type(op).__name__
    if kwargs or len(args) != 2 or len(outputs) != 1 or name not in preflight.NUMBER_OPERATIONS:
        return None
    a, b = args
    dtype = str(outputs[0].dtype)
    if isinstance(a, keras.KerasTensor) and isinstance(b, keras.KerasTensor):
        layer = _ELEMENTWISE.get(name)
        if layer is None or tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            return None
        return layer(name=op.name, dtype=dtype), ([a, b],)
    x, number = (a, b) if isinstance(a, keras.KerasTensor) else (b, a)
    if (
        not isinstance(x, keras.KerasTensor)
        or isinstance(number, bool)
        or not isinstance(number, int | float)
        or not dtype.startswith(("float", "bfloat"))
    ):
        return None
    first = x is a
    if name == "Add":
        scale, offset = 1.0, float(number)
    elif name == "Subtract":
        scale, offset = (1.0, -float(number)) if first else (-1.0, float(number))
    elif name == "Multiply":
        scale, offset = float(number), 0.0
    elif first and number != 0:  # x / c; c / x is no rescaling
        scale, offset = 1.0 / float(number), 0.0
    else:
        return None
    return tf_keras.layers.Rescaling(scale, offset, name=op.name, dtype=dtype), (x,)


_ELEMENTWISE = {name: getattr(tf_keras.layers, name) for name in preflight.TWO_TENSOR_OPERATIONS}


class _Translator:
    """Rebuilds Keras 3 graphs out of tf_keras layers; remembers each translated layer."""

    def __init__(self, flatten_nested: bool):
        self.flatten_nested = flatten_nested
        self.layers: dict[int, Any] = {}  # id(Keras 3 layer) -> tf_keras layer or model
        self.pairs: list[tuple[Any, Any]] = []  # (Keras 3 leaf layer, tf_keras leaf layer)

    def model(self, model3: Any) -> Any:
        """The tf_keras model of ``model3`` (unweighted)."""
        class_name = _class_name(model3)
        if class_name not in _MODELS:
            raise UnsupportedLayer(model3.name, class_name, "is a layer, not a model")
        nested = [op for op in self._operations(model3) if isinstance(op, keras.Model)]
        expanded = any(_expanded_activation_name(op) for op in model3.layers) if class_name == "Sequential" else False
        if class_name == "Sequential" and not (self.flatten_nested and nested) and not expanded:
            layers = [tf_keras.layers.InputLayer(**_input_options(_input_layers(model3)[0]))]
            layers += [self.layer(op) for op in model3.layers]
            return tf_keras.Sequential(layers, name=model3.name)
        inputs = [tf_keras.Input(**_input_options(layer)) for layer in _input_layers(model3)]
        outputs = self.run(model3, inputs)
        structure = (
            inputs[0] if class_name == "Sequential" else keras.tree.pack_sequence_as(model3._inputs_struct, inputs)
        )
        try:
            return tf_keras.Model(structure, outputs, name=model3.name)
        except ValueError as exc:
            parts = "|".join(map(re.escape, preflight.HARD_SIGMOID_PARTS))
            taken = re.search(rf'name "(.+?)({parts})" is used', str(exc))
            if taken is None:
                raise
            raise UnsupportedLayer(
                taken.group(1),
                "Activation",
                f"its translation to tf_keras needs the layer name {taken.group(1) + taken.group(2)!r}, "
                "which another layer of the model has; rename that layer",
            ) from None

    @staticmethod
    def _operations(model3: Any) -> list[Any]:
        if isinstance(model3, keras.Sequential):
            return list(model3.layers)
        return [op for op in model3._operations if isinstance(op, keras.layers.Layer)]

    def layer(self, op: Any) -> Any:
        """The tf_keras counterpart of one Keras 3 layer or nested model, made once."""
        if id(op) not in self.layers:
            if _class_name(op) in _MODELS:
                self.layers[id(op)] = self.model(op)
            elif (expanded := _expanded_activation(op)) is not None:
                self.layers[id(op)] = expanded  # weightless: nothing to pair
            else:
                layer2 = _tf_keras_layer(op)
                self.layers[id(op)] = layer2
                self.pairs.append((op, layer2))
        return self.layers[id(op)]

    def call(self, op: Any, args: tuple, kwargs: dict) -> Any:
        if self.flatten_nested and _class_name(op) in _MODELS:
            if kwargs:
                raise BridgeError(f"nested model {op.name!r} is called with {sorted(kwargs)}; cannot flatten it")
            return self.run(op, keras.tree.flatten(args))
        return self.layer(op)(*args, **kwargs)

    def run(self, model3: Any, inputs: list[Any]) -> Any:
        """``model3``'s graph applied to tf_keras tensors; returns its output structure."""
        if isinstance(model3, keras.Sequential):
            (x,) = inputs
            for op in model3.layers:
                x = self.call(op, (x,), {})
            return x
        if len(inputs) != len(model3.inputs):
            raise BridgeError(f"model {model3.name!r} takes {len(model3.inputs)} inputs, got {len(inputs)}")
        tensors = {id(kt): t for kt, t in zip(model3.inputs, inputs)}
        skipped: dict[int, Any] = {}  # outputs of non-layer operations -> the operation
        for depth in sorted(model3._nodes_by_depth, reverse=True):
            for node in model3._nodes_by_depth[depth]:
                op = node.operation
                if not op or node.is_input:
                    continue
                if not isinstance(op, keras.layers.Layer):
                    translated = _arithmetic(op, node.arguments.args, node.arguments.kwargs, node.outputs)
                    if translated is None:
                        # e.g. the not_equal that computes an Embedding's mask: needed only if used below
                        skipped.update({id(kt): op for kt in node.outputs})
                        continue
                    layer2, args3 = translated
                    args = _bound(args3, tensors, skipped)
                    if args is None:
                        continue
                    masked = any(getattr(t, "_keras_mask", None) is not None for t in tf.nest.flatten(args))
                    if masked and not isinstance(layer2, tf_keras.layers.Rescaling):
                        # Keras 3's operation drops the padding mask, the merge layer would pass it on
                        raise UnsupportedLayer(op.name, type(op).__name__, "is arithmetic on a masked tensor")
                    tensors[id(node.outputs[0])] = layer2(*args)
                    continue
                args3, kwargs3 = node.arguments.args, dict(node.arguments.kwargs)
                if args3:
                    _check_merged_masks(op, args3[0])
                if "mask" in kwargs3 and args3 and _implicit_mask(args3[0], kwargs3["mask"]):
                    del kwargs3["mask"]  # tf_keras passes the same mask along by itself
                    _check_mask_propagated(op, args3[0], tensors)
                if isinstance(op, keras.layers.MultiHeadAttention) and (
                    any(kwargs3.get(k) is not None for k in ("query_mask", "value_mask", "key_mask"))
                    or any(getattr(t, "_keras_mask", None) is not None for t in keras.tree.flatten(args3))
                ):
                    # Keras 3 and tf_keras combine padding masks with the attention's own differently
                    raise UnsupportedLayer(op.name, "MultiHeadAttention", "attends over a padding mask")
                if kwargs3.get("training") is True and _training_default(op) is not True:
                    raise BridgeError(f"layer {op.name!r} is called with training=True, fixed in tf_keras")
                # Keras 3 records the call signature's default (training=False for RNNs, True for
                # preprocessing layers such as Resizing and RandomFlip) and lets the model's own
                # training flag override it; in tf_keras a recorded value would win, and TFMOT's
                # masks would never update. Left out, tf_keras follows the model.
                kwargs3.pop("training", None)
                bound = _bound((args3, kwargs3), tensors, skipped)
                if bound is None:
                    continue
                args, kwargs = bound
                outputs = tf.nest.flatten(self.call(op, args, kwargs))
                if len(outputs) != len(node.outputs):
                    n2, n3 = len(outputs), len(node.outputs)
                    raise BridgeError(f"layer {op.name!r} gives {n2} outputs in tf_keras, {n3} in Keras 3")
                tensors.update({id(kt): t for kt, t in zip(node.outputs, outputs)})
        _refuse_skipped(model3.outputs, skipped)
        if any(id(kt) not in tensors for kt in model3.outputs):
            raise BridgeError(f"an output of model {model3.name!r} is not connected to its inputs")
        flat = [tensors[id(kt)] for kt in model3.outputs]
        return keras.tree.pack_sequence_as(model3._outputs_struct, flat)


# --- weights ----------------------------------------------------------------------------------


def _own_name(variable: Any) -> str:
    """A variable's own name: ``kernel`` of ``dense/kernel:0`` (tf_keras) or ``kernel`` (Keras 3)."""
    return str(variable.name).rsplit("/", 1)[-1].split(":", 1)[0]


def _np_dtype(variable: Any) -> np.dtype:
    return np.dtype(getattr(variable.dtype, "as_numpy_dtype", variable.dtype))


def _variable_groups(layer: Any) -> list[list[Any]]:
    """A layer's variables, one group per sub-layer whose variables share names."""
    if type(layer).__name__ == "Bidirectional":
        return [list(layer.forward_layer.weights), list(layer.backward_layer.weights)]
    if sublayers := _SUBLAYERS.get(type(layer).__name__):
        return [list(getattr(layer, name).weights) for name in sublayers]
    return [list(layer.weights)]


def _copy_variables(src: Any, dst: Any, class_name: str) -> None:
    """Assigns ``src``'s variable values to ``dst``'s (one of them Keras 3, the other tf_keras),
    pairing them by name; refuses any difference of names, shapes or dtypes."""
    skip = _TF_KERAS_ONLY_VARIABLES.get(class_name, frozenset())
    renamed = _VARIABLE_NAMES.get(class_name, {})

    def _short(variable: Any) -> str:
        name = _own_name(variable)
        if isinstance(variable, keras.Variable):
            name = renamed.get(name, name)
        return name

    src_groups, dst_groups = _variable_groups(src), _variable_groups(dst)
    if len(src_groups) != len(dst_groups):
        raise BridgeError(f"layer {src.name!r}: the two versions hold different sub-layers")
    for src_vars, dst_vars in zip(src_groups, dst_groups):
        src_kept = [v for v in src_vars if _short(v) not in skip]
        src_named = {_short(v): v for v in src_kept}
        dst_named = {_short(v): v for v in dst_vars if _short(v) not in skip}
        if len(src_named) != len(src_kept) or set(src_named) != set(dst_named):
            found, wanted = sorted(src_named), sorted(dst_named)
            raise BridgeError(f"layer {src.name!r} ({class_name}): variables {found} do not match {wanted}")
        for name, v in src_named.items():
            value = np.asarray(v.numpy())
            target = dst_named[name]
            if tuple(value.shape) != tuple(target.shape) or value.dtype != _np_dtype(target):
                have, want = f"{value.dtype}{value.shape}", f"{_np_dtype(target)}{tuple(target.shape)}"
                raise BridgeError(f"layer {src.name!r} ({class_name}) variable {name}: {have} vs {want}")
            target.assign(value)
    if class_name == "Normalization" and dst.weights:
        dst.finalize_state()  # both versions cache mean and variance as tensors


def _operations_of(model: Any) -> set[str]:
    """Names of the operations that are not layers in a Keras 3 model, nested models' too."""
    names: set[str] = set()
    for op in getattr(model, "_operations", []):
        if isinstance(op, keras.Model):
            names |= _operations_of(op)
        elif not isinstance(op, keras.layers.Layer):
            names.add(op.name)
    return names


def _leaves(model: Any) -> dict[str, Any]:
    """The layers that are not models, recursively, by name (input layers left out)."""
    found: dict[str, Any] = {}
    for layer in model.layers:
        if isinstance(layer, (keras.Model, tf_keras.Model)):
            nested = _leaves(layer)
            clash = set(nested) & set(found)
        else:
            if isinstance(layer, (keras.layers.InputLayer, tf_keras.layers.InputLayer)):
                continue
            nested, clash = {layer.name: layer}, {layer.name} & set(found)
        if clash:
            raise BridgeError(f"layer names {sorted(clash)} occur twice among the nested models")
        found.update(nested)
    return found


# --- public API -------------------------------------------------------------------------------


def to_tf_keras(model3: Any, *, flatten_nested: bool = False) -> Any:
    """An equivalent tf_keras model of a loaded Keras 3 model, weights copied.

    Sequential models stay Sequential; Functional ones (several inputs and outputs, shared
    layers, nested models used as layers) become tf_keras functional models with the same
    layer names. With ``flatten_nested``, the layers of nested models join the outer graph
    (TFMOT wraps only the outer model's layers).

    Raises:
        UnsupportedLayer: a layer, option or object outside what the bridge translates.
        BridgeError: the graph or the weights do not map onto tf_keras.
    """
    translator = _Translator(flatten_nested)
    model2 = translator.model(model3)
    for layer3, layer2 in translator.pairs:
        _copy_variables(layer3, layer2, type(layer3).__name__)
    return model2


def to_keras3(model2: Any, like: Any) -> Any:
    """The tf_keras model's weights in a clone of ``like``, the Keras 3 model it was made
    from (same layer names and architecture; TFMOT wrappers stripped first).

    Raises:
        BridgeError: the layers (by name, class or variables) differ between the two models.
    """
    clone = keras.models.clone_model(like)
    sources, targets = _leaves(model2), _leaves(clone)
    for name in _operations_of(like):  # arithmetic the bridge made layers of: no weights, ops again
        if name in sources and not sources[name].weights and name not in targets:
            del sources[name]
    for name, layer3 in targets.items():  # an activation the bridge made several layers of
        if (activation := _expanded_activation_name(layer3)) is not None and name in sources:
            parts = preflight.expanded_activation_parts(name, activation)
            for part in [name, *parts]:
                if part in sources and sources[part].weights:
                    raise BridgeError(f"layer {part!r}, made of Keras 3's Activation {name!r}, holds weights")
            for part in parts:
                sources.pop(part, None)
            sources[name] = layer3  # nothing to copy: the Activation itself
    if set(sources) != set(targets):
        extra, missing = sorted(set(sources) - set(targets)), sorted(set(targets) - set(sources))
        raise BridgeError(
            f"the tf_keras model does not match the Keras 3 one: extra layers {extra}, missing {missing} "
            "(strip TFMOT's wrappers first)"
        )
    for name, layer3 in targets.items():
        layer2 = sources[name]
        class_name = type(layer3).__name__
        if type(layer2).__name__ != class_name:
            raise BridgeError(f"layer {name!r} is a {class_name} in Keras 3, a {type(layer2).__name__} in tf_keras")
        _copy_variables(layer2, layer3, class_name)
    return clone


_ATTENTION_TENSORS = {"value": "value_shape", "key": "key_shape", "attention_mask": None}


def _attention_node(node: Any, config: dict) -> Any:
    """A tf_keras MultiHeadAttention call node (``[[query, n, t, {"value": [value, n, t], ...}]]``)
    in Keras 3's own node format: Keras 3's loader of Keras 2 files passes a legacy node's
    keyword arguments on as written, so ``value`` (and ``key``, ``attention_mask``) reached
    the layer as lists of names, not tensors, and the layer could not be built."""
    if not (isinstance(node, list) and len(node) == 1 and isinstance(node[0], list) and len(node[0]) == 4):
        return node
    query, n, t, kwargs = node[0]
    if not isinstance(kwargs, dict):
        return node

    def tensor(history: Any, shape_key: str | None) -> dict:
        # a placeholder: the loader swaps it for the tensor of keras_history (its own shape)
        shape = (config.get(shape_key) if shape_key else None) or [None]
        return {
            "class_name": "__keras_tensor__",
            "config": {"shape": shape, "dtype": "float32", "keras_history": list(history)},
        }

    converted = {}
    for key, value in kwargs.items():
        if key in _ATTENTION_TENSORS and isinstance(value, list) and len(value) == 3 and isinstance(value[0], str):
            converted[key] = tensor(value, _ATTENTION_TENSORS[key])
        else:
            converted[key] = value
    return {"args": [tensor([query, n, t], "query_shape")], "kwargs": converted}


def for_keras3_loader(config: Any) -> Any:
    """A tf_keras model configuration (an HDF5 file's ``model_config``) that Keras 3's loader
    of Keras 2 files takes. An option Keras 3's layer class does not take is dropped where it
    changes nothing: at tf_keras's default (``groups`` 1 of the depthwise, separable and
    transposed convolutions), or an initializer (the weights are loaded; the separable
    convolutions' unused ``kernel_initializer``). Anywhere else it stays and the loader refuses it."""
    if isinstance(config, list):
        return [for_keras3_loader(item) for item in config]
    if not isinstance(config, dict):
        return config
    out = {key: for_keras3_loader(value) for key, value in config.items()}
    if out.get("class_name") == "MultiHeadAttention" and isinstance(out.get("inbound_nodes"), list):
        out["inbound_nodes"] = [_attention_node(node, out.get("config") or {}) for node in out["inbound_nodes"]]
    cls3, cls2 = (
        getattr(keras.layers, str(out.get("class_name")), None),
        getattr(tf_keras.layers, str(out.get("class_name")), None),
    )
    layer_config = out.get("config")
    if isinstance(cls3, type) and isinstance(cls2, type) and isinstance(layer_config, dict):
        taken, given = _parameters(cls3), _parameters(cls2)
        # the shapes tf_keras' attention records (_TF_KERAS_REQUIRED, out of its signature):
        # Keras 3 builds the layer when the loader calls it in the rebuilt graph, and refuses
        # them as options
        built = _TF_KERAS_REQUIRED.get(str(out.get("class_name")), {})
        for key in [k for k in layer_config if k not in taken and (k in given or k in built)]:
            built_for = key in built
            default = given[key].default if key in given else inspect.Parameter.empty
            at_default = default is not inspect.Parameter.empty and _same(_plain(default), layer_config[key])
            if at_default or key.endswith("_initializer") or built_for:
                del layer_config[key]
        # tf_keras's augmentation layers record how they draw (rng_type); Keras 3's take no such
        # option and, like tf_keras's, are the identity in inference: nothing the model computes
        if str(out.get("class_name")).startswith("Random") and "rng_type" not in taken:
            layer_config.pop("rng_type", None)
    return out


def _fed_layers(input_layer: Any) -> list[Any]:
    """The layers an input feeds directly (those of a nested model it feeds, all of them)."""
    fed = []
    for node in input_layer._outbound_nodes:
        consumer = node.operation
        fed += list(_leaves(consumer).values()) if isinstance(consumer, keras.Model) else [consumer]
    return fed


def _embedding_bound(input_layer: Any) -> int | None:
    """The smallest Embedding input_dim among the layers an input feeds directly."""
    bounds = [layer.input_dim for layer in _fed_layers(input_layer) if type(layer).__name__ == "Embedding"]
    return int(min(bounds)) if bounds else None


def _padding_value(input_layer: Any) -> float | None:
    """What pads a sequence in this input: 0 where it feeds an Embedding, the mask value of a
    Masking layer it feeds; None otherwise."""
    for layer in _fed_layers(input_layer):
        if type(layer).__name__ == "Embedding":
            return 0
        if type(layer).__name__ == "Masking":
            return float(layer.mask_value)
    return None


def _feeds_attention_mask(input_layer: Any) -> bool:
    """Whether the input is the ``attention_mask`` of a MultiHeadAttention it feeds directly."""
    for node in input_layer._outbound_nodes:
        if isinstance(node.operation, keras.layers.MultiHeadAttention):
            mask = node.arguments.kwargs.get("attention_mask")
            if mask is not None and any(t is mask for t in input_layer._inbound_nodes[0].output_tensors):
                return True
    return False


def make_probe(model3: Any, batch: int = 2, seed: int = 0, length: int = 8, data: Any = None) -> list[np.ndarray]:
    """A deterministic input batch for ``model3``, one array per input: standard normal
    floats, and integers in [0, input_dim) for inputs feeding an Embedding (in [0, 10)
    otherwise). Unknown dimensions other than the batch take the size of the job's samples
    ``data`` (an array, a list in the inputs' order or a dict by input name) where it is given,
    else ``length``: an image size left open (``MobileNetV2(input_shape=(None, None, 3))``)
    probed at 8 x 8 pixels went through its stride-32 backbone to an empty feature map, whose
    outputs are NaN or, with oneDNN, whatever memory held. Every second sequence
    of an input feeding an Embedding or a Masking layer ends in padding (its second half), so
    that the padding masks the two models compute are compared too."""
    rng = np.random.default_rng(seed)
    probe = []
    layers = _input_layers(model3)
    for i, layer in enumerate(layers):
        dims = layer.get_config()["batch_shape"][1:]
        found = _data_sample_shape(data, layer.name, i, len(layers))
        sample = found if found is not None and len(found) == len(dims) else (length,) * len(dims)
        shape = (batch, *[d if d is not None else int(s) for d, s in zip(dims, sample, strict=True)])
        dtype = np.dtype(layer.get_config().get("dtype") or "float32")
        if _feeds_attention_mask(layer):  # a mask is 0/1: tf_keras weighs other values, Keras 3 casts to bool
            probe.append(rng.integers(0, 2, shape).astype(dtype))
            continue
        if np.issubdtype(dtype, np.floating):
            values = rng.standard_normal(shape).astype(dtype)
        else:
            high = _embedding_bound(layer) or _PROBE_INT_HIGH
            values = rng.integers(0, high, shape).astype(dtype)
        pad = _padding_value(layer)
        if pad is not None and len(shape) >= 2 and shape[1] >= 2:
            values[1::2, shape[1] // 2 :] = pad
        probe.append(values)
    return probe


def _data_sample_shape(data: Any, name: str, index: int, count: int) -> tuple[int, ...] | None:
    """The shape of one sample of input ``name`` (the ``index``-th of ``count``) in ``data``."""
    if data is None:
        return None
    if isinstance(data, dict):
        value = data.get(name)
    elif isinstance(data, list | tuple):
        value = data[index] if index < len(data) else None
    else:
        value = data if count == 1 else None
    shape = np.shape(value)[1:] if value is not None else None
    return tuple(shape) if shape is not None else None


def _pack(model: Any, arrays: list[np.ndarray]) -> Any:
    """Probe arrays (in the order of the model's flattened inputs) as the model takes them."""
    struct = getattr(model, "_inputs_struct", None)
    if struct is None:
        struct = getattr(model, "_nested_inputs", None)
    if isinstance(struct, dict):
        return dict(zip(sorted(struct), arrays))
    return arrays[0] if len(arrays) == 1 else list(arrays)


def compare(model3: Any, model2: Any, probe: list[np.ndarray] | None = None, data: Any = None) -> tuple[float, float]:
    """The largest absolute difference between the two models' outputs on ``probe`` (default:
    :func:`make_probe` of ``model3``), in inference mode, and the largest of the differences
    relative to each output's scale (:func:`relative_difference`).

    Raises:
        BridgeError: the models' outputs differ in number or shape.
    """
    probe = make_probe(model3, data=data) if probe is None else probe
    out3 = [np.asarray(o, np.float64) for o in keras.tree.flatten(model3(_pack(model3, probe), training=False))]
    out2 = [np.asarray(o, np.float64) for o in tf.nest.flatten(model2(_pack(model2, probe), training=False))]
    if len(out3) != len(out2) or any(a.shape != b.shape for a, b in zip(out3, out2)):
        raise BridgeError(f"output shapes differ: {[a.shape for a in out3]} vs {[b.shape for b in out2]}")
    return relative_difference(out3, out2)


def relative_difference(out3: list[np.ndarray], out2: list[np.ndarray]) -> tuple[float, float]:
    """(the largest |a - b| over every output, the largest over the outputs of that output's
    largest |a - b| divided by its scale: its largest finite |a|, at least 1). Each output is
    judged by its own scale (float32 alone rounds an output of 1e4 by 1e-3): one head's large
    values never widen another's tolerance. Values that are not finite where the other model's
    differ make both figures infinite."""
    diff = relative = 0.0
    for a, b in zip(out3, out2):
        if not a.size:
            continue
        finite = np.isfinite(a) & np.isfinite(b)
        if not np.array_equal(a[~finite], b[~finite], equal_nan=True) or not np.array_equal(
            np.isfinite(a), np.isfinite(b)
        ):
            return math.inf, math.inf
        gap = float(np.abs(a[finite] - b[finite]).max(initial=0.0))
        scale = max(1.0, float(np.abs(a[finite]).max(initial=0.0)))
        diff, relative = max(diff, gap), max(relative, gap / scale)
    return diff, relative


def check_equivalence(model3: Any, model2: Any, probe: list[np.ndarray] | None = None) -> float:
    """The largest absolute difference of :func:`compare`."""
    return compare(model3, model2, probe)[0]
