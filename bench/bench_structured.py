"""Structured pruning through the service: is the pruned model really faster, and as accurate?

Trains a residual CNN of the MNIST kind (64 and 128 channels, BatchNorm, Add) for each seed,
then starts a real server process and a Celery worker process (against the Redis in
$PRUNING_REDIS_URL, default redis://127.0.0.1:6379/9, under a throwaway key prefix and
queue), uploads each model and the data, and submits one structured job per seed (ratio
0.5, L1 importance, fine-tuning without weight pruning on top). The latency figures are the
worker's own (TensorFlow and TFLite/XNNPACK on the CPU, batch 1 and 64, median of repeats);
accuracy is on the 10,000 MNIST test images. Prints one row per seed and the median, as a
Markdown table, and whether the bar of the structured-pruning issue holds (every latency at
least 1.5x lower, accuracy loss at most 0.5 pp, medians over the seeds).

Needs the MNIST file ``scripts/fetch_mnist.py`` builds. Not a test: it trains, so it takes
minutes (about 25 on two busy CPU cores with the defaults).

Usage: python bench/bench_structured.py [--seeds 1 2 3] [--ratio 0.5] [--train-samples 20000]
       [--epochs 4] [--fine-tune-epochs 2] [--repeats 20] [--control] [--mnist PATH]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import redis

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pruning_client import Client, job_spec, structured

SPEEDUP_BAR = 1.5
ACCURACY_BAR_PP = 0.5


def residual_cnn(seed: int):
    """Stem (64 channels at 28 x 28) -> residual block 64 -> down (128, stride 2) -> residual
    block 128 -> global pooling -> 10 logits; BatchNorm after every convolution (momentum 0.9:
    with Keras' 0.99 the moving variance of a few hundred steps still holds most of its
    initial 1.0, and the trained model is useless in inference mode)."""
    import tf_keras as keras

    layers = keras.layers
    keras.utils.set_random_seed(seed)

    def conv_bn(x, filters, name, strides=1):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
        return layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)

    def block(x, filters, name):
        y = layers.ReLU()(conv_bn(x, filters, f"{name}a"))
        y = conv_bn(y, filters, f"{name}b")
        return layers.ReLU()(layers.Add(name=f"{name}_add")([x, y]))

    inputs = keras.Input((28, 28, 1))
    x = layers.ReLU()(conv_bn(inputs, 64, "stem"))
    x = block(x, 64, "r1")
    x = layers.ReLU()(conv_bn(x, 128, "down", strides=2))
    x = block(x, 128, "r2")
    outputs = layers.Dense(10, name="logits")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def load_mnist(path: pathlib.Path, n_train: int) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))

    def scale(x: np.ndarray) -> np.ndarray:
        return (x.astype("float32") / 255.0)[..., None]

    return {
        "x_train": scale(x_train[:n_train]),
        "y_train": y_train[:n_train].astype("int64"),
        "x_test": scale(x_test),
        "y_test": y_test.astype("int64"),
    }


def train_baseline(seed: int, data: dict[str, np.ndarray], epochs: int, path: pathlib.Path) -> pathlib.Path:
    import tf_keras as keras

    model = residual_cnn(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(data["x_train"], data["y_train"], batch_size=128, epochs=epochs, verbose=0)
    model.save(path)
    return path


def start(cmd: list[str], env: dict[str, str], log: pathlib.Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(predicate, what: str, proc: subprocess.Popen, log: pathlib.Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=4, help="baseline training epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure")
    parser.add_argument(
        "--control",
        action="store_true",
        help="also run each seed's job at ratio 0 (the same fine-tuning, no channel removed), so the "
        "cost of pruning shows apart from the gain of the extra epochs",
    )
    default_mnist = pathlib.Path(os.environ.get("PRUNING_DATA_DIR", ".pruning/data")) / "mnist.npz"
    parser.add_argument("--mnist", type=pathlib.Path, default=default_mnist)
    args = parser.parse_args()
    if not args.mnist.exists():
        raise SystemExit(f"{args.mnist} not found: run scripts/fetch_mnist.py (or pass --mnist)")

    url = os.environ.get("PRUNING_REDIS_URL", "redis://127.0.0.1:6379/9")
    prefix = f"pruning-bench-{uuid.uuid4().hex[:8]}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        data = load_mnist(args.mnist, args.train_samples)
        np.savez(tmp / "mnist.npz", **data)
        models = {}
        for seed in args.seeds:
            started = time.monotonic()
            models[seed] = train_baseline(seed, data, args.epochs, tmp / f"baseline_{seed}.keras")
            print(f"seed {seed}: baseline trained in {time.monotonic() - started:.0f} s", flush=True)
        env = {
            **os.environ,
            "PRUNING_REDIS_URL": url,
            "PRUNING_KEY_PREFIX": prefix,
            "PRUNING_QUEUE": prefix,
            "PRUNING_STATE_DIR": str(tmp / "state"),
            "PRUNING_MAX_UPLOAD_BYTES": str(1 << 30),
        }
        server = start(
            [sys.executable, "-m", "pruning_server", "--listen", "127.0.0.1:0", "--port-file", str(tmp / "port")],
            env,
            tmp / "server.log",
        )
        worker_cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pruning_worker.app",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
        ]
        worker_cmd += ["-Q", prefix, "-n", f"{prefix}@%h", "--without-gossip", "--without-mingle"]
        worker = start(worker_cmd, env, tmp / "worker.log")
        try:
            port_file = tmp / "port"
            wait_for(lambda: port_file.exists() and port_file.read_text(), "the server", server, tmp / "server.log")
            wait_for(lambda: "ready." in (tmp / "worker.log").read_text(), "the worker", worker, tmp / "worker.log")
            with Client(f"127.0.0.1:{port_file.read_text()}", timeout=600) as client:
                dataset = client.upload_dataset(tmp / "mnist.npz")
                for seed in args.seeds:
                    model = client.upload_model(models[seed])
                    spec = job_spec(
                        model.id,
                        dataset=dataset.id,
                        structured=structured(args.ratio, latency_repeats=args.repeats),
                        epochs=args.fine_tune_epochs,
                        batch_size=128,
                        seed=seed,
                    )
                    control = None
                    if args.control:
                        same = job_spec(
                            model.id,
                            dataset=dataset.id,
                            structured=structured(0.0, latency_repeats=1),
                            epochs=args.fine_tune_epochs,
                            batch_size=128,
                            seed=seed,
                        )
                        control = client.submit(same, labels={"bench": "control"}).result(timeout=3600)
                    job = client.submit(spec, labels={"bench": "structured"})
                    result = job.result(timeout=3600)
                    s = result.structured
                    assert s is not None
                    latency = {(x.runtime, x.batch_size): x.before_ms / x.after_ms for x in s.latency}
                    rows.append(
                        {
                            "seed": seed,
                            "baseline": result.baseline_accuracy * 100,
                            "pruned": result.pruned_accuracy * 100,
                            "delta": result.accuracy_delta * 100,
                            "control": control.pruned_accuracy * 100 if control else None,
                            "params": (s.params_before, s.params_after),
                            "flops": (s.flops_before, s.flops_after),
                            "size": (result.size_before_raw, result.size_after_raw),
                            "latency": {(x.runtime, x.batch_size): (x.before_ms, x.after_ms) for x in s.latency},
                            "speedup": latency,
                            "left_whole": [x.name for x in s.left_whole],
                        }
                    )
                    print(f"seed {seed}: job {job.id} done, {result.fine_tune_seconds:.0f} s fine-tuning", flush=True)
        finally:
            for proc in (worker, server):
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            r = redis.Redis.from_url(url)
            keys = list(r.scan_iter(f"{prefix}*")) + list(r.scan_iter(f"_kombu.binding.{prefix}*"))
            if keys:
                r.delete(*keys)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    keys = sorted(rows[0]["latency"])
    head = "| seed | baseline acc % | pruned acc % | delta pp | params | FLOPs/sample | file bytes |"
    head += "".join(f" {rt} b{b} ms (speed-up) |" for rt, b in keys)
    print(
        f"\nratio {args.ratio}, {args.train_samples} training samples, baseline {args.epochs} epochs, "
        f"fine-tuning {args.fine_tune_epochs} epochs, latency median of {args.repeats} runs\n"
    )
    print(head)
    print("|" + "---|" * (7 + len(keys)))
    for r in rows:
        cells = [
            str(r["seed"]),
            f"{r['baseline']:.2f}",
            f"{r['pruned']:.2f}",
            f"{r['delta']:+.2f}",
            f"{r['params'][0]:,} -> {r['params'][1]:,}",
            f"{r['flops'][0] / 1e6:.1f}M -> {r['flops'][1] / 1e6:.1f}M",
            f"{r['size'][0]:,} -> {r['size'][1]:,}",
        ]
        cells += [f"{r['latency'][k][0]:.2f} -> {r['latency'][k][1]:.2f} ({r['speedup'][k]:.2f}x)" for k in keys]
        print("| " + " | ".join(cells) + " |")
    loss = statistics.median(-r["delta"] for r in rows)
    speedups = {k: statistics.median(r["speedup"][k] for r in rows) for k in keys}
    median = ["median", "", "", f"{-loss:+.2f}", "", "", ""] + [f"{speedups[k]:.2f}x" for k in keys]
    print("| " + " | ".join(median) + " |")
    print(f"\nlayers left whole: {', '.join(rows[0]['left_whole']) or 'none'}")
    if rows[0]["control"] is not None:
        print("\nthe same fine-tuning at ratio 0 (no channel removed), test accuracy %:")
        for r in rows:
            print(f"seed {r['seed']}: {r['control']:.2f} (pruned {r['pruned'] - r['control']:+.2f} pp against it)")
        against = statistics.median(r["pruned"] - r["control"] for r in rows)
        print(f"median pruned - control: {against:+.2f} pp")
    ok = loss <= ACCURACY_BAR_PP and all(v >= SPEEDUP_BAR for v in speedups.values())
    print(
        f"bar (every median speed-up >= {SPEEDUP_BAR}x, median accuracy loss <= {ACCURACY_BAR_PP} pp): "
        f"{'holds' if ok else 'DOES NOT hold'}"
    )


if __name__ == "__main__":
    main()
