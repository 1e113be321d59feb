"""``pruning``: command line of the pruning service (click).

Every command takes ``--json`` for machine-readable output, and the connection options
(``--target``, ``--api-key``, ``--tls``, ``--ca-file``, ``--timeout``, ``--json``) before or
after the command name. Exit codes: 0 success, 2 invalid argument or out of range (or a local
file that cannot be read or written), 3 not found, 4 unauthenticated or permission denied, 5
resource exhausted, 6 failed precondition or already exists, 7 unavailable or deadline exceeded,
8 job failed, 9 job cancelled, 10 timeout, 11 integrity error or data loss (a download that fails
its CRC-32 or sha256 check, a file that changed while uploaded, bytes the server's store lost), 130
interrupted, 1 anything else.

Commands other packages install (``pruning up`` from the server package) come from the
``pruning.commands`` entry-point group; each entry point names a :class:`click.Command`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import itertools
import json
import os
import pathlib
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

import click
import grpc
from click.core import ParameterSource
from google.protobuf import json_format
from google.protobuf.message import Message

from pruning.v1 import pruning_pb2 as pb

from .client import MAX_TIMEOUT_S, VERIFY_MODES, Client, _api_key_problem, _target_problem, make_dirs, remove_empty_dirs
from .exceptions import JobFailed, NotFound, PruningError
from .job import JobHandle, _artifact_suffix, _is_directory, format_name, is_terminal, pick_export
from .report import job_report, sweep_report
from .results import JobPlan, ModelSummary, PruneResult, figure, int64_as_numbers, plural, points, recipe_text, speed_up
from .specs import (
    EXPORT_FORMATS,
    IMPORTANCE_CRITERIA,
    RECIPES,
    REPORT_FORMATS,
    accuracy_budget,
    budget_text,
    constant_sparsity,
    export_format,
    export_format_name,
    exports,
    job_spec,
    polynomial_decay,
)
from .specs import structured as structured_spec
from .sweeps import (
    SEARCH_METHODS,
    SweepHandle,
    curve,
    curve_lines,
    has_budget,
    in_budget,
    is_halving,
    lost_or_gained,
    setup_lines,
    sweep_spec,
    trial_figures,
    trial_latency,
)
from .sweeps import (
    outcome as sweep_outcome,
)

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["COMMAND_GROUP", "cli", "follow", "format_plan", "format_summary", "format_table", "main", "run"]

#: Entry-point group of the commands other packages add (``up`` from pruning-server).
COMMAND_GROUP = "pruning.commands"
DEFAULT_TARGET = "127.0.0.1:50051"
#: Without a terminal, the progress is one line per epoch and at least every this many seconds.
PLAIN_PROGRESS_INTERVAL_S = 10.0
_GLOBALS_KEY = "pruning_client.cli.globals"
# A local file that cannot be read or written exits as click's own check of a missing one does.
_LOCAL_FILE_EXIT = click.UsageError.exit_code
_STATES = [s.removeprefix("JOB_STATE_").lower() for s, v in pb.JobState.items() if v != pb.JOB_STATE_UNSPECIFIED]

F = TypeVar("F", bound=Callable[..., Any])


class _Int(click.types.IntParamType):
    """An integer within the contract's field (int32 or int64), and at least ``minimum``: a
    value past it is a usage error (exit 2), not protobuf's ValueError from deep inside the
    spec's building. The help shows no range: the bounds are the wire's, not advice."""

    def __init__(self, bits: int, minimum: int | None = None) -> None:
        self.low = -(2 ** (bits - 1)) if minimum is None else minimum
        self.high = 2 ** (bits - 1) - 1

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{number} is not in the range {self.low} to {self.high}", param, ctx)
        return number


INT32, INT64 = _Int(32), _Int(64)

_V = TypeVar("_V")


# -- options shared by every command -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GlobalOptions:
    """The connection and output options, wherever on the command line they were given."""

    target: str = DEFAULT_TARGET
    api_key: str | None = None
    tls: bool = False
    ca_file: pathlib.Path | None = None
    timeout: float = 30.0
    verify: str = "crc32"
    json: bool = False


class _Seconds(click.FloatRange):
    """A number of seconds in a range; NaN (which passes every comparison) is refused too."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:
            self.fail(f"{value!r} is not a number of seconds.", param, ctx)
        return seconds


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keeps a global option's value in the context chain: the group's value, unless the
    subcommand's copy of the option was given on the command line."""
    assert param.name is not None
    store: dict[str, Any] = ctx.meta.setdefault(_GLOBALS_KEY, {})
    if param.name not in store or ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        store[param.name] = value
    return value


def _api_key(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    problem = _api_key_problem(value)
    if problem is not None:
        raise click.BadParameter(problem, ctx=ctx, param=param, param_hint="--api-key / PRUNING_API_KEY")
    return _remember(ctx, param, value)


def _globals(ctx: click.Context | None = None) -> GlobalOptions:
    ctx = ctx or click.get_current_context()
    return GlobalOptions(**ctx.meta.get(_GLOBALS_KEY, {}))


_ZERO_MEANS = re.compile(r"\b0 = (.+?)(?: \(|; |\. |\.?$)")


def _option(*decls: str, help: str, **attrs: Any) -> Callable[[F], F]:
    """click.option with help and the default shown (every option of this CLI has both). A
    default of 0 that the help says stands for something ("0 = 0.5", "0 = the recipe's") shows
    what it stands for: "[default: 0.5]", not "[default: 0.0]"."""
    zero = _ZERO_MEANS.search(help)
    if attrs.get("default") == 0 and attrs.get("default") is not False and zero:
        attrs = {"show_default": zero.group(1), **attrs}
    return click.option(*decls, help=help, **{"show_default": True, **attrs})


_GLOBAL_OPTIONS: list[Callable[[F], F]] = [
    _option(
        "--target",
        default=DEFAULT_TARGET,
        envvar="PRUNING_TARGET",
        show_envvar=True,
        metavar="HOST:PORT",
        help="Address of the pruning server.",
        expose_value=False,
        callback=_remember,
    ),
    _option(
        "--api-key",
        default=None,
        envvar="PRUNING_API_KEY",
        show_envvar=True,
        metavar="KEY",
        help="API key (sent as x-api-key; selects the tenant).",
        expose_value=False,
        callback=_api_key,
    ),
    _option(
        "--tls",
        is_flag=True,
        default=False,
        help="Connect with TLS (system roots unless --ca-file).",
        expose_value=False,
        callback=_remember,
    ),
    _option(
        "--ca-file",
        default=None,
        envvar="PRUNING_CA_FILE",
        show_envvar=True,
        type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
        help="PEM root certificates for TLS; implies --tls.",
        expose_value=False,
        callback=_remember,
    ),
    _option(
        "--timeout",
        default=30.0,
        type=_Seconds(min=0, min_open=True, max=MAX_TIMEOUT_S),
        metavar="SECONDS",
        help="Deadline of each call.",
        expose_value=False,
        callback=_remember,
    ),
    _option(
        "--verify",
        default="crc32",
        envvar="PRUNING_VERIFY",
        show_envvar=True,
        type=click.Choice(VERIFY_MODES),
        help="How downloads are checked: the CRC-32 the server recorded with the artifact's sha256 (0.02 s "
        "of CPU per GiB), or the sha256 here, end to end (0.6 s per GiB). Uploads are hashed here before "
        "they are sent either way.",
        expose_value=False,
        callback=_remember,
    ),
    _option(
        "--json",
        is_flag=True,
        default=False,
        help="Machine-readable output: JSON on stdout (one object per line for watch).",
        expose_value=False,
        callback=_remember,
    ),
]


def _with_options(options: Sequence[Callable[[F], F]], f: F) -> F:
    """``f`` with ``options`` added, in the order listed (as if each decorated it from the top)."""
    for option in reversed(options):
        f = option(f)
    return f


def global_options(f: F) -> F:
    """Adds the connection and output options to a command (they are also the group's)."""
    return _with_options(_GLOBAL_OPTIONS, f)


# -- helpers -----------------------------------------------------------------------------------


class ExportFormatType(click.Choice):  # type: ignore[type-arg,unused-ignore]  # generic from click 8.2
    """An export format name (keras, h5, saved_model, tflite, tflite_int8); file-style names
    such as "saved_model.zip" are accepted too and converted to the format name."""

    name = "export format"

    def __init__(self) -> None:
        super().__init__(list(EXPORT_FORMATS), case_sensitive=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                return export_format_name(export_format(value))
            except ValueError:
                pass
        return super().convert(value, param, ctx)  # fails with click's message, listing the choices


def _dump(message: Message, *, defaults: bool = False) -> dict[str, Any]:
    """The message as JSON, with 64-bit integers as numbers (proto3's JSON writes them as
    strings: ``jq '.size > 10'`` compared a string); ``defaults`` keeps the fields at their
    default value (a layer's ``prunable: false``) instead of leaving them out."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=defaults
    )
    return int64_as_numbers(message.DESCRIPTOR, data)


def _emit(data: Any, text: str) -> None:
    click.echo(json.dumps(data, sort_keys=True) if _globals().json else text)


def _client(opts: GlobalOptions) -> Client:
    roots = opts.ca_file.read_bytes() if opts.ca_file else None
    if roots is not None and b"-----BEGIN CERTIFICATE-----" not in roots:
        # gRPC would only fail the handshake later, as UNAVAILABLE
        raise click.BadParameter(f"{opts.ca_file} holds no PEM certificate", param_hint="--ca-file")
    if problem := _target_problem(opts.target, opts.tls or roots is not None):
        raise click.BadParameter(problem, param_hint="--target / PRUNING_TARGET")
    return Client(
        opts.target,
        api_key=opts.api_key or None,
        tls=opts.tls or roots is not None,
        root_certificates=roots,
        timeout=opts.timeout,
        verify=opts.verify,
    )


JOB_ID_LENGTH = 24  # hex digits of a job id (an artifact id has 64: its sha256)


def _is_id(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _labels(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {text!r}", ctx=ctx, param=param)
        labels[key] = value
    return labels


def _name_values(values: tuple[str, ...], what: str, kind: Callable[[str], _V]) -> dict[str, _V]:
    """NAME=VALUE options as a dict."""
    out = {}
    for value in values:
        name, sep, text = value.partition("=")
        try:
            out[name] = kind(text)
        except ValueError:
            sep = ""
        if not sep or not name or not text:
            raise click.BadParameter(f"expected NAME={what}, got {value!r}")
    return out


def _layer_ratios(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    return _name_values(values, "RATIO", float)


def _int_pair(
    separators: str, what: str
) -> Callable[[click.Context, click.Parameter, str | None], tuple[int, int] | None]:
    """A callback parsing "A:B" (or "AxB") into two ints."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
        if value is None:
            return None
        parts = re.split(f"[{re.escape(separators)}]", value.strip())
        if len(parts) == 2 and all(re.fullmatch(r"[0-9]+", part.strip()) for part in parts):
            return int(parts[0]), int(parts[1])
        raise click.BadParameter(f"expected {what}, got {value!r}", ctx=ctx, param=param)

    return parse


def _model_ref(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if _is_id(value) or os.path.isfile(value):
        return value
    raise click.BadParameter(f"{value!r} is neither an existing file nor an uploaded model id", ctx=ctx, param=param)


def _dataset_ref(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A built-in name ("mnist"), an uploaded dataset id or an existing file; a value that
    looks like a path (a dot or a slash in it) must be an existing file."""
    looks_like_path = any(c in value for c in "./" + os.sep)
    if _is_id(value) or os.path.isfile(value) or not looks_like_path:
        return value
    raise click.BadParameter(f"file {value!r} does not exist", ctx=ctx, param=param)


def _state(job: pb.Job | pb.Sweep) -> str:
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_")


def _recipe_lines(raw: pb.PruneResult) -> list[str]:
    r = raw.recipe
    if not r.name:
        return []
    return [f"recipe: {recipe_text(r)}"]


def _latency_lines(raw: pb.PruneResult) -> list[str]:
    if not raw.latency:
        return []
    lines = ["latency (median ms, baseline -> pruned):"]
    for x in raw.latency:
        lines.append(
            f"  {x.runtime:7}{x.device:22} batch {x.batch_size:<5}{x.before_ms:>9.3f} ->{x.after_ms:>9.3f}"
            f"  ({speed_up(x)})"
        )
    return lines


_SEARCH_OPTIONS = (
    _option(
        "--search-low",
        type=float,
        default=0.0,
        help="With a budget: the lowest sparsity searched (a sweep given --sparsities runs those); 0 = 0.5.",
    ),
    _option(
        "--search-high",
        type=float,
        default=0.0,
        help="With a budget: the highest sparsity searched (a sweep given --sparsities runs those); 0 = 0.95.",
    ),
    _option("--tolerance", type=float, default=0.0, help="The search stops this close to the answer; 0 = 0.02."),
    _option(
        "--max-trials",
        type=INT32,
        default=0,
        help="At most this many trials; 0 = 8 (a sweep's --sparsities: one each).",
    ),
    _option("--parallel-trials", type=INT32, default=0, help="Trials running at once; 0 = 2."),
)


def _search_options(f: F) -> F:
    """The options of a search for a budget (a sweep's, or a job's with --max-loss-pp)."""
    return _with_options(_SEARCH_OPTIONS, f)


def _one_budget(max_loss_pp: float | None, max_relative_loss: float | None) -> None:
    if max_loss_pp is not None and max_relative_loss is not None:
        raise click.UsageError("give --max-loss-pp or --max-relative-loss, not both")


def format_table(result: PruneResult) -> str:
    """The result as the table the reference job prints."""
    w = max(24, len(result.size_label("gzip")) + 1)  # the first column: wider when the sizes name a format
    lines = [
        f"{'':{w}}{'baseline':>12} {'pruned':>11}",  # a space between the columns, whatever the widths
        f"{'test accuracy':{w}}{figure(result.baseline_accuracy):>12} {figure(result.pruned_accuracy):>11}",
        f"{'test loss':{w}}{figure(result.baseline_loss):>12} {figure(result.pruned_loss):>11}",
        f"{result.size_label('raw'):{w}}{result.size_before_raw:>12,} {result.size_after_raw:>11,}",
        f"{result.size_label('gzip'):{w}}{result.size_before_gzip:>12,} {result.size_after_gzip:>11,}",
        f"accuracy delta: {points(result.accuracy_delta)};  gzip compression: {result.compression_ratio:.2f}x",
        (
            f"sparsity: pruned kernels {result.pruned_kernel_sparsity:.4f}, all parameters "
            f"{result.overall_sparsity:.4f} ({result.nonzero_params:,} of {result.total_params:,} non-zero)"
        ),
        f"fine-tuning: {result.fine_tune_seconds:.1f} s on {result.device}",
        *(f"{label}: {value}" for label, value in result.conversion_lines()),  # Keras 3 only
        *(f"{label}: {value}" for label, value in result.structured_lines()),  # structured only
        *(f"{label}: {value}" for label, value in result.export_accuracy_lines()),  # TFLite exports
        *_recipe_lines(result.raw),
        *_latency_lines(result.raw),
        "",
        f"{'layer':24}{'type':16}{'pruned':>14}{'weights':>10}{'non-zero':>10}{'sparsity':>10}",
    ]
    for layer in result.layers:
        lines.append(
            f"{layer.name:24}{layer.type:16}{result.how_pruned(layer):>14}{layer.weights:>10,}"
            f"{layer.nonzero:>10,}{layer.sparsity:>10.4f}"
        )
    return "\n".join(lines)


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """A plain-text table: each column as wide as its widest cell, two spaces between."""
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]
    return [
        "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()
        for cells in (header, *rows)
    ]


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def format_summary(summary: ModelSummary, artifact_id: str = "") -> str:
    """An uploaded model's summary: Keras version, inputs and outputs, one row per layer."""
    version = str(summary.keras_version) + (" (tf_keras)" if summary.keras_version == 2 else "")
    if summary.keras_version_string:
        version += f", saved by Keras {summary.keras_version_string}"
    head = [("artifact", artifact_id)] if artifact_id else []
    head.append(("keras version", version))
    tensors = [("input", t.name, t.shape_text(), t.dtype) for t in summary.inputs]
    tensors += [("output", t.name, t.shape_text(), t.dtype) for t in summary.outputs]
    layers = [(x.name, x.class_name, f"{x.params:,}", x.prunable_text(), _yes(x.convertible)) for x in summary.layers]
    lines = [f"{label + ':':15}{value}" for label, value in head]
    lines += [
        f"{kind + ':':15}{name}  {shape}" + (f"  {dtype}" if dtype else "") for kind, name, shape, dtype in tensors
    ]
    lines.append("")
    lines += _columns(("layer", "class", "params", "prunable", "convertible"), layers, (False, False, True, True, True))
    if ops := list(summary.raw.operations):
        lines += [
            "",
            f"operations: {', '.join(ops[:10])}{', ...' if len(ops) > 10 else ''} (tensor arithmetic, translated into "
            "layers; an .h5 file in Keras 3 cannot hold them)",
        ]
    lines += [
        "",
        f"total params: {summary.total_params:,} ({summary.prunable_params:,} in prunable layers)",
    ]
    return "\n".join(lines)


def format_plan(plan: JobPlan) -> str:
    """A dry run's plan: the figures, then the layers to prune."""
    lines = ["dry run: the spec fits the model and dataset; nothing was submitted"]
    lines += [f"{label + ':':18}{value}" for label, value in plan.summary_lines()]
    lines.append("")
    if plan.layers:
        by = plan.split_on_worker()
        lines += _columns(
            ("layer", "class", "params", "final sparsity"), plan.layer_rows(), (False, False, True, not by)
        )
        if by:  # then every layer's final sparsity in the plan is the target
            target = plan.layers[0].final_sparsity
            lines.append(f"the worker splits the target ({target:.4f}) over these layers after {by}")
    elif plan.spec.pruning.HasField("structured"):
        lines.append("no layers to prune by weight: structured pruning picks the channels to cut as the job runs")
    else:
        lines.append("no layers to prune")
    return "\n".join(lines)


# -- progress ----------------------------------------------------------------------------------


class _Progress:
    """Fine-tuning progress on stderr: a live tqdm bar on a terminal; otherwise plain lines
    (one per epoch, at least every PLAIN_PROGRESS_INTERVAL_S, and the last step), never a
    carriage return."""

    def __init__(self, live: bool, stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.live, self.clock = live, clock
        self.bar: tqdm[Any] | None = None
        self._last_line = 0.0
        self._last_key: tuple[int, int] | None = None

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def update(self, p: pb.Progress) -> None:
        acc = f" acc {p.accuracy:.4f}" if p.HasField("accuracy") else ""  # none under a regression loss
        summary = f"epoch {p.epoch}/{p.total_epochs} loss {p.loss:.4f}{acc} sparsity {p.sparsity:.3f}"
        if self.live:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=p.total_steps, unit="step", file=self.stream, dynamic_ncols=True, mininterval=1.0)
            self.bar.n = p.step
            self.bar.set_postfix_str(summary)
            self.bar.refresh()
            return
        now = self.clock()
        new_epoch = self._last_key is None or p.epoch != self._last_key[0]
        due = now - self._last_line >= PLAIN_PROGRESS_INTERVAL_S or p.step >= p.total_steps
        if (p.epoch, p.step) == self._last_key or not (new_epoch or due):
            return
        self._last_key, self._last_line = (p.epoch, p.step), now
        percent = 100.0 * p.step / p.total_steps
        eta = f" eta {p.eta_seconds:.0f}s" if p.eta_seconds else ""
        self.say(f"fine-tune step {p.step}/{p.total_steps} ({percent:.0f}%) {summary}{eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Bytes:
    """A live bar of the bytes of a file moving (upload or download) on stderr, on a terminal
    and without ``--json`` only; elsewhere nothing, so logs and pipes stay clean."""

    def __init__(self, label: str, total: int | None = None, *, live: bool, stream: IO[str] | None = None) -> None:
        self.label, self.total, self.live = label, total, live
        self.stream = stream or sys.stderr
        self.bar: tqdm[Any] | None = None

    def sent(self, count: int) -> None:
        """An upload's progress (:data:`pruning_client.UploadProgress`)."""
        self._advance(count, self.total)

    def received(self, count: int, total: int) -> None:
        """A download's progress (:data:`pruning_client.DownloadProgress`)."""
        self._advance(count, total)

    def _advance(self, count: int, total: int | None) -> None:
        if not self.live:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=self.label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                dynamic_ncols=True,
                mininterval=0.5,
                leave=False,
            )
        self.bar.update(count)

    def __enter__(self) -> _Bytes:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _terminal() -> bool:
    """Whether stderr is a terminal a bar can be drawn on: one that says it is 0 columns wide
    (a pseudo-terminal nobody sized, as some CI runners and ``docker exec -t`` give) showed no
    bar and no progress at all; it gets the plain lines a pipe gets."""
    if not sys.stderr.isatty():
        return False
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):  # no descriptor to ask (a wrapped stream): a terminal
        return True


def _live() -> bool:
    """Whether transfer bars show: stderr is a terminal and the output is not JSON."""
    return not _globals().json and _terminal()


def _upload(client: Client, kind: str, path: os.PathLike[str] | str) -> pb.Artifact:
    """Uploads a model or a dataset with a bar of the bytes sent on a terminal."""
    with _Bytes(f"upload {pathlib.Path(path).name}", os.path.getsize(path), live=_live()) as bar:
        if kind == "model":
            return client.upload_model(path, progress=bar.sent)
        return client.upload_dataset(path, progress=bar.sent)


_WAIT_TIMEOUT = _option(
    "--wait-timeout",
    type=_Seconds(min=0),
    default=None,
    metavar="SECONDS",
    help="Give up waiting after this long (exit 10; the job goes on); default (or inf): until the job ends.",
)


class Followable(Protocol):
    """What :func:`follow` needs of a job handle (a :class:`JobHandle` has it)."""

    @property
    def id(self) -> str: ...

    def watch(self, *, timeout: float | None = None) -> Iterator[pb.JobEvent]: ...

    def status(self) -> pb.Job: ...


def follow(job: Followable, *, show_bar: bool, json_lines: bool, timeout: float | None = None) -> pb.Job:
    """Follows a job's events until it ends and returns its final record (JobTimeout, exit
    10, after ``timeout`` seconds). With ``json_lines``, each event is one JSON line on stdout;
    otherwise logs and state changes go to stderr, with a progress bar when ``show_bar`` and
    stderr is a terminal (plain lines otherwise)."""
    progress = _Progress(live=show_bar and _terminal())
    try:
        for event in job.watch(timeout=timeout):
            kind = event.WhichOneof("kind")
            if json_lines:
                click.echo(json.dumps(_dump(event), sort_keys=True))
            elif kind == "progress" and event.progress.phase == "fine_tune" and event.progress.total_steps:
                progress.update(event.progress)
            elif kind == "log":
                progress.say(f"[{event.log.level}] {event.log.message}")
            elif kind == "state_change":
                state = pb.JobState.Name(event.state_change.to).removeprefix("JOB_STATE_")
                message = f"job {job.id}: {state}"
                if event.state_change.error.message:
                    message += f" ({event.state_change.error.message})"
                progress.say(message)
    finally:
        progress.close()
    return job.status()


# -- downloads ---------------------------------------------------------------------------------


def _artifact_name(job_id: str, artifact: pb.Artifact, *, with_format: bool = False) -> str:
    """``pruned-<job>`` (``pruned-<job>-<format>`` ``with_format``) and the artifact's file
    suffix (".keras", ".int8.tflite"), else its format name; an archive suffix gets the format
    in front (".saved_model.zip")."""
    job_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in job_id)  # never a path
    fmt = format_name(artifact.format)
    suffix = _suffix(artifact)
    return f"pruned-{job_id}-{fmt}{suffix}" if with_format else f"pruned-{job_id}{suffix}"


def _suffix(artifact: pb.Artifact) -> str:
    """The artifact's file suffix (".keras", ".int8.tflite"), else its format name; an archive
    suffix gets the format in front (".saved_model.zip")."""
    fmt = format_name(artifact.format)
    suffixes = [
        s
        for s in pathlib.PurePosixPath(artifact.filename).suffixes
        if any(c.isalpha() for c in s) and s[1:].replace("_", "").isalnum() and len(s) <= 16
    ][-2:]
    suffix = "".join(suffixes) or (f".{fmt}" if fmt else "")
    if suffixes in ([".zip"], [".tar"], [".tgz"], [".gz"]) and fmt:
        suffix = f".{fmt}{suffix}"
    return suffix


def _destination(output: str | None, name: str, *, directory: bool = False) -> pathlib.Path:
    """``output`` when it names a file; ``output/name`` when it is a directory (an existing
    one, one ending with a slash, or any with ``directory``); ``./name`` without it."""
    if output is None:
        return pathlib.Path(name)
    path = pathlib.Path(output)
    return path / name if directory or _is_directory(output) else path


def _stored_name(client: Client, artifact_id: str) -> str:
    """A file name for an artifact downloaded by id: an upload's name as uploaded with the id's
    first 12 digits before its suffix ("mnist-eec011953304.keras": never the user's own file of
    that name, which a retrained model may have replaced since), an export's or report file's
    id with its suffix ("<id>.keras": the worker's own names collide). The id alone where the
    server has no GetArtifact."""
    try:
        artifact = client.get_artifact(artifact_id)
    except PruningError as error:
        if error.code != grpc.StatusCode.UNIMPLEMENTED:
            raise
        return artifact_id
    suffix = _suffix(artifact)
    if artifact.kind in (pb.ARTIFACT_KIND_EXPORT, pb.ARTIFACT_KIND_REPORT):
        return artifact_id + suffix
    base = re.split(r"[\\/]", artifact.filename)[-1]
    stem = base[: len(base) - len(suffix)] if suffix and base.endswith(suffix) else base
    stem = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in stem).strip("._")[:100]
    return f"{stem}-{artifact_id[:12]}{suffix}" if stem else artifact_id + suffix


def _fetch(client: Client, artifact_id: str, dest: pathlib.Path) -> pathlib.Path:
    """Downloads an artifact to the file ``dest``. Client.download keeps the partial file
    beside it keyed by the artifact id (``<dest>.<artifact_id[:16]>.part``), so only the same
    artifact ever resumes from it. The directories made for ``dest`` go again, while empty,
    when the download fails."""
    made = make_dirs(dest.parent)
    try:
        with _Bytes(f"download {dest.name}", live=_live()) as bar:
            return client.download(artifact_id, dest, progress=bar.received)
    except BaseException:
        remove_empty_dirs(made)
        raise


def _fetch_job(
    client: Client, job_id: str, artifacts: Sequence[pb.Artifact], output: str | None, *, directory: bool
) -> list[pathlib.Path]:
    paths: list[pathlib.Path] = []
    for artifact in artifacts:
        dest = _destination(output, _artifact_name(job_id, artifact), directory=directory)
        if dest in paths:  # two exports with one suffix: tell them apart by format
            dest = _destination(output, _artifact_name(job_id, artifact, with_format=True), directory=directory)
        paths.append(_fetch(client, artifact.id, dest))
    return paths


# -- the group and its commands ----------------------------------------------------------------


def _version() -> str:
    try:
        return importlib.metadata.version("pruning-client")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"pruning {_version()}")
        ctx.exit()


def _unavailable(name: str, message: str) -> click.Command:
    """A stand-in for a command whose package is missing: one line on stderr, exit 2."""

    def run() -> None:
        click.echo(f"error: {message}", err=True)
        click.get_current_context().exit(2)

    return click.Command(
        name,
        callback=run,
        help=message,
        short_help=message,
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


_MISSING_UP = (
    "`pruning up` needs the server package: pip install ./server ./workers "
    "(pruning-server[embedded] and pruning-worker)"
)


@functools.cache
def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=COMMAND_GROUP)}


@functools.cache
def _load_plugin(name: str) -> click.Command | None:
    entry_point = _plugins().get(name)
    if entry_point is None:
        return _unavailable("up", _MISSING_UP) if name == "up" else None
    try:
        command = entry_point.load()
    except Exception as error:  # noqa: BLE001  (a broken plugin must not break the other commands)
        return _unavailable(name, f"`pruning {name}` could not be loaded from {entry_point.value}: {error}")
    if not isinstance(command, click.Command):
        return _unavailable(name, f"`pruning {name}`: {entry_point.value} is not a click command")
    return command


def _refused(target: str) -> bool:
    """Whether ``target`` (host:port) refuses a TCP connection now: nothing listens there. A
    deadline that ended the retries of refused calls says so, not that nothing answered."""
    host, colon, port = target.rpartition(":")
    if not colon or not port.isdigit() or "/" in target:
        return False  # a gRPC scheme's target (unix:..., dns:///...): not judged
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except (OSError, ValueError):
        return False
    return False


class PruningGroup(click.Group):
    """The ``pruning`` group: built-in commands, those of the ``pruning.commands`` entry
    points (loaded when used), and the SDK's errors turned into exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_plugins(), "up"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or _load_plugin(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PruningError as error:
            opts = _globals(ctx)
            nothing_listens = f" (nothing listens at {opts.target}: is the server up? `pruning up` starts one here)"
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and error.details == "Deadline Exceeded":
                # gRPC's bare word: nothing answered (a refused connection is retried until then)
                error.message += (
                    nothing_listens
                    if _refused(opts.target)
                    else f" (no answer from {opts.target} within {opts.timeout:g} s: is the server up there?)"
                )
            elif error.code == grpc.StatusCode.UNAUTHENTICATED and not opts.api_key:
                error.message += " (give the tenant's key with --api-key or PRUNING_API_KEY)"
            elif error.code == grpc.StatusCode.UNAVAILABLE and "connection refused" in error.details.lower():
                error.message += nothing_listens
            elif (
                error.code == grpc.StatusCode.UNAVAILABLE
                and "socket closed" in error.details.lower()
                and not (opts.tls or opts.ca_file)
            ):
                error.message += (
                    f" ({opts.target} closed the connection at once: if it serves TLS, give --tls, or --ca-file with "
                    "the CA that signed its certificate)"
                )
            elif error.code == grpc.StatusCode.UNAVAILABLE and "handshake failed" in error.details.lower():
                error.message += (
                    f" (the TLS handshake with {opts.target} failed: a server without TLS takes no --tls or "
                    "--ca-file; one with TLS must present a certificate those roots trust)"
                )
            try:
                _report(error, json_output=opts.json, stream=ctx.meta.get(_EVENTS_ON_STDOUT, False))
            except BrokenPipeError:
                _silence_stdout()
            ctx.exit(error.exit_code)
        except BrokenPipeError:
            _silence_stdout()
            ctx.exit(0)
        except OSError as error:  # a local file or directory the command could not use
            try:
                _report_local(error, json_output=_globals(ctx).json, stream=ctx.meta.get(_EVENTS_ON_STDOUT, False))
            except BrokenPipeError:
                _silence_stdout()
            ctx.exit(_LOCAL_FILE_EXIT)


_EVENTS_ON_STDOUT = "pruning.events_on_stdout"  # ctx.meta: stdout holds a stream of JSON lines
_FOLLOWED_JOB = "pruning.followed_job"  # ctx.meta: the job the command waits on or follows


def _following(job_id: str) -> None:
    """Marks the job the command waits on: an error's JSON object names it."""
    click.get_current_context().meta[_FOLLOWED_JOB] = job_id


def _followed_job() -> str:
    ctx = click.get_current_context(silent=True)
    return str(ctx.meta.get(_FOLLOWED_JOB, "")) if ctx is not None else ""


def _events_on_stdout() -> None:
    """Marks the command's stdout as a stream of events (``watch --json``): an error's JSON
    object goes to stderr instead, so a file of events holds events only."""
    click.get_current_context().meta[_EVENTS_ON_STDOUT] = True


def _report(error: PruningError, *, json_output: bool, stream: bool = False) -> None:
    if json_output:
        payload: dict[str, Any] = {
            "error": type(error).__name__,
            "message": error.message,
            "field_violations": error.field_violations,
        }
        if error.code is not None:
            payload["code"] = error.code.name  # the call's status: UNAVAILABLE, NOT_FOUND, ...
        if isinstance(error, JobFailed) and error.job_code and error.job_status is not None:
            payload["job_code"] = error.job_status.name  # why the job failed: INVALID_ARGUMENT, ...
        job = getattr(error, "job", None)
        if isinstance(job, pb.Job) and job.id:
            payload["job_id"] = job.id  # a failed, cancelled or unfinished job: which one
        elif followed := _followed_job():
            payload["job_id"] = followed  # the job a lost connection stopped following
        click.echo(json.dumps(payload), err=stream)
        if not stream:  # a step's log (stderr) says why too, where its stdout went to a parser
            click.echo(f"error: {_one_line(error.message)}", err=True)
        return
    violations = error.field_violations
    joined = "; ".join(f"{f}: {d}" for f, d in violations)
    # The server's message only joins the violations (each cut short on its own): say each once.
    cut_short = error.details.endswith("...") and joined.startswith(error.details[:-3])  # the message is cut sooner
    only_joined = (
        error.details == joined
        or cut_short
        or (len(violations) == 1 and error.details.startswith(f"{violations[0][0]}: ") and len(error.details) <= 1000)
    )
    if violations and only_joined and error.code is not None:
        # One violation is said from itself: the message is cut as a whole, its field and its
        # description each on their own
        if len(violations) == 1:
            click.echo(f"error: {error.code.name}: {violations[0][0]}: {violations[0][1]}", err=True)
            return
        click.echo(f"error: {error.code.name}: {len(violations)} problems", err=True)
    else:
        click.echo(f"error: {error.message}", err=True)
    for field, description in violations:
        click.echo(f"  {field}: {description}" if field else f"  {description}", err=True)  # "and 3 more problems"


def _report_local(error: OSError, *, json_output: bool, stream: bool = False) -> None:
    names = " -> ".join(str(n) for n in (error.filename, error.filename2) if n is not None)
    message = f"{error.strerror}: {names}" if error.strerror and names else _one_line(str(error))
    if followed := _followed_job():  # it stopped a command that followed a job (its download)
        message += f" (job {followed} goes on, or ended: pruning result {followed}, pruning download {followed})"
    if json_output:
        payload: dict[str, Any] = {"error": type(error).__name__, "message": message, "field_violations": []}
        if followed:
            payload["job_id"] = followed
        click.echo(json.dumps(payload), err=stream)
    if not json_output or not stream:
        click.echo(f"error: {message}", err=True)


def _silence_stdout() -> None:
    """After a broken pipe (``pruning watch --json | head -1``): point stdout at /dev/null so
    the interpreter's last flush cannot fail again (see the Python docs on SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@click.group(
    cls=PruningGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120, "show_default": True},
    epilog="Exit codes: 0 success, 2 invalid argument or out of range (or a local file that cannot be read or "
    "written), 3 not found, 4 unauthenticated or permission denied, 5 resource exhausted, 6 failed precondition or already exists, "
    "7 unavailable or deadline exceeded, 8 job failed, 9 job cancelled, 10 timeout, 11 integrity error or data loss, "
    "130 interrupted (Ctrl-C), "
    "1 anything else.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version of pruning-client and exit.",
)
@global_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Prune Keras models with the pruning service.

    The connection options (--target, --api-key, --tls, --ca-file, --timeout, --verify,
    --json) go before or after the command name.
    """
    if ctx.invoked_subcommand == "up":
        given = [
            f"--{name.replace('_', '-')}"
            for name in GlobalOptions.__dataclass_fields__
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(f"`pruning up` takes only --listen and --log-file, not {', '.join(given)}", ctx=ctx)


@cli.command("upload")
@click.argument("kind", type=click.Choice(["model", "dataset"]))
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@global_options
def upload(kind: str, path: pathlib.Path) -> None:
    """Upload a model or a dataset; prints its artifact id.

    KIND model: a .keras or .h5 file; KIND dataset: an .npz with x_train, y_train, x_test,
    y_test. The artifact id is the file's sha256.
    """
    with _client(_globals()) as client:
        artifact = _upload(client, kind, path)
    _emit(_dump(artifact, defaults=True), artifact.id)  # the model summary as inspect --json writes it


@cli.command("inspect")
@click.argument("model")
@global_options
def inspect(model: str) -> None:
    """Show what the service reads from a model: Keras version, inputs, outputs, layers.

    MODEL is a .keras or .h5 file, or the artifact id of a model uploaded before. A file is
    uploaded (content-addressed, so repeating this is cheap) and the service answers with its
    summary without running it. For every layer: its class, parameters, whether TFMOT can
    prune it and (Keras 3) whether the service can translate it. A model the service refuses
    exits 2 with the reason; an id the tenant has no artifact of exits 3.
    """
    path = pathlib.Path(model)
    if not path.exists() and not _is_id(model):
        raise click.BadParameter(f"no file {model!r} (and not an artifact id)", param_hint="'MODEL'")
    if path.is_dir():
        raise click.BadParameter(
            f"{model!r} is a directory, not a model file (a SavedModel? save the Keras model: "
            "model.save('model.keras'))",
            param_hint="'MODEL'",
        )
    with _client(_globals()) as client:
        artifact = _upload(client, "model", path) if path.exists() else client.get_artifact(model)
    if artifact.kind != pb.ARTIFACT_KIND_MODEL:
        kind = pb.ArtifactKind.Name(artifact.kind).removeprefix("ARTIFACT_KIND_").lower()
        hint = ": download it (pruning download ID) and inspect the file" if kind == "export" else ""
        raise click.BadParameter(
            f"artifact {model} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} ({artifact.filename}), "
            f"not an uploaded model{hint}",
            param_hint="'MODEL'",
        )
    summary = ModelSummary.from_proto(artifact.model)
    _emit({"artifact_id": artifact.id, **_dump(artifact.model, defaults=True)}, format_summary(summary, artifact.id))


def _given(*names: str) -> list[str]:
    """The flags of ``names`` the user gave (on the command line or from the environment)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    return [
        f"--{name.replace('_', '-')}"
        for name in names
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)
    ]


def _spec(
    client: Client,
    *,
    model: str,
    dataset: str,
    schedule: str,
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    power: float | None,
    frequency: int,
    epochs: int,
    batch_size: int,
    validation_split: float,
    optimizer: str,
    learning_rate: float,
    seed: int,
    loss: str | None = None,
    output_loss: dict[str, str] | None = None,
    max_train_samples: int,
    include_layer: tuple[str, ...],
    exclude_layer: tuple[str, ...],
    export: tuple[str, ...],
    keras_version: str | None,
    include_type: tuple[str, ...] = (),
    exclude_type: tuple[str, ...] = (),
    m_by_n: tuple[int, int] | None = None,
    block_size: tuple[int, int] | None = None,
    xnnpack_policy: bool = False,
    structured_ratio: float | None = None,
    layer_ratio: dict[str, float] | None = None,
    importance: str = "l1",
    round_to: int = 0,
    min_channels: int = 0,
    recipe: str = "keep_accuracy",
    early_stopping_patience: int | None = None,
    sensitivity_scan: bool = False,
    report: bool = True,
    time_limit: float = 0.0,
) -> pb.JobSpec:
    if schedule == "none" and structured_ratio is None and not layer_ratio:
        raise click.UsageError("--schedule none (structured pruning only) needs --structured-ratio or --layer-ratio")
    if schedule != "polynomial":
        given = _given("initial_sparsity", "power")
        if given:
            raise click.UsageError(
                f"{' and '.join(given)} shape{'s' if len(given) == 1 else ''} the polynomial schedule only; "
                f"--schedule {schedule} does not take {'it' if len(given) == 1 else 'them'}"
            )
    if (
        m_by_n and 0 < m_by_n[0] < m_by_n[1]
    ):  # the pattern sets the sparsity: the schedule ends there (said before any upload)
        given = _given("initial_sparsity", "final_sparsity")
        if given:
            raise click.UsageError(
                f"--m-by-n {m_by_n[0]}:{m_by_n[1]} sets the sparsity ({m_by_n[0] / m_by_n[1]:g}: {m_by_n[0]} zeros of "
                f"every {m_by_n[1]} weights); {' and '.join(given)} would be ignored"
            )
        final_sparsity = m_by_n[0] / m_by_n[1]
        initial_sparsity = min(initial_sparsity, final_sparsity)
    model_id = model if _is_id(model) else _upload(client, "model", model).id
    if not _is_id(dataset) and os.path.isfile(dataset):
        dataset = _upload(client, "dataset", dataset).id
    pruning_schedule: pb.PruningSchedule | None
    if schedule == "none":
        pruning_schedule = None
    elif schedule == "polynomial":
        pruning_schedule = polynomial_decay(
            initial_sparsity, final_sparsity, begin_step=begin_step, end_step=end_step, power=power, frequency=frequency
        )
    else:
        pruning_schedule = constant_sparsity(
            final_sparsity, begin_step=begin_step, end_step=end_step, frequency=frequency
        )
    return job_spec(
        model_id,
        dataset=dataset,
        schedule=pruning_schedule,
        epochs=epochs,
        batch_size=batch_size,
        validation_split=validation_split,
        optimizer=optimizer,
        learning_rate=learning_rate,
        loss=loss,
        output_losses=output_loss,
        seed=seed,
        max_train_samples=max_train_samples,
        include_layers=include_layer,
        exclude_layers=exclude_layer,
        include_types=include_type,
        exclude_types=exclude_type,
        sparsity_m_by_n=m_by_n,
        block_size=block_size,
        xnnpack_policy=xnnpack_policy,
        exports=export,
        keras_version=int(keras_version) if keras_version else None,
        recipe=recipe,
        early_stopping_patience=early_stopping_patience,
        sensitivity_scan=sensitivity_scan,
        report=None if report else False,
        time_limit_s=time_limit,
        structured=None
        if structured_ratio is None and not layer_ratio
        else structured_spec(
            structured_ratio or 0.0,
            layer_ratios=layer_ratio,
            importance=importance,
            round_to=round_to or None,
            min_channels=min_channels or None,
        ),
    )


def _finish(client: Client, job: JobHandle, final: pb.Job, download: pathlib.Path | None) -> None:
    """Prints a finished job's result (downloading its exports into ``download``), or raises
    the SDK error of a failed or cancelled job (exit 8 or 9)."""
    if final.state != pb.JOB_STATE_SUCCEEDED:
        job.result()  # raises JobFailed or JobCancelled, whose exit codes say which
        raise PruningError(f"job {job.id} ended {_state(final)}")
    result = PruneResult.from_proto(final.result)
    paths = (
        _fetch_job(client, job.id, exports(final.result.artifacts), str(download), directory=True) if download else []
    )
    data = {
        "job_id": job.id,
        "state": pb.JobState.Name(final.state),  # as status, list and watch write it
        "result": result.to_dict(),
        "downloaded": str(paths[0]) if paths else None,
        "downloads": [str(p) for p in paths],
    }
    text = format_table(result)
    if final.spec.budget.WhichOneof("limit"):  # the table alone did not say a search picked the sparsity
        data["search_sweep_id"] = final.search_sweep_id
        text += (
            f"\naccuracy budget: {budget_text(final.spec.budget)}; the search (sweep {final.search_sweep_id}) picked "
            f"the highest sparsity within it; `pruning report {job.id}` shows its trials"
        )
    for artifact, path in zip(final.result.artifacts, paths, strict=False):
        text += f"\npruned model ({format_name(artifact.format)}): {path}"
    _emit(data, text)


class _DownloadDir(click.Path):
    """A folder to download into, made if missing: checked when the command starts (a job
    waited for, or run, must not end in "File exists" over a typo). The path, or the first
    existing folder above it, must be a folder this user may write."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=pathlib.Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        probe = pathlib.Path(os.fsdecode(path))
        while not probe.exists() and probe != probe.parent:
            if probe.is_symlink():  # a dangling link: what it names is not there to write into
                self.fail(f"{probe} is a link to nothing", param, ctx)
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            self.fail(f"{probe} is a file, not a folder", param, ctx)
        if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
            self.fail(f"cannot write into {probe}", param, ctx)
        return path


_DOWNLOAD_DIR = _DownloadDir()


# The options that make a JobSpec: `submit`, and the trial template of `sweep`.
_SPEC_OPTIONS = [
    _option(
        "--model",
        required=True,
        callback=_model_ref,
        metavar="FILE|ID",
        help="Model file (.keras/.h5, uploaded first) or the id of an uploaded model.",
    ),
    _option(
        "--dataset",
        default="mnist",
        callback=_dataset_ref,
        metavar="NAME|FILE|ID",
        help="A built-in dataset name, an .npz file (uploaded first) or the id of an uploaded dataset.",
    ),
    _option(
        "--schedule",
        type=click.Choice(["polynomial", "constant", "none"]),
        default="polynomial",
        help="Pruning schedule: PolynomialDecay or ConstantSparsity; none = structured pruning only "
        "(needs --structured-ratio or --layer-ratio).",
    ),
    _option("--initial-sparsity", type=float, default=0.5, help="Initial sparsity of the polynomial schedule."),
    _option("--final-sparsity", type=float, default=0.8, help="Final (or constant target) sparsity."),
    _option("--begin-step", type=INT64, default=0, help="Step at which pruning begins."),
    _option(
        "--end-step",
        type=INT64,
        default=0,
        help="Step at which the final sparsity is reached; 0 = the recipe's (about half of the steps).",
    ),
    _option(
        "--power",
        type=float,
        default=None,
        show_default="the recipe's: 5 with keep_accuracy, 3 with plain",
        help="Exponent of the polynomial schedule.",
    ),
    _option(
        "--frequency",
        type=INT64,
        default=0,
        help="Update the masks every this many steps; 0 = the recipe's (at most 100).",
    ),
    _option(
        "--recipe",
        type=click.Choice(sorted(RECIPES)),
        default="keep_accuracy",
        help="keep_accuracy: final sparsity at about half of the steps on a mask update, twice the optimizer's "
        "learning rate with cosine decay, distillation from the model as uploaded, early stop on validation "
        "accuracy; plain: the TFMOT guide's.",
    ),
    _option(
        "--sensitivity-scan",
        is_flag=True,
        default=False,
        help="Split the target over the layers from a quick per-layer sensitivity scan on the worker.",
    ),
    _option(
        "--report/--no-report",
        default=True,
        help="Measure latency and write TensorBoard logs and plots after the exports (--no-report: faster).",
    ),
    _option(
        "--early-stopping-patience",
        type=INT32,
        default=None,
        help="Epochs without a better validation accuracy (at the final sparsity) before stopping; 0 = never; "
        "default: the recipe's (a fifth of the epochs, at least 2).",
    ),
    _option(
        "--time-limit",
        type=click.FloatRange(min=0),
        default=0.0,
        metavar="SECONDS",
        help="Fail the job (DEADLINE_EXCEEDED) when an attempt runs longer on its worker; 0 = the service's "
        "limit alone (the lower applies); a sweep's trials each have it.",
    ),
    _option("--epochs", type=_Int(32, minimum=1), default=2, help="Fine-tuning epochs."),
    _option("--batch-size", type=_Int(32, minimum=1), default=128, help="Fine-tuning batch size."),
    _option("--validation-split", type=float, default=0.1, help="Share of the training data held out; 0 = none."),
    _option("--optimizer", default="adam", help="Keras optimizer name."),
    _option(
        "--loss",
        default=None,
        help="Loss the model is fine-tuned and evaluated with: sparse_categorical_crossentropy_from_logits "
        "(default), sparse_categorical_crossentropy (softmax outputs), categorical_crossentropy[_from_logits], "
        "binary_crossentropy[_from_logits], mean_squared_error (mse), mean_absolute_error (mae).",
    ),
    _option(
        "--learning-rate",
        type=float,
        default=0.0,
        help=(
            "Learning rate; 0 = the recipe's (keep_accuracy: twice the optimizer's default, with cosine decay; "
            "plain: the optimizer's default)."
        ),
    ),
    _option("--seed", type=INT64, default=0, help="Random seed; 0 = no fixed seed."),
    _option("--max-train-samples", type=INT64, default=0, help="Use at most this many training samples; 0 = all."),
    _option(
        "--structured-ratio",
        type=float,
        default=None,
        help="Remove this fraction of the channels (filters, units) of every layer that can shrink, "
        "before fine-tuning; unset = no structured pruning.",
    ),
    _option(
        "--output-loss",
        multiple=True,
        callback=lambda ctx, param, values: _name_values(values, "LOSS", str),
        metavar="NAME=LOSS",
        help="Loss of one output of a model of several (repeatable); the others take --loss.",
    ),
    _option(
        "--layer-ratio",
        multiple=True,
        callback=_layer_ratios,
        metavar="NAME=RATIO",
        help="Structured ratio of one layer, overriding --structured-ratio (repeatable).",
    ),
    _option(
        "--importance",
        type=click.Choice(list(IMPORTANCE_CRITERIA)),
        default="l1",
        help="How structured pruning ranks channels.",
    ),
    _option("--round-to", type=INT32, default=0, help="Round kept channel counts up to a multiple of this; 0 = 1."),
    _option("--min-channels", type=INT32, default=0, help="Keep at least this many channels per layer; 0 = 1."),
    _option("--include-layer", multiple=True, metavar="NAME", help="Prune only these layers (repeatable)."),
    _option("--exclude-layer", multiple=True, metavar="NAME", help="Never prune these layers (repeatable)."),
    _option(
        "--include-type",
        multiple=True,
        metavar="CLASS",
        help="Prune only layers of this class, such as Conv2D or Dense (repeatable; with --include-layer, either).",
    ),
    _option("--exclude-type", multiple=True, metavar="CLASS", help="Never prune layers of this class (repeatable)."),
    _option(
        "--m-by-n",
        default=None,
        callback=_int_pair(":", "M:N, such as 2:4"),
        metavar="M:N",
        help="Zero M of every N consecutive input-channel weights (2:4: what sparse tensor cores run); "
        "the sparsity is M/N, the schedule says only when the masks update.",
    ),
    _option(
        "--block-size",
        default=None,
        callback=_int_pair("x,", "ROWSxCOLS, such as 1x4"),
        metavar="ROWSxCOLS",
        help="Prune blocks of a Dense kernel's weights together (Dense layers only).",
    ),
    _option(
        "--xnnpack-policy",
        is_flag=True,
        default=False,
        help="Prune only what XNNPACK runs faster sparse (TFMOT's PruneForLatencyOnXNNPack; the whole model).",
    ),
    _option(
        "--export",
        type=ExportFormatType(),
        multiple=True,
        default=("keras",),
        help="Export format (repeatable); the first is the pruned model.",
    ),
    _option(
        "--keras-version",
        type=click.Choice(["2", "3"]),
        default=None,
        help="The Keras version of the .keras/.h5 exports: 2 (tf_keras) or 3; default: the uploaded model's.",
    ),
]


def _spec_options(f: F) -> F:
    return _with_options(_SPEC_OPTIONS, f)


@cli.command("submit")
@_spec_options
@_option("--label", multiple=True, callback=_labels, metavar="KEY=VALUE", help="Label of the job (repeatable).")
@_option(
    "--idempotency-key",
    default=None,
    metavar="KEY",
    help="Retrying with the same key returns the same job (default: a fresh key).",
)
@_option(
    "--dry-run",
    is_flag=True,
    default=False,
    help="Check the spec against the model and dataset and print the plan (layers, steps, schedule, "
    "estimate) instead of submitting; exit 2 with the problems.",
)
@_option("--wait", is_flag=True, default=False, help="Follow the job and print its result.")
@_option(
    "--max-loss-pp",
    type=float,
    default=None,
    help="Accuracy budget: find the highest sparsity losing at most this many points (a search sweep; "
    "--final-sparsity is then searched for).",
)
@_option(
    "--max-relative-loss",
    type=float,
    default=None,
    help="Accuracy budget: find the highest sparsity losing at most this percent of the baseline.",
)
@_search_options
@_option(
    "--download",
    type=_DOWNLOAD_DIR,
    default=None,
    metavar="DIR",
    help="With --wait: download every export of the job into DIR.",
)
@_WAIT_TIMEOUT
@global_options
def submit(
    *,
    label: dict[str, str],
    idempotency_key: str | None,
    dry_run: bool,
    wait: bool,
    download: pathlib.Path | None,
    wait_timeout: float | None,
    max_loss_pp: float | None,
    max_relative_loss: float | None,
    search_low: float,
    search_high: float,
    tolerance: float,
    max_trials: int,
    parallel_trials: int,
    **spec: Any,
) -> None:
    """Create a pruning job; prints its id.

    With --wait, follows the job and prints its result (exit 8 if it failed, 9 if cancelled,
    10 after --wait-timeout: the job goes on).
    With --dry-run, checks everything a job would (spec, model, dataset) and prints the plan;
    nothing is created or queued. With a budget (--max-loss-pp or --max-relative-loss) the job
    searches for the highest sparsity within it (see `pruning sweep`; --search-low,
    --search-high, --tolerance, --max-trials and --parallel-trials bound the search) and ends
    with the result of the trial it picked.
    """
    if download is not None and not wait:
        raise click.UsageError("--download needs --wait")
    if wait_timeout is not None and not wait:
        raise click.UsageError("--wait-timeout needs --wait")
    if dry_run and wait:
        raise click.UsageError("--dry-run and --wait exclude each other")
    _one_budget(max_loss_pp, max_relative_loss)
    search: dict[str, Any] = dict(
        search_low=search_low,
        search_high=search_high,
        tolerance=tolerance,
        max_trials=max_trials,
        parallel_trials=parallel_trials,
    )
    if max_loss_pp is None and max_relative_loss is None and (given := [n for n, v in search.items() if v]):
        flag = "--" + given[0].replace("_", "-")
        raise click.UsageError(f"{flag} bounds the search for a budget: give --max-loss-pp or --max-relative-loss")
    budget = max_loss_pp is not None or max_relative_loss is not None
    ctx = click.get_current_context()
    if budget and ctx.get_parameter_source("final_sparsity") is ParameterSource.COMMANDLINE:
        raise click.UsageError(
            "--final-sparsity is what a budget searches for: bound the search with --search-low and --search-high "
            "instead"
        )
    opts = _globals()
    with _client(opts) as client:
        job_spec_ = _spec(client, **spec)
        if max_loss_pp is not None or max_relative_loss is not None:  # else no budget field at all
            job_spec_.budget.CopyFrom(accuracy_budget(max_loss_pp, max_relative_loss, **search))
        if dry_run:
            plan = client.validate(job_spec_, labels=label)
            _emit({"dry_run": True, "plan": _dump(plan.raw, defaults=True)}, format_plan(plan))
            return
        job = client.submit(job_spec_, labels=label, idempotency_key=idempotency_key)
        for warning in job.warnings:  # the plan's, which a job nobody follows would keep to its events
            click.echo(f"warning: {warning}", err=True)
        if not wait:
            _emit({"job_id": job.id, "warnings": job.warnings}, job.id)
            return
        if not opts.json:
            click.echo(f"job {job.id} submitted", err=True)
        _following(job.id)
        with _interrupted(job.id, opts.json) as seen:
            seen.final = follow(job, show_bar=not opts.json, json_lines=False, timeout=wait_timeout)
            _finish(client, job, seen.final, download)


@dataclasses.dataclass
class _Seen:
    final: pb.Job | pb.Sweep | None = None  # the job (or sweep) as it ended, once it has


# Set once a command said on stdout (--json) that Ctrl-C stopped it; the others get the error
# object there from run().
_INTERRUPT_SAID = threading.Event()


@contextlib.contextmanager
def _interrupted(id_: str, json_output: bool, *, sweep: bool = False) -> Iterator[_Seen]:
    """Ctrl-C stops the waiting, not the job (or sweep): says which goes on, and how to follow
    or stop it, or how it ended when the waiting had seen its end."""
    seen = _Seen()
    try:
        yield seen
    except KeyboardInterrupt:
        if json_output:
            click.echo(json.dumps({"sweep_id" if sweep else "job_id": id_, "interrupted": True}))
            _INTERRUPT_SAID.set()
        if seen.final is None and sweep:
            said = (
                f"sweep {id_} keeps running (pruning sweep-status {id_} shows it, pruning sweep-cancel {id_} stops it)"
            )
        elif seen.final is None:
            said = f"job {id_} keeps running (pruning watch {id_} follows it, pruning cancel {id_} stops it)"
        elif sweep:
            said = f"sweep {id_} ended {_state(seen.final)} (pruning sweep-status {id_})"
        else:  # stopped while the result or the downloads came
            said = f"job {id_} ended {_state(seen.final)} (pruning result {id_}, pruning download {id_})"
        click.echo(f"\ninterrupted: {said}", err=True)
        raise


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float]:
    if not value:
        return []
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from None


def _trial_line(t: pb.Trial, budget: bool) -> str:
    state = pb.JobState.Name(t.state).removeprefix("JOB_STATE_").lower()
    line = f"trial {t.index}: sparsity {t.sparsity:.4f} {state}"
    if t.epochs:
        line += f" (rung {t.rung}, {plural(t.epochs, 'epoch')})"
    if t.worker:
        line += f" on {t.worker}"
    if t.state == pb.JOB_STATE_SUCCEEDED:
        quality = (
            f"accuracy {t.pruned_accuracy:.4f}"
            + (f" ({lost_or_gained(t.accuracy_loss_pp)})" if t.HasField("accuracy_loss_pp") else "")
            if t.HasField("pruned_accuracy")
            else f"test loss {t.pruned_loss:.4f}"  # a regression
        )
        line += f": {quality}, kernels {t.kernel_sparsity:.4f} sparse, gzip {t.gzip_bytes:,} bytes"
        if t.tflite_latency_ms:
            line += f", TFLite {trial_latency(t, ' ms')}"
        line += " within the budget" if budget and t.within_budget else ""
    elif t.error.message:
        line += f": {t.error.message}"
    return line


def format_sweep(sweep: pb.Sweep) -> str:
    """The sweep as a table: one row per trial (the curve; with successive halving by rung,
    with its epochs), then the answer. The budget column is "-" without a budget."""
    halving = is_halving(sweep)
    header = ["trial", *(("rung", "epochs") if halving else ()), "sparsity", "state"]
    header += ["accuracy", "loss pp", "test loss", "kernels", "gzip bytes", "budget"]
    table = []
    for t in curve(sweep):
        done = t.state == pb.JOB_STATE_SUCCEEDED
        table.append(
            [
                str(t.index),
                *((str(t.rung), str(t.epochs)) if halving else ()),
                f"{t.sparsity:.4f}",
                pb.JobState.Name(t.state).removeprefix("JOB_STATE_").lower(),
                *((*trial_figures(t), f"{t.kernel_sparsity:.4f}") if done else ("", "", "", "")),
                f"{t.gzip_bytes:,}" if done else "",
                in_budget(sweep, t),
            ]
        )
    right = [True, *((True, True) if halving else ()), True, False, True, True, True, True, True, False]
    rows = [
        f"sweep {sweep.id} {pb.JobState.Name(sweep.state).removeprefix('JOB_STATE_').lower()}",
        *(f"{label}: {value}" for label, value in setup_lines(sweep)),
        *_columns(header, table, right),
    ]
    if sweep.message:
        rows.append(sweep.message)
    if sweep.HasField("chosen_trial"):
        rows.append(f"chosen: trial {sweep.chosen_trial}, job {sweep.chosen_job_id}")
    return "\n".join(rows)


def _follow_sweep(handle: SweepHandle, json_lines: bool) -> pb.Sweep:
    """Prints each trial as it changes (or each snapshot as a JSON line) until the sweep ends."""
    shown: dict[int, str] = {}
    final = None
    for sweep in handle.watch():
        final = sweep
        if json_lines:
            click.echo(json.dumps(_dump(sweep), sort_keys=True))
            continue
        for t in sweep.trials:
            line = _trial_line(t, has_budget(sweep))
            if shown.get(t.index) != line:
                shown[t.index] = line
                click.echo(line, err=True)
    return final if final is not None else handle.get()


@cli.command("sweep")
@_spec_options
@_option(
    "--sparsities",
    callback=_floats,
    default=None,
    metavar="S1,S2,...",
    help="Try these final sparsities (the curve); with a budget, the answer is the highest within it.",
)
@_option("--max-loss-pp", type=float, default=None, help="Accuracy budget: at most this many points lost.")
@_option(
    "--max-relative-loss", type=float, default=None, help="Accuracy budget: at most this percent of the baseline lost."
)
@_search_options
@_option(
    "--method",
    type=click.Choice(sorted(SEARCH_METHODS)),
    default="bisection",
    help="With a budget: bisection, or successive halving (many sparsities on few epochs, the best on more).",
)
@_option("--halving-rate", type=INT32, default=0, help="Successive halving: keep 1/rate of a rung; 0 = 3.")
@_option("--label", multiple=True, callback=_labels, metavar="KEY=VALUE", help="Label of the sweep (repeatable).")
@_option(
    "--idempotency-key",
    default=None,
    metavar="KEY",
    help="Retrying with the same key returns the same sweep (default: a fresh key).",
)
@_option("--wait", is_flag=True, default=False, help="Follow the sweep, trial by trial, and print its table.")
@global_options
def sweep(
    *,
    sparsities: list[float],
    max_loss_pp: float | None,
    max_relative_loss: float | None,
    search_low: float,
    search_high: float,
    tolerance: float,
    max_trials: int,
    parallel_trials: int,
    method: str,
    halving_rate: int,
    label: dict[str, str],
    idempotency_key: str | None,
    wait: bool,
    **spec: Any,
) -> None:
    """Run a sweep: trials of one job spec at several sparsities, spread over the workers.

    Give --sparsities for the curve, or a budget (--max-loss-pp or --max-relative-loss) alone to
    search for the highest sparsity within it. Prints the sweep id; with --wait, each trial as
    it changes and the table at the end (exit 8 if no trial succeeded or no sparsity tried
    kept within the budget, 9 if it was cancelled). --final-sparsity is replaced by each
    trial's.
    """
    _one_budget(max_loss_pp, max_relative_loss)
    opts = _globals()
    with _client(opts) as client:
        spec_ = sweep_spec(
            _spec(client, **spec),
            sparsities=sparsities,
            max_loss_pp=max_loss_pp,
            max_relative_loss_percent=max_relative_loss,
            search_low=search_low,
            search_high=search_high,
            tolerance=tolerance,
            max_trials=max_trials,
            parallel_trials=parallel_trials,
            method=method,
            halving_rate=halving_rate,
        )
        handle = client.create_sweep(spec_, labels=label, idempotency_key=idempotency_key)
        if not wait:
            _emit({"sweep_id": handle.id}, handle.id)
            return
        if not opts.json:
            click.echo(f"sweep {handle.id} started", err=True)
        else:
            _events_on_stdout()
        with _interrupted(handle.id, opts.json, sweep=True) as seen:
            final = seen.final = _follow_sweep(handle, json_lines=opts.json)
        if not opts.json:
            click.echo(format_sweep(final))
        sweep_outcome(final)  # exit 9 for a cancelled sweep, 8 for one no trial of which succeeded
        if has_budget(final) and not final.HasField("chosen_trial"):
            # as a job with the same budget fails: a pipeline must not take "nothing kept it" for an answer
            raise JobFailed(f"sweep {final.id}: {final.message}", job_code=grpc.StatusCode.FAILED_PRECONDITION.value[0])


@cli.command("sweep-status")
@click.argument("sweep_id")
@global_options
def sweep_status(sweep_id: str) -> None:
    """Show a sweep: its trials (the curve so far) and, once known, the answer."""
    with _client(_globals()) as client:
        found = client.get_sweep(sweep_id)
    _emit(_dump(found), format_sweep(found))


@cli.command("sweep-cancel")
@click.argument("sweep_id")
@global_options
def sweep_cancel(sweep_id: str) -> None:
    """Cancel a sweep and every trial that has not ended."""
    with _client(_globals()) as client:
        found = client.cancel_sweep(sweep_id)
    _emit(_dump(found), format_sweep(found))


def _sweep_curve_png(found: pb.Sweep, path: pathlib.Path) -> str | None:
    """The sweep curve (accuracy and gzip size against sparsity) as a PNG, when matplotlib is
    installed (the report has the same figures as a table either way). With successive halving,
    one line per rung: trials of different epochs are not one curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    lines = curve_lines(found)
    if not lines:
        return None
    # Two panels on one sparsity axis: on twin axes that scale themselves, two points of each
    # drew the accuracy line exactly under the size line.
    fig, (ax, size) = plt.subplots(2, 1, sharex=True, figsize=(7, 5.5), height_ratios=(3, 2))
    # a regression's trials have no accuracy: their test loss is the curve
    accuracy = all(t.HasField("pruned_accuracy") for _, trials in lines for t in trials)
    quality = "pruned_accuracy" if accuracy else "pruned_loss"
    for label, trials in lines:
        xs = [t.sparsity for t in trials]
        ax.plot(xs, [getattr(t, quality) for t in trials], "o-", label=label)
        size.plot(xs, [t.gzip_bytes for t in trials], "s--", label=label)
    if found.HasField("chosen_trial"):
        chosen = found.trials[found.chosen_trial]
        ax.plot([chosen.sparsity], [getattr(chosen, quality)], "r*", markersize=14, label="chosen")
    size.set_xlabel("sparsity")
    ax.set_ylabel("test accuracy" if accuracy else "test loss")
    size.set_ylabel("gzip bytes")
    ax.legend(loc="best", fontsize="small")
    ax.set_title(f"sweep {found.id}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


@cli.command("report")
@click.argument("ident", metavar="JOB_ID|SWEEP_ID")
@_option("--sweep", "is_sweep", is_flag=True, default=False, help="The id is a sweep's.")
@_option(
    "-o",
    "--output",
    type=_DOWNLOAD_DIR,
    default=pathlib.Path("."),
    metavar="DIR",
    help="Where report.md, report.html and the plots go (created if missing).",
)
@global_options
def report_(ident: str, is_sweep: bool, output: pathlib.Path) -> None:
    """Write a one-page report of a job (or a sweep) as Markdown and HTML.

    A job's report holds the outcome, baseline vs pruned, the measured latency, the recipe, the
    history and the per-layer sparsity, with its plots and TensorBoard logs downloaded beside
    it; a sweep's holds the curve and the answer (and a plot of the curve when matplotlib is
    installed). A sweep's id is taken as one without --sweep too.
    """
    if output.suffix.lower() in (".md", ".html", ".htm", ".pdf") and not output.is_dir():
        raise click.BadParameter(
            f"{str(output)!r} names a file: -o is the folder report.md and report.html go into", param_hint="'-o'"
        )
    made = make_dirs(output)
    try:
        written = _write_report(ident, is_sweep, output)
    except BaseException:
        remove_empty_dirs(made)  # a report that could not be made leaves no folder behind
        raise
    _emit(written, "\n".join(f"{k}: {v}" for k, v in written.items()))


def _write_report(ident: str, is_sweep: bool, output: pathlib.Path) -> dict[str, str]:
    """Writes the report of job or sweep ``ident`` into ``output``; returns what it wrote."""
    written: dict[str, str] = {}
    with _client(_globals()) as client:
        job, found = None, client.get_sweep(ident) if is_sweep else None
        if found is None:
            try:
                job = client.get_job(ident)
            except NotFound as missing:  # a sweep's id given without --sweep: its report, not "no job"
                try:
                    found = client.get_sweep(ident)
                except NotFound:
                    raise missing from None
        if found is not None:
            png = _sweep_curve_png(found, output / f"{found.id}.curve.png")
            markdown, page = sweep_report(found, png)
            if png:
                written["curve_png"] = str(output / png)
        elif job is not None:
            files, lost = {}, []
            for artifact in job.result.artifacts:
                if artifact.format in REPORT_FORMATS:
                    try:
                        path = client.download(artifact.id, output / f"{job.id}-{artifact.filename}")
                    except NotFound:  # deleted (pruning delete) or past the artifact retention
                        gone = "no longer stored (deleted, or past the artifact retention)"
                        click.echo(f"warning: {artifact.filename} is {gone}: the report goes without it", err=True)
                        lost.append(artifact.filename)
                        continue
                    files[artifact.format] = path.name
                    written[artifact.format] = str(path)
            search = None
            if job.search_sweep_id:  # a job with an accuracy budget: the trials behind its sparsity
                with contextlib.suppress(NotFound):  # its record went before the job's
                    search = client.get_sweep(job.search_sweep_id)
            markdown, page = job_report(job, files, search, lost)
    for name, text in (("report.md", markdown), ("report.html", page)):
        (output / name).write_text(text)
        written[name.replace(".", "_")] = str(output / name)
    return written


@cli.command("watch")
@click.argument("job_id")
@_option(
    "--download",
    type=_DOWNLOAD_DIR,
    default=None,
    metavar="DIR",
    help="When the job succeeds, download every export into DIR.",
)
@_WAIT_TIMEOUT
@global_options
def watch(job_id: str, download: pathlib.Path | None, wait_timeout: float | None) -> None:
    """Follow a job until it ends.

    Shows a progress bar on a terminal (plain lines otherwise) and the result; with --json,
    one event per line. Exit 8 if the job failed, 9 if it was cancelled, 10 after
    --wait-timeout (the job goes on).
    """
    opts = _globals()
    if opts.json:
        _events_on_stdout()  # any error's JSON object goes to stderr, the events' file stays clean
    _following(job_id)
    with _client(opts) as client, _interrupted(job_id, opts.json) as seen:
        job = client.job(job_id)
        final = seen.final = follow(job, show_bar=not opts.json, json_lines=opts.json, timeout=wait_timeout)
        if not opts.json:
            _finish(client, job, final, download)
            return
        if final.state != pb.JOB_STATE_SUCCEEDED:
            job.result()  # raises JobFailed or JobCancelled, whose exit codes say which
        if download is not None:
            for path in _fetch_job(client, job.id, exports(final.result.artifacts), str(download), directory=True):
                click.echo(f"downloaded: {path}", err=True)  # stdout holds the events only


@cli.command("status")
@click.argument("job_id")
@global_options
def status(job_id: str) -> None:
    """Show a job: state, attempt, progress, error."""
    with _client(_globals()) as client:
        try:
            job = client.get_job(job_id)
        except NotFound as missing:
            with contextlib.suppress(PruningError):  # a sweep's id: say where it is shown
                client.get_sweep(job_id)
                missing.message += f" ({job_id} is a sweep: pruning sweep-status {job_id})"
            raise
    p = job.progress
    text = f"{job.id} {_state(job)} attempt {job.attempt}"
    if p.phase and job.state != pb.JOB_STATE_SUCCEEDED:  # a job that succeeded went through them all
        text += f" {'stopped in ' if is_terminal(job) else ''}phase {p.phase}"
    if p.total_steps:
        text += f" step {p.step}/{p.total_steps} sparsity {p.sparsity:.3f}"
        if not is_terminal(job) and p.eta_seconds:  # 0: not known yet (or cleared as the job ended)
            text += f" eta {p.eta_seconds:.0f}s"
    if job.error.message:
        text += f" error: {job.error.message}"
    _emit(_dump(job), text)


@cli.command("result")
@click.argument("job_id")
@_WAIT_TIMEOUT
@global_options
def result(job_id: str, wait_timeout: float | None) -> None:
    """Wait for a job and print its result.

    Exit 8 if the job failed, 9 if it was cancelled, 10 after --wait-timeout.
    """
    _following(job_id)
    opts = _globals()
    with _client(opts) as client, _interrupted(job_id, opts.json):
        outcome = client.job(job_id).result(timeout=wait_timeout)
    _emit(outcome.to_dict(), format_table(outcome))


@cli.command("list")
@_option("--state", type=click.Choice(_STATES), multiple=True, help="Only jobs in this state (repeatable).")
@_option(
    "--label", multiple=True, callback=_labels, metavar="KEY=VALUE", help="Only jobs with this label (repeatable)."
)
@_option("--limit", type=click.IntRange(min=1), default=100, help="Show at most this many jobs.")
@global_options
def list_(state: tuple[str, ...], label: dict[str, str], limit: int) -> None:
    """List jobs, newest first.

    At most --limit (100) of them; a last line says when there are more (JSON: "truncated").
    """
    states = [int(pb.JobState.Value("JOB_STATE_" + s.upper())) for s in state]
    with _client(_globals()) as client:
        jobs = list(itertools.islice(client.list_jobs(states=states, labels=label), limit + 1))
    truncated = len(jobs) > limit
    jobs = jobs[:limit]
    lines = [
        (
            f"{j.id}  {_state(j):11} {j.created_at.ToDatetime():%Y-%m-%d %H:%M:%S}  "
            + " ".join(f"{k}={v}" for k, v in sorted(j.labels.items()))
        ).rstrip()
        for j in jobs
    ]
    if lines:
        lines.insert(0, f"{'job':24}  {'state':11} {'created (UTC)':19}  labels")
    if truncated:
        lines.append(f"... more than {limit} (raise --limit)")
    _emit({"jobs": [_dump(j) for j in jobs], "truncated": truncated}, "\n".join(lines) or "no jobs")


@cli.command("cancel")
@click.argument("job_id")
@global_options
def cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    with _client(_globals()) as client:
        job = client.cancel_job(job_id)
    _emit(_dump(job), f"{job.id} {_state(job)}")


_KINDS = ("model", "dataset", "export", "report")


def _size(count: int) -> str:
    """Bytes for people: 1.5 GiB, 320.0 KiB, 12 B."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


@cli.command("artifacts")
@_option("--kind", type=click.Choice(_KINDS), default=None, help="Only artifacts of this kind.")
@_option("--limit", type=click.IntRange(min=1), default=100, help="Show at most this many artifacts.")
@global_options
def artifacts(kind: str | None, limit: int) -> None:
    """List this tenant's artifacts, newest first, and the bytes they hold against its quota.

    At most --limit (100) of them; a last line says when there are more (JSON: "truncated").
    """
    kind_value = int(pb.ArtifactKind.Value("ARTIFACT_KIND_" + kind.upper())) if kind else None
    with _client(_globals()) as client:
        first = client.artifacts_page(kind=kind_value, page_size=min(limit, 500))
        listed = list(first.artifacts)
        token = first.next_page_token
        while token and len(listed) < limit:
            page = client.artifacts_page(kind=kind_value, page_size=min(limit - len(listed), 500), page_token=token)
            listed.extend(page.artifacts)
            token = page.next_page_token
    truncated = bool(token) or len(listed) > limit
    listed = listed[:limit]
    quota = f" of {_size(first.quota_bytes)}" if first.quota_bytes else ""
    lines = [
        f"{a.id}  {pb.ArtifactKind.Name(a.kind).removeprefix('ARTIFACT_KIND_').lower():8} {a.format:12} "
        f"{_size(a.size):>10}  {a.created_at.ToDatetime():%Y-%m-%d %H:%M:%S}  {a.filename}"
        + (f"  (job {a.job_id})" if a.job_id else "")
        for a in listed
    ]
    if truncated:
        lines.append(f"... more than {limit} (raise --limit)")
    lines.append(f"stored: {_size(first.stored_bytes)}{quota}")
    data = {
        "artifacts": [{**_dump(a), "size": a.size} for a in listed],  # a number, as the totals (not int64's string)
        "stored_bytes": first.stored_bytes,
        "quota_bytes": first.quota_bytes,
        "truncated": truncated,
    }
    _emit(data, "\n".join(lines))


@cli.command("delete")
@click.argument("artifact_id")
@global_options
def delete(artifact_id: str) -> None:
    """Delete an uploaded model or dataset, or an export (this tenant's record of it).

    Its bytes go at the server's next housekeeping once no tenant's record points to them.
    Exit 3 when the tenant has no such artifact, 6 while a job that has not ended (or a sweep
    still running) reads it.
    """
    with _client(_globals()) as client:
        artifact = client.delete_artifact(artifact_id)
    _emit(_dump(artifact), f"deleted {artifact.id} ({artifact.filename})")


@cli.command("download")
@click.argument("id_", metavar="ID")
@_option(
    "--output",
    "-o",
    default=None,
    metavar="PATH",
    help="File to write, or a directory (existing, or ending with /) to write into; default: here.",
)
@_option(
    "--format",
    "fmt",
    type=ExportFormatType(),
    default=None,
    help="Which export of a job (default: the one -o's suffix names, .keras, .h5, .tflite, .int8.tflite or "
    ".zip; else the pruned model, its first export).",
)
@_option(
    "--all", "all_", is_flag=True, default=False, help="Every export of a job, into the directory -o (default: here)."
)
@_WAIT_TIMEOUT
@global_options
def download(id_: str, output: str | None, fmt: str | None, all_: bool, wait_timeout: float | None) -> None:
    """Download an artifact or a job's exports; prints the paths.

    ID is an artifact id (its sha256) or a job id (waits for the job to end; exit 10 after
    --wait-timeout, 8 if it failed, 9 if it was cancelled). Unless -o names a file,
    an upload by id is saved as <its uploaded name>-<id prefix><suffix>, an export as <id><suffix>. An interrupted
    download resumes from its partial file (<file>.<artifact id prefix>.part).
    """
    if not _is_id(id_) and re.fullmatch(r"[0-9a-fA-F]+", id_) and not re.fullmatch(f"[0-9a-f]{{{JOB_ID_LENGTH}}}", id_):
        raise click.UsageError(
            f"ID is a job id ({JOB_ID_LENGTH} lowercase hex digits) or an artifact id (64), whole: {id_[:70]!r} is "
            "neither "
            "(`pruning artifacts` and `pruning list` show them)"
        )
    if _is_id(id_) and (fmt is not None or all_):
        raise click.UsageError("--format and --all need a job id, not an artifact id")
    if fmt is not None and all_:
        raise click.UsageError("--format and --all exclude each other")
    if _is_id(id_) and wait_timeout is not None:
        raise click.UsageError("--wait-timeout needs a job id: an artifact is there or not, nothing to wait for")
    with _client(_globals()) as client:
        if _is_id(id_):
            named = output is not None and not _is_directory(output)
            paths = [_fetch(client, id_, _destination(output, id_ if named else _stored_name(client, id_)))]
        else:
            handle = client.job(id_)
            if not is_terminal(job := handle.status()):  # waits: say so, rather than hang without a word
                state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_")
                click.echo(f"waiting for job {id_} to end ({state})", err=True)
            outcome = handle.result(timeout=wait_timeout).raw  # failed, cancelled, timed out: exit 8, 9, 10
            artifacts = exports(outcome.artifacts) if all_ else [pick_export(id_, outcome.artifacts, fmt, output)]
            if not all_ and output and not _is_directory(output) and pathlib.Path(output).suffix:
                suffix = _artifact_suffix(artifacts[0])
                if not output.lower().endswith(suffix.lower()):  # "m.onnx": a suffix no export has
                    click.echo(
                        f"warning: {pathlib.Path(output).name} gets the {format_name(artifacts[0].format)} export "
                        f"(a {suffix} file): no export of job {id_} has that suffix",
                        err=True,
                    )
            paths = _fetch_job(client, id_, artifacts, output, directory=all_)
    _emit({"path": str(paths[0]), "paths": [str(p) for p in paths]}, "\n".join(str(p) for p in paths))


# -- entry point -------------------------------------------------------------------------------


_NO_ARGS_IS_HELP: tuple[type[Exception], ...] = tuple(
    getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",) if hasattr(click.exceptions, name)
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default: the process's arguments); returns the exit code."""
    args = list(argv) if argv is not None else sys.argv[1:]
    _INTERRUPT_SAID.clear()
    try:
        rv = cli.main(args=args, prog_name="pruning", standalone_mode=False)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except click.exceptions.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
        if "--json" in args and not _INTERRUPT_SAID.is_set():  # upload, download ...: the error object
            with contextlib.suppress(OSError):
                click.echo(
                    json.dumps({"error": "Interrupted", "message": "interrupted (Ctrl-C)", "field_violations": []})
                )
        return 130
    except click.UsageError as error:
        if isinstance(error, _NO_ARGS_IS_HELP):  # bare `pruning` (click >= 8.2): the help, exit 2
            error.show()
            return error.exit_code
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        _usage_error(error, hint, json_output="--json" in args)
        return error.exit_code
    except click.ClickException as error:
        _usage_error(error, "", json_output="--json" in args)
        return error.exit_code
    return rv if isinstance(rv, int) else 0


def _usage_error(error: click.ClickException, hint: str, *, json_output: bool) -> None:
    """A mistake in the command line: one line on stderr, and with ``--json`` also the error
    object on stdout (the shape of every other error), so a pipeline reading stdout sees it."""
    message = _one_line(error.format_message())
    if json_output:
        param = getattr(error, "param", None)
        field = getattr(param, "opts", None) or ([param.name] if param is not None and param.name else [])
        named = getattr(error, "param_hint", None)
        field = field or ([named.split(" / ")[0]] if isinstance(named, str) else [])
        violations = [[field[0], message]] if field else []
        click.echo(json.dumps({"error": type(error).__name__, "message": message, "field_violations": violations}))
    click.echo(f"error: {message}{hint}", err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``pruning`` console script."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
