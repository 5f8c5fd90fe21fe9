"""Waiting triggers share one DescribeJobs per 100 jobs per poll interval (``ndmg_cloud.orchestration.poller``),
and a scan whose job SUCCEEDED ends its task from the trigger with the XComs its worker
would have pushed. DescribeJobs calls are counted where they arrive: in the local AWS
endpoint's Batch handler."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from airflow.triggers.base import TaskSuccessEvent

from ndmg_cloud.orchestration.poller import DESCRIBE_JOBS_MAX
from ndmg_cloud.orchestration.taskids import THROTTLED_XCOM_KEY
from ndmg_cloud.orchestration.triggers import ScanJobTrigger

from helpers import submit


@pytest.fixture
def describe_jobs_calls(monkeypatch):
    """The job ids of every DescribeJobs request the local Batch endpoint answered."""
    from moto.batch.responses import BatchResponse

    calls: list[list[str]] = []
    real = BatchResponse.describejobs

    def counted(self):
        calls.append(list(self._get_param("jobs")))
        return real(self)

    monkeypatch.setattr(BatchResponse, "describejobs", counted)
    return calls


def submit_many(batch, n):
    return [submit(batch, f"ds-sub-{i:04d}-abc") for i in range(n)]


def run_all(triggers, timeout=60):
    async def first_event(trigger):
        async for event in trigger.run():
            return event

    async def everyone():
        return await asyncio.gather(*(first_event(t) for t in triggers))

    return asyncio.run(asyncio.wait_for(everyone(), timeout))


def test_250_waiting_jobs_cost_three_describe_jobs_per_poll(batch_env, batch_behaviour, describe_jobs_calls):
    batch_behaviour.run_seconds = 120  # all RUNNING throughout
    job_ids = submit_many(batch_env, 250)
    polls = 3
    triggers = [ScanJobTrigger(job_id=j, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=1, max_polls=polls) for j in job_ids]
    describe_jobs_calls.clear()

    events = run_all(triggers)

    assert all(e.payload["status"] == "error" and "still RUNNING after 3 polls" in e.payload["message"] for e in events)
    per_poll = math.ceil(250 / DESCRIBE_JOBS_MAX)
    assert len(describe_jobs_calls) == polls * per_poll  # not 250 x 3
    assert max(len(ids) for ids in describe_jobs_calls) == DESCRIBE_JOBS_MAX
    asked = [j for ids in describe_jobs_calls for j in ids]
    assert sorted(asked) == sorted(job_ids * polls)  # every job, once per poll


def test_a_trigger_that_stops_waiting_is_no_longer_asked_for(batch_env, batch_behaviour, describe_jobs_calls):
    batch_behaviour.run_seconds = 120
    keep, leave = submit_many(batch_env, 2)
    staying = ScanJobTrigger(job_id=keep, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=1, max_polls=4)
    leaving = ScanJobTrigger(job_id=leave, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=1)

    async def scenario():
        async def consume(trigger):
            async for event in trigger.run():
                return event

        stay = asyncio.ensure_future(consume(staying))
        go = asyncio.ensure_future(consume(leaving))
        await asyncio.sleep(1.5)  # both asked in the first round
        go.cancel()  # a triggerer shutting down: no TerminateJob, just stop asking
        with pytest.raises(asyncio.CancelledError):
            await go
        return await stay

    describe_jobs_calls.clear()
    event = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert event.payload["status"] == "error"
    assert [set(ids) for ids in describe_jobs_calls[:2]] == [{keep, leave}] * 2  # one call for both
    assert all(ids == [keep] for ids in describe_jobs_calls[2:])  # the cancelled one is gone
    assert len(describe_jobs_calls) == 4


def test_a_succeeded_scan_ends_its_task_in_the_triggerer_with_its_xcoms(batch_env, batch_behaviour):
    job_id = submit_many(batch_env, 1)[0]
    trigger = ScanJobTrigger(
        job_id=job_id, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=0, scan_id="sub-0000", end_on_success=True
    )

    (event,) = run_all([trigger])

    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms["return_value"] == job_id
    link = event.xcoms["cloudwatch_events"]  # what the provider's "logs" link reads
    job = batch_env.describe_jobs(jobs=[job_id])["jobs"][0]
    assert link["awslogs_stream_name"] == job["container"]["logStreamName"]
    assert link["awslogs_group"] == "/aws/batch/job" and link["awslogs_region"] == link["region_name"] == "us-east-1"
    assert link["aws_domain"] == "aws.amazon.com"
    # the URL the api-server shows (no worker runs after this event to write it)
    assert event.xcoms["_link_CloudWatchEventsLink"] == (
        "https://console.aws.amazon.com/cloudwatch/home?region=us-east-1#logsV2:log-groups/log-group/"
        f"%2Faws%2Fbatch%2Fjob/log-events/{job['container']['logStreamName'].replace('/', '%2F')}"
    )
    assert THROTTLED_XCOM_KEY not in event.xcoms
    json.dumps(event.xcoms)  # stored as JSON by the triggerer


def test_a_failed_scan_resumes_on_a_worker(batch_env, batch_behaviour):
    batch_behaviour.fail["sub-0000"] = "Essential container in task exited"
    job_id = submit_many(batch_env, 1)[0]
    trigger = ScanJobTrigger(
        job_id=job_id, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=0, scan_id="sub-0000", end_on_success=True
    )

    (event,) = run_all([trigger])

    assert not isinstance(event, TaskSuccessEvent)  # Airflow's retries and the failure's reason apply there
    assert event.payload["status"] == "failure" and "Essential container" in event.payload["message"]


def test_throttled_polls_back_off_the_shared_poller_and_reach_the_xcoms(batch_env, batch_behaviour, monkeypatch, capfd):
    from faults import throttling_hook

    job_ids = submit_many(batch_env, 3)
    triggers = [
        ScanJobTrigger(job_id=j, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=0, scan_id=f"s{i}", end_on_success=True)
        for i, j in enumerate(job_ids)
    ]
    Hook = throttling_hook(triggers[0]._hook, first=2)
    for trigger in triggers:
        monkeypatch.setattr(trigger, "_hook", Hook)
    capfd.readouterr()

    events = run_all(triggers)

    # one shared call was throttled twice: each waiting job counts both
    assert [e.xcoms[THROTTLED_XCOM_KEY] for e in events] == [{"scan_id": f"s{i}", "polls": 2} for i in range(3)]
    said = [line for line in capfd.readouterr().out.splitlines() if "throttled DescribeJobs" in line]
    assert len(said) == 3 and all("TooManyRequestsException" in line for line in said)  # once per trigger


def test_a_batch_server_error_is_tried_again_not_handed_to_every_waiting_trigger(batch_env, batch_behaviour, monkeypatch):
    from faults import SERVER_ERROR, throttling_hook

    job_ids = submit_many(batch_env, 3)
    triggers = [ScanJobTrigger(job_id=j, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=0) for j in job_ids]
    Hook = throttling_hook(triggers[0]._hook, first=2, error=SERVER_ERROR)  # Batch still answered 500
    for trigger in triggers:
        monkeypatch.setattr(trigger, "_hook", Hook)

    events = run_all(triggers)

    assert [e.payload["status"] for e in events] == ["success"] * 3 and Hook.calls["n"] == 3


@pytest.fixture
def fresh_heartbeats(monkeypatch):
    from ndmg_cloud.orchestration import heartbeat

    monkeypatch.setattr(heartbeat, "_BEATEN", {})
    return heartbeat


def lease_of(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_waiting_scans_keep_their_runs_lease_alive_once_per_interval(batch_env, batch_behaviour, s3, fresh_heartbeats, monkeypatch):
    """No worker runs while the scans wait: their triggers move the lease's heartbeat on (a
    long scan phase is never taken for a dead holder), one refresh per run per interval
    however many scans wait, and never the heartbeat of a lease another run holds."""
    from ndmg_cloud.participant import lease

    s3.create_bucket(Bucket="out")
    assert lease.take(s3, "out", "ndmg/.ndmg-lease.json", "run-a", lambda r: None, now=lambda: 1000.0) is None
    assert lease.take(s3, "out", "other/.ndmg-lease.json", "run-b", lambda r: None, now=lambda: 1000.0) is None
    refreshed: list[str] = []
    real = lease.refresh
    monkeypatch.setattr(lease, "refresh", lambda client, b, k, run_id, **kw: refreshed.append(run_id) or real(client, b, k, run_id, **kw))
    batch_behaviour.run_seconds = 120
    ours = {"bucket": "out", "key": "ndmg/.ndmg-lease.json", "run_id": "run-a"}
    theirs = {"bucket": "out", "key": "other/.ndmg-lease.json", "run_id": "run-a"}  # run-b's lease
    triggers = [
        ScanJobTrigger(job_id=j, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=1, max_polls=3, lease=ours)
        for j in submit_many(batch_env, 50)
    ]
    triggers.append(
        ScanJobTrigger(job_id=triggers[0].job_id, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=1, max_polls=3, lease=theirs)
    )

    run_all(triggers)

    assert refreshed == ["run-a", "run-a"]  # 51 triggers x 3 polls: one refresh per lease
    assert lease_of(s3, "out", "ndmg/.ndmg-lease.json")["heartbeat"] > 1000.0
    other = lease_of(s3, "out", "other/.ndmg-lease.json")
    assert (other["run_id"], other["heartbeat"]) == ("run-b", 1000.0)
    # after the interval, the next poll refreshes again
    fresh_heartbeats._BEATEN.clear()
    run_all(triggers[:1])
    assert refreshed == ["run-a"] * 3
    assert ScanJobTrigger(**triggers[0].serialize()[1]).lease == ours  # the triggerer rebuilds it from its kwargs
