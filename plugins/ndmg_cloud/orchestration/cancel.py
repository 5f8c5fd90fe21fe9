"""A cancel that does not depend on a triggerer: when a person marks a scan's task, or its
whole run, failed or skipped (UI or REST), the api-server terminates the job that task
recorded, before it answers.

Without this the cancel reaches Batch only through the task: a running task's ``on_kill``
or a deferred task's trigger. A task marked failed after it deferred but before any
triggerer had started its trigger has neither, and its job ran on to the end. Airflow calls
these listeners in the api-server with ``previous_state=None`` when a person set the state
(``_emit_state_listener_hooks``); tasks failing on their own (``previous_state`` RUNNING, in
a worker or the scheduler) are left to the task itself and to ``verify_and_report``.

A job whose id was never recorded (the task was marked failed during its SubmitJob) is not
found here; ``verify_and_report`` sweeps it up as an orphan when the run ends.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from ndmg_cloud.orchestration.taskids import DAG_ID, JOB_TASKS, JOB_XCOM_KEY
from ndmg_cloud.participant.jobs import SubmittedJob

log = logging.getLogger(__name__)
# The api-server answers the person only after this: a short, bounded call
TERMINATE_CONFIG = {"connect_timeout": 5, "read_timeout": 10, "retries": {"mode": "standard", "total_max_attempts": 2}}


def recorded_job_id(task_instance: Any) -> str | None:
    """The Batch job id the task instance pushed right after SubmitJob, if any."""
    from ndmg_cloud.orchestration.webapp import stored_xcom

    ti = task_instance
    value = stored_xcom(ti.dag_id, ti.run_id, ti.task_id, JOB_XCOM_KEY, ti.map_index)
    return SubmittedJob.from_xcom(value).job_id if isinstance(value, dict) else None


def terminate_recorded_job(task_instance: Any, what: str) -> str | None:
    """TerminateJob for the job this task instance recorded, if it is a job of the task's
    run; its id, or None if none was terminated."""
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
    from botocore.config import Config

    from ndmg_cloud.orchestration.clients import AWS_CONN_ID
    from ndmg_cloud.participant.jobs import terminate_run_job

    job_id = recorded_job_id(task_instance)
    if job_id:
        client = BatchClientHook(aws_conn_id=AWS_CONN_ID, config=Config(**TERMINATE_CONFIG)).client
        # the id comes from an XCom (writable by USER-role accounts): only a job of this run is stopped
        if not terminate_run_job(client, job_id, task_instance.run_id, f"the Airflow task was {what}"):
            return None
        log.info("Terminated Batch job %s: %s was %s", job_id, task_instance, what)
    return job_id


def _set_by_a_person(previous_state: Any, task_instance: Any) -> bool:
    return previous_state is None and task_instance.dag_id == DAG_ID and task_instance.task_id in JOB_TASKS


def _stop(task_instance: Any, what: str) -> None:
    try:
        terminate_recorded_job(task_instance, what)
    except Exception:  # the person's request must not fail; verify_and_report reconciles later
        log.exception("Could not terminate the Batch job of %s", task_instance)


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    if _set_by_a_person(previous_state, task_instance):
        _stop(task_instance, "marked failed")


@hookimpl
def on_task_instance_skipped(previous_state: Any, task_instance: Any) -> None:
    if _set_by_a_person(previous_state, task_instance):
        _stop(task_instance, "marked skipped")
