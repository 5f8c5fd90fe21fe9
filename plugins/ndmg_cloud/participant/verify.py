"""The verdict on every scan: did its job succeed AND are its manifest and graphs on S3?

One paginated listing of the output prefix and one read of each present manifest (to see
that it says success); what each job did comes in as ``JobRecord``s (``ndmg_cloud.participant.jobs``).
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.manifest import NotAManifest, ScanManifest
from ndmg_cloud.core.pipelines import get_pipeline
from ndmg_cloud.core.s3 import S3Object, get_json, list_objects
from ndmg_cloud.participant.jobs import FAILED, NOT_SUBMITTED, SUCCEEDED, JobRecord
from ndmg_cloud.participant.params import RunConfig

log = logging.getLogger(__name__)
STATUSES = ("succeeded", "failed", "invalid", "skipped_done", "missing_outputs", "dry_run")
# "sub-01_ses-1_dwi: 5321 streamlines in 2.1 s" (lite's log line, kept in the manifest's log tail)
STREAMLINES_LINE = re.compile(r"\b(\d+) streamlines\b")


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
    made_by: str | None = None  # the code that made the outputs: "m2g 95d271f7"
    contract: str | None = None  # the fingerprint of that code's image contract
    pilot: bool = False  # run before the others, to success, as a pilot scan
    new: bool = False  # no earlier run had made it: no manifest of it in the output location
    waiting_for_files: bool = False  # invalid only because files it needs are not uploaded (yet)
    streamlines: int | None = None  # tracked by the pipeline, when it reports the number
    # per parcellation: the connectome's graph figures (nodes, edges, density, ...), its
    # path and its QA image; or why it could not be read (see ndmg_cloud.report.runreport)
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanResult:
        """A row as ``to_dict`` wrote it (by older code too: fields it lacks keep their defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def verify_scans(
    config: RunConfig,
    scans: list[Scan],
    jobs: dict[str, JobRecord],
    s3_client: Any,
    done: dict[str, ScanResult] | None = None,
    not_submitted: dict[str, tuple[str, str]] | None = None,
    listing: Listing | None = None,
) -> list[ScanResult]:
    """Per-scan verdicts for every discovered scan (valid or not); ``jobs`` maps scan ids
    to what their job did (see ``ndmg_cloud.participant.jobs``), ``done`` holds the scans found complete
    from an earlier run (not run again), ``not_submitted`` why a scan got no job (its
    failure class and reason, e.g. the canary failed). ``listing``: the output prefix's
    (``output_listing``), when the caller reuses it; listed here otherwise."""
    done = done or {}
    not_submitted = not_submitted or {}
    if listing is None:
        listing = output_listing(config, s3_client)

    results: list[ScanResult] = []
    finished: list[tuple[ScanResult, Scan]] = []
    for scan in scans:
        if scan.scan_id in done:
            results.append(done[scan.scan_id])
            continue
        row = ScanResult(scan.scan_id, scan.subject, scan.session, status="invalid")
        results.append(row)
        if not scan.valid:
            row.reason, row.waiting_for_files = scan.reason, scan.waiting
            continue
        if config.dry_run:
            row.status, row.reason = "dry_run", "dry run: job spec written, nothing submitted"
            continue
        job = jobs.get(scan.scan_id)
        if job is None:
            row.failure_class, row.reason = not_submitted.get(scan.scan_id, (NOT_SUBMITTED, "no job was submitted for this scan"))
            row.status = "failed"
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

    _judge(config, finished, listing, s3_client, "succeeded")
    return results


def output_listing(config: RunConfig, s3_client: Any) -> Listing:
    """The one listing of the output prefix a report is made from (none for a dry run)."""
    root = config.outputs.root
    return Listing(() if config.dry_run else list_objects(s3_client, root.bucket, root.prefix))


def completed_scans(config: RunConfig, scans: list[Scan], s3_client: Any) -> tuple[dict[str, ScanResult], dict[str, str]]:
    """The valid scans already done for this run's pipeline and options, as ``skipped_done``
    rows (each names the code that made it, for the image check at the canary), and why
    the others that have a success manifest must run again. One listing of the output
    prefix plus one read per manifest."""
    outputs = config.outputs
    listing = Listing(list_objects(s3_client, outputs.root.bucket, outputs.root.prefix))
    candidates = [
        (ScanResult(s.scan_id, s.subject, s.session, status="skipped_done"), s)
        for s in scans
        if s.valid and outputs.manifest_key(s) in listing
    ]
    _judge(config, candidates, listing, s3_client, "skipped_done")
    done = {row.scan_id: row for row, _ in candidates if row.status == "skipped_done"}
    reruns = {row.scan_id: row.reason for row, _ in candidates if row.status != "skipped_done" and row.reason}
    return done, reruns


def provenance_mismatch(manifest: ScanManifest, config: RunConfig) -> str | None:
    """Why outputs made under ``manifest`` are not this run's: another pipeline or options."""
    made = manifest.pipeline
    if made.name != config.pipeline:
        return f"done with pipeline {made.name or 'unknown'}, this run uses {config.pipeline}"
    theirs, ours = made.options, config.options
    changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if changed:
        was = ", ".join(f"{k}={theirs.get(k)!r}" for k in changed)
        now = ", ".join(f"{k}={ours.get(k)!r}" for k in changed)
        return f"done with {was}; this run asks {now}"
    return None


def _judge(config: RunConfig, rows: list[tuple[ScanResult, Scan]], listing: Listing, s3_client: Any, verdict: str) -> None:
    """Give ``verdict`` to the rows whose expected outputs are present, non-empty and of the
    sizes their manifest records, and whose manifest says success for this run (this run's
    id for ``succeeded``; this pipeline and options for ``skipped_done``). The others become
    ``missing_outputs``."""
    pipeline = get_pipeline(config.pipeline)
    outputs = config.outputs
    pending = []
    for row, scan in rows:
        prefix = outputs.scan_prefix(scan)
        present, missing = _match_outputs(listing, prefix, pipeline.expected_outputs(scan, config.options))
        row.outputs = sorted(present)
        manifest_key = outputs.manifest_key(scan)
        if manifest_key not in listing:
            missing.append(manifest_key[len(prefix) :])
        row.missing = missing
        if missing:
            row.status = "missing_outputs"
            context = "job succeeded but " if verdict == "succeeded" else ""
            row.reason = f"{context}{len(missing)} expected file(s) are missing: {', '.join(missing[:3])}"
        else:
            pending.append((row, prefix, manifest_key))

    def read(item: tuple[ScanResult, str, str]) -> tuple[ScanResult, str, ScanManifest | Exception]:
        row, prefix, key = item
        try:
            return row, prefix, ScanManifest.from_dict(get_json(s3_client, outputs.root.bucket, key))
        except Exception as err:  # an unreadable manifest is a finding, not a crash
            return row, prefix, err

    with ThreadPoolExecutor(max_workers=16) as pool:
        for row, prefix, found in pool.map(read, pending):
            problem = _manifest_problem(found, row, prefix, listing, config, verdict)
            if problem or not isinstance(found, ScanManifest):
                row.status, row.reason = "missing_outputs", problem
                continue
            row.status, row.made_by, row.contract = verdict, found.pipeline.label, found.pipeline.fingerprint
            row.streamlines = reported_streamlines(found)
            if verdict == "skipped_done":
                row.reason = f"already done by run {found.run_id or '?'} (force=true reruns it)"


def reported_streamlines(manifest: ScanManifest) -> int | None:
    """How many streamlines the pipeline tracked: the manifest's ``streamlines`` when it
    records one, else the last count in the pipeline's log tail (lite logs it; m2g does not)."""
    if manifest.streamlines is not None:
        return manifest.streamlines
    for line in reversed(manifest.log_tail):
        found = STREAMLINES_LINE.search(line)
        if found:
            return int(found.group(1))
    return None


def _manifest_problem(
    manifest: ScanManifest | Exception, row: ScanResult, prefix: str, listing: Listing, config: RunConfig, verdict: str
) -> str | None:
    if isinstance(manifest, NotAManifest):
        return "scan manifest does not say success (not a JSON object)"
    if isinstance(manifest, Exception):
        return f"scan manifest does not say success (unreadable: {manifest})"
    if not manifest.succeeded:
        return f"scan manifest does not say success (its status is {manifest.status!r})"
    if verdict == "succeeded" and manifest.run_id != config.run_id:
        return f"the scan manifest is from run {manifest.run_id!r}, not this one: the job wrote none"
    if verdict == "skipped_done":
        mismatch = provenance_mismatch(manifest, config)
        if mismatch:
            return mismatch
    recorded = manifest.size_of()
    differ = [p for p in row.outputs if recorded.get(p) != listing.objects[prefix + p].size]
    if differ:
        return f"{len(differ)} output(s) differ from the sizes the manifest records: {', '.join(differ[:3])}"
    return None


def fnmatch_magic(pattern: str) -> bool:
    """Whether an expected-output pattern has wildcards (else it is a literal path)."""
    return any(c in pattern for c in "*?[")


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
    nonempty = set(under)
    for pattern in expected:
        # a literal path is looked up: compiling one pattern per scan costs more than the listing
        hits = fnmatch.filter(under, pattern) if fnmatch_magic(pattern) else [pattern] if pattern in nonempty else []
        if hits:
            present.extend(hits)
        else:
            missing.append(pattern)
    return present, missing
