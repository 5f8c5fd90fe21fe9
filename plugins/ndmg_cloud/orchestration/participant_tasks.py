"""The ``ndmg_participant`` DAG's task callables: each creates its AWS clients at run time
and calls the run's logic in ``ndmg_cloud.participant`` (discover, jobspec, canary, runplan,
verify) and ``ndmg_cloud.report``. The DAG file only wires these together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.layout import DESCRIPTION
from ndmg_cloud.core.s3 import put_json
from ndmg_cloud.orchestration.clients import batch_client, logs_client, s3_client
from ndmg_cloud.orchestration.route import TRIGGERER, submit_route
from ndmg_cloud.orchestration.scancreds import scan_credentials
from ndmg_cloud.orchestration.scanitems import ScanItems, write_scan_items
from ndmg_cloud.orchestration.taskids import (
    BACKEND_TASKS,
    BATCH_SCAN_TASKS,
    CANARY,
    CANARY_JOB_XCOM_KEY,
    DAG_ID,
    DISCOVER,
    JOB_XCOM_KEY,
    LOCAL_JOB_XCOM_KEY,
    PILOT_SCAN,
    PLAN_SCANS,
    RELEASE_SCANS,
    REPORTS_ALIAS,
    RUN_SCAN,
    RUN_SCAN_LOCAL,
    SETTLEMENT_XCOM_KEY,
    THROTTLED_XCOM_KEY,
    WRITE_JOB_SPECS,
)
from ndmg_cloud.participant import lease
from ndmg_cloud.participant.canary import (
    CanaryJob,
    CanaryOutcome,
    Settlement,
    canary_job,
    canary_outcome,
    run_contract,
    settle,
    skipped,
)
from ndmg_cloud.participant.cost import OverBudget, check_cost
from ndmg_cloud.participant.discover import TooManyScans, survey
from ndmg_cloud.participant.jobs import (
    CANARY_FAILED,
    NOT_SUBMITTED,
    PILOT_FAILED,
    SUCCEEDED,
    JobRecord,
    LocalJob,
    SubmittedJob,
    ThrottledPolls,
    batch_records,
    fetch_log_tails,
    local_records,
    xcom_json,
)
from ndmg_cloud.participant.jobspec import build_spec, check_no_shared_outputs, read_spec, run_file_uri, write_specs
from ndmg_cloud.participant.lease import TakeOver
from ndmg_cloud.participant.local import local_backend_refusal, run_local
from ndmg_cloud.participant.pacing import paced, submit_rate
from ndmg_cloud.participant.params import RunConfig, check_conf_keys, resolve
from ndmg_cloud.participant.preflight import preflight
from ndmg_cloud.participant.reconcile import Orphan, cancel_ended, jobs_of_run, scan_task_states, sweep_orphans
from ndmg_cloud.participant.runplan import PILOT, RELEASED, PlanRef, RunPlan, ScanTask
from ndmg_cloud.participant.seal import BrokenSeal, NoSealKey, check_key
from ndmg_cloud.participant.verify import output_listing, verify_scans
from ndmg_cloud.report.runreport import airflow_log_url, build_report, read_connectomes, write_report

log = logging.getLogger(__name__)
INVALID_ROWS_KEPT = 200  # invalid scans listed in the run plan and the report; the rest are counted


def discover_step(params: dict[str, Any], run_id: str, dag_run: Any = None, ti: Any = None) -> dict[str, Any]:
    """Take the output location's lease, resolve the params, list the dataset once, write
    the run plan to the job dir; return where it is (a ``PlanRef``: constant size)."""
    conf = getattr(dag_run, "conf", None) or {}
    check_conf_keys(conf)
    config = resolve(dict(params), run_id)
    if config.backend == "local" and local_backend_refusal():
        raise AirflowFailException(local_backend_refusal())
    with _refusing_broken_seals():
        check_key()  # before the lease: a run that cannot seal its plan takes nothing
    took_over = _take_lease(config, ti)
    if config.backend == "aws_batch" and not config.dry_run:
        # the revision the canary checks is the revision every scan job runs
        config.job_definition = preflight(batch_client(), config)
    s3 = s3_client()
    try:
        surveyed = survey(config, s3)
    except TooManyScans as err:
        raise AirflowFailException(str(err)) from None
    found, done, reruns = surveyed.found, surveyed.done, surveyed.reruns
    if done:
        log.info("%d scans already done for this pipeline and options (force=true reruns them)", len(done))
    for scan_id, why in reruns.items():
        log.info("%s runs again: %s", scan_id, why)
    _check_cost(config, surveyed.to_run)
    invalid = [s for s in found.scans if not s.valid]
    omitted = max(0, len(invalid) - INVALID_ROWS_KEPT)
    if omitted:
        log.warning("%d invalid scans; the report lists the first %d", len(invalid), INVALID_ROWS_KEPT)
    kept = {id(s) for s in invalid[:INVALID_ROWS_KEPT]}
    plan = RunPlan(
        config=config,
        scans=[s for s in found.scans if s.valid or id(s) in kept],
        done=done,
        reruns=reruns,
        invalid_omitted=omitted,
        warnings=found.warnings + ([f"took over the lease of run {took_over.run_id}: {took_over.why}"] if took_over else []),
        took_over=took_over,
        keys_listed=found.keys_listed,
        started_at=datetime.now(UTC).isoformat(),
    )
    ref = plan.write(s3)
    log.info("run plan: %s (%d scans, %d valid, %d done)", ref.uri, ref.scans, ref.valid, ref.done)
    return ref.to_dict()


def _plan(discovery: Any, run_id: str) -> RunPlan:
    """The run plan ``discover`` wrote, if the seals of its XCom and of the plan hold."""
    with _refusing_broken_seals():
        return RunPlan.read(s3_client(), PlanRef.from_dict(discovery, run_id))


def _config(discovery: Any, run_id: str) -> RunConfig:
    """The run's configuration, from discover's XCom if its seal holds."""
    with _refusing_broken_seals():
        return PlanRef.from_dict(discovery, run_id).config


@contextmanager
def _refusing_broken_seals() -> Iterator[None]:
    """A rewritten document (or no seal key) fails the task for good, saying why."""
    try:
        yield
    except (BrokenSeal, NoSealKey) as err:
        raise AirflowFailException(str(err)) from None


def write_job_specs_step(discovery: dict[str, Any], ti: Any) -> int:
    """Write one job spec per valid scan (those found done too: the canary may find them made
    by other code). Returns how many; pushes the canary's task arguments (or None)."""
    plan = _plan(discovery, ti.run_id)
    config = plan.config
    _refresh_lease(config)
    specs = [build_spec(config, scan) for scan in plan.valid]
    check_no_shared_outputs(specs)
    client = s3_client()
    with _refusing_broken_seals():
        write_specs(client, specs)
    log.info("wrote %d job specs under %s", len(specs), config.jobdir)
    if config.dry_run:
        log.info("dry run: nothing is submitted")
        ti.xcom_push(key=CANARY_JOB_XCOM_KEY, value=None)
        return len(specs)
    _mark_derivatives(client, config)
    _check_map_length(len([s for s in specs if s.scan_id not in plan.done]))
    canary = None
    if config.backend == "aws_batch" and config.canary:
        first = next((s for s in specs if s.scan_id not in plan.done), specs[0])
        job = canary_job(config, first.scan_id)
        log.info("canary %s will check scan %s on %s / %s", job.submission.job_name, first.scan_id, config.job_queue, config.job_definition)
        canary = CanaryJob.pick(config, first.scan_id)
    ti.xcom_push(key=CANARY_JOB_XCOM_KEY, value=canary)
    return len(specs)


def plan_scans_step(discovery: dict[str, Any], ti: Any) -> list[dict[str, Any]]:
    """Settle the run once the image is known (the canary's contract; the installed code on
    the local backend): what is done, what runs again and why, which scans are pilots.
    Writes the settlement and pushes its URI; returns the pilot scans' task arguments."""
    plan = _plan(discovery, ti.run_id)
    config = plan.config
    _refresh_lease(config)
    outcome = _canary(ti, config)
    if outcome.status == "failed":  # its task succeeded, so the job did: its findings are off
        raise AirflowFailException(f"the canary did not pass: {outcome.reason}")
    log.info("canary %s: %s", outcome.status, outcome.reason)
    tasks = plan.scan_tasks()
    settled = settle(config, tasks, plan.done, plan.reruns, run_contract(config, outcome), outcome)
    for scan_id, why in settled.reruns.items():
        log.info("%s runs again: %s", scan_id, why)
    to_run = settled.to_run(tasks)
    log.info("%d scans to run (%d pilots first), %d done", len(to_run), len(settled.pilots), len(settled.done))
    _check_cost(config, len(to_run))
    _check_map_length(len(to_run))
    ti.xcom_push(key=SETTLEMENT_XCOM_KEY, value=settled.write(s3_client(), config))
    pilots = _with_turns(config, [t for t in to_run if t.scan_id in settled.pilots])
    return ScanTask.sealed_list(pilots, config.run_id, PILOT)  # a few: a plain list


def _settlement(config: RunConfig) -> Settlement | None:
    """The settlement plan_scans wrote (where this run writes it); None when the run stopped before it."""
    with _refusing_broken_seals():
        return Settlement.read(s3_client(), config)


def _settled(config: RunConfig) -> Settlement:
    """The settlement of a run that got past plan_scans (release_scans runs only then)."""
    settled = _settlement(config)
    if settled is None:
        raise AirflowFailException("plan_scans pushed no settlement: see its log")
    return settled


def release_scans_step(discovery: dict[str, Any], ti: Any) -> ScanItems:
    """Every pilot succeeded (or there were none): the rest of the run goes. Returns the
    scans as a ``ScanItems`` (constant-size XCom; each mapped task reads its own item), each
    Batch scan with its turn to submit (``ndmg_cloud.participant.pacing``)."""
    plan = _plan(discovery, ti.run_id)
    settled = _settled(plan.config)
    rest = [t for t in settled.to_run(plan.scan_tasks()) if t.scan_id not in settled.pilots]
    if settled.pilots:
        log.info("pilot scans %s succeeded: releasing the other %d", ", ".join(settled.pilots), len(rest))
    records = ScanTask.sealed_list(_with_turns(plan.config, rest), plan.config.run_id, RELEASED)
    return write_scan_items(s3_client(), run_file_uri(plan.config, "released", ".items"), records)


def _with_turns(config: RunConfig, tasks: list[ScanTask]) -> list[ScanTask]:
    """Batch scans' tasks, each with its turn to submit (ndmg_cloud.participant.pacing)."""
    if config.backend != "aws_batch" or not tasks:
        return tasks
    if submit_route() == TRIGGERER:  # the triggerer's Batch API budget paces them (budget.py)
        return tasks
    rate = submit_rate()
    log.info("%d scans submitted at most %g per second (NDMG_SUBMIT_RATE): over about %.0f s", len(tasks), rate, len(tasks) / rate)
    return paced(tasks, rate)


def _check_cost(config: RunConfig, scans: int) -> None:
    """Refuse a run whose estimate is above the max_cost_usd param."""
    try:
        guess = check_cost(config, scans)
    except OverBudget as err:
        raise AirflowFailException(str(err)) from None
    log.info("estimate for %d scans: %s", scans, guess)


def _check_map_length(scans: int) -> None:
    """Airflow refuses to map over more than [core] max_map_length items (1,024 by default)."""
    from airflow.configuration import conf

    limit = conf.getint("core", "max_map_length")
    if scans > limit:
        raise AirflowFailException(
            f"{scans} scans to run, but Airflow maps at most [core] max_map_length={limit} tasks: "
            f"set AIRFLOW__CORE__MAX_MAP_LENGTH to at least {scans} (our deployments use 100000), "
            "or split the run with participant_label"
        )


def choose_backend_step(discovery: dict[str, Any], run_id: str) -> str:
    """Follow the mapped task of the run's backend; the other one is skipped whole."""
    return BACKEND_TASKS[_config(discovery, run_id).backend]


def run_scan_local_step(scan_task: dict[str, Any], ti: Any) -> str:
    """The ``local`` backend: the scan runner in a subprocess on this worker, on this run's
    job spec of the scan (checked: sealed, for this scan and run; the runner checks its SHA-256)."""
    with _refusing_broken_seals():
        scan_id = ScanTask.verified(scan_task, ti.run_id, RELEASED, ti.map_index).scan_id
        config = _config(ti.xcom_pull(task_ids=DISCOVER), ti.run_id)
        spec, sha256 = read_spec(s3_client(), config, scan_id)
    record = run_local(scan_id, spec.spec_uri, sha256, config, scan_credentials(config, scan_id))
    ti.xcom_push(key=LOCAL_JOB_XCOM_KEY, value=LocalJob(scan_id, record).to_xcom())
    if record.status != SUCCEEDED:
        raise AirflowException(f"scan {scan_id}: {record.reason}")
    return record.job_id


def _mark_derivatives(client: Any, config: RunConfig) -> None:
    """``<output>/dataset_description.json`` marks the output folder as BIDS derivatives."""
    put_json(
        client,
        config.output_root.uri(DESCRIPTION),
        {
            "Name": f"{config.pipeline} connectomes of {config.dataset}",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": config.pipeline, "Description": "run by ndmg-cloud"}],
            "SourceDatasets": [{"URL": config.input_root.uri()}],
        },
    )


def _pulled(ti: Any, task_id: str, key: str) -> list[dict[str, Any]]:
    """XComs of every map index of a mapped task (a single one comes back bare), each as
    pushed (``xcom_json``: a scan ended by its trigger's event comes back as JSON text)."""
    values = ti.xcom_pull(task_ids=task_id, key=key) or []
    values = [values] if isinstance(values, (dict, str)) else values
    return [xcom_json(v) for v in values if v]


def report_asset(config: RunConfig) -> Any:
    """The Asset of a dataset's reports: ``s3://<output>/reports``, named by dataset."""
    from airflow.sdk import Asset

    return Asset(name=f"{REPORTS_ALIAS}/{config.dataset}", uri=config.outputs.reports_uri)


def run_states(ti: Any) -> Callable[[str], str | None]:
    """What this Airflow knows of an ndmg_participant run, asked through a running task
    instance: its state, or None when it does not know the run (a lease holder's fate)."""

    def holder_state(run_id: str) -> str | None:
        try:
            state = ti.get_dagrun_state(dag_id=DAG_ID, run_id=run_id) if ti is not None else None
            return getattr(state, "value", state)  # DagRunState.SUCCESS -> "success"
        except Exception:
            return None

    return holder_state


def _take_lease(config: RunConfig, ti: Any) -> TakeOver | None:
    """One run per output location: refuse this run at once if another holds it."""
    try:
        took_over = lease.take(s3_client(), config.output_root.bucket, config.outputs.lease_key, config.run_id, run_states(ti))
    except lease.LeaseHeld as err:
        raise AirflowFailException(str(err)) from None
    if took_over:
        log.warning("took over the lease of run %s on %s: %s", took_over.run_id, config.output_root, took_over.why)
    return took_over


def _refresh_lease(config: RunConfig) -> None:
    if not lease.refresh(s3_client(), config.output_root.bucket, config.outputs.lease_key, config.run_id):
        log.warning("this run no longer holds the lease on %s (another run took it over)", config.output_root)


def _release_lease(params: Any, run_id: str) -> None:
    """Release this run's lease (never another run's), also when discovery failed after
    taking it: where is the run's params' (its trigger's), not an XCom's."""
    try:
        config = resolve(dict(params or {}), run_id)
    except Exception:
        return
    if lease.release(s3_client(), config.output_root.bucket, config.outputs.lease_key, run_id):
        log.info("released the lease on %s", config.output_root)


def _jobs_of_run(client: Any, config: RunConfig) -> list[dict[str, Any]]:
    try:
        return jobs_of_run(client, config.job_queue, config.dataset, config.run_id)
    except Exception as err:
        log.warning("could not list the jobs of this run in queue %s to find orphans: %s", config.job_queue, err)
        return []


def _scan_task_states(ti: Any, config: RunConfig) -> dict[str, str]:
    """scan id -> state of its pilot_scan / run_scan task instance in this run."""
    mapped = {
        PILOT_SCAN: [ScanTask.from_kwargs(item).scan_id for item in ti.xcom_pull(task_ids=PLAN_SCANS) or [] if item],
        RUN_SCAN: [ScanTask.from_kwargs(item).scan_id for item in ti.xcom_pull(task_ids=RELEASE_SCANS) or [] if item],
    }
    states = ti.get_task_states(dag_id=DAG_ID, task_ids=list(mapped), run_ids=[config.run_id])
    return scan_task_states(states.get(config.run_id, {}), mapped)


def _canary(ti: Any, config: RunConfig) -> CanaryOutcome:
    """What the canary found: from its Batch job and findings; or why there was none."""
    canary_jobs = _pulled(ti, CANARY, JOB_XCOM_KEY)
    if canary_jobs:
        job_id = SubmittedJob.from_xcom(canary_jobs[0]).job_id
        records = batch_records(batch_client(), {CANARY: job_id})
        fetch_log_tails(logs_client(), records)
        return canary_outcome(config, records[CANARY], s3_client())
    if ti.xcom_pull(task_ids=WRITE_JOB_SPECS, key=CANARY_JOB_XCOM_KEY):
        return CanaryOutcome("failed", "the canary job was never submitted: see the canary task's log")
    return skipped(config)


def _not_submitted(
    scans: list[Scan], settled: Settlement | None, outcome: CanaryOutcome, jobs: dict[str, JobRecord]
) -> dict[str, tuple[str, str]]:
    """Why scans that should have run got no job: the canary, a pilot, or the run stopped."""
    if outcome.status == "failed":
        why = (CANARY_FAILED, f"not submitted: the canary failed: {outcome.reason}")
    elif settled is None:
        why = (NOT_SUBMITTED, "not submitted: the run stopped before its plan was settled (see plan_scans' log)")
    else:
        failed = [p for p in settled.pilots if p not in jobs or jobs[p].status != SUCCEEDED]
        if not failed:
            return {}
        why = (PILOT_FAILED, f"not submitted: pilot scan(s) {', '.join(failed)} did not succeed")
    return {scan.scan_id: why for scan in scans}


def _link_local_logs(ti: Any, dag_run: Any, config: RunConfig, jobs: dict[str, JobRecord]) -> None:
    """A local scan's log is its run_scan_local task instance's: link its page in the
    Airflow UI (the map index is the scan's place in release_scans' list)."""
    from ndmg_cloud.orchestration.links import deployment_base_url

    base_url = deployment_base_url()  # [api] base_url, as TaskInstance.log_url reads it
    dag_id = getattr(dag_run, "dag_id", None) or DAG_ID
    released = ti.xcom_pull(task_ids=RELEASE_SCANS) or []
    map_index = {ScanTask.from_kwargs(item).scan_id: i for i, item in enumerate(released) if item}
    for scan_id, record in jobs.items():
        if not record.log_url and scan_id in map_index:
            record.log_url = airflow_log_url(base_url, dag_id, config.run_id, RUN_SCAN_LOCAL, map_index[scan_id])


def verify_and_report_step(ti: Any, dag_run: Any = None, outlet_events: Any = None, params: Any = None) -> str:
    """Verify every scan, write the report, return its URI; then fail if any scan failed.
    The output location's lease is released whatever the outcome."""
    discovery = ti.xcom_pull(task_ids=DISCOVER)
    try:
        return _verify_and_report(ti, dag_run, outlet_events, discovery)
    finally:
        _release_lease(params, ti.run_id)


def _verify_and_report(ti: Any, dag_run: Any, outlet_events: Any, discovery: dict[str, Any] | None) -> str:
    if not discovery:
        # The run failed before any job: its leaf must fail too, or the run shows success.
        raise AirflowFailException("discovery failed, so nothing was run: see the discover task's log")
    plan = _plan(discovery, ti.run_id)
    config, scans = plan.config, plan.scans
    settled = _settlement(config)
    outcome = settled.canary if settled else _canary(ti, config)
    if config.backend == "local":
        jobs = local_records([LocalJob.from_xcom(v) for v in _pulled(ti, RUN_SCAN_LOCAL, LOCAL_JOB_XCOM_KEY)])
        _link_local_logs(ti, dag_run, config, jobs)
        orphans: list[Orphan] = []
    else:
        submitted = [SubmittedJob.from_xcom(v) for task_id in BATCH_SCAN_TASKS for v in _pulled(ti, task_id, JOB_XCOM_KEY)]
        job_ids = {job.scan_id: job.job_id for job in submitted}
        client = batch_client()
        jobs = batch_records(client, job_ids) if job_ids else {}
        cancel_ended(client, jobs, _scan_task_states(ti, config), config.run_id)
        fetch_log_tails(logs_client(), jobs)
        known = set(job_ids.values()) | {SubmittedJob.from_xcom(v).job_id for v in _pulled(ti, CANARY, JOB_XCOM_KEY)}
        orphans = [] if config.dry_run else sweep_orphans(client, _jobs_of_run(client, config), known, config.run_id)
        for orphan in orphans:
            log.warning(
                "orphan Batch job %s (%s, %s) of this run%s",
                orphan.job_id,
                orphan.job_name,
                orphan.status,
                ": terminated" if orphan.terminated else "",
            )

    s3 = s3_client()
    if settled:
        done = settled.done
    else:  # never compared with the image: keep them, and say so
        why = "the canary failed" if outcome.status == "failed" else "the run stopped before its plan"
        done = {k: replace(row, reason=f"{row.reason}; its image was not compared ({why})") for k, row in plan.done.items()}
    listing = output_listing(config, s3)  # the one listing: verdicts and connectomes
    rows = verify_scans(config, scans, jobs, s3, done, _not_submitted(scans, settled, outcome, jobs), listing)
    reruns = settled.reruns if settled else plan.reruns
    for row in rows:
        row.pilot = settled is not None and row.scan_id in settled.pilots
        row.new = row.status not in ("skipped_done", "invalid") and row.scan_id not in reruns
        if row.scan_id in reruns and row.status == "succeeded":
            row.reason = f"ran again: {reruns[row.scan_id]}"
    connectomes = read_connectomes(config, scans, rows, listing, s3)
    report = build_report(
        config,
        rows,
        started_at=plan.started_at,
        finished_at=datetime.now(UTC).isoformat(),
        submitted=len(jobs),
        warnings=plan.warnings,
        invalid_omitted=plan.invalid_omitted,
        canary=outcome,
        contract=settled.contract if settled else None,
        connectomes=connectomes.summary,
        orphans=orphans,
        took_over=plan.took_over,
        throttled_polls=sum(
            ThrottledPolls.from_xcom(v).polls for task_id in BATCH_SCAN_TASKS for v in _pulled(ti, task_id, THROTTLED_XCOM_KEY)
        ),
    )
    uri = write_report(s3, config, report, connectomes)
    summary = asdict(report.summary)
    log.info("report: %s", uri)
    log.info("canary: %s (%s)", outcome.status, outcome.reason)
    log.info("summary: %s", summary)
    for row in report.scans:
        log.info("%-40s %-16s %s", row.scan_id, row.status, row.reason or "")
    ti.xcom_push(key="return_value", value=uri)
    if outlet_events is not None:
        from airflow.sdk import AssetAlias

        outlet_events[AssetAlias(REPORTS_ALIAS)].add(
            report_asset(config), extra={"run_id": config.run_id, "report": uri, "summary": summary}
        )

    if outcome.status == "failed":
        raise AirflowFailException(
            f"the canary failed, so no scan was submitted: {outcome.reason}. Log: {outcome.log_url or 'none'}. Report: {uri}"
        )
    failing = report.failing
    if failing:
        names = ", ".join(f"{r.scan_id} ({r.status})" for r in failing[:10])
        raise AirflowFailException(f"{len(failing)} of {report.summary.discovered} scans did not succeed: {names}. Report: {uri}")
    return uri
