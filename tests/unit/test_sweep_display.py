"""How the CLI and the reports show a sweep, from hand-built Sweep messages: the budget column
of a sweep without a budget, the rung and epochs of successive halving, and a curve plot that
joins only trials of one rung."""

from __future__ import annotations

import pathlib

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import cli as cli_module
from pruning_client import sweep_spec
from pruning_client.cli import _follow_sweep, _sweep_curve_png, _trial_line, format_sweep, run
from pruning_client.report import sweep_report

OK, RUNNING = pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_RUNNING


def trial(index: int, sparsity: float, state: int = OK, *, within: bool = True, rung: int = 0, epochs: int = 0):
    done = state == OK
    return pb.Trial(
        index=index,
        sparsity=sparsity,
        state=state,
        job_id=f"job{index}",
        pruned_accuracy=0.9 - sparsity / 10 if done else 0,
        baseline_accuracy=0.9 + index / 1000 if done else None,
        accuracy_loss_pp=-sparsity if done else 0,
        kernel_sparsity=sparsity if done else 0,
        gzip_bytes=int(10_000 * (1 - sparsity)) if done else 0,
        within_budget=within and done,  # what the service sets: true when it succeeded, without a budget
        rung=rung,
        epochs=epochs,
    )


def no_budget() -> pb.Sweep:
    spec = sweep_spec(pb.JobSpec(model_id="ab" * 32), sparsities=[0.5, 0.7, 0.9])
    trials = [trial(0, 0.5), trial(1, 0.9), trial(2, 0.7, RUNNING)]
    return pb.Sweep(id="s1", state=RUNNING, spec=spec, trials=trials)


def with_budget() -> pb.Sweep:
    spec = sweep_spec(pb.JobSpec(model_id="ab" * 32), sparsities=[0.5, 0.7, 0.9], max_loss_pp=0.6)
    trials = [trial(0, 0.5), trial(1, 0.9, within=False), trial(2, 0.7, RUNNING)]
    return pb.Sweep(id="s2", state=RUNNING, spec=spec, trials=trials)


def halving() -> pb.Sweep:
    spec = sweep_spec(pb.JobSpec(model_id="ab" * 32), max_loss_pp=1.0, method="successive_halving", max_trials=4)
    trials = [
        trial(0, 0.5, rung=0, epochs=1),
        trial(1, 0.725, rung=0, epochs=1),
        trial(2, 0.95, within=False, rung=0, epochs=1),
        trial(3, 0.725, rung=1, epochs=3),
    ]
    return pb.Sweep(id="s3", state=OK, spec=spec, trials=trials, chosen_trial=3, chosen_job_id="job3")


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and the trial rows of format_sweep's table, as cells (empty cells dropped)."""
    lines = text.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.lstrip().startswith("trial")) :]
    return [c.strip() for c in lines[0].split("  ") if c.strip()], [
        line.split() for line in lines[1:] if line.split()[0].isdigit()
    ]


def markdown_curve(markdown: str) -> tuple[list[str], list[list[str]]]:
    curve = markdown[markdown.index("## Curve") :]
    rows = [line.strip("|").split("|") for line in curve.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row] for row in rows]
    return cells[0], cells[1:]


def test_a_sweep_without_a_budget_shows_no_budget_verdict():
    head, rows = table(format_sweep(no_budget()))
    assert head[-1] == "budget" and [row[-1] for row in rows] == ["-", "-", "-"]
    assert "rung" not in head and [row[1] for row in rows] == ["0.5000", "0.7000", "0.9000"]
    head, rows = markdown_curve(sweep_report(no_budget())[0])
    assert [row[head.index("in budget")] for row in rows] == ["-", "-", "-"]


def test_a_sweep_with_a_budget_says_yes_or_no_once_a_trial_succeeded():
    head, rows = table(format_sweep(with_budget()))
    assert [(row[1], row[-1]) for row in rows] == [("0.5000", "yes"), ("0.7000", "running"), ("0.9000", "no")]
    head, rows = markdown_curve(sweep_report(with_budget())[0])
    assert [row[head.index("in budget")] for row in rows] == ["yes", "", "no"]


def test_successive_halving_shows_rung_and_epochs_by_rung():
    text = format_sweep(halving())
    head, rows = table(text)
    assert head[:4] == ["trial", "rung", "epochs", "sparsity"]
    assert [row[:4] for row in rows] == [
        ["0", "0", "1", "0.5000"],
        ["1", "0", "1", "0.7250"],
        ["2", "0", "1", "0.9500"],
        ["3", "1", "3", "0.7250"],
    ]
    assert [row[-1] for row in rows] == ["yes", "yes", "no", "yes"]
    assert text.endswith("chosen: trial 3, job job3")
    head, rows = markdown_curve(sweep_report(halving())[0])
    assert head[:4] == ["trial", "rung", "epochs", "sparsity"]
    assert [row[:3] for row in rows] == [["0", "0", "1"], ["1", "0", "1"], ["2", "0", "1"], ["3", "1", "3"]]


def test_the_table_and_the_report_say_what_the_sweep_asked():
    text = format_sweep(with_budget())
    assert "budget: at most 0.6 pp of test accuracy lost against the baseline" in text
    assert "baseline test accuracy: 0.9000" in text  # the median of what the trials measured
    assert "sparsities: 0.5, 0.7, 0.9" in text and "method: grid, 3 trials" in text  # a list with a budget too
    assert "budget: none (a curve: every trial counts)" in format_sweep(no_budget())
    search = sweep_spec(pb.JobSpec(model_id="ab" * 32), max_relative_loss_percent=2, search_low=0.6, search_high=0.9)
    search.tolerance = 0.05
    text = format_sweep(pb.Sweep(id="s4", state=RUNNING, spec=search))
    assert "budget: at most 2% of the baseline's test accuracy lost" in text
    assert "searched: 0.6 to 0.9, to within 0.05" in text and "baseline test accuracy" not in text
    markdown, page = sweep_report(halving())
    assert "| budget | at most 1 pp of test accuracy lost against the baseline |" in markdown
    assert "| baseline test accuracy | 0.9010 |" in markdown
    assert "| method | successive halving, 4 trials |" in markdown
    assert "to within" not in markdown  # halving runs its rungs, not to a width
    assert "baseline test accuracy" in page


def test_trial_lines_claim_the_budget_only_with_one():
    sweep = no_budget()
    assert "budget" not in _trial_line(sweep.trials[0], budget=False)
    assert _trial_line(sweep.trials[0], budget=True).endswith("within the budget")
    assert "(rung 1, 3 epochs)" in _trial_line(halving().trials[3], budget=True)


def test_following_a_sweep_without_a_budget(capsys: pytest.CaptureFixture[str]):
    final = no_budget()
    final.state = OK

    class Handle:
        def watch(self):
            yield no_budget()
            yield final

    assert _follow_sweep(Handle(), json_lines=False) == final  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "trial 0: sparsity 0.5000 succeeded" in err and "budget" not in err


def test_sweep_status_prints_the_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    class Client:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def get_sweep(self, sweep_id: str) -> pb.Sweep:
            return halving()

    monkeypatch.setattr(cli_module, "Client", Client)
    assert run(["sweep-status", "s3"]) == 0
    assert capsys.readouterr().out == format_sweep(halving()) + "\n"


def curve_figure(sweep: pb.Sweep, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    closed: list[object] = []
    monkeypatch.setattr(plt, "close", closed.append)  # keeps the figure to look at
    assert _sweep_curve_png(sweep, tmp_path / "curve.png") == "curve.png"
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = closed
    accuracy, size = figure.axes
    return {line.get_label(): list(line.get_xdata()) for line in accuracy.get_lines()}, size.get_lines()


def test_the_curve_of_successive_halving_is_one_line_per_rung(tmp_path, monkeypatch):
    lines, size = curve_figure(halving(), tmp_path, monkeypatch)
    assert lines == {"rung 0 (1 epoch)": [0.5, 0.725, 0.95], "rung 1 (3 epochs)": [0.725], "chosen": [0.725]}
    assert [list(line.get_xdata()) for line in size] == [[0.5, 0.725, 0.95], [0.725]]


def test_the_curve_of_a_grid_is_one_line(tmp_path, monkeypatch):
    lines, _ = curve_figure(no_budget(), tmp_path, monkeypatch)
    assert lines == {"accuracy": [0.5, 0.9]}


def test_a_trial_line_says_lost_or_gained_in_words():
    # trial(): accuracy_loss_pp = -sparsity, a gain
    assert "accuracy 0.8500 (0.50 pp gained)" in _trial_line(trial(0, 0.5), budget=False)
    lost = trial(1, 0.9)
    lost.accuracy_loss_pp = 2.294
    assert "(2.29 pp lost)" in _trial_line(lost, budget=False)
    lost.accuracy_loss_pp = -0.001
    assert "(no change)" in _trial_line(lost, budget=False)
    from pruning_client.results import points

    assert points(-0.00001) == "+0.00 pp" and points(-0.011) == "-1.10 pp"  # never "-0.00 pp"
