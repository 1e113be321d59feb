"""Small conversions between protos and the store's records."""

from __future__ import annotations

import hashlib

from pruning.v1 import pruning_pb2 as pb


def extension(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def safe_filename(filename: str) -> str:
    """The base name only, printable, bounded: it is shown, never used as a path."""
    name = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:200]


def request_fingerprint(request: pb.CreateJobRequest) -> str:
    """Identifies a CreateJob request's content, to tell a retry from a reused key."""
    digest = hashlib.sha256(request.spec.SerializeToString(deterministic=True))
    for key, value in sorted(request.labels.items()):
        digest.update(f"\0{key}\0{value}".encode())
    return digest.hexdigest()


def job_matches(job: pb.Job, states, labels) -> bool:
    if states and job.state not in states:
        return False
    return all(job.labels.get(k) == v for k, v in labels.items())
