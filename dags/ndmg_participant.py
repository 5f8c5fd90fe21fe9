"""ndmg_participant: the ndmg / m2g connectome pipeline over a whole BIDS dataset on S3.

discover -> write_job_specs -> canary (aws_batch: one short job proves the image can run
this run's scans) -> plan_scans (what is done by this image's code, what runs again and
why) -> pilot_scan (pilot_scans > 0: a few scans to success first) -> release_scans ->
run_scan (one AWS Batch job per scan; or run_scan_local, one runner subprocess per scan,
with backend=local) -> verify_and_report.
Wiring only: each task's callable is in ndmg_cloud.orchestration.participant_tasks, the
run's logic in ndmg_cloud.participant.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import AssetAlias, Param, dag, task

from ndmg_cloud.orchestration import participant_tasks
from ndmg_cloud.orchestration.clients import AWS_CONN_ID
from ndmg_cloud.orchestration.operators import CanaryOperator, RunReportOperator, ScanBatchOperator
from ndmg_cloud.orchestration.route import TRIGGERER, own_params_only, submit_route
from ndmg_cloud.orchestration.submit_trigger import submit_trigger_args
from ndmg_cloud.orchestration.taskids import (
    CANARY,
    CHOOSE_BACKEND,
    DAG_ID,
    DISCOVER,
    PILOT_SCAN,
    PLAN_SCANS,
    RELEASE_SCANS,
    REPORTS_ALIAS,
    RUN_SCAN,
    RUN_SCAN_LOCAL,
    VERIFY_AND_REPORT,
    WRITE_JOB_SPECS,
)
from ndmg_cloud.orchestration.triggers import polls_for
from ndmg_cloud.participant.local import LOCAL_POOL
from ndmg_cloud.participant.params import PARAM_SCHEMAS

REPORTS = AssetAlias(REPORTS_ALIAS)


BATCH = {
    "aws_conn_id": AWS_CONN_ID,
    "deferrable": True,
    "poll_interval": int(os.environ.get("NDMG_BATCH_POLL_SECONDS", "30")),
    # retries cover worker crashes: a retry reattaches to the job, never resubmits
    "retries": 2,
    "retry_delay": timedelta(seconds=int(os.environ.get("NDMG_RETRY_DELAY_SECONDS", "60"))),
}


def scan_jobs(task_id: str, **kwargs):
    """One deferrable Batch job per mapped item, labelled by scan id; on the triggerer route
    (route.py) each starts in the triggerer, which submits its job: no worker launch."""
    if submit_route() == TRIGGERER:
        kwargs["start_from_trigger"] = True
        kwargs["start_trigger_args"] = submit_trigger_args(
            task_id, poll_interval=BATCH["poll_interval"], max_polls=polls_for(BATCH["poll_interval"]), aws_conn_id=AWS_CONN_ID
        )
    return ScanBatchOperator.partial(task_id=task_id, map_index_template="{{ task.scan_id }}", **BATCH, **kwargs)


# Each mapped scan task takes its item as ONE argument (scan_task=), never spread into keyword
# arguments (expand_kwargs): keys added to an item by whoever can write XComs cannot set the
# operator's other arguments (its AWS connection, say). The task checks the item's seal.


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    params={name: Param(**schema) for name, schema in PARAM_SCHEMAS.items()},
    tags=["ndmg", "connectome", "aws-batch"],
    doc_md=__doc__,
)
def ndmg_participant():
    discovery = task(participant_tasks.discover_step, task_id=DISCOVER, multiple_outputs=False)()  # stored once
    specs = task(participant_tasks.write_job_specs_step, task_id=WRITE_JOB_SPECS)(discovery)
    canary = CanaryOperator(task_id=CANARY, **BATCH)  # skips itself when the run has none
    # none_failed: a skipped canary (or no pilots) lets the run go on, a failed one stops it
    pilot_kwargs = task(participant_tasks.plan_scans_step, task_id=PLAN_SCANS, trigger_rule="none_failed")(discovery)
    pilots = scan_jobs(PILOT_SCAN).expand(scan_task=pilot_kwargs)
    rest = task(participant_tasks.release_scans_step, task_id=RELEASE_SCANS, trigger_rule="none_failed")(discovery)
    backend = task.branch(participant_tasks.choose_backend_step, task_id=CHOOSE_BACKEND)(discovery)
    batch_jobs = scan_jobs(RUN_SCAN).expand(scan_task=rest)
    local_jobs = task(
        participant_tasks.run_scan_local_step,
        task_id=RUN_SCAN_LOCAL,
        pool=LOCAL_POOL,
        map_index_template="{{ task.op_kwargs['scan_task']['scan_id'] }}",
    ).expand(scan_task=rest)
    report = RunReportOperator(
        task_id=VERIFY_AND_REPORT,
        python_callable=participant_tasks.verify_and_report_step,
        trigger_rule="all_done",  # runs when some scans failed, and says so
        outlets=[REPORTS],  # an Asset per dataset's reports, for downstream DAGs
    )
    specs >> canary >> pilot_kwargs
    pilots >> rest >> backend >> [batch_jobs, local_jobs]
    [canary, pilot_kwargs, pilots, rest, batch_jobs, local_jobs] >> report


own_params_only(ndmg_participant())  # the form's schemas once, not once per task (route.py)
