"""ndmg_group: the group level of a dataset's connectomes (the BIDS-App "group" level).

find_report (the run report to use) -> compare_connectomes (per parcellation: graph
statistics of every scan, the mean connectome, discriminability with its permutation
p-value; group.json, group.csv and group.html under <output>/group/<parcellation>/).

Scheduled on the reports Asset: every ndmg_participant run that succeeds triggers it for
its dataset. Trigger it by hand with a run's report.json or a dataset's output location
(`ndmg_cloud group RUN` or `--output`), e.g. after a run with failed scans: they are
listed in the outputs with the reason, never dropped.
Wiring only: the logic is in ndmg_cloud.group, the task callables in ndmg_cloud.orchestration.group_tasks.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetAlias, Param, dag, task

from ndmg_cloud.group.params import GROUP_PARAM_SCHEMAS
from ndmg_cloud.orchestration import group_tasks
from ndmg_cloud.orchestration.taskids import COMPARE_CONNECTOMES, FIND_REPORT, GROUP_DAG_ID, REPORTS_ALIAS


@dag(
    dag_id=GROUP_DAG_ID,
    schedule=AssetAlias(REPORTS_ALIAS),  # any dataset's reports, as ndmg_participant emits them
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=2,
    params={name: Param(**schema) for name, schema in GROUP_PARAM_SCHEMAS.items()},
    tags=["ndmg", "connectome", "group"],
    doc_md=__doc__,
)
def ndmg_group():
    report = task(group_tasks.find_report_step, task_id=FIND_REPORT)()
    task(group_tasks.compare_connectomes_step, task_id=COMPARE_CONNECTOMES, multiple_outputs=False)(report)  # stored once


ndmg_group()
