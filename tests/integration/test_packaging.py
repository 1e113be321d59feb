"""The client installs alone; the server process never imports TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv

import pytest

from conftest import ROOT

HEAVY = (
    "tensorflow",
    "tf_keras",
    "keras",
    "tensorflow_model_optimization",
    "celery",
    "pruning_core",
    "pruning_server",
    "pruning_worker",
)


@pytest.mark.packaging
def test_client_installs_without_tensorflow_or_celery(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(ROOT / "client")], check=True, timeout=600)
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "pruning-client" in names
    assert not names & {
        "tensorflow",
        "tensorflow-cpu",
        "tf-keras",
        "keras",
        "celery",
        "pruning-server",
        "pruning-worker",
    }
    probe = textwrap.dedent(
        f"""
        import sys
        from pruning_client import Client, job_spec
        import contextlib, io
        from pruning_client.cli import cli
        with contextlib.redirect_stdout(io.StringIO()) as help_text:
            assert cli.main(["list", "--help"], standalone_mode=False) == 0
        assert "--state" in help_text.getvalue()
        print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
        """
    )
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run([env_dir / "bin" / "pruning", "--help"], check=True, capture_output=True, text=True)
    assert "submit" in help_text.stdout


def test_server_process_never_imports_tensorflow(env, files, tmp_path):
    """A server process serves uploads, jobs, events and cancels, then lists its modules."""
    script = textwrap.dedent(
        """
        import asyncio, json, sys, threading
        from pruning_core.settings import Settings
        from pruning_server.main import create_server
        from pruning_client import Client, job_spec, polynomial_decay

        async def main():
            running = await create_server(Settings(), "127.0.0.1:0")
            def calls():
                with Client(f"127.0.0.1:{running.port}") as client:
                    model = client.upload_model(sys.argv[1])
                    data = client.upload_dataset(sys.argv[2])
                    job = client.submit(job_spec(model.id, dataset=data.id, schedule=polynomial_decay(0.5, 0.8)))
                    assert job.cancel().state == 6  # CANCELLED while queued: no worker here
                    assert [e.id for e in client.watch_events(job.id)]
                    assert list(client.list_jobs())
            await asyncio.to_thread(calls)
            await running.stop()

        asyncio.run(main())
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
                                {"tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "pruning_worker"})))
        """
    )
    queue_env = {**os.environ, **env, "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-nobody"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(files["keras"]), str(files["data"])],
        env=queue_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
