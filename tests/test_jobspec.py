"""Job specs: the scan, its outputs, the pipeline and the exact SubmitJob payload."""

from __future__ import annotations

import json
import re

import botocore.session
import pytest
from botocore.validate import ParamValidator

from ndmg_cloud.core.bids import discover_scans
from ndmg_cloud.core.spec import JobSpec
from ndmg_cloud.participant.jobspec import build_spec, check_no_shared_outputs, job_name
from ndmg_cloud.participant.params import resolve

from datasets import E2E_KEYS

SUBMIT_JOB = botocore.session.get_session().get_service_model("batch").operation_model("SubmitJob").input_shape


def specs_for(**params):
    config = resolve({"bucket": "lab-data", "bidsdir": "ds1", **params}, "manual__2026-11-24T10:00:00+00:00")
    found = discover_scans(["ds1/" + k for k in E2E_KEYS], "ds1/")
    return config, {s.scan_id: build_spec(config, s).to_dict() for s in found.valid}  # the specs as written


def test_batch_block_is_a_valid_submit_job_request():
    _, specs = specs_for()
    for spec in specs.values():
        report = ParamValidator().validate(spec["batch"], SUBMIT_JOB)
        assert not report.has_errors(), report.generate_report()


def test_spec_contents_for_an_inherited_sessionless_scan():
    config, specs = specs_for()
    spec = specs["sub-02"]
    assert spec["scan"]["entities"] == {"subject": "02"}
    assert spec["scan"]["inputs"] == {
        "dwi": "sub-02/dwi/sub-02_dwi.nii.gz",
        "bval": "sub-02/sub-02_dwi.bval",
        "bvec": "sub-02/sub-02_dwi.bvec",
        "t1w": "sub-02/anat/sub-02_T1w.nii.gz",
        "dataset_description": "dataset_description.json",
    }
    assert spec["input_root"] == "s3://lab-data/ds1/"
    assert spec["output_prefix"] == "s3://lab-data/ds1/derivatives/ndmg/sub-02/"
    assert spec["manifest"] == "s3://lab-data/ds1/derivatives/ndmg/sub-02/sub-02_manifest.json"
    assert spec["expected_outputs"] == [
        "connectomes_d/AAL_space-MNI152NLin6_res-2x2x2/sub-02_dwi_AAL_space-MNI152NLin6_res-2x2x2_connectome.csv",
        "connectomes_d/Desikan_space-MNI152NLin6_res-2x2x2/sub-02_dwi_Desikan_space-MNI152NLin6_res-2x2x2_connectome.csv",
    ]
    assert spec["spec_uri"] == f"{config.jobdir}sub-02.json"
    batch = spec["batch"]
    assert batch["containerOverrides"]["command"] == ["ndmg-scan", "--spec", spec["spec_uri"]]
    assert batch["jobQueue"] == "ndmg-queue" and batch["jobDefinition"] == "ndmg"
    assert batch["tags"] == {
        "project": "ndmg-cloud",  # the orchestrator may stop only jobs carrying it
        "dataset": "ds1",
        "scan": "sub-02",
        "run_id": "manual__2026-11-24T10:00:00+00:00",
        "pipeline": "m2g",
    }
    assert batch["retryStrategy"]["evaluateOnExit"][0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}
    assert batch["timeout"] == {"attemptDurationSeconds": 360 * 60}


def test_queue_and_definition_come_from_params():
    _, specs = specs_for(job_queue="my-queue", job_definition="arn:aws:batch:us-east-1:123456789012:job-definition/m2g:3")
    batch = specs["sub-02"]["batch"]
    assert batch["jobQueue"] == "my-queue"
    assert batch["jobDefinition"] == "arn:aws:batch:us-east-1:123456789012:job-definition/m2g:3"


def test_job_names_are_legal_unique_and_readable():
    _, specs = specs_for(dataset="HNU1.retest_v2")  # '.' is a legal dataset name, not a job name
    names = [s["batch"]["jobName"] for s in specs.values()]
    assert len(set(names)) == len(names)
    for name, scan_id in zip(names, specs, strict=True):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", name)
        assert name.startswith("HNU1-retest_v2-") and scan_id in name


def test_job_names_differ_between_runs_and_stay_short():
    assert job_name("ds", "sub-1", "run-a") != job_name("ds", "sub-1", "run-b")
    long = job_name("d" * 100, "sub-" + "x" * 60 + "_ses-1", "r")
    assert len(long) <= 128 and re.fullmatch(r"[A-Za-z0-9_-]+", long)
    assert long != job_name("d" * 100, "sub-" + "x" * 60 + "_ses-2", "r")


def test_two_acquisitions_never_share_an_output_key():
    _, specs = specs_for()
    ap, pa = specs["sub-03_ses-1_acq-AP"], specs["sub-03_ses-1_acq-PA"]
    assert ap["output_prefix"] == pa["output_prefix"]
    assert ap["manifest"] != pa["manifest"]
    assert not set(ap["expected_outputs"]) & set(pa["expected_outputs"])
    check_no_shared_outputs([JobSpec.from_dict(s) for s in specs.values()])
    with pytest.raises(ValueError, match="would both write"):
        check_no_shared_outputs([JobSpec.from_dict(ap), JobSpec.from_dict({**pa, "manifest": ap["manifest"]})])


def test_no_credentials_in_specs(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + "ABCDEFGHIJKLMNOP")  # split: no key-like literal in the repo
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very/secret+key")
    _, specs = specs_for()
    text = json.dumps(specs)
    assert "AKIA" not in text and "very/secret" not in text
    for spec in specs.values():
        names = {e["name"] for e in spec["batch"]["containerOverrides"]["environment"]}
        assert not any("AWS" in n or "SECRET" in n or "TOKEN" in n for n in names)


def test_invalid_scans_get_no_spec():
    config = resolve({"bucket": "lab-data", "bidsdir": "ds1"}, "r")
    found = discover_scans(["ds1/" + k for k in E2E_KEYS], "ds1/")
    with pytest.raises(ValueError, match="sub-04_ses-1 is invalid"):
        build_spec(config, found.invalid[0])
