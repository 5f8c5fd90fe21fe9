"""The run plan goes to the job dir once; XCom carries only where it is (``runplan``)."""

from __future__ import annotations

import json

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.participant.canary import CanaryOutcome, Settlement
from ndmg_cloud.participant.jobspec import run_token
from ndmg_cloud.participant.lease import TakeOver
from ndmg_cloud.participant.params import resolve
from ndmg_cloud.participant.runplan import PlanRef, RunPlan
from ndmg_cloud.participant.verify import ScanResult


def plan_of(n: int, jobdir: str, **params) -> RunPlan:
    config = resolve({"bucket": "lab-data", "pipeline": "lite", "backend": "local", "jobdir": jobdir, **params}, "manual__run-1")
    scans = [
        Scan(
            f"sub-{i:04d}",
            f"{i:04d}",
            None,
            {"subject": f"{i:04d}"},
            f"sub-{i:04d}/dwi/sub-{i:04d}_dwi.nii.gz",
            f"sub-{i:04d}/dwi/sub-{i:04d}_dwi.bval",
            f"sub-{i:04d}/dwi/sub-{i:04d}_dwi.bvec",
        )
        for i in range(n)
    ]
    scans.append(Scan("sub-bad", "bad", None, {}, "sub-bad/dwi/sub-bad_dwi.nii.gz", reason="no .bval file"))
    done = {"sub-0000": ScanResult("sub-0000", "0000", None, "skipped_done", reason="already done", made_by="lite 1", contract="c1")}
    return RunPlan(
        config,
        scans,
        done,
        {"sub-0001": "done with other options"},
        invalid_omitted=3,
        warnings=["a warning"],
        took_over=TakeOver("old-run", "2026-11-26T00:00:00Z", "its run failed"),
        keys_listed=n * 4,
        started_at="2026-11-26T03:00:00+00:00",
    )


def test_the_plan_reads_back_as_written(tmp_path):
    plan = plan_of(5, f"{tmp_path}/jobs/")  # a local job dir (local backend); S3 in the DAG tests
    ref = plan.write(None)
    assert ref.uri == f"{tmp_path}/jobs/plan-{run_token('manual__run-1')}.json"
    assert (ref.scans, ref.valid, ref.done) == (6, 5, 1)
    back = RunPlan.read(None, PlanRef.from_dict(json.loads(json.dumps(ref.to_dict())), "manual__run-1"))
    assert back == plan
    assert back.done["sub-0000"].made_by == "lite 1" and back.took_over.run_id == "old-run"


def test_the_xcom_is_the_same_size_whatever_the_number_of_scans(tmp_path):
    small = json.dumps(plan_of(5, f"{tmp_path}/a/").write(None).to_dict())
    large = json.dumps(plan_of(5000, f"{tmp_path}/b/").write(None).to_dict())
    assert abs(len(large) - len(small)) <= 8, (len(small), len(large))  # only the counts' digits differ


def test_scan_tasks_carry_no_submit_payload_and_a_dry_run_has_none(tmp_path):
    tasks = plan_of(3, "s3://lab-out/jobs/", backend="aws_batch").scan_tasks()
    assert [t.scan_id for t in tasks] == ["sub-0000", "sub-0001", "sub-0002"]  # valid scans only
    assert tasks[1].kwargs() == {"scan_id": "sub-0001", "job_spec_uri": "s3://lab-out/jobs/sub-0001.json", "runnable_timeout": 1800}
    assert plan_of(3, f"{tmp_path}/jobs/").scan_tasks()[0].kwargs() == {
        "scan_id": "sub-0000",
        "job_spec_uri": f"{tmp_path}/jobs/sub-0000.json",
    }  # local: no Batch timeout, and so the task is given none
    assert plan_of(3, f"{tmp_path}/jobs/", dry_run=True).scan_tasks() == []


def test_the_settlement_reads_back_as_written(tmp_path):
    plan = plan_of(2, f"{tmp_path}/jobs/")
    settled = Settlement(plan.done, {"sub-0001": "why"}, ["sub-0001"], CanaryOutcome("passed"), None)
    uri = settled.write(None, plan.config)
    assert uri.startswith(f"{tmp_path}/jobs/settled-")
    assert Settlement.read(None, plan.config) == settled
    assert settled.to_run(plan.scan_tasks()) == plan.scan_tasks()[1:]


def test_a_run_in_flight_across_an_upgrade_still_names_its_config(tmp_path):
    """Code before the plan file returned the whole plan from discover: its run's lease is
    still released and `ndmg_cloud kill` still finds its jobs by the config in it."""
    plan = plan_of(2, f"{tmp_path}/jobs/")
    old_xcom = {**plan.to_dict(), "lease": {"took_over": None}}  # the old discover return value
    assert PlanRef.config_in(old_xcom) == plan.config
    assert PlanRef.config_in(plan.write(None).to_dict()) == plan.config
