"""What an upload takes besides a file: a Keras model object, or the dataset's arrays.

A model object is saved as ``<its name>.keras`` (by its own ``save``: Keras 3 or tf_keras), and
arrays into an ``.npz`` (numpy, which arrays come with), in a temporary directory removed once
the upload ends. The SDK itself needs neither Keras nor numpy for files.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, Union

__all__ = ["DatasetSource", "ModelSource", "SavesModel", "dataset_arrays", "dataset_file", "model_file"]

_SPLITS = ("x_train", "y_train", "x_test", "y_test")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SavesModel(Protocol):
    """A model that saves itself to a ``.keras`` file: ``keras.Model`` (3) or tf_keras'."""

    def save(self, filepath: str, /) -> object: ...


ModelSource = Union[str, "os.PathLike[str]", SavesModel]
"""A ``.keras``/``.h5`` file's path, or a Keras model object."""

DatasetSource = Union[str, "os.PathLike[str]", Mapping[str, Any], tuple[tuple[Any, Any], tuple[Any, Any]]]
"""An ``.npz`` file's path; a mapping of its arrays (``x_train``, ``y_train``, ``x_test``,
``y_test``; ``x_train.<input name>`` and so on for a model of several inputs or outputs); or
``((x_train, y_train), (x_test, y_test))``, as ``keras.datasets.<name>.load_data()`` returns,
where an ``x`` or ``y`` may be a mapping of input or output names to arrays."""


@contextlib.contextmanager
def model_file(model: ModelSource) -> Iterator[pathlib.Path]:
    """The file to upload for ``model``: its own path, or the model object saved as
    ``<name>.keras`` in a temporary directory (removed when the ``with`` ends)."""
    if isinstance(model, (str, os.PathLike)):
        yield pathlib.Path(model)
        return
    if not callable(getattr(model, "save", None)):
        raise TypeError(f"a model is a .keras or .h5 file's path or a Keras model object, not {type(model).__name__}")
    name = _UNSAFE.sub("_", str(getattr(model, "name", "") or "")).strip("._")[:100] or "model"
    with tempfile.TemporaryDirectory(prefix="pruning-upload-") as directory:
        path = pathlib.Path(directory) / f"{name}.keras"
        model.save(str(path))
        yield path


def dataset_arrays(data: Mapping[str, Any] | tuple[tuple[Any, Any], tuple[Any, Any]]) -> dict[str, Any]:
    """The ``.npz`` members of a dataset given as arrays (see :data:`DatasetSource`): a
    mapping under a name (``{"x_train": {"pixels": ...}}``) becomes ``x_train.pixels``."""
    if isinstance(data, Mapping):
        members = data
    elif isinstance(data, tuple) and len(data) == 2 and all(isinstance(p, tuple) and len(p) == 2 for p in data):
        (x_train, y_train), (x_test, y_test) = data
        members = dict(zip(_SPLITS, (x_train, y_train, x_test, y_test), strict=True))
    else:
        raise TypeError(_NOT_A_DATASET.format(type(data).__name__))
    out: dict[str, Any] = {}
    for split, value in members.items():
        named = value.items() if isinstance(value, Mapping) else [(None, value)]
        for name, array in named:
            member = split if name is None else f"{split}.{name}"
            if member in out:
                raise ValueError(f"{member}: given twice (as {member!r} and under {split!r})")
            out[member] = array
    return out


_NOT_A_DATASET = (
    "a dataset is an .npz file's path, a mapping of its arrays (x_train, y_train, x_test, y_test), "
    "or ((x_train, y_train), (x_test, y_test)) as keras.datasets load_data() returns; not {}"
)


def _array(name: str, value: Any) -> Any:
    """``value`` as a numpy array the service reads: numbers, not Python objects (which
    ``.npz`` would pickle and the service refuses only once they were sent)."""
    import numpy as np

    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nesting
        raise TypeError(f"{name}: not an array of numbers ({error})") from None
    if array.dtype.hasobject:
        raise TypeError(f"{name}: holds Python objects (dtype object); give it an array of numbers")
    return array


@contextlib.contextmanager
def dataset_file(data: DatasetSource) -> Iterator[pathlib.Path]:
    """The file to upload for ``data``: its own path, or its arrays saved as ``dataset.npz``
    in a temporary directory (removed when the ``with`` ends)."""
    if isinstance(data, (str, os.PathLike)):
        yield pathlib.Path(data)
        return
    import numpy as np

    members: dict[str, Any] = {name: _array(name, value) for name, value in dataset_arrays(data).items()}
    with tempfile.TemporaryDirectory(prefix="pruning-upload-") as directory:
        path = pathlib.Path(directory) / "dataset.npz"
        # as numpy.savez writes it (stored members <name>.npy, zip64), by name: savez's own
        # keywords (file, allow_pickle) would take arrays so named
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in members.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        yield path
