"""One-page reports of a job or a sweep, in Markdown and in HTML (no dependency), for a
pipeline to publish: what went in, what came out, measured latency, the history, the plots."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from pruning.v1 import pruning_pb2 as pb

from .results import PruneResult, plural, recipe_text, speed_up
from .sweeps import budget_text, curve, in_budget, is_halving, setup_lines, trial_figures, trial_latency

__all__ = ["job_report", "sweep_report"]

Table = tuple[Sequence[str], Sequence[Sequence[str]]]


def _state(value: int) -> str:
    return pb.JobState.Name(pb.JobState.ValueType(value)).removeprefix("JOB_STATE_").lower()


def _md_table(table: Table) -> str:
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    head, rows = table
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _render(title: str, sections: list[tuple[str, Table | str]], images: Sequence[tuple[str, str]]) -> tuple[str, str]:
    md = [f"# {title}"]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:60em;margin:auto}}",
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;",
        "text-align:right}th{background:#eee}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, content in sections:
        md += ["", f"## {heading}", ""]
        page.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, str):
            md.append(content)
            page.append(f"<p>{html.escape(content)}</p>")
        else:
            md.append(_md_table(content))
            page.append(_html_table(content))
    for caption, src in images:
        md += ["", f"![{caption}]({src})"]
        page.append(f"<figure><img src='{html.escape(src)}' alt='{html.escape(caption)}'>")
        page.append(f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page.append("</body></html>")
    return "\n".join(md) + "\n", "\n".join(page) + "\n"


def job_report(
    job: pb.Job,
    files: dict[str, str] | None = None,
    search: pb.Sweep | None = None,
    missing: Sequence[str] = (),
) -> tuple[str, str]:
    """(Markdown, HTML) of ``job``; ``files`` maps artifact formats ("history_png",
    "layers_png", "tensorboard", ...) to file names beside the report, for links and images
    (a format left out has none; a job that stored no plots says so). ``missing`` names the
    job's report files the server no longer holds (deleted, or past the artifact retention):
    the report says so. A job with an accuracy budget states it, with the trials of ``search``
    (its ``search_sweep_id``) where given."""
    r, files = job.result, files or {}
    result = PruneResult.from_proto(r)
    # A job that ended before its evaluation has its figures at their zero defaults: "n/a"
    evaluated = job.state == pb.JOB_STATE_SUCCEEDED or r.HasField("pruned")
    sections: list[tuple[str, Table | str]] = []
    sections.append(("Outcome", _outcome(job)))
    if job.spec.budget.WhichOneof("limit") is not None:
        sections += _budget_sections(job, search)
    sections.append(
        (
            "Baseline and pruned",
            (
                ("", "baseline", "pruned"),
                [
                    ("test accuracy", *(_accuracy(m) for m in (r.baseline, r.pruned))),
                    (
                        "test loss",
                        f"{r.baseline.loss:.4f}" if r.HasField("baseline") else "n/a",
                        f"{r.pruned.loss:.4f}" if evaluated else "n/a",
                    ),
                    ("file size (gzip)", _gzip_bytes(r.size_before), _gzip_bytes(r.size_after)),
                    (
                        "accuracy delta (pp)",
                        "",
                        f"{100 * r.accuracy_delta:+.2f}" if r.HasField("accuracy_delta") else "n/a",
                    ),
                    (
                        "pruned kernel sparsity",
                        "",
                        # measured after the exports: a job failing in them has none
                        f"{r.pruned_kernel_sparsity:.4f}" if job.state == pb.JOB_STATE_SUCCEEDED or r.layers else "n/a",
                    ),
                    ("compression (gzip)", "", f"{r.compression_ratio:.2f}x" if r.compression_ratio else "n/a"),
                    *(
                        (f"test accuracy, {x.format} export ({x.samples:,} samples)", "", f"{x.accuracy:.4f}")
                        for x in r.export_accuracy
                    ),
                ],
            ),
        )
    )
    if r.HasField("structured"):
        st = r.structured
        sections.append(("Structured pruning", (("", "figure"), result.structured_lines())))
        sections.append(
            (
                "Layer widths (output channels)",
                (
                    ("layer", "type", "baseline", "pruned"),
                    [(x.name, x.type, str(x.channels_before), str(x.channels_after)) for x in st.layers],
                ),
            )
        )
    if r.latency:
        sections.append(
            (
                "Latency (median ms, measured on the worker)",
                (
                    ("runtime", "device", "batch", "baseline", "pruned", "speed-up", "runs"),
                    [
                        (
                            x.runtime,
                            x.device,
                            str(x.batch_size),
                            f"{x.before_ms:.3f}",
                            f"{x.after_ms:.3f}",
                            speed_up(x),
                            str(x.repeats),
                        )
                        for x in r.latency
                    ],
                ),
            )
        )
    rc = r.recipe
    if rc.name:
        sections.append(
            (
                "Recipe",
                recipe_text(rc),
            )
        )
    if r.history:
        sections.append(
            (
                "History",
                (
                    ("epoch", "loss", "accuracy", "val loss", "val accuracy", "target sparsity", "learning rate"),
                    [
                        (
                            str(e.epoch),
                            f"{e.loss:.4f}",
                            f"{e.accuracy:.4f}" if e.HasField("accuracy") else "",
                            f"{e.val_loss:.4f}" if e.HasField("val_loss") else "",
                            f"{e.val_accuracy:.4f}" if e.HasField("val_accuracy") else "",
                            f"{e.sparsity:.3f}",
                            f"{e.learning_rate:.2e}",
                        )
                        for e in r.history
                    ],
                ),
            )
        )
    if r.layers:
        sections.append(
            (
                "Layers",
                (
                    ("layer", "type", "pruned", "weights", "non-zero", "sparsity", "target"),
                    [
                        (
                            x.name,
                            x.type,
                            result.how_pruned(x),
                            f"{x.weights:,}",
                            f"{x.nonzero:,}",
                            f"{x.sparsity:.4f}",
                            f"{x.target_sparsity:.4f}" if x.pruned else "",
                        )
                        for x in r.layers
                    ],
                ),
            )
        )
    if r.phase_seconds:
        sections.append(
            (
                "Time on the worker (seconds per phase, the last attempt)",
                (("phase", "seconds"), [(name, f"{r.phase_seconds[name]:.2f}") for name in _in_order(r.phase_seconds)]),
            )
        )
    if "tensorboard" in files:
        sections.append(("TensorBoard", f"unzip {files['tensorboard']} and run tensorboard --logdir on it"))
    plots = (("history_png", "training"), ("layers_png", "layers"))
    images = [(caption, files[fmt]) for fmt, caption in plots if files.get(fmt)]
    if not {a.format for a in r.artifacts} & {fmt for fmt, _ in plots}:
        sections.append(("Plots", "none stored: a job makes them when it succeeds with its report enabled"))
    if missing:
        sections.append(("Missing files", _MISSING + ", ".join(missing)))
    return _render(f"Pruning job {job.id}", sections, images)


_MISSING = "no longer stored on the server (deleted, or past the artifact retention), so not in this report: "


def _budget_sections(job: pb.Job, search: pb.Sweep | None) -> list[tuple[str, Table | str]]:
    """A budget job's budget and the search behind its sparsity: the search's setup and its
    trials when ``search`` is given, else where to find them."""
    text = f"{budget_text(job.spec.budget)}, searched by sweep {job.search_sweep_id}"
    if job.state == pb.JOB_STATE_SUCCEEDED and search is not None and search.HasField("chosen_trial"):
        picked = next((t for t in search.trials if t.index == search.chosen_trial), None)
        if picked is not None:
            text += f": sparsity {picked.sparsity:.4f} (trial {picked.index}) is the highest within it"
    if search is None:
        return [("Accuracy budget", text + f" (pruning report {job.search_sweep_id} --sweep shows its trials)")]
    return [("Accuracy budget", text), ("Search", (("", ""), setup_lines(search))), ("Search trials", _curve(search))]


# The phases in the order a job runs them (a map keeps none); others after, by name
_PHASES = (
    "inputs",
    "load",
    "baseline",
    "structure",
    "fine_tune",
    "evaluate",
    "export",
    "latency",
    "report",
)  # pruning_core.phases


def _in_order(seconds: Mapping[str, float]) -> list[str]:
    return sorted(seconds, key=lambda name: (_PHASES.index(name) if name in _PHASES else len(_PHASES), name))


def _outcome(job: pb.Job) -> str:
    """The state, its error, and how far the job got: the epochs and device where the result
    has them, else (a job that ended early) the step it stopped at."""
    r, p = job.result, job.progress
    text = _state(job.state) + (f": {job.error.message}" if job.error.message else "")
    ran = [plural(len(r.history), "epoch")] if r.history else []
    if r.device:
        ran.append(f"on {r.device}")
    said = [" ".join(ran)] if ran else []
    if job.state != pb.JOB_STATE_SUCCEEDED and p.total_steps and p.step < p.total_steps:
        said.append(f"stopped at step {p.step:,} of {p.total_steps:,}" + (f" ({p.phase})" if p.phase else ""))
    return "; ".join([text, *said])


def _gzip_bytes(size: pb.SizeStats) -> str:
    """A gzip size, or "n/a" where none was measured (no file is 0 bytes gzipped)."""
    return f"{size.gzip_bytes:,}" if size.gzip_bytes else "n/a"


def _accuracy(metrics: pb.Metrics) -> str:
    """A test accuracy, or "n/a" (a regression loss has none; a skipped baseline neither)."""
    return f"{metrics.accuracy:.4f}" if metrics.HasField("accuracy") else "n/a"


def sweep_report(sweep: pb.Sweep, curve_png: str | None = None) -> tuple[str, str]:
    """(Markdown, HTML) of ``sweep``: the answer, what it asked (the budget, the baseline's
    accuracy, the sparsities or range, the method) and the curve (one row per trial, by
    sparsity; with successive halving by rung first, with the rung's epochs). Without a
    budget, "in budget" is "-"."""
    answer = sweep.message or _state(sweep.state)
    if sweep.HasField("chosen_trial"):
        answer += f" (trial {sweep.chosen_trial}, job {sweep.chosen_job_id})"
    sections: list[tuple[str, Table | str]] = [
        ("Answer", answer),
        ("Setup", (("", ""), setup_lines(sweep))),
        ("Curve", _curve(sweep)),
    ]
    return _render(f"Sweep {sweep.id}", sections, [("sweep curve", curve_png)] if curve_png else [])


def _curve(sweep: pb.Sweep) -> Table:
    """The trials as a table, by rung then sparsity."""
    halving = is_halving(sweep)
    head = (
        "trial",
        *(("rung", "epochs") if halving else ()),
        "sparsity",
        "state",
        "accuracy",
        "loss (pp)",
        "test loss",
    )
    head += ("gzip bytes", "TFLite ms (batch 1)", "in budget", "worker", "job")
    rows = [
        (
            str(t.index),
            *((str(t.rung), str(t.epochs)) if halving else ()),
            f"{t.sparsity:.4f}",
            _state(t.state),
            *(trial_figures(t) if t.state == pb.JOB_STATE_SUCCEEDED else ("", "", "")),
            f"{t.gzip_bytes:,}" if t.gzip_bytes else "",
            trial_latency(t),
            in_budget(sweep, t),
            t.worker,
            t.job_id,
        )
        for t in curve(sweep)
    ]
    return head, rows
