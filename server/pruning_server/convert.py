"""Small conversions between protos and the store's records."""

from __future__ import annotations

import hashlib

from google.protobuf.message import Message

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


def unknown_enums(message: Message, prefix: str = "") -> list[tuple[str, str]]:
    """(field, description) for every enum value the contract does not define, anywhere in
    ``message`` (proto3 enums are open: an unknown number parses and would be taken as is)."""
    out: list[tuple[str, str]] = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        if field.enum_type is not None:
            known = field.enum_type.values_by_number
            values = list(value) if repeated else [value]
            bad = [v for v in values if v not in known]
            if bad:
                names = ", ".join(v.name for v in field.enum_type.values)
                out.append((path, f"unknown value {bad[0]}; known: {names}"))
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                entries = value.values() if field.message_type.fields_by_name["value"].message_type else []
                for entry in entries:
                    out += unknown_enums(entry, f"{path}.")
            elif repeated:
                for i, item in enumerate(value):
                    out += unknown_enums(item, f"{path}[{i}].")
            else:
                out += unknown_enums(value, f"{path}.")
    return out


def kind_name(kind: int) -> str:
    """An ArtifactKind as users name it: ``model``, ``dataset``, ``export``, ``report``."""
    return pb.ArtifactKind.Name(kind).removeprefix("ARTIFACT_KIND_").lower()  # type: ignore[arg-type]
