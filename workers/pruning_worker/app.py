"""The Celery app of the workers.

Run one worker process per GPU with the solo pool, so TensorFlow is initialised in the
process that uses it and never before a fork::

    celery -A pruning_worker.app worker --pool=solo -Q pruning
"""

from __future__ import annotations

import logging
import sys

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutting_down
from pydantic import ValidationError

from pruning_core.settings import Settings, settings_problems

from . import observability, shutdown

try:
    settings = Settings()
except ValidationError as exc:  # one line, as the server and `pruning up` say it
    # Raised while Celery imports the app, SystemExit passes its loader (which turns any
    # Exception into "Unable to load celery application" and a traceback).
    print(f"pruning worker: invalid settings: {settings_problems(exc)}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
app = Celery("pruning", broker=settings.celery_broker_url(), include=["pruning_worker.tasks"])
app.conf.update(
    task_default_queue=settings.queue,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    # One job at a time per worker process (one per GPU); `-c N` with the prefork pool for more.
    # The solo pool runs one anyway, and its banner then says so.
    worker_concurrency=1,
    broker_connection_retry_on_startup=True,
    # Jobs run for hours on big models; redelivery on worker loss comes from
    # reject_on_worker_lost, and the attempt number fences any duplicate.
    broker_transport_options={"visibility_timeout": 12 * 3600},
    worker_hijack_root_logger=False,
    # Task events (received, started, succeeded, failed) for Flower and `celery events`.
    worker_send_task_events=True,
    task_send_sent_event=True,
)
observability.install(app, settings)


@worker_init.connect
def _check_artifact_store(**_):
    # Before any job: a worker whose artifact store is set wrong would fail every job it takes.
    from .startup import StoreCheckFailed, check_artifact_store, check_directories

    try:
        check_directories(settings)
        check_artifact_store(settings)
    except StoreCheckFailed as exc:
        logging.getLogger(__name__).error("the worker cannot start: %s", exc)
        raise SystemExit(exc.exit_code) from None


_warmed = False


def _warm_tensorflow(**_):
    global _warmed
    if _warmed:  # the solo pool sends worker_process_init and worker_ready in one process
        return
    _warmed = True
    from . import pipeline

    logging.getLogger(__name__).info("TensorFlow ready: %s", pipeline.device_name())


@worker_ready.connect
def _warm_solo(sender=None, **_):
    # With the solo or threads pool the tasks run in this very process: warm it now.
    if sender is not None and "prefork" not in type(sender.pool).__module__:
        _warm_tensorflow()


# With the prefork pool each child imports TensorFlow after the fork, never the parent.
worker_process_init.connect(_warm_tensorflow)


@worker_shutting_down.connect
def _stopping(**_):
    # A warm shutdown stops the running job after PRUNING_WORKER_DRAIN_S and re-queues it (shutdown.py).
    shutdown.stopping(settings.worker_drain_s)
