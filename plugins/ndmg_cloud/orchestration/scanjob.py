"""One scan's Batch job, as both submit routes make it (``route.py``): its checked task
argument and SubmitJob request, the bounded SubmitJob client, and the lookup of a job an
earlier attempt created.

Only this module builds a scan's request from what a task is handed, so the worker's
``ScanBatchOperator`` and the triggerer's ``ScanSubmitTrigger`` check exactly the same things.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from ndmg_cloud.core.spec import SubmitJob
from ndmg_cloud.participant.jobs import jobs_named
from ndmg_cloud.participant.jobspec import read_spec, scan_submission
from ndmg_cloud.participant.params import RunConfig
from ndmg_cloud.participant.runplan import PlanRef, ScanTask

CLOCK_SKEW_SECONDS = 300  # between this machine's clock and Batch's createdAt

# SubmitJob's own client, bounded so that a call, retries included, is over within
# SUBMIT_WINDOW_SECONDS of its start: after that, an attempt that died during its call (a task
# runner that lives on in its own process group, a triggerer's runner) can no longer create a
# job, and the next attempt may look for the job by name.
SUBMIT_ATTEMPTS, SUBMIT_CONNECT_TIMEOUT, SUBMIT_READ_TIMEOUT = 3, 5, 20
STANDARD_MODE_MAX_BACKOFF = 20  # botocore's "standard" retry mode waits at most 20 s between attempts
WORKER_CLOCK_MARGIN = 10  # between the clocks of the machine that died and the one going on
SUBMIT_CONFIG = Config(
    connect_timeout=SUBMIT_CONNECT_TIMEOUT,
    read_timeout=SUBMIT_READ_TIMEOUT,
    retries={"mode": "standard", "total_max_attempts": SUBMIT_ATTEMPTS},
)
SUBMIT_WINDOW_SECONDS = (
    SUBMIT_ATTEMPTS * (SUBMIT_CONNECT_TIMEOUT + SUBMIT_READ_TIMEOUT)
    + (SUBMIT_ATTEMPTS - 1) * STANDARD_MODE_MAX_BACKOFF
    + WORKER_CLOCK_MARGIN
)


@dataclass(frozen=True)
class PreparedScan:
    """A scan task's checked argument, its run's configuration and its SubmitJob request."""

    task: ScanTask
    config: RunConfig
    job_spec_uri: str
    submission: SubmitJob
    spec_sha256: str


def prepare_scan(s3_client: Any, scan_task: Any, discovery: Any, run_id: str, role: str, map_index: int) -> PreparedScan:
    """Check the task's argument (its seal, for this run, list and map index) and the run's
    configuration (discover's sealed XCom), read the scan's job spec (sealed) and build the
    request from the configuration and the scan id alone. ``ValueError`` (a ``BrokenSeal``,
    a spec that does not read) or ``NoSealKey`` saying why not."""
    task = ScanTask.verified(scan_task, run_id, role, map_index)
    config = PlanRef.from_dict(discovery, run_id).config
    spec, sha256 = read_spec(s3_client, config, task.scan_id)
    return PreparedScan(task, config, spec.spec_uri, scan_submission(config, task.scan_id, sha256), sha256)


def job_named_since(batch_client: Any, queue: str, name: str, since: float) -> str | None:
    """The first job of ``queue`` named ``name`` created since ``since`` (epoch seconds, less
    a clock-skew margin); ListJobs with a JOB_NAME filter lists every status."""
    earliest_ms = (since - CLOCK_SKEW_SECONDS) * 1000
    found = [job for job in jobs_named(batch_client, queue, name) if job.get("createdAt", 0) >= earliest_ms]
    return str(min(found, key=lambda job: job.get("createdAt", 0))["jobId"]) if found else None
