"""The SDK's arguments checked on the client: enum names for listings, dataset arrays by any
name (numpy.savez's own keywords too) and never two under one name, and a partial download
that is not a regular file."""

from __future__ import annotations

import os
import pathlib
import threading
import zipfile

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client.client import _Download, _list_artifacts_request, _list_jobs_request
from pruning_client.sources import dataset_arrays, dataset_file


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("model", pb.ARTIFACT_KIND_MODEL),
        ("Dataset", pb.ARTIFACT_KIND_DATASET),
        ("EXPORT", pb.ARTIFACT_KIND_EXPORT),
        (pb.ARTIFACT_KIND_REPORT, pb.ARTIFACT_KIND_REPORT),
        (None, pb.ARTIFACT_KIND_UNSPECIFIED),
    ],
)
def test_an_artifact_kind_by_name_or_number(kind, expected) -> None:
    assert _list_artifacts_request(kind, 10, "").kind == expected


@pytest.mark.parametrize("kind", ["models", "unspecified", ""])
def test_an_unknown_kind_name_names_the_choices(kind) -> None:
    with pytest.raises(ValueError, match="kind must be one of model, dataset, export, report"):
        _list_artifacts_request(kind, 10, "")


def test_job_states_by_name_or_number() -> None:
    request = _list_jobs_request(["running", "QUEUED", pb.JOB_STATE_FAILED], None, 50, "")
    assert list(request.states) == [pb.JOB_STATE_RUNNING, pb.JOB_STATE_QUEUED, pb.JOB_STATE_FAILED]
    with pytest.raises(ValueError, match="states must be one of queued, running"):
        _list_jobs_request(["finished"], None, 50, "")
    with pytest.raises(TypeError, match="a list of states"):
        _list_jobs_request("running", None, 50, "")  # type: ignore[arg-type]


def test_arrays_named_as_savez_keywords_are_saved_under_their_names() -> None:
    arrays = {
        "x_train": np.zeros((4, 2), np.float32),
        "y_train": np.arange(4),
        "x_test": np.ones((2, 2), np.float32),
        "y_test": np.arange(2),
        "file": np.arange(3),
        "allow_pickle": np.arange(5),
    }
    with dataset_file(arrays) as path:
        with zipfile.ZipFile(path) as archive:
            assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
        with np.load(path, allow_pickle=False) as loaded:
            assert sorted(loaded.files) == sorted(arrays)
            for name, array in arrays.items():
                np.testing.assert_array_equal(loaded[name], array)


def test_two_arrays_under_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match=r"x_train\.a: given twice"):
        dataset_arrays({"x_train": {"a": np.zeros(2)}, "x_train.a": np.ones(2)})
    with pytest.raises(ValueError, match=r"x_train\.a: given twice"):
        dataset_arrays({"x_train.a": np.ones(2), "x_train": {"a": np.zeros(2)}})


def test_a_partial_download_that_is_a_fifo_or_a_link_is_replaced(tmp_path: pathlib.Path) -> None:
    artifact_id = "ab" * 32
    dest = tmp_path / "model.keras"
    part = tmp_path / f"model.keras.{artifact_id[:16]}.part"
    os.mkfifo(part)
    done = threading.Event()

    def make() -> None:
        download = _Download(artifact_id, dest, filename=None, resume=True)
        with download.open() as f:  # an open of the FIFO would block for good
            f.write(b"x")
        done.set()

    threading.Thread(target=make, daemon=True).start()
    assert done.wait(10), "the download blocked on the FIFO"
    assert part.is_file() and part.read_bytes() == b"x"
    # a link to another file: that file is never written through it
    other = tmp_path / "other"
    other.write_bytes(b"keep")
    part.unlink()
    part.symlink_to(other)
    download = _Download(artifact_id, dest, filename=None, resume=True)
    assert download.offset == 0 and not part.exists()
    with download.open() as f:
        f.write(b"new")
    assert other.read_bytes() == b"keep" and part.read_bytes() == b"new"
