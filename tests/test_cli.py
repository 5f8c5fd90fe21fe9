"""The ndmg_cloud command against a live `airflow standalone` on the local AWS endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from urllib.parse import quote

import pytest
import requests
from test_cli_errors import one_line_error, shell_without_aws

from ndmg_cloud.cli.main import main

from conftest import LIVE_PASSWORD as PASSWORD
from conftest import _free_port, wait_for
from datasets import put_dataset, put_phantoms
from helpers import setup_argv


@pytest.fixture(scope="module")
def airflow_server(live_airflow):
    """The session's `airflow standalone` (conftest.live_airflow), shared with the UI tests."""
    return live_airflow


@pytest.fixture
def phantoms(s3, tmp_path):
    put_phantoms(s3, tmp_path, "cli-data", "phantoms")
    return s3


def test_participant_follows_the_run_and_prints_the_report(cli, airflow_server, phantoms, capsys, tmp_path, monkeypatch):
    from ndmg_cloud.orchestration.links import airflow_report_url

    code = cli(
        "participant",
        "--bucket",
        "cli-data",
        "--bidsdir",
        "phantoms",
        "--pipeline",
        "lite",
        "--backend",
        "local",
        "--follow",
        "--poll-seconds",
        "2",
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "triggered ndmg_participant run manual__" in out
    assert "2/2 done, 0 failed  (success)" in out
    assert "2 scans (2 new): 2 succeeded, 0 failed, 0 missing outputs, 0 invalid" in out
    run_id = out.split("triggered ndmg_participant run ")[1].split()[0]
    url = airflow_report_url(airflow_server["url"], run_id)
    assert out.rstrip().endswith(f"open the report: {url}")
    token = {"Authorization": f"Bearer {_token(airflow_server)}"}
    assert "<html" in requests.get(url, headers=token, timeout=30).text  # Airflow serves it
    assert requests.get(url, timeout=30).status_code in (401, 403)  # to Airflow's users only

    assert cli("status", run_id) == 0
    status = capsys.readouterr().out
    assert f"run {run_id}: success" in status
    assert "sub-01_ses-1" in status and "sub-02" in status and "succeeded" in status
    assert f"open the report: {url}" in status

    assert cli("report", run_id, "--out", str(tmp_path / "r.html")) == 0
    assert "<html" in (tmp_path / "r.html").read_text()

    # the "Run report" button of the final task opens the same page
    from ndmg_cloud.cli.airflowapi import Airflow

    links = Airflow(airflow_server["url"], "admin", PASSWORD)._request(
        "GET", f"/api/v2/dags/ndmg_participant/dagRuns/{quote(run_id, safe='')}/taskInstances/verify_and_report/links"
    )["extra_links"]
    assert links["Run report"] == url

    # a shell without AWS settings: what Airflow knows, then one line saying what to export
    import boto3

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    for name, value in shell_without_aws(tmp_path).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    assert cli("status", run_id) == 2
    out, err = capsys.readouterr()
    assert f"run {run_id}: success" in out and "sub-02" in out
    line = one_line_error(err)
    assert f"cannot read s3://cli-data/phantoms/derivatives/ndmg/reports/{run_id}/report.json: no usable AWS credentials" in line
    assert "export AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=demo" in line


def _token(airflow_server):
    from ndmg_cloud.cli.airflowapi import Airflow

    return Airflow(airflow_server["url"], "admin", PASSWORD).token()


def test_a_run_that_fails_in_discover_says_why(cli, phantoms, capsys):
    code = cli(
        "participant",
        "--bucket",
        "cli-data",
        "--bidsdir",
        "phantoms",
        "--pipeline",
        "lite",
        "--backend",
        "local",
        "--participant-label",
        "99",
        "--follow",
        "--poll-seconds",
        "1",
    )
    out, err = capsys.readouterr()
    assert code == 1, out + err
    why = "discover failed: ParamError: participant_label ['99'] not found in the dataset; sub labels present: 01, 02"
    assert "0/0 done, 0 failed  (failed)" in out and why in out
    run_id = out.split("triggered ndmg_participant run ")[1].split()[0]

    assert cli("status", run_id) == 0
    status = capsys.readouterr().out
    assert status.splitlines()[:2] == [f"run {run_id}: failed", why]
    assert "verify_and_report failed: AirflowFailException: discovery failed, so nothing was run" in status

    assert cli("report", run_id) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"run {run_id} has no report: verify_and_report did not write one; `ndmg_cloud status {run_id}` says why" in line


def test_status_of_a_run_that_does_not_exist(cli, capsys):
    assert cli("status", "manual__nope") == 2
    line = one_line_error(capsys.readouterr().err)
    assert "ndmg_participant has no run 'manual__nope' on Airflow at" in line


def test_schema_refusal_is_relayed(cli, capsys):
    code = cli("participant", "--bucket", "cli-data", "--max_cost_usd", "-5")
    err = capsys.readouterr().err
    assert code == 2
    assert "Airflow refused the request" in err and "max_cost_usd" in err


def test_wrong_password_is_a_clear_error(airflow_server, monkeypatch, capsys):
    monkeypatch.setenv("NDMG_AIRFLOW_PASSWORD", "wrong")
    code = main(["status", "--airflow-url", airflow_server["url"], "--username", "admin"])
    assert code == 2
    assert "refused the credentials of user 'admin'" in capsys.readouterr().err


def test_unreachable_airflow(monkeypatch, capsys):
    monkeypatch.setenv("NDMG_AIRFLOW_PASSWORD", "x")
    code = main(["status", "--airflow-url", f"http://127.0.0.1:{_free_port()}"])
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

    # and a job that carries the run's name and tags but no task recorded (a duplicate)
    from ndmg_cloud.participant.jobspec import PROJECT, PROJECT_TAG, job_name, run_tag

    tags = {PROJECT_TAG: PROJECT, "run_id": run_tag(run_id)}
    batch_env.submit_job(jobName=job_name("ds", "sub-01_ses-test", run_id), jobQueue="ndmg-queue", jobDefinition="ndmg", tags=tags)
    # and one with the run's name but not its tags: not the run's, so kill leaves it alone
    batch_env.submit_job(jobName=job_name("ds", "sub-02_ses-test", run_id), jobQueue="ndmg-queue", jobDefinition="ndmg")

    assert cli("kill", run_id) == 0
    assert "3 Batch jobs terminated" in capsys.readouterr().out
    left = [
        job["jobName"]
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
        for job in batch_env.list_jobs(jobQueue="ndmg-queue", jobStatus=status)["jobSummaryList"]
    ]
    assert left == [job_name("ds", "sub-02_ses-test", run_id)]
    assert wait_for(lambda: requests_state(cli, run_id) == "failed", timeout=60)


def requests_state(cli, run_id):
    from ndmg_cloud.cli.airflowapi import Airflow

    return Airflow(os.environ["NDMG_AIRFLOW_URL"], "admin", PASSWORD).run(run_id)["state"]


def test_estimate_before_running(s3, capsys):
    put_dataset(s3, "lab-data", "ds/")
    assert main(["estimate", "--bucket", "lab-data", "--bidsdir", "ds", "--hours-per-scan", "1"]) == 0
    out = capsys.readouterr().out
    assert "7 scans found: 6 valid, 1 invalid, 0 already done, 6 to run" in out
    assert "6.0 instance-hours (12.0 vCPU-hours) of r5.large: about $0.76 on-demand, $0.30 on Spot" in out


def test_seed_flags_map_to_params():
    from ndmg_cloud.cli.main import conf_from, parser

    expected = {
        "bucket": "b",
        "bidsdir": "HNU1",
        "jobdir": "s3://b/jobs",
        "modif": "out",
        "dataset": "HNU1",
        "space": "native",
        "pipeline": "m2g",
        "participant_label": ["0025427"],
    }
    seed = parser().parse_args(
        [
            "participant",
            "--bucket",
            "b",
            "--bidsdir",
            "HNU1",
            "--jobdir",
            "s3://b/jobs",
            "--modif",
            "out",
            "--sp",
            "native",
            "--dataset",
            "HNU1",
            "--participant_label",
            "0025427",
            "--pipeline",
            "m2g",
        ]
    )
    assert conf_from(seed) == expected
    dashed = parser().parse_args(
        [
            "participant",
            "--bucket",
            "b",
            "--bidsdir",
            "HNU1",
            "--jobdir",
            "s3://b/jobs",
            "--modif",
            "out",
            "--space",
            "native",
            "--dataset",
            "HNU1",
            "--participant-label",
            "0025427",
            "--pipeline",
            "m2g",
        ]
    )
    assert conf_from(dashed) == expected


def test_underscore_and_dashed_spellings_set_the_same_params():
    from ndmg_cloud.cli.main import conf_from, parser

    def conf(*flags):
        return conf_from(parser().parse_args(["participant", "--bucket", "b", *flags]))

    seed = conf(
        "--session_label",
        "1",
        "--job_queue",
        "q",
        "--job_definition",
        "d:3",
        "--max_cost_usd",
        "0",
        "--pilot_scans",
        "1",
        "--track_type",
        "local",
        "--diffusion_model",
        "csd",
        "--dry_run",
        "--no_canary",
    )
    dashed = conf(
        "--session-label",
        "1",
        "--job-queue",
        "q",
        "--job-definition",
        "d:3",
        "--max-cost-usd",
        "0",
        "--pilot-scans",
        "1",
        "--track-type",
        "local",
        "--diffusion-model",
        "csd",
        "--dry-run",
        "--no-canary",
    )
    assert (
        seed
        == dashed
        == {
            "bucket": "b",
            "session_label": ["1"],
            "job_queue": "q",
            "job_definition": "d:3",
            "max_cost_usd": 0.0,
            "pilot_scans": 1,
            "track_type": "local",
            "diffusion_model": "csd",
            "dry_run": True,
            "canary": False,
        }
    )


@pytest.mark.slow  # 15 s on the live Airflow: with make test-live, to keep make test under 15 minutes
def test_local_trigger_goes_through_the_local_airflow_and_follows(cli, airflow_server, phantoms, capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(airflow_server["home"]))
    code = cli(
        "participant",
        "--bucket",
        "cli-data",
        "--bidsdir",
        "phantoms",
        "--pipeline",
        "lite",
        "--backend",
        "local",
        "--dry_run",
        "--local",
        "--follow",
        "--poll-seconds",
        "1",
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "on the local Airflow" in out and "(success)" in out
    assert "2 scans (2 new): " in out and "open the report: " in out


def test_local_follow_without_an_api_server_says_so(cli, airflow_server, phantoms, capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(airflow_server["home"]))
    with socket.socket() as held:  # bound, never listening: nothing can answer on its port
        held.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{held.getsockname()[1]}"
        code = cli(
            "participant",
            "--bucket",
            "cli-data",
            "--bidsdir",
            "phantoms",
            "--pipeline",
            "lite",
            "--backend",
            "local",
            "--dry-run",
            "--local",
            "--follow",
            "--airflow-url",
            nowhere,
        )
    out, err = capsys.readouterr()
    assert code == 2
    run_id = out.split("triggered ndmg_participant run ")[1].split()[0]
    assert one_line_error(err) == (
        f"ndmg_cloud: cannot follow run {run_id}: no Airflow API server answers at {nowhere}: start it "
        f"(`make airflow`, or `airflow api-server`) or pass --airflow-url; the run goes on: "
        f"`ndmg_cloud status {run_id}` shows it later"
    )


def test_setup_prints_the_queue_and_definition_and_is_idempotent(aws, capsys):
    import boto3

    from conftest import ENDPOINT, REGION

    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ENDPOINT)
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    argv = setup_argv(subnets, [group])
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "stack ndmg-cloud-batch: created" in first and "job_queue:" in first and "ndmg-queue" in first
    assert "output_uri:     under s3://lab-results/ndmg/ (e.g. s3://lab-results/ndmg/<dataset>/)" in first
    assert main(argv) == 0
    assert "stack ndmg-cloud-batch: unchanged" in capsys.readouterr().out
    assert main(["teardown"]) == 0
    assert "stack ndmg-cloud-batch: deleted" in capsys.readouterr().out


@contextlib.contextmanager
def airflow_answered_by(handler):
    """The CLI's Airflow client (logged in) facing an HTTP server on loopback run by ``handler``."""
    import threading
    from http.server import ThreadingHTTPServer

    from ndmg_cloud.cli.airflowapi import Airflow

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        airflow = Airflow(f"http://127.0.0.1:{server.server_address[1]}", "admin", "x")
        airflow._token = "t"
        yield airflow
    finally:
        server.shutdown()


def test_a_busy_airflow_database_is_asked_again_and_a_repeated_trigger_starts_one_run(monkeypatch):
    """SQLite under `airflow standalone` answers 500 "Database error" while it is locked:
    every call is asked again, a trigger too: it names its run id, so its repeat starts one
    run (Airflow answers 409 for a run id it has), whether the busy answer hid a run made or not."""
    from http.server import BaseHTTPRequestHandler

    from ndmg_cloud.cli.airflowapi import Airflow

    seen: list[tuple[str, str]] = []
    runs: dict[str, dict] = {}
    made_but_unsaid = {"on": False}  # the first POST creates the run, then answers 500

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, document: dict):
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self):
            seen.append((self.command, self.path))
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.command == "POST":
                run_id = request["dag_run_id"]
                if run_id in runs:
                    return self._send(409, {"detail": f"run {run_id} exists"})
                if made_but_unsaid["on"]:
                    runs[run_id] = {"dag_run_id": run_id, "conf": request["conf"]}
                    return self._send(500, {"reason": "Database error"})
            if sum(1 for s in seen if s == (self.command, self.path)) <= 2:
                return self._send(500, {"reason": "Database error"})
            if self.command == "POST":
                runs[request["dag_run_id"]] = {"dag_run_id": request["dag_run_id"], "conf": request["conf"]}
                return self._send(200, runs[request["dag_run_id"]])
            if self.command == "GET":
                return self._send(200, runs.get(self.path.rsplit("/", 1)[-1].replace("%3A", ":").replace("%2B", "+"), {}))
            return self._send(200, {"state": "failed"})

        do_GET = do_POST = do_PATCH = _answer

    monkeypatch.setattr(Airflow, "BUSY_WAIT_SECONDS", 0.01)
    with airflow_answered_by(Busy) as airflow:
        airflow.fail_run("run-1")  # PATCH: two busy answers, then done
        assert seen.count(("PATCH", "/api/v2/dags/ndmg_participant/dagRuns/run-1")) == 3
        first = airflow.trigger({"bucket": "b"})  # two busy answers, then the run
        assert seen.count(("POST", "/api/v2/dags/ndmg_participant/dagRuns")) == 3 and list(runs) == [first]
        made_but_unsaid["on"] = True
        second = airflow.trigger({"bucket": "c"})  # made, answered 500; the repeat hears 409
        assert list(runs) == [first, second] and runs[second]["conf"] == {"bucket": "c"}  # one run each


@pytest.mark.slow  # 50 s: with the live tier (make test-live), to keep make test under 15 minutes
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

    code = cli("participant", "--bucket", "lab-data", "--bidsdir", "ds", "--participant_label", "01", "--follow", "--poll-seconds", "2")
    out = capsys.readouterr().out
    assert code == 1, out
    assert "the canary failed, so no scan was submitted: command: m2g refused the command (exit 2)" in out
    assert "2 scans (2 new): 0 succeeded, 2 failed" in out
    assert len(batch_behaviour.submitted) == 1 and "-canary-" in batch_behaviour.submitted[0]  # only the canary

    (image.bin_dir / "m2g").write_text(good_m2g)  # the image rebuilt with the pinned m2g
    batch_behaviour.submitted.clear()
    code = cli(
        "participant",
        "--bucket",
        "lab-data",
        "--bidsdir",
        "ds",
        "--participant_label",
        "01",
        "--pilot_scans",
        "1",
        "--follow",
        "--poll-seconds",
        "2",
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "canary passed: the image can run this run's scans: m2g 95d271f7" in out
    assert "2 scans (2 new): 2 succeeded, 0 failed" in out
    names = batch_behaviour.submitted
    assert "-canary-" in names[0] and "sub-01_ses-retest" in names[1] and "sub-01_ses-test" in names[2]


def test_a_read_airflow_is_too_busy_to_answer_in_time_is_asked_again_and_a_trigger_is_not(monkeypatch):
    """An api-server swamped by task processes (seen in CI: 40 scans' workers on SQLite) can
    leave a GET unanswered past the timeout: the read is asked again. A POST that timed out
    is not repeated blindly: the message says what was not answered."""
    from http.server import BaseHTTPRequestHandler

    from ndmg_cloud.cli.airflowapi import Airflow, CliError

    seen: list[str] = []

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self):
            seen.append(self.command)
            if self.command == "POST" or seen.count("GET") == 1:
                time.sleep(1.0)  # longer than the client waits
            body = json.dumps({"state": "running"}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up on this one

        do_GET = do_POST = _answer

    monkeypatch.setattr(Airflow, "TIMEOUT_SECONDS", 0.3)
    with airflow_answered_by(Slow) as airflow:
        assert airflow.run("run-1")["state"] == "running"  # no answer in time, then one
        assert seen.count("GET") == 2
        with pytest.raises(CliError, match=r"did not answer POST /api/v2/dags/ndmg_participant/dagRuns within 0.3 s \(1 time"):
            airflow.trigger({"bucket": "b"})
        assert seen.count("POST") == 1
