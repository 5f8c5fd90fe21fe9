"""Crashes under a real Airflow: api-server, scheduler (LocalExecutor), dag-processor and
triggerer as separate processes that the tests SIGKILL and restart, against the local AWS
endpoint whose SubmitJob the tests slow down so that a kill lands inside the submit window.
The slow tier: ``make test-live`` (``.ci/run`` runs it after ``make test``).

Airflow timers shortened here, so that recovery takes seconds, not minutes:
``[scheduler] task_instance_heartbeat_timeout`` 20 s (default 300),
``task_instance_heartbeat_timeout_detection_interval`` 2 s (default 10),
``orphaned_tasks_check_interval`` 5 s (default 300), ``scheduler_health_check_threshold``
10 s (default 30).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ndmg_cloud.cli.airflowapi import Airflow, NotFound
from ndmg_cloud.demo.stack import free_port
from ndmg_cloud.orchestration.route import DEFAULT_ROUTE, ROUTE_ENV
from ndmg_cloud.participant.jobs import SubmittedJob
from ndmg_cloud.participant.jobspec import run_token

from conftest import ROOT, dag_ready, live_environment, wait_for
from datasets import put_dataset, scans_keys
from helpers import postgres_bin, read_json, require_tool, scan_of, scan_once_submitted, scan_states, submissions, submitted

pytestmark = pytest.mark.crash
PARTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TIMERS = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    "NDMG_RETRY_DELAY_SECONDS": "0",
    # 4 task processes per core, as the benchmarks run (docs/performance.md): at LocalExecutor's
    # default of 32 on 2 cores, 40 scans' workers (10 s of DAG parse each) stalled the
    # scheduler's loop past the threshold above; Airflow 3.3.2's adopt_or_reset_orphaned_tasks
    # then marks the scheduler's own job failed and resets its running tasks, over and over
    # (seen in CI: run_scan at try 18, jobs terminated as cancelled)
    "AIRFLOW__CORE__PARALLELISM": str(4 * (os.cpu_count() or 2)),
}


class Parts:
    """Airflow's components, each a process group of its own."""

    def __init__(self, home: Path, env: dict[str, str], url: str):
        self.home, self.env, self.url = home, env, url
        self.processes: dict[str, subprocess.Popen] = {}
        self.postgres: Any = None  # the metadata database, where it is PostgreSQL
        self.route = env.get(ROUTE_ENV) or DEFAULT_ROUTE  # where scan tasks start

    def start(self, name: str) -> None:
        """Start component ``name`` (``triggerer-2``: a second triggerer; ``worker-1``: a
        Celery worker of that name, serving its task logs on a port of its own)."""
        log = open(self.home / f"{name}.log", "ab")
        binary = str(Path(sys.executable).parent / "airflow")
        command, env = [name.split("-")[0] if name.startswith("triggerer") else name], self.env
        if name.startswith("worker"):
            command = ["celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "2"]
            env = {**env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
        self.processes[name] = subprocess.Popen([binary, *command], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL the component and everything it started (LocalExecutor's task processes)."""
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def started_parts(tmp_path_factory, route: str = "worker", workers: int = 0, home: Path | None = None, **settings: str):
    """Airflow's parts as processes in ``home``: NDMG_TRIGGERERS triggerers, and ``workers``
    Celery workers (the settings then name CeleryExecutor, its database and its broker)."""
    home = home or tmp_path_factory.mktemp("crash")
    env, url = live_environment(home, **{**TIMERS, "NDMG_SUBMIT_ROUTE": route, **settings})
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    airflow_parts = Parts(home, env, url)
    triggerers = int(settings.get("NDMG_TRIGGERERS", "1"))
    for name in [*PARTS, *(f"triggerer-{i}" for i in range(2, triggerers + 1)), *(f"worker-{i}" for i in range(1, workers + 1))]:
        airflow_parts.start(name)
    try:
        assert wait_for(lambda: dag_ready(url), timeout=180), (home / "api-server.log").read_text()[-3000:]
        yield airflow_parts
    finally:
        airflow_parts.stop_all()


@pytest.fixture(scope="module", params=["worker", "triggerer"])
def shared_parts(request, moto_server, tmp_path_factory):
    """One Airflow per submit route for the scenarios that kill nothing: no recovery to
    hurry, so Airflow's own scheduler health threshold (30 s), which a loop slowed by a busy
    machine (the CPU-load scenario) does not cross."""
    yield from started_parts(tmp_path_factory, request.param, AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD="30")


@pytest.fixture
def parts(shared_parts):
    """The shared Airflow; a run the scenario left going (a failed assertion, jobs held
    RUNNING) is marked failed after it, so that it cannot hold up the next scenario's run
    (max_active_runs) or its machine."""
    yield shared_parts
    api = Airflow(shared_parts.url, "admin", "ndmg-live-test")
    answer = api._request("GET", "/api/v2/dags/ndmg_participant/dagRuns?state=running&state=queued&limit=100")
    for run in answer["dag_runs"]:
        api.fail_run(run["dag_run_id"])


@pytest.fixture
def own_parts(moto_server, tmp_path_factory):
    """A fresh Airflow for a scenario that kills a component (a killed and restarted
    scheduler was seen to leave the next scenario's run unscheduled for minutes)."""
    yield from started_parts(tmp_path_factory)


@pytest.fixture
def triggerer_parts(moto_server, tmp_path_factory):
    """A fresh Airflow on the triggerer route (route.py): each scan task starts in the triggerer."""
    yield from started_parts(tmp_path_factory, "triggerer")


@pytest.fixture
def two_triggerers(moto_server, tmp_path_factory):
    """The triggerer route on two triggerers sharing a Batch API budget of 2 calls a second
    (1 each), each running at most 8 scans (so that 12 need both); a dead triggerer's
    triggers go to the other after 10 s without its heartbeat."""
    yield from started_parts(
        tmp_path_factory,
        "triggerer",
        NDMG_TRIGGERERS="2",
        NDMG_BATCH_API_BUDGET="2",
        AIRFLOW__TRIGGERER__CAPACITY="8",
        AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD="10",
    )


@pytest.fixture
def celery_parts(moto_server, tmp_path_factory):
    """The compose celery profile (docker-compose.yaml) as processes on this machine:
    CeleryExecutor with Debian's Redis (a password of its own) as the broker and Debian's
    PostgreSQL (CeleryExecutor refuses SQLite), two Celery workers and two triggerers."""
    import secrets

    require_tool("the Redis server", shutil.which("redis-server") is not None, "redis-server")
    require_tool("the PostgreSQL server", postgres_bin() is not None, "postgresql")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from scale import Postgres  # the scale benchmark's throwaway cluster

    home = tmp_path_factory.mktemp("celery")
    # the cluster belongs to 'postgres' when this runs as root: outside pytest's 0700 folder
    postgres = Postgres(Path(tempfile.mkdtemp(prefix="ndmg-celery-")))
    database = postgres.start()
    port, password = free_port(), secrets.token_urlsafe(24)
    (home / "redis.conf").write_text(f'bind 127.0.0.1\nport {port}\nrequirepass {password}\nsave ""\nappendonly no\ndir {home}\n')
    redis = subprocess.Popen(["redis-server", str(home / "redis.conf")], stdout=open(home / "redis.log", "wb"), stderr=subprocess.STDOUT)
    try:
        for parts in started_parts(
            tmp_path_factory,
            "triggerer",
            workers=2,
            home=home,
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database,
            AIRFLOW__CELERY__BROKER_URL=f"redis://:{password}@127.0.0.1:{port}/0",
            AIRFLOW__CELERY__RESULT_BACKEND="db+" + database,
            NDMG_TRIGGERERS="2",
            # two runs' 24 scans need both triggerers
            AIRFLOW__TRIGGERER__CAPACITY="15",
        ):
            parts.postgres = postgres
            yield parts
    finally:
        redis.terminate()
        redis.wait(30)
        postgres.stop()
        shutil.rmtree(postgres.dir.parent, ignore_errors=True)


@pytest.fixture
def worker_parts(moto_server, tmp_path_factory):
    """A fresh Airflow on the worker route, for a scenario only that route has (a worker's
    SubmitJob cut off by its scheduler's death)."""
    yield from started_parts(tmp_path_factory, "worker")


TWELVE = [f"sub-{sub:02d}_ses-{ses}" for sub in range(1, 7) for ses in (1, 2)]  # the 12 scans


def put_twelve_scans(s3) -> dict:
    """6 subjects x 2 sessions at s3://lab-data/ds12/; the run's conf."""
    put_dataset(s3, "lab-data", "ds12/", keys=scans_keys(6, 2))
    return {"bucket": "lab-data", "bidsdir": "ds12", "canary": False}


def report_of(api: Airflow, s3, run_id: str) -> dict:
    return read_json(s3, api.xcom(run_id, "verify_and_report"))


def assert_twelve_submitted_once_and_succeeded(api: Airflow, s3, batch_behaviour, run_id: str, timeout: int) -> None:
    """Once the run has ended: each of the twelve scans submitted once and succeeded, and
    the report names twelve jobs and no orphan."""
    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=timeout), api.task_instances(run_id)
    counts = submissions(batch_behaviour.submitted, run_id)
    print(f"SubmitJob per scan: {counts}; TerminateJob: {len(batch_behaviour.terminated)}")
    assert counts == dict.fromkeys(TWELVE, 1)
    assert scan_states(api, run_id) == dict.fromkeys(TWELVE, "success")
    report = report_of(api, s3, run_id)
    assert len({row["job_id"] for row in report["scans"]}) == 12
    assert report["orphans"] == []


def slow_submissions(monkeypatch, job_created: bool) -> tuple[threading.Event, dict]:
    """SubmitJob slow to answer at the endpoint (15 s): with the job created first, or never
    created (the call then fails: a caller still alive retries it). Returns the event set once
    a call is in that window, and the switch (``slow["on"] = False``) that ends the slowness."""
    from moto.batch_simple.models import BatchSimpleBackend

    real = BatchSimpleBackend.submit_job
    in_window = threading.Event()
    slow = {"on": True}

    def slow_submit(self, *args, **kwargs):
        if not slow["on"]:
            return real(self, *args, **kwargs)
        if job_created:
            answer = real(self, *args, **kwargs)  # Batch has the job; its answer is slow to leave
            in_window.set()
            time.sleep(15)
            return answer
        in_window.set()
        time.sleep(15)  # the request is on the wire when its caller dies; Batch then fails it
        raise RuntimeError("never answered")

    monkeypatch.setattr(BatchSimpleBackend, "submit_job", slow_submit)
    return in_window, slow


@pytest.mark.parametrize("job_created", [True, False], ids=["after-batch-created-the-job", "before-batch-created-it"])
def test_a_scheduler_killed_inside_the_submit_window_submits_each_scan_once(
    worker_parts, s3, batch_env, batch_behaviour, monkeypatch, job_created
):
    """The worker route: a worker's SubmitJob in flight when its scheduler dies."""
    parts = worker_parts
    conf = put_twelve_scans(s3)
    batch_behaviour.run_seconds = 3
    in_window, slow = slow_submissions(monkeypatch, job_created)
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger(conf)

    assert in_window.wait(180), (parts.home / "scheduler.log").read_text()[-3000:]
    # With its executor's workers and task supervisors. Each task runner lives on in a process
    # group of its own (Airflow 3.3), its SubmitJob in flight: the scheduler resets the task
    # at once and a new try starts while the old one may still create the job.
    parts.kill("scheduler")
    slow["on"] = False  # Batch answers promptly again
    parts.start("scheduler")

    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=400), api.task_instances(run_id)
    counts = submissions(batch_behaviour.submitted, run_id)
    print(f"SubmitJob per scan: {counts}; TerminateJob: {len(batch_behaviour.terminated)}")
    assert counts == dict.fromkeys(TWELVE, 1)
    report = report_of(api, s3, run_id)  # (the stand-in jobs write no outputs)
    assert {row["scan_id"]: row["failure_class"] for row in report["scans"]} == dict.fromkeys(TWELVE, None)
    assert len({row["job_id"] for row in report["scans"]}) == 12
    assert report["orphans"] == []


@pytest.mark.parametrize("job_created", [True, False], ids=["after-batch-created-the-job", "before-batch-created-it"])
def test_a_triggerer_killed_inside_the_submit_window_submits_each_scan_once(
    triggerer_parts, s3, batch_env, batch_behaviour, monkeypatch, job_created
):
    """The triggerer route: the triggerer (and its trigger runner) SIGKILLed while a SubmitJob
    is on the wire. The next triggerer runs the triggers again: a scan whose job Batch created
    reattaches to it by name; one whose call never created a job waits out that call's window,
    finds no job and submits. Each scan is submitted once, and all succeed."""
    parts = triggerer_parts
    conf = put_twelve_scans(s3)
    batch_behaviour.run_seconds = 3
    in_window, slow = slow_submissions(monkeypatch, job_created)
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger(conf)

    assert in_window.wait(180), (parts.home / "triggerer.log").read_text()[-3000:]
    parts.kill("triggerer")
    slow["on"] = False
    parts.start("triggerer")

    assert_twelve_submitted_once_and_succeeded(api, s3, batch_behaviour, run_id, timeout=500)


def test_a_triggerer_killed_among_two_hands_its_scans_to_the_other(two_triggerers, s3, batch_env, batch_behaviour, monkeypatch):
    """Issue 22, more than one machine: two triggerers (8 scans each at most) share the 12
    scans, paced at a shared budget of 2 Batch calls a second. One is SIGKILLed while they are
    being submitted; the other takes its triggers over (Airflow's trigger table and the
    trigger logs of every scan it held say so). Each scan is submitted once, all succeed, and
    the Batch calls of both never went above the budget."""
    from moto.batch.responses import BatchResponse

    parts = two_triggerers
    arrivals: list[float] = []  # every Batch call, as it arrives at the endpoint

    def counting(real):
        def counted(self):
            arrivals.append(time.monotonic())
            return real(self)

        return counted

    for operation in ("submitjob", "describejobs", "listjobs", "terminatejob"):
        monkeypatch.setattr(BatchResponse, operation, counting(getattr(BatchResponse, operation)))
    conf = put_twelve_scans(s3)
    batch_behaviour.run_seconds = 40
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger(conf)

    def query(sql: str) -> list[tuple]:
        with sqlite3.connect(parts.home / "airflow.db") as db:
            return db.execute(sql).fetchall()

    def holders() -> dict[int, int]:
        """Map index of each scan task whose trigger a triggerer runs -> that triggerer's job id."""
        return dict(
            query(
                "SELECT ti.map_index, t.triggerer_id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id "
                "WHERE ti.task_id = 'run_scan' AND t.triggerer_id IS NOT NULL"
            )
        )

    def shared() -> bool:
        return len(set(holders().values())) == 2 and 3 <= submitted(batch_behaviour, run_id) < 12

    assert wait_for(shared, timeout=240), (holders(), submitted(batch_behaviour, run_id))
    before = holders()
    parts.kill("triggerer")
    left = submitted(batch_behaviour, run_id)
    # the killed one is the triggerer whose heartbeat stops

    def heartbeats() -> dict[int, str]:
        return dict(query("SELECT id, latest_heartbeat FROM job WHERE job_type = 'TriggererJob'"))

    beats = heartbeats()
    assert set(before.values()) <= set(beats)

    def beating() -> set[int]:
        return {job for job, beat in heartbeats().items() if beat != beats[job]}

    assert wait_for(lambda: len(beating() & set(before.values())) == 1, timeout=60), beats
    (survivor,) = beating() & set(before.values())
    (victim,) = set(before.values()) - {survivor}
    theirs = sorted(index for index, job in before.items() if job == victim)
    print(f"killed triggerer job {victim}, which ran scans {theirs}, with {left} of 12 scans submitted; {survivor} lives")

    assert_twelve_submitted_once_and_succeeded(api, s3, batch_behaviour, run_id, timeout=600)
    # each scan the killed triggerer held ran on in the other: its trigger log (Airflow writes
    # one per triggerer that runs the trigger, named by the triggerer's job id)
    scans = parts.home / "logs" / "dag_id=ndmg_participant" / f"run_id={run_id}" / "task_id=run_scan"
    for index in theirs:
        logs = sorted(path.name for path in (scans / f"map_index={index}").glob("attempt=*.log.trigger.*.log"))
        assert f"attempt=1.log.trigger.{victim}.log" in logs and f"attempt=1.log.trigger.{survivor}.log" in logs, (index, logs)
    # at most 1 call a second each, turns at 90 % of it: over any 20 s, at most 40 calls
    # (18 turns, one at the window's edge and one that left late, per triggerer)
    arrivals.sort()
    busiest = max(sum(1 for t in arrivals[i:] if t < start + 20) for i, start in enumerate(arrivals))
    print(f"Batch calls: {len(arrivals)}; busiest 20 s: {busiest} (budget 2/s: 40)")
    assert busiest <= 40


@pytest.mark.parametrize("route", ["worker", "triggerer"])
def test_a_triggerer_killed_while_every_scan_waits_loses_nothing(route, request, s3, batch_env, batch_behaviour):
    """On both routes (route.py); on the triggerer route no scan task ever starts on a worker."""
    parts = request.getfixturevalue("triggerer_parts" if route == "triggerer" else "own_parts")
    conf = put_twelve_scans(s3)
    batch_behaviour.run_seconds = 40  # RUNNING: every scan task waits in the triggerer
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger(conf)

    def deferred() -> int:
        return sum(ti["task_id"] == "run_scan" and ti["state"] == "deferred" for ti in api.task_instances(run_id))

    assert wait_for(lambda: deferred() == 12 and submitted(batch_behaviour, run_id) == 12, timeout=240), api.task_instances(run_id)

    def batch_link() -> str:  # what the UI shows on a scan task while its job runs
        links = api._request(
            "GET", f"/api/v2/dags/ndmg_participant/dagRuns/{quote(run_id, safe='')}/taskInstances/run_scan/links?map_index=0"
        )["extra_links"]
        return links.get("Batch Job Details") or ""

    def published() -> bool:  # every scan's batch_job written while the jobs still run
        try:
            return scan_states(api, run_id) == dict.fromkeys(TWELVE, "deferred")
        except NotFound:
            return False

    assert wait_for(lambda: batch_link().startswith("https://console.aws.amazon.com/batch/home?region="), timeout=30), batch_link()
    assert wait_for(published, timeout=30), api.task_instances(run_id)
    parts.kill("triggerer")
    time.sleep(3)
    parts.start("triggerer")  # takes the twelve triggers up again

    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=300), api.task_instances(run_id)
    counts = submissions(batch_behaviour.submitted, run_id)
    print(f"SubmitJob per scan: {counts}; TerminateJob: {len(batch_behaviour.terminated)}")
    assert counts == dict.fromkeys(TWELVE, 1)
    assert scan_states(api, run_id) == dict.fromkeys(TWELVE, "success")
    scans = [ti for ti in api.task_instances(run_id) if ti["task_id"] == "run_scan"]
    launches = [sum("Worker startup parse complete" in str(entry) for entry in api.task_log(run_id, ti)) for ti in scans]
    print(f"{route} route: worker launches per scan task {sum(launches) / len(launches):.2f}")
    assert launches == [0 if route == "triggerer" else 1] * 12
    report = report_of(api, s3, run_id)  # the report reads what the triggers pushed
    assert {row["scan_id"]: row["job_id"] for row in report["scans"]} == {
        scan_of(api, run_id, ti): SubmittedJob.from_xcom(api.xcom(run_id, "run_scan", "batch_job", ti["map_index"])).job_id for ti in scans
    }
    assert batch_behaviour.terminated == []


def test_a_scan_marked_failed_before_any_triggerer_took_it_up_has_its_job_terminated(own_parts, s3, batch_env, batch_behaviour):
    """No triggerer runs, so no trigger can hear the cancel: the api-server's listener
    terminates the job the task recorded, before it answers the request."""
    parts = own_parts
    parts.kill("triggerer")
    put_dataset(s3, "lab-data", "ds/")
    batch_behaviour.run_seconds = 60
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger({"bucket": "lab-data", "bidsdir": "ds", "participant_label": ["01"], "canary": False})
    run_path = f"/api/v2/dags/ndmg_participant/dagRuns/{quote(run_id, safe='')}"

    def deferred() -> list[dict]:
        return [ti for ti in api.task_instances(run_id) if ti["task_id"] == "run_scan" and ti["state"] == "deferred"]

    assert wait_for(lambda: len(deferred()) == 2, timeout=180), api.task_instances(run_id)
    target = sorted(deferred(), key=lambda ti: ti["map_index"])[0]

    scan = scan_once_submitted(api, batch_behaviour, run_id, target, scans=2)
    assert not (target.get("trigger") or {}).get("triggerer_id")  # no triggerer has it
    api._request("PATCH", f"{run_path}/taskInstances/run_scan/{target['map_index']}", {"new_state": "failed"})
    # terminated by the time the request was answered
    assert [name for name in batch_behaviour.terminated] == [name for name in batch_behaviour.submitted if scan in name]

    parts.start("triggerer")
    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=240), api.task_instances(run_id)
    rows = {row["scan_id"]: row for row in report_of(api, s3, run_id)["scans"]}
    assert rows[scan]["status"] == "failed" and rows[scan]["failure_class"] == "cancelled"
    other = next(s for s in rows if s != scan)
    assert rows[other]["failure_class"] is None  # its job ran to the end (and wrote nothing: a stand-in)
    assert {ti["rendered_map_index"]: ti["state"] for ti in api.task_instances(run_id) if ti["task_id"] == "run_scan"} == {
        scan: "failed",
        other: "success",
    }


def test_a_throttling_storm_is_waited_out_said_and_counted(parts, s3, batch_env, batch_behaviour, monkeypatch):
    """DescribeJobs answers 429 to every call for 25 s, then to 30% of them for 60 s."""
    import random

    from moto.batch.responses import BatchResponse
    from moto.core.exceptions import JsonRESTError

    put_dataset(s3, "lab-data", "ds/")
    batch_behaviour.run_seconds = 20
    real = BatchResponse.describejobs
    storm = {"from": None}

    def throttled(self):
        start = storm["from"]
        if start is not None:
            elapsed = time.monotonic() - start
            if elapsed < 25 or (elapsed < 85 and random.random() < 0.3):
                error = JsonRESTError("TooManyRequestsException", "Too Many Requests")
                error.code = 429
                raise error
        return real(self)

    monkeypatch.setattr(BatchResponse, "describejobs", throttled)
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger({"bucket": "lab-data", "bidsdir": "ds", "participant_label": ["01"], "canary": False})
    assert wait_for(
        lambda: sum(ti["task_id"] == "run_scan" and ti["state"] == "deferred" for ti in api.task_instances(run_id)) == 2, timeout=180
    )
    storm["from"] = time.monotonic()

    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=400), api.task_instances(run_id)
    counts = submissions(batch_behaviour.submitted, run_id)
    report = json.loads(s3.get_object(Bucket="lab-data", Key=api.xcom(run_id, "verify_and_report").split("/", 3)[3])["Body"].read())
    print(
        f"SubmitJob per scan: {counts}; TerminateJob: {len(batch_behaviour.terminated)}; "
        f"throttled polls in the report: {report['summary']['throttled_polls']}"
    )
    assert counts == {"sub-01_ses-retest": 1, "sub-01_ses-test": 1}
    scans = [ti for ti in api.task_instances(run_id) if ti["task_id"] == "run_scan"]
    assert {ti["state"] for ti in scans} == {"success"}
    assert report["summary"]["throttled_polls"] > 0
    logs = "\n".join(str(entry) for ti in scans for entry in api.task_log(run_id, ti))
    assert "throttled DescribeJobs" in logs  # the task log says so


def test_forty_waiting_scans_cost_one_describe_jobs_per_poll_and_one_task_launch_each(parts, s3, batch_env, batch_behaviour, monkeypatch):
    """Issue 12: the triggers of a real triggerer share their DescribeJobs (at most
    ceil(waiting / 100) + 1 calls per poll interval, counted where they arrive), and a scan
    whose job SUCCEEDED ends in the triggerer: its task runs on a worker once."""
    import math

    from moto.batch.responses import BatchResponse

    put_dataset(s3, "lab-data", "ds40/", keys=scans_keys(20, 2))
    batch_behaviour.hold = True  # RUNNING until released
    calls: list[tuple[float, int]] = []
    real = BatchResponse.describejobs

    def counted(self):
        calls.append((time.monotonic(), len(self._get_param("jobs"))))
        return real(self)

    monkeypatch.setattr(BatchResponse, "describejobs", counted)
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger({"bucket": "lab-data", "bidsdir": "ds40", "canary": False})

    def deferred() -> int:
        return sum(ti["task_id"] == "run_scan" and ti["state"] == "deferred" for ti in api.task_instances(run_id))

    assert wait_for(lambda: deferred() == 40, timeout=600), api.task_instances(run_id)
    time.sleep(3)  # every trigger taken up by the triggerer
    start, seconds = time.monotonic(), 12  # the live tier polls every second
    time.sleep(seconds)
    window = [n for t, n in calls if start <= t < start + seconds]
    batch_behaviour.release()
    per_interval = len(window) / seconds
    print(
        f"40 jobs RUNNING: {len(window)} DescribeJobs in {seconds} s ({per_interval:.2f} per 1 s poll), "
        f"{sum(window) / max(1, len(window)):.1f} job ids per call"
    )
    assert per_interval <= math.ceil(40 / 100) + 1
    assert sum(window) / len(window) >= 39  # the calls ask for (nearly) all 40 at once

    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=300), api.task_instances(run_id)
    scans = [ti for ti in api.task_instances(run_id) if ti["task_id"] == "run_scan"]
    assert {ti["state"] for ti in scans} == {"success"} and len(scans) == 40
    launches = [sum("Worker startup parse complete" in str(entry) for entry in api.task_log(run_id, ti)) for ti in scans]
    print(f"{parts.route} route: task launches per scan: {sum(launches) / len(launches):.2f}")
    # worker route: submitted on a worker, deferred, ended by its trigger, never resumed;
    # triggerer route: started, submitted and ended in the triggerer
    assert launches == [1 if parts.route == "worker" else 0] * 40
    first = min(scans, key=lambda ti: ti["map_index"])
    links = api._request(
        "GET", f"/api/v2/dags/ndmg_participant/dagRuns/{quote(run_id, safe='')}/taskInstances/run_scan/links?map_index={first['map_index']}"
    )["extra_links"]
    assert (links.get("CloudWatch Events") or "").startswith("https://console.aws.amazon.com/cloudwatch/"), links  # the UI's log link
    report = report_of(api, s3, run_id)  # the report reads what the triggerer pushed
    assert {row["job_id"] for row in report["scans"]} == {
        SubmittedJob.from_xcom(api.xcom(run_id, "run_scan", "batch_job", ti["map_index"])).job_id for ti in scans
    }


def test_marking_a_waiting_scan_failed_under_cpu_load_terminates_its_job(parts, s3, batch_env, batch_behaviour):
    """The user marks one waiting run_scan failed while the machine is busy: its Batch job
    gets TerminateJob (from the trigger, the moment the cancel reaches it), the other scan's
    job does not, and the report calls the cancelled scan cancelled."""
    put_dataset(s3, "lab-data", "ds/")
    batch_behaviour.run_seconds = 40  # RUNNING: both scan tasks defer to the triggerer
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger({"bucket": "lab-data", "bidsdir": "ds", "participant_label": ["01"], "canary": False})
    run_path = f"/api/v2/dags/ndmg_participant/dagRuns/{quote(run_id, safe='')}"

    def deferred() -> list[dict]:
        """Scan tasks whose trigger a triggerer has taken up (this scenario is the trigger's
        cancel; a cancel before that is the api-server's: see the no-triggerer scenario)."""
        return [
            ti
            for ti in api.task_instances(run_id)
            if ti["task_id"] == "run_scan" and ti["state"] == "deferred" and (ti.get("trigger") or {}).get("triggerer_id")
        ]

    assert wait_for(lambda: len(deferred()) == 2, timeout=180), api.task_instances(run_id)
    time.sleep(2)  # the triggerer starts what it took up on its next loop
    target = sorted(deferred(), key=lambda ti: ti["map_index"])[0]

    scan = scan_once_submitted(api, batch_behaviour, run_id, target, scans=2)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]  # both cores
    try:
        api._request("PATCH", f"{run_path}/taskInstances/run_scan/{target['map_index']}", {"new_state": "failed"})
        marked = time.monotonic()
        # the trigger terminates it at once; if even that were lost, verify_and_report would
        if wait_for(lambda: any(scan in name for name in batch_behaviour.terminated), timeout=30):
            print(f"TerminateJob {time.monotonic() - marked:.1f} s after marking the task failed (CPU busy)")
    finally:
        for process in busy:
            process.kill()

    assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=180)
    # TerminateJob for the cancelled scan's job only (the trigger's, and Airflow's on_kill again)
    assert set(batch_behaviour.terminated) == {name for name in batch_behaviour.submitted if scan in name}
    report_uri = api.xcom(run_id, "verify_and_report")
    bucket, key = report_uri.removeprefix("s3://").split("/", 1)
    rows = {row["scan_id"]: row for row in json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["scans"]}
    assert rows[scan]["status"] == "failed" and rows[scan]["failure_class"] == "cancelled"


def test_marking_the_whole_run_failed_terminates_every_scan_job(parts, s3, batch_env, batch_behaviour):
    conf = put_twelve_scans(s3)
    batch_behaviour.run_seconds = 120
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    run_id = api.trigger(conf)

    def deferred() -> int:
        return sum(ti["task_id"] == "run_scan" and ti["state"] == "deferred" for ti in api.task_instances(run_id))

    # (on the triggerer route a scan task is deferred before its trigger submits)
    assert wait_for(lambda: deferred() == 12 and submitted(batch_behaviour, run_id) == 12, timeout=240), api.task_instances(run_id)
    marked = time.monotonic()
    api._request("PATCH", f"/api/v2/dags/ndmg_participant/dagRuns/{quote(run_id, safe='')}", {"state": "failed"})
    assert wait_for(lambda: len(set(batch_behaviour.terminated)) == 12, timeout=60), batch_behaviour.terminated
    print(f"12 TerminateJob within {time.monotonic() - marked:.1f} s of marking the run failed")
    assert sorted(set(batch_behaviour.terminated)) == sorted(name for name in batch_behaviour.submitted if run_token(run_id) in name)


def test_two_runs_on_two_celery_workers_and_two_triggerers_succeed(celery_parts, s3, batch_env, batch_behaviour):
    """Issue 22, more than one machine: the compose celery profile's setup (CeleryExecutor,
    Redis, two workers, two triggerers) runs two datasets' runs at once to success. The
    scans wait in both triggerers (15 triggers each at most); the other tasks run on both
    Celery workers, none on the scheduler; each scan is submitted once."""
    parts = celery_parts
    put_dataset(s3, "lab-data", "ds12/", keys=scans_keys(6, 2))
    put_dataset(s3, "lab-data", "ds12b/", keys=scans_keys(6, 2))
    batch_behaviour.run_seconds = 40
    api = Airflow(parts.url, "admin", "ndmg-live-test")
    runs = [api.trigger({"bucket": "lab-data", "bidsdir": bidsdir, "canary": False}) for bidsdir in ("ds12", "ds12b")]

    def triggerers_holding_scans() -> int:
        return int(parts.postgres.query("SELECT count(DISTINCT triggerer_id) FROM trigger WHERE triggerer_id IS NOT NULL"))

    assert wait_for(lambda: triggerers_holding_scans() == 2, timeout=300), parts.postgres.query("SELECT id, triggerer_id FROM trigger")
    for run_id in runs:
        assert wait_for(lambda run_id=run_id: api.run(run_id)["state"] in ("success", "failed"), timeout=400), api.task_instances(run_id)
        counts = submissions(batch_behaviour.submitted, run_id)
        assert counts == dict.fromkeys(TWELVE, 1)
        states = {ti["task_id"]: ti["state"] for ti in api.task_instances(run_id) if ti["task_id"] != "run_scan"}
        assert scan_states(api, run_id) == dict.fromkeys(TWELVE, "success"), states
    ran = {  # the tasks each Celery worker executed, as its log names them
        name: re.findall(r"Executing workload in Celery.*?task_id='(\w+)'", (parts.home / f"{name}.log").read_text(errors="replace"))
        for name in ("worker-1", "worker-2")
    }
    print(f"tasks per Celery worker: { {name: len(tasks) for name, tasks in ran.items()} }")
    assert all(ran.values()), ran  # both workers ran the runs' tasks
    every = ran["worker-1"] + ran["worker-2"]
    assert sorted(every) == sorted(
        ["discover", "write_job_specs", "canary", "plan_scans", "release_scans", "choose_backend", "verify_and_report"] * 2
    )
    assert "run_scan" not in every  # the scans start in the triggerers: no worker launch
    scheduler = (parts.home / "scheduler.log").read_text(errors="replace")
    assert "CeleryExecutor" in scheduler and "LocalExecutor" not in scheduler
