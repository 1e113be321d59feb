"""Sweeps in the SDK: the spec builder, a handle that follows a sweep to its end, and what
the CLI and the reports read off a sweep (its budget, its rungs).

The asyncio handle, :class:`pruning_client.aio.AsyncSweepHandle`, shares the requests and the
outcome here.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc

from pruning.v1 import pruning_pb2 as pb

from .exceptions import JobCancelled, JobFailed, JobTimeout, PruningError, rpc_errors
from .job import TERMINAL, wait_bound
from .results import plural
from .specs import accuracy_budget, budget_text

if TYPE_CHECKING:
    from .client import Client

__all__ = ["SEARCH_METHODS", "SweepHandle", "budget_text", "sweep_spec"]

_C = TypeVar("_C")

#: Search methods of a sweep by name (see the contract's ``SearchMethod``).
SEARCH_METHODS: dict[str, pb.SearchMethod.ValueType] = {
    "bisection": pb.SEARCH_METHOD_BISECTION,
    "successive_halving": pb.SEARCH_METHOD_SUCCESSIVE_HALVING,
}

# RESOURCE_EXHAUSTED: no watch slot free for the moment (the server's cap on watches).
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def sweep_spec(
    base: pb.JobSpec,
    *,
    sparsities: Sequence[float] = (),
    max_loss_pp: float | None = None,
    max_relative_loss_percent: float | None = None,
    search_low: float = 0.0,
    search_high: float = 0.0,
    tolerance: float = 0.0,
    max_trials: int = 0,
    parallel_trials: int = 0,
    method: str = "bisection",
    halving_rate: int = 0,
) -> pb.SweepSpec:
    """A SweepSpec: trials are ``base`` (see :func:`job_spec`) with the sparsity changed.

    Give ``sparsities`` for a curve (with a budget, the answer is the highest one within it),
    or only a budget (``max_loss_pp`` or ``max_relative_loss_percent``) to search
    [``search_low``, ``search_high``] for the highest sparsity within it. Zeros take the
    server's defaults (range 0.5 to 0.95, tolerance 0.02, 8 trials, 2 at a time). ``method``
    is "bisection" or "successive_halving" (with a budget: many sparsities on few epochs, the
    best 1/``halving_rate`` of them on ``halving_rate`` times more, up to the template's epochs;
    0 = 3).

    Example:
        >>> spec = sweep_spec(job_spec("ab" * 32), max_loss_pp=0.5, parallel_trials=2)
        >>> spec.budget.max_loss_pp, list(spec.sparsities)
        (0.5, [])
    """
    if method not in SEARCH_METHODS:
        raise ValueError(f"method must be one of {sorted(SEARCH_METHODS)}, got {method!r}")
    return pb.SweepSpec(
        base=base,
        method=SEARCH_METHODS[method],
        halving_rate=halving_rate,
        sparsities=list(sparsities),
        budget=accuracy_budget(max_loss_pp, max_relative_loss_percent),
        search_low=search_low,
        search_high=search_high,
        tolerance=tolerance,
        max_trials=max_trials,
        parallel_trials=parallel_trials,
    )


class _BaseSweepHandle(Generic[_C]):
    def __init__(self, client: _C, sweep_id: str, sweep: pb.Sweep | None = None) -> None:
        self.client = client
        """The client the handle calls through."""
        self.id = sweep_id
        """The sweep's id."""
        self.last = sweep
        """The last snapshot of the sweep read, if any."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"


class SweepHandle(_BaseSweepHandle["Client"]):
    """A sweep on the server: follow it with :meth:`watch`, wait with :meth:`result`."""

    client: Client

    def get(self) -> pb.Sweep:
        """The sweep now."""
        self.last = self.client.get_sweep(self.id)
        return self.last

    def cancel(self) -> pb.Sweep:
        """Cancels the sweep and every trial still going."""
        self.last = self.client.cancel_sweep(self.id)
        return self.last

    def watch(self, *, reconnect_delay: float = 1.0) -> Iterator[pb.Sweep]:
        """Every change of the sweep until it ends; reconnects after UNAVAILABLE and resumes
        after the last version seen."""
        return self._follow(reconnect_delay, None)

    def _follow(self, reconnect_delay: float, timeout: float | None) -> Iterator[pb.Sweep]:
        """:meth:`watch`, within ``timeout`` seconds in all (JobTimeout after them, even
        while the stream is silent: each call's deadline is what is left)."""
        timeout = wait_bound(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise JobTimeout(f"sweep {self.id} still running after {timeout} s", sweep=self.last)
            request = watch_request(self.id, seen)
            stream = self.client.sweep_stub.WatchSweep(request, timeout=left, metadata=self.client._metadata)
            try:
                with rpc_errors():
                    for sweep in stream:
                        seen, self.last = sweep.version, sweep
                        yield sweep
                        if sweep.state in TERMINAL:
                            return
            except PruningError as error:
                if error.code not in _RETRIED:
                    raise
                if deadline is None or time.monotonic() < deadline:
                    time.sleep(reconnect_delay)
            finally:
                stream.cancel()

    def result(self, timeout: float | None = None) -> pb.Sweep:
        """Follows the sweep to its end and returns it (its trials are the curve, and
        ``chosen_trial`` the answer). Raises JobCancelled for a cancelled sweep, JobFailed
        for one none of whose trials succeeded (``job_code``: the first failed trial's),
        JobTimeout (a TimeoutError) once ``timeout`` seconds passed."""
        for _ in self._follow(1.0, timeout):
            pass
        return outcome(self.last if self.last is not None else self.get())


def outcome(sweep: pb.Sweep) -> pb.Sweep:
    """``sweep`` once it has ended: JobCancelled or JobFailed unless it succeeded."""
    if sweep.state == pb.JOB_STATE_CANCELLED:
        raise JobCancelled(f"sweep {sweep.id} was cancelled")
    if sweep.state == pb.JOB_STATE_FAILED:  # no trial succeeded: the first failure's code
        first = next((t for t in sweep.trials if t.state == pb.JOB_STATE_FAILED), None) or next(
            (t for t in sweep.trials if t.state == pb.JOB_STATE_CANCELLED), None
        )
        raise JobFailed(f"sweep {sweep.id} failed: {sweep.message}", job_code=first.error.code if first else 0)
    return sweep


def create_request(
    spec: pb.SweepSpec, labels: Mapping[str, str] | None, idempotency_key: str | None
) -> pb.CreateSweepRequest:
    return pb.CreateSweepRequest(
        spec=spec, labels=dict(labels or {}), idempotency_key=idempotency_key or uuid.uuid4().hex
    )


def watch_request(sweep_id: str, after_version: int) -> pb.WatchSweepRequest:
    return pb.WatchSweepRequest(sweep_id=sweep_id, after_version=after_version)


def list_request(state: int, page_size: int, page_token: str) -> pb.ListSweepsRequest:
    return pb.ListSweepsRequest(page_size=page_size, page_token=page_token, state=pb.JobState.ValueType(state))


# -- what the CLI and the reports show ---------------------------------------------------------


def has_budget(sweep: pb.Sweep) -> bool:
    """Whether the sweep has an accuracy budget. Without one, ``Trial.within_budget`` is true
    of every trial that succeeded and means nothing."""
    return sweep.spec.budget.WhichOneof("limit") is not None


def baseline_accuracy(sweep: pb.Sweep) -> float | None:
    """The baseline's test accuracy as the sweep's trials measured it (the model as uploaded,
    the same test data: the median over the trials that measured it), or None (no trial has
    yet, a regression loss, a skipped baseline)."""
    seen = sorted(t.baseline_accuracy for t in sweep.trials if t.HasField("baseline_accuracy"))
    return seen[(len(seen) - 1) // 2] if seen else None


def setup_lines(sweep: pb.Sweep) -> list[tuple[str, str]]:
    """What the sweep asked and what it compares with, as (label, value) rows: the budget, the
    baseline's accuracy, the sparsities tried or the range searched, the method."""
    spec = sweep.spec
    rows = [("budget", budget_text(spec.budget) or "none (a curve: every trial counts)")]
    if (base := baseline_accuracy(sweep)) is not None:
        rows.append(("baseline test accuracy", f"{base:.4f}"))
    if spec.sparsities:
        rows.append(("sparsities", ", ".join(f"{x:g}" for x in spec.sparsities)))
    else:
        # as the service stored it: its defaults in place of the zeros
        within = "" if is_halving(sweep) else f", to within {spec.tolerance:g}"  # halving runs rungs, not to a width
        rows.append(("searched", f"{spec.search_low:g} to {spec.search_high:g}{within}"))
    if is_halving(sweep):
        method = "successive halving"
    else:  # a list of sparsities is tried as it is, with a budget too (the first over it ends it)
        method = "grid" if spec.sparsities or not has_budget(sweep) else "bisection"
    rows.append(("method", f"{method}, {plural(len(sweep.trials), 'trial')}"))
    return rows


def is_halving(sweep: pb.Sweep) -> bool:
    """Whether the sweep runs successive halving (its trials have a rung and their epochs)."""
    return sweep.spec.method == pb.SEARCH_METHOD_SUCCESSIVE_HALVING


def in_budget(sweep: pb.Sweep, trial: pb.Trial) -> str:
    """A trial's budget cell: "yes" or "no" once it succeeded, "" before (or when it did
    not succeed), "-" for every trial of a sweep without a budget."""
    if not has_budget(sweep):
        return "-"
    if trial.state != pb.JOB_STATE_SUCCEEDED:
        return ""
    return "yes" if trial.within_budget else "no"


def lost_or_gained(loss_pp: float) -> str:
    """An accuracy loss in percentage points in words, so its sign cannot be misread.

    Example:
        >>> lost_or_gained(2.29), lost_or_gained(-0.25), lost_or_gained(0.001)
        ('2.29 pp lost', '0.25 pp gained', 'no change')
    """
    rounded = round(loss_pp, 2)
    if rounded == 0:
        return "no change"
    return f"{abs(rounded):.2f} pp {'lost' if rounded > 0 else 'gained'}"


def trial_figures(t: pb.Trial) -> tuple[str, str, str]:
    """A succeeded trial's (accuracy, accuracy lost in pp, test loss) as table cells; the
    accuracies "n/a" under a regression loss, where the test loss tells."""
    return (
        f"{t.pruned_accuracy:.4f}" if t.HasField("pruned_accuracy") else "n/a",
        f"{t.accuracy_loss_pp:+.2f}" if t.HasField("accuracy_loss_pp") else "n/a",
        f"{t.pruned_loss:.4f}",
    )


def trial_latency(t: pb.Trial, unit: str = "") -> str:
    """A trial's TFLite latency of one sample beside its own baseline's, timed in the same job
    ("0.006 (baseline 0.006, within noise)"); "" when it was not measured. Two trials' figures,
    from two jobs, differ by the machine's noise as much as by their sparsity."""
    if not t.tflite_latency_ms:
        return ""
    if not t.tflite_baseline_latency_ms:  # a sweep recorded before the baseline was kept
        return f"{t.tflite_latency_ms:.3f}{unit}"
    noise = ", within noise" if t.tflite_latency_within_noise else ""
    return f"{t.tflite_latency_ms:.3f}{unit} (baseline {t.tflite_baseline_latency_ms:.3f}{unit}{noise})"


def curve(sweep: pb.Sweep) -> list[pb.Trial]:
    """The trials by rung, then by sparsity (every trial is of rung 0 but with successive halving)."""
    return sorted(sweep.trials, key=lambda t: (t.rung, t.sparsity))


def curve_lines(sweep: pb.Sweep) -> list[tuple[str, list[pb.Trial]]]:
    """The succeeded trials as the lines of a curve plot, each with its label: one line, or
    with successive halving one per rung, so no line joins trials of different epochs."""
    done = [t for t in curve(sweep) if t.state == pb.JOB_STATE_SUCCEEDED]
    if not is_halving(sweep):
        return [("accuracy", done)] if done else []
    lines = []
    for rung, group in itertools.groupby(done, key=lambda t: t.rung):
        trials = list(group)
        lines.append((f"rung {rung} ({plural(trials[0].epochs, 'epoch')})", trials))
    return lines
