"""A run's SubmitJob calls stay under NDMG_SUBMIT_RATE: each scan is given its turn when the
scans are released, and a task that starts before its turn waits. Arrival times are taken
where the calls arrive: in the local AWS endpoint's Batch handler."""

from __future__ import annotations

import json
import threading
import time

import pytest

from ndmg_cloud.participant.jobspec import scan_submission
from ndmg_cloud.participant.pacing import paced, submit_rate
from ndmg_cloud.participant.params import resolve
from ndmg_cloud.participant.runplan import ScanTask

from datasets import sessionless_scan


class Context(dict):
    """What submit_job reads of an Airflow context: ti (max_tries, xcom_push) and no store."""

    class TI:
        max_tries = 2

        def xcom_push(self, key, value):
            pass

    def __init__(self):
        super().__init__(ti=self.TI(), task_state_store=None)


def test_scans_submitted_back_to_back_keep_to_the_rate(batch_env, batch_behaviour, monkeypatch):
    from moto.batch.responses import BatchResponse

    from ndmg_cloud.orchestration.operators import ScanBatchOperator

    arrivals = []  # (when, job name) of each SubmitJob, as the endpoint received them
    real = BatchResponse.submitjob

    def timed(self):
        arrivals.append((time.time(), self._get_param("jobName")))
        return real(self)

    monkeypatch.setattr(BatchResponse, "submitjob", timed)
    monkeypatch.setattr(ScanBatchOperator, "_record", lambda self, context, job_id: None)  # no Airflow links here
    config = resolve({"bucket": "lab-data", "jobdir": "s3://lab/j/", "dataset": "ds"}, "run-1")
    tasks = [ScanTask(f"sub-0{i}", f"s3://lab/j/sub-0{i}.json", 1800) for i in range(4)]
    names = [scan_submission(config, t.scan_id).job_name for t in tasks]
    released = time.time()
    turns = paced(tasks, rate=2.0, start=released)  # 2 per second: turns 0, 0.5, 1.0, 1.5 s after release
    for task in turns:
        operator = ScanBatchOperator(task_id="run_scan", scan_task=task.kwargs())
        # what execute does once the task's argument and the spec are checked
        operator.take_job(task.scan_id, task.job_spec_uri, scan_submission(config, task.scan_id), 1800, config)
        operator.submit_not_before = task.submit_not_before
        operator.submit_job(Context())

    # every scan submitted once, in its turn's order, none before its turn (unpaced, all four
    # would arrive within the first half second); how much later is the machine's business
    assert [name for _, name in arrivals] == names
    early = [
        (name, round(task.submit_not_before - when, 3))
        for (when, name), task in zip(arrivals, turns, strict=True)
        if when < task.submit_not_before
    ]
    assert not early, f"submitted before their turn (seconds early): {early}"


def test_turns_follow_the_rate():
    tasks = [ScanTask("a", "x"), ScanTask("b", "y")]
    assert [t.submit_not_before for t in paced(tasks, rate=4.0, start=100.0)] == [100.0, 100.25]


@pytest.mark.parametrize("raw", ["0", "-1", "51", "fast"])
def test_a_rate_batch_does_not_allow_is_refused_naming_it(monkeypatch, raw):
    monkeypatch.setenv("NDMG_SUBMIT_RATE", raw)
    with pytest.raises(ValueError, match=rf"NDMG_SUBMIT_RATE='{raw}'.*at most 50"):
        submit_rate()


def test_the_default_rate_leaves_room_under_the_account_quota(monkeypatch):
    """Every run the DAG may have at once, each at the default rate, stays under half the quota."""
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    from ndmg_cloud.participant.pacing import BATCH_SUBMIT_QUOTA

    monkeypatch.delenv("NDMG_SUBMIT_RATE", raising=False)
    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags")).dags["ndmg_participant"]
    assert dag.max_active_runs * submit_rate() <= BATCH_SUBMIT_QUOTA / 2


def test_a_job_spec_another_run_wrote_is_refused_naming_both_runs(s3):
    """A jobdir shared by two runs: the second's specs replace the first's; the first run's
    task must not submit the second run's job."""
    from ndmg_cloud.core.s3 import put_json
    from ndmg_cloud.participant.jobspec import build_spec, read_spec, write_specs
    from ndmg_cloud.participant.seal import BrokenSeal

    s3.create_bucket(Bucket="lab")
    run_a = resolve({"bucket": "lab-data", "jobdir": "s3://lab/jobs/"}, "run-A")
    run_b = resolve({"bucket": "lab-data", "jobdir": "s3://lab/jobs/"}, "run-B")
    scan = sessionless_scan()
    write_specs(s3, [build_spec(run_b, scan)])  # s3://lab/jobs/sub-01.json, by run-B
    with pytest.raises(BrokenSeal, match="is for scan 'sub-01' of run 'run-B', not scan 'sub-01' of run 'run-A'"):
        read_spec(s3, run_a, "sub-01")
    put_json(s3, "s3://lab/jobs/sub-01.json", {"run_id": "run-A", "scan": {"scan_id": "sub-01"}})  # not a spec this code wrote
    with pytest.raises(BrokenSeal, match=r"the job spec \(s3://lab/jobs/sub-01.json\) has no seal"):
        read_spec(s3, run_a, "sub-01")


def test_the_triggerer_route_s_budget_gives_each_batch_call_a_turn_one_over_the_rate_apart(monkeypatch):
    """The triggerer route (budget.py): every Batch call of a triggerer's triggers takes the
    next turn; 120 calls made at once under a budget of 50 per second wait 0, 1/45, ... 119/45 s
    (turns at 90 % of the rate, so that calls leaving a little late cannot bunch above it; a
    clock of our own: the turns, not the machine's speed)."""
    import asyncio

    from ndmg_cloud.orchestration import budget

    now = [1000.0]
    waits: list[float] = []

    async def sleep(seconds):
        waits.append(round(seconds, 6))

    monkeypatch.setattr(budget.time, "monotonic", lambda: now[0])  # (budget.time is the time module: restored after)
    monkeypatch.setattr(budget.asyncio, "sleep", sleep)
    monkeypatch.delenv("NDMG_BATCH_API_BUDGET", raising=False)
    monkeypatch.delenv("NDMG_TRIGGERERS", raising=False)

    async def calls():
        shared = budget.api_budget()
        assert shared is budget.api_budget()  # one per event loop
        await asyncio.gather(*(shared.turn() for _ in range(120)))
        return shared

    shared = asyncio.run(calls())
    assert shared.rate == 50 and shared.calls == 120
    assert waits == [round(i / 45, 6) for i in range(1, 120)]  # the first call goes at once


def test_the_budget_is_split_across_the_deployment_s_triggerers(monkeypatch):
    from ndmg_cloud.orchestration.budget import calls_per_second

    monkeypatch.setenv("NDMG_BATCH_API_BUDGET", "40")
    monkeypatch.setenv("NDMG_TRIGGERERS", "2")
    assert calls_per_second() == 20


@pytest.mark.parametrize(("env", "raw"), [("NDMG_BATCH_API_BUDGET", "0"), ("NDMG_BATCH_API_BUDGET", "fifty"), ("NDMG_TRIGGERERS", "-1")])
def test_a_budget_or_triggerer_count_that_is_no_number_is_refused_naming_it(monkeypatch, env, raw):
    from ndmg_cloud.orchestration.budget import calls_per_second

    monkeypatch.setenv(env, raw)
    with pytest.raises(ValueError, match=f"{env}='{raw}' is not"):
        calls_per_second()


class Throttling(threading.Thread):
    """A Batch endpoint on 127.0.0.1 that throttles every call, counting the requests."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        endpoint = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                endpoint.requests += 1
                body = json.dumps({"__type": "TooManyRequestsException", "message": "Too Many Requests"}).encode()
                self.send_response(429)
                self.send_header("Content-Type", "application/json")
                self.send_header("x-amzn-ErrorType", "TooManyRequestsException")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        super().__init__(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def throttling():
    endpoint = Throttling()
    endpoint.start()
    yield endpoint
    endpoint.server.shutdown()


class CountingBudget:
    """An ApiBudget's two ways of waiting, counted (no waiting)."""

    def __init__(self):
        self.calls = 0

    def wait(self):
        self.calls += 1

    async def turn(self):
        self.calls += 1


CLIENT = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def test_every_request_of_a_paced_client_takes_a_turn_the_sdk_s_retries_included(throttling, monkeypatch):
    """A throttled SubmitJob that botocore retries is three calls at Batch's door, and three
    turns of the budget: the triggerer never counts one call where Batch counts three."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from ndmg_cloud.orchestration.budget import pace

    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0)
    budget = CountingBudget()
    config = Config(retries={"mode": "standard", "total_max_attempts": 3})
    client = pace(boto3.client("batch", endpoint_url=throttling.url, config=config, **CLIENT), budget)
    with pytest.raises(ClientError, match="TooManyRequestsException"):
        client.submit_job(jobName="sub-01", jobQueue="q", jobDefinition="d")
    assert throttling.requests == 3
    assert budget.calls == 3
    pace(client, budget)  # a client paced twice still takes one turn per request
    with pytest.raises(ClientError):
        client.list_jobs(jobQueue="q")
    assert (throttling.requests, budget.calls) == (6, 6)


def test_an_async_paced_client_takes_its_turns_on_the_event_loop(throttling):
    """The shared poller's aiobotocore client: each DescribeJobs request, retries included,
    awaits its turn."""
    import asyncio

    from aiobotocore.session import get_session
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from ndmg_cloud.orchestration.budget import pace

    budget = CountingBudget()

    async def describe():
        config = Config(retries={"mode": "legacy", "max_attempts": 1})
        async with get_session().create_client("batch", endpoint_url=throttling.url, config=config, **CLIENT) as client:
            pace(client, budget)
            with pytest.raises(ClientError, match="TooManyRequestsException"):
                await client.describe_jobs(jobs=["job-1"])

    asyncio.run(describe())
    assert throttling.requests == budget.calls == 2  # the call and its one retry
