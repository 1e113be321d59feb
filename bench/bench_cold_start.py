"""A cold ``pruning up`` plus the reference pruning, against the same pruning in a plain script.

In one run, alternating, ``--repeat`` times each (all from the same trained baseline and the
same MNIST file):

* service: from nothing running, start ``pruning up`` (its own embedded Redis, the server and
  the worker, in a fresh state directory), then with the SDK upload the baseline, submit the
  reference job of ``examples/mnist_prune.py`` (PolynomialDecay 0.50 -> 0.80, 2 epochs, batch
  128, validation split 0.1, every other setting the service's default), follow it to its end
  and download the pruned Keras 3 model. The clock runs from the ``pruning up`` command to the
  downloaded file; stopping the stack afterwards is not counted.
* plain: a fresh Python process that does the same pruning with TensorFlow and TFMOT and no
  service: load the Keras 3 model and translate it to tf_keras (the service's bridge; tf_keras
  cannot read a Keras 3 file), evaluate the baseline, wrap it with ``prune_low_magnitude`` on
  the schedule and learning rate the service resolved for its job (end step, frequency, each
  layer's sparsity, Adam with cosine decay, distillation from the baseline), fine-tune 2
  epochs with the same batch and validation split, evaluate, strip, translate back to Keras 3
  and save. The clock runs from the process's start to its exit.

Prints every round, the medians, the ratio service/plain against the bar (at most 1.1x) and the
service job's phase timings (where its time went). Not a test: it trains, so it takes minutes.
Needs the MNIST file ``scripts/fetch_mnist.py`` builds (``--data-dir``).

Usage: python bench/bench_cold_start.py [--repeat 3] [--data-dir .pruning/data]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parent.parent
BAR = 1.1
EPOCHS, BATCH, VALIDATION_SPLIT = 2, 128, 0.1
INITIAL, FINAL = 0.50, 0.80

# The plain script: one process, TensorFlow + TFMOT, no service. Arguments: a JSON object.
PLAIN = r"""
import json, os, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
args = json.loads(sys.argv[1])
import keras, tf_keras
import tensorflow_model_optimization as tfmot
from pruning_worker.bridge import to_keras3, to_tf_keras
from pruning_worker.datasets import load_builtin

x_train, y_train, x_test, y_test = load_builtin("mnist", args["data_dir"])
model3 = keras.saving.load_model(args["model"])
model = to_tf_keras(model3)
loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
baseline = model.evaluate(x_test, y_test, batch_size=args["batch"], verbose=0)[1]
taught = None
if args["distillation"]:  # the teacher's outputs before pruning, as the recipe does
    from pruning_worker.distill import prepare
    taught = prepare(model, x_train, y_train, "sparse_categorical_crossentropy_from_logits",
                     args["distillation_alpha"], args["distillation_temperature"], args["batch"])
def prune(layer):
    final = args["layers"].get(layer.name)
    if final is None:
        return layer
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        args["initial"], final, begin_step=0, end_step=args["end_step"], frequency=args["frequency"]
    )
    return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
pruned = tf_keras.models.clone_model(model, clone_function=prune)
steps = args["steps"]
lr = tf_keras.optimizers.schedules.CosineDecay(args["learning_rate"], steps, alpha=0.1)
pruned.compile(optimizer=tf_keras.optimizers.Adam(lr), loss=taught.loss if taught else loss,
               metrics=taught.metrics() if taught else ["accuracy"])
fit_started = time.perf_counter()
pruned.fit(x_train, taught.targets if taught else y_train, batch_size=args["batch"], epochs=args["epochs"],
           validation_split=args["validation_split"], verbose=0,
           callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
fit_seconds = time.perf_counter() - fit_started
if taught:
    pruned.compile(optimizer=pruned.optimizer, loss=loss, metrics=["accuracy"])
accuracy = pruned.evaluate(x_test, y_test, batch_size=args["batch"], verbose=0)[1]
out = to_keras3(tfmot.sparsity.keras.strip_pruning(pruned), model3)
out.save(args["out"])
print(json.dumps({"baseline": baseline, "pruned": accuracy, "fit_seconds": fit_seconds}))
"""


def train_baseline(data_dir: pathlib.Path, path: pathlib.Path) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    from mnist_prune import train_baseline as train

    with contextlib.redirect_stdout(sys.stderr):
        train(path, data_dir, epochs=4)


def service_round(model: pathlib.Path, data_dir: pathlib.Path, work: pathlib.Path, reports: bool) -> tuple[float, dict]:
    from pruning_client import Client, job_spec, polynomial_decay

    state = work / "state"
    env = dict(os.environ, PRUNING_STATE_DIR=str(state), PRUNING_DATA_DIR=str(data_dir))
    env.pop("PRUNING_REDIS_URL", None)  # cold: its own embedded Redis
    log = open(work / "up.log", "w")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    up = subprocess.Popen(
        [str(pathlib.Path(sys.executable).parent / "pruning"), "up", "--listen", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    try:
        assert up.stdout is not None
        line = ""
        while "up on" not in line:  # the children print their own lines too
            line = up.stdout.readline()
            if not line:
                raise SystemExit(f"pruning up did not start; see {work / 'up.log'}")
        target = line.split("up on ")[1].split()[0]
        marks = {"up": time.perf_counter() - started}
        with Client(target) as client:
            client.wait_ready(timeout=60)
            uploaded = client.upload_model(model)
            marks["uploaded"] = time.perf_counter() - started
            spec = job_spec(
                uploaded.id,
                dataset="mnist",
                schedule=polynomial_decay(INITIAL, FINAL),
                epochs=EPOCHS,
                batch_size=BATCH,
                validation_split=VALIDATION_SPLIT,
            )
            spec.report.enabled = reports
            job = client.submit(spec)
            submitted = time.time()
            marks["submitted"] = time.perf_counter() - started
            result = job.result(timeout=1800)
            marks["result"] = time.perf_counter() - started
            job.download(work / "out")
            seconds = time.perf_counter() - started
            final = job.status()
            resolved = final.spec
            marks["job started"] = marks["submitted"] + final.started_at.ToMicroseconds() / 1e6 - submitted
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()
    s = resolved.pruning.schedule.polynomial_decay
    info = {
        "baseline": result.raw.baseline.accuracy,
        "pruned": result.raw.pruned.accuracy,
        "phases": dict(result.raw.phase_seconds),
        "marks": marks,
        "plain_args": {
            "end_step": s.end_step,
            "frequency": s.frequency,
            "learning_rate": resolved.training.learning_rate,
            "distillation": resolved.training.distillation,
            "distillation_alpha": resolved.training.distillation_alpha,
            "distillation_temperature": resolved.training.distillation_temperature,
            # the layers the service pruned, each with its own final sparsity
            "layers": {layer.name: layer.target_sparsity for layer in result.raw.layers if layer.pruned},
        },
    }
    return seconds, info


def plain_round(model: pathlib.Path, data_dir: pathlib.Path, work: pathlib.Path, resolved: dict) -> tuple[float, dict]:
    from pruning_worker.datasets import load_builtin

    x_train = load_builtin("mnist", data_dir)[0]
    train_n = len(x_train) - int(len(x_train) * VALIDATION_SPLIT)
    args = dict(
        resolved,
        model=str(model),
        data_dir=str(data_dir),
        out=str(work / "plain.keras"),
        initial=INITIAL,
        final=FINAL,
        epochs=EPOCHS,
        batch=BATCH,
        validation_split=VALIDATION_SPLIT,
        steps=EPOCHS * -(-train_n // BATCH),
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PLAIN, json.dumps(args)], capture_output=True, text=True, env=dict(os.environ)
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"the plain script failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--reports",
        action="store_true",
        help="the job also measures latency and writes plots and TensorBoard logs (the plain script does not)",
    )
    parser.add_argument("--data-dir", type=pathlib.Path, default=ROOT / ".pruning" / "data")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    if not (data_dir / "mnist.npz").exists():
        raise SystemExit(f"no {data_dir / 'mnist.npz'}: run scripts/fetch_mnist.py first")
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        root = pathlib.Path(tmp)
        model = root / "baseline.keras"
        train_baseline(data_dir, model)
        service_s, plain_s, phases = [], [], []
        resolved: dict | None = None
        for i in range(args.repeat):
            work = root / f"service-{i}"
            work.mkdir()
            seconds, info = service_round(model, data_dir, work, args.reports)
            service_s.append(seconds)
            phases.append(info["phases"])
            resolved = resolved or info["plain_args"]
            print(
                f"round {i + 1} service: {seconds:.1f} s (baseline {info['baseline']:.4f} -> "
                f"{info['pruned']:.4f}); at s: "
                + ", ".join(f"{k} {v:.1f}" for k, v in sorted(info["marks"].items(), key=lambda kv: kv[1])),
                flush=True,
            )
            work = root / f"plain-{i}"
            work.mkdir()
            seconds, out = plain_round(model, data_dir, work, resolved)
            plain_s.append(seconds)
            print(
                f"round {i + 1} plain:   {seconds:.1f} s (baseline {out['baseline']:.4f} -> {out['pruned']:.4f}; "
                f"fine-tuning {out['fit_seconds']:.1f} s)",
                flush=True,
            )
    service, plain = statistics.median(service_s), statistics.median(plain_s)
    ratio = service / plain
    print()
    print("| | median s | rounds |")
    print("| --- | --- | --- |")
    print(
        f"| cold `pruning up` + reference job + download | {service:.1f} | {', '.join(f'{s:.1f}' for s in service_s)} |"
    )
    print(f"| plain script, same pruning | {plain:.1f} | {', '.join(f'{s:.1f}' for s in plain_s)} |")
    print(f"| ratio | {ratio:.2f}x | bar <= {BAR}x: {'met' if ratio <= BAR else 'NOT met'} |")
    print()
    names = sorted({name for p in phases for name in p})
    print(
        "service job phases, median s: "
        + ", ".join(f"{n} {statistics.median(p.get(n, 0) for p in phases):.2f}" for n in names)
    )
    return 0 if ratio <= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
