"""A seeded fuzz of every RPC: random messages built from the contract's descriptors (ids
drawn from real ones as often as from junk), undecodable bytes, and uploads of random,
truncated and bit-flipped models and datasets. Whatever comes, the server answers with a
status of its own: no INTERNAL, no UNKNOWN, and it is still serving at the end.

``PRUNING_FUZZ_SEED`` picks the seed (fixed by default, so CI runs the same requests);
``PRUNING_FUZZ_BUDGET_S`` bounds the time.
"""

from __future__ import annotations

import collections
import itertools
import os
import time

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hostile import ServerProcess, keras_bytes, npz_bytes
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("PRUNING_FUZZ_SEED", "20261129"))
BUDGET_S = float(os.environ.get("PRUNING_FUZZ_BUDGET_S", "60"))
MIN_REQUESTS = 2000
BATCH = 16  # requests per hypothesis example
EXAMPLES = MIN_REQUESTS // BATCH + 30
KEYS = (("x-api-key", "key-a"),)
# Every service of the contract (PruningService, SweepService, ...): method path -> descriptor.
METHODS = {
    f"/{service.full_name}/{method.name}": method
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}
F = _descriptor.FieldDescriptor
_INTS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


class World:
    """Real ids the fuzz mixes in, so that requests get past the first checks."""

    model_id = ""
    dataset_id = ""
    job_ids: list[str] = []
    event_ids: list[str] = []


def _int(lo: int, hi: int):
    edges = [v for v in (lo, hi, -1, 0, 1, 2, 4, 7, 100, 2**31 - 1, 2**32) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -10), min(hi, 1000)))


def _text(name: str):
    junk = st.one_of(
        st.text(max_size=40),
        st.text(alphabet="0123456789abcdef", min_size=20, max_size=70),
        st.sampled_from(["", "..", "../../etc/passwd", "\0", "a" * 10_000, "0-0", "18446744073709551616-0"]),
    )
    real: list = []
    if name in ("model_id", "artifact_id", "dataset_id"):
        real = [st.just(World.model_id), st.just(World.dataset_id)]
    elif name in ("job_id", "page_token"):
        real = [st.sampled_from(World.job_ids)] if World.job_ids else []
    elif name == "after_event_id":
        real = [st.sampled_from(World.event_ids)] if World.event_ids else []
    elif name == "builtin":
        real = [st.just("mnist")]
    elif name.endswith("_names"):
        real = [st.sampled_from(["input", "hidden", "out"])]
    return st.one_of(*real, junk) if real else junk


def _scalar(field: _descriptor.FieldDescriptor):
    if field.type in _INTS:
        return _int(*_INTS[field.type])
    if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        width = 32 if field.type == F.TYPE_FLOAT else 64
        return st.one_of(st.floats(width=width), st.floats(-2, 2, width=width))
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return _text(field.name)
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == F.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), _int(-(2**31), 2**31 - 1))
    raise AssertionError(field.type)


def message(desc: _descriptor.Descriptor, depth: int = 0):
    """A random message of type ``desc``: each field left unset or set to a random value."""

    @st.composite
    def build(draw):
        msg = getattr(pb, desc.name, None)
        cls = msg if msg is not None and msg.DESCRIPTOR is desc else _class(desc)
        out = cls()
        for field in desc.fields:
            if not draw(st.booleans()):
                continue
            target = getattr(out, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_f, value_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                for key in draw(st.lists(_scalar(key_f), max_size=3)):
                    if value_f.message_type is None:
                        target[key] = draw(_scalar(value_f))
            elif field.message_type is not None:
                if depth > 4:
                    continue
                if field.is_repeated:
                    for item in draw(st.lists(message(field.message_type, depth + 1), max_size=2)):
                        target.add().CopyFrom(item)
                else:
                    target.CopyFrom(draw(message(field.message_type, depth + 1)))
            elif field.is_repeated:
                target.extend(draw(st.lists(_scalar(field), max_size=4)))
            else:
                setattr(out, field.name, draw(_scalar(field)))
        return out

    return build()


def _class(desc: _descriptor.Descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def _flip(data: bytes):
    @st.composite
    def flipped(draw):
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        return bytes(raw)

    return flipped()


def _payload():
    keras, npz = keras_bytes(), npz_bytes()
    return st.one_of(
        st.binary(max_size=2048),
        st.sampled_from([keras, npz]),
        _flip(keras),
        _flip(npz),
        st.integers(0, len(keras)).map(lambda n: keras[:n]),
        st.integers(0, len(npz)).map(lambda n: npz[:n]),
    )


@st.composite
def upload(draw):
    """An UploadModel or UploadDataset stream: header or not, chunks of some payload."""
    requests = []
    if draw(st.integers(0, 9)):
        requests.append(pb.UploadRequest(header=draw(message(pb.UploadHeader.DESCRIPTOR))))
    data = draw(_payload())
    cut = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    bounds = [0, *cut, len(data)]
    requests += [pb.UploadRequest(chunk=data[a:b]) for a, b in itertools.pairwise(bounds)]
    if draw(st.integers(0, 19)) == 0:
        requests.insert(draw(st.integers(0, len(requests))), draw(message(pb.UploadRequest.DESCRIPTOR)))
    return [r.SerializeToString() for r in requests]


@st.composite
def call(draw):
    """(method path, request bytes or list of them)."""
    path = draw(st.sampled_from(sorted(METHODS)))
    method = METHODS[path]
    if draw(st.integers(0, 14)) == 0:  # bytes that are no message of this type, or are
        junk = draw(st.binary(max_size=64))
        return path, [junk] if method.client_streaming else junk
    if method.client_streaming:
        return path, draw(upload())
    return path, draw(message(method.input_type)).SerializeToString()


class Fuzz:
    def __init__(self, channel: grpc.Channel):
        self.channel = channel
        self.codes: collections.Counter[str] = collections.Counter()
        self.methods: collections.Counter[str] = collections.Counter()
        self.bad: list[tuple[str, str, str]] = []
        self.started = time.monotonic()

    def send(self, path: str, request) -> None:
        method = METHODS[path]
        identity = {"request_serializer": None, "response_deserializer": None}
        try:
            if method.client_streaming:
                self.channel.stream_unary(path, **identity)(iter(request), metadata=KEYS, timeout=30)
            elif method.server_streaming:
                stream = self.channel.unary_stream(path, **identity)(request, metadata=KEYS, timeout=30)
                enough = 1 if method.name.startswith("Watch") else 3  # a live watch never ends
                for n, _ in enumerate(stream, 1):
                    if n >= enough:
                        stream.cancel()
                        break
            else:
                self.channel.unary_unary(path, **identity)(request, metadata=KEYS, timeout=30)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
            if code in ("INTERNAL", "UNKNOWN"):
                self.bad.append((path, code, str(error.details())[:300]))
        self.codes[code] += 1
        self.methods[path] += 1

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started > BUDGET_S


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    with ServerProcess(env, tmp_path_factory.mktemp("fuzz"), "fuzz", PRUNING_MAX_UPLOAD_BYTES="1048576") as srv:
        yield srv


@pytest.fixture(scope="module")
def fuzz(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.PruningServiceStub(channel)

        def up(method, data, name):
            header = pb.UploadRequest(header=pb.UploadHeader(filename=name))
            return getattr(stub, method)(iter([header, pb.UploadRequest(chunk=data)]), metadata=KEYS)

        World.model_id = up("UploadModel", keras_bytes(), "m.keras").id
        World.dataset_id = up("UploadDataset", npz_bytes(), "d.npz").id
        spec = pb.JobSpec(model_id=World.model_id)
        spec.dataset.artifact_id = World.dataset_id
        spec.pruning.schedule.constant_sparsity.target_sparsity = 0.5
        jobs = [stub.CreateJob(pb.CreateJobRequest(spec=spec), metadata=KEYS) for _ in range(3)]
        World.job_ids = [job.id for job in jobs]
        World.event_ids = [job.last_event_id for job in jobs]
        yield Fuzz(channel)


def test_fuzz_every_rpc(server, fuzz):
    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @given(st.lists(call(), min_size=BATCH, max_size=BATCH))
    def run(calls):
        for path, request in calls:
            if fuzz.out_of_time():
                return
            fuzz.send(path, request)

    run()
    print(f"fuzz (seed {SEED}): {fuzz.sent} requests in {time.monotonic() - fuzz.started:.1f} s: {dict(fuzz.codes)}")
    assert server.proc.poll() is None, "the server died"
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert fuzz.bad == []
    assert "Traceback" not in server.log.read_text()  # nothing failed unseen either
    assert fuzz.sent >= MIN_REQUESTS
    assert set(fuzz.methods) == set(METHODS)
