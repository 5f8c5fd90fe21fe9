"""The ``ndmg_infra`` DAG's task: deploy the Batch stack (``ndmg_cloud.infra``)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from ndmg_cloud.infra.params import InfraParams
from ndmg_cloud.orchestration.clients import AWS_CONN_ID

log = logging.getLogger(__name__)


def deploy_infra_step(params: dict[str, Any]) -> dict[str, Any]:
    """Deploy the Batch stack the form describes; return what a run needs from it."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from ndmg_cloud.infra.stack import deploy

    cfn = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="cloudformation").get_conn()
    deployment = deploy(cfn, InfraParams.from_params(params))
    outputs = deployment.outputs
    log.info("stack %s: %s; job_queue=%s job_definition=%s", deployment.stack, deployment.action, outputs.job_queue, outputs.job_definition)
    return {"action": deployment.action, **asdict(outputs)}
