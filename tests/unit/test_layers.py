"""Imports point one way: client -> contract; server -> core -> contract; workers -> core ->
contract. Checked on the source (every import statement, lazy ones too) and on a live import."""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGES = {
    "pruning_client": ROOT / "client" / "pruning_client",
    "pruning_core": ROOT / "core" / "pruning_core",
    "pruning_server": ROOT / "server" / "pruning_server",
    "pruning_worker": ROOT / "workers" / "pruning_worker",
}
FORBIDDEN = {
    "pruning_client": {"pruning_core", "pruning_server", "pruning_worker"},
    "pruning_core": {"pruning_client", "pruning_server", "pruning_worker"},
    "pruning_server": {"pruning_worker", "pruning_client"},
    "pruning_worker": {"pruning_server", "pruning_client"},
}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_points_the_wrong_way(package):
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in PACKAGES[package].rglob("*.py")
        for name in _imports(path) & FORBIDDEN[package]
    }
    assert not wrong, sorted(wrong)


def test_the_server_and_workers_stand_on_core():
    for package in ("pruning_server", "pruning_worker"):
        used = set().union(*(_imports(p) for p in PACKAGES[package].rglob("*.py")))
        assert "pruning_core" in used, package


def _loaded(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_live_imports():
    client = _loaded(
        "import pruning_client, pruning_client.cli, pruning_client.aio\nfrom pruning_client.cli import main"
    )
    assert not set(client) & {"pruning_core", "pruning_server", "pruning_worker", "celery", "tensorflow"}
    worker = _loaded("import pruning_worker.tasks, pruning_worker.runner")
    assert "pruning_core" in worker and "pruning_server" not in worker
