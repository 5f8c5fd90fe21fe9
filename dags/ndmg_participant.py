"""ndmg_participant: the ndmg / m2g connectome pipeline over a whole BIDS dataset on S3.

discover -> write_job_specs -> canary (aws_batch: one short job proves the image can run
this run's scans) -> pilot_scan (pilot_scans > 0: a few scans to success first) ->
plan_scans (what is done for this image, what runs again and why) -> run_scan (one AWS
Batch job per scan; or run_scan_local, one runner subprocess per scan, with backend=local)
-> verify_and_report.
Wiring only: each task's logic is in plugins/ndmg_cloud (see steps.py).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import AssetAlias, Param, dag, task

from ndmg_cloud import steps
from ndmg_cloud.local import LOCAL_POOL
from ndmg_cloud.operators import CanaryOperator, RunReportOperator, ScanBatchOperator
from ndmg_cloud.params import PARAM_SCHEMAS

REPORTS = AssetAlias(steps.REPORTS_ALIAS)


BATCH = {
    "aws_conn_id": steps.AWS_CONN_ID,
    "deferrable": True,
    "poll_interval": int(os.environ.get("NDMG_BATCH_POLL_SECONDS", "30")),
    # retries cover worker crashes: a retry reattaches to the job, never resubmits
    "retries": 2,
    "retry_delay": timedelta(seconds=int(os.environ.get("NDMG_RETRY_DELAY_SECONDS", "60"))),
}


def scan_jobs(task_id: str, **kwargs):
    """One deferrable Batch job per mapped item, labelled by scan id."""
    return ScanBatchOperator.partial(task_id=task_id, map_index_template="{{ task.scan_id }}", **BATCH, **kwargs)


@dag(
    dag_id="ndmg_participant",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    params={name: Param(**schema) for name, schema in PARAM_SCHEMAS.items()},
    tags=["ndmg", "connectome", "aws-batch"],
    doc_md=__doc__,
)
def ndmg_participant():
    discovery = task(steps.discover_step, task_id="discover")()
    pilot_kwargs = task(steps.write_job_specs_step, task_id="write_job_specs")(discovery)
    canary = CanaryOperator(task_id="canary", **BATCH)  # skips itself when the run has none
    pilots = scan_jobs("pilot_scan", trigger_rule="none_failed").expand_kwargs(pilot_kwargs)
    scan_kwargs = task(steps.plan_scans_step, task_id="plan_scans", trigger_rule="none_failed")(discovery)
    backend = task.branch(steps.choose_backend_step, task_id="choose_backend")(discovery)
    batch_jobs = scan_jobs("run_scan").expand_kwargs(scan_kwargs)
    local_jobs = task(
        steps.run_scan_local_step,
        task_id="run_scan_local",
        pool=LOCAL_POOL,
        map_index_template="{{ task.op_kwargs['scan_id'] }}",
    ).expand_kwargs(scan_kwargs)
    report = RunReportOperator(
        task_id="verify_and_report",
        python_callable=steps.verify_and_report_step,
        trigger_rule="all_done",  # runs when some scans failed, and says so
        outlets=[REPORTS],  # an Asset per dataset's reports, for downstream DAGs
    )
    pilot_kwargs >> canary >> pilots >> scan_kwargs >> backend >> [batch_jobs, local_jobs]
    [canary, pilots, scan_kwargs, batch_jobs, local_jobs] >> report


ndmg_participant()
