"""Sweeps through the real service with two worker processes: the seed CNN (Keras 3) on a slice
of real MNIST, trials fanned out over both workers at once, the curve, an accuracy budget
answered from it, a bisection search, cancel, and bad specs refused."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import grpc
import numpy as np
import pytest

from conftest import ROOT, start_worker, stop_worker
from pruning.v1 import pruning_pb2 as pb
from pruning_client import InvalidArgument, JobCancelled, accuracy_budget, job_spec, polynomial_decay, sweep_spec

pytestmark = pytest.mark.integration
GRID = [0.5, 0.8, 0.95]


@pytest.fixture(scope="module")
def second_worker(env, worker, tmp_path_factory):
    proc = start_worker(env, tmp_path_factory.mktemp("worker2") / "worker.log")
    yield proc
    stop_worker(proc)


@pytest.fixture(scope="module")
def mnist(client_module, tmp_path_factory):
    """The seed CNN trained one epoch on 6,000 MNIST images, and 6,000 / 2,000 for the trials."""
    import keras

    d = tmp_path_factory.mktemp("mnist")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_mnist.py"), "--data-dir", str(d)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    with np.load(d / "mnist.npz") as f:
        x_train, y_train = f["x_train"][:6000] / np.float32(255), f["y_train"][:6000].astype("int64")
        x_test, y_test = f["x_test"][:2000] / np.float32(255), f["y_test"][:2000].astype("int64")
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(12, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    model.save(d / "seed_cnn.keras")
    # float16 keeps the upload under the tests' 16 MiB limit; the model takes it as float32.
    half = {"x_train": x_train.astype("float16"), "x_test": x_test.astype("float16")}
    np.savez(d / "mnist_slice.npz", y_train=y_train, y_test=y_test, **half)
    model_id = client_module.upload_model(d / "seed_cnn.keras").id
    data_id = client_module.upload_dataset(d / "mnist_slice.npz").id
    return job_spec(model_id, dataset=data_id, schedule=polynomial_decay(0.5, 0.8), epochs=2, seed=1)


@pytest.fixture(scope="module")
def client_module(server):
    from pruning_client import Client

    with Client(server.target, timeout=30) as c:
        yield c


def _no_report(spec: pb.JobSpec) -> pb.JobSpec:
    """``spec`` without the report (latency, plots): the searches' tests look at the choice,
    and the curve's trials measure latency for the report's tests."""
    out = pb.JobSpec()
    out.CopyFrom(spec)
    out.report.enabled = False
    return out


def _overlap(a: pb.Trial, b: pb.Trial) -> bool:
    start = max(a.started_at.ToNanoseconds(), b.started_at.ToNanoseconds())
    return start < min(a.finished_at.ToNanoseconds(), b.finished_at.ToNanoseconds())


@pytest.fixture(scope="module")
def curve(client_module, mnist, worker, second_worker):
    sweep = client_module.create_sweep(sweep_spec(mnist, sparsities=GRID, parallel_trials=2), labels={"t": "curve"})
    return sweep.result(timeout=900)


def test_a_sweep_fans_trials_out_over_both_workers_and_returns_the_curve(client_module, curve):
    assert curve.state == pb.JOB_STATE_SUCCEEDED, curve.message
    assert sorted(t.sparsity for t in curve.trials) == GRID
    assert all(t.state == pb.JOB_STATE_SUCCEEDED for t in curve.trials)
    for t in curve.trials:
        assert t.kernel_sparsity == pytest.approx(t.sparsity, abs=0.01)
        assert 0 < t.pruned_accuracy <= 1 and t.gzip_bytes > 0
        job = client_module.get_job(t.job_id)
        assert job.sweep_id == curve.id and job.worker == t.worker
    # Both worker processes held trials at the same time.
    assert len({t.worker for t in curve.trials}) == 2
    assert any(_overlap(a, b) for a in curve.trials for b in curve.trials if a.worker != b.worker)
    assert not curve.HasField("chosen_trial")  # no budget, no answer: the curve is the result
    # The events say it too: each trial's job ran on the worker the sweep records.
    for t in curve.trials:
        logs = [e.log.message for e in client_module.watch_events(t.job_id) if e.WhichOneof("kind") == "log"]
        assert any(f"on {t.worker}" in m for m in logs)


def test_a_budget_picks_the_highest_sparsity_that_keeps_it(client_module, mnist, curve):
    budget = 0.5
    spec = sweep_spec(_no_report(mnist), sparsities=GRID, max_loss_pp=budget, parallel_trials=2)
    sweep = client_module.create_sweep(spec)
    done = sweep.result(timeout=900)
    assert done.state == pb.JOB_STATE_SUCCEEDED
    kept = [t for t in done.trials if t.accuracy_loss_pp <= budget]
    assert kept, [(t.sparsity, t.accuracy_loss_pp) for t in done.trials]  # 0.5 keeps it on this model
    chosen = done.trials[done.chosen_trial]
    assert chosen.accuracy_loss_pp <= budget and chosen.within_budget
    assert chosen.sparsity == max(t.sparsity for t in kept)
    # Checked against the curve: the same trial there is within the budget too, and every
    # sparsity this sweep skipped lies above one that broke it.
    by_sparsity = {t.sparsity: t for t in curve.trials}
    assert by_sparsity[chosen.sparsity].accuracy_loss_pp == pytest.approx(chosen.accuracy_loss_pp, abs=0.3)
    skipped = set(GRID) - {t.sparsity for t in done.trials}
    over = [t.sparsity for t in done.trials if not t.within_budget]
    assert all(over and s > min(over) for s in skipped)


def test_a_search_finds_the_highest_sparsity_within_the_budget(client_module, mnist, worker, second_worker):
    spec = sweep_spec(
        _no_report(mnist), max_loss_pp=1.0, search_low=0.5, search_high=0.97, max_trials=4, parallel_trials=2
    )
    done = client_module.create_sweep(spec).result(timeout=900)
    assert done.state == pb.JOB_STATE_SUCCEEDED and len(done.trials) <= 4
    assert done.trials[0].sparsity in (0.5, 0.97) and done.trials[1].sparsity in (0.5, 0.97)  # the ends first
    assert done.HasField("chosen_trial"), [(t.sparsity, t.accuracy_loss_pp) for t in done.trials]
    chosen = done.trials[done.chosen_trial]
    assert chosen.within_budget and chosen.accuracy_loss_pp <= 1.0
    assert all(not t.within_budget for t in done.trials if t.sparsity > chosen.sparsity)
    assert f"{chosen.sparsity:.4f}" in done.message


def test_cancel_stops_every_trial(client_module, mnist, worker, second_worker):
    spec = sweep_spec(mnist, sparsities=[0.6, 0.7, 0.8, 0.9], parallel_trials=2)
    spec.base.training.epochs = 50
    sweep = client_module.create_sweep(spec)
    cancelled = sweep.cancel()
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    with pytest.raises(JobCancelled):
        sweep.result(timeout=60)
    for t in cancelled.trials:
        job = client_module.job(t.job_id)
        with pytest.raises(JobCancelled):
            job.result(timeout=120)
    assert len(client_module.get_sweep(sweep.id).trials) == len(cancelled.trials)  # nothing queued after


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s.sparsities.append(1.5), f"spec.sparsities[{len(GRID)}]"),
        (lambda s: s.ClearField("sparsities"), "spec.sparsities"),
        (lambda s: setattr(s.base.training, "epochs", -1), "spec.base.training.epochs"),
        (lambda s: setattr(s, "parallel_trials", 999), "spec.parallel_trials"),
    ],
)
def test_bad_sweep_specs_are_refused_with_the_field(client_module, mnist, change, field):
    spec = sweep_spec(mnist, sparsities=GRID)
    change(spec)
    before = len(list(client_module.list_sweeps()))
    with pytest.raises(InvalidArgument) as error:
        client_module.create_sweep(spec)
    assert field in [f for f, _ in error.value.field_violations]
    assert len(list(client_module.list_sweeps())) == before


def test_unknown_sweep_is_not_found(client_module):
    with pytest.raises(Exception) as error:
        client_module.get_sweep("0" * 24)
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def _cli(server, *args: str) -> subprocess.CompletedProcess:
    import os

    pruning = pathlib.Path(sys.executable).parent / "pruning"
    env = {**os.environ, "PRUNING_API_KEY": "", "PRUNING_TARGET": server.target}
    return subprocess.run([str(pruning), *args], capture_output=True, text=True, timeout=600, env=env)


def _cli_sweep(server, mnist, sparsities: str, *budget: str) -> subprocess.CompletedProcess:
    """``pruning sweep --wait`` of one epoch a trial over ``sparsities``, with ``budget``'s flags."""
    args = ["sweep", "--model", mnist.model_id, "--dataset", mnist.dataset.artifact_id, "--epochs", "1"]
    return _cli(server, *args, "--sparsities", sparsities, *budget, "--no-report", "--wait")


def test_the_cli_runs_a_sweep_and_prints_the_curve(server, mnist, worker, second_worker):
    out = _cli_sweep(server, mnist, "0.6,0.85", "--max-loss-pp", "100")
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stdout + out.stderr  # piped: plain lines
    assert "trial 0: sparsity 0.6000" in out.stderr and "trial 1: sparsity 0.8500" in out.stderr
    table = out.stdout.splitlines()
    assert any(" 0.6000 " in row and "succeeded" in row for row in table)
    assert any(" 0.8500 " in row and "succeeded" in row for row in table)
    assert "chosen: trial 1" in out.stdout  # a budget of 100 pp keeps the highest
    sweep_id = table[0].split()[1]
    status = _cli(server, "sweep-status", sweep_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "JOB_STATE_SUCCEEDED"


def test_the_cli_exits_8_when_no_sparsity_keeps_a_sweep_s_budget(server, mnist, worker, second_worker):
    """It exited 0, as if the search had an answer; a job with the same budget fails (exit 8)."""
    out = _cli_sweep(server, mnist, "0.98,0.99", "--max-loss-pp", "0.01")
    assert out.returncode == 8, out.stderr
    # the curve, still (0.99 may be cancelled once 0.98 is over the budget)
    assert any(" 0.9800 " in row and "succeeded" in row for row in out.stdout.splitlines()), out.stdout
    assert "no sparsity tried keeps the accuracy budget" in out.stderr
    out = _cli_sweep(server, mnist, "0.98,0.99")  # no budget: a curve has no answer to miss
    assert out.returncode == 0, out.stderr


def test_the_sweep_report_holds_the_curve_with_latency(server, curve, tmp_path):
    assert all(t.tflite_latency_ms > 0 and t.tflite_baseline_latency_ms > 0 for t in curve.trials)  # with its baseline
    written = _report(server, curve.id, tmp_path, "--sweep")
    markdown = pathlib.Path(written["report_md"]).read_text()
    assert "| baseline test accuracy |" in markdown
    # its id without --sweep: the sweep's report, not "no job"
    plain = pathlib.Path(_report(server, curve.id, tmp_path / "plain")["report_md"]).read_text()
    assert plain.startswith(f"# Sweep {curve.id}")
    for t in curve.trials:
        assert f"| {t.sparsity:.4f} |" in markdown and t.job_id in markdown
    from PIL import Image

    with Image.open(written["curve_png"]) as image:
        assert image.format == "PNG" and image.width > 300


def test_sweep_labels_leave_room_for_the_trials(client_module, mnist):
    labels = {f"k{i}": "v" for i in range(63)}  # its trials would carry 65, over CreateJob's 64
    with pytest.raises(InvalidArgument) as error:
        client_module.create_sweep(sweep_spec(mnist, sparsities=GRID), labels=labels)
    assert "labels" in [f for f, _ in error.value.field_violations]
    with pytest.raises(InvalidArgument) as error:
        client_module.create_sweep(sweep_spec(mnist, sparsities=GRID), idempotency_key="k" * 300)
    assert "idempotency_key" in [f for f, _ in error.value.field_violations]


# -- a job with a budget (JobSpec.budget) ------------------------------------------------------


def _budget_job(mnist: pb.JobSpec, **budget: float) -> pb.JobSpec:
    spec = _no_report(mnist)
    spec.budget.CopyFrom(accuracy_budget(**budget))
    return spec


def test_a_job_with_a_budget_ends_with_the_highest_sparsity_that_keeps_it(
    client_module, server, mnist, worker, second_worker, tmp_path
):
    # the budget bounds its search: 4 trials, not the default 8
    planned = client_module.validate(_budget_job(mnist, max_loss_pp=1.0, max_trials=4))  # the dry run says so
    assert "one trial of the search for the budget, which runs up to 4 trials" in planned.estimate_basis
    assert dict(planned.summary_lines())["accuracy budget"].startswith("at most 1 pp of test accuracy lost")
    job = client_module.submit(_budget_job(mnist, max_loss_pp=1.0, max_trials=4), idempotency_key="budget-job-1")
    again = client_module.submit(_budget_job(mnist, max_loss_pp=1.0, max_trials=4), idempotency_key="budget-job-1")
    assert again.id == job.id  # a retry starts no second search
    result = job.result(timeout=900)
    done = client_module.get_job(job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.search_sweep_id and not done.sweep_id
    sweep = client_module.get_sweep(done.search_sweep_id)
    assert sweep.job_id == job.id and sweep.state == pb.JOB_STATE_SUCCEEDED
    assert sweep.spec.budget.max_loss_pp == 1.0 and not sweep.spec.base.HasField("budget")
    assert sweep.spec.max_trials == 4 and len(sweep.trials) <= 4
    assert [s.id for s in client_module.list_sweeps() if s.job_id == job.id] == [sweep.id]
    # The answer is the search's: the highest sparsity tried within the budget, and every trial
    # above it broke the budget.
    chosen = sweep.trials[sweep.chosen_trial]
    assert chosen.within_budget and chosen.accuracy_loss_pp <= 1.0
    assert all(not t.within_budget for t in sweep.trials if t.sparsity > chosen.sparsity)
    # The job holds the chosen trial's own result and artifacts, and downloads like any job.
    trial_job = client_module.get_job(chosen.job_id)
    assert done.result == trial_job.result
    assert result.raw.pruned_kernel_sparsity == pytest.approx(chosen.sparsity, abs=0.01)
    assert 100 * (result.raw.baseline.accuracy - result.raw.pruned.accuracy) <= 1.0 + 1e-9
    # The job's own events tell the search: running, one line per trial, progress, the result.
    events = list(client_module.watch_events(job.id))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[-1] == "state_change" and events[-1].state_change.to == pb.JOB_STATE_SUCCEEDED
    lines = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert len([m for m in lines if m.startswith("search trial")]) == len(sweep.trials)
    assert f"at sparsity {chosen.sparsity:.4f}" in " ".join(lines)
    progress = [e.progress for e in events if e.WhichOneof("kind") == "progress"]
    assert progress and progress[-1].phase == "search" and progress[-1].step == len(sweep.trials)
    # Its report states the budget and shows the search's trials.
    markdown = pathlib.Path(_report(server, job.id, tmp_path)["report_md"]).read_text()
    assert "at most 1 pp of test accuracy lost against the baseline, searched by sweep " + sweep.id in markdown
    assert f"sparsity {chosen.sparsity:.4f} (trial {chosen.index}) is the highest within it" in markdown
    trials = markdown[markdown.index("## Search trials") :]
    assert all(t.job_id in trials for t in sweep.trials)


def _report(server, ident: str, out: pathlib.Path, *flags: str) -> dict[str, str]:
    """What `pruning report` wrote (its --json output)."""
    import os

    pruning = pathlib.Path(sys.executable).parent / "pruning"
    env = {**os.environ, "PRUNING_API_KEY": "", "PRUNING_TARGET": server.target}
    done = subprocess.run(
        [str(pruning), "report", ident, *flags, "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cancelling_a_job_with_a_budget_cancels_its_search(client_module, mnist, worker, second_worker):
    spec = _budget_job(mnist, max_relative_loss_percent=1.0)
    spec.training.epochs = 50
    job = client_module.submit(spec)
    cancelled = job.cancel()
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    sweep = client_module.get_sweep(cancelled.search_sweep_id)
    assert sweep.state == pb.JOB_STATE_CANCELLED
    for t in sweep.trials:
        with pytest.raises(JobCancelled):
            client_module.job(t.job_id).result(timeout=120)
    with pytest.raises(JobCancelled):
        job.result(timeout=10)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: setattr(s.budget, "max_loss_pp", float("nan")), "spec.budget.max_loss_pp"),
        (lambda s: setattr(s.budget, "max_relative_loss_percent", -1.0), "spec.budget.max_relative_loss_percent"),
        (lambda s: s.pruning.ClearField("schedule") or s.pruning.structured.SetInParent(), "spec.pruning.schedule"),
        (lambda s: setattr(s.training, "epochs", -1), "spec.training.epochs"),
    ],
)
def test_bad_budget_jobs_are_refused_with_the_field(client_module, mnist, change, field):
    spec = _budget_job(mnist, max_loss_pp=0.5)
    change(spec)
    before = len(list(client_module.list_sweeps()))
    with pytest.raises(InvalidArgument) as error:
        client_module.submit(spec)
    assert field in [f for f, _ in error.value.field_violations]
    assert len(list(client_module.list_sweeps())) == before  # no search started


def test_a_dry_run_of_a_budget_job_plans_its_first_trial(client_module, mnist):
    plan = client_module.validate(_budget_job(mnist, max_loss_pp=0.5))
    assert plan.raw.layers  # the plan of the template at the top of the range


def test_successive_halving_runs_its_rungs_as_jobs_with_their_epochs(client_module, mnist, worker, second_worker):
    base = _no_report(mnist)
    base.training.epochs = 3
    spec = sweep_spec(base, max_loss_pp=1.0, method="successive_halving", max_trials=4, parallel_trials=3)
    done = client_module.create_sweep(spec).result(timeout=900)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.message
    assert [(t.rung, t.epochs) for t in done.trials] == [(0, 1)] * 3 + [(1, 3)]
    assert [t.sparsity for t in done.trials[:3]] == [0.5, 0.725, 0.95]
    for t in done.trials:  # each trial's job ran with its rung's epochs
        assert client_module.get_job(t.job_id).spec.training.epochs == t.epochs
    last = done.trials[3]
    rung0 = sorted((t for t in done.trials[:3] if t.state == pb.JOB_STATE_SUCCEEDED), key=lambda t: t.sparsity)
    within = [t.sparsity for t in rung0 if t.within_budget]
    assert last.sparsity == (max(within) if within else rung0[0].sparsity)
    if last.within_budget:
        assert done.chosen_trial == 3  # only the last rung answers
    else:
        assert not done.HasField("chosen_trial")
