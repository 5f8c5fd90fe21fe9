"""The group level on a live `airflow standalone` (scheduler, dag-processor, api-server,
triggerer as processes): a successful ndmg_participant run triggers ndmg_group through its
reports Asset; `ndmg_cloud group` triggers and follows it by hand, listing failed scans."""

from __future__ import annotations

import json

import pytest
import requests

from ndmg_cloud.cli.airflowapi import Airflow

from conftest import LIVE_PASSWORD as PASSWORD
from conftest import wait_for
from datasets import upload_tree

pytestmark = pytest.mark.slow  # two participant runs and three group runs: the live tier

GROUP = "ndmg_group"


def put_study(s3, tmp_path, bucket: str, prefix: str, subjects: int, sessions: int) -> None:
    from ndmg_cloud.demo.synthetic import make_dataset

    make_dataset(tmp_path / bucket, subjects=subjects, sessions=sessions, sessionless=0)
    s3.create_bucket(Bucket=bucket)
    upload_tree(s3, bucket, tmp_path / bucket, f"{prefix}/")


def participant(cli, capsys, bucket: str) -> tuple[int, str]:
    code = cli(
        "participant",
        "--bucket",
        bucket,
        "--bidsdir",
        "study",
        "--pipeline",
        "lite",
        "--backend",
        "local",
        "--follow",
        "--poll-seconds",
        "2",
    )
    out = capsys.readouterr().out
    return code, out.split("triggered ndmg_participant run ")[1].split()[0]


def group_json(s3, bucket: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key="study/derivatives/ndmg/group/grid3/group.json")["Body"].read())


def test_a_successful_run_triggers_the_group_level_through_its_reports_asset(cli, live_airflow, s3, tmp_path, capsys):
    put_study(s3, tmp_path, "grp-data", "study", subjects=2, sessions=2)
    code, run_id = participant(cli, capsys, "grp-data")
    assert code == 0
    report = f"s3://grp-data/study/derivatives/ndmg/reports/{run_id}/report.json"
    airflow = Airflow(live_airflow["url"], "admin", PASSWORD)

    def triggered() -> dict | None:
        """The ndmg_group run the scheduler made for this run's reports Asset event, once done."""
        runs = airflow._request("GET", f"/api/v2/dags/{GROUP}/dagRuns?limit=100")["dag_runs"]
        for run in runs:
            if run["run_type"] == "asset_triggered" and run["state"] in ("success", "failed"):
                if report in airflow.xcom(run["dag_run_id"], "find_report", dag_id=GROUP):
                    return run
        return None

    assert wait_for(triggered, timeout=240), "no ndmg_group run for the reports Asset event"
    run = triggered()
    assert run["state"] == "success", run
    doc = group_json(s3, "grp-data")
    assert doc["report"] == report and len(doc["scans"]) == 4 and doc["left_out"] == []
    assert doc["discriminability"]["value"] is not None and doc["discriminability"]["subjects"] == 2
    found = airflow.xcom(run["dag_run_id"], "compare_connectomes", dag_id=GROUP)
    assert found[report]["grid3"]["group.html"] == "s3://grp-data/study/derivatives/ndmg/group/grid3/group.html"


def test_group_by_hand_lists_the_failed_scan_and_says_why(cli, live_airflow, s3, tmp_path, capsys):
    put_study(s3, tmp_path, "grp-fail", "study", subjects=2, sessions=2)
    bad = "study/sub-02/ses-2/dwi/sub-02_ses-2_dwi.bval"
    s3.put_object(Bucket="grp-fail", Key=bad, Body=b"0 1000 1000\n")  # 33 volumes, 3 b-values
    code, run_id = participant(cli, capsys, "grp-fail")
    assert code == 1  # a scan failed: the run fails, and emits no reports Asset event

    assert cli("group", run_id, "--poll-seconds", "2") == 0
    out = capsys.readouterr().out
    assert "triggered ndmg_group run manual__" in out
    assert "grid3: 3 scans used, left out: sub-02_ses-2" in out
    assert "discriminability not computed: needs at least 2 subjects with 2 or more scans each; this group has 1" in out
    assert "s3://grp-fail/study/derivatives/ndmg/group/grid3/group.html" in out
    [left] = group_json(s3, "grp-fail")["left_out"]
    assert left["scan_id"] == "sub-02_ses-2" and left["status"] == "failed" and "its bval has 3 values" in left["reason"]

    # by output location: the newest run there
    assert cli("group", "--output", "s3://grp-fail/study/derivatives/ndmg/", "--permutations", "10", "--poll-seconds", "2") == 0
    assert "grid3: 3 scans used, left out: sub-02_ses-2" in capsys.readouterr().out


def test_a_bad_report_uri_is_refused_at_trigger_time(live_airflow):
    token = requests.post(f"{live_airflow['url']}/auth/token", json={"username": "admin", "password": PASSWORD}, timeout=10).json()
    answer = requests.post(
        f"{live_airflow['url']}/api/v2/dags/{GROUP}/dagRuns",
        json={"logical_date": None, "conf": {"report": "s3://grp-fail/study/summary.txt"}},
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=10,
    )
    assert answer.status_code == 400 and "report" in answer.text and "summary.txt" in answer.text
