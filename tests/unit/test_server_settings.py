"""Server settings: the allocator setting (glibc takes it; elsewhere a no-op) and the S3 part size against the upload limit."""

from __future__ import annotations

import concurrent.futures
import platform
import subprocess
import sys

import pytest

from pruning_core import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds():
    # in a child process: the setting lasts for the life of the process that makes it
    code = "from pruning_core.allocator import keep_freed_buffers; print(keep_freed_buffers())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"


def test_without_mallopt_nothing_changes(monkeypatch):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert allocator.keep_freed_buffers() is False


def test_the_server_setting_is_on_by_default_and_can_be_turned_off(monkeypatch):
    from pruning_core.settings import Settings

    assert Settings().keep_freed_buffers is True
    monkeypatch.setenv("PRUNING_KEEP_FREED_BUFFERS", "false")
    assert Settings().keep_freed_buffers is False


def test_s3_parts_must_cover_the_largest_upload(monkeypatch):
    from pydantic import ValidationError

    from pruning_core.settings import MiB, Settings

    monkeypatch.setenv("PRUNING_ARTIFACT_STORE", "s3")
    assert Settings().s3_part_size == 5 * MiB  # 10,000 x 5 MiB covers the default 1 GiB limit
    monkeypatch.setenv("PRUNING_MAX_UPLOAD_BYTES", str(100 * 1024 * MiB))
    with pytest.raises(ValidationError, match="raise s3_part_size to at least 10737419"):
        Settings()
    monkeypatch.setenv("PRUNING_S3_PART_SIZE", str(11 * MiB))
    assert Settings().max_upload_bytes == 100 * 1024 * MiB
    monkeypatch.setenv("PRUNING_ARTIFACT_STORE", "local")
    monkeypatch.setenv("PRUNING_S3_PART_SIZE", str(5 * MiB))
    assert Settings().artifact_store == "local"  # the local store has no parts


@pytest.mark.parametrize("endpoint", ["minio:9000", "127.0.0.1:9000", "ftp://minio:9000", "http://", "http://minio:x"])
def test_an_s3_endpoint_without_its_scheme_is_refused(monkeypatch, endpoint):
    """obstore takes such an endpoint and panics at the first request (a server's start, a
    worker's first job, whose process it kills): refused as the setting it is."""
    from pydantic import ValidationError

    from pruning_core.settings import Settings

    monkeypatch.setenv("PRUNING_ARTIFACT_STORE", "s3")
    monkeypatch.setenv("PRUNING_S3_ENDPOINT", endpoint)
    with pytest.raises(ValidationError, match="must be a URL starting with http:// or https://"):
        Settings()
    for good in ("http://minio:9000", "https://s3.eu-west-1.amazonaws.com", ""):
        monkeypatch.setenv("PRUNING_S3_ENDPOINT", good)
        assert Settings().s3_endpoint == good


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("keyA=tenantA,=tenantZ", "entry 2 must be key=tenant"),  # an unset variable in a template
        ("keyA=tenantA,keyB", "entry 2 must be key=tenant"),
        ("keyA=", "entry 1 must be key=tenant"),
        ("keyA=a,keyA=b", "entry 2 repeats a key"),
        # A tenant "alpha:team" would share Redis keys with tenant "alpha" (idempotency keys).
        ("keyA=alpha,keyB=alpha:team", "entry 2: a tenant has no ':'"),
        ("keyA=a b", "entry 1: a tenant has no ':', space"),
    ],
)
def test_api_keys_that_would_let_callers_in_or_cannot_be_read_are_refused(monkeypatch, value, why):
    from pydantic import ValidationError

    from pruning_core.settings import Settings

    monkeypatch.setenv("PRUNING_API_KEYS", value)
    with pytest.raises(ValidationError, match=why) as error:
        Settings()
    assert "keyA" not in str(error.value).replace(value, "")  # no key echoed beyond pydantic's input


def test_tenant_names_people_use_still_work(monkeypatch):
    from pydantic import ValidationError

    from pruning_core.settings import Settings

    monkeypatch.setenv("PRUNING_API_KEYS", "k1=alice@corp.com,k2=team/ml+ops,k3=" + "t" * 256)
    assert Settings().tenants_by_key()["k1"] == "alice@corp.com"
    monkeypatch.setenv("PRUNING_API_KEYS", "k=" + "t" * 257)
    with pytest.raises(ValidationError, match="at most 256"):
        Settings()


def test_api_keys_map_keys_to_tenants(monkeypatch):
    from pruning_core.settings import Settings

    monkeypatch.setenv("PRUNING_API_KEYS", " k1 = t1 , k2=t2 ,")
    assert Settings().tenants_by_key() == {"k1": "t1", "k2": "t2"}


def test_tls_needs_both_files_and_files(monkeypatch, tmp_path):
    from pydantic import ValidationError

    from pruning_core.settings import Settings

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert"), key.write_text("key")
    monkeypatch.setenv("PRUNING_TLS_CERT_FILE", str(cert))
    with pytest.raises(ValidationError, match="tls_key_file is not set"):
        Settings()
    monkeypatch.setenv("PRUNING_TLS_KEY_FILE", "")
    with pytest.raises(ValidationError, match="is not a file|is not set"):
        Settings()
    monkeypatch.setenv("PRUNING_TLS_KEY_FILE", str(key))
    assert Settings().tls_key_file == key


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        ("47312", "127.0.0.1:47312"),
        ("0.0.0.0:50051", "0.0.0.0:50051"),
        ("[::]:50051", "[::]:50051"),
        (":50051", "[::]:50051"),  # gRPC takes no empty host: it failed to bind, told as "in use"
        ("unix:/run/pruning.sock", "unix:/run/pruning.sock"),
    ],
)
def test_a_listen_address_is_host_and_port_or_a_bare_port(given, taken, monkeypatch):
    from pruning_core.settings import Settings, listen_address

    assert listen_address(given) == taken
    monkeypatch.setenv("PRUNING_LISTEN", given)
    assert Settings().listen == taken
    if not taken.startswith("unix:"):  # gRPC binds it, on a free port
        import grpc

        server = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
        assert server.add_insecure_port(taken.rsplit(":", 1)[0] + ":0") > 0
        server.stop(None)


@pytest.mark.parametrize("given", ["localhost", "host:notaport", "http://127.0.0.1:50051", "unix:", "h:70000"])
def test_a_malformed_listen_address_is_refused(given):
    from pruning_core.settings import listen_address

    with pytest.raises(ValueError, match="must be host:port"):
        listen_address(given)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PRUNING_UPLOAD_IDLE_TIMEOUT_S", "0"),  # every upload dropped at once
        ("PRUNING_HOUSEKEEPING_INTERVAL_S", "0"),  # the housekeeping in a busy loop
        ("PRUNING_HEARTBEAT_INTERVAL_S", "0"),
        ("PRUNING_REAP_AFTER_S", "-1"),
        ("PRUNING_MAX_UPLOADS_PER_TENANT", "0"),  # every upload refused
        ("PRUNING_REDIS_MAX_CONNECTIONS", "0"),
        ("PRUNING_MAX_ERROR_BYTES", "3"),  # every message cut to "..."
    ],
)
def test_settings_outside_their_bounds_are_refused_at_start(monkeypatch, variable, value):
    """Each is exit 2 at start (invalid settings), not a service that drops, refuses or spins."""
    from pydantic import ValidationError

    from pruning_core.settings import Settings

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("PRUNING_").lower()):
        Settings()
