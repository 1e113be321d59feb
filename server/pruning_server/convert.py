"""Small conversions between protos and the store's records."""

from __future__ import annotations

from pruning.v1 import pruning_pb2 as pb

MODEL_EXTENSIONS = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}


def extension(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def safe_filename(filename: str) -> str:
    """The base name only, printable, bounded: it is shown, never used as a path."""
    name = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200]


def job_matches(job: pb.Job, states, labels) -> bool:
    if states and job.state not in states:
        return False
    return all(job.labels.get(k) == v for k, v in labels.items())
