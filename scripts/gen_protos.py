"""Generates the Python protobuf and gRPC code from protos/ into client/pruning/.

Usage: python scripts/gen_protos.py [--check]

With --check nothing is written: the exit status is 1 when the generated code on disk
differs from what the protos produce (tests run this).
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc
import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "client"
PACKAGE = "pruning"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    protos = sorted(PROTOS.rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(p for p in (out_dir / PACKAGE).rglob("*") if p.suffix in {".py", ".pyi"})
    for directory in {p.parent for p in generated}:
        while directory != out_dir:
            (directory / "__init__.py").touch()
            directory = directory.parent
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
