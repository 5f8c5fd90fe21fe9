"""Stuck RUNNABLE jobs are diagnosed and cancelled with the reason; stopping a task
terminates its Batch job (deferred: the trigger's on_kill; sync: the operator's on_kill)."""

from __future__ import annotations

import asyncio

import pytest

from ndmg_cloud.orchestration.triggers import ScanJobTrigger
from ndmg_cloud.participant.capacity import diagnose_stuck, instance_memory_mib
from ndmg_cloud.participant.jobs import classify_failure

from helpers import submit

JOB = {"container": {"resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "15200"}]}}
QUEUE = {"jobQueueName": "ndmg-queue", "state": "ENABLED", "status": "VALID"}


def ce(name="ndmg-spot", status="VALID", state="ENABLED", max_vcpus=256, types=("r5.large",)):
    return {
        "computeEnvironmentName": name,
        "status": status,
        "state": state,
        "statusReason": "CLIENT_ERROR - no default VPC" if status == "INVALID" else "",
        "computeResources": {"maxvCpus": max_vcpus, "minvCpus": 0, "instanceTypes": list(types)},
    }


@pytest.mark.parametrize(
    "environments, expected",
    [
        ([ce()], None),  # VALID and able to run it: scaling up, leave it alone
        ([ce(status="INVALID")], "compute environment ndmg-spot is INVALID (CLIENT_ERROR - no default VPC)"),
        ([ce(state="DISABLED")], "compute environment ndmg-spot is DISABLED"),
        ([ce(max_vcpus=1)], "allows at most 1 vCPUs, the job needs 2"),
        ([ce(types=("m5.large",))], "instance types m5.large of compute environment ndmg-spot cannot fit the job's 15200 MiB"),
        ([ce(state="DISABLED"), ce(name="ndmg-ondemand")], None),  # the second one can run it
        ([ce(types=("r5.large",))], None),
        ([], "has no compute environment"),
    ],
)
def test_diagnosis(environments, expected):
    why = diagnose_stuck(JOB, QUEUE, environments)
    if expected is None:
        assert why is None
    else:
        assert expected in why


def test_instance_memory():
    assert instance_memory_mib("r5.large") == 16 * 1024
    assert instance_memory_mib("m5.xlarge") == 16 * 1024
    assert instance_memory_mib("optimal") is None


def run_trigger(trigger):
    async def first_event():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(first_event(), 30))


def test_a_job_stuck_behind_a_disabled_environment_is_cancelled_with_the_reason(batch_env, batch_behaviour):
    batch_behaviour.stuck = True
    job_id = submit(batch_env)
    batch_env.update_compute_environment(computeEnvironment="ndmg-compute", state="DISABLED")
    trigger = ScanJobTrigger(job_id=job_id, job_queue="ndmg-queue", runnable_timeout=0, poll_interval=0)

    event = run_trigger(trigger)

    assert event["status"] == "failure"
    assert "stuck RUNNABLE" in event["message"] and "compute environment ndmg-compute is DISABLED" in event["message"]
    job = batch_env.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["status"] == "FAILED"
    assert classify_failure(job) == "stuck_runnable"


def test_a_job_waiting_for_a_healthy_environment_is_left_alone(batch_env, batch_behaviour):
    batch_behaviour.stuck = True
    job_id = submit(batch_env)
    trigger = ScanJobTrigger(job_id=job_id, job_queue="ndmg-queue", runnable_timeout=0, poll_interval=0, max_polls=3)

    event = run_trigger(trigger)

    assert event["status"] == "error" and "still RUNNABLE after 3 polls" in event["message"]
    assert batch_env.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNABLE"  # not cancelled


def test_trigger_round_trips_through_serialization():
    trigger = ScanJobTrigger(job_id="j", job_queue="q", runnable_timeout=1800, poll_interval=30)
    path, kwargs = trigger.serialize()
    assert path == "ndmg_cloud.orchestration.triggers.ScanJobTrigger"
    assert ScanJobTrigger(**kwargs).serialize() == (path, kwargs)


def test_stopping_a_deferred_task_terminates_its_job(batch_env, batch_behaviour):
    batch_behaviour.run_seconds = 60  # RUNNING for a minute
    job_id = submit(batch_env)
    trigger = ScanJobTrigger(job_id=job_id, job_queue="ndmg-queue", runnable_timeout=1800)

    asyncio.run(trigger.on_kill())

    job = batch_env.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["status"] == "FAILED"
    assert job["statusReason"].startswith("ndmg-cloud: cancelled")
    assert classify_failure(job) == "cancelled"


def test_stopping_a_sync_task_terminates_its_job(batch_env, batch_behaviour):
    from ndmg_cloud.orchestration.operators import ScanBatchOperator

    batch_behaviour.run_seconds = 60
    job_id = submit(batch_env)
    operator = ScanBatchOperator(task_id="run_scan", scan_task={"scan_id": "sub-01", "job_spec_uri": "s3://b/x.json"})
    operator.job_id = job_id

    operator.on_kill()

    job = batch_env.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["status"] == "FAILED" and classify_failure(job) == "cancelled"


def test_a_job_wanting_more_vcpus_than_any_instance_has_is_stuck():
    job = {"container": {"resourceRequirements": [{"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "8000"}]}}
    assert "have fewer than the job's 4 vCPUs" in diagnose_stuck(job, QUEUE, [ce(types=("r5.large",))])
    assert diagnose_stuck(job, QUEUE, [ce(types=("r5.xlarge",))]) is None


def test_the_cancel_message_is_airflows():
    from airflow.jobs.triggerer_job_runner import _USER_ACTION_CANCEL_MSG

    from ndmg_cloud.orchestration.triggers import USER_ACTION_CANCEL

    assert USER_ACTION_CANCEL == _USER_ACTION_CANCEL_MSG


@pytest.mark.parametrize("by_user", [True, False])
def test_a_user_cancel_terminates_the_job_the_moment_it_reaches_the_trigger(batch_env, batch_behaviour, by_user):
    """As the triggerer does it: the waiting task is cancelled (with Airflow's message when a
    user acted); no on_kill is called here, so only the trigger itself can have terminated."""
    from ndmg_cloud.orchestration.triggers import USER_ACTION_CANCEL

    batch_behaviour.run_seconds = 60
    job_id = submit(batch_env)
    trigger = ScanJobTrigger(job_id=job_id, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=1)

    async def wait_then_cancel():
        async def consume():
            async for _ in trigger.run():
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(1.5)  # polling
        task.cancel(USER_ACTION_CANCEL if by_user else None)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(wait_then_cancel())
    job = batch_env.describe_jobs(jobs=[job_id])["jobs"][0]
    if by_user:
        assert job["status"] == "FAILED" and classify_failure(job) == "cancelled"
    else:  # a triggerer shutting down: another triggerer takes the job over
        assert job["status"] in ("RUNNABLE", "STARTING", "RUNNING")


def test_throttled_polls_are_said_and_counted(batch_env, batch_behaviour, monkeypatch, capfd):
    from faults import throttling_hook

    job_id = submit(batch_env)
    trigger = ScanJobTrigger(job_id=job_id, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=0)
    Hook = throttling_hook(trigger._hook, first=3)
    monkeypatch.setattr(trigger, "_hook", Hook)
    capfd.readouterr()
    event = run_trigger(trigger)
    assert event["status"] == "success" and event["throttled"] == 3
    said = [line for line in capfd.readouterr().out.splitlines() if "throttled DescribeJobs" in line]
    assert len(said) == 1 and "TooManyRequestsException" in said[0]  # once a minute at most
