"""A model's preflight summary, read from its files without running them: the Keras version,
inputs, the outputs known from the configuration, and every layer with its parameters and
whether it can be pruned and (for Keras 3) translated to tf_keras."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from pruning.v1 import pruning_pb2 as pb

# Keras 3 layers the workers translate to tf_keras, layer by layer (workers/pruning_worker/bridge.py).
KERAS3_CONVERTIBLE = frozenset(
    [
        "InputLayer",
        "Sequential",
        "Functional",
        "Model",
        "Dense",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv2DTranspose",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "SeparableConv2D",
        "BatchNormalization",
        "LayerNormalization",
        "Dropout",
        "Flatten",
        "Reshape",
        "Permute",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "Subtract",
        "Maximum",
        "Minimum",
        "RepeatVector",
        "ELU",
        "PReLU",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "GroupNormalization",
        "UnitNormalization",
        "Conv1DTranspose",
        "Conv3DTranspose",
        "SeparableConv1D",
        "Identity",
        "Dot",
        "Activation",
        "ReLU",
        "LeakyReLU",
        "Softmax",
        "Add",
        "Concatenate",
        "Multiply",
        "Average",
        "Embedding",
        "Masking",
        "LSTM",
        "GRU",
        "SimpleRNN",
        "Bidirectional",
        "TimeDistributed",
        "MultiHeadAttention",
        "Rescaling",
        "Normalization",
        "Resizing",
        "CenterCrop",
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
        "ActivityRegularization",
        "Attention",
        "AdditiveAttention",
        "ConvLSTM1D",
        "ConvLSTM2D",
        "ConvLSTM3D",
    ]
)
# Layers whose weights TFMOT's prune_low_magnitude prunes (its prune_registry: DepthwiseConv2D
# and BatchNormalization pass through unpruned; Bidirectional is not supported;
# MultiHeadAttention's query, key, value and output kernels, not its biases).
PRUNABLE = frozenset(
    ["Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
     "SeparableConv1D", "SeparableConv2D", "Embedding", "LSTM", "GRU", "SimpleRNN", "MultiHeadAttention"]
)  # fmt: skip
_CONTAINERS = frozenset({"Sequential", "Functional", "Model"})
# What the bridge does not translate inside a TimeDistributed: a model, or another wrapper.
NOT_DISTRIBUTED = frozenset({"Sequential", "Functional", "Model", "InputLayer", "Bidirectional", "TimeDistributed"})
# Layers that hold another layer in their configuration; TFMOT prunes neither them nor it.
_WRAPPERS = frozenset({"Bidirectional", "TimeDistributed"})
# The server cuts the text of an error answer at 200 bytes (``max_error_bytes``), ``model: `` included:
# a refusal that lists names stops at a whole one before that.
MESSAGE_CHARS = 190
# Operations a Keras 3 functional model records for keras.ops calls and Python operators on
# tensors (``a + b``), whose class names may be a layer's: the layer that does the same.
OPERATION_LAYERS = {
    "Add": "keras.layers.Add", "Subtract": "keras.layers.Subtract",
    "Multiply": "keras.layers.Multiply (or Rescaling, for a constant)",
    "TrueDivide": "a layer (x / c: Rescaling(1 / c))", "Divide": "a layer (x / c: Rescaling(1 / c))",
    "Concatenate": "keras.layers.Concatenate", "Reshape": "keras.layers.Reshape", "Transpose": "keras.layers.Permute",
    "Softmax": "keras.layers.Softmax", "Relu": "keras.layers.ReLU", "Sigmoid": "keras.layers.Activation('sigmoid')",
    "Tanh": "keras.layers.Activation('tanh')",
}  # fmt: skip
# The operations Keras 3 records for the masks of Embedding(mask_zero) and Masking, and for the
# output mask of Attention and AdditiveAttention (their query's, converted), which the bridge
# translates (and refuses in any other use).
MASK_OPERATIONS = frozenset({"NotEqual", "Any", "ConvertToTensor"})
# Arithmetic on tensors the bridge turns into layers (``pruning_worker.bridge._arithmetic``):
# two tensors of one shape (Add, Subtract, Multiply layers), or a float tensor and a number
# (``x / 255.0``, ``x - 0.5``: Rescaling).
TWO_TENSOR_OPERATIONS = frozenset({"Add", "Subtract", "Multiply"})  # each the name of its tf_keras layer
NUMBER_OPERATIONS = TWO_TENSOR_OPERATIONS | {"TrueDivide", "Divide"}
# The modules of a Keras 3 configuration's operation nodes (keras.ops calls and operators).
OPERATION_MODULES = ("keras.src.ops", "keras.ops")


def operation_translated(class_name: str, inbound_nodes: Any) -> bool:
    """Whether the bridge turns an operation node of a Keras 3 configuration into a layer."""
    if class_name not in NUMBER_OPERATIONS or not isinstance(inbound_nodes, list) or len(inbound_nodes) != 1:
        return False
    call = inbound_nodes[0]
    args = call.get("args") if isinstance(call, dict) else None
    if not isinstance(args, list) or len(args) != 2 or call.get("kwargs"):
        return False
    tensors = [a.get("config") or {} for a in args if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"]
    if len(tensors) == 2:
        same = tensors[0].get("shape") == tensors[1].get("shape") and tensors[0].get("dtype") == tensors[1].get("dtype")
        return class_name in TWO_TENSOR_OPERATIONS and same
    numbers = [a for a in args if isinstance(a, int | float) and not isinstance(a, bool)]
    if len(tensors) != 1 or len(numbers) != 1:
        return False
    if class_name in ("TrueDivide", "Divide"):
        return isinstance(args[0], dict) and numbers[0] != 0  # x / c (of any dtype: the result is a float)
    return str(tensors[0].get("dtype", "")).startswith(("float", "bfloat"))


def _names_within(prefix: str, names: list[str], limit: int = MESSAGE_CHARS, rest: str = "") -> str:
    """``prefix`` and as many of ``names`` as fit in ``limit`` characters, cut at a whole name;
    ``rest`` follows the count of those left out (where the whole list is)."""
    shown = list(names)
    while shown and len(prefix + _listed(shown, len(names), rest)) > limit:
        shown.pop()
    return prefix + _listed(shown, len(names), rest)


def _listed(shown: list[str], total: int, rest: str = "") -> str:
    left = total - len(shown)
    return ", ".join([*shown, f"... ({left} more{rest})"] if left else shown)


# Where a user finds every class the bridge translates, which a refusal has no room to list.
_ALL_LISTED = ": the README's Keras versions section lists all"


class Unconvertible(ValueError):
    """Keras 3 layers the service cannot translate to tf_keras."""

    def __init__(self, layers: list[tuple[str, str]]):
        # One problem per layer (a refusal's field violations): the first with the supported
        # classes, and the exception's message.
        cls, name = layers[0]
        first = (
            f"layer {name[:60]!r} ({cls[:60]}): the service cannot translate it to tf_keras for pruning; supported: "
        )
        self.problems = [_names_within(first, sorted(KERAS3_CONVERTIBLE - _CONTAINERS), rest=_ALL_LISTED)] + [
            f"layer {name[:60]!r} ({cls[:60]}): the service cannot translate it to tf_keras for pruning either; refused"
            for cls, name in layers[1:]
        ]
        super().__init__(self.problems[0])
        self.layers = layers


# Keras 3 activation names -> the tf_keras function computing the same thing (the workers'
# bridge translates with this table). Left out on purpose: hard_sigmoid (Keras 3: relu6(x + 3)
# / 6, tf_keras: clip(0.2 x + 0.5)) and those tf_keras lacks (relu6, leaky_relu, log_softmax,
# hard_silu, ...).
KERAS3_ACTIVATIONS = {
    "linear": "linear", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "softmax": "softmax",
    "softplus": "softplus", "softsign": "softsign", "elu": "elu", "selu": "selu",
    "exponential": "exponential", "silu": "swish", "swish": "swish", "gelu": "gelu", "mish": "mish",
}  # fmt: skip


# Keras 3 activations tf_keras lacks (or defines otherwise) that the bridge translates as an
# Activation layer of their own, into tf_keras layers computing the same (MobileNetV3's):
# hard_sigmoid(x) = relu6(x + 3) / 6 = min(max(x / 6 + 0.5, 0), 1): Rescaling(1/6, offset 0.5)
# and ReLU(max_value=1); hard_silu(x) (hard_swish) = x * hard_sigmoid(x): and a Multiply.
KERAS3_LAYER_ACTIVATIONS = frozenset({"hard_sigmoid", "hard_silu", "hard_swish"})
# What the names of the tf_keras layers before the last (which takes the Activation's name) end in
HARD_SIGMOID_PARTS = ("_hard_sigmoid_scale", "_hard_sigmoid")


def expanded_activation_parts(name: str, activation: str) -> list[str]:
    """The names of the tf_keras layers the bridge makes of Activation ``name`` of ``activation``
    (one of :data:`KERAS3_LAYER_ACTIVATIONS`) before the last, which keeps ``name``: the
    Rescaling, then for hard_silu the ReLU (for hard_sigmoid the ReLU is the last)."""
    scale, clip = HARD_SIGMOID_PARTS
    return [name + scale] if activation == "hard_sigmoid" else [name + scale, name + clip]


# Keras 3 activations tf_keras lacks, and the layer (which the bridge translates) doing the same
_ACTIVATION_LAYERS = {
    "relu6": "a ReLU(max_value=6) layer",
    "leaky_relu": "a LeakyReLU layer",
    "log_softmax": "a linear output and a *_from_logits loss",
}


def option_problem(class_name: str, config: dict[str, Any]) -> str | None:
    """Why an option of a Keras 3 layer cannot be translated to tf_keras, read from the
    configuration (the bridge refuses the same when a job loads the model), or None."""
    for key in ("activation", "recurrent_activation"):
        value = config.get(key)
        if isinstance(value, dict) and value.get("class_name") == "function":
            value = value.get("config")
        if class_name == "Activation" and key == "activation" and value in KERAS3_LAYER_ACTIVATIONS:
            continue  # translated into tf_keras layers
        if value is not None and (not isinstance(value, str) or value not in KERAS3_ACTIVATIONS):
            # What to do first: an error answer is cut at 200 bytes, the list of names goes last
            instead = _ACTIVATION_LAYERS.get(str(value))
            if value in KERAS3_LAYER_ACTIVATIONS:
                instead = f"an Activation({value!r}) layer after a linear one"
            fix = f"; use {instead} instead" if instead else ""
            return (
                f"the activation {str(value)[:60]!r} is not translated to tf_keras{fix} "
                f"(translated: {', '.join(sorted(KERAS3_ACTIVATIONS))})"
            )
    if config.get("lora_rank") not in (None, 0):
        return f"option lora_rank={config['lora_rank']!r} (LoRA) has no tf_keras equivalent"
    if class_name == "LayerNormalization" and config.get("rms_scaling"):
        return "option rms_scaling=True has no tf_keras equivalent"
    if class_name == "Resizing":
        for key in ("pad_to_aspect_ratio", "antialias"):
            if config.get(key):
                return f"option {key}=True has no tf_keras equivalent"
    if class_name == "RandomContrast" and list(config.get("value_range") or (0, 255)) != [0, 255]:
        # tf_keras' RandomContrast clips to 0-255
        return f"option value_range={config['value_range']!r} has no tf_keras equivalent (its range is 0-255)"
    if class_name == "MultiHeadAttention":
        if config.get("use_gate"):
            return "option use_gate=True (gated attention) has no tf_keras equivalent"
        if config.get("sliding_window") is not None:
            return f"option sliding_window={config['sliding_window']!r} has no tf_keras equivalent"
    if class_name == "TimeDistributed":
        inner = config.get("layer")
        inner_class = inner.get("class_name") if isinstance(inner, dict) else inner
        if inner_class not in KERAS3_CONVERTIBLE or inner_class in NOT_DISTRIBUTED:
            return (
                f"wraps {str(inner_class)[:60]!r}; the bridge translates a TimeDistributed of a single built-in layer"
            )
    return None


def major_version(version: str, fmt_default: int) -> int:
    head = version.strip().split(".", 1)[0]
    return int(head) if head.isdigit() and int(head) in (2, 3) else fmt_default


def check_convertible(layers: Iterable[tuple[str, str]]) -> None:
    bad = [(cls, name) for cls, name in layers if cls not in KERAS3_CONVERTIBLE]
    if bad:
        raise Unconvertible(bad)


def mixed_policy(config: dict[str, Any]) -> bool:
    """Whether a layer's configuration names a mixed dtype policy (``mixed_float16``,
    ``mixed_bfloat16``): it computes in float16 or bfloat16, which pruning does not take."""
    return _dtype(config).startswith("mixed_")


def _layer_configs(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(class name, config) of every object in a Keras configuration tree, nested ones included."""
    if isinstance(node, list):
        for value in node:
            yield from _layer_configs(value)
    elif isinstance(node, dict):
        cls, cfg = node.get("class_name"), node.get("config")
        if isinstance(cls, str) and isinstance(cfg, dict):
            yield cls, cfg
        for value in node.values():
            yield from _layer_configs(value)


def h5_mask(config: Any, keras_version: int) -> str:
    """The name of what makes a padding mask that Keras 3 writes into an .h5 file as an
    operation (``not_equal``, ``any``) its own loader of .h5 files does not know, or "": a
    functional model's Embedding(mask_zero=True) or Masking, seen in a Keras 3 configuration
    by the operations recorded, in a tf_keras one by the layers (Keras 3 rebuilds the model)."""
    masks = []
    for cls, cfg in _layer_configs(config):
        if cls in MASK_OPERATIONS:
            return str(cfg.get("name", cls))
        if (cls == "Embedding" and cfg.get("mask_zero")) or cls == "Masking":
            masks.append(str(cfg.get("name", cls)))
    sequential = isinstance(config, dict) and config.get("class_name") == "Sequential"
    return masks[0] if masks and keras_version == 2 and not sequential else ""


def operations(config: Any) -> list[tuple[str, str]]:
    """The (name, class) of every tensor operation of a Keras 3 configuration (``x / 255.0``,
    ``h + h2``: nodes of the ``keras.ops`` modules), in the configuration's order."""
    found: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, dict):
            cls, cfg = node.get("class_name"), node.get("config")
            if isinstance(cls, str) and str(node.get("module") or "").startswith(OPERATION_MODULES):
                name = cfg.get("name") if isinstance(cfg, dict) else node.get("name")
                found.append((str(name)[:60], cls[:40]))
                return
            for value in node.values():
                walk(value)

    walk(config)
    return found


def h5_operation(config: Any) -> str:
    """The first tensor operation of a Keras 3 configuration (:func:`operations`) as "name
    (Class)", or "": Keras 3 writes it into an .h5 file as a bare name its own .h5 loader does
    not read back. Padding masks are :func:`h5_mask`'s."""
    return next((f"{name} ({cls})" for name, cls in operations(config) if cls not in MASK_OPERATIONS), "")


def _pair(value: Any) -> list[Any]:
    """A configuration's size or stride as two values: ``3`` or ``[3, 3]`` alike."""
    return [value, value] if isinstance(value, int) else list(value) if isinstance(value, list | tuple) else []


def xnnpack_missing(config: Any) -> list[str]:
    """What TFMOT's PRUNE_FOR_LATENCY_ON_XNNPACK policy needs that the configuration lacks
    altogether (the job checks the rest, such as how they connect): the stem it starts a
    sparse subgraph at, a ZeroPadding2D of 1 then a Conv2D 3x3 with stride 2 and VALID padding,
    and the GlobalAveragePooling2D it ends one at."""
    pad = conv = pool = False
    for cls, cfg in _layer_configs(config):
        if cls == "ZeroPadding2D":
            padding = cfg.get("padding")
            pad |= padding in (1, [1, 1], [[1, 1], [1, 1]])
        elif cls == "Conv2D":
            conv |= (
                _pair(cfg.get("kernel_size")) == [3, 3]
                and _pair(cfg.get("strides")) == [2, 2]
                and str(cfg.get("padding", "")).lower() == "valid"
            )
        elif cls == "GlobalAveragePooling2D":
            pool = True
    missing = []
    if not (pad and conv):
        missing.append("a stem of ZeroPadding2D(1) then Conv2D 3x3, stride 2, VALID padding, on 3 input channels")
    if not pool:
        missing.append("a GlobalAveragePooling2D ending each output branch")
    return missing


def nested_in_functional(config: Any) -> str:
    """The first model nested in a functional model's own layers (by name), or "": Keras 3's
    loader of Keras 2 files cannot connect such a tf_keras model's graph."""
    if not isinstance(config, dict) or config.get("class_name") not in ("Functional", "Model"):
        return ""
    for layer in _top_layers(config):
        if layer.get("class_name") in _CONTAINERS:
            cfg = layer.get("config")
            return str(cfg.get("name", "")) if isinstance(cfg, dict) else str(layer.get("class_name"))
    return ""


def other_float_dtypes(config: Any) -> dict[str, str]:
    """The layers of a prunable class whose own dtype policy is a float other than float32
    (``float16``, ``bfloat16``, ``float64``), by name, with that dtype. Pruning takes them, but
    TFMOT's m-by-n masks are float32 and fail to assign to their kernels."""
    found: dict[str, str] = {}
    for cls, cfg in _layer_configs(config):
        if cls in PRUNABLE and "name" in cfg:
            dtype = _dtype(cfg)
            if dtype != "float32" and not dtype.startswith("mixed_"):
                found[str(cfg["name"])] = dtype
    return found


def left_whole(config: Any, keras_version: int) -> dict[str, str]:
    """The layers of a prunable class that a job leaves whole, by name, with the reason:
    "frozen" (``trainable`` false, or in a frozen model: the worker prunes trainable weights only),
    "wrapped" (inside a Bidirectional or TimeDistributed, which TFMOT does not prune), "nested"
    (inside a model nested in a tf_keras one: TFMOT wraps the outer model's layers only; the
    bridge opens nested Keras 3 models up), "mixed precision" (a ``mixed_float16`` or
    ``mixed_bfloat16`` dtype policy, which pruning does not take: :func:`pruning_core.plan.check`
    refuses such a model), "activity regularizer" (TFMOT's wrapper cannot carry one). A name a pruned layer has too (a head named
    ``dense`` over a frozen base with its own ``dense``) is not listed: names are all the
    summary and the plan go by, and a layer the job prunes is never shown left whole."""
    found: dict[str, str] = {}
    pruned: set[str] = set()

    def walk(node: Any, why: str, depth: int) -> None:
        if isinstance(node, list):
            for value in node:
                walk(value, why, depth)
            return
        if not isinstance(node, dict):
            return
        cls, cfg = node.get("class_name"), node.get("config")
        if not (isinstance(cls, str) and isinstance(cfg, dict) and "name" in cfg):
            for value in node.values():
                walk(value, why, depth)
            return
        # A frozen tf_keras model freezes what it holds; in Keras 3 each layer's own flag
        # counts (a frozen base with its last block unfrozen trains that block).
        own = "frozen" if cfg.get("trainable") is False else why
        if cls in PRUNABLE:
            # A layer's own dtype policy: it does not pass to the layers it holds, which have theirs.
            reason = own or ("mixed precision" if mixed_policy(cfg) else "")
            # TFMOT's wrapper cannot carry an activity regularizer (its loss is made in a graph
            # the training step cannot reach): the layer is left whole, not the job failed
            reason = reason or ("activity regularizer" if cfg.get("activity_regularizer") else "")
            if reason:
                found[str(cfg["name"])] = reason
            else:
                pruned.add(str(cfg["name"]))
        inner = own if keras_version == 2 else why
        if cls in _WRAPPERS:
            inner = own or "wrapped"
        elif cls in _CONTAINERS:
            inner = inner or ("nested" if depth and keras_version == 2 else "")
            depth += 1
        walk(cfg, inner, depth)

    walk(config, "", 0)
    return {name: why for name, why in found.items() if name not in pruned}


def masked_arithmetic(config: Any) -> str | None:
    """The first arithmetic operation on two tensors in a Keras 3 configuration that also
    computes a padding mask (``Embedding(mask_zero=True)``, ``Masking``), or None: Keras 3's
    operations drop the mask, the layers the bridge would make of them pass it on."""
    masks, operations = False, []

    def walk(node: Any) -> None:
        nonlocal masks
        if isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, dict):
            cls, cfg = node.get("class_name"), node.get("config")
            if isinstance(cfg, dict) and (cls == "Masking" or (cls == "Embedding" and cfg.get("mask_zero"))):
                masks = True
            if cls in TWO_TENSOR_OPERATIONS and str(node.get("module", "")).startswith(OPERATION_MODULES):
                operations.append(str(cfg.get("name") if isinstance(cfg, dict) else node.get("name")))
            for value in node.values():
                walk(value)

    walk(config)
    return operations[0] if masks and operations else None


def _tensor_sources(value: Any) -> Iterator[str]:
    """The names of the nodes whose outputs ``value`` (an inbound node's args or kwargs) names."""
    if isinstance(value, list):
        for item in value:
            yield from _tensor_sources(item)
    elif isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = (value.get("config") or {}).get("keras_history")
            if isinstance(history, list) and history:
                yield str(history[0])
            return
        for item in value.values():
            yield from _tensor_sources(item)


def _functional_models(node: Any) -> Iterator[dict]:
    """The configurations of the functional models in a Keras config tree (nested ones too)."""
    if isinstance(node, list):
        for item in node:
            yield from _functional_models(item)
    elif isinstance(node, dict):
        cfg = node.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("layers"), list):
            yield cfg
        for item in node.values():
            yield from _functional_models(item)


def _node_name(node: dict) -> str:
    return str(node.get("name") or (node.get("config") or {}).get("name"))


def _output_names(model: dict) -> list[str]:
    outputs = model.get("output_layers")  # [[name, node, tensor], ...], or one such list
    if not isinstance(outputs, list):
        return []
    return [str(o[0]) for o in outputs if isinstance(o, list) and o] or (
        [str(outputs[0])] if outputs and isinstance(outputs[0], str) else []
    )


def mask_merges(config: Any) -> tuple[frozenset[str], list[str]]:
    """The operation nodes of a Keras 3 configuration that only compute padding masks, and the
    layers whose ``mask=`` they make beyond what the bridge translates. Keras 3 records the
    mask a merge layer (Add, Concatenate, ...) passes on as keras.ops calls (``logical_or``,
    ``expand_dims``, ``concatenate`` ...) whose outputs reach only ``mask=`` arguments; they
    are no data operation of the user's. Returns (their names, the layers they give a mask to,
    where an operation other than :data:`MASK_OPERATIONS` takes part)."""
    only: set[str] = set()
    fed: list[str] = []
    for model in _functional_models(config):
        nodes = [n for n in model["layers"] if isinstance(n, dict)]
        ops = {
            _node_name(n): str(n.get("class_name"))
            for n in nodes
            if str(n.get("module") or "").startswith(OPERATION_MODULES)
        }
        if not ops:
            continue
        data_uses: dict[str, set[str]] = {}  # an operation -> the nodes that use it otherwise than as a mask
        # (the sources of a layer's mask, the sources of its data): the merge a mask comes out of
        # is the data source of the layer it is given to
        calls: list[tuple[list[str], list[str]]] = []
        sources: dict[str, set[str]] = {}  # a node -> the nodes its data comes from
        calls_of: dict[str, list[dict]] = {}  # an operation -> its inbound nodes (args, kwargs)
        for n in nodes:
            for inbound in n.get("inbound_nodes") or []:
                if not isinstance(inbound, dict):
                    continue
                calls_of.setdefault(_node_name(n), []).append(inbound)
                kwargs = inbound.get("kwargs")
                others = {k: v for k, v in kwargs.items() if k != "mask"} if isinstance(kwargs, dict) else {}
                data = [*_tensor_sources(inbound.get("args")), *_tensor_sources(others)]
                for name in data:
                    data_uses.setdefault(name, set()).add(_node_name(n))
                sources.setdefault(_node_name(n), set()).update(data)
                if isinstance(kwargs, dict):
                    calls.append((list(_tensor_sources(kwargs.get("mask"))), data))
        outputs = set(_output_names(model))
        candidates = {name for name in ops if name not in outputs}
        changed = True
        while changed:  # an operation stays while every data use of it is by another one that stays
            changed = False
            for name in sorted(candidates):
                if not data_uses.get(name, set()) <= candidates:
                    candidates.discard(name)
                    changed = True
        # Those made of a padding mask (the ``not_equal`` of Embedding(mask_zero), Masking's
        # ``any``): a mask the user computes (ops on inputs of their own) is not a merge's
        padded = {name for name in candidates if ops[name] in MASK_OPERATIONS}
        grown = True
        while grown:
            grown = False
            for name in sorted(candidates - padded):
                # made of one, or used only to make one (the zeros_like of a merge's data)
                uses = data_uses.get(name, set())
                if sources.get(name, set()) & padded or (uses and uses <= padded):
                    padded.add(name)
                    grown = True
        merging = {name for name in padded if ops[name] not in MASK_OPERATIONS}
        grown = True
        while grown:  # and the masks made of theirs (``any`` over a concatenated mask)
            grown = False
            for name in sorted(padded - merging):
                if sources.get(name, set()) & merging:
                    merging.add(name)
                    grown = True
        candidates = padded
        if merging:
            only |= candidates
            configs = {_node_name(n): n.get("config") for n in nodes}
            bases = _mask_bases(padded, merging, ops, sources, _MaskKeys(ops, calls_of, configs))
            for masks, data in calls:
                given = merging & set(masks)
                # One padding mask on every input of the merges (a residual connection over a
                # masked sequence): the OR of Keras 3 and the AND of tf_keras are that mask.
                if given and any(len(bases[name]) != 1 for name in given):
                    fed += [name for name in data if name not in candidates and name not in fed]
    return frozenset(only), fed


_NEUTRAL_MASKS = frozenset({"ZerosLike"})  # OR-ed with a mask to broadcast it to a merge's data
_NO_MASK = "<unmasked>"  # a merge's input without a mask: Keras 3 takes it as all True


class _MaskKeys:
    """What a padding mask operation computes, as a comparable key: its class, its arguments
    (a tensor by the node and output it comes from, a mask operation by its own key, a number
    by its value) and its axis. Two Embeddings of one token input record two ``not_equal(tokens,
    0)``, two Masking layers of one input with one mask value two ``any(not_equal(x, v))``: one
    mask each time, as the bridge sees it (``pruning_worker.bridge._mask_source``)."""

    def __init__(self, ops: dict[str, str], calls_of: dict[str, list[dict]], configs: dict[str, Any]):
        self.ops, self.calls_of, self.configs = ops, calls_of, configs
        self.keys: dict[str, str] = {}

    def __call__(self, name: str, depth: int = 0) -> str:
        if name in self.keys:
            return self.keys[name]
        calls = self.calls_of.get(name, [])
        if self.ops.get(name) not in MASK_OPERATIONS or len(calls) != 1 or depth > 16:
            return name
        found = self.configs.get(name)
        config: dict = found if isinstance(found, dict) else {}

        def canonical(value: Any) -> Any:
            if isinstance(value, list):
                return [canonical(v) for v in value]
            if isinstance(value, dict):
                if value.get("class_name") == "__keras_tensor__":
                    history = (value.get("config") or {}).get("keras_history")
                    if isinstance(history, list) and history:
                        source = str(history[0])
                        if self.ops.get(source) in MASK_OPERATIONS:
                            return ["mask", self(source, depth + 1), history[1:]]
                        return ["tensor", history]
                return {k: canonical(v) for k, v in value.items()}
            return value

        arguments = canonical([calls[0].get("args"), calls[0].get("kwargs")])
        options = {k: config.get(k) for k in ("axis", "keepdims")}
        key = json.dumps([self.ops[name], arguments, options], sort_keys=True, default=repr)
        self.keys[name] = key
        return key

    def along_steps(self, name: str) -> bool:
        """Whether ``name`` is the ``concatenate`` of a Concatenate layer's masks along an axis
        other than the last (the steps): each mask keeps its own steps, in Keras 3 and tf_keras."""
        calls = self.calls_of.get(name, [])
        config = self.configs.get(name)
        if self.ops.get(name) != "Concatenate" or len(calls) != 1 or not isinstance(config, dict):
            return False
        shapes = [
            (t.get("config") or {}).get("shape")
            for t in (calls[0].get("args") or [[]])[0] or []
            if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__"
        ]
        axis = config.get("axis")
        if not shapes or not isinstance(shapes[0], list) or not isinstance(axis, int):
            return False
        return axis % len(shapes[0]) != len(shapes[0]) - 1


def _mask_bases(
    padded: set[str],
    merging: set[str],
    ops: dict[str, str],
    sources: dict[str, set[str]],
    key: _MaskKeys,
) -> dict[str, frozenset[str]]:
    """The padding masks (the ``not_equal`` of an Embedding, the ``any`` of a Masking layer)
    each mask operation of a merge is made of, by ``key`` (what each computes); an input
    without a mask (Keras 3's ``ones_like``) counts as one of its own."""
    bases: dict[str, frozenset[str]] = {}

    def base(name: str, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        if name in bases:
            return bases[name]
        if name not in merging:
            found = frozenset({key(name)})
        elif ops.get(name) in _NEUTRAL_MASKS:
            found = frozenset()
        elif ops.get(name) == "OnesLike":
            found = frozenset({_NO_MASK + name})
        else:
            parts = [base(s, seen | {name}) for s in sorted(sources.get(name, set()) & padded) if s not in seen]
            found = frozenset().union(*parts)
            if key.along_steps(name) and not any(b.startswith(_NO_MASK) for b in found):
                found = frozenset({name})  # the masks side by side along the steps: one mask
        bases[name] = found
        return found

    for name in merging:
        base(name)
    return bases


def mask_operation_on_data(config: Any) -> str | None:
    """The first mask operation (:data:`MASK_OPERATIONS`: ``not_equal``, ``any``,
    ``convert_to_tensor``) of a Keras 3 functional model whose output is used otherwise than
    as a mask (a layer's input, another operation's, a model output), as "name (Class)", or
    None. The bridge translates them only as masks, and would refuse the model when a job
    loads it."""
    merging = mask_merges(config)[0]
    for model in _functional_models(config):
        nodes = [n for n in model["layers"] if isinstance(n, dict)]
        masks = {
            _node_name(n): str(n.get("class_name"))
            for n in nodes
            if n.get("class_name") in MASK_OPERATIONS and str(n.get("module") or "").startswith(OPERATION_MODULES)
        }
        if not masks:
            continue
        for n in nodes:
            if _node_name(n) in masks or _node_name(n) in merging:
                continue  # a mask made of a mask: not_equal then any, a converted mask, a merge's mask
            for inbound in n.get("inbound_nodes") or []:
                if not isinstance(inbound, dict):
                    continue
                kwargs = inbound.get("kwargs")
                others = {k: v for k, v in kwargs.items() if k != "mask"} if isinstance(kwargs, dict) else {}
                used = [*_tensor_sources(inbound.get("args")), *_tensor_sources(others)]
                if found := next((name for name in used if name in masks), None):
                    return f"{found[:60]} ({masks[found]})"
        if found := next((name for name in _output_names(model) if name in masks), None):
            return f"{found[:60]} ({masks[found]})"
    return None


# Layers whose ``axis`` Keras 3's loader of Keras 2 (HDF5) files keeps only when it is one
# number: it drops None (a scalar statistic) and several axes, and builds the layer at its
# default (-1), whose weights then do not fit.
_AXIS_LAYERS = ("Normalization", "LayerNormalization", "UnitNormalization")


def axes_lost_by_the_keras3_loader(config: Any) -> list[tuple[str, str, Any]]:
    """(name, class, axis) of each layer of a configuration whose axis Keras 3's loader of
    Keras 2 files would drop: a model that goes back to Keras 3 through that loader (channels
    removed, or a tf_keras upload asked back as Keras 3) fails there, after its training."""
    found: list[tuple[str, str, Any]] = []
    for cls, cfg in _layer_configs(config):
        if cls in _AXIS_LAYERS and "axis" in cfg:
            axis = cfg["axis"]
            if axis is None or (isinstance(axis, list | tuple) and len(axis) != 1):
                found.append((str(cfg.get("name")), str(cls), axis))
    return found


def _snake(class_name: str) -> str:
    # As Keras names the groups of a .keras weights file (keras.src.utils.naming.to_snake_case).
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _weight_groups(config: Any, prefix: str = "") -> dict[str, str]:
    """Group paths of a .keras weights file ("layers/dense_1", "layers/sequential/layers/conv2d")
    to layer names: each container numbers its layers by class, in order."""
    out: dict[str, str] = {}
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    used: dict[str, int] = {}
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
            continue
        base = _snake(layer["class_name"])
        used[base] = used.get(base, -1) + 1
        group = f"{prefix}layers/{base}" + (f"_{used[base]}" if used[base] else "")
        cfg = layer.get("config")
        if isinstance(cfg, dict):
            out[group] = str(cfg.get("name", ""))
        out |= _weight_groups(layer, group + "/")
    return out


def _params_by_layer(weights: list[tuple[str, list[int]]], names: set[str], groups: dict[str, str]) -> dict[str, int]:
    """Attributes each weight to its layer: by the group path of a .keras weights file, else
    (legacy .h5, grouped by layer name) by the deepest layer name on its path."""
    out: dict[str, int] = {}
    for path, shape in weights:
        owner = _owner(path, names, groups)
        if owner is not None:
            size = 1
            for dim in shape:
                size *= int(dim)
            out[owner] = out.get(owner, 0) + size
    return out


def kernel_inputs(
    config: dict[str, Any], all_layers: list[tuple[str, str]], weights: list[tuple[str, list[int]]]
) -> dict[str, int]:
    """The input channels of each layer's kernel (its first 2-D or 4-D weight: (in, out) or
    (height, width, in, out), as Keras stores both), from the weights file's shapes."""
    names, groups = {name for _, name in all_layers}, _weight_groups(config)
    out: dict[str, int] = {}
    for path, shape in weights:
        if len(shape) in (2, 4) and (owner := _owner(path, names, groups)) is not None and owner not in out:
            out[owner] = int(shape[-2])
    return out


def _owner(path: str, names: set[str], groups: dict[str, str]) -> str | None:
    """The layer a weight belongs to: by the group path of a .keras weights file, else (legacy
    .h5, grouped by layer name) by the deepest layer name on its path."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    owner = next((groups[p] for p in prefixes if p in groups), None)
    return owner if owner is not None else next((part for part in reversed(parts) if part in names), None)


def _shape(value: Any) -> list[int]:
    if isinstance(value, dict):  # a serialised tuple
        inner = value.get("config")
        value = inner.get("value") if isinstance(inner, dict) else None
    if isinstance(value, list) and value and all(d is None or isinstance(d, int) for d in value):
        return [-1 if d is None else d for d in value[1:]]
    return []


def _activation(layer: dict[str, Any]) -> str:
    """A layer's activation as its configuration names it ("softmax" for a Softmax layer),
    else ""."""
    if layer.get("class_name") == "Softmax":
        return "softmax"
    config = layer.get("config")
    value = config.get("activation") if isinstance(config, dict) else None
    if isinstance(value, dict):  # Keras 3 may write {"class_name": "function", "config": "softmax"}
        value = value.get("config") if value.get("class_name") == "function" else value.get("class_name")
    return value if isinstance(value, str) else ""


def _dtype(config: dict[str, Any]) -> str:
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        dtype = inner.get("name") if isinstance(inner, dict) else None
    return dtype if isinstance(dtype, str) else "float32"


def _top_layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return [layer for layer in layers or [] if isinstance(layer, dict)]


def _output_layers(config: dict[str, Any], layers: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(output name, layer name) of each output: the dict's key for ``Model(x, {"cls": ...})``
    (labels go by it), else the layer's name."""
    inner = config.get("config")
    named = inner.get("output_layers") if isinstance(inner, dict) else None
    if isinstance(named, dict) and named:
        return [(str(k), str(v[0]) if isinstance(v, list) and v else str(k)) for k, v in named.items()]
    if isinstance(named, list) and named:
        if isinstance(named[0], str):  # a single output: [name, node, tensor]
            named = [named]
        return [(str(item[0]), str(item[0])) for item in named if isinstance(item, list) and item]
    last = layers[-1].get("config") if layers else None
    return [(str(last.get("name")), str(last.get("name")))] if isinstance(last, dict) else []


def summarize(
    config: dict[str, Any],
    all_layers: list[tuple[str, str]],
    weights: list[tuple[str, list[int]]],
    keras_version: int,
    version_string: str,
) -> pb.ModelSummary:
    """The summary of a checked model configuration and the shapes in its weights file."""
    summary = pb.ModelSummary(keras_version=keras_version, keras_version_string=version_string)
    params = _params_by_layer(weights, {name for _, name in all_layers}, _weight_groups(config))
    whole = left_whole(config, keras_version)
    top = _top_layers(config)
    # The inputs are the InputLayers; a layer given input_shape= is one only where the
    # configuration has no InputLayer (tf_keras writes both for a Sequential built so: one input).
    has_input_layer = any(layer.get("class_name") == "InputLayer" for layer in top)
    for layer in top:
        cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        assert isinstance(cfg, dict)
        if layer.get("class_name") == "InputLayer" or (
            not has_input_layer and ("batch_input_shape" in cfg or "batch_shape" in cfg)
        ):
            shape = _shape(cfg.get("batch_input_shape") or cfg.get("batch_shape"))
            if shape:
                summary.inputs.add(name=str(cfg.get("name", "")), shape=shape, dtype=_dtype(cfg))
    by_name = {str(layer["config"].get("name")): layer for layer in top if isinstance(layer.get("config"), dict)}
    for name, layer_name in _output_layers(config, top):
        layer = by_name.get(layer_name, {})
        cfg = layer.get("config", {})
        units = cfg.get("units") if layer.get("class_name") == "Dense" else None
        summary.outputs.add(
            name=name,
            shape=[units] if isinstance(units, int) else [-1],
            dtype=_dtype(cfg),
            activation=_activation(layer),
        )
    summary.operations.extend(f"{name} ({cls})" for name, cls in operations(config))
    inner = config.get("config")
    root = (config.get("class_name"), inner.get("name") if isinstance(inner, dict) else None)
    for cls, name in all_layers:
        if (cls, name) == root:
            continue  # the model itself is no layer of its own
        summary.layers.add(
            name=name,
            class_name=cls,
            params=params.get(name, 0),
            prunable=cls in PRUNABLE and name not in whole,
            convertible=keras_version == 2 or cls in KERAS3_CONVERTIBLE,
            left_whole=whole.get(name, "") if cls in PRUNABLE else "",
        )
    summary.total_params = sum(params.values())
    return summary
