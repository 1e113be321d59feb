"""The pipeline examples agree with the CLI and the SDK, without Airflow or Kubeflow installed.

* examples/airflow_dag.py runs against stand-ins for the two Airflow modules it imports; its
  commands are rendered with the DAG's params, every ``pruning`` command's flags are checked
  against that command's ``--help``, and each command is run against a port where nothing
  listens: it must get past argument parsing (exit 7, unavailable; never 2, a usage error).
* examples/kfp_pipeline.py is checked with ``ast``: the names it imports from pruning_client
  exist, and every call and attribute on the SDK objects it uses matches the SDK.
"""

from __future__ import annotations

import ast
import inspect
import json
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import types

import pytest
from google.protobuf.message import Message

import pruning_client
from conftest import ROOT

EXAMPLES = ROOT / "examples"
AIRFLOW_DAG = EXAMPLES / "airflow_dag.py"
KFP_PIPELINE = EXAMPLES / "kfp_pipeline.py"
PRUNING = pathlib.Path(sys.executable).with_name("pruning")
if not PRUNING.exists():
    PRUNING = pathlib.Path(shutil.which("pruning") or PRUNING)
EXIT_USAGE, EXIT_UNAVAILABLE = 2, 7


@pytest.mark.parametrize("path", [AIRFLOW_DAG, KFP_PIPELINE], ids=lambda p: p.name)
def test_example_compiles(path):
    compile(path.read_text(), str(path), "exec")


# -- Airflow ------------------------------------------------------------------------------------


class _DAG:
    current: _DAG | None = None

    def __init__(self, dag_id: str, **kwargs):
        self.dag_id, self.kwargs, self.tasks = dag_id, kwargs, {}

    def __enter__(self):
        _DAG.current = self
        return self

    def __exit__(self, *exc):
        _DAG.current = None


class _BashOperator:
    def __init__(self, *, task_id: str, bash_command: str, **kwargs):
        self.task_id, self.bash_command, self.kwargs = task_id, bash_command, kwargs
        self.downstream: list[str] = []
        assert _DAG.current is not None, "task outside the DAG context"
        _DAG.current.tasks[task_id] = self

    def __rshift__(self, other: _BashOperator) -> _BashOperator:
        self.downstream.append(other.task_id)
        return other


@pytest.fixture(scope="module")
def dag():
    """The example's DAG, built against stand-ins for airflow and airflow.operators.bash."""
    airflow = types.ModuleType("airflow")
    airflow.DAG = _DAG
    operators = types.ModuleType("airflow.operators")
    bash = types.ModuleType("airflow.operators.bash")
    bash.BashOperator = _BashOperator
    stubs = {"airflow": airflow, "airflow.operators": operators, "airflow.operators.bash": bash}
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        namespace: dict = {"__name__": "airflow_dag"}
        exec(compile(AIRFLOW_DAG.read_text(), str(AIRFLOW_DAG), "exec"), namespace)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return namespace["dag"]


RUN_ID = "manual__2026-01-01T00:00:00+00:00"
JOB_ID = "0123456789abcdef01234567"


def render(template: str, dag: _DAG, target: str, output_dir: pathlib.Path) -> str:
    """Renders the few Jinja expressions the DAG uses (Airflow's Jinja is not installed here)."""
    params = {**dag.kwargs["params"], "target": target, "output_dir": str(output_dir)}
    xcom = {"submit": json.dumps({"job_id": JOB_ID})}  # what `pruning submit --json` prints
    fromjson = dag.kwargs["user_defined_filters"]["fromjson"]

    def value(expression: str) -> str:
        base, *filters = [part.strip() for part in expression.split("|")]
        if m := re.fullmatch(r"\(ti\.xcom_pull\(task_ids='(\w+)'\)", base):
            assert filters and filters[0].startswith("fromjson)"), expression
            key = re.fullmatch(r"fromjson\)\['(\w+)'\]", filters.pop(0)).group(1)
            out = fromjson(xcom[m.group(1)])[key]
        elif base.startswith("params."):
            out = str(params[base.removeprefix("params.")])
        elif base == "run_id":
            out = RUN_ID
        elif base == "dag.dag_id":
            out = dag.dag_id
        else:
            pytest.fail(f"unsupported template expression {expression!r}")
        for f in filters:
            m = re.fullmatch(r"replace\('([^']*)', '([^']*)'\)", f)
            assert m, f"unsupported filter {f!r}"
            out = out.replace(m.group(1), m.group(2))
        return out

    return re.sub(r"{{\s*(.*?)\s*}}", lambda m: value(m.group(1)), template)


def pruning_commands(command: str) -> list[list[str]]:
    """The `pruning ...` invocations of a shell command line, as argument lists."""
    parts = re.split(r"&&|\|\||[|;\n]", command)
    return [shlex.split(p)[1:] for p in parts if shlex.split(p)[:1] == ["pruning"]]


def test_dag_structure(dag):
    assert dag.dag_id == "prune_model"
    assert list(dag.tasks) == ["submit", "watch", "result", "download"]
    assert [t.downstream for t in dag.tasks.values()] == [["watch"], ["result"], ["download"], []]
    assert dag.kwargs["schedule"] is None
    assert dag.kwargs["user_defined_filters"]["fromjson"]('{"job_id": "x"}') == {"job_id": "x"}
    submit = dag.tasks["submit"].bash_command
    # a retried submit gets the same job; two DAGs' scheduled runs share a run_id, not a key
    assert "--idempotency-key '{{ dag.dag_id }}/{{ run_id }}'" in submit
    assert "--json" in submit and "--final-sparsity" in submit
    for name in ("watch", "result", "download"):
        assert "ti.xcom_pull(task_ids='submit')" in dag.tasks[name].bash_command
    assert dag.tasks["watch"].kwargs.get("do_xcom_push") is False, "events are for the log, not XCom"


def test_dag_params_are_defined(dag):
    used = set()
    for task in dag.tasks.values():
        used |= set(re.findall(r"params\.(\w+)", task.bash_command))
    assert used and used <= set(dag.kwargs["params"]), used - set(dag.kwargs["params"])


@pytest.fixture(scope="module")
def cli_help():
    if not PRUNING.exists():
        pytest.skip(f"no pruning CLI at {PRUNING}")
    cache: dict[str, str] = {}

    def get(command: str) -> str:
        if command not in cache:
            proc = subprocess.run([str(PRUNING), command, "--help"], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, f"`pruning {command} --help` failed: {proc.stderr}"
            cache[command] = proc.stdout
        return cache[command]

    return get


def test_dag_flags_exist_in_the_cli(dag, cli_help, tmp_path):
    seen = set()
    for task in dag.tasks.values():
        commands = pruning_commands(render(task.bash_command, dag, "127.0.0.1:1", tmp_path))
        assert commands, f"{task.task_id} runs no pruning command"
        for args in commands:
            help_text = cli_help(args[0])
            for flag in (a.split("=", 1)[0] for a in args[1:] if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", a)):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
                    f"`pruning {args[0]}` has no option {flag}"
                )
                seen.add((args[0], flag))
    assert {("submit", "--idempotency-key"), ("watch", "--json"), ("result", "--json"), ("download", "-o")} <= seen


def test_dag_commands_parse(dag, cli_help, tmp_path):
    """Each command gets past the CLI's argument parsing: with no server it ends unavailable, or
    is still retrying after a few seconds (a usage error would end it at once, with exit 2)."""
    with socket.socket() as s:  # a free loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{s.getsockname()[1]}"
    running = []
    for task in dag.tasks.values():
        for args in pruning_commands(render(task.bash_command, dag, target, tmp_path)):
            if args[0] == "submit":  # a model id, so that nothing is read from disk
                args[args.index("--model") + 1] = "ab" * 32
            running.append(
                (
                    args,
                    subprocess.Popen(
                        [str(PRUNING), *args, "--timeout", "1"],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    ),
                )
            )
    deadline = time.monotonic() + 6
    for args, proc in running:
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # still retrying the connection: its arguments parsed
            proc.kill()
            proc.communicate()
            assert args[0] != "submit", "submit should give up after its --timeout"
            continue
        assert proc.returncode != EXIT_USAGE, f"`pruning {shlex.join(args)}`: {err}"
        assert proc.returncode == EXIT_UNAVAILABLE, (args, proc.returncode, out, err)
        assert json.loads(out.splitlines()[-1])["error"], "with --json, errors are JSON too"


# -- Kubeflow Pipelines ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kfp_tree():
    return ast.parse(KFP_PIPELINE.read_text())


def _returns(func) -> object:
    """The class a function's return annotation names, resolved in its own module."""
    annotation = inspect.signature(func).return_annotation
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(sys.modules[func.__module__]))  # the SDK's own annotations
    return annotation


def _has_attribute(cls, name: str) -> bool:
    if isinstance(cls, type) and issubclass(cls, Message):
        return name in cls.DESCRIPTOR.fields_by_name or hasattr(cls, name)
    if hasattr(cls, name):
        return True
    if cls is pruning_client.JobHandle:
        return hasattr(cls(None, "job"), name)
    return name in getattr(cls, "__dataclass_fields__", {})


def _bind(func, call: ast.Call, bound: bool) -> None:
    args = [None] * (len(call.args) + (1 if bound else 0))
    kwargs = {k.arg: None for k in call.keywords if k.arg}
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError as error:
        pytest.fail(f"line {call.lineno}: {ast.unparse(call)} does not match {func.__qualname__}: {error}")


def test_kfp_imports_exist_in_the_sdk(kfp_tree):
    imported = [
        a.name
        for node in ast.walk(kfp_tree)
        if isinstance(node, ast.ImportFrom) and node.module == "pruning_client"
        for a in node.names
    ]
    assert {"Client", "job_spec", "polynomial_decay"} <= set(imported)
    missing = [name for name in imported if not hasattr(pruning_client, name)]
    assert not missing, f"pruning_client has no {missing}"


def test_kfp_component_imports_inside_the_function(kfp_tree):
    """KFP ships a lightweight component's function body alone: its imports must be inside it."""
    top_level = [n for n in kfp_tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any(getattr(n, "module", None) == "pruning_client" for n in top_level)
    components = [
        f
        for f in kfp_tree.body
        if isinstance(f, ast.FunctionDef) and any("component" in ast.unparse(d) for d in f.decorator_list)
    ]
    assert components, "no @dsl.component function"
    for function in components:
        imports = [n for n in ast.walk(function) if isinstance(n, ast.ImportFrom)]
        assert any(n.module == "pruning_client" for n in imports), function.name
    pipelines = [
        f
        for f in kfp_tree.body
        if isinstance(f, ast.FunctionDef) and any("pipeline" in ast.unparse(d) for d in f.decorator_list)
    ]
    assert pipelines and "PIPELINE_JOB_ID_PLACEHOLDER" in ast.unparse(pipelines[0]), "idempotency key per run"


def test_kfp_sdk_calls_match_the_sdk(kfp_tree):
    """Follows the SDK objects through the component (client -> job -> result, the uploaded
    artifact) and checks every call's arguments and every attribute against the SDK."""
    types_of: dict[str, object] = {}
    checked = set()
    for node in ast.walk(kfp_tree):
        if isinstance(node, ast.withitem) and isinstance(node.context_expr, ast.Call):
            call = node.context_expr
            if isinstance(call.func, ast.Name) and call.func.id == "Client" and node.optional_vars is not None:
                types_of[node.optional_vars.id] = pruning_client.Client
    assert types_of, "no `with Client(...) as client`"

    # Assignments in source order: x = client.method(...) gives x the method's return type.
    for node in sorted((n for n in ast.walk(kfp_tree) if isinstance(n, ast.Assign)), key=lambda n: n.lineno):
        value = node.value
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and isinstance(value.func.value, ast.Name)
            and value.func.value.id in types_of
        ):
            method = getattr(types_of[value.func.value.id], value.func.attr)
            types_of[node.targets[0].id] = _returns(method)
    assert pruning_client.JobHandle in types_of.values() and pruning_client.PruneResult in types_of.values()

    for node in ast.walk(kfp_tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and hasattr(pruning_client, node.func.id):
            _bind(getattr(pruning_client, node.func.id), node, bound=False)
            checked.add(node.func.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in types_of:
            cls = types_of[node.value.id]
            assert _has_attribute(cls, node.attr), f"line {node.lineno}: {cls.__name__} has no {node.attr!r}"
            checked.add(f"{cls.__name__}.{node.attr}")
    for node in ast.walk(kfp_tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in types_of
        ):
            _bind(getattr(types_of[node.func.value.id], node.func.attr), node, bound=True)
    assert {
        "Client",
        "job_spec",
        "polynomial_decay",
        "Client.upload_model",
        "Client.submit",
        "JobHandle.result",
        "JobHandle.download",
        "Artifact.id",
    } <= checked, checked


def test_kfp_metric_names_are_result_fields(kfp_tree):
    fields = set(pruning_client.PruneResult.__dataclass_fields__)
    loops = [
        n
        for n in ast.walk(kfp_tree)
        if isinstance(n, ast.For) and isinstance(n.iter, ast.Tuple) and "getattr(result" in ast.unparse(n)
    ]
    assert loops, "no metrics loop over result fields"
    names = [e.value for loop in loops for e in loop.iter.elts]
    assert names and set(names) <= fields, set(names) - fields
