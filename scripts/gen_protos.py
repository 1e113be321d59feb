"""Generates the Python protobuf and gRPC code from protos/ into client/pruning/.

Usage: python scripts/gen_protos.py [--check]

Besides the code, typed stubs for both modules (mypy-protobuf's ``protoc-gen-mypy`` and
``protoc-gen-mypy_grpc``, from the mypy-protobuf package) and a ``py.typed`` marker, so the
generated contract type-checks under ``mypy --strict``.

With --check nothing is written: the exit status is 1 when the generated code on disk
differs from what the protos produce (tests run this).
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import subprocess
import sys
import tempfile

import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "client"
PACKAGE = "pruning"
PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")


def _plugin(name: str) -> str:
    """The plugin beside this interpreter (a virtual environment's bin/), else on PATH."""
    beside = pathlib.Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: pip install mypy-protobuf (see requirements-dev.txt)")
    return found


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(PROTOS.rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(f"--plugin={name}={_plugin(name)}" for name in PLUGINS),
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *map(str, protos),
    ]
    # A subprocess, so the plugins' chatter ("Writing mypy to ...") shows only when protoc fails.
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"protoc failed:\n{run.stdout}{run.stderr}")
    generated = sorted(p for p in (out_dir / PACKAGE).rglob("*") if p.suffix in {".py", ".pyi"})
    for directory in {p.parent for p in generated}:
        while directory != out_dir:
            (directory / "__init__.py").touch()
            directory = directory.parent
    (out_dir / PACKAGE / "py.typed").touch()
    return sorted(p.relative_to(out_dir) for p in (out_dir / PACKAGE).rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        print(f"generated into {OUT / PACKAGE}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        stale = [
            str(rel)
            for rel in fresh
            if not (OUT / rel).exists() or not filecmp.cmp(OUT / rel, pathlib.Path(tmp) / rel, shallow=False)
        ]
    if stale:
        print("generated code is out of date, run scripts/gen_protos.py:", *stale, sep="\n  ")
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
