"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import NoReturn

import pytest

from ndmg_cloud.cli.airflowapi import Airflow, NotFound
from ndmg_cloud.participant.jobs import SubmittedJob
from ndmg_cloud.participant.jobspec import run_token

from conftest import wait_for

INSTALL_TOOLS = "scripts/install-test-tools.sh (make test runs it; as root on Debian it installs them)"


def require_tool(tool: str, found: bool, package: str) -> None:
    """Skip the test, with one line naming ``tool`` and how to install it, when the program it
    drives is missing; CI (``NDMG_REQUIRE_TEST_TOOLS=1``, set by .ci/run) fails instead."""
    if not found:
        missing_tool(tool, package)


def missing_tool(tool: str, package: str) -> NoReturn:
    message = f"{tool} is not installed: apt-get install {package}, or run {INSTALL_TOOLS}"
    if os.environ.get("NDMG_REQUIRE_TEST_TOOLS") == "1":
        pytest.fail(message + " (NDMG_REQUIRE_TEST_TOOLS=1: CI runs every test)", pytrace=False)
    pytest.skip(message)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def postgres_bin() -> Path | None:
    """The PostgreSQL server's programs (Debian's postgresql package), newest version first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name), reverse=True)
    return found[0].parent if found else None


def read_json(s3, where: str, bucket: str | None = None):
    """The JSON document at an s3:// URI, or at key ``where`` of ``bucket``."""
    from ndmg_cloud.core.s3 import read_json_at

    return read_json_at(s3, where if where.startswith("s3://") else f"s3://{bucket}/{where}")


def count_calls(client) -> Counter:
    """AWS API calls ``client`` makes from now on, by operation name."""
    calls: Counter = Counter()
    client.meta.events.register("before-call.*.*", lambda model, **_: calls.update([model.name]))
    return calls


def setup_argv(subnets: list[str], groups: list[str], *extra: str, image: str = "ndmg-cloud-m2g:0.3.0") -> list[str]:
    """``ndmg_cloud setup`` with the required flags (inputs in lab-data, outputs under
    lab-results/ndmg/), then ``extra``."""
    return [
        "setup",
        "--image",
        image,
        "--subnets",
        *subnets,
        "--security-groups",
        *groups,
        "--input-bucket",
        "lab-data",
        "--output-bucket",
        "lab-results",
        "--output-prefix",
        "ndmg/",
        *extra,
    ]


def submit(batch, name: str = "ds-sub-01-abcdef12", tags: dict[str, str] | None = None) -> str:
    """A job on the local Batch's queue and definition (conftest.batch_env); its id."""
    return batch.submit_job(jobName=name, jobQueue="ndmg-queue", jobDefinition="ndmg", tags=tags or {})["jobId"]


def scan_of(api, run_id: str, ti: dict) -> str:
    """The scan of a mapped scan task: its label (map_index_template, rendered by a worker),
    or on the triggerer route, where a task its trigger ends never runs on a worker, the scan
    its ``batch_job`` XCom names (pushed right after SubmitJob)."""
    label = ti.get("rendered_map_index")
    if label and not str(label).isdigit():
        return str(label)
    return SubmittedJob.from_xcom(api.xcom(run_id, ti["task_id"], "batch_job", ti["map_index"])).scan_id


def scan_states(api, run_id: str, task_id: str = "run_scan") -> dict[str, str]:
    """Each scan task's state, by scan id."""
    return {scan_of(api, run_id, ti): ti["state"] for ti in api.task_instances(run_id) if ti["task_id"] == task_id}


def submissions(names: list[str], run_id: str) -> dict[str, int]:
    """SubmitJob calls per scan of the run (job names ``ds-<scan>-<run token>``)."""
    token, counts = run_token(run_id), {}
    for name in names:
        if name.endswith(f"-{token}") and "-canary-" not in name:
            scan = name.split("-", 1)[1].removesuffix(f"-{token}")  # after the dataset's name
            counts[scan] = counts.get(scan, 0) + 1
    return counts


def submitted(batch_behaviour, run_id: str) -> int:
    """Scans of the run whose job Batch has accepted."""
    return sum(submissions(batch_behaviour.submitted, run_id).values())


def scan_once_submitted(api: Airflow, batch_behaviour, run_id: str, ti: dict, scans: int) -> str:
    """The scan of task ``ti`` once Batch has all ``scans`` jobs of the run: its label, or on
    the triggerer route, where a scan task is deferred before its trigger submits, the scan
    its ``batch_job`` XCom names."""

    def named() -> str | None:
        try:
            return scan_of(api, run_id, ti)
        except NotFound:
            return None

    assert wait_for(lambda: named() is not None and submitted(batch_behaviour, run_id) == scans, timeout=60)
    return str(named())


def stack_params(network, **extra):
    """The Batch stack's InfraParams for the local endpoint's network: inputs in lab-data,
    outputs under lab-results/ndmg/, then ``extra``."""
    from ndmg_cloud.infra.params import InfraParams

    subnets, groups = network
    given = {
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ndmg-cloud-m2g:0.3.0",
        "subnets": subnets,
        "security_groups": groups,
        "input_bucket": "lab-data",
        "output_bucket": "lab-results",
        "output_prefix": "ndmg/",
        **extra,
    }
    return InfraParams(**given)


def notified_queue(s3, bucket: str, queue: str, prefix: str) -> str:
    """A queue that S3 notifies of every object created under ``prefix`` of ``bucket``, set up
    by hand as a lab would (the notification's Id is the queue's name; it replaces the
    bucket's notifications); its URL."""
    import boto3

    sqs = boto3.client("sqs", region_name=s3.meta.region_name, endpoint_url=s3.meta.endpoint_url)
    url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"Id": queue, "QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": rule}]
        },
    )
    return str(url)
