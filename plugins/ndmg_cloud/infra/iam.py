"""Least-privilege IAM policy documents for a run, generated from its params.

- job role (the scan container): read the input dataset and the job specs, write (and
  replace) outputs under the output prefix's subject folders, and write the canary's
  findings (``reports/<run id>/canary.json``); nothing else.
- orchestrator role (Airflow): submit, describe, list and terminate jobs on the named
  queue and job definition; list/read the dataset and the outputs; write and read back the
  run's files in its job dir (job specs, the run plan and its settlement, the released
  scans); write reports, the group level and the derivatives description; take and
  release the run's lease; read the jobs' log streams. It never re-tags a job that already
  carries a project tag (so another team's job can never be made stoppable by it). With a
  "new scans" schedule (``--new-scans-queue``), its watcher in the triggerer also receives,
  hides and deletes the messages of that queue, and nothing else of SQS.

``ndmg-policies --bucket B --bidsdir P ... --account 123456789012`` prints both.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from ndmg_cloud.core.layout import CANARY_JSON, DESCRIPTION, GROUP, JOBS, LEASE, REPORTS, S3Location
from ndmg_cloud.core.pipelines import get_pipeline
from ndmg_cloud.participant.jobspec import PROJECT, PROJECT_TAG
from ndmg_cloud.participant.params import RunConfig, resolve

VERSION = "2012-10-17"


def _object_arn(bucket: str, key_pattern: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key_pattern}"


def _list(location: S3Location, sid: str, patterns: list[str] | None = None) -> dict[str, Any]:
    """ListBucket limited to a prefix (list calls are made on the bucket, not objects)."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": f"arn:aws:s3:::{location.bucket}",
        "Condition": {"StringLike": {"s3:prefix": patterns or [location.prefix, location.prefix + "*"]}},
    }


def _jobdir(config: RunConfig) -> S3Location:
    return S3Location.parse(config.jobdir)


def job_role_policy(config: RunConfig) -> dict[str, Any]:
    inputs, outputs = config.input_root, config.output_root
    read = [_object_arn(inputs.bucket, inputs.prefix + "*")]
    if config.jobdir.startswith("s3://"):  # the local backend's may be a folder on the worker
        jobdir = _jobdir(config)
        read.append(_object_arn(jobdir.bucket, jobdir.prefix + "*"))
    for uri in get_pipeline(config.pipeline).extra_inputs(config.options).values():
        location, _, key = uri[len("s3://") :].partition("/")
        read.append(_object_arn(location, key))
    return {
        "Version": VERSION,
        "Statement": [
            {"Sid": "ReadScanInputsAndJobSpecs", "Effect": "Allow", "Action": "s3:GetObject", "Resource": sorted(set(read))},
            # lets a missing optional file answer 404 rather than 403
            _list(inputs, "ListDatasetDescription", [inputs.prefix + DESCRIPTION]),
            {
                "Sid": "WriteScanOutputs",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": _object_arn(outputs.bucket, outputs.prefix + "sub-*"),
            },
            {
                # ndmg-scan --self-check --result (the canary job): one file per run, no reports
                "Sid": "WriteCanaryFindings",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": _object_arn(outputs.bucket, outputs.prefix + f"{REPORTS}/*/{CANARY_JSON}"),
            },
        ],
    }


def orchestrator_policy(config: RunConfig, region: str, account: str) -> dict[str, Any]:
    inputs, outputs, jobdir = config.input_root, config.output_root, _jobdir(config)
    batch = f"arn:aws:batch:{region}:{account}"
    queue = config.job_queue if config.job_queue.startswith("arn:") else f"{batch}:job-queue/{config.job_queue}"
    definition = config.job_definition if config.job_definition.startswith("arn:") else f"{batch}:job-definition/{config.job_definition}"
    definitions = [definition] if definition.count(":") > 6 else [definition, definition + ":*"]
    listings = [_list(inputs, "ListDataset"), _list(outputs, "ListOutputs")]
    if not outputs.contains(jobdir):
        listings.append(_list(jobdir, "ListJobSpecs"))
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "SubmitToTheQueue",
                "Effect": "Allow",
                "Action": "batch:SubmitJob",
                "Resource": [queue, *definitions, f"{batch}:job/*"],
            },
            {
                # SubmitJob with tags needs TagResource: only with this project's tag
                "Sid": "TagOwnJobsAtSubmit",
                "Effect": "Allow",
                "Action": "batch:TagResource",
                "Resource": f"{batch}:job/*",
                "Condition": {"StringEquals": {f"aws:RequestTag/{PROJECT_TAG}": PROJECT}},
            },
            {
                # a job that already carries a project tag (another team's project=...) is never
                # re-tagged as this project's, so it can never be made stoppable below
                "Sid": "NeverRetagAJob",
                "Effect": "Deny",
                "Action": ["batch:TagResource", "batch:UntagResource"],
                "Resource": f"{batch}:job/*",
                "Condition": {"Null": {f"aws:ResourceTag/{PROJECT_TAG}": "false"}},
            },
            {
                "Sid": "StopOnlyThisProjectsJobs",
                "Effect": "Allow",
                "Action": ["batch:TerminateJob", "batch:CancelJob"],
                "Resource": f"{batch}:job/*",
                "Condition": {"StringEquals": {f"aws:ResourceTag/{PROJECT_TAG}": PROJECT}},
            },
            {
                # these Batch reads have no resource-level permissions
                "Sid": "DescribeBatch",
                "Effect": "Allow",
                "Action": [
                    "batch:DescribeJobs",
                    "batch:ListJobs",
                    "batch:DescribeJobQueues",
                    "batch:DescribeJobDefinitions",
                    "batch:DescribeComputeEnvironments",
                ],
                "Resource": "*",
            },
            *listings,
            {
                # manifests and reports; and the run's own files in its job dir (the run plan,
                # its settlement, the released scans, the job specs, the scans' SubmitJob
                # records), read back by later tasks and the triggerer
                "Sid": "ReadManifestsReportsAndRunFiles",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": sorted({_object_arn(outputs.bucket, outputs.prefix + "*"), _object_arn(jobdir.bucket, jobdir.prefix + "*")}),
            },
            {
                "Sid": "WriteSpecsReportsAndDescription",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": sorted(
                    {
                        _object_arn(jobdir.bucket, jobdir.prefix + "*"),
                        _object_arn(outputs.bucket, outputs.prefix + f"{REPORTS}/*"),
                        _object_arn(outputs.bucket, outputs.prefix + f"{GROUP}/*"),
                        _object_arn(outputs.bucket, outputs.prefix + DESCRIPTION),
                        _object_arn(outputs.bucket, outputs.prefix + LEASE),
                    }
                ),
            },
            {
                # the run's lease is released at its end (conditional on this run holding it)
                "Sid": "ReleaseTheLease",
                "Effect": "Allow",
                "Action": "s3:DeleteObject",
                "Resource": _object_arn(outputs.bucket, outputs.prefix + LEASE),
            },
            {
                "Sid": "ReadJobLogs",
                "Effect": "Allow",
                "Action": "logs:GetLogEvents",
                "Resource": f"arn:aws:logs:{region}:{account}:log-group:/aws/batch/job:log-stream:*",
            },
        ],
    }


def new_scans_watcher_statement(queue_arn: str) -> dict[str, Any]:
    """What ``NewScansTrigger`` calls on a schedule's queue (receive_message,
    change_message_visibility_batch and delete_message_batch: IAM's actions without "Batch")."""
    if not re.fullmatch(r"arn:aws[\w-]*:sqs:[a-z0-9-]+:\d{12}:[\w-]{1,80}", queue_arn):
        raise ValueError(f"new scans queue {queue_arn[:200]!r} is not an SQS queue ARN: give the stack's NewScansQueueArn output")
    return {
        "Sid": "WatchTheQueueOfNewScans",
        "Effect": "Allow",
        "Action": ["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage"],
        "Resource": queue_arn,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ndmg-policies", description="print least-privilege IAM policies for a run")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--bidsdir", default="")
    parser.add_argument("--modif", default="derivatives/ndmg")
    parser.add_argument("--output_uri", default="")
    parser.add_argument("--jobdir", default="")
    parser.add_argument("--job_queue", default="ndmg-queue")
    parser.add_argument("--job_definition", default="ndmg")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--account", required=True, help="AWS account id (12 digits)")
    parser.add_argument("--new-scans-queue", default="", help="ARN of the queue a 'new scans' schedule of this dataset watches")
    args = parser.parse_args(argv)
    params = {k: v for k, v in vars(args).items() if k not in ("region", "account", "new_scans_queue")}
    try:
        config = resolve(params, "ndmg-policies")
        watcher = [new_scans_watcher_statement(args.new_scans_queue)] if args.new_scans_queue else []
    except ValueError as err:
        print(f"ndmg-policies: {err}", file=sys.stderr)
        return 2
    jobdir = args.jobdir or config.output_root.uri(f"{JOBS}/")
    config.jobdir = jobdir if jobdir.endswith("/") else jobdir + "/"
    orchestrator = orchestrator_policy(config, args.region, args.account)
    orchestrator["Statement"] += watcher
    print(json.dumps({"job_role": job_role_policy(config), "orchestrator_role": orchestrator}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
