"""Where everything lives on S3: inputs, per-scan outputs, manifests, job specs, reports.

The discovery, the job specs, the runner and the verifier all ask this module, so they
can never disagree about a key.
"""

from __future__ import annotations

from dataclasses import dataclass

from ndmg_cloud.core.bids import Scan

# The self-check writes and deletes ``<scan output prefix><PROBE_NAME><token>``: inside the
# scan's own prefix, the only place a scan job may write.
PROBE_NAME = ".ndmg-self-check-"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ("" or ending in "/")."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"{uri!r} is not an s3:// URI (expected s3://bucket/path/)")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} names no bucket (expected s3://bucket/path/)")
        return cls(bucket, as_prefix(key))

    def key(self, relative: str) -> str:
        return self.prefix + relative

    def uri(self, relative: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{relative}"

    def child(self, relative: str) -> S3Location:
        return S3Location(self.bucket, as_prefix(self.prefix + relative))

    def contains(self, other: S3Location) -> bool:
        return self.bucket == other.bucket and other.prefix.startswith(self.prefix)

    def __str__(self) -> str:
        return self.uri()


def as_prefix(path: str) -> str:
    """``"a/b"`` -> ``"a/b/"``; ``""`` and ``"/"`` -> ``""``."""
    path = path.strip("/")
    return f"{path}/" if path else ""


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.json`` -> (``bucket``, ``a/b.json``)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


@dataclass(frozen=True)
class OutputLayout:
    """Keys under one output location (the derivatives folder of a run)."""

    root: S3Location

    def scan_prefix(self, scan: Scan) -> str:
        """Where a scan's outputs go, in the pipeline's own layout: ``sub-S/[ses-T/]``."""
        return self.session_prefix(scan.subject, scan.session)

    def session_prefix(self, subject: str, session: str | None) -> str:
        rel = f"sub-{subject}/"
        if session:
            rel += f"ses-{session}/"
        return self.root.key(rel)

    def group_prefix(self, parcellation: str) -> str:
        """The group level's outputs for one parcellation (group.json, .csv, .html)."""
        return self.root.key(f"group/{parcellation}/")

    @property
    def reports_prefix(self) -> str:
        return self.root.key("reports/")

    def manifest_key(self, scan: Scan) -> str:
        """The scan manifest, written last by the runner; named by scan so that two
        DWI series of one session never share it."""
        return self.scan_prefix(scan) + f"{scan.scan_id}_manifest.json"

    def report_prefix(self, run_id: str) -> str:
        return self.reports_prefix + f"{run_id}/"

    def canary_uri(self, run_id: str) -> str:
        """What the run's canary job (``ndmg-scan --self-check``) found, beside its report."""
        return self.root.uri(f"reports/{run_id}/canary.json")

    def default_jobdir(self, run_id: str) -> str:
        return self.root.uri(f"jobs/{run_id}/")

    @property
    def lease_key(self) -> str:
        """One run per output location at a time: the lease (lease.py)."""
        return self.root.key(".ndmg-lease.json")

    @property
    def description_key(self) -> str:
        return self.root.key("dataset_description.json")
