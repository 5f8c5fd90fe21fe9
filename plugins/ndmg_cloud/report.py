"""The run report: ``report.json`` and ``report.csv`` under ``<output>/reports/<run id>/``."""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Any

from ndmg_cloud.params import RunConfig
from ndmg_cloud.s3 import put_bytes, put_json
from ndmg_cloud.verify import ScanResult

CSV_COLUMNS = (
    "scan_id",
    "subject",
    "session",
    "status",
    "job_id",
    "attempts",
    "started_at",
    "stopped_at",
    "duration_s",
    "cost_usd",
    "outputs",
    "missing",
    "reason",
    "log_url",
)
FAILING_STATUSES = ("failed", "missing_outputs")


def build_report(
    config: RunConfig,
    rows: list[ScanResult],
    started_at: str,
    finished_at: str,
    submitted: int,
    warnings: list[str] = (),
) -> dict[str, Any]:
    counts = Counter(r.status for r in rows)
    summary = {
        "discovered": len(rows),
        "invalid": counts["invalid"],
        "skipped_done": counts["skipped_done"],
        "submitted": submitted,
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "missing_outputs": counts["missing_outputs"],
        "dry_run": counts["dry_run"],
        "cost_usd": round(sum(r.cost_usd for r in rows), 4),
    }
    return {
        "dataset": config.dataset,
        "run_id": config.run_id,
        "params": config.params,
        "pipeline": config.pipeline,
        "options": config.options,
        "input": config.input_root.uri(),
        "output": config.output_root.uri(),
        "jobdir": config.jobdir,
        "started_at": started_at,
        "finished_at": finished_at,
        "summary": summary,
        "warnings": list(warnings),
        "scans": [r.to_dict() for r in rows],
    }


def report_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report["scans"]:
        flat = dict(row)
        for key in ("outputs", "missing"):
            flat[key] = ";".join(row[key])
        writer.writerow({k: "" if flat.get(k) is None else flat[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def write_report(s3_client: Any, config: RunConfig, report: dict[str, Any]) -> str:
    """Write report.json and report.csv; return the report.json URI."""
    bucket = config.output_root.bucket
    prefix = config.outputs.report_prefix(config.run_id)
    put_bytes(s3_client, bucket, prefix + "report.csv", report_csv(report).encode(), "text/csv")
    uri = f"s3://{bucket}/{prefix}report.json"
    put_json(s3_client, uri, report)
    return uri


def failing_scans(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["scans"] if r["status"] in FAILING_STATUSES]
