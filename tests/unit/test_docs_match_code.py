"""The README's settings table, its bounds list and the PRUNING_* names in the README, the
compose file and the Helm chart match ``Settings``.

pydantic-settings ignores a variable it does not know (``extra="ignore"``): a misspelt
``PRUNING_*`` in a deployment file, or a README row naming a setting that was renamed, fails
nobody at run time. Only ``pruning_core.settings`` is imported (no TensorFlow, no gRPC).
"""

from __future__ import annotations

import math
import pathlib
import re
import tempfile

import pytest
from annotated_types import Ge, Gt
from pydantic import SecretStr

from pruning_core.settings import Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FIELDS = {f"PRUNING_{name.upper()}": name for name in Settings.model_fields}

# Settings fields the README's table may leave out, each with the reason. None today: every
# field is one an operator may set.
UNDOCUMENTED: dict[str, str] = {}

# Rows for variables that are not Settings fields, with where the code reads or sets them.
OTHER_ROWS = {"TF_ENABLE_ONEDNN_OPTS": "workers/pruning_worker/__init__.py"}

# PRUNING_* variables that are not Settings fields, with a file that reads each: the CLI's
# own (click envvar=..., collected from cli.py below) and the test suite's.
OTHER_VARIABLES = {
    "PRUNING_TEST_PROCESSES": "scripts/test.sh",
    "PRUNING_TEST_REDIS_URL": "tests/conftest.py",
    "PRUNING_FUZZ_SEED": "tests/hostile/test_fuzz.py",
    "PRUNING_FUZZ_BUDGET_S": "tests/hostile/test_fuzz.py",
}
CLI_VARIABLES = set(re.findall(r'envvar="(PRUNING_[A-Z0-9_]+)"', (ROOT / "client/pruning_client/cli.py").read_text()))

UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "days": 86400.0, "s": 1.0}


def settings_table() -> list[tuple[list[str], str, str]]:
    """(names, default cell, meaning) of each row of the table under ``## Configuration``."""
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variable | default | meaning |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, f"a settings row has 3 cells: {line[:120]}"
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        assert names, f"a settings row names its variables in backticks: {line[:120]}"
        rows.append((names, cells[1], cells[2]))
    return rows


ROWS = settings_table()


def documented_default(cell: str) -> object:
    """A default cell as a value: `x` a string, empty "", unset/(none) None, 1 GiB bytes,
    30 days seconds, true/false a bool, a number; a parenthesised remark is dropped."""
    cell = cell.strip()
    if cell.startswith("`") and cell.endswith("`") and cell.count("`") == 2:
        return cell[1:-1]
    if cell.startswith("empty"):
        return ""
    if cell in ("unset", "(none)"):
        return None
    cell = re.sub(r"\s*\(.*\)$", "", cell)
    if cell in ("true", "false"):
        return cell == "true"
    match = re.fullmatch(r"(-?[\d.]+)(?:\s*(KiB|MiB|GiB|days|s))?", cell)
    assert match, f"cannot read the default {cell!r}"
    number = float(match.group(1)) * UNITS.get(match.group(2) or "", 1)
    return int(number) if number.is_integer() else number


def code_default(name: str) -> object:
    """What the table should say for a field: its default, or for a path left unset the
    path the code derives (``<state_dir>/...``, ``<system temp>/...``)."""
    field = FIELDS[name]
    value = Settings.model_fields[field].default
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, pathlib.Path):
        return str(value)
    if value is None and field in ("artifact_dir", "data_dir", "cache_dir", "work_dir"):
        derived = {"artifact_dir": "artifacts_path", "data_dir": "data_path", "cache_dir": "cache_path"}
        settings = Settings.model_construct(state_dir=pathlib.Path("<state_dir>"))  # defaults, no environment
        if field == "work_dir":
            return str(settings.work_path).replace(tempfile.gettempdir(), "<system temp>", 1)
        return str(getattr(settings, derived[field]))
    return value


def test_every_settings_field_has_a_row():
    documented = {name for names, _, _ in ROWS for name in names}
    missing = sorted(set(FIELDS) - documented - set(UNDOCUMENTED))
    assert not missing, f"Settings fields with no row in the README's settings table: {missing}"
    stale = sorted(set(UNDOCUMENTED) - set(FIELDS))
    assert not stale, f"UNDOCUMENTED names no field: {stale}"


def test_every_row_names_a_field():
    unknown = [name for names, _, _ in ROWS for name in names if name not in FIELDS and name not in OTHER_ROWS]
    assert not unknown, f"README settings rows naming no Settings field: {unknown}"
    for name, where in OTHER_ROWS.items():
        assert name in (ROOT / where).read_text(), f"{where} no longer reads or sets {name}"


@pytest.mark.parametrize("names, cell", [(names, cell) for names, cell, _ in ROWS], ids=lambda v: str(v)[:60])
def test_each_rows_default_is_the_fields(names, cell):
    parts = [part.strip() for part in cell.split(" / ")]
    if len(parts) == 1:
        parts *= len(names)  # one value for all: "empty", "unset"
    assert len(parts) == len(names), f"{names}: {len(names)} names but {len(parts)} defaults in {cell!r}"
    for name, part in zip(names, parts, strict=True):
        if name in OTHER_ROWS:
            said = re.search(rf'setdefault\("{name}", "([^"]*)"\)', (ROOT / OTHER_ROWS[name]).read_text())
            assert said and part.startswith(said.group(1)), f"{name}: README says {part!r}"
            continue
        documented, actual = documented_default(part), code_default(name)
        if isinstance(actual, float) and isinstance(documented, int | float) and not isinstance(documented, bool):
            ok = math.isclose(documented, actual)
        else:
            ok = documented == actual and type(documented) is type(actual)
        assert ok, f"{name}: README's default {part!r} reads {documented!r}, the code's is {actual!r}"


def test_the_bounds_list_is_the_fields_bounds():
    """The sentence after the table lists every field's numeric bound (exit 2 outside it)."""
    listed: dict[str, str] = {}
    sentence = re.search(r"Bounds, checked at start[^\n]*(?:\n(?!\n)[^\n]*)*", README)
    assert sentence, "the README has a 'Bounds, checked at start' paragraph after the settings table"
    text = " ".join(sentence.group(0).split())  # as wrapped in the README
    for bound, names in re.findall(r"(more than 0|\d+ or more): ((?:`PRUNING_[A-Z0-9_]+`[, ]*)+)", text):
        for name in re.findall(r"`(PRUNING_[A-Z0-9_]+)`", names):
            assert name not in listed, f"{name} is listed twice"
            listed[name] = bound
    actual = {}
    for name, field in FIELDS.items():
        for rule in Settings.model_fields[field].metadata:
            if isinstance(rule, Gt) and rule.gt == 0:
                actual[name] = "more than 0"
            elif isinstance(rule, Ge) and isinstance(rule.ge, int):
                actual[name] = f"{rule.ge} or more"
            elif isinstance(rule, Gt | Ge):
                pytest.fail(f"{name}: a bound the list has no words for: {rule}")
    assert listed == actual


def mentioned(text: str) -> set[str]:
    """PRUNING_* names in a text; ``PRUNING_TLS_*`` as the prefix ``PRUNING_TLS_``."""
    return set(re.findall(r"PRUNING_[A-Z0-9_]*[A-Z0-9]_?\*?", text))


def unknown_names(names: set[str]) -> list[str]:
    known = set(FIELDS) | CLI_VARIABLES | set(OTHER_VARIABLES)
    bad = []
    for name in names:
        if name.endswith("*"):
            if not any(k.startswith(name[:-1]) for k in FIELDS):
                bad.append(name)
        elif name not in known:
            bad.append(name)
    return sorted(bad)


def test_the_other_variables_are_read_where_listed():
    assert {"PRUNING_TARGET", "PRUNING_API_KEY"} <= CLI_VARIABLES
    for name, where in OTHER_VARIABLES.items():
        assert name in (ROOT / where).read_text(), f"{where} no longer reads {name}"


def deployment_files() -> list[pathlib.Path]:
    files = [ROOT / "docker-compose.yml", ROOT / "Dockerfile"]
    files += [p for p in sorted((ROOT / "deploy").rglob("*")) if p.is_file()]
    return files


@pytest.mark.parametrize("path", deployment_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_deployment_files_name_only_settings(path):
    assert not unknown_names(mentioned(path.read_text())), f"{path.relative_to(ROOT)}: not Settings fields"


def test_the_readme_names_only_settings():
    """Code blocks and prose alike: a variable the README tells to set must exist."""
    assert not unknown_names(mentioned(README)), "README names PRUNING_* variables that no code reads"


def test_every_python_block_of_the_readme_runs_as_a_script_would():
    """A block pasted into a .py file parses: the asyncio quick start's top-level ``async with``
    was a SyntaxError outside ``python -m asyncio`` or a notebook."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 3
    for number, block in enumerate(blocks):
        compile(block, f"<README python block {number}>", "exec")  # a SyntaxError names the line
