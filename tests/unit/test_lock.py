"""requirements.lock pins every dependency the packages declare, the pins satisfy the
declarations, and the environment the tests run in was installed from it."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

OWN = {"pruning-client", "pruning-core", "pruning-server", "pruning-worker"}
PACKAGES = ("client", "core", "server", "workers")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", line).groups()
            pins[canonicalize_name(name)] = version
    return pins


def _declared() -> list[tuple[str, Requirement]]:
    out = []
    for package in PACKAGES:
        project = tomllib.loads((ROOT / package / "pyproject.toml").read_text())["project"]
        requirements = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        out += [(package, Requirement(r)) for r in requirements]
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(("requirements-dev.txt", Requirement(line)))
    return out


@pytest.mark.parametrize("where,requirement", _declared(), ids=lambda v: str(v))
def test_every_declared_dependency_is_pinned_within_its_range(where, requirement):
    name = canonicalize_name(requirement.name)
    if name in OWN:
        return
    pins = _lock()
    assert name in pins, f"{where} needs {requirement}, which requirements.lock does not pin: run scripts/lock.sh"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"{where} needs {requirement}, the lock pins {pins[name]}: run scripts/lock.sh"
    )


def test_the_environment_was_installed_from_the_lock():
    pins = _lock()
    mismatched = []
    for _, requirement in _declared():
        name = canonicalize_name(requirement.name)
        if name in OWN or requirement.marker is not None:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra this environment does not install (the workers' [gpu])
        if installed != pins[name]:
            mismatched.append(f"{name}: installed {installed}, locked {pins[name]}")
    assert not mismatched, mismatched


def test_installs_use_the_lock():
    assert "-c requirements.lock" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and all("-c requirements.lock" in line for line in installs), installs
