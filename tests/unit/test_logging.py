"""Log records carry the bound job context, as JSON or text; a task's context ends with it."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading

import pytest

from pruning_core import telemetry


@pytest.fixture()
def capture():
    telemetry.clear()  # a job run by an earlier test in this process may have bound its fields
    stream = io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)

    def install(fmt: str) -> io.StringIO:
        telemetry.configure_logging(fmt, "DEBUG", stream=stream)
        return stream

    yield install
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    telemetry.clear()


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_json_records_carry_the_bound_job_context(capture):
    stream = capture("json")
    log = logging.getLogger("pruning_worker.test")
    log.info("before the task")
    telemetry.bind(job_id="0123abcd", task_id="celery-task-1")
    log.info("claimed")
    telemetry.bind(attempt=2)
    log.warning("loading %s", "model.keras", extra={"phase": "load"})
    telemetry.clear()
    log.info("after the task")

    before, claimed, loading, after = records(stream)
    assert before["message"] == "before the task" and "job_id" not in before
    assert claimed["job_id"] == "0123abcd" and claimed["task_id"] == "celery-task-1" and "attempt" not in claimed
    assert loading == {
        **loading,
        "level": "WARNING",
        "logger": "pruning_worker.test",
        "message": "loading model.keras",
        "job_id": "0123abcd",
        "attempt": 2,
        "task_id": "celery-task-1",
        "phase": "load",
    }
    assert loading["time"].endswith("Z")
    assert not {"job_id", "attempt", "task_id"} & after.keys()


def test_json_keeps_exceptions_on_one_line(capture):
    stream = capture("json")
    try:
        raise ValueError("labels past the output units")
    except ValueError:
        logging.getLogger("x").exception("job failed")
    (record,) = records(stream)
    assert len(stream.getvalue().strip().splitlines()) == 1
    assert record["level"] == "ERROR" and "ValueError: labels past the output units" in record["exc_info"]


def test_text_format_tags_the_job(capture):
    stream = capture("text")
    log = logging.getLogger("pruning_server")
    log.info("plain")
    telemetry.bind(job_id="j1", attempt=1, task_id="t1")
    log.info("tagged")
    plain, tagged = stream.getvalue().splitlines()
    assert plain.endswith("INFO pruning_server: plain")
    assert tagged.endswith("INFO pruning_server: tagged [job=j1 attempt=1 task=t1]")


def test_context_is_per_context_not_global(capture):
    stream = capture("json")
    telemetry.bind(job_id="main")
    seen = {}

    def other():
        telemetry.bind(job_id="other")
        logging.getLogger("t").info("in the thread")
        seen["bound"] = telemetry.bound()

    thread = threading.Thread(target=contextvars.copy_context().run, args=(other,))
    thread.start()
    thread.join()
    logging.getLogger("t").info("in main")
    in_thread, in_main = records(stream)
    assert in_thread["job_id"] == "other" and in_main["job_id"] == "main" and seen["bound"] == {"job_id": "other"}


def test_configuring_again_replaces_the_handler(capture):
    stream = capture("text")
    capture("json")
    logging.getLogger("t").info("once")
    assert len(stream.getvalue().splitlines()) == 1 and records(stream)[0]["message"] == "once"


def test_settings_read_the_log_format(monkeypatch):
    from pruning_core.settings import Settings

    monkeypatch.setenv("PRUNING_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("PRUNING_LOG_FORMAT", "xml")
    with pytest.raises(ValueError):
        Settings()


def test_a_worker_logs_at_pruning_log_level_over_celery_s_loglevel(monkeypatch):
    from pruning_core.settings import Settings
    from pruning_worker.observability import log_level

    monkeypatch.delenv("PRUNING_LOG_LEVEL", raising=False)
    assert log_level(Settings(), "WARNING") == "WARNING"  # unset: Celery's --loglevel
    assert log_level(Settings(), None) == "INFO"
    monkeypatch.setenv("PRUNING_LOG_LEVEL", "DEBUG")
    assert log_level(Settings(), "INFO") == "DEBUG"  # set: it wins over the command line
