"""Failed jobs are classified from DescribeJobs; the report carries class, line and log tail."""

from __future__ import annotations

import pytest

from ndmg_cloud.participant.jobs import FAILURE_CLASSES, JobRecord, batch_record, classify_failure, fetch_log_tails


def failed(status_reason, exit_code=None, container_reason=None, attempt_reason=None):
    container = {k: v for k, v in {"exitCode": exit_code, "reason": container_reason}.items() if v is not None}
    attempt = {"container": container, "startedAt": 1_000, "stoppedAt": 3_601_000}
    if attempt_reason:
        attempt["statusReason"] = attempt_reason
    return {"jobId": "j1", "status": "FAILED", "statusReason": status_reason, "attempts": [attempt], "container": {}}


@pytest.mark.parametrize(
    "job, expected",
    [
        (failed("Host EC2 (instance i-0abc) terminated."), "spot_interruption"),
        (failed("Essential container in task exited", attempt_reason="Host EC2 (instance i-1) terminated."), "spot_interruption"),
        (failed("Essential container in task exited", 137), "out_of_memory"),
        (
            failed("Essential container in task exited", container_reason="OutOfMemoryError: Container killed due to memory usage"),
            "out_of_memory",
        ),
        (failed("CannotPullContainerError: pull image manifest has been retried 5 time(s)"), "image_pull"),
        (failed("Task failed to start", container_reason="CannotPullContainerError: ref not found"), "image_pull"),
        (failed("Job attempt duration exceeded timeout"), "timeout"),
        (failed("Job attempt duration exceeded timeout", 137), "timeout"),  # SIGKILL after the timeout is not OOM
        (failed("ndmg-cloud: stuck RUNNABLE for 31 min: compute environment ndmg-ce is INVALID"), "stuck_runnable"),
        (failed("ndmg-cloud: cancelled (task marked failed)"), "cancelled"),
        (failed("Task killed by the user"), "cancelled"),
        (failed("Essential container in task exited", 1), "pipeline_error"),
    ],
)
def test_failure_classes(job, expected):
    assert classify_failure(job) == expected
    assert expected in FAILURE_CLASSES


def test_batch_record_has_class_reason_attempts_and_cost():
    job = failed("Essential container in task exited", 137, "OutOfMemoryError: Container killed")
    job["container"] = {"logStreamName": "ndmg/default/abc", "resourceRequirements": [{"type": "VCPU", "value": "2"}]}
    record = batch_record(job, "us-east-1")
    assert record.failure_class == "out_of_memory"
    assert record.reason == "Essential container in task exited; exit code 137; OutOfMemoryError: Container killed"
    assert record.attempts == 1 and record.duration_s is None  # job-level times absent
    assert record.cost_usd == pytest.approx(0.126, rel=1e-3)  # one instance-hour on-demand
    assert record.log_stream == "ndmg/default/abc"


def test_log_tails_are_fetched_for_failed_jobs_only():
    class Logs:
        calls = []

        def get_log_events(self, **kw):
            self.calls.append(kw["logStreamName"])
            return {"events": [{"message": "line 1"}, {"message": "Killed"}]}

    records = {
        "a": JobRecord("j1", "FAILED", log_stream="s1"),
        "b": JobRecord("j2", "SUCCEEDED", log_stream="s2"),
        "c": JobRecord("j3", "FAILED"),  # no stream: nothing to read
    }
    logs = Logs()
    fetch_log_tails(logs, records)
    assert logs.calls == ["s1"]
    assert records["a"].log_tail == ["line 1", "Killed"]
    assert records["b"].log_tail == []


def test_the_xcoms_a_trigger_ends_its_task_with_read_back_as_a_workers_do():
    """A TaskSuccessEvent's XComs are stored by the supervisor with ``XComModel.set``, which
    serializes them to JSON text that the Execution and REST APIs hand back as is; a worker's
    push comes back as the dict. Both read the same (the report, ``ndmg_cloud kill``)."""
    from airflow.models.xcom import XComModel

    from ndmg_cloud.participant.jobs import SubmittedJob, ThrottledPolls

    job, throttled = SubmittedJob("sub-01_ses-1", "job-1"), ThrottledPolls("sub-01_ses-1", 3)
    stored = XComModel.serialize_value(job.to_xcom())
    assert isinstance(stored, str)  # what a reader pulls
    assert SubmittedJob.from_xcom(stored) == SubmittedJob.from_xcom(job.to_xcom()) == job
    assert ThrottledPolls.from_xcom(XComModel.serialize_value(throttled.to_xcom())) == throttled
