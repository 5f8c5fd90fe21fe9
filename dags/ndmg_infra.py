"""ndmg_infra: create or update the AWS Batch setup (CloudFormation stack) from the UI.

One task: deploy the CloudFormation template (plugins/ndmg_cloud/infra/ndmg-batch.yaml) with the form's values; a second run with the same
values changes nothing. Returns the job queue and job definition to use in ndmg_participant.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from ndmg_cloud.orchestration import steps


@dag(
    dag_id="ndmg_infra",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "image": Param(type="string", title="Scan image URI", description="ECR URI of ndmg-cloud-m2g (or -lite).", minLength=1),
        "subnets": Param(type="array", title="Subnets", description="Subnet ids for the instances.", items={"type": "string"}, minItems=1),
        "security_groups": Param(
            type="array", title="Security groups", description="Security group ids.", items={"type": "string"}, minItems=1
        ),
        "input_bucket": Param(type="string", title="Input bucket", description="Bucket of the BIDS datasets.", minLength=3),
        "input_prefix": Param(
            "",
            type="string",
            title="Input prefix",
            description="Datasets' folder in the bucket, ending in / (empty = all of it); jobs never write into its subject folders.",
            pattern="^$|^([A-Za-z0-9!_.*'()+=@,-]+/)+$",
        ),
        "output_bucket": Param(type="string", title="Output bucket", description="Bucket for graphs, specs and reports.", minLength=3),
        "output_prefix": Param(
            type="string",
            title="Output prefix",
            description="Outputs' folder in the bucket, ending in / (e.g. ndmg/); runs set output_uri under it.",
            pattern="^([A-Za-z0-9!_.*'()+=@,-]+/)+$",
        ),
        "max_vcpus": Param(256, type="integer", minimum=2, title="Max vCPUs", description="2 per running scan."),
        "root_volume_gb": Param(
            100,
            type="integer",
            minimum=30,
            title="Root volume (GiB)",
            description="Per instance: the scan image plus each running scan's work folder (m2g writes several GB).",
        ),
        "use_spot": Param(True, type="boolean", title="Spot first", description="SPOT_CAPACITY_OPTIMIZED before on-demand."),
        "stack": Param("ndmg-cloud-batch", type="string", title="Stack name", description="CloudFormation stack."),
    },
    tags=["ndmg", "infrastructure"],
    doc_md=__doc__,
)
def ndmg_infra():
    task(steps.deploy_infra_step, task_id="deploy_batch_stack", multiple_outputs=False)()  # stored once


ndmg_infra()
