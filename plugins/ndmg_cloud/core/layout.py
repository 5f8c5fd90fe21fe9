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

# Folders and files of an output location (the README's contract, "Outputs and report").
REPORTS, GROUP, JOBS = "reports", "group", "jobs"
REPORT_JSON, REPORT_CSV, REPORT_HTML = "report.json", "report.csv", "report.html"
CANARY_JSON = "canary.json"  # what the run's canary found, beside its report
GROUP_JSON, GROUP_CSV, GROUP_HTML, MEAN_CONNECTOME = "group.json", "group.csv", "group.html", "mean_connectome.csv"
GROUP_FILES = (GROUP_JSON, GROUP_CSV, GROUP_HTML, MEAN_CONNECTOME)
DESCRIPTION = "dataset_description.json"
LEASE = ".ndmg-lease.json"


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


def sibling(uri: str, name: str) -> str:
    """The file ``name`` in the folder of ``uri`` (report.html beside a report.json)."""
    return uri.rsplit("/", 1)[0] + "/" + name


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
        return self.root.key(f"{GROUP}/{parcellation}/")

    def group_uri(self, parcellation: str, name: str = GROUP_JSON) -> str:
        """One of the group level's files (``GROUP_FILES``) for one parcellation."""
        return f"s3://{self.root.bucket}/{self.group_prefix(parcellation)}{name}"

    @property
    def reports_prefix(self) -> str:
        return self.root.key(f"{REPORTS}/")

    @property
    def reports_uri(self) -> str:
        """The dataset's reports folder as one URI (the reports Asset), without a trailing '/'."""
        return self.root.uri(REPORTS)

    def manifest_key(self, scan: Scan) -> str:
        """The scan manifest, written last by the runner; named by scan so that two
        DWI series of one session never share it."""
        return self.scan_prefix(scan) + f"{scan.scan_id}_manifest.json"

    def report_prefix(self, run_id: str) -> str:
        return self.reports_prefix + f"{run_id}/"

    def report_uri(self, run_id: str, name: str = REPORT_JSON) -> str:
        """One of a run's report files: report.json (default), report.csv, report.html,
        canary.json."""
        return f"s3://{self.root.bucket}/{self.report_prefix(run_id)}{name}"

    def canary_uri(self, run_id: str) -> str:
        """What the run's canary job (``ndmg-scan --self-check``) found, beside its report."""
        return self.report_uri(run_id, CANARY_JSON)

    def default_jobdir(self, run_id: str) -> str:
        return self.root.uri(f"{JOBS}/{run_id}/")

    @property
    def lease_key(self) -> str:
        """One run per output location at a time: the lease (lease.py)."""
        return self.root.key(LEASE)

    @property
    def description_key(self) -> str:
        return self.root.key(DESCRIPTION)


def is_report(key: str) -> bool:
    """A run's report.json (``reports/<run id>/report.json``)."""
    return key.endswith(f"/{REPORT_JSON}")
