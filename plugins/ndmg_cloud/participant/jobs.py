"""What happened to each scan's job, whichever backend ran it, as one ``JobRecord``.

``aws_batch``: DescribeJobs, 100 ids a call (the API's limit). ``local``: the record the
``run_scan_local`` task pushed after its runner subprocess ended.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ndmg_cloud.participant.cost import job_cost_usd
from ndmg_cloud.participant.jobspec import PROJECT, PROJECT_TAG, run_tag, run_token
from ndmg_cloud.scan.scrub import redact

log = logging.getLogger(__name__)

DESCRIBE_BATCH = 100
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
LOG_GROUP = "/aws/batch/job"
LOG_TAIL_LINES = 20
# statusReason prefixes this project writes when it stops a job itself
STUCK_REASON = "ndmg-cloud: stuck RUNNABLE"
CANCEL_REASON = "ndmg-cloud: cancelled"
FAILURE_CLASSES = (
    "spot_interruption",
    "out_of_memory",
    "image_pull",
    "timeout",
    "stuck_runnable",
    "cancelled",
    "pipeline_error",
    "incomplete",  # still running (or gone) when the run ended
    # no job at all: the canary failed, a pilot failed, or the run stopped before submitting
    "canary_failed",
    "pilot_failed",
    "not_submitted",
)
CANARY_FAILED, PILOT_FAILED, NOT_SUBMITTED = FAILURE_CLASSES[-3:]


def jobs_named(client: Any, queue: str, name: str) -> list[dict[str, Any]]:
    """Job summaries of ``queue`` whose name is ``name`` (a trailing ``*``: starts with it).
    With a filter ListJobs ignores jobStatus and lists every status, newest first."""
    jobs, token = [], None
    while True:
        page = client.list_jobs(jobQueue=queue, filters=[{"name": "JOB_NAME", "values": [name]}], **({"nextToken": token} if token else {}))
        jobs += page.get("jobSummaryList", [])
        token = page.get("nextToken")
        if not token:
            return jobs


def terminate_job(client: Any, job_id: str, why: str) -> None:
    """TerminateJob with this project's reason (Batch cancels a job not yet STARTING, stops
    one STARTING or RUNNING, and leaves an ended one as it is)."""
    client.terminate_job(jobId=job_id, reason=f"{CANCEL_REASON} ({why})"[:250])


def not_of_run(job: dict[str, Any], run_id: str) -> str | None:
    """Why a described Batch job is not one run ``run_id`` submitted, or None if it is: it
    carries the project tag, the run's ``run_id`` tag and the run's token in its name."""
    tags = job.get("tags") or {}
    if tags.get(PROJECT_TAG) != PROJECT:
        return f"it has no {PROJECT_TAG}={PROJECT} tag"
    if tags.get("run_id") != run_tag(run_id):
        return f"its run_id tag is {tags.get('run_id')!r}"
    if not str(job.get("jobName", "")).endswith(f"-{run_token(run_id)}"):
        return f"its name {job.get('jobName')!r} does not end in this run's token"
    return None


def terminate_run_job(client: Any, job_id: str, run_id: str, why: str) -> bool:
    """TerminateJob for a job of run ``run_id`` only: the job is described first, and one
    that is not the run's (a job id taken from an XCom someone rewrote) is left alone, with
    a warning. Whether it was terminated."""
    described = client.describe_jobs(jobs=[job_id]).get("jobs") or []
    problem = not_of_run(described[0], run_id) if described else "Batch does not know it"
    if problem:
        log.warning("not terminating Batch job %s: it is not a job of run %s (%s)", job_id, run_id, problem)
        return False
    terminate_job(client, job_id, why)
    return True


@dataclass
class JobRecord:
    job_id: str
    status: str  # Batch's words: SUCCEEDED, FAILED, RUNNING, ... or NOT_FOUND
    attempts: int = 0
    started_ms: int | None = None
    stopped_ms: int | None = None
    reason: str | None = None
    failure_class: str | None = None
    log_url: str | None = None
    log_stream: str | None = None
    cost_usd: float = 0.0
    log_tail: list[str] = field(default_factory=list)

    @property
    def started_at(self) -> str | None:
        return _iso(self.started_ms)

    @property
    def stopped_at(self) -> str | None:
        return _iso(self.stopped_ms)

    @property
    def duration_s(self) -> float | None:
        if self.started_ms and self.stopped_ms:
            return round((self.stopped_ms - self.started_ms) / 1000, 3)
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def describe_jobs(batch_client: Any, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """DescribeJobs for many ids, 100 a call."""
    jobs: dict[str, dict[str, Any]] = {}
    for start in range(0, len(job_ids), DESCRIBE_BATCH):
        chunk = job_ids[start : start + DESCRIBE_BATCH]
        for job in batch_client.describe_jobs(jobs=chunk).get("jobs", []):
            jobs[job["jobId"]] = job
    return jobs


def batch_records(batch_client: Any, job_ids: dict[str, str]) -> dict[str, JobRecord]:
    """scan id -> record, for the Batch jobs submitted in a run."""
    described = describe_jobs(batch_client, sorted(set(job_ids.values())))
    region = batch_client.meta.region_name
    records = {}
    for scan_id, job_id in job_ids.items():
        job = described.get(job_id)
        if job is None:
            records[scan_id] = JobRecord(job_id, "NOT_FOUND", reason=f"Batch job {job_id} not found")
        else:
            records[scan_id] = batch_record(job, region)
    return records


def batch_record(job: dict[str, Any], region: str) -> JobRecord:
    attempts = job.get("attempts") or []
    vcpus = _vcpus(job)
    stream = (job.get("container") or {}).get("logStreamName")
    if attempts and not stream:
        stream = (attempts[-1].get("container") or {}).get("logStreamName")
    status = job.get("status", "UNKNOWN")
    return JobRecord(
        job_id=job["jobId"],
        status=status,
        attempts=len(attempts),
        started_ms=job.get("startedAt"),
        stopped_ms=job.get("stoppedAt"),
        reason=failure_reason(job) if status == FAILED else None,
        failure_class=classify_failure(job) if status == FAILED else None,
        log_url=log_url(region, stream),
        log_stream=stream,
        cost_usd=round(sum(job_cost_usd(a.get("startedAt"), a.get("stoppedAt"), vcpus) for a in attempts), 6),
    )


# What the scan tasks push for the report (XCom values: plain JSON, read back with from_xcom).
def xcom_json(value: Any) -> Any:
    """An XCom value as pushed: one a trigger's ``TaskSuccessEvent`` carried is stored as JSON
    text by Airflow 3.3 (``XComModel.set`` serializes it; the Execution API and the REST API
    hand the stored value back as is), so a reader gets a string where a worker's push gives
    the dict."""
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class SubmittedJob:
    """XCom ``batch_job``: the Batch job of a scan (or the canary), pushed right after SubmitJob."""

    scan_id: str
    job_id: str

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: dict[str, Any] | str) -> SubmittedJob:
        body = xcom_json(value)
        return cls(str(body["scan_id"]), str(body["job_id"]))


@dataclass(frozen=True)
class ThrottledPolls:
    """XCom ``throttled``: how many of a scan's DescribeJobs polls Batch throttled."""

    scan_id: str
    polls: int

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: dict[str, Any] | str) -> ThrottledPolls:
        body = xcom_json(value)
        return cls(str(body["scan_id"]), int(body["polls"]))


@dataclass(frozen=True)
class LocalJob:
    """XCom ``local_job``: what a local scan's runner subprocess did (``run_scan_local``)."""

    scan_id: str
    record: JobRecord

    def to_xcom(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "record": self.record.to_dict()}

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> LocalJob:
        return cls(str(value["scan_id"]), JobRecord(**value["record"]))


def local_records(jobs: list[LocalJob]) -> dict[str, JobRecord]:
    """scan id -> record, from the ``local_job`` XComs of ``run_scan_local``."""
    return {job.scan_id: job.record for job in jobs}


def log_url(region: str, stream: str | None, group: str = "/aws/batch/job") -> str | None:
    if not stream:
        return None

    # The console wants the group and stream URL-encoded twice, with % written as $25.
    def enc(s: str) -> str:
        return quote(quote(s, safe=""), safe="").replace("%", "$")

    return (
        f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
        f"#logsV2:log-groups/log-group/{enc(group)}/log-events/{enc(stream)}"
    )


def failure_reason(job: dict[str, Any]) -> str:
    """One readable line from a failed job's description."""
    container = job.get("container") or {}
    attempts = job.get("attempts") or []
    last = (attempts[-1].get("container") if attempts else None) or {}
    parts = [job.get("statusReason") or "job failed"]
    exit_code = last.get("exitCode", container.get("exitCode"))
    if exit_code is not None:
        parts.append(f"exit code {exit_code}")
    reason = last.get("reason") or container.get("reason")
    if reason:
        parts.append(reason)
    return "; ".join(parts)


def classify_failure(job: dict[str, Any]) -> str:
    """Why a Batch job failed, as one of FAILURE_CLASSES, from DescribeJobs alone."""
    status_reason = job.get("statusReason") or ""
    attempts = job.get("attempts") or []
    last = (attempts[-1].get("container") if attempts else None) or {}
    container = {**(job.get("container") or {}), **{k: v for k, v in last.items() if v is not None}}
    container_reason = container.get("reason") or ""
    exit_code = container.get("exitCode")
    text = f"{status_reason} {container_reason}"
    if status_reason.startswith(STUCK_REASON):
        return "stuck_runnable"
    if status_reason.startswith(CANCEL_REASON) or "Task killed by the user" in status_reason:
        return "cancelled"
    last_attempt_reason = (attempts[-1].get("statusReason") or "") if attempts else ""
    if status_reason.startswith("Host EC2") or last_attempt_reason.startswith("Host EC2"):
        return "spot_interruption"  # the instance went away: no exit code to go by
    # a timeout or a cancel ends in SIGKILL (137) too: check them before out-of-memory
    if "duration exceeded timeout" in status_reason or "Job attempt duration exceeded" in text:
        return "timeout"
    if "cancel" in status_reason.lower() or "Terminated by" in status_reason:
        return "cancelled"
    if exit_code == 137 or "OutOfMemoryError" in text or "OutOfMemory" in text:
        return "out_of_memory"
    if any(word in text for word in ("CannotPullContainer", "CannotInspectContainer", "ImagePull", "pull image")):
        return "image_pull"
    return "pipeline_error"


def fetch_log_tails(logs_client: Any, records: dict[str, JobRecord], lines: int = LOG_TAIL_LINES) -> None:
    """The last log lines of each failed Batch job (one GetLogEvents per failed job)."""
    for record in records.values():
        if record.status != FAILED or not record.log_stream:
            continue
        try:
            events = logs_client.get_log_events(
                logGroupName=LOG_GROUP, logStreamName=record.log_stream, limit=lines, startFromHead=False
            ).get("events", [])
        except Exception as err:  # logs are a courtesy: never fail the report over them
            record.log_tail = [f"(log unavailable: {err.__class__.__name__})"]
            continue
        record.log_tail = [redact(e.get("message", "")) for e in events]  # a job's output may print a key


def _vcpus(job: dict[str, Any]) -> int:
    container = job.get("container") or {}
    for req in container.get("resourceRequirements") or ():
        if req.get("type") == "VCPU":
            return int(float(req["value"]))
    return int(container.get("vcpus") or 2)
