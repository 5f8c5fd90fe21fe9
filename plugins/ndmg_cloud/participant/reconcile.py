"""At the end of a run, every Batch job of the run is accounted for (``verify_and_report``
and ``ndmg_cloud kill``):

- a scan whose task ended without success (failed, upstream_failed, skipped, removed: the
  user marked it failed, or killed the run) while its job is still active gets its job
  terminated here, and its row says ``cancelled``: a lost ``on_kill`` cannot leave a job
  running that the report calls anything else;
- a job that carries this run's job names but that no scan row names (a duplicate, a job
  whose task never recorded it) is an orphan: terminated if active, and listed in the report.

A run's jobs are found by name: every job name of a run is ``<dataset>-...-<run token>``
(``jobspec.job_name``), so one ListJobs with a JOB_NAME prefix filter lists them, in every
status.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ndmg_cloud.participant.jobs import ACTIVE, FAILED, JobRecord, jobs_named, terminate_run_job
from ndmg_cloud.participant.jobspec import job_name_prefix, run_token

ENDED_WITHOUT_SUCCESS = ("failed", "upstream_failed", "skipped", "removed")
CANCELLED = "cancelled"


@dataclass
class Orphan:
    job_id: str
    job_name: str
    status: str
    terminated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Orphan:
        return cls(str(data["job_id"]), str(data.get("job_name", "")), str(data.get("status", "")), bool(data.get("terminated")))


def jobs_of_run(client: Any, queue: str, dataset: str, run_id: str) -> list[dict[str, Any]]:
    """Summaries of every job of the queue whose name marks it as this run's."""
    suffix = f"-{run_token(run_id)}"
    return [job for job in jobs_named(client, queue, job_name_prefix(dataset) + "*") if job["jobName"].endswith(suffix)]


def scan_task_states(states: dict[str, str], mapped_scans: dict[str, list[str]]) -> dict[str, str]:
    """scan id -> state of its task, from Airflow's ``{task_id}_{map_index}`` keys and each
    mapped task's scan ids in map-index order."""
    out = {}
    for task_id, scan_ids in mapped_scans.items():
        for index, scan_id in enumerate(scan_ids):
            state = states.get(f"{task_id}_{index}")
            if state:
                out[scan_id] = state
    return out


def cancel_ended(client: Any, records: dict[str, JobRecord], task_states: dict[str, str], run_id: str) -> list[str]:
    """Terminate the active jobs of run ``run_id`` whose scan's task ended without success;
    their records become failed ``cancelled``. Returns the scan ids cancelled here."""
    cancelled = []
    for scan_id, record in records.items():
        state = task_states.get(scan_id)
        if state in ENDED_WITHOUT_SUCCESS and record.status in ACTIVE:
            if not terminate_run_job(client, record.job_id, run_id, f"its Airflow task ended {state}"):
                continue
            record.reason = f"cancelled: its task ended {state} while the job was {record.status}; terminated"
            record.status, record.failure_class = FAILED, CANCELLED
            cancelled.append(scan_id)
    return cancelled


def sweep_orphans(client: Any, run_jobs: list[dict[str, Any]], known_job_ids: set[str], run_id: str) -> list[Orphan]:
    """Jobs of run ``run_id`` (by name) that no row names: terminate the active ones that are
    the run's (tags and name checked on each), list them all."""
    orphans = []
    for job in run_jobs:
        if job["jobId"] in known_job_ids:
            continue
        active = job.get("status") in ACTIVE
        if active:
            active = terminate_run_job(client, job["jobId"], run_id, "an orphan of its run: no scan of the run names it")
        orphans.append(Orphan(job["jobId"], job["jobName"], job.get("status", "UNKNOWN"), active))
    return orphans
