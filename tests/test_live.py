"""Reliability under a real Airflow (``airflow standalone``: api-server, scheduler with
LocalExecutor, dag-processor and triggerer as processes), against the local AWS endpoint
whose Batch jobs the tests hold RUNNING: what dag.test() cannot show."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import requests

from ndmg_cloud.cli.airflowapi import Airflow, failures

from conftest import wait_for
from datasets import put_dataset
from helpers import scan_once_submitted, submissions

DAG = "ndmg_participant"
# 25 s and 42 s on the live Airflow: with make test-live, to keep make test under 15 minutes
pytestmark = pytest.mark.slow


def airflow(live_airflow) -> Airflow:
    return Airflow(live_airflow["url"], "admin", live_airflow["password"])


def test_two_runs_of_one_dataset_triggered_at_once_one_is_refused(live_airflow, s3, batch_env, batch_behaviour):
    put_dataset(s3, "lab-data", "ds/")
    batch_behaviour.run_seconds = 5  # the winner's jobs are RUNNING while the other run starts
    api = airflow(live_airflow)
    conf = {"bucket": "lab-data", "bidsdir": "ds", "participant_label": ["01"], "canary": False}
    token = api.token()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    url = f"{live_airflow['url']}/api/v2/dags/{DAG}/dagRuns"
    run_ids = [session.post(url, json={"logical_date": None, "conf": conf}, timeout=30).json()["dag_run_id"] for _ in range(2)]

    assert wait_for(lambda: all(api.run(r)["state"] in ("success", "failed") for r in run_ids), timeout=300)
    discovered = {r: {ti["task_id"]: ti["state"] for ti in api.task_instances(r)}["discover"] for r in run_ids}
    winner = [r for r in run_ids if discovered[r] == "success"]
    loser = [r for r in run_ids if discovered[r] == "failed"]
    assert len(winner) == 1 and len(loser) == 1, discovered
    why = failures(api, loser[0], api.task_instances(loser[0]))
    assert any(f"run {winner[0]} holds the lease on s3://lab-data/ds/derivatives/ndmg/" in line for line in why), why

    # SubmitJob per scan <= 1 across both runs: the winner's two scans, the loser's none
    assert submissions(batch_behaviour.submitted, winner[0]) == {"sub-01_ses-retest": 1, "sub-01_ses-test": 1}
    assert submissions(batch_behaviour.submitted, loser[0]) == {}
    # and the winner released the lease at its end
    assert "Contents" not in s3.list_objects_v2(Bucket="lab-data", Prefix="ds/derivatives/ndmg/.ndmg-lease.json")


def test_a_scan_marked_failed_is_terminated_before_the_request_returns_and_reported_cancelled(live_airflow, s3, batch_env, batch_behaviour):
    """The api-server terminates the job itself (cancel.py), whatever the triggerer does."""
    put_dataset(s3, "lab-data", "ds/")
    batch_behaviour.run_seconds = 30
    api = airflow(live_airflow)
    run_id = api.trigger({"bucket": "lab-data", "bidsdir": "ds", "participant_label": ["01"], "canary": False})

    def waiting() -> list[dict]:
        return [ti for ti in api.task_instances(run_id) if ti["task_id"] == "run_scan" and ti["state"] == "deferred"]

    assert wait_for(lambda: len(waiting()) == 2, timeout=180), api.task_instances(run_id)
    target = min(waiting(), key=lambda ti: ti["map_index"])
    scan = scan_once_submitted(api, batch_behaviour, run_id, target, scans=2)  # its job is running
    path = f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances/run_scan/{target['map_index']}"
    api._request("PATCH", path, {"new_state": "failed"})
    assert submissions(batch_behaviour.terminated, run_id) == {scan: 1}  # already, when PATCH returned

    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=180)
    bucket, key = api.xcom(run_id, "verify_and_report").removeprefix("s3://").split("/", 1)
    rows = {row["scan_id"]: row for row in json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["scans"]}
    assert (rows[scan]["status"], rows[scan]["failure_class"]) == ("failed", "cancelled")
    assert submissions(batch_behaviour.submitted, run_id) == {"sub-01_ses-retest": 1, "sub-01_ses-test": 1}


def test_xcoms_a_user_rewrites_through_the_rest_api_steer_nothing(live_airflow, s3, batch_env, batch_behaviour):
    """A USER-role account, through the REST API, while the run's scans wait: rewrites
    discover's XCom (another team's job definition), points a scan's batch_job XCom at
    another team's running job and marks that scan failed, and clears another scan so that it
    runs again. Nothing hostile is submitted or terminated, and the run says why it refused."""
    from conftest import LIVE_USERS

    put_dataset(s3, "lab-data", "hostile/")
    batch_behaviour.hold = True
    theirs = batch_env.submit_job(jobName="their-analysis", jobQueue="ndmg-queue", jobDefinition="ndmg")["jobId"]
    api = airflow(live_airflow)
    user = Airflow(live_airflow["url"], "user", LIVE_USERS["user"])
    run_id = user.trigger({"bucket": "lab-data", "bidsdir": "hostile", "participant_label": ["01"], "canary": False})
    path = f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}"

    def waiting() -> list[dict]:
        return [ti for ti in api.task_instances(run_id) if ti["task_id"] == "run_scan" and ti["state"] == "deferred"]

    try:
        assert wait_for(lambda: len(waiting()) == 2, timeout=180), api.task_instances(run_id)
        for ti in waiting():  # both jobs submitted, and named in their batch_job XComs
            scan_once_submitted(api, batch_behaviour, run_id, ti, scans=2)
        discovered = api.xcom(run_id, "discover")
        hostile = {**discovered, "config": {**discovered["config"], "job_definition": "other-team"}}
        user._request("PATCH", f"{path}/taskInstances/discover/xcomEntries/return_value", {"value": hostile, "map_index": -1})
        user._request(
            "PATCH",
            f"{path}/taskInstances/run_scan/xcomEntries/batch_job",
            {"value": {"scan_id": "sub-01_ses-retest", "job_id": theirs}, "map_index": 0},
        )
        user._request("PATCH", f"{path}/taskInstances/run_scan/0", {"new_state": "failed"})
        user._request(
            "POST",
            f"/api/v2/dags/{DAG}/clearTaskInstances",
            {"dry_run": False, "dag_run_id": run_id, "task_ids": [["run_scan", 1]], "only_failed": False, "reset_dag_runs": True},
        )
        assert wait_for(lambda: {ti["state"] for ti in api.task_instances(run_id) if ti["map_index"] == 1} == {"failed"}, timeout=180)
    finally:
        batch_behaviour.release()
    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=180)

    assert api.run(run_id)["state"] == "failed"
    assert sum(submissions(batch_behaviour.submitted, run_id).values()) == 2  # the first two SubmitJobs only
    assert "their-analysis" not in batch_behaviour.terminated
    assert batch_env.describe_jobs(jobs=[theirs])["jobs"][0]["status"] == "SUCCEEDED"  # it ran to its end (released with the rest)
    why = "\n".join(failures(api, run_id, api.task_instances(run_id)))
    assert "discover's XCom (the run's configuration and plan)" in why and "has a seal that does not match" in why
