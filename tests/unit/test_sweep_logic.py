"""What a sweep queues next and when it stops, on synthetic trial results: the curve a
parallel_trials at a time, skipping above the first sparsity over the budget, the bisection
search narrowing to the tolerance, failed trials counted as over the budget, and the spec
checks."""

from __future__ import annotations

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import job_spec, sweep_spec
from pruning_core import sweeps, validation

BASE = job_spec("ab" * 32)


def _sweep(**kwargs) -> pb.Sweep:
    return pb.Sweep(id="s", spec=sweeps.with_defaults(sweep_spec(BASE, **kwargs)))


def _play(sweep: pb.Sweep, loss_at, fail=()) -> list[list[pb.Trial]]:
    """Plays the sweep to its end with ``loss_at(sparsity, epochs)`` as each trial's loss (pp),
    the sparsities in ``fail`` failing; returns the rounds of trials queued together."""
    rounds = []
    while not sweeps.is_done(sweep):
        queued = sweeps.next_trials(sweep)
        assert queued, "not done, yet nothing to queue"
        rounds.append(queued)
        for t in queued:
            trial = sweep.trials.add()
            trial.CopyFrom(t)
            job = pb.Job(state=pb.JOB_STATE_FAILED if t.sparsity in fail else pb.JOB_STATE_SUCCEEDED)
            job.result.baseline.accuracy = 0.98
            job.result.pruned.accuracy = 0.98 - loss_at(t.sparsity, t.epochs) / 100
            sweeps.record_job(trial, job, sweep.spec.budget)
    return rounds


def _run(sweep: pb.Sweep, loss_at, fail=()) -> list[list[float]]:
    """:func:`_play` with ``loss_at(sparsity)``; returns the rounds of sparsities."""
    return [[t.sparsity for t in r] for r in _play(sweep, lambda s, _epochs: loss_at(s), fail)]


def test_a_curve_runs_parallel_trials_at_a_time_lowest_first():
    sweep = _sweep(sparsities=[0.9, 0.5, 0.8, 0.7, 0.95], parallel_trials=2)
    rounds = _run(sweep, lambda s: 10 * s)
    assert rounds == [[0.5, 0.7], [0.8, 0.9], [0.95]]
    assert sweeps.chosen(sweep) is None  # no budget, no answer


def test_a_curve_with_a_budget_stops_above_the_first_sparsity_over_it():
    sweep = _sweep(sparsities=[0.5, 0.7, 0.8, 0.9, 0.95], max_loss_pp=0.5, parallel_trials=1)
    _run(sweep, lambda s: {0.5: -0.1, 0.7: 0.2, 0.8: 0.4, 0.9: 0.9, 0.95: 3.0}[s])
    assert [t.sparsity for t in sweep.trials] == [0.5, 0.7, 0.8, 0.9]  # 0.95 skipped
    assert sweep.trials[sweeps.chosen(sweep)].sparsity == 0.8


def test_the_search_narrows_to_the_tolerance_and_finds_the_threshold():
    threshold = 0.8731  # loss crosses 0.5 pp here
    sweep = _sweep(max_loss_pp=0.5, search_low=0.5, search_high=0.95, tolerance=0.01, max_trials=20)
    rounds = _run(sweep, lambda s: 0.5 * s / threshold)
    assert sorted(rounds[0]) == [0.5, 0.95]  # the ends first
    best = sweep.trials[sweeps.chosen(sweep)].sparsity
    assert threshold - 0.01 <= best <= threshold
    assert all(not t.within_budget for t in sweep.trials if t.sparsity > best)
    assert "highest within the budget" in sweeps.conclusion(sweep)


def test_the_search_stops_at_once_when_the_whole_range_keeps_the_budget_or_none_does():
    easy = _sweep(max_loss_pp=5.0)
    assert _run(easy, lambda s: 0.0) == [[0.95, 0.5]]
    assert easy.trials[sweeps.chosen(easy)].sparsity == 0.95
    hopeless = _sweep(max_loss_pp=0.1)
    _run(hopeless, lambda s: 1.0)
    assert sweeps.chosen(hopeless) is None and "no sparsity" in sweeps.conclusion(hopeless)


def test_max_trials_bounds_the_search():
    sweep = _sweep(max_loss_pp=0.5, tolerance=0.0001, max_trials=5, parallel_trials=2)
    _run(sweep, lambda s: s - 0.3)
    assert len(sweep.trials) == 5


def test_a_failed_trial_counts_as_over_the_budget_and_the_sweep_goes_on():
    sweep = _sweep(sparsities=[0.5, 0.7, 0.8], max_loss_pp=1.0, parallel_trials=3)
    _run(sweep, lambda s: 0.0, fail={0.8})
    assert [t.state for t in sweep.trials].count(pb.JOB_STATE_FAILED) == 1
    assert sweep.trials[sweeps.chosen(sweep)].sparsity == 0.7


def test_relative_budget():
    sweep = _sweep(sparsities=[0.5, 0.9], max_relative_loss_percent=1.0, parallel_trials=2)
    _run(sweep, lambda s: {0.5: 0.9, 0.9: 1.2}[s])  # 0.9 pp of 98% is 0.92%, 1.2 pp is 1.22%
    assert sweep.trials[sweeps.chosen(sweep)].sparsity == 0.5


def test_a_trial_spec_changes_the_sparsity_only():
    spec = sweeps.trial_spec(BASE, 0.3)
    decay = spec.pruning.schedule.polynomial_decay
    assert decay.final_sparsity == pytest.approx(0.3) and decay.initial_sparsity == pytest.approx(0.3)
    assert spec.model_id == BASE.model_id and spec.training == BASE.training


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "spec.sparsities"),
        ({"sparsities": [0.5, 0.5]}, "spec.sparsities"),
        ({"sparsities": [1.0]}, "spec.sparsities[0]"),
        ({"max_loss_pp": float("nan")}, "spec.budget.max_loss_pp"),
        ({"max_loss_pp": 1.0, "search_low": 0.9, "search_high": 0.6}, "spec.search_low"),
        ({"sparsities": [0.5], "max_trials": 101}, "spec.max_trials"),
        ({"sparsities": [0.5], "parallel_trials": -1}, "spec.parallel_trials"),
    ],
)
def test_spec_checks(kwargs, field):
    assert field in dict(sweeps.validate(sweep_spec(BASE, **kwargs)))


def test_the_template_is_checked_under_base():
    base = job_spec("", epochs=-1)
    fields = dict(sweeps.validate(sweep_spec(base, sparsities=[0.5])))
    assert "spec.base.model_id" in fields and "spec.base.training.epochs" in fields


@pytest.mark.parametrize("budget", [{"max_loss_pp": 1.0}, {"max_relative_loss_percent": 1.0}])
def test_a_budget_needs_the_baseline(budget):
    base = job_spec("ab" * 32)
    base.training.skip_baseline = True
    assert "spec.base.training.skip_baseline" in dict(sweeps.validate(sweep_spec(base, sparsities=[0.5], **budget)))
    assert not sweeps.validate(sweep_spec(base, sparsities=[0.5]))  # a curve without a budget needs none
    job = pb.JobSpec()
    job.CopyFrom(base)
    job.budget.CopyFrom(pb.AccuracyBudget(**budget))
    assert "spec.training.skip_baseline" in dict(validation.validate(job))


@pytest.mark.parametrize("loss", ["mean_squared_error", "mean_absolute_error"])
def test_a_budget_needs_a_classification_loss(loss):
    """Under a regression loss the accuracy is 0 throughout: a budget search ran every trial and
    failed with 'no sparsity tried keeps the accuracy budget'. Refused before it starts."""
    base = job_spec("ab" * 32, loss=loss)
    assert "spec.base.training.loss" in dict(sweeps.validate(sweep_spec(base, sparsities=[0.5], max_loss_pp=1.0)))
    assert not sweeps.validate(sweep_spec(base, sparsities=[0.5]))  # a curve of its losses is fine
    job = pb.JobSpec()
    job.CopyFrom(base)
    job.budget.max_loss_pp = 1.0
    assert "no accuracy to keep" in dict(validation.validate(job))["spec.training.loss"]


@pytest.mark.parametrize("budget", [{"max_loss_pp": 1.0}, {"max_relative_loss_percent": 1.0}])
def test_a_trial_without_a_baseline_is_never_within_the_budget(budget):
    sweep = _sweep(sparsities=[0.5, 0.95], parallel_trials=2, **budget)
    for t in sweeps.next_trials(sweep):
        trial = sweep.trials.add()
        trial.CopyFrom(t)
        job = pb.Job(state=pb.JOB_STATE_SUCCEEDED)  # skip_baseline: no result.baseline
        job.result.pruned.accuracy = 0.88
        sweeps.record_job(trial, job, sweep.spec.budget)
    assert not any(t.within_budget for t in sweep.trials)
    assert sweeps.is_done(sweep) and sweeps.chosen(sweep) is None


# -- successive halving ----------------------------------------------------------------------


def test_successive_halving_runs_rungs_of_more_epochs_on_the_best_and_answers_from_the_last():
    spec = sweep_spec(BASE, max_loss_pp=0.5, method="successive_halving", max_trials=8, parallel_trials=8)
    spec.base.training.epochs = 9
    sweep = pb.Sweep(id="s", spec=sweeps.with_defaults(spec))
    assert sweeps.halving_rungs(sweep.spec) == [5, 2, 1]  # 8 trials: 5, then 2, then 1
    # The loss grows with sparsity and shrinks with epochs: at 9 epochs it crosses 0.5 pp at 0.85.
    rounds = _play(sweep, lambda s, e: max(0.0, (s - 0.5) * 10 / 7) * (9 / e) ** 0.3)
    assert [[t.rung for t in r] for r in rounds] == [[0] * 5, [1] * 2, [2]]
    assert [t.epochs for t in sweep.trials] == [1] * 5 + [3] * 2 + [9]
    assert [t.sparsity for t in rounds[0]] == [0.5, 0.6125, 0.725, 0.8375, 0.95]
    # Rung 1 keeps the highest sparsity within the budget at 1 epoch (0.6125) and the one just
    # above it (0.725: over at 1 epoch, within at 3); rung 2 the highest within at 3 epochs.
    assert [t.sparsity for t in rounds[1]] == [0.6125, 0.725]
    assert [t.sparsity for t in rounds[2]] == [0.725]
    answer = sweep.trials[sweeps.chosen(sweep)]
    assert answer.rung == 2 and answer.epochs == 9 and answer.within_budget and answer.sparsity == 0.725
    # A low rung's trial is never the answer, even where it kept the budget at a higher sparsity.
    assert all(sweeps.chosen(sweep) != t.index for t in sweep.trials if t.rung < 2)


def test_successive_halving_over_listed_sparsities_skips_a_failed_trial():
    spec = sweep_spec(BASE, sparsities=[0.6, 0.7, 0.8], max_loss_pp=1.0, method="successive_halving")
    sweep = pb.Sweep(id="s", spec=sweeps.with_defaults(spec))
    assert sweeps.halving_rungs(sweep.spec) == [3, 1] and sweep.spec.max_trials == 4
    first = sweeps.next_trials(sweep)
    for t in first[:2]:  # parallel_trials 2: 0.6 and 0.7 first
        trial = sweep.trials.add()
        trial.CopyFrom(t)
        job = pb.Job(state=pb.JOB_STATE_FAILED if t.sparsity == 0.7 else pb.JOB_STATE_SUCCEEDED)
        job.result.baseline.accuracy, job.result.pruned.accuracy = 0.98, 0.975
        sweeps.record_job(trial, job, sweep.spec.budget)
    assert [t.sparsity for t in sweeps.next_trials(sweep)] == [0.8]
    trial = sweep.trials.add()
    trial.CopyFrom(sweeps.next_trials(sweep)[0])
    job = pb.Job(state=pb.JOB_STATE_SUCCEEDED)
    job.result.baseline.accuracy, job.result.pruned.accuracy = 0.98, 0.95  # 3 pp: over
    sweeps.record_job(trial, job, sweep.spec.budget)
    last = sweeps.next_trials(sweep)
    assert [(t.sparsity, t.rung, t.epochs) for t in last] == [(0.6, 1, 2)]  # the highest within it


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "successive_halving"}, "spec.budget"),
        ({"method": "successive_halving", "max_loss_pp": 1.0, "halving_rate": 1}, "spec.halving_rate"),
        (
            {"method": "successive_halving", "max_loss_pp": 1.0, "sparsities": [0.5, 0.6, 0.7, 0.8], "max_trials": 4},
            "spec.max_trials",
        ),
    ],
)
def test_bad_halving_specs_name_the_field(kwargs, field):
    kwargs.setdefault("sparsities", [0.5, 0.9])
    assert field in [f for f, _ in sweeps.validate(sweep_spec(BASE, **kwargs))]


def test_successive_halving_with_too_few_epochs_to_halve_is_refused():
    """Each rung trains longer than the one before: with 2 epochs for 3 rungs, rungs 0 and 1
    both trained 1 epoch and rung 1 only ran rung 0's sparsities again, to the same figures."""
    for epochs in (1, 2):
        few = job_spec("ab" * 32, epochs=epochs)
        ((field, text),) = sweeps.validate(sweep_spec(few, max_loss_pp=1.0, method="successive_halving", max_trials=8))
        assert field == "spec.base.training.epochs"
        assert f"its 3 rungs need at least 3 epochs (the last rung's), and the template gives {epochs} epoch" in text
    for epochs, expected in ((3, [1, 2, 3]), (4, [1, 2, 4]), (9, [1, 3, 9]), (30, [3, 10, 30])):
        spec = sweep_spec(
            job_spec("ab" * 32, epochs=epochs), max_loss_pp=1.0, method="successive_halving", max_trials=8
        )
        assert sweeps.validate(spec) == []
        planned = sweeps.with_defaults(spec)
        assert [sweeps.rung_epochs(planned, rung) for rung in range(3)] == expected  # strictly longer each rung


@pytest.mark.parametrize(
    "budget, baseline, pruned, kept",
    [
        # Keras' float32 accuracies of 9,779 and 9,749 correct of 10,000: 0.30 pp exactly.
        ({"max_loss_pp": 0.3}, 0.9779000282287598, 0.9749000072479248, True),
        ({"max_loss_pp": 0.3}, 0.9779000282287598, 0.9748000502586365, False),  # 0.31 pp
        # 0.49 pp of 0.98 is 0.5 % exactly, in float32 too.
        ({"max_relative_loss_percent": 0.5}, 0.9800000190734863, 0.9750999808311462, True),
        ({"max_relative_loss_percent": 0.5}, 0.9800000190734863, 0.9749999642372131, False),
    ],
)
def test_a_loss_exactly_on_the_budget_keeps_it(budget, baseline, pruned, kept):
    job = pb.Job(state=pb.JOB_STATE_SUCCEEDED)
    job.result.baseline.accuracy, job.result.pruned.accuracy = baseline, pruned
    trial = pb.Trial()
    sweeps.record_job(trial, job, pb.AccuracyBudget(**budget))
    assert trial.within_budget is kept
    if "max_loss_pp" in budget and kept:
        assert trial.accuracy_loss_pp == 0.3  # shown as it is, not 0.3000021


def test_the_conclusion_of_a_sweep_no_trial_of_which_succeeded_names_the_first_failure():
    sweep = _sweep(sparsities=[0.5, 0.7])
    _run(sweep, lambda s: 0.1, fail=(0.5, 0.7))
    assert sweeps.first_failure(sweep) is sweep.trials[0]
    assert sweeps.conclusion(sweep).startswith("no trial succeeded (2 failed); trial 0")
    some = _sweep(sparsities=[0.5, 0.7])
    _run(some, lambda s: 0.1, fail=(0.7,))
    assert sweeps.first_failure(some) is None and sweeps.conclusion(some).startswith("every sparsity tried")


@pytest.mark.parametrize("loss, said", [(0.25, "0.25 pp lost"), (-0.25, "0.25 pp gained"), (0.001, "no change")])
def test_the_conclusion_words_a_loss_as_a_loss_and_a_gain_as_a_gain(loss, said):
    sweep = _sweep(sparsities=[0.5], max_loss_pp=0.5)
    _run(sweep, lambda s: loss)
    assert f"accuracy {0.98 - loss / 100:.4f}, {said} (1 trial succeeded" in sweeps.conclusion(sweep)


def test_a_jobs_budget_bounds_its_search_and_zeros_take_the_sweep_defaults():
    from pruning_client import accuracy_budget

    job = job_spec("ab" * 32, budget=accuracy_budget(max_loss_pp=1.0, search_low=0.6, max_trials=3, parallel_trials=3))
    assert validation.validate(job) == []
    search = sweeps.search_for(job)
    assert (search.search_low, search.search_high, search.tolerance) == (0.6, sweeps.SEARCH_HIGH, sweeps.TOLERANCE)
    assert (search.max_trials, search.parallel_trials) == (3, 3)
    # the sweep's budget is the limit alone: its search is the sweep's own fields
    assert search.budget == pb.AccuracyBudget(max_loss_pp=1.0) and sweeps.validate(search) == []
    assert not search.base.HasField("budget")
    played = _run(pb.Sweep(id="s", spec=search), lambda s: 0.0 if s < 0.8 else 5.0)
    assert sum(map(len, played)) == 3 and sorted(played[0]) == [0.6, sweeps.SEARCH_HIGH]  # the ends, then one
    plain = sweeps.search_for(job_spec("ab" * 32, budget=accuracy_budget(max_loss_pp=1.0)))
    assert (plain.search_low, plain.max_trials, plain.parallel_trials) == (0.5, 8, 2)


@pytest.mark.parametrize(
    ("search", "field"),
    [
        ({"search_low": 0.9, "search_high": 0.6}, "spec.budget.search_low"),
        ({"search_high": 1.0}, "spec.budget.search_high"),
        ({"search_high": 0.3}, "spec.budget.search_high"),  # under the default low, 0.5
        ({"search_low": float("nan")}, "spec.budget.search_low"),
        ({"tolerance": float("nan")}, "spec.budget.tolerance"),
        ({"max_trials": 101}, "spec.budget.max_trials"),
        ({"parallel_trials": 33}, "spec.budget.parallel_trials"),
    ],
)
def test_a_jobs_search_bounds_are_checked_with_the_budgets_field(search, field):
    from pruning_client import accuracy_budget

    job = job_spec("ab" * 32, budget=accuracy_budget(max_loss_pp=1.0, **search))
    assert field in dict(validation.validate(job))


def test_search_bounds_without_a_budget_or_on_a_sweeps_budget_are_refused():
    job = job_spec("ab" * 32)
    job.budget.max_trials = 4  # no limit: nothing to search for, and it would be ignored
    (violation,) = validation.validate(job)
    assert violation[0] == "spec.budget.max_trials" and "give the budget" in violation[1]
    spec = sweep_spec(BASE, max_loss_pp=1.0)
    spec.budget.search_low = 0.7  # a sweep's search is its own search_low
    assert "set spec.search_low" in dict(sweeps.validate(spec))["spec.budget.search_low"]
    template = job_spec("ab" * 32)
    template.budget.max_trials = 3  # a template's: the sweep's own max_trials says it
    fields = dict(sweeps.validate(sweep_spec(template, sparsities=[0.5])))
    assert (
        list(fields) == ["spec.base.budget.max_trials"]
        and "set spec.max_trials" in fields["spec.base.budget.max_trials"]
    )


def test_only_a_budgeted_lists_trials_going_above_a_sparsity_over_it_are_superfluous():
    sweep = _sweep(sparsities=[0.5, 0.6, 0.7, 0.8], max_loss_pp=1.0, parallel_trials=4)
    states = [pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_QUEUED, pb.JOB_STATE_CANCELLING]
    for index, (sparsity, state) in enumerate(zip([0.5, 0.6, 0.7, 0.8], states, strict=True)):
        sweep.trials.add(index=index, sparsity=sparsity, state=state, job_id=f"j{index}")
    sweep.trials[0].within_budget = True
    assert sweeps.superfluous(sweep) == []  # nothing known over the budget yet (0.5 kept it)
    sweep.trials[0].within_budget = False  # 0.5 went over: 0.6 and 0.7 can no longer matter
    assert [t.sparsity for t in sweeps.superfluous(sweep)] == [0.6, 0.7]  # 0.8 is already being cancelled
    searching = _sweep(max_loss_pp=1.0)  # a search waits for its round instead
    searching.trials.add(index=0, sparsity=0.3, state=pb.JOB_STATE_SUCCEEDED)
    searching.trials.add(index=1, sparsity=0.9, state=pb.JOB_STATE_RUNNING, job_id="j")
    assert sweeps.superfluous(searching) == []
    curve = _sweep(sparsities=[0.5, 0.6], parallel_trials=2)  # no budget: every point is wanted
    curve.trials.add(index=0, sparsity=0.5, state=pb.JOB_STATE_SUCCEEDED)
    curve.trials.add(index=1, sparsity=0.6, state=pb.JOB_STATE_RUNNING, job_id="j")
    assert sweeps.superfluous(curve) == []


def _run_one_at_a_time(sweep: pb.Sweep, cancelled: float, loss) -> None:
    """Runs ``sweep`` one trial at a time to its end: the trial at ``cancelled`` is cancelled by
    hand, the others succeed, losing ``loss(sparsity)`` points of accuracy."""
    while not sweeps.is_done(sweep):
        (queued,) = sweeps.next_trials(sweep)
        trial = sweep.trials.add()
        trial.CopyFrom(queued)
        trial.job_id = f"j{trial.index}"
        hand = trial.sparsity == cancelled
        job = pb.Job(state=pb.JOB_STATE_CANCELLED if hand else pb.JOB_STATE_SUCCEEDED)
        if not hand:
            job.result.baseline.accuracy, job.result.pruned.accuracy = 0.98, 0.98 - loss(trial.sparsity) / 100
        sweeps.record_job(trial, job, sweep.spec.budget)


def test_a_trial_cancelled_by_hand_is_not_over_the_budget_and_the_list_goes_on():
    """A trial whose job was cancelled by hand (CancelJob of its job) measured nothing: it
    counted as the lowest sparsity over the budget, so every listed sparsity above it was
    skipped and the sweep answered the one below it, within a budget all of them keep."""
    sweep = _sweep(sparsities=[0.2, 0.4, 0.6, 0.8], max_loss_pp=50.0, parallel_trials=1)
    _run_one_at_a_time(sweep, cancelled=0.4, loss=lambda sparsity: 1.0)
    assert [t.sparsity for t in sweep.trials] == [0.2, 0.4, 0.6, 0.8]
    assert sweeps.lowest_over(sweep) is None and sweeps.superfluous_cancels(sweep) == 0
    assert sweep.trials[sweeps.chosen(sweep)].sparsity == 0.8


def test_a_search_trial_cancelled_by_hand_does_not_bound_the_search_from_above():
    sweep = _sweep(max_loss_pp=0.5, search_low=0.5, search_high=0.9, tolerance=0.01, parallel_trials=2)
    for sparsity, state, loss in (
        (0.5, pb.JOB_STATE_SUCCEEDED, 0.1),
        (0.9, pb.JOB_STATE_SUCCEEDED, 3.0),
        (0.7, pb.JOB_STATE_CANCELLED, 0),
    ):
        trial = sweep.trials.add(index=len(sweep.trials), sparsity=sparsity, job_id=f"j{len(sweep.trials)}")
        job = pb.Job(state=state)
        if state == pb.JOB_STATE_SUCCEEDED:
            job.result.baseline.accuracy, job.result.pruned.accuracy = 0.98, 0.98 - loss / 100
        sweeps.record_job(trial, job, sweep.spec.budget)
    # 0.5 keeps the budget, 0.9 is over it and 0.7 measured nothing: the next points lie
    # between 0.5 and 0.9, not only below the cancelled 0.7
    assert [t.sparsity for t in sweeps.next_trials(sweep)] == [0.6333, 0.7667]


@pytest.mark.parametrize("max_trials", [10**7, -(2**31)])
def test_a_successive_halving_sweep_with_max_trials_out_of_bounds_is_refused_at_once(max_trials):
    """The rungs of a search are counted up to its max_trials, one at a time: a 49-byte
    CreateSweep asking for 2^31 - 1 trials held the server's loop for about an hour (20 million
    took 56 s) before its refusal. Out of bounds, it is refused without counting them."""
    import time

    spec = sweep_spec(BASE, max_loss_pp=1.0, method="successive_halving")
    spec.max_trials = max_trials
    started = time.monotonic()
    fields = [f for f, _ in sweeps.validate(spec)]
    assert time.monotonic() - started < 1
    assert "spec.max_trials" in fields


def test_a_search_goes_on_past_a_midpoint_cancelled_by_hand():
    """With one trial at a time, the midpoint a search computes again after its trial was
    cancelled is the one it tried: the search ended there (0.5 answered, though 0.8 keeps the
    budget and the range was far wider than the tolerance). The gaps beside it are split."""
    sweep = _sweep(max_loss_pp=0.5, search_low=0.5, search_high=0.9, tolerance=0.01, parallel_trials=1)
    _run_one_at_a_time(sweep, cancelled=0.7, loss=lambda sparsity: 0.1 if sparsity <= 0.8 else 3.0)
    assert [t.sparsity for t in sweep.trials][:4] == [0.9, 0.5, 0.7, 0.6]
    assert 0.8 - 2 * sweep.spec.tolerance <= sweep.trials[sweeps.chosen(sweep)].sparsity <= 0.8
