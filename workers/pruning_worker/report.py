"""The job's report: the TensorBoard logs of the fine-tuning and PNG plots (training curves,
per-layer sparsity); its latency figures are :func:`pruning_worker.measure.latency_figures`'s."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_core import formats

__all__ = ["plots", "tensorboard_archive", "tensorboard_callbacks"]


def tensorboard_callbacks(log_dir: pathlib.Path, pruned: bool) -> list[Any]:
    """Keras's TensorBoard logs per epoch, and TFMOT's pruning summaries (each pruned layer's
    sparsity and threshold) when layers are pruned."""
    callbacks: list[Any] = [
        keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False, update_freq="epoch")
    ]
    if pruned:
        callbacks.append(tfmot.sparsity.keras.PruningSummaries(log_dir=str(log_dir), update_freq="epoch"))
    return callbacks


def tensorboard_archive(log_dir: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path | None:
    """The log directory as one zip (what ``tensorboard --logdir`` opens once unpacked)."""
    if not log_dir.is_dir() or not any(log_dir.rglob("*")):
        return None
    base = workdir / "report"
    return pathlib.Path(shutil.make_archive(str(base), "zip", root_dir=log_dir)).rename(
        workdir / f"report{formats.REPORT_FILES['tensorboard']}"
    )


def _both_legends(ax, twin) -> tuple[list, list]:
    """The lines of an axis and of its twin, for one legend (each axis' own shows only its own)."""
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    return lines + more, labels + more_labels


def plots(result: pb.PruneResult, workdir: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """PNGs of the training curves (loss, accuracy, the schedule's sparsity per epoch) and of
    the per-layer sparsity against each layer's target."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    out = []
    if result.history:
        epochs = [e.epoch for e in result.history]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(epochs, [e.loss for e in result.history], "o-", label="loss")
        if all(e.HasField("val_loss") for e in result.history):
            ax_loss.plot(epochs, [e.val_loss for e in result.history], "o--", label="validation loss")
        if all(e.HasField("accuracy") for e in result.history):  # none under a regression loss
            ax_acc.plot(epochs, [e.accuracy for e in result.history], "o-", label="accuracy")
        if all(e.HasField("val_accuracy") for e in result.history):
            ax_acc.plot(epochs, [e.val_accuracy for e in result.history], "o--", label="validation accuracy")
        sparsity = ax_acc.twinx()
        sparsity.plot(epochs, [e.sparsity for e in result.history], "s:", color="gray", label="target sparsity")
        sparsity.set_ylim(0, 1)
        sparsity.set_ylabel("target sparsity")
        for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.set_xlabel("epoch")
            ax.set_title(title)
        ax_loss.legend(loc="best", fontsize="small")
        ax_acc.legend(*_both_legends(ax_acc, sparsity), loc="best", fontsize="small")
        fig.suptitle(f"fine-tuning ({result.recipe.name or 'recipe'})")
        fig.tight_layout()
        path = workdir / f"report{formats.REPORT_FILES['history_png']}"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append((path, "history_png"))
    pruned = [layer for layer in result.layers if layer.pruned]
    if pruned:
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(pruned) + 2), 4))
        names = [layer.name for layer in pruned]
        ax.bar(names, [layer.sparsity for layer in pruned], label="measured")
        ax.scatter(names, [layer.target_sparsity for layer in pruned], color="black", marker="_", s=400, label="target")
        ax.set_ylim(0, 1)
        ax.set_ylabel("kernel sparsity")
        ax.set_title(f"per-layer sparsity (all pruned kernels: {result.pruned_kernel_sparsity:.4f})")
        ax.legend(loc="lower right", fontsize="small")
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        fig.tight_layout()
        path = workdir / f"report{formats.REPORT_FILES['layers_png']}"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append((path, "layers_png"))
    return out
