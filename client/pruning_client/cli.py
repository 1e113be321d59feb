"""``pruning``: command line of the pruning service.

Every command takes ``--json`` for machine-readable output. Exit codes: 0 success,
2 invalid argument, 3 not found, 4 unauthenticated, 5 resource exhausted, 6 failed
precondition or already exists, 7 unavailable, 8 job failed, 9 job cancelled, 10 timeout,
11 integrity error (a download that fails its sha256 check), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from google.protobuf import json_format

from pruning.v1 import pruning_pb2 as pb

from .client import Client
from .exceptions import PruningError
from .job import TERMINAL, JobHandle
from .results import PruneResult
from .specs import EXPORT_FORMATS, constant_sparsity, job_spec, polynomial_decay


def _dump(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _emit(args, data, text: str) -> None:
    print(json.dumps(data, sort_keys=True) if args.json else text, flush=True)


def _client(args) -> Client:
    roots = pathlib.Path(args.ca_file).read_bytes() if args.ca_file else None
    return Client(args.target, api_key=args.api_key, tls=args.tls or roots is not None, root_certificates=roots,
                  timeout=args.timeout)


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _is_id(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def format_table(result: PruneResult) -> str:
    """The result as the table the reference job prints."""
    lines = [
        f"{'':24}{'baseline':>12}{'pruned':>12}",
        f"{'test accuracy':24}{result.baseline_accuracy:>12.4f}{result.pruned_accuracy:>12.4f}",
        f"{'test loss':24}{result.baseline_loss:>12.4f}{result.pruned_loss:>12.4f}",
        f"{'model size (raw)':24}{result.size_before_raw:>12,}{result.size_after_raw:>12,}",
        f"{'model size (gzip)':24}{result.size_before_gzip:>12,}{result.size_after_gzip:>12,}",
        f"accuracy delta: {result.accuracy_delta * 100:+.2f} pp;  gzip compression: {result.compression_ratio:.2f}x",
        f"sparsity: pruned kernels {result.pruned_kernel_sparsity:.4f}, all parameters {result.overall_sparsity:.4f}"
        f" ({result.nonzero_params:,} of {result.total_params:,} non-zero)",
        f"fine-tuning: {result.fine_tune_seconds:.1f} s on {result.device}",
        "",
        f"{'layer':24}{'type':16}{'pruned':>8}{'weights':>10}{'non-zero':>10}{'sparsity':>10}",
    ]
    for layer in result.layers:
        lines.append(
            f"{layer.name:24}{layer.type:16}{'yes' if layer.pruned else 'no':>8}{layer.weights:>10,}"
            f"{layer.nonzero:>10,}{layer.sparsity:>10.4f}"
        )
    return "\n".join(lines)


def follow(job: JobHandle, *, show_bar: bool, json_lines: bool) -> pb.Job:
    """Follows a job's events, with a live progress bar or one JSON line per event."""
    bar = None

    def say(message: str) -> None:
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    try:
        for event in job.watch():
            kind = event.WhichOneof("kind")
            if json_lines:
                print(json.dumps(_dump(event), sort_keys=True), flush=True)
                continue
            if kind == "progress" and event.progress.phase == "fine_tune" and event.progress.total_steps and show_bar:
                p = event.progress
                if bar is None:
                    from tqdm import tqdm

                    bar = tqdm(total=p.total_steps, unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
                bar.n = p.step
                bar.set_postfix_str(
                    f"epoch {p.epoch}/{p.total_epochs} loss {p.loss:.4f} acc {p.accuracy:.4f} sparsity {p.sparsity:.3f}"
                )
                bar.refresh()
            elif kind == "log":
                say(f"[{event.log.level}] {event.log.message}")
            elif kind == "state_change":
                state = pb.JobState.Name(event.state_change.to).removeprefix("JOB_STATE_")
                message = f"job {job.id}: {state}"
                if event.state_change.error.message:
                    message += f" ({event.state_change.error.message})"
                say(message)
    finally:
        if bar is not None:
            bar.close()
    return job.status()


def _finish(args, job: JobHandle, final: pb.Job) -> int:
    if final.state == pb.JOB_STATE_SUCCEEDED:
        result = PruneResult.from_proto(final.result)
        downloaded = None
        if getattr(args, "download", None):
            target = pathlib.Path(args.download)
            target.mkdir(parents=True, exist_ok=True)
            downloaded = str(job.download(target))
        data = {"job_id": job.id, "state": "SUCCEEDED", "result": result.to_dict(), "downloaded": downloaded}
        text = format_table(result) + (f"\npruned model: {downloaded}" if downloaded else "")
        _emit(args, data, text)
        return 0
    # Re-raise the outcome through the handle so the exit code matches the SDK exception.
    job.result()
    return 1


def cmd_upload(args) -> int:
    with _client(args) as client:
        method = client.upload_model if args.kind == "model" else client.upload_dataset
        artifact = method(args.path)
    _emit(args, _dump(artifact), artifact.id)
    return 0


def _spec_from_args(args, client: Client) -> pb.JobSpec:
    model_id = args.model if _is_id(args.model) else client.upload_model(args.model).id
    dataset = args.dataset
    if not _is_id(dataset) and os.path.exists(dataset):
        dataset = client.upload_dataset(dataset).id
    if args.schedule == "polynomial":
        schedule = polynomial_decay(args.initial_sparsity, args.final_sparsity, begin_step=args.begin_step,
                                    end_step=args.end_step, power=args.power, frequency=args.frequency)
    else:
        schedule = constant_sparsity(args.final_sparsity, begin_step=args.begin_step, end_step=args.end_step,
                                     frequency=args.frequency)
    return job_spec(
        model_id, dataset=dataset, schedule=schedule, epochs=args.epochs, batch_size=args.batch_size,
        validation_split=args.validation_split, optimizer=args.optimizer, learning_rate=args.learning_rate,
        seed=args.seed, max_train_samples=args.max_train_samples, include_layers=tuple(args.include_layer),
        exclude_layers=tuple(args.exclude_layer), exports=tuple(args.export or ["keras"]),
    )


def cmd_submit(args) -> int:
    labels = dict(args.label)
    with _client(args) as client:
        job = client.submit(_spec_from_args(args, client), labels=labels, idempotency_key=args.idempotency_key)
        if not args.wait:
            _emit(args, {"job_id": job.id}, job.id)
            return 0
        if not args.json:
            print(f"job {job.id} submitted", file=sys.stderr)
        final = follow(job, show_bar=not args.json, json_lines=False)
        return _finish(args, job, final)


def cmd_watch(args) -> int:
    with _client(args) as client:
        job = client.job(args.job_id)
        final = follow(job, show_bar=not args.json, json_lines=args.json)
        if not args.json:
            return _finish(args, job, final)
        if final.state != pb.JOB_STATE_SUCCEEDED:
            job.result()  # raises JobFailed or JobCancelled, whose exit codes say which
        return 0


def cmd_status(args) -> int:
    with _client(args) as client:
        job = client.get_job(args.job_id)
    p = job.progress
    text = f"{job.id} {pb.JobState.Name(job.state).removeprefix('JOB_STATE_')} attempt {job.attempt}"
    if p.phase:
        text += f" phase {p.phase}"
    if p.total_steps:
        text += f" step {p.step}/{p.total_steps} sparsity {p.sparsity:.3f} eta {p.eta_seconds:.0f}s"
    if job.error.message:
        text += f" error: {job.error.message}"
    _emit(args, _dump(job), text)
    return 0


def cmd_list(args) -> int:
    states = [pb.JobState.Value("JOB_STATE_" + s.upper()) for s in args.state]
    labels = dict(args.label)
    with _client(args) as client:
        jobs = list(client.list_jobs(states=states, labels=labels))[: args.limit]
    lines = [
        f"{j.id}  {pb.JobState.Name(j.state).removeprefix('JOB_STATE_'):11} "
        f"{j.created_at.ToDatetime():%Y-%m-%d %H:%M:%S}  "
        + " ".join(f"{k}={v}" for k, v in sorted(j.labels.items()))
        for j in jobs
    ]
    _emit(args, {"jobs": [_dump(j) for j in jobs]}, "\n".join(lines) or "no jobs")
    return 0


def cmd_cancel(args) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.job_id)
    _emit(args, _dump(job), f"{job.id} {pb.JobState.Name(job.state).removeprefix('JOB_STATE_')}")
    return 0


def cmd_download(args) -> int:
    with _client(args) as client:
        if _is_id(args.id):
            path = client.download(args.id, args.output or args.id)
        else:
            target = pathlib.Path(args.output or ".")
            target.mkdir(parents=True, exist_ok=True)
            path = client.job(args.id).download(target, fmt=args.format)
    _emit(args, {"path": str(path)}, str(path))
    return 0


def cmd_result(args) -> int:
    with _client(args) as client:
        result = client.job(args.job_id).result(timeout=args.wait_timeout)
    _emit(args, result.to_dict(), format_table(result))
    return 0


def cmd_up(args) -> int:
    try:
        from pruning_server.embedded import main as up
    except ImportError:
        print("`pruning up` needs the server and worker packages: pip install ./server ./workers", file=sys.stderr)
        return 1
    return up(listen=args.listen)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=os.environ.get("PRUNING_TARGET", "127.0.0.1:50051"),
                        help="server host:port (env PRUNING_TARGET)")
    common.add_argument("--api-key", default=os.environ.get("PRUNING_API_KEY"), help="API key (env PRUNING_API_KEY)")
    common.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    common.add_argument("--ca-file", default=os.environ.get("PRUNING_CA_FILE"),
                        help="PEM roots for TLS (env PRUNING_CA_FILE); implies --tls")
    common.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(prog="pruning", description="Prune Keras models with the pruning service.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run Redis (embedded unless PRUNING_REDIS_URL), the server and a worker here")
    p.add_argument("--listen", help="host:port for the server (default PRUNING_LISTEN or 127.0.0.1:50051)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("upload", parents=[common], help="upload a model or a dataset")
    p.add_argument("kind", choices=["model", "dataset"])
    p.add_argument("path")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("submit", parents=[common], help="create a pruning job")
    p.add_argument("--model", required=True, help="model file (.keras/.h5) or uploaded model id")
    p.add_argument("--dataset", default="mnist", help="'mnist', an .npz file or an uploaded dataset id")
    p.add_argument("--schedule", choices=["polynomial", "constant"], default="polynomial")
    p.add_argument("--initial-sparsity", type=float, default=0.5)
    p.add_argument("--final-sparsity", type=float, default=0.8, help="final (or constant target) sparsity")
    p.add_argument("--begin-step", type=int, default=0)
    p.add_argument("--end-step", type=int, default=0, help="0 = end of fine-tuning")
    p.add_argument("--power", type=float, default=3.0)
    p.add_argument("--frequency", type=int, default=100)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--validation-split", type=float, default=0.1)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--learning-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-samples", type=int, default=0)
    p.add_argument("--include-layer", action="append", default=[])
    p.add_argument("--exclude-layer", action="append", default=[])
    p.add_argument("--export", action="append", choices=sorted(EXPORT_FORMATS))
    p.add_argument("--label", action="append", default=[], type=_label, help="key=value (repeatable)")
    p.add_argument("--idempotency-key", help="retrying with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="follow the job and print its result")
    p.add_argument("--download", metavar="DIR", help="with --wait: download the pruned model into DIR")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("watch", parents=[common], help="follow a job (progress bar; --json: one event per line)")
    p.add_argument("job_id")
    p.add_argument("--download", metavar="DIR")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("status", parents=[common], help="show a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("result", parents=[common], help="wait for a job and print its result")
    p.add_argument("job_id")
    p.add_argument("--wait-timeout", type=float, default=None)
    p.set_defaults(func=cmd_result)

    p = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--state", action="append", default=[], choices=[s.removeprefix("JOB_STATE_").lower()
                   for s in pb.JobState.keys() if s != "JOB_STATE_UNSPECIFIED"])
    p.add_argument("--label", action="append", default=[], type=_label, help="key=value (repeatable)")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("download", parents=[common], help="download an artifact id, or a job's pruned model")
    p.add_argument("id", help="artifact id or job id")
    p.add_argument("--output", "-o", help="file (artifact) or directory (job)")
    p.add_argument("--format", help="a job's export format (default: the pruned model)")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except PruningError as error:
        if getattr(args, "json", False):
            print(json.dumps({"error": type(error).__name__, "message": error.message,
                              "field_violations": error.field_violations}), flush=True)
        else:
            print(f"error: {error.message}", file=sys.stderr)
            for field, description in error.field_violations:
                print(f"  {field}: {description}", file=sys.stderr)
        code = error.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
