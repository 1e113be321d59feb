"""ListArtifacts: a tenant's own artifacts, newest first, page by page, by kind, with the bytes
they hold against its quota; bad pages refused; the CLI's table and JSON."""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
import uuid

import grpc
import pytest

from conftest import ServerThread, delete_keys, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, InvalidArgument, NotFound
from pruning_client.aio import AsyncClient
from pruning_client.cli import run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def listing(env, tmp_path_factory):
    settings = settings_for(
        env,
        api_keys="key-a=alpha,key-b=beta",
        key_prefix=f"{env['PRUNING_KEY_PREFIX']}-list-{uuid.uuid4().hex[:6]}",
        state_dir=tmp_path_factory.mktemp("list"),
        max_stored_bytes_per_tenant=1 << 30,
    )
    server = ServerThread(settings)
    yield server
    server.stop()
    delete_keys(env["PRUNING_REDIS_URL"], settings.key_prefix)


def test_a_tenant_lists_its_own_artifacts_newest_first_page_by_page(listing, files, tmp_path):
    import models

    with Client(listing.target, api_key="key-a") as alpha, Client(listing.target, api_key="key-b") as beta:
        model = alpha.upload_model(files["keras"])
        datasets = []
        for seed in range(5):
            time.sleep(0.01)
            datasets.append(alpha.upload_dataset(models.dataset(tmp_path / f"d{seed}.npz", n_train=64, seed=seed)))
        beta_only = beta.upload_dataset(models.dataset(tmp_path / "beta.npz", n_train=64, seed=99))

        listed = list(alpha.list_artifacts(page_size=2))  # three pages and a bit
        assert [a.id for a in listed] == [d.id for d in reversed(datasets)] + [model.id]
        assert beta_only.id not in {a.id for a in listed}
        assert all(not a.HasField("model") for a in listed)  # no summaries in a listing
        assert [a.id for a in alpha.list_artifacts(kind=pb.ARTIFACT_KIND_MODEL)] == [model.id]

        page = alpha.artifacts_page(page_size=500)
        assert page.stored_bytes == sum(a.size for a in listed) and page.quota_bytes == 1 << 30
        assert [a.id for a in beta.list_artifacts()] == [beta_only.id]

        for bad in ({"page_size": 501}, {"page_size": -1}, {"page_token": "junk"}, {"page_token": "1.5:" + "g" * 64}):
            with pytest.raises(InvalidArgument) as refused:
                alpha.artifacts_page(**bad)  # type: ignore[arg-type]
            assert next(iter(bad)) in str(refused.value)
        with pytest.raises(grpc.RpcError) as unknown_kind:
            alpha.stub.ListArtifacts(pb.ListArtifactsRequest(kind=99), metadata=(("x-api-key", "key-a"),))
        assert unknown_kind.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # deleted: gone from the listing and from the bytes held
        alpha.delete_artifact(datasets[0].id)
        after = alpha.artifacts_page(page_size=500)
        assert datasets[0].id not in {a.id for a in after.artifacts}
        assert after.stored_bytes == page.stored_bytes - datasets[0].size

    async def listed_async():
        async with AsyncClient(listing.target, api_key="key-a") as client:
            return [a.id async for a in client.list_artifacts(page_size=3)]

    assert asyncio.run(listed_async()) == [a.id for a in listed if a.id != datasets[0].id]


def test_cli_lists_artifacts_as_a_table_or_json(listing, files, capsys):
    with Client(listing.target, api_key="key-a") as alpha:
        model = alpha.upload_model(files["keras"])
        alpha.upload_dataset(files["data"])  # two at least: --limit 1 cuts the list
    common = ["--target", listing.target, "--api-key", "key-a"]
    assert run(["artifacts", "--kind", "model", *common]) == 0
    out = capsys.readouterr().out
    assert model.id in out and "model" in out and "stored:" in out and "of 1.0 GiB" in out
    assert run(["artifacts", "--limit", "1", "--json", *common]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["artifacts"]) == 1 and data["quota_bytes"] == 1 << 30 and data["stored_bytes"] > 0
    assert data["truncated"] and isinstance(data["artifacts"][0]["size"], int)
    assert run(["artifacts", "--limit", "1", *common]) == 0
    assert "more than 1 (raise --limit)" in capsys.readouterr().out
    assert run(["artifacts", "--limit", "500", "--json", *common]) == 0
    assert not json.loads(capsys.readouterr().out)["truncated"]


def test_get_artifact_answers_one_record_of_the_tenant_with_its_model_summary(listing, files):
    with Client(listing.target, api_key="key-a") as alpha, Client(listing.target, api_key="key-b") as beta:
        model = alpha.upload_model(files["keras"])
        got = alpha.get_artifact(model.id)
        assert (got.id, got.kind, got.format, got.size, got.filename) == (
            model.id,
            pb.ARTIFACT_KIND_MODEL,
            model.format,
            model.size,
            model.filename,
        )
        assert got.model == model.model and got.model.layers  # the summary the upload answered with
        with pytest.raises(NotFound):
            beta.get_artifact(model.id)  # another tenant's
        with pytest.raises(InvalidArgument) as refused:
            alpha.get_artifact("not-an-id")
        assert refused.value.field_violations[0][0] == "artifact_id"

    async def got_async():
        async with AsyncClient(listing.target, api_key="key-a") as client:
            return await client.get_artifact(model.id)

    assert asyncio.run(got_async()).id == model.id


def test_cli_inspects_an_uploaded_model_by_id_and_downloads_an_artifact_under_its_name(
    listing, files, tmp_path, capsys
):
    with Client(listing.target, api_key="key-a") as alpha:
        model = alpha.upload_model(files["keras"])
        data = alpha.upload_dataset(files["data"])
    common = ["--target", listing.target, "--api-key", "key-a"]
    assert run(["inspect", model.id, "--json", *common]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["artifact_id"] == model.id and shown["layers"]
    assert run(["inspect", data.id, *common]) == 2
    assert "is a dataset" in capsys.readouterr().err
    assert run(["inspect", "f" * 64, *common]) == 3
    assert run(["inspect", str(tmp_path / "missing.keras"), *common]) == 2
    assert "no file" in capsys.readouterr().err

    out = tmp_path / "into"
    assert run(["download", model.id, "-o", f"{out}/", "--json", *common]) == 0
    path = pathlib.Path(json.loads(capsys.readouterr().out)["path"])
    assert (
        path == out / f"{files['keras'].stem}-{model.id[:12]}.keras"
        and path.read_bytes() == files["keras"].read_bytes()
    )
    assert run(["download", model.id, "-o", str(tmp_path / "mine.keras"), *common]) == 0  # a file named: that name
    assert (tmp_path / "mine.keras").read_bytes() == files["keras"].read_bytes()
