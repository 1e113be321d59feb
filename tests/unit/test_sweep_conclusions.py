"""The sweep's conclusion: a sweep whose trials were all cancelled on their
own (CancelJob of a trial) measured nothing and does not succeed; a cancel by hand is not called
"above a sparsity over the budget"; a list cut short by max_trials does not say every sparsity
was tried; the SDK's JobFailed carries the cancelled trial's code."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2

from pruning.v1 import pruning_pb2 as pb
from pruning_client import JobFailed, job_spec, sweep_spec
from pruning_client.sweeps import outcome
from pruning_core import sweeps

BASE = job_spec("ab" * 32)


def _sweep(**kwargs) -> pb.Sweep:
    return pb.Sweep(id="s", spec=sweeps.with_defaults(sweep_spec(BASE, **kwargs)))


def _add(sweep: pb.Sweep, sparsity: float, state: int, loss_pp: float = 0.0) -> None:
    trial = sweep.trials.add(index=len(sweep.trials), sparsity=sparsity, job_id=f"j{len(sweep.trials)}")
    job = pb.Job(state=state)
    if state == pb.JOB_STATE_SUCCEEDED:
        job.result.baseline.accuracy, job.result.pruned.accuracy = 0.9, 0.9 - loss_pp / 100
    else:
        job.error.code, job.error.message = code_pb2.CANCELLED, "cancelled while running"
    sweeps.record_job(trial, job, sweep.spec.budget)


def test_a_sweep_whose_trials_were_all_cancelled_by_hand_did_not_succeed():
    sweep = _sweep(sparsities=[0.3])
    _add(sweep, 0.3, pb.JOB_STATE_CANCELLED)
    assert sweeps.is_done(sweep)
    assert sweeps.first_failure(sweep) is sweep.trials[0]  # so the driver ends it FAILED
    said = sweeps.conclusion(sweep)
    assert said.startswith("no trial succeeded") and "every sparsity tried" not in said
    assert "over the budget" not in said  # the sweep has no budget
    sweep.state = pb.JOB_STATE_FAILED
    with pytest.raises(JobFailed) as raised:
        outcome(sweep)
    assert raised.value.job_code == code_pb2.CANCELLED  # not 0 (OK)


def test_a_trial_cancelled_by_hand_beside_others_is_not_said_to_be_above_the_budget():
    sweep = _sweep(sparsities=[0.3, 0.6])
    _add(sweep, 0.3, pb.JOB_STATE_SUCCEEDED)
    _add(sweep, 0.6, pb.JOB_STATE_CANCELLED)
    said = sweeps.conclusion(sweep)
    assert "1 cancelled)" in said and "over the budget" not in said


def test_a_list_cut_short_by_max_trials_does_not_say_every_sparsity_was_tried():
    spec = sweep_spec(BASE, sparsities=[0.1, 0.2, 0.3])
    spec.max_trials = 1
    sweep = pb.Sweep(id="s", spec=sweeps.with_defaults(spec))
    _add(sweep, 0.1, pb.JOB_STATE_SUCCEEDED)
    assert sweeps.is_done(sweep)
    said = sweeps.conclusion(sweep)
    assert not said.startswith("every sparsity tried") and "1 of the 3 sparsities" in said
