"""Verdicts: a scan succeeds only when its job did AND its manifest and graphs are there."""

from __future__ import annotations

import json

import pytest

from ndmg_cloud.core.bids import discover_scans
from ndmg_cloud.participant.jobs import batch_records, describe_jobs, failure_reason
from ndmg_cloud.participant.params import resolve
from ndmg_cloud.participant.verify import verify_scans

from datasets import E2E_KEYS
from helpers import count_calls, submit

BUCKET = "lab-data"


@pytest.fixture
def run(s3, batch_env):
    s3.create_bucket(Bucket=BUCKET)
    config = resolve({"bucket": BUCKET, "bidsdir": "ds"}, "run1")
    scans = discover_scans(["ds/" + k for k in E2E_KEYS], "ds/").scans
    return config, scans


def put_outputs(s3, config, scan, manifest_status="success", size=10, run_id=None, options=None, recorded_size=None, **extra):
    """What the runner leaves: the outputs, then a manifest recording run, pipeline and sizes."""
    from ndmg_cloud.core.pipelines import get_pipeline

    prefix = config.outputs.scan_prefix(scan)
    expected = get_pipeline(config.pipeline).expected_outputs(scan, config.options)
    for rel in expected:
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=b"1" * size)
    manifest = {
        "status": manifest_status,
        "run_id": run_id or config.run_id,
        "pipeline": {
            "name": config.pipeline,
            "options": options or config.options,
            "contract": {"label": "m2g 95d271f7", "fingerprint": "abc123abc123"},
        },
        "outputs": [{"path": rel, "size": size if recorded_size is None else recorded_size} for rel in expected],
        **extra,
    }
    s3.put_object(Bucket=BUCKET, Key=config.outputs.manifest_key(scan), Body=json.dumps(manifest))


def test_verdicts(s3, batch_env, run, batch_behaviour):
    config, scans = run
    by_id = {s.scan_id: s for s in scans}
    batch_behaviour.fail["bad"] = "Essential container in task exited"
    job_ids = {
        "sub-01_ses-test": submit(batch_env, "good"),
        "sub-01_ses-retest": submit(batch_env, "no-outputs"),
        "sub-02": submit(batch_env, "bad"),
        "sub-03_ses-1_acq-AP": submit(batch_env, "empty-graph"),
        "sub-03_ses-1_acq-PA": submit(batch_env, "manifest-says-failed"),
    }
    put_outputs(s3, config, by_id["sub-01_ses-test"])
    put_outputs(s3, config, by_id["sub-03_ses-1_acq-AP"], size=0)
    put_outputs(s3, config, by_id["sub-03_ses-1_acq-PA"], manifest_status="failed")

    rows = {r.scan_id: r for r in verify_scans(config, scans, batch_records(batch_env, job_ids), s3)}

    assert rows["sub-01_ses-test"].status == "succeeded"
    assert len(rows["sub-01_ses-test"].outputs) == 2 and rows["sub-01_ses-test"].attempts == 1
    assert (rows["sub-01_ses-test"].made_by, rows["sub-01_ses-test"].contract) == ("m2g 95d271f7", "abc123abc123")
    assert rows["sub-01_ses-retest"].status == "missing_outputs"
    assert "sub-01_ses-retest_manifest.json" in rows["sub-01_ses-retest"].missing
    assert rows["sub-02"].status == "failed"
    assert rows["sub-02"].reason.startswith("Essential container in task exited")
    assert rows["sub-03_ses-1_acq-AP"].status == "missing_outputs"  # 0-byte graphs do not count
    assert rows["sub-03_ses-1_acq-PA"].status == "missing_outputs"
    assert "its status is 'failed'" in rows["sub-03_ses-1_acq-PA"].reason
    assert rows["sub-04_ses-1"].status == "invalid"
    assert rows["sub-05_ses-1"].status == "failed"
    assert rows["sub-05_ses-1"].reason == "no job was submitted for this scan"


def test_a_manifest_from_another_run_or_with_other_sizes_is_not_this_runs_success(s3, batch_env, run, batch_behaviour):
    config, scans = run
    by_id = {s.scan_id: s for s in scans}
    job_ids = {"sub-01_ses-test": submit(batch_env, "stale"), "sub-02": submit(batch_env, "resized")}
    put_outputs(s3, config, by_id["sub-01_ses-test"], run_id="an-earlier-run")  # the job wrote none
    put_outputs(s3, config, by_id["sub-02"], size=10, recorded_size=12)  # partly overwritten since
    rows = {r.scan_id: r for r in verify_scans(config, scans, batch_records(batch_env, job_ids), s3)}
    assert rows["sub-01_ses-test"].status == "missing_outputs"
    assert rows["sub-01_ses-test"].reason == "the scan manifest is from run 'an-earlier-run', not this one: the job wrote none"
    assert rows["sub-02"].status == "missing_outputs"
    assert rows["sub-02"].reason.startswith("2 output(s) differ from the sizes the manifest records: connectomes_d/")


def test_done_means_this_pipeline_and_these_options(s3, run):
    from ndmg_cloud.participant.verify import completed_scans

    config, scans = run
    by_id = {s.scan_id: s for s in scans}
    put_outputs(s3, config, by_id["sub-01_ses-test"], run_id="earlier")
    put_outputs(s3, config, by_id["sub-02"], run_id="earlier", options={**config.options, "seeds": 5})
    put_outputs(s3, config, by_id["sub-05_ses-1"], run_id="earlier", size=10, recorded_size=9)
    done, reruns = completed_scans(config, [s for s in scans if s.valid], s3)
    assert sorted(done) == ["sub-01_ses-test"]
    assert done["sub-01_ses-test"].reason == "already done by run earlier (force=true reruns it)"
    assert done["sub-01_ses-test"].contract == "abc123abc123"
    assert reruns["sub-02"] == "done with seeds=5; this run asks seeds=20"
    assert reruns["sub-05_ses-1"].startswith("2 output(s) differ from the sizes the manifest records")


def test_one_listing_and_describe_jobs_in_batches_of_100(s3, batch_env, run, batch_behaviour):
    config, scans = run
    ids = [submit(batch_env, f"j{i}") for i in range(230)]
    for i in range(1500):  # more than one listing page of outputs
        s3.put_object(Bucket=BUCKET, Key=f"ds/derivatives/ndmg/sub-99/x/{i}.csv", Body=b"1")
    s3_calls, batch_calls = count_calls(s3), count_calls(batch_env)

    described = describe_jobs(batch_env, ids)
    assert len(described) == 230
    assert batch_calls["DescribeJobs"] == 3

    valid = [s for s in scans if s.valid]
    job_ids = {s.scan_id: ids[i] for i, s in enumerate(valid)}
    verify_scans(config, scans, batch_records(batch_env, job_ids), s3)
    assert s3_calls["ListObjectsV2"] == 2  # 1,500+ keys: two pages, not a request per file
    assert s3_calls["GetObject"] == 0  # no manifest present: nothing to read
    assert batch_calls["DescribeJobs"] == 4


def test_streamlines_come_from_the_manifest_and_a_given_listing_is_reused(s3, batch_env, run, batch_behaviour):
    from ndmg_cloud.participant.verify import output_listing

    config, scans = run
    by_id = {s.scan_id: s for s in scans}
    job_ids = {s: submit(batch_env, s) for s in ("sub-01_ses-test", "sub-02", "sub-05_ses-1")}
    put_outputs(s3, config, by_id["sub-01_ses-test"], log_tail=["ndmg-lite sub-01_ses-test_dwi: 4821 streamlines in 3.2 s", "done"])
    put_outputs(s3, config, by_id["sub-02"], streamlines=77, log_tail=["12 streamlines"])  # a recorded count wins
    put_outputs(s3, config, by_id["sub-05_ses-1"], log_tail=["m2g says nothing countable"])
    listing = output_listing(config, s3)
    calls = count_calls(s3)
    rows = {r.scan_id: r for r in verify_scans(config, scans, batch_records(batch_env, job_ids), s3, listing=listing)}
    assert calls["ListObjectsV2"] == 0  # the caller's listing: still one for the whole report
    assert [rows[s].streamlines for s in job_ids] == [4821, 77, None]
    assert rows["sub-01_ses-test"].graphs == {}  # graph figures are the report's (read_connectomes)


def test_dry_run_touches_no_aws(s3, run):
    config, scans = run
    config.dry_run = True
    calls = count_calls(s3)
    rows = verify_scans(config, scans, {}, s3)
    assert {r.status for r in rows} == {"dry_run", "invalid"}
    assert sum(calls.values()) == 0


def test_failure_reason_reads_exit_code_and_container_reason():
    job = {
        "statusReason": "Essential container in task exited",
        "attempts": [{"container": {"exitCode": 137, "reason": "OutOfMemoryError: Container killed due to memory usage"}}],
    }
    assert failure_reason(job) == (
        "Essential container in task exited; exit code 137; OutOfMemoryError: Container killed due to memory usage"
    )
