"""The job report of a structured pruning job shows what it did (it had no structured section
and a recipe of "schedule steps 0 to 0 every 0"), and its latency says when it is noise."""

from __future__ import annotations

from pruning.v1 import pruning_pb2 as pb
from pruning_client.report import job_report


def _structured_job() -> pb.Job:
    job = pb.Job(id="j" * 24, state=pb.JOB_STATE_SUCCEEDED)
    r = job.result
    r.device = "CPU"
    r.recipe.CopyFrom(pb.RecipeResult(name="keep_accuracy", learning_rate=0.002, epochs_run=2, best_epoch=2))
    r.structured.CopyFrom(
        pb.StructuredResult(
            params_before=97962,
            params_after=24922,
            flops_before=13_100_000,
            flops_after=6_560_000,
            groups=4,
            groups_pruned=3,
            criterion="l1",
            layers=[pb.LayerWidth(name="stem", type="Conv2D", channels_before=32, channels_after=16)],
            left_whole=[pb.LayerLeftWhole(name="logits", reason="reaches the model output 'logits'")],
            latency=[pb.Latency(runtime="tflite", batch_size=64, before_ms=3.0, after_ms=0.8, repeats=10)],
        )
    )
    r.latency.append(pb.Latency(runtime="tflite", batch_size=1, before_ms=0.014, after_ms=0.0095, within_noise=True))
    r.layers.extend(
        [
            pb.LayerSparsity(name="stem", type="Conv2D", weights=144, nonzero=144),
            pb.LayerSparsity(name="logits", type="Dense", weights=160, nonzero=160),
        ]
    )
    return job


def test_a_structured_job_report_shows_what_was_cut():
    markdown, html = job_report(_structured_job())
    assert "Structured pruning" in markdown and "97,962 -> 24,922" in markdown
    assert "13,100,000 -> 6,560,000" in markdown and "3.75x" in markdown
    assert "| stem | Conv2D | 32 | 16 |" in markdown
    assert "left whole: logits" in markdown
    assert "no sparsity schedule (structured pruning only)" in markdown and "steps 0 to 0" not in markdown
    assert "1.47x, within noise" in markdown
    assert "Structured pruning" in html
    # the layer table names the cut layer's pruning (it said "no": its kernel is dense)
    assert "| stem | Conv2D | channels | 144 |" in markdown and "| logits | Dense | no | 160 |" in markdown


def test_the_notebook_view_names_a_layer_whose_channels_were_cut():
    from pruning_client.results import PruneResult

    page = PruneResult.from_proto(_structured_job().result)._repr_html_()
    assert "<tr><td>stem</td><td>Conv2D</td><td>channels</td>" in page
    assert "<tr><td>logits</td><td>Dense</td><td>no</td>" in page


def _budget_job() -> tuple[pb.Job, pb.Sweep]:
    job = pb.Job(id="b" * 24, state=pb.JOB_STATE_SUCCEEDED, search_sweep_id="s" * 24)
    job.spec.budget.max_loss_pp = 0.5
    job.result.baseline.accuracy = 0.99
    job.result.phase_seconds.update({"inputs": 0.01, "fine_tune": 12.5})
    spec = pb.SweepSpec(base=pb.JobSpec(model_id="ab" * 32), search_low=0.5, search_high=0.95, tolerance=0.02)
    spec.budget.max_loss_pp = 0.5
    trials = [
        pb.Trial(index=0, sparsity=0.5, state=pb.JOB_STATE_SUCCEEDED, baseline_accuracy=0.99, pruned_accuracy=0.988),
        pb.Trial(index=1, sparsity=0.95, state=pb.JOB_STATE_SUCCEEDED, baseline_accuracy=0.99, pruned_accuracy=0.9),
        pb.Trial(index=2, sparsity=0.725, state=pb.JOB_STATE_SUCCEEDED, baseline_accuracy=0.99, pruned_accuracy=0.987),
    ]
    for t, within in zip(trials, (True, False, True), strict=True):
        t.within_budget, t.job_id = within, f"job{t.index}"
    search = pb.Sweep(id="s" * 24, state=pb.JOB_STATE_SUCCEEDED, spec=spec, trials=trials, chosen_trial=2)
    return job, search


def test_a_budget_job_report_states_its_budget_and_the_search_behind_it():
    job, search = _budget_job()
    markdown, html = job_report(job, search=search)
    assert "at most 0.5 pp of test accuracy lost against the baseline, searched by sweep " + "s" * 24 in markdown
    assert "sparsity 0.7250 (trial 2) is the highest within it" in markdown
    assert "| searched | 0.5 to 0.95, to within 0.02 |" in markdown and "| method | bisection, 3 trials |" in markdown
    trials = markdown[markdown.index("## Search trials") :]
    assert trials.index("| 0.5000 |") < trials.index("| 0.7250 |") < trials.index("| 0.9500 |")
    assert "Search trials" in html
    # Without the sweep (its record gone), the budget is still told, with where the trials were
    markdown, _ = job_report(job)
    assert (
        "at most 0.5 pp" in markdown and "--sweep shows its trials" in markdown and "## Search trials" not in markdown
    )
    # A job without a budget has no such section; every job shows its seconds per phase
    plain = pb.Job(id="p" * 24, state=pb.JOB_STATE_SUCCEEDED)
    plain.result.phase_seconds.update({"export": 1.0, "fine_tune": 3.0, "inputs": 0.01, "load": 0.5})
    markdown, _ = job_report(plain)
    assert "Accuracy budget" not in markdown and "| fine_tune | 3.00 |" in markdown
    phases = [line.split("|")[1].strip() for line in markdown.split("## Time on the worker")[1].splitlines()[4:8]]
    assert phases == ["inputs", "load", "fine_tune", "export"]  # the order a job runs them


def test_a_failed_job_report_shows_what_it_measured_and_where_it_stopped():
    job = pb.Job(id="f" * 24, state=pb.JOB_STATE_FAILED, error=pb.JobError(code=4, message="ran past its time limit"))
    job.progress.CopyFrom(pb.Progress(phase="fine_tune", step=422, total_steps=844))
    job.result.device = "CPU"
    job.result.baseline.accuracy, job.result.baseline.loss = 0.9812, 0.07
    markdown, _ = job_report(job)
    assert "failed: ran past its time limit; on CPU; stopped at step 422 of 844 (fine_tune)" in markdown
    assert "| test accuracy | 0.9812 | n/a |" in markdown
    assert "| pruned kernel sparsity |  | n/a |" in markdown  # never measured: not 0.0000
    job.result.history.add(epoch=1, loss=0.2)  # an epoch ran whole before it stopped: still said where
    markdown, _ = job_report(job)
    assert "failed: ran past its time limit; 1 epoch on CPU; stopped at step 422 of 844 (fine_tune)" in markdown
    job.result.pruned.accuracy = 0.97  # failed in its exports: evaluated, its sparsity still unmeasured
    markdown, _ = job_report(job)
    assert "| test accuracy | 0.9812 | 0.9700 |" in markdown and "| pruned kernel sparsity |  | n/a |" in markdown


def test_the_cli_result_table_names_a_layer_whose_channels_were_cut():
    from pruning_client.cli import format_table
    from pruning_client.results import PruneResult

    rows = {
        line.split()[0]: line.split()
        for line in format_table(PruneResult.from_proto(_structured_job().result)).splitlines()
        if line.startswith(("stem ", "logits "))
    }
    assert rows["stem"][2] == "channels" and rows["logits"][2] == "no"
