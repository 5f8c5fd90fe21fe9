"""The job spec builder: one ``JobSpec`` (``core.spec``) per valid scan of a run, with the
exact SubmitJob payload (valid for ``aws batch submit-job --cli-input-json``), job names,
tags and the names of the run's own files in its job dir.
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.pipelines import get_pipeline
from ndmg_cloud.core.s3 import put_json, read_at
from ndmg_cloud.core.spec import (
    JOB_SPEC_ENV,
    JOB_SPEC_SHA256_ENV,
    RUNNER_COMMAND,
    WORK_INPUT,
    WORK_OUTPUT,
    JobSpec,
    PipelineCall,
    SubmitJob,
)
from ndmg_cloud.participant.params import RunConfig
from ndmg_cloud.participant.seal import BrokenSeal, seal, unseal

JOB_NAME_MAX = 128
DATASET_IN_NAME = 40  # characters of the dataset name kept at the front of job names
# Batch retries inside the job on a Spot reclaim ("Host EC2 (instance i-...) terminated.")
# and exits on anything else, so a reclaim costs one more attempt, never a resubmission.
RETRY_STRATEGY = {
    "attempts": 3,
    "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"},
        {"onReason": "*", "action": "EXIT"},
    ],
}
_NOT_IN_JOB_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_NOT_IN_TAG = re.compile(r"[^\w .:/=+\-@]+")


PROJECT_TAG, PROJECT = "project", "ndmg-cloud"  # on every job this project submits


def run_token(run_id: str) -> str:
    """Eight hex characters that tell this run's jobs from another run's."""
    return hashlib.sha1(run_id.encode()).hexdigest()[:8]


def _dataset_part(dataset: str) -> str:
    return _NOT_IN_JOB_NAME.sub("-", dataset).strip("-_")[:DATASET_IN_NAME] or "dataset"


def job_name_prefix(dataset: str) -> str:
    """What every job name of a dataset starts with (to find a dataset's jobs in a queue)."""
    return _dataset_part(dataset) + "-"


def job_name(dataset: str, scan_id: str, run_id: str) -> str:
    """``<dataset>-<scan id>-<run token>``: legal for Batch, readable, unique per scan and run."""
    token = run_token(run_id)
    head = job_name_prefix(dataset)
    scan = _NOT_IN_JOB_NAME.sub("-", scan_id)
    name = f"{head}{scan}-{token}"
    if len(name) <= JOB_NAME_MAX:
        return name
    # Too long: keep the end of the scan id (it tells scans apart) and add a hash of it.
    digest = hashlib.sha1(scan_id.encode()).hexdigest()[:8]
    room = JOB_NAME_MAX - len(head) - len(digest) - len(token) - 2
    return f"{head}{scan[-room:].lstrip('-_')}-{digest}-{token}"


def _tag(value: str) -> str:
    return _NOT_IN_TAG.sub("-", value)[:256]


def run_tag(run_id: str) -> str:
    """The ``run_id`` tag every job of a run carries."""
    return _tag(run_id)


def dataset_tag(dataset: str) -> str:
    """The ``dataset`` tag every job of a dataset carries."""
    return _tag(dataset)


def spec_uri(config: RunConfig, scan_id: str) -> str:
    return f"{config.jobdir}{scan_id}.json"  # jobdir ends in "/"


def submission_uri(config: RunConfig, scan_id: str) -> str:
    """Where the triggerer route records what a scan task did about its SubmitJob (the intent
    before the call, the job after it): ``<jobdir>submission-<run token>-<scan id>.json``."""
    return run_file_uri(config, "submission", f"-{scan_id}.json")


def run_file_uri(config: RunConfig, kind: str, suffix: str) -> str:
    """A file of the run itself in its job dir, ``<jobdir><kind>-<run token><suffix>`` (the
    plan, the settlement, the released scans): named by run, as a job dir may be shared,
    and never a scan's spec (scan ids start with ``sub-``)."""
    return f"{config.jobdir}{kind}-{run_token(config.run_id)}{suffix}"


def submit_job(
    config: RunConfig,
    name: str,
    command: list[str],
    spec: str,
    tags: dict[str, str],
    timeout_seconds: int,
    spec_sha256: str | None = None,
) -> SubmitJob:
    """A SubmitJob request of this run (a scan's, or the canary's): the run's queue and job
    definition, the job spec's URI in the environment (and, at submit time, the SHA-256 of the
    spec the orchestrator checked: the runner refuses any other), the project tag on top of
    ``tags`` (the orchestrator may stop only jobs carrying it, infra/iam.py), Spot reclaims retried."""
    environment = {JOB_SPEC_ENV: spec}
    if spec_sha256:
        environment[JOB_SPEC_SHA256_ENV] = spec_sha256
    return SubmitJob(
        job_name=name,
        job_queue=config.job_queue,
        job_definition=config.job_definition,
        command=command,
        environment=environment,
        tags={PROJECT_TAG: PROJECT, **tags},
        timeout_seconds=timeout_seconds,
        retry_strategy=RETRY_STRATEGY,
    )


def scan_tags(config: RunConfig, scan_id: str) -> dict[str, str]:
    """The tags of a scan's job (the canary's too, plus ``canary=true``)."""
    return {"dataset": dataset_tag(config.dataset), "scan": _tag(scan_id), "run_id": run_tag(config.run_id), "pipeline": config.pipeline}


def scan_submission(config: RunConfig, scan_id: str, spec_sha256: str | None = None) -> SubmitJob:
    """The SubmitJob request of one scan of the run, built from the run's configuration and the
    scan id alone: ``ndmg-scan --spec <its spec>`` on the run's queue and job definition."""
    uri = spec_uri(config, scan_id)
    return submit_job(
        config,
        job_name(config.dataset, scan_id, config.run_id),
        [RUNNER_COMMAND, "--spec", uri],
        uri,
        scan_tags(config, scan_id),
        config.job_timeout_minutes * 60,
        spec_sha256,
    )


class RefusedSubmission(ValueError):
    """A SubmitJob request that is not one this run may send."""


def check_submission(config: RunConfig, submission: SubmitJob, scan_id: str, spec_sha256: str | None) -> None:
    """The last gate before SubmitJob: the run's queue and pinned job definition, and the
    command ``ndmg-scan --spec <this scan's spec>`` or the canary's self-check of it, with
    nothing else in the environment; ``RefusedSubmission`` naming what differs."""
    uri = spec_uri(config, scan_id)
    allowed = (
        [RUNNER_COMMAND, "--spec", uri],
        [RUNNER_COMMAND, "--self-check", "--spec", uri, "--result", config.outputs.canary_uri(config.run_id)],
    )
    environment = {JOB_SPEC_ENV: uri, **({JOB_SPEC_SHA256_ENV: spec_sha256} if spec_sha256 else {})}
    wrong = [
        f"{what} {given!r} (this run's is {expected!r})"
        for what, given, expected in (
            ("job queue", submission.job_queue, config.job_queue),
            ("job definition", submission.job_definition, config.job_definition),
            ("environment", submission.environment, environment),
        )
        if given != expected
    ]
    if submission.command not in allowed:
        wrong.append(f"command {submission.command!r} (this scan's is {allowed[0]!r})")
    if wrong:
        raise RefusedSubmission(f"refusing to submit a job for scan {scan_id}: {'; '.join(wrong)}")


def read_spec(s3_client: Any, config: RunConfig, scan_id: str) -> tuple[JobSpec, str]:
    """This run's job spec of ``scan_id`` (where this run put it), if its seal holds and it
    is for this scan and run; and the SHA-256 of its bytes (the runner checks it).
    ``ValueError`` (``BrokenSeal`` for a rewritten one) saying why otherwise."""
    uri = spec_uri(config, scan_id)
    raw = read_at(s3_client, uri)
    try:
        document = json.loads(raw)
    except ValueError:
        raise BrokenSeal(f"job spec {uri} is not JSON: it was not written by this run") from None
    spec = JobSpec.from_dict(unseal(document, uri, "the job spec"))
    if (spec.scan_id, spec.run_id, spec.spec_uri) != (scan_id, config.run_id, uri):
        raise BrokenSeal(
            f"job spec {uri} is for scan {spec.scan_id!r} of run {spec.run_id!r}, not scan {scan_id!r} of run {config.run_id!r}"
        )
    return spec, hashlib.sha256(raw).hexdigest()


def build_spec(config: RunConfig, scan: Scan) -> JobSpec:
    """The job spec of one valid scan."""
    if not scan.valid:
        raise ValueError(f"scan {scan.scan_id} is invalid ({scan.reason}); it gets no job spec")
    pipeline = get_pipeline(config.pipeline)
    outputs = config.outputs
    uri = spec_uri(config, scan.scan_id)
    inputs = {
        "dwi": scan.dwi,
        "bval": scan.bval,
        "bvec": scan.bvec,
        "t1w": scan.t1w,
        "dataset_description": "dataset_description.json",
    }
    return JobSpec(
        spec_uri=uri,
        run_id=config.run_id,
        dataset=config.dataset,
        scan=scan,
        inputs=inputs,
        input_root=config.input_root.uri(),
        output_root=config.output_root.uri(),
        output_prefix=f"s3://{outputs.root.bucket}/{outputs.scan_prefix(scan)}",
        manifest=f"s3://{outputs.root.bucket}/{outputs.manifest_key(scan)}",
        expected_outputs=pipeline.expected_outputs(scan, config.options),
        extra_inputs=pipeline.extra_inputs(config.options),
        pipeline=PipelineCall(
            name=pipeline.name,
            image=pipeline.image,
            options=config.options,
            command=pipeline.command(scan, config.options, WORK_INPUT, WORK_OUTPUT),
        ),
        batch=scan_submission(config, scan.scan_id),
    )


def write_specs(s3_client: Any, specs: list[JobSpec]) -> None:
    """Put many specs, each sealed for its place, 16 at a time (a rerun writes one per valid scan)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda spec: put_json(s3_client, spec.spec_uri, seal(spec.to_dict(), spec.spec_uri)), specs))


def check_no_shared_outputs(specs: list[JobSpec]) -> None:
    """Two scans must never write the same key: refuse the run before submitting if so."""
    owner: dict[str, str] = {}
    for spec in specs:
        scan_id = spec.scan_id
        keys = [spec.manifest] + [spec.output_prefix + p for p in spec.expected_outputs]
        for key in keys:
            if key in owner and owner[key] != scan_id:
                raise ValueError(f"scans {owner[key]} and {scan_id} would both write {key}")
            owner[key] = scan_id
