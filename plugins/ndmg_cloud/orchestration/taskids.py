"""The DAG ids, task ids, XCom keys and Asset alias of this project's DAGs, tasks in the
order they run. The DAG files, their task callables, the report and the CLI all name them
from here."""

from __future__ import annotations

DAG_ID = "ndmg_participant"

DISCOVER = "discover"
WRITE_JOB_SPECS = "write_job_specs"
CANARY = "canary"
PLAN_SCANS = "plan_scans"
PILOT_SCAN = "pilot_scan"
RELEASE_SCANS = "release_scans"
CHOOSE_BACKEND = "choose_backend"
RUN_SCAN = "run_scan"
RUN_SCAN_LOCAL = "run_scan_local"
VERIFY_AND_REPORT = "verify_and_report"

REPORTS_ALIAS = "ndmg-reports"  # the Asset alias of every dataset's reports: ndmg_participant emits, ndmg_group listens

GROUP_DAG_ID = "ndmg_group"  # the group level: connectomes across a run's scans
FIND_REPORT = "find_report"
COMPARE_CONNECTOMES = "compare_connectomes"
GROUP_TASK_ORDER = (FIND_REPORT, COMPARE_CONNECTOMES)

WAIT_FOR_OUTPUT = "wait_for_output"  # a schedule's run (ndmg_schedule_<name>): take the output's lease
RUN_PARTICIPANT = "run_participant"  # then start its ndmg_participant run and wait for it

INFRA_DAG_ID = "ndmg_infra"  # the Batch stack from the UI
DEPLOY_BATCH_STACK = "deploy_batch_stack"

TASK_ORDER = (
    DISCOVER,
    WRITE_JOB_SPECS,
    CANARY,
    PLAN_SCANS,
    PILOT_SCAN,
    RELEASE_SCANS,
    CHOOSE_BACKEND,
    RUN_SCAN,
    RUN_SCAN_LOCAL,
    VERIFY_AND_REPORT,
)
TASK_ORDERS = {DAG_ID: TASK_ORDER, GROUP_DAG_ID: GROUP_TASK_ORDER, INFRA_DAG_ID: (DEPLOY_BATCH_STACK,)}  # per DAG, in run order
BACKEND_TASKS = {"aws_batch": RUN_SCAN, "local": RUN_SCAN_LOCAL}  # who runs the scans
SCAN_TASKS = (PILOT_SCAN, RUN_SCAN, RUN_SCAN_LOCAL)  # one mapped task instance per scan
BATCH_SCAN_TASKS = (PILOT_SCAN, RUN_SCAN)  # the scans' Batch jobs
JOB_TASKS = (CANARY, PILOT_SCAN, RUN_SCAN)  # every task that owns a Batch job

JOB_XCOM_KEY = "batch_job"  # a jobs.SubmittedJob, pushed after SubmitJob (triggerer route: after the burst)
THROTTLED_XCOM_KEY = "throttled"  # a jobs.ThrottledPolls: DescribeJobs polls Batch throttled, if any
LOCAL_JOB_XCOM_KEY = "local_job"  # a jobs.LocalJob, pushed by run_scan_local
CANARY_JOB_XCOM_KEY = "canary_job"  # the canary.CanaryJob of write_job_specs, or None
SETTLEMENT_XCOM_KEY = "settlement"  # where plan_scans wrote the settled run (runplan.Settlement)
