"""Each schedule record as a DAG of its own, ``ndmg_schedule_<name>``
(participant/schedules.py says what a record is and where records live).

A schedule's run has two tasks:

``wait_for_output``  takes the output location's lease for the ndmg_participant run it is
                     about to start (its run id is known in advance: ``<name>__<this run's
                     id>``), so no other run can slip in between; while another run holds
                     the lease it waits (deferred, no worker slot held), and after
                     ``NDMG_SCHEDULE_WAIT_HOURS`` it is skipped, saying which run held it.
                     A run of the same schedule never overlaps itself: max_active_runs=1.
``run_participant``  triggers that ndmg_participant run with the record's params and waits
                     for it (deferred, in the triggerer). The participant run skips what is
                     done: a dataset with nothing new finishes in a few tasks, its report
                     saying "0 new scans", without a canary or a Batch job.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import AirflowSkipException
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import DAG, BaseOperator

from ndmg_cloud.orchestration.clients import s3_client
from ndmg_cloud.orchestration.new_scans import NewScansTrigger
from ndmg_cloud.orchestration.participant_tasks import run_states
from ndmg_cloud.orchestration.taskids import DAG_ID, RUN_PARTICIPANT, WAIT_FOR_OUTPUT
from ndmg_cloud.participant import lease
from ndmg_cloud.participant.params import resolve
from ndmg_cloud.participant.schedules import VARIABLE, Records, Schedule, participant_run_id, read

log = logging.getLogger(__name__)

START = pendulum.datetime(2026, 1, 1, tz="UTC")
NEW_SCANS_ASSET = "ndmg-new-scans"  # a "new scans" schedule's Asset: ndmg-new-scans/<name>


def lease_wait() -> tuple[float, float]:
    """(seconds between two looks at a held lease, hours to wait before skipping)."""
    return float(os.environ.get("NDMG_SCHEDULE_LEASE_POLL_SECONDS", "300")), float(os.environ.get("NDMG_SCHEDULE_WAIT_HOURS", "12"))


class OutputLeaseWait(BaseOperator):
    """Takes the output location's lease for the participant run about to start; while
    another run holds it, looks again every ``poll_seconds`` (deferred to the triggerer: no
    worker slot held), and after ``wait_seconds`` is skipped, naming the holder.

    Not a reschedule-mode sensor: the scheduler can fail one of those when the executor's
    "success" for a poke arrives after the next poke was queued (apache/airflow#71172; it
    happened here under a live scheduler). A deferral carries no such race."""

    def __init__(self, *, schedule_name: str, params_of_run: dict[str, Any], poll_seconds: float, wait_seconds: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.schedule_name = schedule_name
        self.params_of_run = params_of_run
        self.poll_seconds = poll_seconds
        self.wait_seconds = wait_seconds

    def execute(self, context: Any) -> None:
        self.look_again(context, since=time.time())

    def look_again(self, context: Any, event: Any = None, *, since: float) -> None:
        run_id = participant_run_id(self.schedule_name, context["run_id"])
        config = resolve(self.params_of_run, run_id)
        bucket, key = config.output_root.bucket, config.outputs.lease_key
        try:
            took_over = lease.take(s3_client(), bucket, key, run_id, run_states(context["ti"]))
        except lease.LeaseHeld as held:
            waited = time.time() - since
            if waited >= self.wait_seconds:
                raise AirflowSkipException(
                    f"skipped: another run held the output location for the {_hours(self.wait_seconds)} this run may wait "
                    f"(NDMG_SCHEDULE_WAIT_HOURS): {held}. The next run of schedule "
                    f"{self.schedule_name!r} picks up what this one would have run"
                ) from None
            log.info("waiting for the output location: %s", held)
            delay = max(1.0, min(self.poll_seconds, self.wait_seconds - waited))
            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=delay)), method_name="look_again", kwargs={"since": since})
        if took_over:
            log.warning("took over the lease of run %s on %s: %s", took_over.run_id, config.output_root, took_over.why)
        log.info("the lease on %s is held for run %s, which starts now", config.output_root, run_id)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


class ScheduledRunOperator(TriggerDagRunOperator):
    """Triggers the schedule's ndmg_participant run and waits for it; a retry after a crash
    waits for the run it started instead of starting a second one. The conf is the record's
    params as checked, never a template."""

    template_fields = tuple(f for f in TriggerDagRunOperator.template_fields if f != "conf")

    def execute(self, context: Any) -> Any:
        run_id = str(self.trigger_run_id)
        ti = context["ti"]
        if ti.get_dr_count(dag_id=self.trigger_dag_id, run_ids=[run_id]):
            from airflow.providers.standard.triggers.external_task import DagStateTrigger

            log.info("%s run %s exists (started by an earlier try): waiting for it", self.trigger_dag_id, run_id)
            ti.xcom_push(key="trigger_run_id", value=run_id)
            self.defer(
                trigger=DagStateTrigger(
                    dag_id=self.trigger_dag_id,
                    states=self.allowed_states + self.failed_states,
                    execution_dates=None,
                    run_ids=[run_id],
                    poll_interval=self.poke_interval,
                ),
                method_name="execute_complete",
            )
        return super().execute(context)


def release_unstarted(schedule: Schedule, context: Any) -> None:
    """``run_participant`` failed: if its participant run was never created (ndmg_participant
    paused or broken), give back the lease ``wait_for_output`` took for it, or every run of
    that output would be refused for a day. A run that exists releases it at its end."""
    run_id = participant_run_id(schedule.name, context["run_id"])
    try:
        if context["ti"].get_dr_count(dag_id=DAG_ID, run_ids=[run_id]):
            return
        config = resolve(schedule.params, run_id)
        if lease.release(s3_client(), config.output_root.bucket, config.outputs.lease_key, run_id):
            log.info("released the lease on %s: run %s was never started", config.output_root, run_id)
    except Exception:  # a callback must not hide the task's own failure
        log.exception("could not release the lease taken for run %s", run_id)


def schedule_dag(schedule: Schedule) -> DAG:
    """The DAG of one schedule: its own history in the UI, its own pause switch, one run at
    a time."""
    poll_seconds, wait_hours = lease_wait()
    with DAG(
        dag_id=schedule.dag_id,
        schedule=_when(schedule),
        start_date=pendulum.instance(schedule.start) if schedule.start else START,
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,  # `ndmg_cloud schedule add` means "start now"
        tags=["ndmg", "schedule"],
        description=f"{DAG_ID} on {schedule.dataset}, {schedule.describe()}",
        doc_md=_doc(schedule),
    ) as dag:
        wait = OutputLeaseWait(
            task_id=WAIT_FOR_OUTPUT,
            schedule_name=schedule.name,
            params_of_run=schedule.params,
            poll_seconds=poll_seconds,
            wait_seconds=wait_hours * 3600,
        )
        run = ScheduledRunOperator(
            task_id=RUN_PARTICIPANT,
            trigger_dag_id=DAG_ID,
            trigger_run_id=participant_run_id(schedule.name, "{{ run_id }}"),
            conf=schedule.params,
            wait_for_completion=True,
            deferrable=True,
            poke_interval=int(os.environ.get("NDMG_SCHEDULE_POLL_SECONDS", "60")),
            retries=2,
            retry_delay=timedelta(seconds=30),
            fail_when_dag_is_paused=True,  # a run that could never start must not hold the lease, nor wait for ever
            on_failure_callback=functools.partial(release_unstarted, schedule),
            openlineage_inject_parent_info=False,  # the conf is the record's params, nothing else
        )
        wait >> run
    return dag


def _when(schedule: Schedule) -> Any:
    """A cron timetable; or the schedule's Asset, watched in the triggerer by a
    NewScansTrigger on the queue S3 notifies of the dataset's uploads."""
    from airflow.sdk import Asset, AssetWatcher
    from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

    if schedule.cron:
        return CronTriggerTimetable(schedule.cron, timezone="UTC")
    assert schedule.new_scans is not None
    dataset = schedule.input_root
    watcher = NewScansTrigger(schedule.new_scans.queue, dataset.bucket, dataset.prefix, schedule.new_scans.quiet_minutes * 60)
    return [Asset(name=f"{NEW_SCANS_ASSET}/{schedule.name}", watchers=[AssetWatcher(name=f"new-scans-{schedule.name}", trigger=watcher)])]


def _doc(schedule: Schedule) -> str:
    import json

    return (
        f"Schedule **{schedule.name}**: runs `{DAG_ID}` on {schedule.dataset} {schedule.describe()}.\n\n"
        f"Edit it with `ndmg_cloud schedule`; its record (the Variable `{VARIABLE}`):\n\n"
        f"```json\n{json.dumps(schedule.to_record(), indent=2, sort_keys=True)}\n```"
    )


def read_records() -> Records:
    """Every record, read from the Variable (the dag-processor asks Airflow for it)."""
    from airflow.sdk import Variable

    try:
        text = Variable.get(VARIABLE, default=None)
    except Exception as err:  # Airflow could not be asked: no schedule, and say why
        return Records([], [], f"cannot read the Variable {VARIABLE}: {type(err).__name__}: {err}")
    return read(text if text is None else str(text))
