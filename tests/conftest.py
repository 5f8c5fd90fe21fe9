"""Test setup: Airflow on SQLite in a temp home, and a moto server on 127.0.0.1.

The environment is set before anything imports Airflow or boto3.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ndmg_cloud.demo.stack import configure_environment

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="ndmg-airflow-"))
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()
FAKE_KEY_ID = "AKIA" + "NDMGFAKETESTKEY1"
FAKE_SECRET = "ndmg-fake-secret-that-must-never-leak"
ENDPOINT = f"http://127.0.0.1:{PORT}"
# The embedded stack's environment (Airflow on SQLite here, every AWS client on the local
# endpoint), then what the tests change: logs at INFO (they are scanned for credentials),
# distinctive fake credentials (proved never to leak), fast polling, no retry delay.
configure_environment(_HOME, ENDPOINT)
os.environ.update(
    {
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "NDMG_BATCH_POLL_SECONDS": "1",
        "NDMG_RETRY_DELAY_SECONDS": "0",
        # the worker route (route.py) in this process: dag.test() has no triggerer to start
        # tasks in. A live Airflow (live_environment) takes the default unless asked.
        "NDMG_SUBMIT_ROUTE": "worker",
    }
)


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=PORT, verbose=False)
    server.start()
    req = urllib.request.Request(
        f"{ENDPOINT}/moto-api/config",
        data=json.dumps({"batch": {"use_docker": False}}).encode(),
        method="POST",
    )
    urllib.request.urlopen(req).read()
    yield ENDPOINT
    server.stop()


@pytest.fixture
def aws(moto_server):
    """A clean local AWS for each test."""
    urllib.request.urlopen(urllib.request.Request(f"{ENDPOINT}/moto-api/reset", method="POST")).read()
    urllib.request.urlopen(
        urllib.request.Request(
            f"{ENDPOINT}/moto-api/config",
            data=json.dumps({"batch": {"use_docker": False}}).encode(),
            method="POST",
        )
    ).read()
    return moto_server


@pytest.fixture
def s3(aws):
    import boto3

    return boto3.client("s3", region_name=REGION, endpoint_url=ENDPOINT)


@pytest.fixture
def batch(aws):
    import boto3

    return boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)


def make_job_queue(batch, queue: str, definition: str, image: str, environment: dict[str, str], vcpus: str, memory: str) -> None:
    """The seed's Batch setup on the local endpoint: a compute environment, ``queue`` on it and
    the job definition ``definition`` of ``image`` with ``environment``."""
    import boto3

    iam = boto3.client("iam", region_name=REGION, endpoint_url=ENDPOINT)
    role = iam.create_role(RoleName="ndmg-batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    ce = batch.create_compute_environment(computeEnvironmentName="ndmg-compute", type="UNMANAGED", state="ENABLED", serviceRole=role)[
        "computeEnvironmentArn"
    ]
    batch.create_job_queue(
        jobQueueName=queue, state="ENABLED", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}]
    )
    batch.register_job_definition(
        jobDefinitionName=definition,
        type="container",
        containerProperties={
            "image": image,
            "environment": [{"name": name, "value": value} for name, value in environment.items()],
            "resourceRequirements": [{"type": "VCPU", "value": vcpus}, {"type": "MEMORY", "value": memory}],
        },
    )


@pytest.fixture
def batch_env(aws, batch):
    """The seed's Batch setup: queue ndmg-queue, definition ndmg (m2g's sizes)."""
    # where its scans may read and write, as the CloudFormation template sets it (scan/guard.py)
    roots = {"NDMG_INPUT_ROOTS": "s3://lab-data/", "NDMG_OUTPUT_ROOTS": "s3://lab-data/"}
    make_job_queue(batch, "ndmg-queue", "ndmg", "ndmg-cloud-m2g:latest", roots, vcpus="2", memory="15200")
    return batch


class BatchBehaviour:
    """How the local Batch ends jobs: at once and successfully unless told otherwise.

    ``fail[name_part] = reason`` fails jobs whose name contains ``name_part`` with that
    status reason; ``run_seconds`` keeps jobs RUNNING that long first (so deferrable
    waiting is exercised); ``stuck`` leaves jobs RUNNABLE; ``on_submit(job)`` runs after
    every submission as the job's container (e.g. ``images.Containers``): it may put what
    a real container would have written, and a non-zero int it returns is the container's
    exit code (the job then fails as Batch reports it).
    TerminateJob ends a job FAILED with its reason, as AWS does; ``terminated`` records it.
    ``hold`` keeps jobs RUNNING until ``release()``.
    """

    def __init__(self):
        self.fail: dict[str, str] = {}
        self.run_seconds = 0.0
        self.stuck = False
        self.on_submit = None
        self.submitted: list[str] = []
        self.terminated: list[str] = []  # names of the jobs TerminateJob reached
        self.hold = False
        self._held: list = []

    def release(self) -> None:
        """End every held job as it would have ended (and hold no more)."""
        self.hold = False
        held, self._held = self._held, []
        for stop in held:
            stop()


@pytest.fixture
def batch_behaviour(monkeypatch, aws):
    from moto.batch.models import Job as JobModel
    from moto.batch.models import JobStatus
    from moto.batch_simple import models

    behaviour = BatchBehaviour()

    def finish(self, include_start_attempt, job):
        self.backend._jobs[job.job_id] = job
        job.job_started_at = job.job_started_at or __import__("datetime").datetime.now()
        job.log_stream_name = job._stream_name
        if include_start_attempt:
            job._start_attempt()
        behaviour.submitted.append(job.job_name)
        reason = next((r for part, r in behaviour.fail.items() if part in job.job_name), None)
        exit_code = behaviour.on_submit(job) if behaviour.on_submit and not reason else None
        if exit_code:
            reason = "Essential container in task exited"

        def stop():
            if reason:
                job.job_stopped_reason = reason
                job.exit_code = exit_code or 1
            job._mark_stopped(success=reason is None)

        if behaviour.stuck:
            job.status = JobStatus.RUNNABLE
        elif behaviour.hold:
            job.status = JobStatus.RUNNING
            behaviour._held.append(lambda: None if job.job_stopped else stop())
        elif behaviour.run_seconds:
            job.status = JobStatus.RUNNING
            timer = threading.Timer(behaviour.run_seconds, lambda: None if job.job_stopped else stop())
            timer.daemon = True
            timer.start()
        else:
            stop()

    def terminate(self, reason):
        behaviour.terminated.append(self.job_name)
        if not self.job_stopped:
            self.job_stopped_reason = reason
            self._mark_stopped(success=False)

    monkeypatch.setattr(models.BatchSimpleBackend, "_mark_job_as_finished", finish)
    monkeypatch.setattr(JobModel, "terminate", terminate)
    return behaviour


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated SQLite metadata DB (needed by dag.test())."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _HOME


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


LIVE_PASSWORD = "ndmg-live-test"  # the admin's password on the live Airflow (a test-only file)
# every role of the simple auth manager the authorization matrix tries (tests/test_authz.py)
LIVE_USERS = {"admin": LIVE_PASSWORD, "user": "ndmg-live-user", "viewer": "ndmg-live-viewer"}


def live_environment(home: Path, **extra: str) -> tuple[dict[str, str], str]:
    """The environment of a real Airflow in ``home`` on a free port (SQLite, LocalExecutor,
    user admin with LIVE_PASSWORD, DAGs unpaused), and its URL."""
    port = _free_port()
    (home / "passwords.json").write_text(json.dumps(LIVE_USERS))
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{name}:{name}" for name in LIVE_USERS),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        # schedules (tests/test_schedules.py): look at a held lease every 5 s, give up after
        # 36 s, and look at the participant run a schedule's run waits for every 5 s
        "NDMG_SCHEDULE_LEASE_POLL_SECONDS": "5",
        "NDMG_SCHEDULE_WAIT_HOURS": "0.01",
        "NDMG_SCHEDULE_POLL_SECONDS": "5",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        **extra,
    }
    if "NDMG_SUBMIT_ROUTE" not in extra:
        del env["NDMG_SUBMIT_ROUTE"]  # the default route, as a deployment has it
    return env, url


def dag_ready(url: str) -> bool:
    """The api-server answers and has parsed ndmg_participant."""
    import requests

    try:
        token = requests.post(f"{url}/auth/token", json={"username": "admin", "password": LIVE_PASSWORD}, timeout=5).json()["access_token"]
        answer = requests.get(f"{url}/api/v2/dags/ndmg_participant", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        return answer.status_code == 200
    except (requests.RequestException, KeyError, ValueError):
        return False


@pytest.fixture(scope="session")
def live_airflow(moto_server, tmp_path_factory):
    """A real Airflow: ``airflow standalone`` (api-server, scheduler, dag-processor,
    triggerer as processes, SQLite) on a free port, user admin with a known password.
    Shared by the CLI and browser tests."""
    from ndmg_cloud.demo.stack import start_standalone, stop_process_group

    home = tmp_path_factory.mktemp("standalone")
    env, url = live_environment(home)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "ndmg_local", "2", "local"], env=env, check=True, capture_output=True)
    log = open(home / "standalone.log", "w")
    process = start_standalone(env=env, stdout=log, stderr=subprocess.STDOUT)

    try:
        assert wait_for(lambda: dag_ready(url), timeout=180), (home / "standalone.log").read_text()[-3000:]
        yield {"url": url, "home": home, "password": LIVE_PASSWORD}
    finally:
        stop_process_group(process)
        log.close()


def pytest_collection_modifyitems(config, items):
    """The tests on the session's live Airflow (``live_airflow``) run last, one after the
    other: its scheduler, dag-processor and triggerer then idle beside no other test."""
    live = [item for item in items if "live_airflow" in getattr(item, "fixturenames", ())]
    chosen = set(map(id, live))
    items[:] = [item for item in items if id(item) not in chosen] + live


@pytest.fixture
def cli(live_airflow, monkeypatch):
    """``ndmg_cloud`` as a person runs it against the session's live Airflow: ``cli("status",
    run_id)`` returns its exit code."""
    from ndmg_cloud.cli.main import main

    monkeypatch.setenv("NDMG_AIRFLOW_URL", live_airflow["url"])
    monkeypatch.setenv("NDMG_AIRFLOW_USER", "admin")
    monkeypatch.setenv("NDMG_AIRFLOW_PASSWORD", LIVE_PASSWORD)
    return lambda *argv: main(list(argv))


@pytest.fixture(scope="module")
def phantom_dirs(tmp_path_factory):
    """One session scan and one session-less scan; and the same with inherited gradients."""
    from ndmg_cloud.demo.synthetic import make_dataset

    plain = tmp_path_factory.mktemp("plain")
    make_dataset(plain, subjects=1, sessions=1, sessionless=1)
    inherited = tmp_path_factory.mktemp("inherited")
    make_dataset(inherited, subjects=1, sessions=1, sessionless=0, inherit_gradients=True)
    return {"plain": plain, "inherited": inherited}


@pytest.fixture
def image(tmp_path):
    """A laid-out m2g scan image of the test's own (pinned m2g stand-in, atlases, contract),
    which the test may break."""
    from images import m2g_image

    return m2g_image(tmp_path / "image")


@pytest.fixture
def network(aws):
    """Subnets and a security group of the local endpoint's default VPC, for the Batch stack."""
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ENDPOINT)
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]][:1]
    return subnets, groups


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, driven by Playwright), for the tests that click the UI."""
    from helpers import chromium, require_tool

    executable = chromium()
    require_tool("Chromium", executable is not None, "chromium")
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=args)
        yield browser
        browser.close()
