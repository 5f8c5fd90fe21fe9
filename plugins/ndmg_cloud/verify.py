"""The verdict on every scan: did its job succeed AND are its manifest and graphs on S3?

One paginated listing of the output prefix and one read of each present manifest (to see
that it says success); what each job did comes in as ``JobRecord``s (``ndmg_cloud.jobs``).
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from collections.abc import Iterable
from typing import Any

from ndmg_cloud.bids import Scan
from ndmg_cloud.jobs import FAILED, SUCCEEDED, JobRecord
from ndmg_cloud.params import RunConfig
from ndmg_cloud.pipelines import get_pipeline
from ndmg_cloud.s3 import S3Object, get_json, list_objects

log = logging.getLogger(__name__)
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
    failure_class: str | None = None
    log_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_scans(
    config: RunConfig,
    scans: list[Scan],
    jobs: dict[str, JobRecord],
    s3_client: Any,
    done: dict[str, ScanResult] | None = None,
) -> list[ScanResult]:
    """Per-scan verdicts for every discovered scan (valid or not); ``jobs`` maps scan ids
    to what their job did (see ``ndmg_cloud.jobs``), ``done`` holds the scans discovery
    found complete from an earlier run (not run again)."""
    done = done or {}
    outputs = config.outputs
    listing = Listing(() if config.dry_run else list_objects(s3_client, outputs.root.bucket, outputs.root.prefix))

    results: list[ScanResult] = []
    finished: list[tuple[ScanResult, Scan]] = []
    for scan in scans:
        if scan.scan_id in done:
            results.append(done[scan.scan_id])
            continue
        row = ScanResult(scan.scan_id, scan.subject, scan.session, status="invalid")
        results.append(row)
        if not scan.valid:
            row.reason = scan.reason
            continue
        if config.dry_run:
            row.status, row.reason = "dry_run", "dry run: job spec written, nothing submitted"
            continue
        job = jobs.get(scan.scan_id)
        if job is None:
            row.status, row.reason = "failed", "no job was submitted for this scan"
            continue
        row.job_id, row.attempts, row.log_url = job.job_id, job.attempts, job.log_url
        row.started_at, row.stopped_at, row.duration_s = job.started_at, job.stopped_at, job.duration_s
        row.cost_usd = job.cost_usd
        if job.status != SUCCEEDED:
            row.status = "failed"
            row.reason = job.reason or f"job still {job.status} when the run ended"
            row.failure_class = job.failure_class or ("pipeline_error" if job.status == FAILED else "incomplete")
            row.log_tail = job.log_tail
            continue
        finished.append((row, scan))

    _judge_outputs(config, finished, listing, s3_client, "succeeded", "job succeeded but ")
    return results


def completed_scans(config: RunConfig, scans: list[Scan], s3_client: Any) -> dict[str, ScanResult]:
    """The valid scans whose success manifest and expected outputs are already on S3, as
    ``skipped_done`` rows: one listing of the output prefix plus one read per manifest."""
    outputs = config.outputs
    listing = Listing(list_objects(s3_client, outputs.root.bucket, outputs.root.prefix))
    candidates = [
        (ScanResult(s.scan_id, s.subject, s.session, status="skipped_done"), s)
        for s in scans
        if s.valid and outputs.manifest_key(s) in listing
    ]
    _judge_outputs(config, candidates, listing, s3_client, "skipped_done", "")
    return {
        row.scan_id: row for row, _ in candidates if row.status == "skipped_done"
    }


def _judge_outputs(
    config: RunConfig,
    rows: list[tuple[ScanResult, Scan]],
    listing: Listing,
    s3_client: Any,
    verdict: str,
    context: str,
) -> None:
    """Give ``verdict`` to the rows whose expected outputs are present and non-empty and
    whose manifest says success; the others become ``missing_outputs``."""
    pipeline = get_pipeline(config.pipeline)
    outputs = config.outputs
    pending = []
    for row, scan in rows:
        prefix = outputs.scan_prefix(scan)
        present, missing = _match_outputs(listing, prefix, pipeline.expected_outputs(scan, config.options))
        row.outputs = sorted(present)
        manifest = outputs.manifest_key(scan)
        if manifest not in listing:
            missing.append(manifest[len(prefix) :])
        row.missing = missing
        if missing:
            row.status = "missing_outputs"
            row.reason = f"{context}{len(missing)} expected file(s) are missing: {', '.join(missing[:3])}"
        else:
            pending.append((row, manifest))
    _settle_by_manifest(pending, s3_client, outputs.root.bucket, verdict)


def _settle_by_manifest(pending: list[tuple[ScanResult, str]], s3_client: Any, bucket: str, verdict: str) -> None:
    """Scans whose outputs are all there get ``verdict`` only if their manifest says success."""

    def read(item: tuple[ScanResult, str]) -> tuple[ScanResult, Any]:
        row, key = item
        try:
            return row, get_json(s3_client, bucket, key)
        except Exception as err:  # an unreadable manifest is a finding, not a crash
            return row, err

    with ThreadPoolExecutor(max_workers=16) as pool:
        for row, manifest in pool.map(read, pending):
            if isinstance(manifest, dict) and manifest.get("status") == "success":
                row.status = verdict
                if verdict == "skipped_done":
                    row.reason = f"already done by run {manifest.get('run_id', '?')} (force=true reruns it)"
                continue
            if isinstance(manifest, Exception):
                detail = f"unreadable: {manifest}"
            elif isinstance(manifest, dict):
                detail = f"its status is {manifest.get('status')!r}"
            else:
                detail = "not a JSON object"
            row.status = "missing_outputs"
            row.reason = f"scan manifest does not say success ({detail})"


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
