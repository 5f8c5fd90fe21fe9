"""The run report: ``report.json``, ``report.csv`` and a self-contained ``report.html``
under ``<output>/reports/<run id>/``."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import datetime
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
    "failure_class",
    "log_url",
    "made_by",
    "pilot",
)
FAILING_STATUSES = ("failed", "missing_outputs")
STATUS_COLOURS = {
    "succeeded": "#b7e4c7",
    "failed": "#f4a6a6",
    "missing_outputs": "#f9d28b",
    "invalid": "#d9d9d9",
    "skipped_done": "#cfe3f7",
    "dry_run": "#e8ddf5",
}
TIMELINE_WIDTH, TIMELINE_LEFT, ROW_HEIGHT = 900, 220, 18


def build_report(
    config: RunConfig,
    rows: list[ScanResult],
    started_at: str,
    finished_at: str,
    submitted: int,
    warnings: list[str] = (),
    canary: dict[str, Any] | None = None,
    contract: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``canary``: what the canary found (status passed, failed or skipped; its checks);
    ``contract``: the image contract summary of the code this run's scans were made with."""
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
        "failure_classes": dict(Counter(r.failure_class for r in rows if r.failure_class)),
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
        "canary": canary or {"status": "skipped", "reason": "not recorded"},
        "contract": contract,
        "pilots": [r.scan_id for r in rows if r.pilot],
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


def _seconds(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _timeline(report: dict[str, Any]) -> dict[str, Any]:
    """Bars of each job's start..stop, relative to the earliest start."""
    spans = [
        (r, _seconds(r["started_at"]), _seconds(r["stopped_at"]))
        for r in report["scans"]
        if r["started_at"] and r["stopped_at"]
    ]
    if not spans:
        return {"rows": []}
    t0 = min(start for _, start, _ in spans)
    span = max(max(stop for _, _, stop in spans) - t0, 1e-3)
    scale = (TIMELINE_WIDTH - TIMELINE_LEFT - 10) / span
    rows = [
        {
            "scan_id": r["scan_id"],
            "status": r["status"],
            "duration": f"{stop - start:.1f} s",
            "x": round(TIMELINE_LEFT + (start - t0) * scale, 1),
            "y": i * ROW_HEIGHT,
            "w": max(round((stop - start) * scale, 1), 1.0),
        }
        for i, (r, start, stop) in enumerate(spans)
    ]
    return {
        "rows": rows,
        "width": TIMELINE_WIDTH,
        "left": TIMELINE_LEFT,
        "height": len(rows) * ROW_HEIGHT + 16,
        "span": f"{span:.1f} s",
    }


def report_html(report: dict[str, Any]) -> str:
    """The report as one HTML page with no external resources (opens offline)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("ndmg_cloud", "templates"), autoescape=select_autoescape(["j2"]))
    started, finished = _seconds(report["started_at"]), _seconds(report["finished_at"])
    wall = f"{finished - started:.1f} s" if started and finished else "unknown"
    return env.get_template("report.html.j2").render(
        report=report, colours=STATUS_COLOURS, timeline=_timeline(report), wall_time=wall
    )


def write_report(s3_client: Any, config: RunConfig, report: dict[str, Any]) -> str:
    """Write report.csv, report.html and report.json; return the report.json URI."""
    bucket = config.output_root.bucket
    prefix = config.outputs.report_prefix(config.run_id)
    put_bytes(s3_client, bucket, prefix + "report.csv", report_csv(report).encode(), "text/csv")
    put_bytes(s3_client, bucket, prefix + "report.html", report_html(report).encode(), "text/html; charset=utf-8")
    uri = f"s3://{bucket}/{prefix}report.json"
    put_json(s3_client, uri, report)
    return uri


def failing_scans(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["scans"] if r["status"] in FAILING_STATUSES]
