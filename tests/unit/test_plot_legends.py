"""Every line of a plot is in its legend, those drawn on a twin axis too (the history plot's
target sparsity was left out); the sweep plot's gzip bytes have a panel of their own."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib.figure import Figure

from pruning.v1 import pruning_pb2 as pb

matplotlib.use("Agg")


@pytest.fixture
def legends(monkeypatch):
    """The legend texts of each figure saved, by file name."""
    seen: dict[str, list[str]] = {}
    save = Figure.savefig

    def recording(self, path, *args, **kwargs):
        seen[str(path).rsplit("/", 1)[-1]] = [
            t.get_text() for ax in self.axes if ax.get_legend() for t in ax.get_legend().get_texts()
        ]
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return seen


def test_the_history_plot_names_the_target_sparsity(tmp_path, legends):
    pytest.importorskip("tensorflow")
    from pruning_worker.report import plots

    result = pb.PruneResult(
        history=[pb.EpochSummary(epoch=i, loss=1.0 / i, accuracy=0.5 + i / 10, sparsity=0.2 * i) for i in (1, 2, 3)]
    )
    plots(result, tmp_path)
    texts = [t for name, found in legends.items() if "history" in name for t in found]
    assert {"loss", "accuracy", "target sparsity"} <= set(texts), legends


def test_the_sweep_plot_draws_accuracy_and_gzip_bytes_on_panels_of_their_own(tmp_path, monkeypatch):
    """On twin axes that scale themselves, two trials drew the accuracy line exactly under the
    gzip bytes line: one could not be seen."""
    from pruning_client.cli import _sweep_curve_png

    saved: list[Figure] = []
    save = Figure.savefig

    def recording(self, path, *args, **kwargs):
        saved.append(self)
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    sweep = pb.Sweep(id="s" * 24)
    for i, sparsity in enumerate((0.5, 0.8)):
        sweep.trials.add(
            index=i, sparsity=sparsity, state=pb.JOB_STATE_SUCCEEDED, pruned_accuracy=0.9 - i / 10, gzip_bytes=1000 - i
        )
    _sweep_curve_png(sweep, tmp_path / "curve.png")
    (figure,) = saved
    top, bottom = figure.axes
    assert top.get_ylabel() == "test accuracy" and bottom.get_ylabel() == "gzip bytes"
    assert [list(line.get_ydata()) for line in top.get_lines()] == [[0.9, 0.8]]
    assert [list(line.get_ydata()) for line in bottom.get_lines()] == [[1000, 999]]
    assert top.bbox.y0 >= bottom.bbox.y1  # one above the other, not on top of each other
