"""Small BIDS layouts put on the local S3 (key names matter here, file contents do not)."""

from __future__ import annotations

import json

DESCRIPTION = json.dumps({"Name": "test", "BIDSVersion": "1.9.0"})

# The end-to-end dataset: 7 DWI series, 6 valid.
#  sub-01: sessions 'test' and 'retest' (non-numeric labels), own bval/bvec
#  sub-02: no sessions; bval/bvec inherited from the subject level
#  sub-03: two acquisitions in one session; two T1w runs (run-1 is chosen)
#  sub-04: has a bval but no bvec anywhere -> invalid
#  sub-05: ordinary (the tests make its job fail)
# plus a dataset-level dwi.bval (inherited by nobody closer), sidecars and junk.
E2E_KEYS = [
    "dataset_description.json",
    "README",
    "participants.tsv",
    "dwi.bval",
    "sub-01/ses-test/anat/sub-01_ses-test_T1w.nii.gz",
    "sub-01/ses-test/anat/sub-01_ses-test_T1w.json",
    "sub-01/ses-test/dwi/sub-01_ses-test_dwi.nii.gz",
    "sub-01/ses-test/dwi/sub-01_ses-test_dwi.bval",
    "sub-01/ses-test/dwi/sub-01_ses-test_dwi.bvec",
    "sub-01/ses-test/dwi/sub-01_ses-test_dwi.json",
    "sub-01/ses-retest/anat/sub-01_ses-retest_T1w.nii.gz",
    "sub-01/ses-retest/dwi/sub-01_ses-retest_dwi.nii.gz",
    "sub-01/ses-retest/dwi/sub-01_ses-retest_dwi.bval",
    "sub-01/ses-retest/dwi/sub-01_ses-retest_dwi.bvec",
    "sub-02/sub-02_dwi.bval",
    "sub-02/sub-02_dwi.bvec",
    "sub-02/anat/sub-02_T1w.nii.gz",
    "sub-02/dwi/sub-02_dwi.nii.gz",
    "sub-02/dwi/sub-02_dwi.json",
    "sub-03/ses-1/anat/sub-03_ses-1_run-1_T1w.nii.gz",
    "sub-03/ses-1/anat/sub-03_ses-1_run-2_T1w.nii.gz",
    "sub-03/ses-1/dwi/sub-03_ses-1_acq-AP_dwi.nii.gz",
    "sub-03/ses-1/dwi/sub-03_ses-1_acq-AP_dwi.bval",
    "sub-03/ses-1/dwi/sub-03_ses-1_acq-AP_dwi.bvec",
    "sub-03/ses-1/dwi/sub-03_ses-1_acq-PA_dwi.nii.gz",
    "sub-03/ses-1/dwi/sub-03_ses-1_acq-PA_dwi.bval",
    "sub-03/ses-1/dwi/sub-03_ses-1_acq-PA_dwi.bvec",
    "sub-04/ses-1/anat/sub-04_ses-1_T1w.nii.gz",
    "sub-04/ses-1/dwi/sub-04_ses-1_dwi.nii.gz",
    "sub-04/ses-1/dwi/sub-04_ses-1_dwi.bval",
    "sub-05/ses-1/anat/sub-05_ses-1_T1w.nii.gz",
    "sub-05/ses-1/dwi/sub-05_ses-1_dwi.nii.gz",
    "sub-05/ses-1/dwi/sub-05_ses-1_dwi.bval",
    "sub-05/ses-1/dwi/sub-05_ses-1_dwi.bvec",
    "derivatives/ndmg/sub-01/ses-test/dwi/sub-01_ses-test_dwi.nii.gz",
    "sourcedata/sub-01/dwi/sub-01_dwi.nii.gz",
    "junk/notes.txt",
    ".DS_Store",
]
E2E_VALID = [
    "sub-01_ses-retest",
    "sub-01_ses-test",
    "sub-02",
    "sub-03_ses-1_acq-AP",
    "sub-03_ses-1_acq-PA",
    "sub-05_ses-1",
]
E2E_INVALID = ["sub-04_ses-1"]


def scans_keys(subjects: int, sessions: int) -> list[str]:
    """A plain dataset of ``subjects`` x ``sessions`` valid scans (sub-01_ses-1, ...)."""
    keys = ["dataset_description.json"]
    for sub in range(1, subjects + 1):
        for ses in range(1, sessions + 1):
            stem = f"sub-{sub:02d}/ses-{ses}"
            entities = f"sub-{sub:02d}_ses-{ses}"
            keys += [f"{stem}/anat/{entities}_T1w.nii.gz"]
            keys += [f"{stem}/dwi/{entities}_dwi.{ext}" for ext in ("nii.gz", "bval", "bvec")]
    return keys


def put_dataset(s3, bucket: str, prefix: str = "", keys=E2E_KEYS) -> None:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    for rel in keys:
        body = DESCRIPTION.encode() if rel.endswith("dataset_description.json") else b"x" * 16
        s3.put_object(Bucket=bucket, Key=prefix + rel, Body=body)


def listing(s3, bucket: str, prefix: str = "") -> dict[str, str]:
    """key -> ETag of everything under a prefix (to prove inputs were not touched)."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["ETag"]
    return out


def put_phantoms(s3, workdir, bucket: str, prefix: str) -> None:
    """Real DWI phantoms (sub-01 ses-1 and the session-less sub-02) at s3://bucket/prefix/."""
    from ndmg_cloud.demo.synthetic import make_dataset

    make_dataset(workdir / "phantoms", subjects=1, sessions=1, sessionless=1)
    s3.create_bucket(Bucket=bucket)
    upload_tree(s3, bucket, workdir / "phantoms", f"{prefix}/")


def upload_tree(s3, bucket: str, root, prefix: str) -> None:
    """Every file under the local folder ``root`` to s3://bucket/prefix..."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, prefix + path.relative_to(root).as_posix())


def write_specs(s3, dataset, bucket: str = "lab-data", **params):
    """A phantom dataset folder uploaded to s3://bucket/ds/, a lite run resolved over it and
    each valid scan's job spec written where the run writes it: (config, spec per scan id)."""
    from ndmg_cloud.participant.discover import discover
    from ndmg_cloud.participant.jobspec import build_spec
    from ndmg_cloud.participant.params import resolve

    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    upload_tree(s3, bucket, dataset, "ds/")
    config = resolve({"bucket": bucket, "bidsdir": "ds", "pipeline": "lite", **params}, "run1")
    specs = {}
    for scan in discover(config, s3).valid:
        spec = build_spec(config, scan).to_dict()  # as written
        s3.put_object(Bucket=bucket, Key=spec["spec_uri"].split("/", 3)[3], Body=json.dumps(spec))
        specs[scan.scan_id] = spec
    return config, specs


def sessionless_scan():
    """A valid session-less scan, sub-01, with its own bval/bvec and a T1w."""
    from ndmg_cloud.core.bids import Scan

    dwi = "sub-01/dwi/sub-01_dwi"
    return Scan("sub-01", "01", None, {"subject": "01"}, f"{dwi}.nii.gz", f"{dwi}.bval", f"{dwi}.bvec", "sub-01/anat/sub-01_T1w.nii.gz")
