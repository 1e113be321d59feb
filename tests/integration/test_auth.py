"""API keys map to tenants; a tenant sees only its own jobs and artifacts; health stays open."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ServerThread, settings_for
from pruning_client import Client, NotFound, Unauthenticated, job_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured(env):
    # Its own queue, which no worker consumes: the job below stays QUEUED until cancelled.
    srv = ServerThread(settings_for(env, api_keys="key-a=alpha,key-b=beta", queue=env["PRUNING_QUEUE"] + "-auth"))
    yield srv
    srv.stop()


def test_api_keys_and_tenants(secured, files):
    with Client(secured.target) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.upload_model(files["keras"])
        health = health_pb2_grpc.HealthStub(anonymous._channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with Client(secured.target, api_key="wrong") as intruder:
        with pytest.raises(Unauthenticated):
            list(intruder.list_jobs())
    with Client(secured.target, api_key="key-a") as alpha, Client(secured.target, api_key="key-b") as beta:
        model = alpha.upload_model(files["keras"])
        data = alpha.upload_dataset(files["data"])
        job = alpha.submit(job_spec(model.id, dataset=data.id))
        assert alpha.get_job(job.id).id == job.id
        with pytest.raises(NotFound):
            beta.get_job(job.id)
        with pytest.raises(NotFound):
            beta.cancel_job(job.id)
        with pytest.raises(NotFound):
            beta.submit(job_spec(model.id, dataset=data.id))
        with pytest.raises(NotFound):
            beta.download(model.id, "/tmp/never-written")
        assert job.id not in [j.id for j in beta.list_jobs()]
        assert alpha.cancel_job(job.id).state == 6  # CANCELLED: nothing consumes before the test ends


@pytest.mark.parametrize("value", ["Bearer key-a", "bearer key-a", "BEARER key-a", "Bearer  key-a "])
def test_the_bearer_scheme_is_read_in_any_case(secured, value):
    """RFC 7235: an authorization scheme's name is case-insensitive; curl, grpcurl and proxies
    send "bearer" as often as "Bearer"."""
    import grpc

    from pruning.v1 import pruning_pb2 as pb
    from pruning.v1 import pruning_pb2_grpc as pb_grpc

    with grpc.insecure_channel(secured.target) as channel:
        stub = pb_grpc.PruningServiceStub(channel)
        stub.ListArtifacts(pb.ListArtifactsRequest(), metadata=(("authorization", value),), timeout=10)
        for other in ("Basic key-a", "bearer wrong", "bearer"):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListArtifacts(pb.ListArtifactsRequest(), metadata=(("authorization", other),), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_server_says_at_start_whether_it_authenticates(env, caplog):
    """Without PRUNING_API_KEYS any key is taken, as tenant "default": said once, at start."""
    import logging

    with caplog.at_level(logging.INFO, logger="pruning_server"):
        ServerThread(settings_for(env, queue=env["PRUNING_QUEUE"] + "-auth-off")).stop()
        ServerThread(settings_for(env, api_keys="k1=a,k2=a,k3=b", queue=env["PRUNING_QUEUE"] + "-auth-on")).stop()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "authentication" in r.getMessage()]
    assert said == [
        ("WARNING", "authentication off (PRUNING_API_KEYS is empty): every call is taken as tenant 'default'"),
        ("INFO", "authentication on: 3 API keys of 2 tenants"),
    ]
