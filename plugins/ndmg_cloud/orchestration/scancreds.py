"""Short-lived credentials for a scan on the ``local`` backend, scoped like a Batch job's role.

A Batch job gets S3 access from its job role only. A local scan's runner would otherwise hold
the worker's own AWS keys, and any process of the scan could read them (its environment,
``/proc/<parent>/environ``). Instead the worker asks STS for credentials that expire with
the scan and allow only what ``infra.iam.job_role_policy`` allows for this run (read the
dataset and the job specs, write the scan outputs and the canary's findings):

- ``NDMG_LOCAL_SCAN_ROLE_ARN`` set: ``AssumeRole`` of that role, with the run's policy as the
  session policy (the deployment's choice; works from an instance or task role);
- else ``GetFederationToken`` with the run's policy (works for an IAM user's keys, and on
  the embedded stack's local endpoint).

Either way the runner's environment holds these and never the worker's keys.
"""

from __future__ import annotations

import json
import os

from ndmg_cloud.infra.iam import job_role_policy
from ndmg_cloud.participant.params import RunConfig

SCAN_ROLE_ENV = "NDMG_LOCAL_SCAN_ROLE_ARN"
ROLE_SESSION_MAX = 3600  # AssumeRole's default maximum session
FEDERATION_MIN, FEDERATION_MAX = 900, 43200


def scan_credentials(config: RunConfig, scan_id: str) -> dict[str, str]:
    """The environment variables of a scan's short-lived, scoped credentials."""
    from airflow.providers.amazon.aws.hooks.sts import StsHook

    from ndmg_cloud.orchestration.clients import AWS_CONN_ID

    sts = StsHook(aws_conn_id=AWS_CONN_ID).conn
    policy = json.dumps(job_role_policy(config), separators=(",", ":"))
    seconds = config.job_timeout_minutes * 60
    role = os.environ.get(SCAN_ROLE_ENV, "").strip()
    if role:
        answer = sts.assume_role(
            RoleArn=role, RoleSessionName=f"ndmg-scan-{scan_id}"[:64], Policy=policy, DurationSeconds=min(seconds, ROLE_SESSION_MAX)
        )
    else:
        duration = min(max(seconds, FEDERATION_MIN), FEDERATION_MAX)
        answer = sts.get_federation_token(Name=f"ndmg-{scan_id}"[:32], Policy=policy, DurationSeconds=duration)
    credentials = answer["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }
