"""Checks made before anything is submitted: the Batch queue and job definition exist and
can take jobs, and no other run is already processing this dataset's scans."""

from __future__ import annotations

from typing import Any

from ndmg_cloud.core.layout import S3Location
from ndmg_cloud.participant.jobs import ACTIVE, describe_jobs
from ndmg_cloud.participant.jobspec import dataset_tag, job_name_prefix, run_token
from ndmg_cloud.participant.params import RunConfig


class PreflightError(RuntimeError):
    """The run cannot start; the message names the value and what to do."""


def check_batch_setup(batch_client: Any, queue: str, definition: str) -> dict[str, Any]:
    """Check the queue and the job definition; return the definition's revision the run
    will use (the latest ACTIVE one for a bare name), so the canary checks exactly what
    every scan job runs, however long the run takes."""
    region = batch_client.meta.region_name
    queues = batch_client.describe_job_queues(jobQueues=[queue]).get("jobQueues", [])
    if not queues:
        raise PreflightError(
            f"job queue {queue!r} does not exist in {region}: create it (the seed's Batch setup) "
            "or set the job_queue param to an existing queue"
        )
    q = queues[0]
    if q.get("state") != "ENABLED" or q.get("status") not in (None, "VALID"):
        raise PreflightError(
            f"job queue {queue!r} is {q.get('state')}/{q.get('status')} ({q.get('statusReason', '')}): "
            "enable it or fix its compute environment before submitting"
        )
    if definition.startswith("arn:") or ":" in definition:
        # an ARN or name:revision names one revision; jobDefinitions takes no other filter
        described = batch_client.describe_job_definitions(jobDefinitions=[definition]).get("jobDefinitions", [])
    else:
        pages = batch_client.get_paginator("describe_job_definitions").paginate(jobDefinitionName=definition, status="ACTIVE")
        described = [d for page in pages for d in page.get("jobDefinitions", [])]
    active = [d for d in described if d.get("status", "ACTIVE") == "ACTIVE"]
    if not active:
        raise PreflightError(
            f"job definition {definition!r} does not exist (or is inactive) in {region}: register it or set the job_definition param"
        )
    return max(active, key=lambda d: d.get("revision", 0))


# Tags the deployed job definition carries (infra/ndmg-batch.yaml): where its job role reads
# datasets and writes outputs.
INPUT_LOCATION_TAG, OUTPUT_LOCATION_TAG = "ndmg:input-location", "ndmg:output-location"


def check_role_reach(definition: dict[str, Any], config: RunConfig) -> None:
    """Refuse a run whose job role cannot do what the run needs: read the dataset and the
    job specs, write the outputs, and never into the input's subject folders. The deployed
    job definition names the role's locations in its tags; one without them (registered by
    hand) is not checked here (the canary still is)."""
    tags = definition.get("tags") or {}
    if INPUT_LOCATION_TAG not in tags or OUTPUT_LOCATION_TAG not in tags:
        return
    name = definition.get("jobDefinitionName", "the job definition")
    inputs, outputs = S3Location.parse(tags[INPUT_LOCATION_TAG]), S3Location.parse(tags[OUTPUT_LOCATION_TAG])
    if not inputs.contains(config.input_root):
        raise PreflightError(
            f"the dataset {config.input_root} lies outside {inputs}, the only place the job role of {name!r} "
            f"may read: set bucket/bidsdir to a dataset under it, or deploy with --input-bucket/--input-prefix covering it"
        )
    where = [("output location", config.output_root), ("jobdir", S3Location.parse(config.jobdir))]
    for what, location in where:
        if not outputs.contains(location):
            raise PreflightError(
                f"the run's {what} {location} lies outside {outputs}, the only place the job role of {name!r} "
                f"may write (and read job specs): set output_uri to a folder under it, e.g. "
                f"output_uri={outputs.uri(config.dataset + '/')}, and leave jobdir empty"
            )
    if inputs.contains(config.output_root):
        raise PreflightError(
            f"the run's output location {config.output_root} lies inside {inputs}, whose subject folders the job "
            f"role of {name!r} may never write: set output_uri outside it, under {outputs}"
        )


def other_runs_in_flight(batch_client: Any, config: RunConfig) -> list[dict[str, Any]]:
    """Active jobs of this dataset in the queue that another run submitted."""
    own = run_token(config.run_id)
    prefix = job_name_prefix(config.dataset)
    paginator = batch_client.get_paginator("list_jobs")
    pages = paginator.paginate(jobQueue=config.job_queue, filters=[{"name": "JOB_NAME", "values": [prefix + "*"]}])
    candidates = [
        job["jobId"]
        for page in pages
        for job in page.get("jobSummaryList", [])
        if job.get("status") in ACTIVE and not job["jobName"].endswith("-" + own)
    ]
    # the name prefix of dataset "ds" also matches "ds-001": the dataset tag decides
    described = describe_jobs(batch_client, candidates)
    return [job for job in described.values() if (job.get("tags") or {}).get("dataset") == dataset_tag(config.dataset)]


def preflight(batch_client: Any, config: RunConfig) -> str:
    """Refuse a run that cannot start; return the job definition revision ARN it will use."""
    definition = check_batch_setup(batch_client, config.job_queue, config.job_definition)
    check_role_reach(definition, config)
    others = other_runs_in_flight(batch_client, config)
    if others:
        names = ", ".join(j["jobName"] for j in others[:3])
        raise PreflightError(
            f"{len(others)} jobs of dataset {config.dataset!r} are still active in queue "
            f"{config.job_queue!r} from another run ({names}...): a second run now would pay for "
            "the same scans twice. Wait for that run to end, or cancel it, then trigger again."
        )
    return str(definition["jobDefinitionArn"])
