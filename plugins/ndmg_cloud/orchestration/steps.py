"""The DAG's task callables: each creates its AWS clients at run time and calls one step.

The DAG file only wires these together; the logic lives in ``discover``, ``jobspec``,
``canary``, ``verify`` and ``report``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.s3 import put_json
from ndmg_cloud.orchestration.clients import AWS_CONN_ID, batch_client, logs_client, s3_client
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
    RUN_SCAN,
    RUN_SCAN_LOCAL,
    SETTLEMENT_XCOM_KEY,
    THROTTLED_XCOM_KEY,
    WRITE_JOB_SPECS,
)
from ndmg_cloud.participant import lease
from ndmg_cloud.participant.canary import (
    CanaryOutcome,
    canary_kwargs,
    canary_outcome,
    run_contract,
    settle,
    skipped,
)
from ndmg_cloud.participant.cost import estimate
from ndmg_cloud.participant.discover import discover
from ndmg_cloud.participant.jobs import (
    CANARY_FAILED,
    NOT_SUBMITTED,
    PILOT_FAILED,
    SUCCEEDED,
    JobRecord,
    batch_records,
    fetch_log_tails,
    local_records,
)
from ndmg_cloud.participant.jobspec import build_spec, check_no_shared_outputs, run_file_uri, write_specs
from ndmg_cloud.participant.lease import TakeOver
from ndmg_cloud.participant.local import run_local
from ndmg_cloud.participant.pacing import paced, submit_rate
from ndmg_cloud.participant.params import RunConfig, check_conf_keys, resolve
from ndmg_cloud.participant.preflight import preflight
from ndmg_cloud.participant.reconcile import Orphan, cancel_ended, jobs_of_run, scan_task_states, sweep_orphans
from ndmg_cloud.participant.runplan import PlanRef, RunPlan, Settlement
from ndmg_cloud.participant.verify import completed_scans, output_listing, verify_scans
from ndmg_cloud.report.runreport import airflow_log_url, build_report, read_connectomes, write_report

log = logging.getLogger(__name__)
INVALID_ROWS_KEPT = 200  # invalid scans listed in the run plan and the report; the rest are counted
REPORTS_ALIAS = "ndmg-reports"


def discover_step(params: dict[str, Any], run_id: str, dag_run: Any = None, ti: Any = None) -> dict[str, Any]:
    """Take the output location's lease, resolve the params, list the dataset once, write
    the run plan to the job dir; return where it is (a ``PlanRef``: constant size)."""
    conf = getattr(dag_run, "conf", None) or {}
    check_conf_keys(conf)
    config = resolve(dict(params), run_id)
    took_over = _take_lease(config, ti)
    if config.backend == "aws_batch" and not config.dry_run:
        # the revision the canary checks is the revision every scan job runs
        config.job_definition = preflight(batch_client(), config)
    s3 = s3_client()
    found = discover(config, s3)
    done, reruns = ({}, {}) if config.force else completed_scans(config, found.valid, s3)
    if done:
        log.info("%d scans already done for this pipeline and options (force=true reruns them)", len(done))
    for scan_id, why in reruns.items():
        log.info("%s runs again: %s", scan_id, why)
    to_run = len(found.valid) - len(done)
    if to_run > config.max_scans:
        raise AirflowFailException(
            f"this run would run {to_run} scans of {config.input_root}, more than max_scans={config.max_scans}: "
            "check bidsdir, narrow the run with participant_label, or raise max_scans"
        )
    check_cost(config, to_run)
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


def _plan(discovery: dict[str, Any]) -> RunPlan:
    """The run plan ``discover`` wrote (its XCom, a ``PlanRef``, says where)."""
    return RunPlan.read(s3_client(), PlanRef.from_dict(discovery))


def write_job_specs_step(discovery: dict[str, Any], ti: Any) -> int:
    """Write one job spec per valid scan (those found done too: the canary may find them made
    by other code). Returns how many; pushes the canary's task arguments (or None)."""
    plan = _plan(discovery)
    config = plan.config
    _refresh_lease(config)
    specs = [build_spec(config, scan) for scan in plan.valid]
    check_no_shared_outputs(specs)
    client = s3_client()
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
        canary = canary_kwargs(config, first)
        log.info(
            "canary %s will check scan %s on %s / %s", canary["batch"]["jobName"], first.scan_id, config.job_queue, config.job_definition
        )
    ti.xcom_push(key=CANARY_JOB_XCOM_KEY, value=canary)
    return len(specs)


def plan_scans_step(discovery: dict[str, Any], ti: Any) -> list[dict[str, Any]]:
    """Settle the run once the image is known (the canary's contract; the installed code on
    the local backend): what is done, what runs again and why, which scans are pilots.
    Writes the settlement and pushes its URI; returns the pilot scans' task arguments."""
    plan = _plan(discovery)
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
    check_cost(config, len(to_run))
    _check_map_length(len(to_run))
    ti.xcom_push(key=SETTLEMENT_XCOM_KEY, value=settled.write(s3_client(), config))
    return _with_turns(config, [t for t in to_run if t["scan_id"] in settled.pilots])  # a few: a plain list


def _settlement(ti: Any) -> Settlement | None:
    """The settlement plan_scans wrote; None when the run stopped before it."""
    uri = ti.xcom_pull(task_ids=PLAN_SCANS, key=SETTLEMENT_XCOM_KEY)
    return Settlement.read(s3_client(), uri) if uri else None


def release_scans_step(discovery: dict[str, Any], ti: Any) -> ScanItems:
    """Every pilot succeeded (or there were none): the rest of the run goes. Returns the
    scans as a ``ScanItems`` (constant-size XCom; each mapped task reads its own item), each
    Batch scan with its turn to submit (``ndmg_cloud.participant.pacing``)."""
    plan = _plan(discovery)
    settled = _settlement(ti)
    rest = [t for t in settled.to_run(plan.scan_tasks()) if t["scan_id"] not in settled.pilots]
    if settled.pilots:
        log.info("pilot scans %s succeeded: releasing the other %d", ", ".join(settled.pilots), len(rest))
    return write_scan_items(s3_client(), run_file_uri(plan.config, "released", ".items"), _with_turns(plan.config, rest))


def _with_turns(config: RunConfig, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch scans' task arguments, each with its turn to submit (ndmg_cloud.participant.pacing)."""
    if config.backend != "aws_batch" or not items:
        return items
    rate = submit_rate()
    log.info("%d scans submitted at most %g per second (NDMG_SUBMIT_RATE): over about %.0f s", len(items), rate, len(items) / rate)
    return paced(items, rate)


def check_cost(config: RunConfig, scans: int) -> None:
    """Refuse a run whose estimate is above the max_cost_usd param."""
    guess = estimate(scans, config.pipeline)
    log.info("estimate: %s", guess)
    if config.max_cost_usd is not None and config.backend == "aws_batch" and guess["on_demand_usd"] > config.max_cost_usd:
        raise AirflowFailException(
            f"{scans} scans would cost about ${guess['on_demand_usd']:.2f} on-demand "
            f"(${guess['spot_usd']:.2f} on Spot), above max_cost_usd={config.max_cost_usd}: "
            "raise max_cost_usd or narrow the run with participant_label"
        )


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


def choose_backend_step(discovery: dict[str, Any]) -> str:
    """Follow the mapped task of the run's backend; the other one is skipped whole."""
    return BACKEND_TASKS[PlanRef.from_dict(discovery).config.backend]


def run_scan_local_step(scan_id: str, job_spec_uri: str, ti: Any) -> str:
    """The ``local`` backend: the scan runner in a subprocess on this worker."""
    record = run_local(scan_id, job_spec_uri)
    ti.xcom_push(key=LOCAL_JOB_XCOM_KEY, value={"scan_id": scan_id, "record": record.to_dict()})
    if record.status != SUCCEEDED:
        raise AirflowException(f"scan {scan_id}: {record.reason}")
    return record.job_id


def _mark_derivatives(client: Any, config: RunConfig) -> None:
    """``<output>/dataset_description.json`` marks the output folder as BIDS derivatives."""
    put_json(
        client,
        config.output_root.uri("dataset_description.json"),
        {
            "Name": f"{config.pipeline} connectomes of {config.dataset}",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": config.pipeline, "Description": "run by ndmg-cloud"}],
            "SourceDatasets": [{"URL": config.input_root.uri()}],
        },
    )


def _pulled(ti: Any, task_id: str, key: str) -> list[dict[str, Any]]:
    """XComs of every map index of a mapped task (a single one comes back bare).

    A value the triggerer pushed (a scan ended by its trigger, ``TaskSuccessEvent``) was
    stored as JSON text by Airflow 3.3 (``XComModel.set`` serializes it, the Execution API
    hands the stored value back as is), so a task pulls a string: decoded here."""
    values = ti.xcom_pull(task_ids=task_id, key=key) or []
    values = [values] if isinstance(values, (dict, str)) else values
    return [json.loads(v) if isinstance(v, str) else v for v in values if v]


def report_asset(config: RunConfig) -> Any:
    """The Asset of a dataset's reports: ``s3://<output>/reports``, named by dataset."""
    from airflow.sdk import Asset

    return Asset(name=f"ndmg-reports/{config.dataset}", uri=config.output_root.uri("reports"))


def _take_lease(config: RunConfig, ti: Any) -> TakeOver | None:
    """One run per output location: refuse this run at once if another holds it."""

    def holder_state(run_id: str) -> str | None:
        try:
            state = ti.get_dagrun_state(dag_id=DAG_ID, run_id=run_id) if ti is not None else None
            return getattr(state, "value", state)  # DagRunState.SUCCESS -> "success"
        except Exception:
            return None

    try:
        took_over = lease.take(s3_client(), config.output_root.bucket, config.outputs.lease_key, config.run_id, holder_state)
    except lease.LeaseHeld as err:
        raise AirflowFailException(str(err)) from None
    if took_over:
        log.warning("took over the lease of run %s on %s: %s", took_over.run_id, config.output_root, took_over.why)
    return took_over


def _refresh_lease(config: RunConfig) -> None:
    if not lease.refresh(s3_client(), config.output_root.bucket, config.outputs.lease_key, config.run_id):
        log.warning("this run no longer holds the lease on %s (another run took it over)", config.output_root)


def _release_lease(discovery: dict[str, Any] | None, params: Any, run_id: str) -> None:
    """Release this run's lease (never another run's), also when discovery failed after
    taking it."""
    try:
        config = PlanRef.config_in(discovery) if discovery else resolve(dict(params or {}), run_id)
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
        PILOT_SCAN: [item["scan_id"] for item in ti.xcom_pull(task_ids=PLAN_SCANS) or [] if item],
        RUN_SCAN: [item["scan_id"] for item in ti.xcom_pull(task_ids=RELEASE_SCANS) or [] if item],
    }
    states = ti.get_task_states(dag_id=DAG_ID, task_ids=list(mapped), run_ids=[config.run_id])
    return scan_task_states(states.get(config.run_id, {}), mapped)


def _canary(ti: Any, config: RunConfig) -> CanaryOutcome:
    """What the canary found: from its Batch job and findings; or why there was none."""
    canary_jobs = _pulled(ti, CANARY, JOB_XCOM_KEY)
    if canary_jobs:
        job_id = canary_jobs[0]["job_id"]
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
    map_index = {item["scan_id"]: i for i, item in enumerate(released) if item}
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
        _release_lease(discovery, params, ti.run_id)


def _verify_and_report(ti: Any, dag_run: Any, outlet_events: Any, discovery: dict[str, Any] | None) -> str:
    if not discovery:
        # The run failed before any job: its leaf must fail too, or the run shows success.
        raise AirflowFailException("discovery failed, so nothing was run: see the discover task's log")
    plan = _plan(discovery)
    config, scans = plan.config, plan.scans
    settled = _settlement(ti)
    outcome = CanaryOutcome.from_dict(settled.canary) if settled else _canary(ti, config)
    if config.backend == "local":
        jobs = local_records(_pulled(ti, RUN_SCAN_LOCAL, LOCAL_JOB_XCOM_KEY))
        _link_local_logs(ti, dag_run, config, jobs)
        orphans: list[Orphan] = []
    else:
        job_ids = {item["scan_id"]: item["job_id"] for task_id in BATCH_SCAN_TASKS for item in _pulled(ti, task_id, JOB_XCOM_KEY)}
        client = batch_client()
        jobs = batch_records(client, job_ids) if job_ids else {}
        cancel_ended(client, jobs, _scan_task_states(ti, config))
        fetch_log_tails(logs_client(), jobs)
        known = set(job_ids.values()) | {item["job_id"] for item in _pulled(ti, CANARY, JOB_XCOM_KEY)}
        orphans = [] if config.dry_run else sweep_orphans(client, _jobs_of_run(client, config), known)
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
        row.pilot = bool(settled) and row.scan_id in settled.pilots
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
        canary=outcome.to_dict(),
        contract=settled.contract if settled else None,
        connectomes=connectomes.summary,
        orphans=[orphan.to_dict() for orphan in orphans],
        lease={"took_over": plan.took_over.to_dict() if plan.took_over else None},
        throttled_polls=sum(item["polls"] for task_id in BATCH_SCAN_TASKS for item in _pulled(ti, task_id, THROTTLED_XCOM_KEY)),
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


def deploy_infra_step(params: dict[str, Any]) -> dict[str, str]:
    """The ndmg_infra DAG's task: deploy the Batch stack; return its outputs."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from ndmg_cloud.infra.stack import deploy

    cfn = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="cloudformation").get_conn()
    deployment = deploy(
        cfn,
        {
            "ImageUri": params["image"],
            "Subnets": params["subnets"],
            "SecurityGroups": params["security_groups"],
            "InputBucket": params["input_bucket"],
            "InputPrefix": params["input_prefix"],
            "OutputBucket": params["output_bucket"],
            "OutputPrefix": params["output_prefix"],
            "MaxvCpus": params["max_vcpus"],
            "RootVolumeGiB": params["root_volume_gb"],
            "UseSpot": params["use_spot"],
        },
        stack=params["stack"],
    )
    log.info(
        "stack %s: %s; job_queue=%s job_definition=%s",
        deployment.stack,
        deployment.action,
        deployment.outputs.get("JobQueue"),
        deployment.outputs.get("JobDefinition"),
    )
    return {"action": deployment.action, **deployment.outputs}


# ----------------------------------------------------------------------------- ndmg_group
def find_report_step(params: dict[str, Any], triggering_asset_events: Any = None) -> list[str]:
    """The ndmg_group DAG's first task: the report.json files whose connectomes to compare:
    the 'report' param, else the newest run under 'output', else, for a run the reports
    Asset triggered, the newest report of each dataset whose event it gathered."""
    from ndmg_cloud.group.compare import GroupError, newest_report

    report, output = params.get("report") or "", params.get("output") or ""
    if report and output:
        raise AirflowFailException(f"give 'report' or 'output', not both (report={report!r}, output={output!r})")
    if report:
        return [report]
    if output:
        try:
            return [newest_report(s3_client(), output)]
        except GroupError as err:
            raise AirflowFailException(str(err)) from None
    newest: dict[str, Any] = {}  # per dataset's reports Asset (an event is listed under its alias too)
    for events in (triggering_asset_events or {}).values():
        for event in events:
            uri = event.asset.uri
            if (event.extra or {}).get("report") and (uri not in newest or event.timestamp > newest[uri].timestamp):
                newest[uri] = event
    if not newest:
        raise AirflowFailException(
            "no run report to compare: trigger with 'report' (s3://.../reports/<run>/report.json) or 'output' "
            "(a dataset's output location); a successful ndmg_participant run triggers it by itself"
        )
    for event in newest.values():
        log.info("reports of %s run %s: %s", event.source_dag_id, event.extra.get("run_id"), event.extra["report"])
    return [event.extra["report"] for event in newest.values()]


def compare_connectomes_step(reports: list[str], params: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The ndmg_group DAG's work: per report and parcellation, group.json/.csv/.html under
    ``<output>/group/<parcellation>/``; returns what each found, for the CLI and the log."""
    from airflow.providers.common.compat.sdk import AirflowSkipException

    from ndmg_cloud.group.compare import DryRunReport, GroupError, group_uris, run_group

    out: dict[str, dict[str, dict[str, Any]]] = {}
    dry = []
    for report in reports:
        try:
            results = run_group(s3_client(), report, int(params.get("permutations", 1000)))
        except DryRunReport as err:
            log.info("%s", err)
            dry.append(str(err))
            continue
        except GroupError as err:
            raise AirflowFailException(str(err)) from None
        out[report] = {}
        for r in results:
            d = r.discriminability
            out[report][r.parcellation] = {
                "scans": len(r.scans),
                "left_out": [x.scan_id for x in r.left_out],
                "discriminability": d.value,
                "p_value": d.p_value,
                "why_not": d.why_not,
                **group_uris(r),
            }
            log.info(
                "%s: %d scans used, %d left out; discriminability %s, p-value %s%s; %s",
                r.parcellation,
                len(r.scans),
                len(r.left_out),
                d.value,
                d.p_value,
                f" ({d.why_not})" if d.why_not else "",
                out[report][r.parcellation]["group.html"],
            )
    if not out:
        raise AirflowSkipException("; ".join(dry))
    return out
