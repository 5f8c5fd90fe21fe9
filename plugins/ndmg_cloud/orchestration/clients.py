"""The orchestrator's AWS clients, from the deployment's Airflow connection (``aws_default``,
or ``NDMG_AWS_CONN_ID``). Throttling (SlowDown, TooManyRequestsException) is absorbed by
botocore's adaptive retry mode."""

from __future__ import annotations

import os
from typing import Any

AWS_CONN_ID = os.environ.get("NDMG_AWS_CONN_ID", "aws_default")
RETRIES = {"mode": "adaptive", "max_attempts": 10}


def s3_client() -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    return S3Hook(aws_conn_id=AWS_CONN_ID, config=Config(retries=RETRIES)).get_conn()


def batch_client() -> Any:
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
    from botocore.config import Config

    return BatchClientHook(aws_conn_id=AWS_CONN_ID, config=Config(retries=RETRIES)).client


def logs_client() -> Any:
    from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
    from botocore.config import Config

    return AwsLogsHook(aws_conn_id=AWS_CONN_ID, config=Config(retries=RETRIES)).conn
