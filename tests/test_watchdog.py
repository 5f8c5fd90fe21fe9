"""Stuck RUNNABLE jobs are diagnosed and cancelled with the reason; stopping a task
terminates its Batch job (deferred: the trigger's on_kill; sync: the operator's on_kill)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

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


@pytest.mark.parametrize("cancel", ["user-marked-failed", "moved-to-another-triggerer", "triggerer-shutting-down"])
def test_a_user_cancel_terminates_the_job_and_a_moved_trigger_leaves_it(batch_env, batch_behaviour, monkeypatch, cancel):
    """As the triggerer does it: the waiting task is cancelled, with Airflow's user-action
    message both when a user acted on the task and (Airflow 3.3.2) when the trigger went to
    another triggerer; the trigger asks the supervisor for its task's state (here a stand-in
    for SUPERVISOR_COMMS, answering what Airflow's would) and terminates only for the user.
    No on_kill is called here, so only the trigger itself can have terminated."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

    from ndmg_cloud.orchestration.triggers import USER_ACTION_CANCEL

    asked = []

    class Supervisor:
        async def asend(self, msg):
            asked.append(msg)
            assert isinstance(msg, GetTaskStates)
            state = "deferred" if cancel == "moved-to-another-triggerer" else "failed"
            return TaskStatesResult(task_states={"run-1": {f"run_scan_{msg.map_index}": state}})

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", Supervisor(), raising=False)
    batch_behaviour.run_seconds = 60
    job_id = submit(batch_env)
    trigger = ScanJobTrigger(job_id=job_id, job_queue="ndmg-queue", runnable_timeout=1800, poll_interval=1)
    trigger.task_instance = SimpleNamespace(dag_id="ndmg_participant", run_id="run-1", task_id="run_scan", map_index=3)

    async def wait_then_cancel():
        async def consume():
            async for _ in trigger.run():
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(1.5)  # polling
        task.cancel(None if cancel == "triggerer-shutting-down" else USER_ACTION_CANCEL)
        with pytest.raises(asyncio.CancelledError):
            await task
        if trigger._stopping is not None:
            await asyncio.wait_for(trigger._stopping, 30)

    asyncio.run(wait_then_cancel())
    job = batch_env.describe_jobs(jobs=[job_id])["jobs"][0]
    if cancel == "user-marked-failed":
        assert job["status"] == "FAILED" and classify_failure(job) == "cancelled"
        assert [(m.task_ids, m.map_index, m.run_ids) for m in asked] == [(["run_scan"], 3, ["run-1"])]
    else:  # another triggerer waits on the job, or takes it over
        assert job["status"] in ("RUNNABLE", "STARTING", "RUNNING")
        assert len(asked) == (1 if cancel == "moved-to-another-triggerer" else 0)


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
