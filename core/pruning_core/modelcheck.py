"""Inspects uploaded models and datasets without deserialising them (no TensorFlow).

Model files are untrusted: the saved configuration is read as JSON and every class it
names must be a built-in Keras class from :data:`ALLOWED_CLASSES`. Lambda layers (which
carry code) and custom objects are refused before anything could execute them. Workers
run the same check again before they load a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import re
import shutil
import struct
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format

from pruning.v1 import pruning_pb2 as pb

from . import preflight, zipscan

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
DATASET_ARRAYS = ("x_train", "y_train", "x_test", "y_test")

_LAYERS = """
InputLayer Sequential Functional Model Dense Conv1D Conv2D Conv3D Conv1DTranspose
Conv2DTranspose Conv3DTranspose DepthwiseConv1D DepthwiseConv2D SeparableConv1D SeparableConv2D
MaxPooling1D MaxPooling2D MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D
GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalAveragePooling1D
GlobalAveragePooling2D GlobalAveragePooling3D MaxPool1D MaxPool2D MaxPool3D AvgPool1D AvgPool2D
AvgPool3D Flatten Reshape Permute RepeatVector Dropout SpatialDropout1D SpatialDropout2D
SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout BatchNormalization
LayerNormalization GroupNormalization UnitNormalization Activation ReLU LeakyReLU PReLU ELU
ThresholdedReLU Softmax Add Subtract Multiply Average Maximum Minimum Concatenate Dot
ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D UpSampling1D
UpSampling2D UpSampling3D Embedding LSTM GRU SimpleRNN Bidirectional TimeDistributed
Masking Rescaling Normalization CenterCrop Resizing Identity MultiHeadAttention RandomFlip
RandomRotation RandomZoom RandomTranslation RandomContrast RandomBrightness ActivityRegularization
Attention AdditiveAttention ConvLSTM1D ConvLSTM2D ConvLSTM3D
"""
_OTHERS = """
GlorotUniform GlorotNormal HeUniform HeNormal LecunUniform LecunNormal RandomNormal
RandomUniform TruncatedNormal Zeros Ones Constant VarianceScaling Orthogonal Identity
L1 L2 L1L2 OrthogonalRegularizer MaxNorm MinMaxNorm NonNeg UnitNorm RadialConstraint
Policy DTypePolicy FloatDTypePolicy __tuple__ __numpy__ __keras_tensor__ TensorShape NotEqual Any
ConvertToTensor
"""
# NotEqual and Any: the operations a Keras 3 file records for the masks of Embedding(mask_zero)
# and Masking, ConvertToTensor for the output mask of Attention and AdditiveAttention (the
# bridge refuses any other use of them); every other operation is refused here.
ALLOWED_CLASSES = frozenset(_LAYERS.split()) | frozenset(_OTHERS.split())
_ALLOWED_MODULE_ROOTS = ("keras", "tf_keras", "builtins")
# Workers load models uncompiled: the saved compile settings are never deserialised.
_NOT_LOADED = frozenset({"compile_config", "training_config"})
# Archive members are read through these bounds, never whole: a configuration larger than this
# is refused as it is read, and every member is decompressed in chunks against its declared size.
MAX_CONFIG_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
# An .npz holds an array per member (one per input and output of each split), a .keras three or
# four files: far more members are a directory built to cost the reader, not a model or dataset.
MAX_ARCHIVE_MEMBERS = 10_000
MAX_CENTRAL_DIRECTORY_BYTES = 4 * 1024 * 1024
_NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def _inspection() -> str:
    """A fingerprint of the code that inspects uploads (this module, the preflight, the
    archive scan): a record written by other code is inspected again when its content is
    uploaded again. Where a module's source cannot be read (an unusual install), a value of
    this process alone: nothing inspected before counts as inspected by it."""
    digest = hashlib.sha256()
    try:
        for module in (sys.modules[__name__], preflight, zipscan):
            get_data = getattr(module.__loader__, "get_data", None)
            if module.__file__ is None or get_data is None:
                raise OSError(f"no source for {module.__name__}")
            digest.update(get_data(module.__file__))
    except (OSError, AttributeError):
        return uuid.uuid4().hex[:16]
    return digest.hexdigest()[:16]


INSPECTION = _inspection()


class ModelRejected(ValueError):
    """The file is not a model this service accepts; ``field`` names what is wrong, and
    ``violations`` holds each problem found as (field, description): the refused layers of a
    model, all of them (the first MAX_LAYER_PROBLEMS; ``unlisted`` counts the rest)."""

    def __init__(self, message: str, field: str = "model", more: Sequence[str] = (), unlisted: int = 0):
        super().__init__(message)
        self.field = field
        self.violations = [(field, message), *((field, m) for m in more)]
        self.unlisted = unlisted

    @property
    def total(self) -> int:
        return len(self.violations) + self.unlisted


MAX_LAYER_PROBLEMS = 100  # refused layers kept, then only counted (an answer lists PRUNING_MAX_VIOLATIONS)


class _Refusals:
    """Why each refused layer is refused: the first MAX_LAYER_PROBLEMS, and how many more."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.unlisted = 0

    def append(self, problem: str) -> None:
        if len(self.problems) < MAX_LAYER_PROBLEMS:
            self.problems.append(problem)
        else:
            self.unlisted += 1


@dataclass
class ModelInfo:
    format: str
    layers: list[tuple[str, str]] = field(default_factory=list)
    input_shape: list[int | None] | None = None
    keras_version: int = 2
    summary: pb.ModelSummary = field(default_factory=pb.ModelSummary)
    mixed_precision: list[str] = field(default_factory=list)  # layers computing in float16 or bfloat16
    left_whole: dict[str, str] = field(default_factory=dict)  # prunable-class layers no job prunes -> why
    other_dtypes: dict[str, str] = field(default_factory=dict)  # prunable-class layers in float16/64 -> dtype
    h5_mask: str = ""  # what makes a padding mask Keras 3 writes into an .h5 it cannot read (preflight.h5_mask)
    h5_operation: str = ""  # a tensor operation Keras 3 writes into an .h5 it cannot read (preflight.h5_operation)
    xnnpack_missing: list[str] = field(default_factory=list)  # what the XNNPACK policy needs (preflight)
    nested_in_functional: str = ""  # a model nested in a functional one (preflight.nested_in_functional)
    kernel_inputs: dict[str, int] = field(default_factory=dict)  # layer -> its kernel's input channels
    # layers whose axis Keras 3's loader of Keras 2 files drops: [name, class, axis]
    axes_lost: list[list[Any]] = field(default_factory=list)
    # what the weights' datasets take once read (shape x dtype, summed; at most max_decompressed):
    # the worker builds the model from its configuration within this (safe_load.VariableBudget)
    weight_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "layers": self.layers,
            "mixed_precision": self.mixed_precision,
            "left_whole": self.left_whole,
            "other_dtypes": self.other_dtypes,
            "h5_mask": self.h5_mask,
            "h5_operation": self.h5_operation,
            "xnnpack_missing": self.xnnpack_missing,
            "nested_in_functional": self.nested_in_functional,
            "axes_lost": self.axes_lost,
            "kernel_inputs": self.kernel_inputs,
            "input_shape": self.input_shape,
            "keras_version": self.keras_version,
            "summary": json_format.MessageToDict(self.summary),
        }


def sniff_format(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(HDF5_SIGNATURE):
        return "h5"
    if head.startswith(ZIP_SIGNATURE):
        return "zip"
    raise ModelRejected("not a Keras model: expected a .keras (zip) or .h5 (HDF5) file")


def _directory_bounds(path: pathlib.Path) -> None:
    """Refuses an archive whose central directory (as its end record says) lists more than
    MAX_ARCHIVE_MEMBERS members or takes more than MAX_CENTRAL_DIRECTORY_BYTES, before zipfile
    reads it: zipfile makes an object of every entry, and a 174 MB upload of 2 million empty
    members took the server 950 MiB and 75 s of CPU to take in."""
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # the end record, zip64's too
    except (OSError, ValueError, struct.error):
        return  # zipfile says what is wrong with it
    if not end:
        return
    members, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if members > MAX_ARCHIVE_MEMBERS:
        raise ModelRejected(f"the archive has {members} members, over the limit of {MAX_ARCHIVE_MEMBERS}")
    if size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise ModelRejected(
            f"the archive's directory takes {size} bytes, over the limit of {MAX_CENTRAL_DIRECTORY_BYTES}"
        )


def _checked_zip(path: pathlib.Path, max_decompressed: int) -> zipfile.ZipFile:
    _directory_bounds(path)
    try:
        archive = zipfile.ZipFile(path)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        # ValueError: a name flagged UTF-8 that is not; NotImplementedError: an unknown zip version
        raise ModelRejected(f"the archive is truncated or corrupt: {exc}") from None
    if len(infos) > MAX_ARCHIVE_MEMBERS:  # an end record that undercounts its directory
        archive.close()
        raise ModelRejected(f"the archive has {len(infos)} members, over the limit of {MAX_ARCHIVE_MEMBERS}")
    total = sum(info.file_size for info in infos)
    if total > max_decompressed:
        raise ModelRejected(f"the archive expands to {total} bytes, over the limit of {max_decompressed}")
    return archive


# Classes that compute nothing of their own: a model's dtype policy is the default of its layers.
_NOT_COMPUTING = frozenset({"InputLayer", "Sequential", "Functional", "Model"})


# What TensorFlow takes as the name of a scope at the root of a graph: every layer's name is one
# when the model is traced for training.
_TF_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")


def _walk_classes(
    node,
    found: list[tuple[str, str]],
    mixed: list[str],
    options: list[tuple[str, str, str]],
    refused: _Refusals,
    root: bool = False,
    masks: frozenset[str] = frozenset(),
):
    """Checks every ``class_name`` in a Keras config tree; collects (class, name) of layers,
    into ``mixed`` the names of those whose dtype policy is a mixed one (``mixed_float16``;
    layers that compute only: not a model, nor an InputLayer),
    into ``options`` (name, class, why) the options a Keras 3 layer has that tf_keras lacks,
    and into ``refused`` why each layer the service does not take is refused (a Lambda, a
    custom class, an operation it does not translate), walking on past them."""
    if isinstance(node, dict):
        if "class_name" in node:
            cls = node["class_name"]
            if not isinstance(cls, str):
                raise ModelRejected("the model configuration is malformed (class_name is not a string)")
            module = node.get("module") or "keras"
            if cls == "Lambda" or cls.endswith(">Lambda"):
                config = node.get("config")
                name = config.get("name") if isinstance(config, dict) else None
                which = f"layer {str(name)[:60]!r} (Lambda)" if name is not None else "a Lambda layer"
                refused.append(
                    f"{which} would run arbitrary code; refused: rebuild what it computes from built-in "
                    "Keras layers (custom layer classes, registered or not, are refused too)"
                )
                return
            if str(module).startswith(preflight.OPERATION_MODULES) and cls not in preflight.MASK_OPERATIONS:
                config = node.get("config")
                if (node.get("name") or (config.get("name") if isinstance(config, dict) else None)) in masks:
                    return  # a merge layer's padding mask, said once below
                if not preflight.operation_translated(cls, node.get("inbound_nodes")):
                    refused.append(_operation_refused(node, cls))
                return  # arithmetic the bridge makes a layer of: tensors and a number, nothing else
            config = node.get("config")
            if (
                "module" not in node
                and isinstance(config, dict)
                and set(config) == {"name"}
                and ">" not in cls  # a registered custom class: custom code, refused below
                and cls not in ("InputLayer", *preflight.MASK_OPERATIONS)  # a mask's: said below, more precisely
            ):
                # Keras 3 writes an operation (``x / 255.0``, ``h + h2``: TrueDivide, or Add and
                # Multiply as if layers) into an .h5 file as a bare name its own .h5 loader does not
                # read back as it was; a layer's configuration holds more than its name
                operation = str(config["name"])[:60]
                refused.append(
                    f"the model uses {operation!r} ({cls[:60]}), a tensor operation (x / 255.0, h + h2, ...) Keras 3 "
                    "writes into an .h5 file but cannot read back: save the model as .keras; refused"
                )
                return
            if cls not in ALLOWED_CLASSES or not str(module).startswith(_ALLOWED_MODULE_ROOTS):
                config = node.get("config")
                name = config.get("name") if isinstance(config, dict) else None
                what = f"layer {str(name)[:200]!r} ({cls[:200]})" if name is not None else f"the class {cls[:200]}"
                # "package>Name" is a registered custom class (an .h5 names it so, with no module)
                builtin = (
                    str(module).startswith("keras") and node.get("registered_name") in (None, cls) and ">" not in cls
                )
                if root and not builtin:
                    raise ModelRejected(
                        f"the model subclasses keras.Model ({cls[:40]}): its code would run on the worker; "
                        "refused: rebuild it as a Functional or Sequential model of built-in layers"
                    )
                if cls == "__tensor__":  # a tensor the graph holds as a value: keras.ops.arange(64), ...
                    what = "a constant tensor made outside its inputs (keras.ops.arange(n) for positions, ...)"
                    why = (
                        "which Keras 3 stores as a value, not as a layer; feed it as an Input, or use a layer "
                        "that holds it as a weight"
                    )
                elif builtin:
                    why = "a Keras class the service does not take"
                else:
                    what = f"layer {str(name)[:60]!r} ({cls[:60]})" if name is not None else f"the class {cls[:60]}"
                    why = "not a built-in Keras class (its code would run on the worker): build it from built-in layers"
                refused.append(f"the model uses {what}, {why}; refused")
                return
            if (
                "registered_name" in node
                and node["registered_name"] not in (None, cls)
                and not str(node["registered_name"]).startswith(("keras", "tf_keras"))
            ):
                refused.append(f"the model uses the custom object {str(node['registered_name'])[:200]!r}; refused")
                return
            config = node.get("config")
            if isinstance(config, dict) and "name" in config and cls in _LAYERS.split():
                found.append((cls, str(config["name"])))
                # A model's own policy is only the default of the layers it holds, each of which names
                # its own; an InputLayer computes nothing: neither is a layer that computes in it.
                if cls not in _NOT_COMPUTING and preflight.mixed_policy(config):
                    mixed.append(str(config["name"]))
                problem = preflight.option_problem(cls, config)
                if problem is not None:
                    options.append((str(config["name"]), cls, problem))
        for key, value in node.items():
            if key not in _NOT_LOADED:
                _walk_classes(value, found, mixed, options, refused, masks=masks)
    elif isinstance(node, list):
        for value in node:
            _walk_classes(value, found, mixed, options, refused, masks=masks)


def _names_twice(layers: list[tuple[str, str]]) -> list[str]:
    """Names two layers have (inputs and nested models aside): in different models nested in
    one another, as a model cannot hold two."""
    seen: dict[str, int] = {}
    for cls, name in layers:
        if cls not in ("InputLayer", "Functional", "Sequential", "Model"):
            seen[name] = seen.get(name, 0) + 1
    return sorted(name for name, n in seen.items() if n > 1)


def _operation_refused(node: dict, cls: str) -> str:
    config = node.get("config")
    name = config.get("name") if isinstance(config, dict) else node.get("name")
    instead = preflight.OPERATION_LAYERS.get(cls)
    return (
        f"the model uses {str(name)[:60]!r} ({cls[:60]}), a keras.ops call or an operator on tensors (a + b), "
        f"not a layer; use {instead or 'a layer'} instead; refused"
    )


def _input_shape(config: dict) -> list[int | None] | None:
    """The first layer's declared input shape without the batch axis (None when unknown)."""
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
        return None
    cfg = layers[0].get("config")
    if not isinstance(cfg, dict):
        return None
    shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
    if isinstance(shape, dict):  # a serialised tuple
        inner = shape.get("config")
        shape = inner.get("value") if isinstance(inner, dict) else None
    if isinstance(shape, list) and len(shape) > 1 and all(d is None or isinstance(d, int) for d in shape):
        return list(shape[1:])
    return None


def check_model_config(
    config: dict, fmt: str, version_string: str = "", weights: list[tuple[str, list[int]]] | None = None
) -> ModelInfo:
    """Checks a model configuration (no code, no custom objects; for Keras 3 only layers the
    service translates) and summarises it."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelRejected("the file holds no Keras model configuration")
    layers: list[tuple[str, str]] = []
    mixed: list[str] = []
    options: list[tuple[str, str, str]] = []
    refused = _Refusals()
    merging, merged = preflight.mask_merges(config)
    try:
        _walk_classes(config, layers, mixed, options, refused, root=True, masks=merging)
    except RecursionError:
        raise ModelRejected("the model configuration is nested too deeply") from None
    # Every problem found, in one answer: a model with several is fixed before the next upload.
    for _, name in layers:
        if not _TF_NAME.fullmatch(name):
            refused.append(
                f"the layer name {name[:60]!r} cannot name a TensorFlow scope, which pruning needs: use ASCII "
                "letters, digits and . _ - / >, starting with a letter, a digit or a dot"
            )
    version = preflight.major_version(version_string, 2)
    h5_mask = preflight.h5_mask(config, version)
    if version == 3:
        try:
            preflight.check_convertible(layers)
        except preflight.Unconvertible as exc:
            for problem in exc.problems:
                refused.append(problem)
        if merged:
            refused.append(
                f"the padding mask (Embedding mask_zero or Masking) reaches the merge layer{'s' if len(merged) > 1 else ''} "
                f"{[name[:60] for name in merged[:5]]}, whose mask Keras 3 combines with keras.ops calls (an OR of "
                "the masks, where tf_keras takes an AND), which the service does not translate; refused: drop "
                "mask_zero (or the Masking layer), or pool the sequence (GlobalAveragePooling1D) before the merge"
            )
        if (operation := preflight.mask_operation_on_data(config)) is not None:
            refused.append(
                f"the model uses {operation} on data, a keras.ops call the service translates only where it "
                "computes a padding mask; use a layer instead; refused"
            )
        if (operation := preflight.masked_arithmetic(config)) is not None:
            refused.append(
                f"the model adds, subtracts or multiplies tensors ({operation[:60]!r}) and has a padding mask "
                "(Embedding mask_zero or Masking), which Keras 3's operations drop and layers pass on; "
                "use keras.layers.Add (Subtract, Multiply) instead; refused"
            )
        twice = _names_twice(layers)
        if twice:
            refused.append(
                f"layer names {twice[:5]} occur in the model and in a model nested in it; pruning opens nested "
                "models up, so names must differ: rename one; refused"
            )
        for name, cls, problem in options:
            refused.append(f"layer {name[:60]!r} of class {cls}: {problem}; refused")
        if fmt == "h5" and h5_mask:
            refused.append(
                f"the model's padding mask is stored as the operation {h5_mask[:60]!r}, which Keras 3 cannot read back "
                "from an .h5 file (a functional model with Embedding(mask_zero=True) or Masking): save it as .keras; "
                "refused"
            )
    if refused.problems:
        raise ModelRejected(refused.problems[0], more=refused.problems[1:], unlisted=refused.unlisted)
    summary = preflight.summarize(config, layers, weights or [], version, version_string)
    return ModelInfo(
        format=fmt,
        layers=layers,
        input_shape=_input_shape(config),
        keras_version=version,
        summary=summary,
        mixed_precision=mixed,
        left_whole=preflight.left_whole(config, version),
        other_dtypes=preflight.other_float_dtypes(config),
        h5_mask=h5_mask,
        h5_operation=preflight.h5_operation(config),
        xnnpack_missing=preflight.xnnpack_missing(config),
        nested_in_functional=preflight.nested_in_functional(config),
        axes_lost=[list(found) for found in preflight.axes_lost_by_the_keras3_loader(config)],
        kernel_inputs=preflight.kernel_inputs(config, layers, weights or []),
    )


def _read_member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    with archive.open(name) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise ModelRejected(f"the archive member {name!r} is over the limit of {limit} bytes")
    return data


def _verify_members(
    archive: zipfile.ZipFile, max_decompressed: int, checked: Mapping[int, tuple[int, int, str]] | None = None
) -> None:
    """Decompresses every member in chunks (CRC checked at its end), counting the bytes it
    really yields: a member past its declared size, or all of them past ``max_decompressed``,
    stops the read at once, whatever the directory claims.

    ``checked`` (from :class:`~pruning_core.zipscan.StoredMembers`, as the upload streamed in)
    spares the read of a stored member whose CRC was computed then, at the same offset and size,
    and matches the directory's."""
    total = 0
    for info in archive.infolist():
        if checked and _already_checked(info, checked):
            total += info.file_size
            if total > max_decompressed:
                raise ModelRejected(f"the archive expands past the limit of {max_decompressed} bytes")
            with archive.open(info):
                pass  # zipfile still judges the member's header, flags and name (and overlaps); no data read
            continue
        produced = 0
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                produced += len(chunk)
                total += len(chunk)
                if produced > info.file_size:
                    raise ModelRejected(f"the archive member {info.filename!r} expands past its declared size")
                if total > max_decompressed:
                    raise ModelRejected(f"the archive expands past the limit of {max_decompressed} bytes")


def _already_checked(info: zipfile.ZipInfo, checked: Mapping[int, tuple[int, int, str]]) -> bool:
    return (
        info.compress_type == zipfile.ZIP_STORED
        and not info.flag_bits & 0x1  # encrypted
        and info.file_size == info.compress_size
        and checked.get(info.header_offset) == (info.CRC, info.compress_size, info.orig_filename)
    )


def _refuse_outside_references(f: Any, where: str) -> None:
    """Refuses an HDF5 file that reads bytes from outside itself: a dataset whose data lives
    in other files (external storage: raw bytes of any file on the reading host, such as
    ``/proc/self/environ`` or another tenant's blob), a virtual dataset (mapped onto other
    HDF5 files) or an external link (another HDF5 file's object). Loading the weights on a
    worker would read those files into the model, and its export would hand them back.
    Reads no data: the object headers only."""
    import h5py

    def refuse(name: str, what: str) -> None:
        raise ModelRejected(f"{where}: {name or '/'} {what}; a model must hold its weights in its own file")

    def links(name: str, group: Any) -> None:
        for key in group:
            if isinstance(group.get(key, getlink=True), h5py.ExternalLink):
                refuse(f"{name}/{key}".lstrip("/"), "is an external link to another file")

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group):
            links(name, obj)
        elif isinstance(obj, h5py.Dataset):
            if obj.external:
                refuse(name, "keeps its data in external files")
            if obj.is_virtual:
                refuse(name, "is a virtual dataset mapped onto other files")

    links("", f)
    f.visititems(visit)


def _h5_shapes(group: Any, limit: int) -> tuple[list[tuple[str, list[int]]], int]:
    """(path, shape) of every dataset under an HDF5 group, and the bytes they take once read
    (shape x dtype, summed); reads no data. Refuses more than ``limit`` bytes: a gzip-compressed
    or never-written (fill-value) dataset declares any size in a few bytes of file, and Keras
    reads every one whole into memory."""
    found: list[tuple[str, list[int]]] = []
    total = 0

    def visit(name: str, obj: Any) -> None:
        nonlocal total
        shape = getattr(obj, "shape", None)
        if shape is not None:
            found.append((name, [int(d) for d in shape]))
            total += math.prod(found[-1][1]) * obj.dtype.itemsize

    group.visititems(visit)
    if total > limit:
        raise ModelRejected(
            f"the weights' datasets declare {total} bytes (shape x dtype, compressed or not stored in the file), "
            f"over the limit of {limit} bytes"
        )
    return found, total


def _h5_names(group: Any, name: str) -> list[str]:
    """A list attribute as Keras reads it: ``name``, or its chunks ``name0``, ``name1`` ...
    (Keras splits one past the object header's limit)."""
    attrs = group.attrs
    if name in attrs:
        values = list(attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in attrs:
            values += list(attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _h5_read_bytes(weights: Any, limit: int) -> int:
    """The bytes Keras' loader of an .h5 file reads whole from ``model_weights`` before it
    compares a single shape: for each group named in ``layer_names``, each dataset named in
    its ``weight_names``, resolved as tf_keras resolves it (relative to the layer's group, from
    the file's root when absolute, through soft and hard links) and once per mention. A name
    may reach a dataset outside ``model_weights`` (which :func:`_h5_shapes` does not visit), or
    one dataset many times; refuses more than ``limit`` bytes."""
    import h5py

    total = 0
    for layer in _h5_names(weights, "layer_names"):
        group = weights.get(layer)
        if not isinstance(group, h5py.Group):
            continue  # Keras fails on it
        for name in _h5_names(group, "weight_names"):
            dataset = group.get(name)
            shape = getattr(dataset, "shape", None) if isinstance(dataset, h5py.Dataset) else None
            if shape is None:
                continue
            total += math.prod(int(d) for d in shape) * dataset.dtype.itemsize
            if total > limit:
                raise ModelRejected(
                    f"the weights Keras reads (layer_names' weight_names, each as often as named) declare "
                    f"{total} bytes or more (shape x dtype, compressed or not stored in the file), over the limit "
                    f"of {limit} bytes"
                )
    return total


_WEIGHT_MEMBERS = frozenset({"model.weights.h5", "model.weights.npz"})


def _json_member(archive: zipfile.ZipFile, name: str, limit: int) -> Any:
    """A JSON member of a .keras archive; one that does not parse is named as such (the
    archive itself is whole)."""
    text = _read_member(archive, name, limit)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelRejected(f"the archive's {name} is not valid JSON: {exc}") from None


def _zip_weight_shapes(archive: zipfile.ZipFile, limit: int) -> tuple[list[tuple[str, list[int]]], int]:
    if "model.weights.h5" not in archive.namelist():
        # an .npz of weights (Keras 3 reads one too) takes its expanded size, within the archive's
        return [], archive.getinfo("model.weights.npz").file_size if "model.weights.npz" in archive.namelist() else 0
    import h5py

    with tempfile.NamedTemporaryFile(suffix=".h5") as tmp:
        with archive.open("model.weights.h5") as member:
            shutil.copyfileobj(member, tmp, _CHUNK)  # sizes were checked against the limit
        tmp.flush()
        with h5py.File(tmp.name, "r") as f:
            _refuse_outside_references(f, "the archive's model.weights.h5")
            return _h5_shapes(f, limit)


def inspect_model(path: pathlib.Path, max_decompressed: int, max_config: int | None = None) -> ModelInfo:
    """Reads a model file's configuration and checks it is safe to load. Archive members are
    streamed against ``max_decompressed``; the configuration is parsed only when it is at most
    ``max_config`` bytes (default :data:`MAX_CONFIG_BYTES`).

    Raises:
        ModelRejected: not a model, truncated, too large, or using a Lambda layer or a custom object.
    """
    path = pathlib.Path(path)
    max_config = MAX_CONFIG_BYTES if max_config is None else max_config
    try:
        info = _inspect_model(path, max_decompressed, max_config)
    except (ModelRejected, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a hostile file makes the readers raise
        raise ModelRejected(f"the model file is malformed: {type(exc).__name__}") from None
    if not info.summary.inputs and not info.summary.total_params:
        # a Sequential saved before it was built: no input shape, no weights (the job failed on it)
        raise ModelRejected(
            "the model has no input shape and no weights: build it before saving (start it with "
            "keras.Input(shape), or call model.build(input_shape))"
        )
    return info


def _inspect_model(path: pathlib.Path, max_decompressed: int, max_config: int) -> ModelInfo:
    kind = sniff_format(path)
    if kind == "zip":
        with _checked_zip(path, max_decompressed) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise ModelRejected("the archive is not a .keras model (no config.json)")
            if archive.getinfo("config.json").file_size > max_config:
                raise ModelRejected(f"the archive member 'config.json' is over the limit of {max_config} bytes")
            try:
                _verify_members(archive, max_decompressed)
                config = _json_member(archive, "config.json", max_config)
                metadata = _json_member(archive, "metadata.json", 1 << 20) if ("metadata.json" in names) else {}
                weights, weight_bytes = _zip_weight_shapes(archive, max_decompressed)
            except ModelRejected:
                raise
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, RecursionError) as exc:
                raise ModelRejected(f"the archive is truncated or corrupt: {exc}") from None
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
        info = check_model_config(config, "keras", version if isinstance(version, str) else "", weights)
        if not names & _WEIGHT_MEMBERS:  # Keras writes one even for a model without weights
            raise ModelRejected(
                "the archive holds no weights (no model.weights.h5 or model.weights.npz): save the whole model "
                "with model.save('model.keras')"
            )
        info.weight_bytes = weight_bytes
        return info
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:  # the upload holds its own lock
            _refuse_outside_references(f, "the HDF5 file")
            if "model_config" not in f.attrs:
                raise ModelRejected(
                    "the HDF5 file holds no Keras model (no model_config): weights only? save the whole model "
                    "(model.save('model.keras'))"
                )
            if f.attrs.get_id("model_config").get_storage_size() > max_config:
                raise ModelRejected(f"the HDF5 attribute model_config is over the limit of {max_config} bytes")
            raw = f.attrs["model_config"]
            if isinstance(raw, bytes):
                raw = raw.decode()
            if not isinstance(raw, str):
                raise ModelRejected("the HDF5 attribute model_config is not a JSON string")
            config = json.loads(raw)
            if not isinstance(f.get("model_weights"), h5py.Group):
                raise ModelRejected("the HDF5 file holds no weights (model_weights is not a group)")
            weights, weight_bytes = _h5_shapes(f["model_weights"], max_decompressed)
            weight_bytes = max(weight_bytes, _h5_read_bytes(f["model_weights"], max_decompressed))
            version = f.attrs.get("keras_version", b"")
            version = version.decode() if isinstance(version, bytes) else str(version)
    except ModelRejected:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ModelRejected(f"the HDF5 file is truncated or corrupt: {exc}") from None
    info = check_model_config(config, "h5", version, weights)
    info.weight_bytes = weight_bytes
    return info


def _label_column(shape: tuple[int, ...]) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def _chunks(member: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Iterator[np.ndarray]:
    """The values of an array, read in chunks from its .npy member."""
    left = int(np.prod(shape)) * dtype.itemsize
    step = max(dtype.itemsize, _CHUNK // dtype.itemsize * dtype.itemsize)
    while left > 0:
        data = member.read(min(step, left))
        if not data or len(data) % dtype.itemsize:
            raise ValueError("the array data ends early")
        left -= len(data)
        yield np.frombuffer(data, dtype=dtype)


def _value_range(member: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> list[int] | None:
    """Min and max of an integer array read in chunks from its .npy member; None when empty."""
    low: int | None = None
    high: int | None = None
    for values in _chunks(member, shape, dtype):
        low = int(values.min()) if low is None else min(low, int(values.min()))
        high = int(values.max()) if high is None else max(high, int(values.max()))
    return None if low is None or high is None else [low, high]


def _first_fraction(member: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> float | None:
    """The first finite value of a float array that is not a whole number (no class index can be
    it); None when there is none. NaN and infinities are the worker's to refuse, by sample."""
    for values in _chunks(member, shape, dtype):
        finite = values[np.isfinite(values)]
        bad = finite[finite != np.floor(finite)]
        if bad.size:
            return float(bad[0])
    return None


def _npy_header(
    archive: zipfile.ZipFile, key: str, ranges: dict[str, Any], fractions: dict[str, Any]
) -> dict[str, Any]:
    try:
        with archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
            if dtype.hasobject:
                raise ModelRejected(f"array {key!r} holds Python objects; refused", field="dataset")
            if dtype.kind not in _NUMERIC_KINDS or dtype.subdtype is not None:
                raise ModelRejected(f"array {key!r} holds {dtype.str}; only numbers can be trained on", field="dataset")
            if any(d < 0 for d in shape):
                raise ModelRejected(f"array {key!r} has a negative dimension in {shape}", field="dataset")
            held = archive.getinfo(f"{key}.npy").file_size - member.tell()  # the bytes after the header
            needed = math.prod(shape) * dtype.itemsize
            if held != needed:  # cut short (or padded): the job would fail reading it, or read past it
                raise ModelRejected(
                    f"array {key!r} holds {held} bytes of data, but its shape {tuple(shape)} of {dtype.str} "
                    f"takes {needed}: the file is cut short or not what its header says",
                    field="dataset",
                )
            if key.startswith("y_") and _label_column(shape) and np.issubdtype(dtype, np.integer):
                ranges[key] = _value_range(member, shape, dtype)
            elif key.startswith("y_") and _label_column(shape) and np.issubdtype(dtype, np.floating):
                fraction = _first_fraction(member, shape, dtype)
                if fraction is not None:
                    fractions[key] = fraction
    except ModelRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds on hostile input
        raise ModelRejected(f"array {key!r} is unreadable: {type(exc).__name__}: {exc}", field="dataset") from None
    return {"shape": list(shape), "dtype": dtype.str}


def inspect_dataset(
    path: pathlib.Path, max_decompressed: int, checked: Mapping[int, tuple[int, int, str]] | None = None
) -> dict:
    """Reads the array headers of an .npz dataset (no pickle), the range of integer class
    labels and the first float label that is not a whole number, streamed in chunks. A model
    with several inputs or outputs takes one array per input or output, named
    ``x_train.<input name>`` (``y_train.<output name>``, ...).
    ``checked``: the CRCs of stored members computed while the upload arrived
    (:class:`~pruning_core.zipscan.StoredMembers`); those members are not read again.

    Returns:
        {"x_train": {"shape": [...], "dtype": "...", "parts": {name: {"shape", "dtype"}}?}, ...,
         "label_range": {"y_train": [min, max], ...}, "label_fraction": {"y_test.reg": 0.25, ...}}
    """
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        if not f.read(4).startswith(ZIP_SIGNATURE):
            raise ModelRejected("a dataset must be an .npz file", field="dataset")
    try:
        archive = _checked_zip(path, max_decompressed)
    except ModelRejected as exc:
        raise ModelRejected(str(exc), field="dataset") from None
    arrays: dict[str, Any] = {}
    ranges: dict[str, Any] = {}
    fractions: dict[str, Any] = {}
    with archive:
        try:
            _verify_members(archive, max_decompressed, checked)  # every CRC, and the real expanded size
        except ModelRejected as exc:
            raise ModelRejected(str(exc), field="dataset") from None
        except Exception as exc:  # noqa: BLE001 - a corrupt archive, whatever zipfile raises
            raise ModelRejected(f"the archive is truncated or corrupt: {exc}", field="dataset") from None
        members = {n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")}
        for name in DATASET_ARRAYS:
            keys = [name] if name in members else sorted(m for m in members if m.startswith(f"{name}."))
            if not keys:
                raise ModelRejected(
                    f"the dataset has no array {name!r} (nor {name}.<input or output name>)", field="dataset"
                )
            headers = {key: _npy_header(archive, key, ranges, fractions) for key in keys}
            lengths = {h["shape"][0] if h["shape"] else None for h in headers.values()}
            if len(lengths) != 1:
                raise ModelRejected(f"the arrays of {name} differ in length", field="dataset")
            arrays[name] = dict(headers[keys[0]])
            if keys != [name]:
                arrays[name]["parts"] = {key.split(".", 1)[1]: h for key, h in headers.items()}
    for split in ("train", "test"):
        n_x, n_y = arrays[f"x_{split}"]["shape"][:1], arrays[f"y_{split}"]["shape"][:1]
        if n_x != n_y:
            raise ModelRejected(f"x_{split} and y_{split} differ in length: {n_x} vs {n_y}", field="dataset")
    samples = {
        k: [h["shape"][1:] for h in arrays[k].get("parts", {k: arrays[k]}).values()] for k in ("x_train", "x_test")
    }
    if samples["x_train"] != samples["x_test"]:
        raise ModelRejected("x_train and x_test differ in sample shape", field="dataset")
    if ranges:
        arrays["label_range"] = ranges
    if fractions:
        arrays["label_fraction"] = fractions
    return arrays


def shapes_fit(model_input: list | None, sample_shape: list) -> bool:
    """Whether samples of ``sample_shape`` fit a model input of ``model_input`` (None = any)."""
    if model_input is None:
        return True
    return len(model_input) == len(sample_shape) and all(
        m is None or m == s for m, s in zip(model_input, sample_shape, strict=True)
    )
