"""The verdict on every scan: did its job succeed AND are its manifest and graphs on S3?

One paginated listing of the output prefix, DescribeJobs in batches of 100, and one read
of each present manifest (to see that it says success).
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from ndmg_cloud.bids import Scan
from ndmg_cloud.cost import job_cost_usd
from ndmg_cloud.params import RunConfig
from ndmg_cloud.pipelines import get_pipeline
from ndmg_cloud.s3 import S3Object, get_json, list_objects

log = logging.getLogger(__name__)
DESCRIBE_BATCH = 100
STATUSES = ("succeeded", "failed", "invalid", "skipped_done", "missing_outputs", "dry_run")


@dataclass
class ScanResult:
    """One row of the run report."""

    scan_id: str
    subject: str
    session: str | None
    status: str
    job_id: str | None = None
    attempts: int = 0
    started_at: str | None = None
    stopped_at: str | None = None
    duration_s: float | None = None
    cost_usd: float = 0.0
    outputs: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    reason: str | None = None
    log_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_jobs(batch_client: Any, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """DescribeJobs for many ids, 100 a call (the API's limit)."""
    jobs: dict[str, dict[str, Any]] = {}
    for start in range(0, len(job_ids), DESCRIBE_BATCH):
        chunk = job_ids[start : start + DESCRIBE_BATCH]
        for job in batch_client.describe_jobs(jobs=chunk).get("jobs", []):
            jobs[job["jobId"]] = job
    return jobs


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


def log_url(region: str, stream: str | None, group: str = "/aws/batch/job") -> str | None:
    if not stream:
        return None
    # The console wants the group and stream URL-encoded twice, with % written as $25.
    enc = lambda s: quote(quote(s, safe=""), safe="").replace("%", "$")  # noqa: E731
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


def verify_scans(
    config: RunConfig,
    scans: list[Scan],
    job_ids: dict[str, str],
    s3_client: Any,
    batch_client: Any | None,
) -> list[ScanResult]:
    """Per-scan verdicts for every discovered scan (valid or not)."""
    pipeline = get_pipeline(config.pipeline)
    outputs = config.outputs
    bucket = outputs.root.bucket
    listing = Listing(() if config.dry_run else list_objects(s3_client, bucket, outputs.root.prefix))
    jobs = describe_jobs(batch_client, sorted(set(job_ids.values()))) if job_ids and batch_client else {}
    region = batch_client.meta.region_name if batch_client is not None else "us-east-1"

    results: list[ScanResult] = []
    manifests_to_read: list[tuple[ScanResult, str]] = []
    for scan in scans:
        row = ScanResult(scan.scan_id, scan.subject, scan.session, status="invalid")
        results.append(row)
        if not scan.valid:
            row.reason = scan.reason
            continue
        if config.dry_run:
            row.status, row.reason = "dry_run", "dry run: job spec written, nothing submitted"
            continue
        row.job_id = job_ids.get(scan.scan_id)
        job = jobs.get(row.job_id) if row.job_id else None
        if job is None:
            row.status = "failed"
            row.reason = (
                f"Batch job {row.job_id} not found" if row.job_id else "no Batch job was submitted for this scan"
            )
            continue
        _fill_job_fields(row, job, region)
        if job.get("status") != "SUCCEEDED":
            row.status = "failed"
            row.reason = (
                failure_reason(job)
                if job.get("status") == "FAILED"
                else f"job still {job.get('status')} when the run ended"
            )
            continue
        prefix = outputs.scan_prefix(scan)
        expected = pipeline.expected_outputs(scan, config.options)
        present, missing = _match_outputs(listing, prefix, expected)
        row.outputs = sorted(present)
        manifest = outputs.manifest_key(scan)
        if manifest not in listing:
            missing.append(manifest[len(prefix) :])
        row.missing = missing
        if missing:
            row.status = "missing_outputs"
            row.reason = f"job succeeded but {len(missing)} expected file(s) are missing: {', '.join(missing[:3])}"
        else:
            manifests_to_read.append((row, manifest))

    _settle_by_manifest(manifests_to_read, s3_client, bucket)
    return results


def _settle_by_manifest(pending: list[tuple[ScanResult, str]], s3_client: Any, bucket: str) -> None:
    """Scans whose outputs are all there succeed only if their manifest says success."""

    def read(item: tuple[ScanResult, str]) -> tuple[ScanResult, Any]:
        row, key = item
        try:
            return row, get_json(s3_client, bucket, key)
        except Exception as err:  # an unreadable manifest is a finding, not a crash
            return row, err

    with ThreadPoolExecutor(max_workers=16) as pool:
        for row, manifest in pool.map(read, pending):
            if isinstance(manifest, dict) and manifest.get("status") == "success":
                row.status = "succeeded"
                continue
            if isinstance(manifest, Exception):
                detail = f"unreadable: {manifest}"
            elif isinstance(manifest, dict):
                detail = f"its status is {manifest.get('status')!r}"
            else:
                detail = "not a JSON object"
            row.status = "missing_outputs"
            row.reason = f"scan manifest does not say success ({detail})"


def _fill_job_fields(row: ScanResult, job: dict[str, Any], region: str) -> None:
    attempts = job.get("attempts") or []
    row.attempts = len(attempts)
    row.started_at = _iso(job.get("startedAt"))
    row.stopped_at = _iso(job.get("stoppedAt"))
    if job.get("startedAt") and job.get("stoppedAt"):
        row.duration_s = round((job["stoppedAt"] - job["startedAt"]) / 1000, 3)
    vcpus = _vcpus(job)
    row.cost_usd = round(
        sum(job_cost_usd(a.get("startedAt"), a.get("stoppedAt"), vcpus) for a in attempts), 6
    )
    stream = (job.get("container") or {}).get("logStreamName")
    if attempts and not stream:
        stream = (attempts[-1].get("container") or {}).get("logStreamName")
    row.log_url = log_url(region, stream)


def _vcpus(job: dict[str, Any]) -> int:
    container = job.get("container") or {}
    for req in container.get("resourceRequirements") or ():
        if req.get("type") == "VCPU":
            return int(float(req["value"]))
    return int(container.get("vcpus") or 2)


class Listing:
    """One listing of the output prefix, looked up by key or by prefix."""

    def __init__(self, objects: Iterable[S3Object]):
        self.objects = {o.key: o for o in objects}
        self._keys = sorted(self.objects)

    def __contains__(self, key: str) -> bool:
        return key in self.objects

    def nonempty_under(self, prefix: str) -> list[str]:
        """Keys (relative to ``prefix``) of the non-empty objects under it."""
        start = bisect.bisect_left(self._keys, prefix)
        out = []
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                break
            if self.objects[key].size > 0:
                out.append(key[len(prefix) :])
        return out


def _match_outputs(listing: Listing, prefix: str, expected: list[str]) -> tuple[list[str], list[str]]:
    """Which expected outputs (fnmatch patterns relative to ``prefix``) are present and
    non-empty; an empty file is as good as missing."""
    present, missing = [], []
    under = listing.nonempty_under(prefix)
    for pattern in expected:
        hits = fnmatch.filter(under, pattern)
        if hits:
            present.extend(hits)
        else:
            missing.append(pattern)
    return present, missing
