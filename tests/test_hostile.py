"""A catalogue of bad and hostile input: each case ends in a clear error or an `invalid`
reason, nothing unsafe reaches a job, and the input prefix is byte-identical afterwards
(listing and ETags compared)."""

from __future__ import annotations

import json
import re

import boto3
import pytest
from botocore.config import Config

from ndmg_cloud.core.s3 import S3AccessError
from ndmg_cloud.participant.discover import DatasetError, discover
from ndmg_cloud.participant.jobs import batch_records
from ndmg_cloud.participant.jobspec import build_spec
from ndmg_cloud.participant.params import ParamError, resolve
from ndmg_cloud.participant.preflight import PreflightError, preflight

from conftest import ENDPOINT, REGION
from datasets import listing, put_dataset
from faults import FaultProxy, Rule

BUCKET = "lab-data"
PREFIX = "ds/"
SAFE_ARG = re.compile(r"[A-Za-z0-9_./:=+@-]+")
ACCESS_DENIED = (403, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")


def dwi_series(folder: str, stem: str) -> list[str]:
    return [f"{folder}/{stem}_dwi.nii.gz", f"{folder}/{stem}_dwi.bval", f"{folder}/{stem}_dwi.bvec"]


# (case, keys added to a valid dataset, scan id or None, expected invalid reason)
INVALID_SCANS = [
    ("shell metacharacters in a subject label", dwi_series("sub-0;1/dwi", "sub-0;1"), "sub-0;1", "not alphanumeric"),
    ("command substitution in a label", dwi_series("sub-$(id)/dwi", "sub-$(id)"), "sub-$(id)", "not alphanumeric"),
    ("backticks in a session label", dwi_series("sub-07/ses-`id`/dwi", "sub-07_ses-`id`"), "sub-07_ses-`id`", "not alphanumeric"),
    ("'..' as a label", dwi_series("sub-07/dwi", "sub-07_acq-.."), "sub-07_acq-..", "not alphanumeric"),
    ("space in a key", dwi_series("sub-07/dwi", "sub-07_acq-a b"), "sub-07_acq-a b", "not alphanumeric"),
    ("unicode label", dwi_series("sub-07/dwi", "sub-07_acq-ü"), "sub-07_acq-ü", "not alphanumeric"),
    ("glob characters in a label", dwi_series("sub-07/dwi", "sub-07_acq-a*b?"), "sub-07_acq-a*b?", "not alphanumeric"),
    ("quotes and pipes in a label", dwi_series("sub-07/dwi", "sub-07_acq-'|x"), "sub-07_acq-'|x", "not alphanumeric"),
    ("file of another subject", dwi_series("sub-07/dwi", "sub-08"), "sub-08", "does not carry sub-07"),
    ("missing bvec", ["sub-07/dwi/sub-07_dwi.nii.gz", "sub-07/dwi/sub-07_dwi.bval", "sub-07/anat/sub-07_T1w.nii.gz"], "sub-07", "no .bvec"),
    ("missing T1w", dwi_series("sub-07/dwi", "sub-07"), "sub-07", "no T1w image for sub-07"),
    (
        "same scan as .nii and .nii.gz",
        dwi_series("sub-07/dwi", "sub-07") + ["sub-07/dwi/sub-07_dwi.nii", "sub-07/anat/sub-07_T1w.nii.gz"],
        "sub-07",
        "two DWI images",
    ),
    ("key-value pair without a value", dwi_series("sub-07/dwi", "sub-07_acq"), "sub-07_acq", "not a BIDS key-value pair"),
]


@pytest.fixture
def s3_with_dataset(s3):
    """The S3 client, with the end-to-end dataset under PREFIX."""
    put_dataset(s3, BUCKET, PREFIX)
    return s3


def specs_of(config, found):
    return [build_spec(config, scan).to_dict() for scan in found.valid]  # the specs as written


def assert_safe(specs):
    for spec in specs:
        for arg in spec["pipeline"]["command"] + spec["batch"]["containerOverrides"]["command"]:
            assert SAFE_ARG.fullmatch(arg), arg
        assert SAFE_ARG.fullmatch(spec["batch"]["jobName"])


@pytest.mark.parametrize("case, keys, scan_id, reason", INVALID_SCANS, ids=[c[0] for c in INVALID_SCANS])
def test_hostile_keys_make_invalid_scans(s3_with_dataset, case, keys, scan_id, reason):
    put_dataset(s3_with_dataset, BUCKET, PREFIX, keys)
    before = listing(s3_with_dataset, BUCKET, PREFIX)
    config = resolve({"bucket": BUCKET, "bidsdir": PREFIX}, "run1")

    found = discover(config, s3_with_dataset)
    specs = specs_of(config, found)

    bad = {s.scan_id: s for s in found.invalid}
    assert scan_id in bad and reason in bad[scan_id].reason
    assert scan_id not in {s["scan"]["scan_id"] for s in specs}
    assert_safe(specs)
    assert listing(s3_with_dataset, BUCKET, PREFIX) == before


def test_a_dot_dot_folder_is_junk_named_in_a_warning_and_never_a_scan(s3_with_dataset):
    put_dataset(s3_with_dataset, BUCKET, PREFIX, dwi_series("sub-07/../sub-08/dwi", "sub-08"))
    config = resolve({"bucket": BUCKET, "bidsdir": PREFIX}, "run1")

    found = discover(config, s3_with_dataset)

    assert not {s.scan_id for s in found.scans} & {"sub-07", "sub-08"}  # beside the dataset's clean scans
    assert not any("sub-08" in spec["scan"]["scan_id"] for spec in specs_of(config, found))
    assert any("'sub-07/../sub-08/dwi/sub-08_dwi.nii.gz' (an empty, '.' or '..' path segment)" in w for w in found.warnings)


# (case, params or keys, exception, message)
REFUSED = [
    ("a bucket full of non-BIDS junk", {"keys": ["junk/a.txt", "notes/résumé.pdf", "x/sub-01_dwi.nii.gz"]}, DatasetError, "no DWI images"),
    ("an empty prefix", {"params": {"bidsdir": "nothing-here"}}, DatasetError, "nothing under s3://lab-data/nothing-here/"),
    ("only invalid scans", {"keys": dwi_series("sub-0;1/dwi", "sub-0;1")}, DatasetError, "all 1 scans are invalid"),
    (
        "output prefix inside a subject folder",
        {"params": {"modif": "sub-01/derivatives"}},
        ParamError,
        "modif 'sub-01/derivatives' is refused: it must be a folder under derivatives/",
    ),
    ("output equal to the input", {"params": {"output_uri": f"s3://{BUCKET}/{PREFIX}"}}, ParamError, "is the dataset root"),
    ("empty modif", {"params": {"modif": ""}}, ParamError, "modif is empty"),
    ("participant label with metacharacters", {"params": {"participant_label": ["01 && rm -rf /"]}}, ParamError, "it must be a BIDS label"),
    (
        "pipeline option with metacharacters",
        {"params": {"parcellation": ["AAL;reboot"]}},
        ValueError,
        "parcellation 'AAL;reboot' is refused: it must be an atlas name",
    ),
]


@pytest.mark.parametrize("case, given, error, message", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_a_clear_message(s3, case, given, error, message):
    if "keys" in given:
        put_dataset(s3, BUCKET, PREFIX, [k for k in given["keys"]])
    else:
        put_dataset(s3, BUCKET, PREFIX)
    before = listing(s3, BUCKET, "")
    with pytest.raises(error, match=re.escape(message)):
        config = resolve({"bucket": BUCKET, "bidsdir": PREFIX, **given.get("params", {})}, "run1")
        discover(config, s3)
    assert listing(s3, BUCKET, "") == before


def client_through(proxy_url: str, service: str):
    return boto3.client(service, region_name=REGION, endpoint_url=proxy_url, config=Config(retries={"mode": "adaptive", "max_attempts": 6}))


def test_access_denied_on_list(s3_with_dataset):
    proxy = FaultProxy(ENDPOINT, [Rule("GET", "list-type=2", times=-1, response=ACCESS_DENIED)])
    try:
        with pytest.raises(S3AccessError, match="access denied listing s3://lab-data/ds/: the orchestrator's role needs s3:ListBucket"):
            discover(resolve({"bucket": BUCKET, "bidsdir": PREFIX}, "r"), client_through(proxy.start(), "s3"))
    finally:
        proxy.stop()


def test_s3_slowdown_on_list_is_absorbed(s3_with_dataset):
    proxy = FaultProxy(ENDPOINT, [Rule("GET", "list-type=2", times=3)])
    try:
        found = discover(resolve({"bucket": BUCKET, "bidsdir": PREFIX}, "r"), client_through(proxy.start(), "s3"))
    finally:
        proxy.stop()
    assert len(found.valid) == 6
    assert [s for _, _, s in proxy.seen][:4] == [503, 503, 503, 200]


def test_batch_throttling_is_absorbed(batch_env, batch_behaviour):
    ids = {f"scan{i}": batch_env.submit_job(jobName=f"j{i}", jobQueue="ndmg-queue", jobDefinition="ndmg")["jobId"] for i in range(3)}
    throttled = (429, json.dumps({"__type": "TooManyRequestsException", "message": "Too Many Requests"}).encode())
    proxy = FaultProxy(ENDPOINT, [Rule("POST", "/v1/describejobs", times=2, response=throttled, content_type="application/json")])
    try:
        records = batch_records(client_through(proxy.start(), "batch"), ids)
    finally:
        proxy.stop()
    assert {r.status for r in records.values()} == {"SUCCEEDED"}
    assert [s for _, p, s in proxy.seen if "describejobs" in p] == [429, 429, 200]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"job_queue": "no-such-queue"}, "job queue 'no-such-queue' does not exist in us-east-1"),
        ({"job_definition": "no-such-definition"}, "job definition 'no-such-definition' does not exist"),
        ({"job_definition": "ndmg:99"}, "job definition 'ndmg:99' does not exist"),
        ({"job_definition": "arn:aws:batch:us-east-1:123456789012:job-definition/nope:1"}, "does not exist"),
    ],
)
def test_missing_batch_setup_is_caught_before_any_submission(batch_env, batch_behaviour, params, message):
    config = resolve({"bucket": BUCKET, **params}, "run1")
    with pytest.raises(PreflightError, match=re.escape(message)):
        preflight(batch_env, config)
    assert batch_behaviour.submitted == []


def test_a_duplicate_trigger_is_refused_while_the_first_run_is_active(batch_env, batch_behaviour):
    from ndmg_cloud.participant.jobspec import job_name

    batch_behaviour.run_seconds = 30  # the first run's jobs are still running
    first = resolve({"bucket": BUCKET, "dataset": "ds1"}, "run-A")
    batch_env.submit_job(jobName=job_name("ds1", "sub-01", "run-A"), jobQueue="ndmg-queue", jobDefinition="ndmg", tags={"dataset": "ds1"})
    preflight(batch_env, first)  # its own jobs are no obstacle to itself

    second = resolve({"bucket": BUCKET, "dataset": "ds1"}, "run-B")
    with pytest.raises(PreflightError, match="1 jobs of dataset 'ds1' are still active .* from another run"):
        preflight(batch_env, second)
    preflight(batch_env, resolve({"bucket": BUCKET, "dataset": "ds2"}, "run-C"))  # other datasets run freely
    # job names of dataset "ds-001" start with "ds-" too: the dataset tag tells them apart
    batch_env.submit_job(
        jobName=job_name("ds-001", "sub-01", "run-E"), jobQueue="ndmg-queue", jobDefinition="ndmg", tags={"dataset": "ds-001"}
    )
    preflight(batch_env, resolve({"bucket": BUCKET, "dataset": "ds"}, "run-D"))


# Cases only the scan runner can see: it checks files before the pipeline starts.
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from ndmg_cloud.demo.synthetic import make_dataset

    root = tmp_path_factory.mktemp("phantom")
    make_dataset(root, subjects=1, sessions=1, sessionless=0)
    return root


RUNNER_CASES = [
    ("0-byte NIfTI", {"sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz": b""}, [], 2, "is not a readable NIfTI image"),
    ("non-gzip NIfTI", {"sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz": b"this is not gzip"}, [], 2, "is not a readable NIfTI image"),
    ("bval count disagrees", {"sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval": b"0 1000\n"}, [], 2, "has 33 volumes but its bval has 2 values"),
    (
        "AccessDenied on get",
        {},
        [Rule("GET", "_T1w.nii.gz", times=-1, response=ACCESS_DENIED)],
        1,
        "could not download s3://lab-data/ds/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz (AccessDenied)",
    ),
    ("AccessDenied on put", {}, [Rule("PUT", "connectomes_d", times=-1, response=ACCESS_DENIED)], 1, "AccessDenied"),
]


@pytest.mark.parametrize("case, overwrite, rules, code, message", RUNNER_CASES, ids=[c[0] for c in RUNNER_CASES])
def test_runner_refuses_bad_files_with_one_line(s3, phantom, case, overwrite, rules, code, message):
    from test_runner import key_of, run_through_faults

    from datasets import write_specs

    _, specs = write_specs(s3, phantom)
    for rel, body in overwrite.items():
        s3.put_object(Bucket=BUCKET, Key=PREFIX + rel, Body=body)
    spec = specs["sub-01_ses-1"]
    before = listing(s3, BUCKET, PREFIX + "sub-")

    done, _ = run_through_faults(spec["spec_uri"], rules)

    assert done.returncode == code, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ndmg-scan: sub-01_ses-1 failed: ") and message in last
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key_of(spec["manifest"]))  # not done
    if code == 2:  # a bad input file is caught before the pipeline starts
        assert "running:" not in done.stdout
    assert listing(s3, BUCKET, PREFIX + "sub-") == before
