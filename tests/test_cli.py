"""The ndmg_cloud command against a live `airflow standalone` on the local AWS endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import _free_port, wait_for
from datasets import put_dataset
from ndmg_cloud.cli import main
from ndmg_cloud.demo import start_standalone, stop_process_group

PASSWORD = "ndmg-cli-test"


@pytest.fixture(scope="module")
def airflow_server(moto_server, tmp_path_factory):
    """airflow standalone (scheduler, triggerer, dag-processor, api-server) on a free port."""
    home = tmp_path_factory.mktemp("standalone")
    port = _free_port()
    (home / "passwords.json").write_text(json.dumps({"admin": PASSWORD}))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "ndmg_local", "2", "local"], env=env, check=True, capture_output=True)
    log = open(home / "standalone.log", "w")
    process = start_standalone(env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def dag_ready():
        try:
            token = requests.post(f"{url}/auth/token", json={"username": "admin", "password": PASSWORD}, timeout=5).json()["access_token"]
            answer = requests.get(f"{url}/api/v2/dags/ndmg_participant", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            return answer.status_code == 200
        except (requests.RequestException, KeyError, ValueError):
            return False

    try:
        assert wait_for(dag_ready, timeout=180), (home / "standalone.log").read_text()[-3000:]
        yield {"url": url, "home": home}
    finally:
        stop_process_group(process)
        log.close()


@pytest.fixture
def cli(airflow_server, monkeypatch):
    monkeypatch.setenv("NDMG_AIRFLOW_URL", airflow_server["url"])
    monkeypatch.setenv("NDMG_AIRFLOW_USER", "admin")
    monkeypatch.setenv("NDMG_AIRFLOW_PASSWORD", PASSWORD)

    def run(*argv):
        return main(list(argv))

    return run


@pytest.fixture
def phantoms(s3, tmp_path):
    from ndmg_cloud.synthetic import make_dataset

    make_dataset(tmp_path / "ds", subjects=1, sessions=1, sessionless=1)
    s3.create_bucket(Bucket="cli-data")
    for path in sorted((tmp_path / "ds").rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), "cli-data", "phantoms/" + path.relative_to(tmp_path / "ds").as_posix())
    return s3


def test_participant_follows_the_run_and_prints_the_report(cli, airflow_server, phantoms, capsys, tmp_path):
    code = cli(
        "participant", "--bucket", "cli-data", "--bidsdir", "phantoms", "--pipeline", "lite",
        "--backend", "local", "--follow", "--poll-seconds", "2",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "triggered ndmg_participant run manual__" in out
    assert "2/2 done, 0 failed  (success)" in out
    assert "2 scans: 2 succeeded, 0 failed, 0 missing outputs, 0 invalid" in out
    run_id = out.split("triggered ndmg_participant run ")[1].split()[0]

    assert cli("status", run_id) == 0
    status = capsys.readouterr().out
    assert f"run {run_id}: success" in status
    assert "sub-01_ses-1" in status and "sub-02" in status and "succeeded" in status

    assert cli("report", run_id, "--out", str(tmp_path / "r.html")) == 0
    assert "<html" in (tmp_path / "r.html").read_text()

    # the "Run report" button of the final task opens report.html (here: on the local endpoint)
    from ndmg_cloud.cli import Airflow

    links = Airflow(airflow_server["url"], "admin", PASSWORD)._request(
        "GET", f"/api/v2/dags/ndmg_participant/dagRuns/{run_id}/taskInstances/verify_and_report/links"
    )["extra_links"]
    url = requests.utils.unquote(links["Run report"])
    bucket, key = url.split("/", 4)[3:]
    assert key == f"phantoms/derivatives/ndmg/reports/{run_id}/report.html"
    assert b"<html" in phantoms.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert requests.get(links["Run report"], timeout=10).status_code == 403  # private: never public


def test_schema_refusal_is_relayed(cli, capsys):
    code = cli("participant", "--bucket", "cli-data", "--max_cost_usd", "-5")
    err = capsys.readouterr().err
    assert code == 2
    assert "Airflow refused the request" in err and "max_cost_usd" in err


def test_wrong_password_is_a_clear_error(airflow_server, capsys):
    code = main(["status", "--airflow-url", airflow_server["url"], "--username", "admin", "--password", "wrong"])
    assert code == 2
    assert "refused the credentials of user 'admin'" in capsys.readouterr().err


def test_unreachable_airflow(capsys):
    code = main(["status", "--airflow-url", f"http://127.0.0.1:{_free_port()}", "--password", "x"])
    assert code == 2
    assert "cannot reach Airflow at" in capsys.readouterr().err


def test_kill_fails_the_run_and_terminates_its_jobs(cli, s3, batch_env, batch_behaviour, capsys):
    put_dataset(s3, "lab-data", "ds/")
    batch_behaviour.run_seconds = 600  # the jobs would run for ten minutes
    # no canary: these scan jobs are what is killed (the canary's own kill is the same code)
    assert cli("participant", "--bucket", "lab-data", "--bidsdir", "ds", "--participant_label", "01", "--no-canary") == 0
    run_id = capsys.readouterr().out.split("triggered ndmg_participant run ")[1].split()[0]
    running = lambda: len(batch_env.list_jobs(jobQueue="ndmg-queue", jobStatus="RUNNING")["jobSummaryList"]) == 2  # noqa: E731
    assert wait_for(running, timeout=120)

    assert cli("kill", run_id) == 0
    assert "2 Batch jobs terminated" in capsys.readouterr().out
    assert batch_env.list_jobs(jobQueue="ndmg-queue", jobStatus="RUNNING")["jobSummaryList"] == []
    assert wait_for(lambda: requests_state(cli, run_id) == "failed", timeout=60)


def requests_state(cli, run_id):
    from ndmg_cloud.cli import Airflow

    return Airflow(os.environ["NDMG_AIRFLOW_URL"], "admin", PASSWORD).run(run_id)["state"]


def test_estimate_before_running(s3, capsys):
    put_dataset(s3, "lab-data", "ds/")
    assert main(["estimate", "--bucket", "lab-data", "--bidsdir", "ds", "--hours-per-scan", "1"]) == 0
    out = capsys.readouterr().out
    assert "7 scans found: 6 valid, 1 invalid, 0 already done, 6 to run" in out
    assert "6.0 instance-hours (12.0 vCPU-hours) of r5.large: about $0.76 on-demand, $0.30 on Spot" in out


def test_seed_flags_map_to_params():
    from ndmg_cloud.cli import conf_from, parser

    args = parser().parse_args(
        ["participant", "--bucket", "b", "--bidsdir", "HNU1", "--jobdir", "s3://b/jobs", "--modif", "out",
         "--sp", "native", "--dataset", "HNU1", "--participant_label", "0025427", "--pipeline", "m2g"]
    )  # fmt: skip
    assert conf_from(args) == {
        "bucket": "b", "bidsdir": "HNU1", "jobdir": "s3://b/jobs", "modif": "out", "dataset": "HNU1",
        "space": "native", "pipeline": "m2g", "participant_label": ["0025427"],
    }  # fmt: skip


def test_local_trigger_goes_through_the_local_airflow(cli, airflow_server, phantoms, capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(airflow_server["home"]))
    code = cli("participant", "--bucket", "cli-data", "--bidsdir", "phantoms", "--pipeline", "lite", "--backend", "local", "--dry_run", "--local")
    out, err = capsys.readouterr()
    assert code == 0, out + err
    run_id = out.split("triggered ndmg_participant run ")[1].split()[0]
    assert wait_for(lambda: requests_state(cli, run_id) == "success", timeout=120)


def test_setup_prints_the_queue_and_definition_and_is_idempotent(aws, capsys):
    import boto3

    from conftest import ENDPOINT, REGION

    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ENDPOINT)
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    argv = ["setup", "--image", "ndmg-cloud-m2g:0.3.0", "--subnets", *subnets, "--security-groups", group,
            "--input-bucket", "lab-data", "--output-bucket", "lab-results"]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "stack ndmg-cloud-batch: created" in first and "job_queue:" in first and "ndmg-queue" in first
    assert main(argv) == 0
    assert "stack ndmg-cloud-batch: unchanged" in capsys.readouterr().out
    assert main(["teardown"]) == 0
    assert "stack ndmg-cloud-batch: deleted" in capsys.readouterr().out


def test_a_busy_airflow_database_is_asked_again_but_a_trigger_is_not(monkeypatch):
    """SQLite under `airflow standalone` answers 500 "Database error" while it is locked."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ndmg_cloud.cli import Airflow, CliError

    seen = []

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self):
            seen.append((self.command, self.path))
            busy = sum(1 for s in seen if s == (self.command, self.path)) <= 2
            body = b'{"reason": "Database error"}' if busy else b'{"state": "failed"}'
            self.send_response(500 if busy else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(Airflow, "BUSY_WAIT_SECONDS", 0.01)
    try:
        airflow = Airflow(f"http://127.0.0.1:{server.server_address[1]}", "admin", "x")
        airflow._token = "t"
        airflow.fail_run("run-1")  # PATCH: two busy answers, then done
        assert seen.count(("PATCH", "/api/v2/dags/ndmg_participant/dagRuns/run-1")) == 3
        with pytest.raises(CliError, match="Airflow answered 500 to POST"):
            airflow.trigger({"bucket": "b"})  # never repeated: it could start two runs
        assert seen.count(("POST", "/api/v2/dags/ndmg_participant/dagRuns")) == 1
    finally:
        server.shutdown()


def test_the_canary_under_the_live_scheduler_and_triggerer(cli, s3, batch_env, batch_behaviour, capsys, tmp_path):
    """Against a real scheduler, triggerer and dag-processor: a failing canary stops the run
    before any scan job; a passing one lets the pilot, then the rest, go."""
    import pipeline_facts
    from conftest import ENDPOINT
    from images import Containers, m2g_image

    put_dataset(s3, "lab-data", "ds/")
    image = m2g_image(tmp_path / "image")
    good_m2g = (image.bin_dir / "m2g").read_text()
    pipeline_facts.install_stand_in(pipeline_facts.M2G_TAG, image.bin_dir)  # the image holds old m2g
    batch_behaviour.on_submit = Containers(s3, image, ENDPOINT)
    batch_behaviour.run_seconds = 2  # jobs stay RUNNING: the triggerer waits for them

    code = cli("participant", "--bucket", "lab-data", "--bidsdir", "ds", "--participant_label", "01",
               "--follow", "--poll-seconds", "2")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1, out
    assert "the canary failed, so no scan was submitted: command: m2g refused the command (exit 2)" in out
    assert "2 scans: 0 succeeded, 2 failed" in out
    assert len(batch_behaviour.submitted) == 1 and "-canary-" in batch_behaviour.submitted[0]  # only the canary

    (image.bin_dir / "m2g").write_text(good_m2g)  # the image rebuilt with the pinned m2g
    batch_behaviour.submitted.clear()
    code = cli("participant", "--bucket", "lab-data", "--bidsdir", "ds", "--participant_label", "01",
               "--pilot_scans", "1", "--follow", "--poll-seconds", "2")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "canary passed: the image can run this run's scans: m2g 95d271f7" in out
    assert "2 scans: 2 succeeded, 0 failed" in out
    names = batch_behaviour.submitted
    assert "-canary-" in names[0] and "sub-01_ses-retest" in names[1] and "sub-01_ses-test" in names[2]
