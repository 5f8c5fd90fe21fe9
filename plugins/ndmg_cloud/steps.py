"""The DAG's task callables: each creates its AWS clients at run time and calls one step.

The DAG file only wires these together; the logic lives in ``discover``, ``jobspec``,
``verify`` and ``report``.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException

from ndmg_cloud.bids import Scan
from ndmg_cloud.discover import discover
from ndmg_cloud.jobspec import build_spec, check_no_shared_outputs
from ndmg_cloud.params import RunConfig, check_conf_keys, resolve
from ndmg_cloud.report import build_report, failing_scans, write_report
from ndmg_cloud.s3 import put_json
from ndmg_cloud.verify import verify_scans

log = logging.getLogger(__name__)
AWS_CONN_ID = os.environ.get("NDMG_AWS_CONN_ID", "aws_default")
# Throttling (SlowDown, TooManyRequestsException) is absorbed by botocore's adaptive mode.
RETRIES = {"mode": "adaptive", "max_attempts": 10}


def s3_client() -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    return S3Hook(aws_conn_id=AWS_CONN_ID, config=Config(retries=RETRIES)).get_conn()


def batch_client() -> Any:
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
    from botocore.config import Config

    return BatchClientHook(aws_conn_id=AWS_CONN_ID, config=Config(retries=RETRIES)).client


def discover_step(params: dict[str, Any], run_id: str, dag_run: Any = None) -> dict[str, Any]:
    """Resolve the params, list the dataset once, return the run config and its scans."""
    conf = getattr(dag_run, "conf", None) or {}
    check_conf_keys(conf)
    config = resolve(dict(params), run_id)
    found = discover(config, s3_client())
    return {
        "config": config.to_dict(),
        "scans": [s.to_dict() for s in found.scans],
        "warnings": found.warnings,
        "keys_listed": found.keys_listed,
        "started_at": datetime.now(timezone.utc).isoformat(),
    }


def write_job_specs_step(discovery: dict[str, Any]) -> list[dict[str, Any]]:
    """Write one job spec per valid scan; return the mapped task's kwargs (none on a dry run)."""
    config = RunConfig.from_dict(discovery["config"])
    scans = [Scan.from_dict(s) for s in discovery["scans"]]
    specs = [build_spec(config, scan) for scan in scans if scan.valid]
    check_no_shared_outputs(specs)
    client = s3_client()
    for spec in specs:
        put_json(client, spec["spec_uri"], spec)
    log.info("wrote %d job specs under %s", len(specs), config.jobdir)
    if config.dry_run:
        log.info("dry run: nothing is submitted")
        return []
    _mark_derivatives(client, config)
    return [
        {"scan_id": spec["scan"]["scan_id"], "job_spec_uri": spec["spec_uri"], "batch": spec["batch"]}
        for spec in specs
    ]


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


def verify_and_report_step(ti: Any, dag_run: Any = None) -> str:
    """Verify every scan, write the report, return its URI; then fail if any scan failed."""
    discovery = ti.xcom_pull(task_ids="discover")
    if not discovery:
        # The run failed before any job: its leaf must fail too, or the run shows success.
        raise AirflowFailException("discovery failed, so nothing was run: see the discover task's log")
    config = RunConfig.from_dict(discovery["config"])
    scans = [Scan.from_dict(s) for s in discovery["scans"]]
    submitted = ti.xcom_pull(task_ids="run_scan", key="batch_job") or []
    if isinstance(submitted, dict):
        submitted = [submitted]
    job_ids = {item["scan_id"]: item["job_id"] for item in submitted if item}

    s3 = s3_client()
    rows = verify_scans(config, scans, job_ids, s3, None if config.dry_run else batch_client())
    report = build_report(
        config,
        rows,
        started_at=discovery["started_at"],
        finished_at=datetime.now(timezone.utc).isoformat(),
        submitted=len(job_ids),
        warnings=discovery.get("warnings", []),
    )
    uri = write_report(s3, config, report)
    summary = report["summary"]
    log.info("report: %s", uri)
    log.info("summary: %s", summary)
    for row in report["scans"]:
        log.info("%-40s %-16s %s", row["scan_id"], row["status"], row["reason"] or "")
    ti.xcom_push(key="return_value", value=uri)

    failing = failing_scans(report)
    if failing:
        names = ", ".join(f"{r['scan_id']} ({r['status']})" for r in failing[:10])
        raise AirflowFailException(
            f"{len(failing)} of {summary['discovered']} scans did not succeed: {names}. "
            f"Report: {uri}"
        )
    return uri
