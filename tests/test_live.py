"""Reliability under a real Airflow (``airflow standalone``: api-server, scheduler with
LocalExecutor, dag-processor and triggerer as processes), against the local AWS endpoint
whose Batch jobs the tests hold RUNNING: what dag.test() cannot show."""

from __future__ import annotations

import requests

from conftest import wait_for
from datasets import put_dataset
from ndmg_cloud.airflowapi import Airflow, failures
from ndmg_cloud.jobspec import run_token

DAG = "ndmg_participant"


def airflow(live_airflow) -> Airflow:
    return Airflow(live_airflow["url"], "admin", live_airflow["password"])


def scans_submitted(names: list[str], run_id: str) -> list[str]:
    """The scan part of this run's job names (``<dataset>-<scan>-<run token>``)."""
    token = run_token(run_id)
    return [name.removeprefix("ds-").removesuffix(f"-{token}") for name in names if name.endswith(f"-{token}")]


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
    assert sorted(scans_submitted(batch_behaviour.submitted, winner[0])) == ["sub-01_ses-retest", "sub-01_ses-test"]
    assert scans_submitted(batch_behaviour.submitted, loser[0]) == []
    # and the winner released the lease at its end
    assert "Contents" not in s3.list_objects_v2(Bucket="lab-data", Prefix="ds/derivatives/ndmg/.ndmg-lease.json")

