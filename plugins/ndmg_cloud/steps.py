"""The DAG's task callables: each creates its AWS clients at run time and calls one step.

The DAG file only wires these together; the logic lives in ``discover``, ``jobspec``,
``verify`` and ``report``.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from ndmg_cloud.bids import Scan
from ndmg_cloud.cost import estimate
from ndmg_cloud.jobs import SUCCEEDED, batch_records, fetch_log_tails, local_records
from ndmg_cloud.local import LOCAL_JOB_XCOM_KEY, run_local
from ndmg_cloud.operators import JOB_XCOM_KEY
from ndmg_cloud.discover import discover
from ndmg_cloud.jobspec import build_spec, check_no_shared_outputs, write_spec
from ndmg_cloud.params import RunConfig, check_conf_keys, resolve
from ndmg_cloud.preflight import preflight
from ndmg_cloud.report import build_report, failing_scans, write_report
from ndmg_cloud.s3 import put_json
from ndmg_cloud.verify import ScanResult, completed_scans, verify_scans

log = logging.getLogger(__name__)
AWS_CONN_ID = os.environ.get("NDMG_AWS_CONN_ID", "aws_default")
# Throttling (SlowDown, TooManyRequestsException) is absorbed by botocore's adaptive mode.
RETRIES = {"mode": "adaptive", "max_attempts": 10}
BACKEND_TASKS = {"aws_batch": "run_scan", "local": "run_scan_local"}
REPORTS_ALIAS = "ndmg-reports"


def s3_client() -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    return S3Hook(aws_conn_id=AWS_CONN_ID, config=Config(retries=RETRIES)).get_conn()


def batch_client() -> Any:
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
    from botocore.config import Config

    return BatchClientHook(aws_conn_id=AWS_CONN_ID, config=Config(retries=RETRIES)).client


def logs_client() -> Any:
    from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
    from botocore.config import Config

    return AwsLogsHook(aws_conn_id=AWS_CONN_ID, config=Config(retries=RETRIES)).conn


def discover_step(params: dict[str, Any], run_id: str, dag_run: Any = None) -> dict[str, Any]:
    """Resolve the params, list the dataset once, return the run config and its scans."""
    conf = getattr(dag_run, "conf", None) or {}
    check_conf_keys(conf)
    config = resolve(dict(params), run_id)
    if config.backend == "aws_batch" and not config.dry_run:
        preflight(batch_client(), config)
    s3 = s3_client()
    found = discover(config, s3)
    done = {} if config.force else completed_scans(config, found.valid, s3)
    if done:
        log.info("%d scans already done: skipped (force=true reruns them)", len(done))
    check_cost(config, len(found.valid) - len(done))
    return {
        "config": config.to_dict(),
        "scans": [s.to_dict() for s in found.scans],
        "done": {scan_id: row.to_dict() for scan_id, row in done.items()},
        "warnings": found.warnings,
        "keys_listed": found.keys_listed,
        "started_at": datetime.now(timezone.utc).isoformat(),
    }


def write_job_specs_step(discovery: dict[str, Any]) -> list[dict[str, Any]]:
    """Write one job spec per valid scan; return the mapped task's kwargs (none on a dry run)."""
    config = RunConfig.from_dict(discovery["config"])
    scans = [Scan.from_dict(s) for s in discovery["scans"]]
    done = discovery.get("done", {})
    specs = [build_spec(config, scan) for scan in scans if scan.valid and scan.scan_id not in done]
    check_no_shared_outputs(specs)
    client = s3_client()
    for spec in specs:
        write_spec(client, spec)
    log.info("wrote %d job specs under %s", len(specs), config.jobdir)
    if config.dry_run:
        log.info("dry run: nothing is submitted")
        return []
    _check_map_length(len(specs))
    _mark_derivatives(client, config)
    runs = []
    for spec in specs:
        kwargs = {"scan_id": spec["scan"]["scan_id"], "job_spec_uri": spec["spec_uri"]}
        if config.backend == "aws_batch":
            kwargs["batch"] = spec["batch"]
            kwargs["runnable_timeout"] = config.runnable_timeout_minutes * 60
        runs.append(kwargs)
    return runs


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
    return BACKEND_TASKS[discovery["config"]["backend"]]


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
    """XComs of every map index of a mapped task (a single one comes back bare)."""
    values = ti.xcom_pull(task_ids=task_id, key=key) or []
    return [values] if isinstance(values, dict) else [v for v in values if v]


def report_asset(config: RunConfig) -> Any:
    """The Asset of a dataset's reports: ``s3://<output>/reports``, named by dataset."""
    from airflow.sdk import Asset

    return Asset(name=f"ndmg-reports/{config.dataset}", uri=config.output_root.uri("reports"))


def verify_and_report_step(ti: Any, dag_run: Any = None, outlet_events: Any = None) -> str:
    """Verify every scan, write the report, return its URI; then fail if any scan failed."""
    discovery = ti.xcom_pull(task_ids="discover")
    if not discovery:
        # The run failed before any job: its leaf must fail too, or the run shows success.
        raise AirflowFailException("discovery failed, so nothing was run: see the discover task's log")
    config = RunConfig.from_dict(discovery["config"])
    scans = [Scan.from_dict(s) for s in discovery["scans"]]
    if config.backend == "local":
        jobs = local_records(_pulled(ti, "run_scan_local", LOCAL_JOB_XCOM_KEY))
    else:
        job_ids = {item["scan_id"]: item["job_id"] for item in _pulled(ti, "run_scan", JOB_XCOM_KEY)}
        jobs = batch_records(batch_client(), job_ids) if job_ids else {}
        fetch_log_tails(logs_client(), jobs)

    s3 = s3_client()
    done = {scan_id: ScanResult(**row) for scan_id, row in discovery.get("done", {}).items()}
    rows = verify_scans(config, scans, jobs, s3, done)
    report = build_report(
        config,
        rows,
        started_at=discovery["started_at"],
        finished_at=datetime.now(timezone.utc).isoformat(),
        submitted=len(jobs),
        warnings=discovery.get("warnings", []),
    )
    uri = write_report(s3, config, report)
    summary = report["summary"]
    log.info("report: %s", uri)
    log.info("summary: %s", summary)
    for row in report["scans"]:
        log.info("%-40s %-16s %s", row["scan_id"], row["status"], row["reason"] or "")
    ti.xcom_push(key="return_value", value=uri)
    if outlet_events is not None:
        from airflow.sdk import AssetAlias

        outlet_events[AssetAlias(REPORTS_ALIAS)].add(
            report_asset(config), extra={"run_id": config.run_id, "report": uri, "summary": summary}
        )

    failing = failing_scans(report)
    if failing:
        names = ", ".join(f"{r['scan_id']} ({r['status']})" for r in failing[:10])
        raise AirflowFailException(
            f"{len(failing)} of {summary['discovered']} scans did not succeed: {names}. "
            f"Report: {uri}"
        )
    return uri


def deploy_infra_step(params: dict[str, Any]) -> dict[str, str]:
    """The ndmg_infra DAG's task: deploy the Batch stack; return its outputs."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from ndmg_cloud.infra import deploy

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
            "UseSpot": params["use_spot"],
        },
        stack=params["stack"],
    )
    log.info("stack %s: %s; job_queue=%s job_definition=%s", deployment.stack, deployment.action,
             deployment.outputs.get("JobQueue"), deployment.outputs.get("JobDefinition"))
    return {"action": deployment.action, **deployment.outputs}
