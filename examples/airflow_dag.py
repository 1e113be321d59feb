"""Airflow DAG: prune a Keras model through the pruning service with the `pruning` CLI.

submit -> watch -> result -> download, one BashOperator each:

* ``submit`` creates the job with ``--idempotency-key {{ dag.dag_id }}/{{ run_id }}``, so a
  retried task (or a cleared one) gets the same job back instead of starting a second one (the
  DAG's id in the key: scheduled runs of two DAGs share their run_id); its JSON line
  ``{"job_id": ...}`` is the task's XCom.
* ``watch`` follows the job (one JSON event per line in the task log) and fails with exit 8 if
  the job failed, 9 if it was cancelled; a retry resumes watching the same job.
* ``result`` pushes the metrics (accuracy, sparsity, sizes) as one JSON line to XCom.
* ``download`` writes the pruned model under ``output_dir/<run id>/``; XCom holds its path.

Needs on the Airflow workers only the client (``pip install ./client``: grpcio, grpcio-status,
protobuf, click, tqdm, zlib-ng; no TensorFlow) and a reachable server (``params.target``; TLS and API keys through the CLI's
environment, PRUNING_API_KEY and PRUNING_CA_FILE). Trigger with, for example,
``{"model": "/data/models/mnist.keras", "dataset": "mnist", "final_sparsity": 0.8}``.
Works with Airflow 2.4+ and 3.
"""

from __future__ import annotations

import datetime
import json

from airflow import DAG

try:
    from airflow.providers.standard.operators.bash import BashOperator  # Airflow 3
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

#: Options every pruning command gets: the server, and JSON output for the XComs.
COMMON = "--target '{{ params.target }}' --json"
#: The job id from the submit task's XCom ({"job_id": "..."}).
JOB_ID = "{{ (ti.xcom_pull(task_ids='submit') | fromjson)['job_id'] }}"
#: A directory per run (run ids hold ':' and '+').
OUT_DIR = "{{ params.output_dir }}/{{ run_id | replace(':', '-') | replace('+', '-') }}/"

SUBMIT = (
    "pruning submit --model '{{ params.model }}' --dataset '{{ params.dataset }}'"
    " --initial-sparsity {{ params.initial_sparsity }} --final-sparsity {{ params.final_sparsity }}"
    " --epochs {{ params.epochs }} --label airflow_dag={{ dag.dag_id }}"
    " --idempotency-key '{{ dag.dag_id }}/{{ run_id }}' " + COMMON
)
WATCH = f"pruning watch {JOB_ID} {COMMON}"
RESULT = f"pruning result {JOB_ID} --wait-timeout {{{{ params.timeout_s }}}} {COMMON}"
DOWNLOAD = f"mkdir -p '{OUT_DIR}' && pruning download {JOB_ID} -o '{OUT_DIR}' {COMMON}"

with DAG(
    dag_id="prune_model",
    description="Prune a Keras model with the pruning service",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),  # noqa: UP017 (Python < 3.11)
    catchup=False,
    params={
        "target": "pruning-server:50051",
        "model": "/data/models/mnist.keras",  # a .keras/.h5 file on the worker, or an uploaded model id
        "dataset": "mnist",  # built-in name, an .npz file or an uploaded dataset id
        "initial_sparsity": 0.5,
        "final_sparsity": 0.8,
        "epochs": 2,
        "timeout_s": 6 * 3600,
        "output_dir": "/data/models/pruned",
    },
    user_defined_filters={"fromjson": json.loads},
    default_args={"retries": 2, "retry_delay": datetime.timedelta(minutes=1)},
    tags=["pruning"],
) as dag:
    submit = BashOperator(task_id="submit", bash_command=SUBMIT)
    watch = BashOperator(
        task_id="watch", bash_command=WATCH, do_xcom_push=False, execution_timeout=datetime.timedelta(hours=6)
    )
    result = BashOperator(task_id="result", bash_command=RESULT)
    download = BashOperator(task_id="download", bash_command=DOWNLOAD)

    submit >> watch >> result >> download
