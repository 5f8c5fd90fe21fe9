"""ndmg_participant: the ndmg / m2g connectome pipeline over a whole BIDS dataset on S3.

discover -> write_job_specs -> run_scan (one AWS Batch job per scan; or run_scan_local,
one runner subprocess per scan, with backend=local) -> verify_and_report.
Wiring only: each task's logic is in plugins/ndmg_cloud (see steps.py).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import AssetAlias, Param, dag, task

from ndmg_cloud import steps
from ndmg_cloud.local import LOCAL_POOL
from ndmg_cloud.operators import RunReportOperator, ScanBatchOperator
from ndmg_cloud.params import PARAM_SCHEMAS

REPORTS = AssetAlias(steps.REPORTS_ALIAS)


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
    job_kwargs = task(steps.write_job_specs_step, task_id="write_job_specs")(discovery)
    backend = task.branch(steps.choose_backend_step, task_id="choose_backend")(discovery)
    batch_jobs = ScanBatchOperator.partial(
        task_id="run_scan",
        aws_conn_id=steps.AWS_CONN_ID,
        deferrable=True,
        poll_interval=int(os.environ.get("NDMG_BATCH_POLL_SECONDS", "30")),
        map_index_template="{{ task.scan_id }}",
        # retries cover worker crashes: a retry reattaches to the scan's job, never resubmits
        retries=2,
        retry_delay=timedelta(seconds=int(os.environ.get("NDMG_RETRY_DELAY_SECONDS", "60"))),
    ).expand_kwargs(job_kwargs)
    local_jobs = task(
        steps.run_scan_local_step,
        task_id="run_scan_local",
        pool=LOCAL_POOL,
        map_index_template="{{ task.op_kwargs['scan_id'] }}",
    ).expand_kwargs(job_kwargs)
    report = RunReportOperator(
        task_id="verify_and_report",
        python_callable=steps.verify_and_report_step,
        trigger_rule="all_done",  # runs when some scans failed, and says so
        outlets=[REPORTS],  # an Asset per dataset's reports, for downstream DAGs
    )
    job_kwargs >> backend >> [batch_jobs, local_jobs]
    [job_kwargs, batch_jobs, local_jobs] >> report


ndmg_participant()
