"""The server serves TLS when configured, and the SDK connects with the given roots."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ServerThread, settings_for
from pruning_client import Client, DeadlineExceeded, Unavailable

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_roundtrip(env, files, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server = ServerThread(settings_for(env, tls_cert_file=cert, tls_key_file=key, queue=env["PRUNING_QUEUE"] + "-tls"))
    try:
        with Client(server.target, tls=True, root_certificates=cert.read_bytes()) as secure:
            assert len(secure.upload_model(files["keras"]).id) == 64
        with Client(server.target, timeout=3) as plain:
            with pytest.raises((Unavailable, DeadlineExceeded)):
                list(plain.list_jobs())
    finally:
        server.stop()
