"""The job report through the real service: measured latency of the baseline and the pruned
model (TensorFlow and TFLite/XNNPACK, batch 1 and the training batch), the per-epoch history,
the TensorBoard logs as an artifact (its event files read back) and the PNG plots (decoded)."""

from __future__ import annotations

import pathlib
import zipfile

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import job_spec, polynomial_decay

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reported(server, worker, files, tmp_path_factory):
    from pruning_client import Client

    with Client(server.target, timeout=30) as client:
        model = client.upload_model(files["keras"]).id
        data = client.upload_dataset(files["data"]).id
        spec = job_spec(model, dataset=data, schedule=polynomial_decay(0.5, 0.8), epochs=3, batch_size=64, seed=2)
        job = client.submit(spec)
        result = job.result(timeout=600).raw
        out = tmp_path_factory.mktemp("report")
        paths = {a.format: client.download(a.id, out / a.filename) for a in result.artifacts}
    return result, paths, job.id


def test_latency_of_baseline_and_pruned_is_measured(reported):
    result, _, _ = reported
    figures = {(x.runtime, x.batch_size): x for x in result.latency}
    assert set(figures) == {("tf", 1), ("tf", 64), ("tflite", 1), ("tflite", 64)}
    for x in figures.values():
        assert x.before_ms > 0 and x.after_ms > 0 and x.repeats == 10
    assert figures[("tflite", 1)].device == "CPU (XNNPACK)"
    # phases of their own: the timing was booked as the export's (54 s of "export" for 1.5 s of it)
    assert result.phase_seconds["latency"] > 0 and result.phase_seconds["report"] > 0


def test_latency_is_measured_at_the_batch_a_step_took_not_past_the_data(client, worker, files):
    """A batch size of 65,536 on 256 samples of 16x16x3 had the worker make 1.6 GiB of random
    inputs that no training step ever took (its peak RSS 0.9 -> 2.5 GiB; 64x64x3 samples would
    ask 26 GiB): the latency of "the training batch" is that of the batch training ran."""
    model = client.upload_model(files["keras"]).id
    data = client.upload_dataset(files["data"]).id  # 1024 training samples
    spec = job_spec(model, dataset=data, schedule=polynomial_decay(0.5, 0.8), epochs=1, batch_size=65536)
    spec.report.latency_repeats = 3
    result = client.submit(spec).result(timeout=600).raw
    assert {(x.runtime, x.batch_size) for x in result.latency} == {
        ("tf", 1),
        ("tf", 921),  # the 1024 samples less the validation split's 0.1
        ("tflite", 1),
        ("tflite", 921),
    }


def test_the_history_has_every_epoch(reported):
    result, _, _ = reported
    assert [e.epoch for e in result.history] == list(range(1, result.recipe.epochs_run + 1))
    assert all(e.loss > 0 and 0 <= e.accuracy <= 1 and e.HasField("val_accuracy") for e in result.history)


def test_the_tensorboard_artifact_holds_event_files_with_the_fine_tuning(reported, tmp_path):
    import tensorflow as tf

    _, paths, _ = reported
    with zipfile.ZipFile(paths["tensorboard"]) as archive:
        archive.extractall(tmp_path)
    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {value.tag for value in event.summary.value}
    assert "epoch_loss" in tags and "epoch_accuracy" in tags  # Keras
    assert any(tag.endswith("sparsity") for tag in tags), sorted(tags)  # TFMOT's pruning summaries


@pytest.mark.parametrize("fmt", ["history_png", "layers_png"])
def test_the_plots_are_real_pngs(reported, fmt):
    from PIL import Image

    _, paths, _ = reported
    with Image.open(paths[fmt]) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 200
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something is drawn


def test_the_pruned_model_stays_first(reported):
    result, _, _ = reported
    assert result.artifacts[0].format == "keras"
    assert [a.format for a in result.artifacts[-3:]] == ["history_png", "layers_png", "tensorboard"]
    # The report's files are of their own kind, not exports.
    assert [a.kind for a in result.artifacts] == [pb.ARTIFACT_KIND_EXPORT] + [pb.ARTIFACT_KIND_REPORT] * 3


def test_a_job_can_go_without_the_report(client, worker, files):
    spec = job_spec(
        client.upload_model(files["keras"]).id,
        dataset=client.upload_dataset(files["data"]).id,
        epochs=1,
        batch_size=64,
    )
    spec.report.enabled = False
    result = client.submit(spec).result(timeout=300).raw
    assert not result.latency and [a.format for a in result.artifacts] == ["keras"]
    assert result.history  # the history is part of every result


def test_pruning_report_writes_markdown_and_html_with_the_plots(server, reported, tmp_path):
    import json
    import os
    import subprocess
    import sys

    result, _, job_id = reported
    pruning = pathlib.Path(sys.executable).parent / "pruning"
    env = {**os.environ, "PRUNING_API_KEY": "", "PRUNING_TARGET": server.target}
    out = subprocess.run(
        [str(pruning), "report", job_id, "-o", str(tmp_path / "r"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    written = json.loads(out.stdout)
    markdown = pathlib.Path(written["report_md"]).read_text()
    page = pathlib.Path(written["report_html"]).read_text()
    for section in ("Baseline and pruned", "Latency", "Recipe", "History", "Layers"):
        assert f"## {section}" in markdown and section in page
    assert f"{result.pruned.accuracy:.4f}" in markdown
    for fmt in ("history_png", "layers_png", "tensorboard"):
        path = pathlib.Path(written[fmt])
        assert path.stat().st_size > 0 and path.parent == tmp_path / "r"
        if fmt.endswith("png"):
            assert f"({path.name})" in markdown and f"src='{path.name}'" in page


def test_phase_timings_show_a_second_job_reads_no_data(client, worker, files):
    model, data = client.upload_model(files["keras"]).id, client.upload_dataset(files["data"]).id
    spec = job_spec(model, dataset=data, epochs=1, batch_size=64)
    spec.report.enabled = False
    first = client.submit(spec).result(timeout=300).raw
    second = client.submit(spec).result(timeout=300).raw
    for result in (first, second):
        assert {"inputs", "load", "fine_tune", "evaluate", "export"} <= set(result.phase_seconds)
        assert not {"latency", "report"} & set(result.phase_seconds)  # no report asked
        assert all(s >= 0 for s in result.phase_seconds.values())
    assert result.phase_seconds["fine_tune"] > 0
    assert second.phase_seconds["inputs"] < 0.05, dict(second.phase_seconds)  # the worker kept the dataset
