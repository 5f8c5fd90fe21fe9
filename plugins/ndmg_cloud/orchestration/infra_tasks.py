"""The ``ndmg_infra`` DAG's task: deploy the Batch stack (``ndmg_cloud.infra``)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from ndmg_cloud.infra.params import InfraParams
from ndmg_cloud.orchestration.clients import AWS_CONN_ID

log = logging.getLogger(__name__)


def deploy_infra_step(params: dict[str, Any], dag_run: Any = None) -> dict[str, Any]:
    """Deploy the Batch stack the form describes, through the deployment's CloudFormation
    service role (``NDMG_CFN_SERVICE_ROLE_ARN``, ``infra.deployer``); return what a run needs
    from it. A run triggered by a user who is not a deployment admin deploys nothing
    (``infra_access``), nor one on a deployment without the service role."""
    import os

    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.providers.common.compat.sdk import AirflowFailException

    from ndmg_cloud.infra.deployer import SERVICE_ROLE_ENV, check_service_role_arn
    from ndmg_cloud.infra.stack import deploy
    from ndmg_cloud.orchestration.infra_access import run_refusal

    refusal = run_refusal(getattr(dag_run, "triggering_user_name", None))
    if refusal:
        raise AirflowFailException(refusal)
    role = os.environ.get(SERVICE_ROLE_ENV, "")
    if not role:
        raise AirflowFailException(
            f"ndmg_infra deploys only through a CloudFormation service role, and {SERVICE_ROLE_ENV} is not set: "
            "run `ndmg_cloud setup-deployer` once with an AWS administrator's credentials and set "
            f"{SERVICE_ROLE_ENV} to the ARN it prints, in the environment of the Airflow workers"
        )
    try:
        infra = InfraParams.from_params(params)
        check_service_role_arn(role)
    except ValueError as err:
        raise AirflowFailException(str(err)) from None
    cfn = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="cloudformation").get_conn()
    s3 = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="s3").get_conn()  # the input bucket's notification (watch_new_scans)
    deployment = deploy(cfn, infra, service_role_arn=role, s3=s3)
    outputs = deployment.outputs
    log.info("stack %s: %s; job_queue=%s job_definition=%s", deployment.stack, deployment.action, outputs.job_queue, outputs.job_definition)
    if outputs.new_scans_queue_url:
        log.info("uploads under s3://%s/%s are sent to %s", infra.input_bucket, infra.input_prefix, outputs.new_scans_queue_url)
    return {"action": deployment.action, **asdict(outputs)}
