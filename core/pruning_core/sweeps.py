"""Sweeps: what to try next and when to stop (pure functions over a ``Sweep``), and the Redis
records of sweeps. Trials are ordinary jobs; a sweep only says which sparsities to queue.

A list of sparsities is tried lowest first, ``parallel_trials`` at a time; with a budget, the
sparsities above the lowest one over it are skipped (accuracy falls with sparsity) and the trials
still going above it are cancelled (``superfluous``), so the
sweep stops once its answer is known. Without a list it searches: the ends of the range first,
then ``parallel_trials`` points evenly inside the interval between the highest sparsity within
the budget and the lowest one over it, round after round, until that interval is narrower than
the tolerance or ``max_trials`` ran. Successive halving (``method``) runs many sparsities on
few epochs, then a third of them (``halving_rate``: the highest sparsity within the budget and those just
above it, since fewer epochs overstate the loss) on three times the epochs, rung after rung
up to the template's epochs, and answers from the last rung only. A failed trial counts as
over the budget and never sinks the sweep.
"""

from __future__ import annotations

import builtins
import itertools
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from pruning.v1 import pruning_pb2 as pb

from . import defaults, validation
from .store import IDEMPOTENCY_TTL_S, TERMINAL, Keys, job_inputs, new_job_id

__all__ = [
    "SweepNotFound",
    "SweepStore",
    "chosen",
    "halving_rungs",
    "is_done",
    "lowest_over",
    "next_trials",
    "rung_epochs",
    "search_for",
    "superfluous",
    "trial_spec",
    "validate",
    "with_defaults",
    "within_budget",
]

SEARCH_LOW, SEARCH_HIGH, TOLERANCE = defaults.SEARCH_LOW, defaults.SEARCH_HIGH, defaults.SEARCH_TOLERANCE
MAX_TRIALS, PARALLEL_TRIALS = defaults.MAX_TRIALS, defaults.PARALLEL_TRIALS
LIMIT_TRIALS, LIMIT_PARALLEL, LIMIT_SPARSITIES = defaults.LIMIT_TRIALS, defaults.LIMIT_PARALLEL, 100
HALVING_RATE, LIMIT_HALVING_RATE = 3, 10
Violation = tuple[str, str]


def _ended(trial: pb.Trial) -> bool:
    return trial.state in TERMINAL


def validate(spec: pb.SweepSpec) -> list[Violation]:
    """Every problem of a sweep spec, the template's own problems under ``spec.base``."""
    out = [
        (f"spec.base{field.removeprefix('spec')}", text)
        for field, text in validation.validate(spec.base)
        if not field.startswith("spec.budget.")  # the template's budget: said once, below
    ]
    if not spec.base.pruning.HasField("schedule"):
        out.append(("spec.base.pruning.schedule", "a sweep varies the schedule's sparsity: give one"))
    if spec.base.pruning.HasField("sparsity_m_by_n"):
        out.append(("spec.base.pruning.sparsity_m_by_n", "fixes the sparsity, so there is nothing to sweep"))
    if len(spec.sparsities) > LIMIT_SPARSITIES:
        out.append(("spec.sparsities", f"at most {LIMIT_SPARSITIES}, got {len(spec.sparsities)}"))
    for i, s in enumerate(spec.sparsities[:LIMIT_SPARSITIES]):
        if not 0 <= s < 1:
            out.append((f"spec.sparsities[{i}]", f"must be in [0, 1), got {s}"))
    if len(spec.sparsities) <= LIMIT_SPARSITIES and len({round(s, 4) for s in spec.sparsities}) != len(spec.sparsities):
        out.append(("spec.sparsities", "lists a sparsity twice"))
    if validation.has_budget(spec.base):
        out.append(("spec.base.budget", "a trial template has no budget of its own: set spec.budget"))
    for name in validation.SEARCH_FIELDS:
        if getattr(spec.base.budget, name):
            out.append((f"spec.base.budget.{name}", f"a trial template has no search of its own: set spec.{name}"))
    validation.validate_budget(spec.budget, "spec.budget", out)
    which = spec.budget.WhichOneof("limit")
    if which is not None and spec.base.training.skip_baseline:
        out.append(("spec.base.training.skip_baseline", "a budget is a loss from the baseline: evaluate it"))
    if which is not None and (problem := validation.budget_loss_problem(spec.base.training)):
        out.append(("spec.base.training.loss", problem))
    if not spec.sparsities and which is None:
        out.append(("spec.sparsities", "give the sparsities to try, or a budget to search for"))
    validation.validate_search(spec, "spec", out)
    for name in validation.SEARCH_FIELDS:
        if getattr(spec.budget, name):
            out.append((f"spec.budget.{name}", f"a sweep searches by its own fields: set spec.{name}"))
    if spec.method not in pb.SearchMethod.values():
        out.append(("spec.method", f"unknown search method {spec.method}"))
    if _halving(spec):
        if which is None:
            out.append(("spec.budget", "successive halving ranks trials against a budget: give one"))
        if spec.halving_rate and not 2 <= spec.halving_rate <= LIMIT_HALVING_RATE:
            out.append(
                (
                    "spec.halving_rate",
                    f"must be in [2, {LIMIT_HALVING_RATE}] (0 = {HALVING_RATE}), got {spec.halving_rate}",
                )
            )
        elif not 0 <= spec.max_trials <= LIMIT_TRIALS or len(spec.sparsities) > LIMIT_SPARSITIES:
            pass  # refused above; its rungs are not counted (a search over 2^31 trials took an hour of the loop)
        elif spec.sparsities and spec.max_trials and sum(halving_rungs(spec)) > spec.max_trials:
            out.append(
                (
                    "spec.max_trials",
                    f"successive halving over {len(spec.sparsities)} sparsities runs {sum(halving_rungs(spec))} "
                    f"trials; max_trials is {spec.max_trials}",
                )
            )
        elif (planned := with_defaults(spec)) and len(rungs := halving_rungs(planned)) > 1:
            # Later rungs train longer than earlier ones, or they only run the same sparsities again
            # on the same budget, and the answer is picked on noise.
            epochs = planned.base.training.epochs or defaults.EPOCHS
            if epochs < len(rungs):
                out.append(
                    (
                        "spec.base.training.epochs",
                        f"successive halving trains each rung longer than the one before, so its {len(rungs)} rungs "
                        f"need at least {_epochs(len(rungs))} (the last rung's), and the template gives "
                        f"{_epochs(epochs)}: give more epochs, fewer trials (max_trials), or use the bisection method",
                    )
                )
    return out


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def with_defaults(spec: pb.SweepSpec) -> pb.SweepSpec:
    out = pb.SweepSpec()
    out.CopyFrom(spec)
    out.search_low = out.search_low or SEARCH_LOW
    out.search_high = out.search_high or SEARCH_HIGH
    out.tolerance = out.tolerance or TOLERANCE
    if _halving(out) and out.sparsities:
        out.max_trials = out.max_trials or sum(halving_rungs(out))
    out.max_trials = out.max_trials or (len(out.sparsities) if out.sparsities else MAX_TRIALS)
    out.halving_rate = out.halving_rate or (HALVING_RATE if _halving(out) else 0)
    out.parallel_trials = out.parallel_trials or PARALLEL_TRIALS
    return out


def trial_spec(base: pb.JobSpec, sparsity: float, epochs: int = 0) -> pb.JobSpec:
    """The template with its final (or constant) sparsity set to ``sparsity`` and, for a rung of
    successive halving, its epochs to ``epochs`` (0: the template's); the recipe's per-layer
    split is made again for it at CreateJob."""
    spec = pb.JobSpec()
    spec.CopyFrom(base)
    if epochs:
        spec.training.epochs = epochs
    spec.ClearField("budget")  # a trial prunes to its sparsity: it searches for nothing
    schedule = spec.pruning.schedule
    if schedule.HasField("constant_sparsity"):
        schedule.constant_sparsity.target_sparsity = sparsity
    else:
        decay = schedule.polynomial_decay
        decay.initial_sparsity = min(decay.initial_sparsity, sparsity)
        decay.final_sparsity = sparsity
    spec.pruning.ClearField("layer_sparsity")
    return spec


def search_for(spec: pb.JobSpec) -> pb.SweepSpec:
    """The search sweep of a job with a budget (JobSpec.budget): the budget's search fields
    become the sweep's own, the sweep defaults where they are 0."""
    base = pb.JobSpec()
    base.CopyFrom(spec)
    base.ClearField("budget")
    sweep = pb.SweepSpec(base=base)
    limit = spec.budget.WhichOneof("limit")
    if limit is not None:
        setattr(sweep.budget, limit, getattr(spec.budget, limit))
    for name in validation.SEARCH_FIELDS:
        setattr(sweep, name, getattr(spec.budget, name))
    return with_defaults(sweep)


# Accuracies come from Keras' float32 metrics, each off the exact count by up to about 1e-7:
# a loss exactly on a budget (0.9779 -> 0.9749, 0.30 pp) read 0.3000021 pp and failed it. They
# are compared at 1e-6 of accuracy, finer than the step of any test set below a million examples.
_ACCURACY_DIGITS = 6


def loss_pp(baseline: float, pruned: float) -> float:
    """Test accuracy lost, in percentage points, at the accuracies' own precision."""
    return round(100 * (round(baseline, _ACCURACY_DIGITS) - round(pruned, _ACCURACY_DIGITS)), _ACCURACY_DIGITS - 2)


def within_budget(trial: pb.Trial, budget: pb.AccuracyBudget) -> bool:
    """Whether a trial that succeeded kept the budget; one without a baseline (accuracy 0,
    skip_baseline) never does, since its loss cannot be told."""
    if trial.state != pb.JOB_STATE_SUCCEEDED:
        return False
    which = budget.WhichOneof("limit")
    if which is None:
        return True
    base = trial.baseline_accuracy
    if base <= 0:
        return False
    lost = loss_pp(base, trial.pruned_accuracy)
    if which == "max_loss_pp":
        return lost <= budget.max_loss_pp + 1e-9
    return lost / round(base, _ACCURACY_DIGITS) <= budget.max_relative_loss_percent + 1e-9


def _has_budget(spec: pb.SweepSpec) -> bool:
    return spec.budget.WhichOneof("limit") is not None


def _tried(sweep: pb.Sweep) -> set[float]:
    return {round(t.sparsity, 4) for t in sweep.trials}


def _grid_next(sweep: pb.Sweep) -> list[float]:
    spec = sweep.spec
    pending = sorted(s for s in {round(s, 4) for s in spec.sparsities} if s not in _tried(sweep))
    if _has_budget(spec) and (lowest := lowest_over(sweep)) is not None:
        pending = [s for s in pending if s < lowest]
    return pending


def _over(trial: pb.Trial) -> bool:
    """Whether a trial ended over the budget: it failed, or it succeeded and lost too much. A
    trial cancelled (its job cancelled by hand, or by the sweep as superfluous) measured
    nothing, so it says nothing of the sparsities above it."""
    return _ended(trial) and not trial.within_budget and trial.state != pb.JOB_STATE_CANCELLED


def lowest_over(sweep: pb.Sweep) -> float | None:
    """The lowest sparsity a list with a budget has seen go over it (None: none yet)."""
    over = [t.sparsity for t in sweep.trials if _over(t)]
    return min(over) if over else None


def superfluous(sweep: pb.Sweep) -> list[pb.Trial]:
    """Trials of a list with a budget still going above the lowest sparsity known to be over
    it: their answer can no longer change the sweep's (accuracy falls with sparsity), so they
    are cancelled rather than left to spend a worker."""
    spec = sweep.spec
    if not spec.sparsities or not _has_budget(spec) or _halving(spec):
        return []
    lowest = lowest_over(sweep)
    if lowest is None:
        return []
    going = [t for t in sweep.trials if not _ended(t) and t.job_id and t.state != pb.JOB_STATE_CANCELLING]
    return [t for t in going if t.sparsity > lowest]


def _search_next(sweep: pb.Sweep) -> list[float]:
    spec = sweep.spec
    if any(not _ended(t) for t in sweep.trials):
        return []  # a round at a time: the next points depend on all of this round's
    low, high = round(spec.search_low, 4), round(spec.search_high, 4)
    ok = [t.sparsity for t in sweep.trials if t.within_budget]
    over = [t.sparsity for t in sweep.trials if _over(t)]
    if high in ok or low in over:
        return []  # the whole range keeps the budget, or none of it does
    a = max(ok) if ok else low
    above = [s for s in over if s > a]
    b = min(above) if above else high
    points = [s for s in (high, low) if s not in _tried(sweep)]
    if not points and b - a > spec.tolerance:
        n = spec.parallel_trials
        points = [round(a + (b - a) * k / (n + 1), 4) for k in range(1, n + 1)]
        tried = _tried(sweep)
        if all(p in tried for p in points):
            # each was tried and cancelled (it measured nothing, so a and b stay): the widest
            # gaps between a, b and those cancelled points are split instead of ending the search
            cuts = sorted({a, b} | {s for s in tried if a < s < b})
            gaps = [(round(hi - lo, 4), lo, hi) for lo, hi in itertools.pairwise(cuts) if hi - lo > spec.tolerance]
            points = [round((lo + hi) / 2, 4) for _, lo, hi in sorted(gaps, key=lambda g: (-g[0], g[1]))[:n]]
    return [s for s in dict.fromkeys(points) if s not in _tried(sweep)]


# -- successive halving ------------------------------------------------------------------------


def _halving(spec: pb.SweepSpec) -> bool:
    return spec.method == pb.SEARCH_METHOD_SUCCESSIVE_HALVING


def _rung_sizes(n: int, rate: int) -> list[int]:
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / rate))
    return sizes


def halving_rungs(spec: pb.SweepSpec) -> list[int]:
    """Trials per rung: rung 0 as many as ``max_trials`` allows (or one per listed sparsity),
    each next a 1/``halving_rate`` of the last, rounded up, down to one."""
    rate = spec.halving_rate or HALVING_RATE
    if spec.sparsities:
        return _rung_sizes(len({round(s, 4) for s in spec.sparsities}), rate)
    n = 1
    while sum(_rung_sizes(n + 1, rate)) <= spec.max_trials:
        n += 1
    return _rung_sizes(n, rate)


def rung_epochs(spec: pb.SweepSpec, rung: int) -> int:
    """The template's epochs divided by halving_rate once per rung still to come, and fewer
    than the next rung's: each rung trains longer than the one before (a rung as short as the
    last only ran its sparsities again, to the same figures). At least rung + 1, which a
    template of fewer epochs than rungs cannot give (validation refuses it)."""
    rate = spec.halving_rate or HALVING_RATE
    last = len(halving_rungs(spec)) - 1
    template = epochs = spec.base.training.epochs or defaults.EPOCHS
    for r in range(last - 1, rung - 1, -1):
        epochs = max(r + 1, min(round(template / rate ** (last - r)), epochs - 1))
    return epochs


def _halving_candidates(sweep: pb.Sweep, rung: int) -> list[float] | None:
    """The sparsities of ``rung``, or None while the rung before it still runs."""
    spec = sweep.spec
    size = halving_rungs(spec)[rung]
    if rung == 0:
        if spec.sparsities:
            return sorted({round(s, 4) for s in spec.sparsities})
        low, high = spec.search_low, spec.search_high
        return [round(low + (high - low) * i / max(1, size - 1), 4) for i in range(size)]
    before = [t for t in sweep.trials if t.rung == rung - 1]
    if any(not _ended(t) for t in before):
        return None
    # Fewer epochs overstate the loss, so the answer at the template's epochs lies at or above
    # the highest sparsity within the budget at these: keep it and the ones just above it.
    done = sorted((t for t in before if t.state == pb.JOB_STATE_SUCCEEDED), key=lambda t: t.sparsity)
    kept = [i for i, t in enumerate(done) if t.within_budget]
    start = max(0, min(kept[-1] if kept else 0, len(done) - size))
    return [round(t.sparsity, 4) for t in done[start : start + size]]


def _halving_next(sweep: pb.Sweep) -> list[tuple[float, int]]:
    for rung in range(len(halving_rungs(sweep.spec))):
        candidates = _halving_candidates(sweep, rung)
        if candidates is None:
            return []
        queued = {round(t.sparsity, 4) for t in sweep.trials if t.rung == rung}
        pending = [(s, rung) for s in candidates if s not in queued]
        if pending:
            return pending
    return []


def _last_rung(sweep: pb.Sweep) -> int:
    return len(halving_rungs(sweep.spec)) - 1 if _halving(sweep.spec) else 0


# -- what to queue, when to stop, the answer ---------------------------------------------------


def _wanted(sweep: pb.Sweep) -> list[tuple[float, int]]:
    """(sparsity, rung) to queue, before the limits on trials."""
    if _halving(sweep.spec):
        return _halving_next(sweep)
    return [(s, 0) for s in (_grid_next(sweep) if sweep.spec.sparsities else _search_next(sweep))]


def next_trials(sweep: pb.Sweep) -> list[pb.Trial]:
    """The trials to queue now (within ``parallel_trials`` and ``max_trials``): sparsity, and
    with successive halving the rung and its epochs; indexes follow the sweep's trials."""
    spec = sweep.spec
    running = sum(1 for t in sweep.trials if not _ended(t))
    room = min(spec.parallel_trials - running, spec.max_trials - len(sweep.trials))
    out = []
    for i, (sparsity, rung) in enumerate(_wanted(sweep)[: max(0, room)]):
        trial = pb.Trial(index=len(sweep.trials) + i, sparsity=sparsity, state=pb.JOB_STATE_QUEUED, rung=rung)
        if _halving(spec):
            trial.epochs = rung_epochs(spec, rung)
        out.append(trial)
    return out


def is_done(sweep: pb.Sweep) -> bool:
    if any(not _ended(t) for t in sweep.trials):
        return False
    if len(sweep.trials) >= sweep.spec.max_trials:
        return True
    return not _wanted(sweep)


def chosen(sweep: pb.Sweep) -> int | None:
    """Index of the trial with the highest sparsity within the budget (None without one);
    with successive halving, among the trials of the last rung (the template's epochs)."""
    if not _has_budget(sweep.spec):
        return None
    last = _last_rung(sweep)
    kept = [t for t in sweep.trials if t.within_budget and t.rung == last]
    return max(kept, key=lambda t: t.sparsity).index if kept else None


def first_failure(sweep: pb.Sweep) -> pb.Trial | None:
    """The first trial that failed when no trial succeeded (a sweep of them failed), else None;
    when none failed either, the first one cancelled (its job cancelled on its own, not by the
    sweep): a sweep that measured nothing did not succeed."""
    if any(t.state == pb.JOB_STATE_SUCCEEDED for t in sweep.trials):
        return None
    return next((t for t in sweep.trials if t.state == pb.JOB_STATE_FAILED), None) or next(
        (t for t in sweep.trials if t.state == pb.JOB_STATE_CANCELLED), None
    )


def conclusion(sweep: pb.Sweep) -> str:
    index = chosen(sweep)
    done = sum(1 for t in sweep.trials if t.state == pb.JOB_STATE_SUCCEEDED)
    failed = sum(1 for t in sweep.trials if t.state == pb.JOB_STATE_FAILED)
    cancelled = sum(1 for t in sweep.trials if t.state == pb.JOB_STATE_CANCELLED)
    why = " above a sparsity over the budget" if superfluous_cancels(sweep) == cancelled else ""
    dropped = f", {cancelled} cancelled{why}" if cancelled else ""
    tail = f" ({done} trial{'' if done == 1 else 's'} succeeded, {failed} failed{dropped})"
    if (first := first_failure(sweep)) is not None:
        # a job's error of at most 500 characters, as a job input error's
        cause = first.error.message if len(first.error.message) <= 380 else first.error.message[:377] + "..."
        job = f" (job {first.job_id})" if first.job_id else " (refused at CreateJob)"
        return f"no trial succeeded ({failed} failed{dropped}); trial {first.index}{job}: {cause}"
    if not _has_budget(sweep.spec):
        listed = {round(s, 4) for s in sweep.spec.sparsities}
        if len(_tried(sweep)) < len(listed):
            return (
                f"{len(_tried(sweep))} of the {len(listed)} sparsities tried (max_trials {sweep.spec.max_trials})"
                + tail
            )
        return "every sparsity tried" + tail
    if index is None:
        return "no sparsity tried keeps the accuracy budget" + tail
    t = sweep.trials[index]
    return (
        f"sparsity {t.sparsity:.4f} is the highest within the budget: accuracy {t.pruned_accuracy:.4f}, "
        f"{lost_or_gained(t.accuracy_loss_pp)}" + tail
    )


def superfluous_cancels(sweep: pb.Sweep) -> int:
    """Trials cancelled above the lowest sparsity a list with a budget saw go over it (those
    ``superfluous`` cancelled); others were cancelled by hand."""
    if not sweep.spec.sparsities or not _has_budget(sweep.spec) or _halving(sweep.spec):
        return 0
    lowest = lowest_over(sweep)
    return sum(
        1 for t in sweep.trials if t.state == pb.JOB_STATE_CANCELLED and lowest is not None and t.sparsity > lowest
    )


def lost_or_gained(loss_pp: float) -> str:
    """An accuracy loss in words: "2.29 pp lost", "0.25 pp gained", "no change" (to 0.01 pp).
    The SDK words it the same (pruning_client.sweeps.lost_or_gained)."""
    change = round(loss_pp, 2)
    return f"{abs(change):.2f} pp {'lost' if change > 0 else 'gained'}" if change else "no change"


def record_job(trial: pb.Trial, job: pb.Job, budget: pb.AccuracyBudget) -> None:
    """Copies a trial job's state and result into the trial."""
    trial.state = job.state
    trial.worker = job.worker
    if job.HasField("started_at"):
        trial.started_at.CopyFrom(job.started_at)
    if job.HasField("finished_at"):
        trial.finished_at.CopyFrom(job.finished_at)
    if job.HasField("error"):
        trial.error.CopyFrom(job.error)
    if job.state == pb.JOB_STATE_SUCCEEDED:
        r = job.result
        trial.pruned_loss = r.pruned.loss
        if r.HasField("baseline"):  # absent when the baseline was skipped
            trial.baseline_loss = r.baseline.loss
        if r.pruned.HasField("accuracy"):  # none under a regression loss
            trial.pruned_accuracy = r.pruned.accuracy
            if r.baseline.HasField("accuracy"):
                trial.baseline_accuracy = r.baseline.accuracy
                trial.accuracy_loss_pp = loss_pp(r.baseline.accuracy, r.pruned.accuracy)
        trial.kernel_sparsity = r.pruned_kernel_sparsity
        trial.gzip_bytes, trial.compression_ratio = r.size_after.gzip_bytes, r.compression_ratio
        single = [x for x in r.latency if x.runtime == "tflite" and x.batch_size == 1]
        if single:
            trial.tflite_latency_ms = single[0].after_ms
            trial.tflite_baseline_latency_ms = single[0].before_ms
            trial.tflite_latency_within_noise = single[0].within_noise
    trial.within_budget = within_budget(trial, budget)


class SweepNotFound(KeyError):
    pass


# KEYS: idempotency key ('' for none), sweep record, tenant index, active set, then the pins
# of each artifact its trials read (see store._DROP_RECORD: the sweep holds them while it is in
# the active set, between its trials too). ARGV: "<id> <fingerprint>", the key's TTL (0 = none), tenant,
# the serialized sweep, queue, now, id. Returns the key's value when it was already taken
# (nothing written), else nil.
_CREATE_SWEEP = """
if KEYS[1] ~= '' then
  local held = redis.call('GET', KEYS[1])
  if held then return held end
  if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  else redis.call('SET', KEYS[1], ARGV[1]) end
end
redis.call('HSET', KEYS[2], 'tenant', ARGV[3], 'sweep', ARGV[4], 'queue', ARGV[5], 'idem', KEYS[1])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
redis.call('SADD', KEYS[4], ARGV[7])
for i = 5, #KEYS do redis.call('SADD', KEYS[i], 'sweep:' .. ARGV[7]) end
return false
"""


class SweepStore:
    """Sweep records in Redis (asyncio): the sweep as one protobuf under its key, changed by
    optimistic transactions (WATCH), a per-tenant index by creation time, the set of sweeps
    still to drive (an ended one until its last trial ends too) and, for retention, when each
    sweep left it."""

    def __init__(self, redis: Any, prefix: str):
        self.redis, self.prefix = redis, prefix
        self.keys = Keys(prefix)
        self._create = redis.register_script(_CREATE_SWEEP)

    def _key(self, sweep_id: str) -> str:
        return self.keys.sweep(sweep_id)

    def _idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:sweep-idem:{tenant}:{key}"

    async def knows_idempotency_key(self, tenant: str, key: str) -> bool:
        return bool(key) and bool(await self.redis.exists(self._idempotency(tenant, key)))

    def _tenant_index(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:sweeps"

    @property
    def active_key(self) -> str:
        return self.keys.active_sweeps()

    @property
    def finished_key(self) -> str:
        return f"{self.prefix}:sweeps:finished"

    async def create(
        self, tenant: str, sweep: pb.Sweep, idempotency_key: str, fingerprint: str, queue: str = ""
    ) -> tuple[pb.Sweep, bool]:
        """Stores a new sweep; with a known idempotency key returns that sweep instead."""
        idem = self._idempotency(tenant, idempotency_key) if idempotency_key else ""
        sweep.version = 1
        # The key and the record in one script: a retry (the SDK sends CreateSweep again after
        # UNAVAILABLE) never finds a key without its sweep
        held = await self._create(
            keys=[
                idem,
                self._key(sweep.id),
                self._tenant_index(tenant),
                self.active_key,
                *(self.keys.pins(tenant, a) for a in job_inputs(sweep.spec.base)),
            ],
            args=[
                f"{sweep.id} {fingerprint}",
                IDEMPOTENCY_TTL_S,
                tenant,
                sweep.SerializeToString(),
                queue,
                time.time(),
                sweep.id,
            ],
        )
        if held is None:
            return sweep, True
        existing = held.decode().split(" ", 1)
        found = await self.get(tenant, existing[0])
        if existing[1] != fingerprint:
            raise ValueError(f"idempotency_key was used for a different request (sweep {found.id})")
        return found, False

    async def get(self, tenant: str | None, sweep_id: str) -> pb.Sweep:
        raw = await self.redis.hgetall(self._key(sweep_id))
        if not raw or (tenant is not None and raw[b"tenant"].decode() != tenant):
            raise SweepNotFound(sweep_id)
        return pb.Sweep.FromString(raw[b"sweep"])

    async def tenant_of(self, sweep_id: str) -> str:
        tenant = await self.redis.hget(self._key(sweep_id), "tenant")
        if tenant is None:
            raise SweepNotFound(sweep_id)
        return str(tenant.decode())

    async def update(
        self, tenant: str | None, sweep_id: str, mutate: Callable[[pb.Sweep], Awaitable[bool] | bool]
    ) -> pb.Sweep:
        """Applies ``mutate`` (True when it changed the sweep) atomically; retries on a race."""
        key = self._key(sweep_id)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    sweep = await self.get(tenant, sweep_id)
                    changed = mutate(sweep)
                    if not isinstance(changed, bool):
                        changed = await changed
                    if not changed:
                        await pipe.unwatch()
                        return sweep
                    sweep.version += 1
                    ending = sweep.state in TERMINAL and all(_ended(t) for t in sweep.trials)
                    owner = (tenant or await self.tenant_of(sweep_id)) if ending else ""
                    pipe.multi()
                    pipe.hset(key, "sweep", sweep.SerializeToString())
                    # A cancelled sweep is driven on until its trials' jobs have ended too.
                    if ending:
                        pipe.srem(self.active_key, sweep_id)
                        pipe.zadd(self.finished_key, {sweep_id: time.time()}, nx=True)
                        for artifact_id in job_inputs(sweep.spec.base):  # it reads them no more
                            pipe.srem(self.keys.pins(owner, artifact_id), f"sweep:{sweep_id}")
                    await pipe.execute()
                    return sweep
                except redis.WatchError:
                    continue  # changed meanwhile: read it again

    async def queue_of(self, sweep_id: str) -> str:
        """The Celery queue the sweep's trials go to (the creating server's)."""
        queue = await self.redis.hget(self._key(sweep_id), "queue")
        return str(queue.decode()) if queue else ""

    async def active(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(self.active_key))

    async def expired(self, ended_before: float, limit: int = 500) -> list[str]:
        """Ids of sweeps that ended (their trials too) before ``ended_before`` (unix s)."""
        ids = await self.redis.zrangebyscore(self.finished_key, "-inf", ended_before, start=0, num=limit)
        return [i.decode() for i in ids]

    async def delete(self, sweep_id: str) -> None:
        """Removes a sweep: its record, index entries and idempotency key (its trials are jobs,
        deleted as jobs)."""
        tenant, idem = await self.redis.hmget(self._key(sweep_id), "tenant", "idem")
        if idem and (await self.redis.get(idem) or b"").startswith(f"{sweep_id} ".encode()):
            await self.redis.delete(idem)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(sweep_id), f"{self._key(sweep_id)}:lock")
            pipe.zrem(self.finished_key, sweep_id)
            pipe.srem(self.active_key, sweep_id)
            if tenant:
                pipe.zrem(self._tenant_index(tenant.decode()), sweep_id)
            await pipe.execute()

    async def lock(self, sweep_id: str, ttl_ms: int) -> bool:
        return bool(await self.redis.set(f"{self._key(sweep_id)}:lock", "1", nx=True, px=ttl_ms))

    async def unlock(self, sweep_id: str) -> None:
        await self.redis.delete(f"{self._key(sweep_id)}:lock")

    async def list(self, tenant: str, page_size: int, page_token: str, state: int) -> tuple[list[pb.Sweep], str]:
        """Newest first. The page token is where the previous page ended (its last sweep's
        place in the tenant's index, ``<score>:<id>``, see :func:`parse_page_token`), so sweeps
        created or deleted between pages neither come twice nor push others out."""
        index = self._tenant_index(tenant)
        bound = parse_page_token(page_token)
        if isinstance(bound, int):  # an offset from a server before cursors (a rolling upgrade)
            last = await self.redis.zrevrange(index, bound - 1, bound - 1, withscores=True) if bound else []
            bound = (last[0][1], last[0][0].decode()) if last else None
            if bound is None and page_token != "0":
                return [], ""
        out: list[pb.Sweep] = []
        while True:
            entries = await self._after(index, bound, page_size)
            if not entries:
                return out, ""
            for raw_id, score in entries:
                bound = (score, raw_id.decode())
                try:
                    sweep = await self.get(tenant, bound[1])
                except SweepNotFound:
                    continue
                if not state or sweep.state == state:
                    out.append(sweep)
                    if len(out) == page_size:
                        return out, f"{score!r}:{bound[1]}"

    async def _after(
        self, index: str, bound: tuple[float, str] | None, count: int
    ) -> builtins.list[tuple[bytes, float]]:
        """Up to ``count`` entries of ``index`` after ``bound`` in its newest-first order (score,
        then id, both descending, as ZREVRANGEBYSCORE orders them)."""
        if bound is None:
            return await self.redis.zrevrangebyscore(index, "+inf", "-inf", start=0, num=count, withscores=True)
        score, last = bound
        ties = await self.redis.zrevrangebyscore(index, repr(score), repr(score))  # ids sharing the score
        skip = sum(1 for t in ties if t.decode() >= last)
        return await self.redis.zrevrangebyscore(index, repr(score), "-inf", start=skip, num=count, withscores=True)


_PAGE_TOKEN = re.compile(r"(-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?):([0-9a-f]{24})")


_LEGACY_TOKEN = re.compile(r"[0-9]{1,12}")  # an offset, as servers before cursors made them


def parse_page_token(token: str) -> tuple[float, str] | int | None:
    """A ListSweeps page token as (score, sweep id); an int for an offset made by an older
    server (honoured through a rolling upgrade); None for the first page. ValueError for
    anything else."""
    if not token:
        return None
    if _LEGACY_TOKEN.fullmatch(token):
        return int(token)
    match = _PAGE_TOKEN.fullmatch(token)
    if match is None or not math.isfinite(float(match.group(1))):
        raise ValueError("not a page token from ListSweeps")
    return float(match.group(1)), match.group(2)


def new_sweep_id() -> str:
    return new_job_id()
