"""Every Batch job of a run accounted for at its end: jobs of scans whose task ended without
success are terminated and reported cancelled; jobs no row names are orphans, terminated."""

from __future__ import annotations

from ndmg_cloud.participant.jobs import batch_records, classify_failure
from ndmg_cloud.participant.jobspec import PROJECT, PROJECT_TAG, job_name, run_tag
from ndmg_cloud.participant.reconcile import cancel_ended, jobs_of_run, scan_task_states, sweep_orphans

from helpers import submit

RUN = "manual__2026-11-25T18:00:00+00:00"


def submit_scan(batch, scan_id: str, run_id: str = RUN, dataset: str = "ds", tags: dict[str, str] | None = None) -> str:
    """A job as the run submits it: its name and tags (``tags`` replaces them: a job of someone else)."""
    ours = {PROJECT_TAG: PROJECT, "run_id": run_tag(run_id)}
    return submit(batch, job_name(dataset, scan_id, run_id), ours if tags is None else tags)


def test_task_states_are_matched_to_scans_by_map_index():
    states = {"run_scan_0": "success", "run_scan_1": "failed", "pilot_scan_0": "success", "canary": "success"}
    mapped = {"pilot_scan": ["sub-09"], "run_scan": ["sub-01", "sub-02", "sub-03"]}
    assert scan_task_states(states, mapped) == {"sub-09": "success", "sub-01": "success", "sub-02": "failed"}


def test_a_job_whose_task_ended_failed_is_terminated_and_cancelled(batch_env, batch_behaviour):
    batch_behaviour.run_seconds = 60  # both still running when the run ends
    ids = {"sub-01": submit_scan(batch_env, "sub-01"), "sub-02": submit_scan(batch_env, "sub-02")}
    records = batch_records(batch_env, ids)

    cancelled = cancel_ended(batch_env, records, {"sub-01": "failed", "sub-02": "running"}, RUN)

    assert cancelled == ["sub-01"]
    assert records["sub-01"].status == "FAILED" and records["sub-01"].failure_class == "cancelled"
    assert "its task ended failed" in records["sub-01"].reason
    jobs = {j["jobId"]: j for j in batch_env.describe_jobs(jobs=list(ids.values()))["jobs"]}
    assert classify_failure(jobs[ids["sub-01"]]) == "cancelled"  # Batch got the TerminateJob
    assert jobs[ids["sub-02"]]["status"] != "FAILED"  # its task still runs: left alone


def test_a_job_that_finished_before_the_kill_keeps_its_success(batch_env, batch_behaviour):
    ids = {"sub-01": submit_scan(batch_env, "sub-01")}
    import time

    deadline = time.time() + 30
    while batch_env.describe_jobs(jobs=[ids["sub-01"]])["jobs"][0]["status"] != "SUCCEEDED" and time.time() < deadline:
        time.sleep(0.2)
    records = batch_records(batch_env, ids)

    assert cancel_ended(batch_env, records, {"sub-01": "failed"}, RUN) == []
    assert records["sub-01"].status == "SUCCEEDED"


def test_jobs_of_the_run_that_no_row_names_are_orphans(batch_env, batch_behaviour):
    batch_behaviour.run_seconds = 60
    named = submit_scan(batch_env, "sub-01")
    duplicate = submit_scan(batch_env, "sub-01")  # a second job for one scan, recorded nowhere
    other_run = submit_scan(batch_env, "sub-01", run_id="manual__another")
    other_dataset = submit_scan(batch_env, "sub-01", dataset="elsewhere")

    run_jobs = jobs_of_run(batch_env, "ndmg-queue", "ds", RUN)
    assert {j["jobId"] for j in run_jobs} == {named, duplicate}
    orphans = sweep_orphans(batch_env, run_jobs, {named}, RUN)

    assert [o.job_id for o in orphans] == [duplicate] and orphans[0].terminated
    statuses = {j["jobId"]: j for j in batch_env.describe_jobs(jobs=[named, duplicate, other_run, other_dataset])["jobs"]}
    assert classify_failure(statuses[duplicate]) == "cancelled"
    assert all(statuses[j]["status"] != "FAILED" for j in (named, other_run, other_dataset))


def test_a_job_that_is_not_the_runs_is_never_terminated_whatever_names_it(batch_env, batch_behaviour, caplog):
    """A job id taken from a rewritten XCom, or a job named like the run's by someone else:
    every path that terminates (reconcile, orphan sweep, the cancel listener's and kill's
    ``terminate_run_job``) describes the job first and leaves it alone unless it carries the
    project tag, the run's run_id tag and the run's token in its name."""
    from ndmg_cloud.participant.jobs import terminate_run_job

    batch_behaviour.run_seconds = 60
    foreign = {
        "another team's job": submit(batch_env, "their-job", {"team": "other"}),
        "named like the run's, untagged": submit_scan(batch_env, "sub-07", tags={}),
        "tagged for the project, another run": submit_scan(batch_env, "sub-08", tags={PROJECT_TAG: PROJECT, "run_id": "manual__other"}),
    }
    records = batch_records(batch_env, {f"sub-0{i}": job_id for i, job_id in enumerate(foreign.values())})
    assert cancel_ended(batch_env, records, dict.fromkeys(records, "failed"), RUN) == []
    run_jobs = jobs_of_run(batch_env, "ndmg-queue", "ds", RUN)
    assert {o.terminated for o in sweep_orphans(batch_env, run_jobs, set(), RUN)} <= {False}
    assert not any(terminate_run_job(batch_env, job_id, RUN, "ndmg_cloud kill") for job_id in foreign.values())

    assert batch_behaviour.terminated == []  # TerminateJob never reached Batch
    statuses = {j["jobId"]: j["status"] for j in batch_env.describe_jobs(jobs=list(foreign.values()))["jobs"]}
    assert set(statuses.values()) <= {"RUNNING", "RUNNABLE", "STARTING", "SUBMITTED", "PENDING"}
    assert "it has no project=ndmg-cloud tag" in caplog.text and "its run_id tag is 'manual__other'" in caplog.text
