"""ndmg_infra: create or update the AWS Batch setup (CloudFormation stack) from the UI.

One task: deploy the CloudFormation template (plugins/ndmg_cloud/infra/ndmg-batch.yaml) with
the form's values; a second run with the same values changes nothing. Returns the job queue
and job definition to use in ndmg_participant.
Wiring only: the form is ndmg_cloud.infra.params, the task ndmg_cloud.orchestration.infra_tasks.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from ndmg_cloud.infra.params import INFRA_PARAM_SCHEMAS
from ndmg_cloud.orchestration import infra_tasks
from ndmg_cloud.orchestration.taskids import DEPLOY_BATCH_STACK, INFRA_DAG_ID


@dag(
    dag_id=INFRA_DAG_ID,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={name: Param(**schema) for name, schema in INFRA_PARAM_SCHEMAS.items()},
    tags=["ndmg", "infrastructure"],
    doc_md=__doc__,
)
def ndmg_infra():
    task(infra_tasks.deploy_infra_step, task_id=DEPLOY_BATCH_STACK, multiple_outputs=False)()  # stored once


ndmg_infra()
