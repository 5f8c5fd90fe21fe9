"""The discover step: one paginated listing, bad datasets refused with a clear message."""

from __future__ import annotations

import logging
import math

import pytest
from test_verify import count_calls

from ndmg_cloud.core.s3 import S3AccessError
from ndmg_cloud.participant.discover import DatasetError, discover
from ndmg_cloud.participant.params import ParamError, resolve

from datasets import E2E_KEYS, put_dataset

BUCKET = "lab-data"


def config(**params):
    return resolve({"bucket": BUCKET, "bidsdir": "ds", **params}, "run1")


def test_one_paginated_listing_for_the_whole_dataset(s3):
    keys = list(E2E_KEYS) + [f"sub-{i:04d}/anat/sub-{i:04d}_T1w.nii.gz" for i in range(1100)]  # two pages of 1,000
    put_dataset(s3, BUCKET, "ds/", keys)
    calls = count_calls(s3)
    found = discover(config(), s3)
    assert found.keys_listed == len(keys)
    assert calls["ListObjectsV2"] == math.ceil(len(keys) / 1000) == 2
    assert sum(calls.values()) == calls["ListObjectsV2"]  # no per-subject or per-file requests


def test_missing_bucket(s3):
    with pytest.raises(S3AccessError, match="bucket 'lab-data' does not exist"):
        discover(config(), s3)


def test_empty_prefix(s3):
    put_dataset(s3, BUCKET, "other/")
    with pytest.raises(DatasetError, match="nothing under s3://lab-data/ds/: check 'bucket'"):
        discover(config(), s3)


def test_no_dwi_at_all(s3):
    put_dataset(s3, BUCKET, "ds/", ["dataset_description.json", "sub-01/anat/sub-01_T1w.nii.gz", "junk.txt"])
    with pytest.raises(DatasetError, match=r"no DWI images under s3://lab-data/ds/ \(3 keys listed\)"):
        discover(config(), s3)


def test_no_description_is_only_a_warning(s3, caplog):
    put_dataset(s3, BUCKET, "ds/", [k for k in E2E_KEYS if k != "dataset_description.json"])
    with caplog.at_level(logging.WARNING):
        found = discover(config(), s3)
    assert found.valid
    assert "no dataset_description.json under 'ds/'" in caplog.text


def test_every_scan_invalid(s3):
    keys = ["dataset_description.json", "sub-01/dwi/sub-01_dwi.nii", "sub-01/dwi/sub-01_dwi.nii.gz"]
    keys += ["sub-01/dwi/sub-01_dwi.bval", "sub-01/dwi/sub-01_dwi.bvec", "sub-01/anat/sub-01_T1w.nii.gz"]
    put_dataset(s3, BUCKET, "ds/", keys)  # two DWI images of one scan: a mistake, not an upload under way
    with pytest.raises(DatasetError, match="all 1 scans are invalid, nothing to run. sub-01: two DWI images"):
        discover(config(), s3)


def test_a_scan_missing_files_is_waiting_for_them_not_an_error(s3):
    """A DWI whose gradients or T1w are not there (yet: an upload under way) is invalid and
    waiting: the run goes on, a later run takes it once they are uploaded."""
    put_dataset(s3, BUCKET, "ds/", ["dataset_description.json", "sub-01/dwi/sub-01_dwi.nii.gz"])
    found = discover(config(), s3)
    [scan] = found.scans
    assert scan.waiting and not scan.valid
    assert scan.reason.startswith("no .bval file for 'sub-01/dwi/sub-01_dwi.nii.gz'")
    assert scan.reason.endswith("(waiting for files: a later run takes this scan once they are uploaded)")


def test_filter_naming_an_absent_subject(s3):
    put_dataset(s3, BUCKET, "ds/")
    with pytest.raises(ParamError, match=r"participant_label \['07'\] not found .* present: 01, 02, 03, 04, 05"):
        discover(config(participant_label=["07"]), s3)


def test_filters_select_scans(s3):
    put_dataset(s3, BUCKET, "ds/")
    found = discover(config(participant_label=["03"], session_label=["1"]), s3)
    assert sorted(s.scan_id for s in found.scans) == ["sub-03_ses-1_acq-AP", "sub-03_ses-1_acq-PA"]
