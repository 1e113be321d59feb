"""The reference job: the TFMOT guide's MNIST example, run through the pruning service.

1. Train the guide's CNN (Reshape, Conv2D 12 3x3 relu, MaxPool 2, Flatten, Dense 10) for
   4 epochs with Keras 3 (what `import keras` is on today's TensorFlow) and save it as .keras.
2. Start the embedded service (Redis, server, worker) unless --target names a running one.
3. Through the SDK: upload the model, prune it with PolynomialDecay 0.50 -> 0.80 over
   2 epochs (--epochs; batch 128, validation split 0.1), follow the progress, download the result.
4. Print baseline vs pruned accuracy, per-layer sparsity, gzipped sizes and their ratio, and
   check that the downloaded model loads in Keras 3 with no custom objects and no pruning
   wrappers. (The service prunes it as an equivalent tf_keras model, since TFMOT runs on
   tf_keras only, and hands it back as Keras 3.)

Usage: python examples/mnist_prune.py [--target HOST:PORT] [--state-dir DIR] [--baseline-epochs N] [--epochs N]
                                     [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pruning_client import Client, job_spec, polynomial_decay
from pruning_client.cli import follow, format_table


def train_baseline(path: pathlib.Path, data_dir: pathlib.Path, epochs: int) -> float:
    import keras  # Keras 3

    from pruning_worker.datasets import load_builtin

    x_train, y_train, x_test, y_test = load_builtin("mnist", data_dir)
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Reshape(target_shape=(28, 28, 1)),
            keras.layers.Conv2D(filters=12, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    model.fit(x_train, y_train, epochs=epochs, validation_split=0.1, verbose=2)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    model.save(path)
    return float(accuracy)


def check_download(path: pathlib.Path) -> list[str]:
    """Loads the pruned model in plain Keras 3 (no custom objects); returns its layer classes."""
    import keras

    model = keras.saving.load_model(path)
    classes = [type(layer).__name__ for layer in model.layers]
    if any("Prune" in name for name in classes):
        raise SystemExit(f"the downloaded model still has pruning wrappers: {classes}")
    return classes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="a running server; default: start the embedded service")
    parser.add_argument(
        "--state-dir", type=pathlib.Path, default=pathlib.Path(os.environ.get("PRUNING_STATE_DIR", ".pruning"))
    )
    parser.add_argument("--baseline-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the pruning job (the reference job: 2)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    os.environ["PRUNING_STATE_DIR"] = str(args.state_dir.resolve())
    out = args.state_dir / "example"
    out.mkdir(parents=True, exist_ok=True)

    baseline_path = out / "mnist_baseline.keras"
    started = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the result
        accuracy = train_baseline(baseline_path, args.state_dir / "data", args.baseline_epochs)
    print(
        f"baseline trained: test accuracy {accuracy:.4f} in {time.monotonic() - started:.0f} s -> {baseline_path}",
        file=sys.stderr,
    )

    stack = None
    target = args.target
    if target is None:
        from pruning_server.embedded import Stack

        log_path = out / "service.log"
        stack = Stack.start(listen="127.0.0.1:0", log_path=log_path)
        target = stack.target
        print(f"embedded service up on {target} (Redis, server, worker; logs in {log_path})", file=sys.stderr)
    try:
        with Client(target, api_key=os.environ.get("PRUNING_API_KEY")) as client:
            client.wait_ready(timeout=60)
            model = client.upload_model(baseline_path)
            spec = job_spec(
                model.id,
                dataset="mnist",
                schedule=polynomial_decay(0.50, 0.80),
                epochs=args.epochs,
                batch_size=128,
                validation_split=0.1,
            )
            job = client.submit(spec, labels={"example": "mnist"})
            print(f"job {job.id} submitted", file=sys.stderr)
            follow(job, show_bar=True, json_lines=False)
            result = job.result(timeout=3600)
            pruned_path = job.download(out)
    finally:
        if stack is not None:
            stack.stop()
    with contextlib.redirect_stdout(sys.stderr):
        classes = check_download(pruned_path)
    if args.json:
        print(
            json.dumps(
                {
                    "job_id": job.id,
                    "result": result.to_dict(),
                    "pruned_model": str(pruned_path),
                    "pruned_layers": classes,
                },
                sort_keys=True,
            )
        )
    else:
        print(format_table(result))
        print(
            f"pruned model: {pruned_path} (loads in Keras {result.raw.keras_version_out}: {', '.join(classes)}; "
            f"the tf_keras translation matched the upload within {result.raw.conversion_max_abs_diff:.1e})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
