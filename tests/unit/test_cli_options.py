"""The `pruning` CLI without a server: options, help, global options, plugins, local checks."""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import click
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import cli as cli_module
from pruning_client.cli import cli, run


class FakeClient:
    """Records how the CLI built its client; answers GetJob."""

    made: list[FakeClient] = []

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float = 30.0,
        verify: str = "crc32",
    ) -> None:
        self.target, self.api_key, self.tls, self.roots, self.timeout = target, api_key, tls, root_certificates, timeout
        self.verify = verify
        FakeClient.made.append(self)

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get_job(self, job_id: str) -> pb.Job:
        return pb.Job(id=job_id, state=pb.JOB_STATE_RUNNING, attempt=1)


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeClient]]:
    FakeClient.made = []
    for name in ("PRUNING_TARGET", "PRUNING_API_KEY", "PRUNING_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli_module, "Client", FakeClient)
    yield FakeClient


def _commands() -> list[click.Command]:
    ctx = click.Context(cli)
    return [cli] + [c for name in cli.list_commands(ctx) if (c := cli.get_command(ctx, name)) is not None]


def test_every_option_has_help_and_shows_its_default() -> None:
    commands = _commands()
    assert {c.name for c in commands} >= {"upload", "submit", "watch", "status", "result", "list", "cancel", "download"}
    for command in commands:
        if command.name == "up" or command.callback is None:
            continue  # the server package's command (or its stand-in)
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and param.help.strip(), f"{command.name} {param.opts} has no help"
                if not param.is_eager:
                    assert param.show_default, f"{command.name} {param.opts} hides its default"


def test_global_options_on_every_builtin_command() -> None:
    for command in _commands():
        if command.name == "up":
            continue
        opts = {o for p in command.params for o in p.opts}
        assert {"--target", "--api-key", "--tls", "--ca-file", "--timeout", "--verify", "--json"} <= opts, command.name


def test_help_shows_export_choices_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["submit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "keras|h5|saved_model|tflite|tflite_int8" in out
    assert "[default: 0.8]" in out and "PRUNING_TARGET" in out
    assert run(["download", "--help"]) == 0
    assert "keras|h5|saved_model|tflite|tflite_int8" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pruning {importlib.metadata.version('pruning-client')}"


@pytest.mark.parametrize(
    "argv, target, json_output",
    [
        (["--target", "before:1", "status", "j1"], "before:1", False),
        (["status", "j1", "--target", "after:2"], "after:2", False),
        (["--target", "before:1", "--json", "status", "j1", "--target", "after:2"], "after:2", True),
        (["status", "--json", "j1"], "127.0.0.1:50051", True),
    ],
)
def test_global_options_before_or_after_the_command(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str], argv: list[str], target: str, json_output: bool
) -> None:
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert [c.target for c in fake.made] == [target]
    if json_output:
        assert json.loads(out)["id"] == "j1"
    else:
        assert out.startswith("j1 RUNNING attempt 1")


def test_environment_and_other_globals(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca.pem"
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    ca.write_bytes(pem)
    monkeypatch.setenv("PRUNING_TARGET", "env:3")
    monkeypatch.setenv("PRUNING_API_KEY", "k1")
    assert run(["--timeout", "5", "status", "j1", "--ca-file", str(ca)]) == 0
    client = fake.made[-1]
    assert (client.target, client.api_key, client.tls, client.roots, client.timeout, client.verify) == (
        "env:3",
        "k1",
        True,
        pem,
        5.0,
        "crc32",
    )
    monkeypatch.setenv("PRUNING_VERIFY", "sha256")
    assert run(["status", "j1"]) == 0
    assert fake.made[-1].verify == "sha256"
    assert run(["status", "j1", "--verify", "crc32"]) == 0
    assert fake.made[-1].verify == "crc32"
    monkeypatch.delenv("PRUNING_VERIFY")
    assert run(["status", "j1", "--api-key", "k2", "--target", "cli:4"]) == 0
    assert (fake.made[-1].target, fake.made[-1].api_key) == ("cli:4", "k2")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["upload", "model", "nope.keras"], "nope.keras"),
        (["upload", "dataset", "missing/data.npz"], "missing/data.npz"),
        (["submit", "--model", "nope.keras"], "nope.keras"),
        (["submit", "--model", "a" * 64, "--dataset", "nope.npz"], "nope.npz"),
        (["status", "j1", "--ca-file", "nope.pem"], "nope.pem"),
    ],
)
def test_missing_local_file_is_exit_2_and_one_line(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert run(argv) == 2
    assert needle in _one_error_line(capsys)
    assert not fake.made  # nothing was sent


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["--tagret", "x", "list"],
        ["submit", "--model", "a" * 64, "--export", "onnx"],
        # past the contract's int32 / int64 fields: protobuf's ValueError was a traceback, exit 1
        ["submit", "--model", "a" * 64, "--max-loss-pp", "1", "--max-trials", "99999999999"],
        ["submit", "--model", "a" * 64, "--epochs", "3000000000"],
        ["submit", "--model", "a" * 64, "--seed", str(2**63)],
        ["sweep", "--model", "a" * 64, "--max-loss-pp", "1", "--halving-rate", "99999999999"],
        ["submit", "--model", "a" * 64, "--label", "novalue"],
        ["submit", "--model", "a" * 64, "--download", "out"],
        ["download", "a" * 64, "--all"],
        ["download", "job1", "--all", "--format", "h5"],
        ["list", "--state", "sleeping"],
    ],
)
def test_usage_errors_are_exit_2_and_one_line(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert run(argv) == 2
    assert _one_error_line(capsys).startswith("error: ")
    assert not fake.made


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["list", "--state", "bogus", "--json"], "--state"),
        (["--json", "status"], "job_id"),
        (["--json", "--timeout", "0", "list"], "--timeout"),
        (["--json", "no-such-command"], None),
    ],
)
def test_usage_errors_with_json_print_the_error_object_on_stdout(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str], argv: list[str], field: str | None
) -> None:
    assert run(argv) == 2
    out, err = capsys.readouterr()
    error = json.loads(out)  # stdout holds the error object and nothing else
    assert set(error) == {"error", "message", "field_violations"} and error["message"]
    assert [f for f, _ in error["field_violations"]] == ([field] if field else [])
    assert err.startswith("error: ") and not fake.made


def test_export_format_type_accepts_file_style_names() -> None:
    kind = cli_module.ExportFormatType()
    assert kind.convert("saved_model.zip", None, None) == "saved_model"
    assert kind.convert("SAVED_MODEL", None, None) == "saved_model"
    assert kind.convert("tflite_int8", None, None) == "tflite_int8"
    with pytest.raises(click.BadParameter):
        kind.convert("onnx", None, None)


def test_up_without_the_server_package(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_module, "_plugins", lambda: {})
    cli_module._load_plugin.cache_clear()
    try:
        assert run(["up", "--listen", "127.0.0.1:0"]) == 2
        line = _one_error_line(capsys)
        assert "server package" in line
        assert run(["--help"]) == 0
        assert "up " in capsys.readouterr().out  # still listed, with what it needs
    finally:
        cli_module._load_plugin.cache_clear()


def test_commands_from_entry_points(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    @click.command("hello", help="Say hello.")
    @click.option("--name", default="world", help="Whom to greet.")
    def hello(name: str) -> None:
        click.echo(f"hello {name}")

    class EntryPoint:
        def __init__(self, name: str, value: object) -> None:
            self.name, self.value, self._obj = name, f"fake:{name}", value

        def load(self) -> object:
            if isinstance(self._obj, Exception):
                raise self._obj
            return self._obj

    plugins: dict[str, Any] = {
        "hello": EntryPoint("hello", hello),
        "broken": EntryPoint("broken", ImportError("nope")),
        "odd": EntryPoint("odd", object()),
    }
    monkeypatch.setattr(cli_module, "_plugins", lambda: plugins)
    cli_module._load_plugin.cache_clear()
    try:
        assert run(["hello", "--name", "you"]) == 0
        assert capsys.readouterr().out == "hello you\n"
        assert run(["broken"]) == 2
        assert "nope" in _one_error_line(capsys)
        assert run(["odd"]) == 2
        assert "not a click command" in _one_error_line(capsys)
        assert run(["--help"]) == 0
        assert "Say hello." in capsys.readouterr().out
    finally:
        cli_module._load_plugin.cache_clear()


def test_the_installed_up_comes_from_the_entry_point_group() -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=cli_module.COMMAND_GROUP)}
    if "up" not in names:
        pytest.skip("the server package registers no `up` here")
    command = cli.get_command(click.Context(cli), "up")
    assert isinstance(command, click.Command) and command.callback is not None
    assert "--listen" in {o for p in command.params for o in p.opts}


def test_importing_the_cli_loads_no_server_code() -> None:
    probe = (
        "import sys\n"
        "from pruning_client.cli import cli\n"
        "cli.main(['list', '--help'], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'pruning_server', 'pruning_worker', "
        "'pruning_core', 'tensorflow', 'celery'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    source = pathlib.Path(cli_module.__file__).read_text()
    assert "import pruning_server" not in source and "from pruning_server" not in source


class SubmittingClient(FakeClient):
    """Keeps the spec `pruning submit` sends."""

    sent: list[pb.JobSpec] = []

    def submit(self, spec: pb.JobSpec, **_: Any) -> Any:
        SubmittingClient.sent.append(spec)
        return type("Handle", (), {"id": "0" * 24, "warnings": []})()


@pytest.mark.parametrize(
    ("args", "limit"),
    [
        (["--max-loss-pp", "0.5"], ("max_loss_pp", 0.5)),
        (["--max-relative-loss", "2"], ("max_relative_loss_percent", 2.0)),
    ],
)
def test_submit_with_a_budget_sends_it_in_the_spec(
    monkeypatch: pytest.MonkeyPatch, args: list[str], limit: tuple[str, float]
) -> None:
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    assert run(["submit", "--model", "a" * 64, *args]) == 0
    (spec,) = SubmittingClient.sent
    assert spec.budget.WhichOneof("limit") == limit[0] and getattr(spec.budget, limit[0]) == limit[1]


def test_submit_bounds_its_budgets_search(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    bounds = ["--search-low", "0.7", "--search-high", "0.9", "--tolerance", "0.05", "--max-trials", "4"]
    assert run(["submit", "--model", "a" * 64, "--max-loss-pp", "1", *bounds, "--parallel-trials", "3"]) == 0
    (spec,) = SubmittingClient.sent
    assert spec.budget == pb.AccuracyBudget(
        max_loss_pp=1.0, search_low=0.7, search_high=0.9, tolerance=0.05, max_trials=4, parallel_trials=3
    )
    # without a budget there is no search to bound: a usage error before any call
    assert run(["submit", "--model", "a" * 64, "--max-trials", "4"]) == 2
    assert "--max-trials bounds the search for a budget" in capsys.readouterr().err
    assert len(SubmittingClient.sent) == 1
    assert run(["submit", "--model", "a" * 64]) == 0
    assert not SubmittingClient.sent[-1].HasField("budget")  # no budget: no budget field (nor its zeros)


@pytest.mark.parametrize(("args", "power"), [([], 0.0), (["--power", "2"], 2.0)])
def test_submit_leaves_the_power_to_the_recipe_unless_given(
    monkeypatch: pytest.MonkeyPatch, args: list[str], power: float
) -> None:
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    assert run(["submit", "--model", "a" * 64, *args]) == 0
    (spec,) = SubmittingClient.sent
    assert spec.pruning.schedule.polynomial_decay.power == power  # 0: unset, the server's recipe picks


@pytest.mark.parametrize("command", ["submit", "sweep"])
def test_submit_and_sweep_refuse_two_budgets(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error (exit 2, one line), before any call; sweep printed a ValueError traceback."""
    assert run([command, "--model", "a" * 64, "--max-loss-pp", "1", "--max-relative-loss", "1"]) == 2
    err = capsys.readouterr().err
    assert "not both" in err and "Traceback" not in err


def test_a_budget_over_all_of_the_accuracy_is_refused() -> None:
    from pruning_core.validation import validate_budget

    for budget in (pb.AccuracyBudget(max_relative_loss_percent=150), pb.AccuracyBudget(max_loss_pp=100.5)):
        problems: list = []
        validate_budget(budget, "spec.budget", problems)
        ((field, message),) = problems
        assert field.startswith("spec.budget.max_") and "[0, 100]" in message
    problems = []
    validate_budget(pb.AccuracyBudget(max_relative_loss_percent=100), "spec.budget", problems)
    assert problems == []


def test_a_ca_file_without_a_certificate_is_a_usage_error(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    assert run(["--json", "--ca-file", str(bad), "status", "0" * 24]) == 2
    error = json.loads(capsys.readouterr().out)
    assert error["field_violations"][0][0] == "--ca-file" and "holds no PEM certificate" in error["message"]
    assert not fake.made


@pytest.mark.parametrize(
    ("args", "loss"), [([], ""), (["--loss", "sparse_categorical_crossentropy"], "sparse_categorical_crossentropy")]
)
def test_submit_sends_the_loss_when_given(monkeypatch: pytest.MonkeyPatch, args: list[str], loss: str) -> None:
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    assert run(["submit", "--model", "a" * 64, *args]) == 0
    (spec,) = SubmittingClient.sent
    assert spec.training.loss == loss  # "": the server's default


def test_submit_sends_the_pattern_type_selection_and_policy_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """2:4 sparsity, blocks, selection by layer class and the XNNPACK policy were in the
    contract but reachable only by editing the protobuf."""
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    args = ["--m-by-n", "2:4", "--include-type", "Conv2D", "--exclude-type", "Dense"]
    assert run(["submit", "--model", "a" * 64, *args]) == 0
    assert run(["submit", "--model", "a" * 64, "--block-size", "1x4", "--xnnpack-policy"]) == 0
    assert run(["submit", "--model", "a" * 64]) == 0
    first, second, plain = SubmittingClient.sent
    assert (first.pruning.sparsity_m_by_n.m, first.pruning.sparsity_m_by_n.n) == (2, 4)
    assert list(first.pruning.layers.include_types) == ["Conv2D"] and list(first.pruning.layers.exclude_types) == [
        "Dense"
    ]
    assert list(second.pruning.block_size) == [1, 4]
    assert second.pruning.policy == pb.PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK
    assert not plain.pruning.HasField("sparsity_m_by_n") and not plain.pruning.policy and not plain.pruning.block_size


def test_an_unusable_download_folder_is_refused_before_the_job_is_submitted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """The folder was first used once the job had run: "File exists: afile", the result lost."""
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    (tmp_path / "afile").write_text("")
    for folder in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert run(["submit", "--model", "a" * 64, "--wait", "--download", f"{folder}/"]) == 2
        assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert run(["watch", "0" * 24, "--download", str(tmp_path / "afile")]) == 2
    assert run(["report", "0" * 24, "-o", f"{tmp_path / 'afile'}/rep/"]) == 2  # a report's folder alike
    assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert not SubmittingClient.sent


def test_an_m_by_n_pattern_sets_the_schedules_sparsity_and_refuses_another(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """--m-by-n 2:4 --final-sparsity 0.8 ran to 0.5 with the plan saying 0.5 -> 0.8 and the
    epochs 'target sparsity 0.800': the pattern sets the sparsity, so the flag is refused and
    the default schedule ends at the pattern's."""
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    for flag in ("--final-sparsity", "--initial-sparsity"):
        assert run(["submit", "--model", "a" * 64, "--m-by-n", "2:4", flag, "0.3"]) == 2
        assert f"--m-by-n 2:4 sets the sparsity (0.5: 2 zeros of every 4 weights); {flag} would be ignored" in (
            capsys.readouterr().err
        )
    # said before any upload: the model and dataset may be GBs
    uploads: list[str] = []
    monkeypatch.setattr(cli_module, "_upload", lambda client, kind, path: uploads.append(path))
    (model := tmp_path / "m.keras").write_bytes(b"")
    (data := tmp_path / "d.npz").write_bytes(b"")
    args = ["--model", str(model), "--dataset", str(data), "--m-by-n", "2:4", "--final-sparsity", "0.8"]
    assert run(["submit", *args]) == 2
    assert uploads == [] and "would be ignored" in capsys.readouterr().err
    assert run(["submit", "--model", "a" * 64, "--m-by-n", "1:4"]) == 0
    assert run(["submit", "--model", "a" * 64, "--m-by-n", "3:4", "--schedule", "constant"]) == 0
    quarter, three = SubmittingClient.sent
    decay = quarter.pruning.schedule.polynomial_decay
    assert (decay.initial_sparsity, decay.final_sparsity) == (0.25, 0.25)
    assert three.pruning.schedule.constant_sparsity.target_sparsity == 0.75


@pytest.mark.parametrize(
    "args", [["--m-by-n", "2"], ["--m-by-n", "2:x"], ["--m-by-n", "2:\u00b2"], ["--block-size", "4"]]
)
def test_a_malformed_pattern_option_is_a_usage_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert run(["submit", "--model", "a" * 64, *args]) == 2
    assert "expected" in capsys.readouterr().err


@pytest.mark.parametrize("given", [["--json"], ["--target", "h:1"], ["--timeout", "5"]])
def test_pruning_up_refuses_the_client_options(given: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*given, "up"]) == 2
    assert f"`pruning up` takes only --listen and --log-file, not {given[0]}" in capsys.readouterr().err


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "11 integrity error or data loss, 130 interrupted (Ctrl-C), 1 anything else" in out


@pytest.mark.parametrize(("args", "enabled"), [([], None), (["--no-report"], False), (["--report"], None)])
def test_submit_turns_the_report_off_with_no_report(
    monkeypatch: pytest.MonkeyPatch, args: list[str], enabled: bool | None
) -> None:
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    assert run(["submit", "--model", "a" * 64, *args]) == 0
    (spec,) = SubmittingClient.sent
    assert (spec.report.enabled if spec.report.HasField("enabled") else None) == enabled  # unset: the server's on


@pytest.mark.parametrize(("args", "limit"), [([], 0.0), (["--time-limit", "90"], 90.0), (["--time-limit", "0.5"], 0.5)])
def test_submit_sets_the_job_s_time_limit(monkeypatch: pytest.MonkeyPatch, args: list[str], limit: float) -> None:
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    assert run(["submit", "--model", "a" * 64, *args]) == 0
    (spec,) = SubmittingClient.sent
    assert spec.time_limit_s == limit


def test_a_negative_time_limit_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["submit", "--model", "a" * 64, "--time-limit", "-1"]) == 2
    assert "--time-limit" in capsys.readouterr().err


def test_job_spec_sets_the_report():
    from pruning_client import job_spec

    assert not job_spec("a" * 64).HasField("report")  # the same bytes as before: idempotency keys match
    assert job_spec("a" * 64).SerializeToString() == job_spec("a" * 64, time_limit_s=0).SerializeToString()
    spec = job_spec("a" * 64, report=False, latency_repeats=3)
    assert spec.report.HasField("enabled") and not spec.report.enabled and spec.report.latency_repeats == 3


def test_a_call_nothing_answered_says_where_it_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """A call nothing answers ends at its deadline: gRPC then says only "Deadline Exceeded",
    which hid the cause behind a short --timeout. (A refused one says nothing listens there.)"""
    import socket

    with socket.socket() as silent:  # takes connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        assert run(["--target", target, "--timeout", "1", "list"]) == 7
    assert f"(no answer from {target} within 1 s: is the server up there?)" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--initial-sparsity", "0.2"], ["--power", "2"]])
def test_a_polynomial_only_flag_with_a_constant_schedule_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    SubmittingClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SubmittingClient)
    assert run(["submit", "--model", "a" * 64, "--schedule", "constant", *args]) == 2  # it was silently ignored
    assert f"{args[0]} shapes the polynomial schedule only" in capsys.readouterr().err and not SubmittingClient.sent
    assert run(["submit", "--model", "a" * 64, "--schedule", "polynomial", *args]) == 0


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("http://127.0.0.1:50051", "takes host:port, not a URL"),
        ("localhost", "without a port gRPC dials 443; the server's default is 50051"),
        ("localhost:port", "takes host:port (got 'localhost:port')"),
    ],
)
def test_a_target_gRPC_would_not_reach_as_meant_is_a_usage_error(capsys, target, said):
    from pruning_client.cli import run

    assert run(["--target", target, "list"]) == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("timeout", ["20", "1"])  # 1 s: the deadline ends the retries of the refused calls
def test_nothing_listening_at_the_target_says_so(capsys, timeout):
    import socket

    from pruning_client.cli import run

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert run(["--target", f"127.0.0.1:{port}", "--timeout", timeout, "list"]) == 7
    err = capsys.readouterr().err
    assert f"(nothing listens at 127.0.0.1:{port}: is the server up? `pruning up` starts one here)" in err


def test_a_final_sparsity_given_with_a_budget_is_a_usage_error(capsys):
    """A budget searches for the final sparsity: a value given for it would be dropped."""
    from pruning_client.cli import run

    args = ["submit", "--model", "a" * 64, "--max-loss-pp", "1", "--final-sparsity", "0.9", "--dry-run"]
    assert run(args) == 2
    assert "--final-sparsity is what a budget searches for" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "tls"),
    [
        ("api.example.com", True),  # a TLS endpoint on 443
        ("[::1]", True),
        ("127.0.0.1:50051", False),
        ("[::1]:50051", False),
        ("unix:/run/pruning.sock", False),
        ("dns:///pruning.internal:50051", False),
        ("xds:///pruning", False),
    ],
)
def test_targets_gRPC_reaches_as_meant_are_taken(target, tls):
    from pruning_client.client import _target_problem

    assert _target_problem(target, tls) is None


def test_the_exit_codes_in_help_name_every_status_the_sdk_maps():
    """`pruning --help` (and the module's docstring) list each gRPC status beside the exit code
    the CLI gives it."""
    import re

    from pruning_client import exceptions

    mapped = [c for c in vars(exceptions).values() if isinstance(c, type) and getattr(c, "code", None) is not None]
    assert mapped
    for text in (" ".join(cli.epilog.split()), " ".join(cli_module.__doc__.split())):
        listed = dict(re.findall(r"(\d+) ([a-z][a-z ]*?)(?: \(|,|\.)", text.split("Exit codes: ")[1]))
        for error in mapped:
            if error.exit_code == 1:  # "anything else"
                continue
            words = error.code.name.lower().replace("_", " ")
            assert words in listed.get(str(error.exit_code), ""), (error.__name__, listed)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--timeout", "nan", "status", "j" * 24], "'--timeout': 'nan' is not a number of seconds"),
        (["--timeout", "inf", "status", "j" * 24], "'--timeout': inf is not in the range"),
        (["--timeout", "1e308", "status", "j" * 24], "'--timeout': 1e+308 is not in the range"),
        (["result", "j" * 24, "--wait-timeout", "nan"], "'--wait-timeout': 'nan' is not a number of seconds"),
    ],
)
def test_timeouts_gRPC_cannot_take_are_usage_errors(argv, needle, capsys):
    """A deadline gRPC turns into an at-once DEADLINE_EXCEEDED would read as a server down."""
    assert run(argv) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("sdk", ["sync", "async"])
def test_the_sdk_refuses_a_target_or_timeout_it_would_only_fail_on_later(sdk):
    import asyncio

    from pruning_client import AsyncClient, Client

    def make(target, **options):
        if sdk == "sync":
            Client(target, **options).close()
            return

        async def build():
            await AsyncClient(target, **options).close()

        asyncio.run(build())

    for target, needle in (
        ("http://127.0.0.1:50051", "not a URL"),
        ("127.0.0.1", "without a port gRPC dials 443"),
    ):
        with pytest.raises(ValueError, match=needle):
            make(target)
    make("127.0.0.1", tls=True)  # a TLS endpoint on 443 behind a proxy
    for timeout in (float("nan"), float("inf"), 0.0, -1.0, 1e308):
        with pytest.raises(ValueError, match="timeout must be in"):
            make("127.0.0.1:50051", timeout=timeout)


def test_a_wait_of_no_bound_can_be_said_as_inf():
    from pruning_client.job import wait_bound

    assert wait_bound(None) is None and wait_bound(float("inf")) is None and wait_bound(1e308) is None
    assert wait_bound(0) == 0.0 and wait_bound(2.5) == 2.5
    for bad in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="timeout must be a number of seconds"):
            wait_bound(bad)


@pytest.mark.parametrize("given", ["805e73ee", "a" * 63, "A" * 30])
def test_a_download_of_an_abbreviated_id_says_ids_are_whole(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An artifact id's prefix was answered "job_id: not a job id", of a job the user never meant."""
    assert run(["download", given]) == 2
    assert "ID is a job id (24 lowercase hex digits) or an artifact id (64), whole" in capsys.readouterr().err


def test_a_budget_jobs_table_says_the_search_picked_its_sparsity(capsys: pytest.CaptureFixture[str]) -> None:
    """`pruning submit --max-loss-pp 0.5 --wait` printed the plain table: no budget, no search."""
    final = pb.Job(id="1" * 24, state=pb.JOB_STATE_SUCCEEDED, search_sweep_id="2" * 24)
    final.spec.budget.max_loss_pp = 0.5
    final.result.device = "CPU"
    handle = type("Handle", (), {"id": final.id})()

    def printed(json_out: bool = False) -> str:
        with click.Context(cli_module.cli) as ctx:
            ctx.meta[cli_module._GLOBALS_KEY] = {"json": json_out}
            cli_module._finish(None, handle, final, None)  # type: ignore[arg-type]
        return capsys.readouterr().out

    assert (
        f"accuracy budget: at most 0.5 pp of test accuracy lost against the baseline; the search (sweep {'2' * 24}) "
        f"picked the highest sparsity within it; `pruning report {final.id}` shows its trials"
    ) in printed()
    assert f'"search_sweep_id": "{"2" * 24}"' in printed(json_out=True)
    final.spec.ClearField("budget")
    assert "accuracy budget" not in printed() and "search_sweep_id" not in printed(json_out=True)
