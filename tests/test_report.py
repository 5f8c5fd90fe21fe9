"""The run report follows the design contract: summary counts, one row per scan, CSV."""

from __future__ import annotations

import csv
import io

from ndmg_cloud.params import resolve
from ndmg_cloud.report import CSV_COLUMNS, build_report, failing_scans, report_csv
from ndmg_cloud.verify import ScanResult

CONTRACT_ROW = {"scan_id", "subject", "session", "status", "job_id", "attempts", "started_at", "stopped_at",
                "duration_s", "cost_usd", "outputs", "missing", "reason", "log_url"}  # fmt: skip
CONTRACT_SUMMARY = {"discovered", "invalid", "skipped_done", "submitted", "succeeded", "failed",
                    "missing_outputs", "cost_usd"}  # fmt: skip


def sample_report():
    config = resolve({"bucket": "lab-data", "bidsdir": "ds1"}, "run1")
    rows = [
        ScanResult("sub-01_ses-1", "01", "1", "succeeded", job_id="j1", attempts=1, duration_s=3600.0,
                   cost_usd=0.126, outputs=["a.csv", "b.csv"]),
        ScanResult("sub-02", "02", None, "failed", job_id="j2", attempts=2, cost_usd=0.01,
                   reason="Essential container in task exited; exit code 1"),
        ScanResult("sub-03_ses-1", "03", "1", "missing_outputs", job_id="j3", missing=["x.csv"]),
        ScanResult("sub-04_ses-1", "04", "1", "invalid", reason="no .bvec file"),
    ]  # fmt: skip
    return build_report(config, rows, "2026-11-24T10:00:00+00:00", "2026-11-24T11:00:00+00:00", submitted=3)


def test_report_json_shape():
    report = sample_report()
    assert {"dataset", "run_id", "params", "started_at", "finished_at", "summary", "scans"} <= set(report)
    assert report["dataset"] == "ds1" and report["run_id"] == "run1"
    assert CONTRACT_SUMMARY <= set(report["summary"])
    assert report["summary"] == {
        "discovered": 4, "invalid": 1, "skipped_done": 0, "submitted": 3, "succeeded": 1,
        "failed": 1, "missing_outputs": 1, "dry_run": 0, "cost_usd": 0.136, "failure_classes": {},
    }  # fmt: skip
    for row in report["scans"]:
        assert CONTRACT_ROW <= set(row)


def test_failing_scans_are_failed_and_missing_outputs():
    assert [r["scan_id"] for r in failing_scans(sample_report())] == ["sub-02", "sub-03_ses-1"]


def test_csv_has_one_row_per_scan():
    rows = list(csv.DictReader(io.StringIO(report_csv(sample_report()))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["status"] for r in rows] == ["succeeded", "failed", "missing_outputs", "invalid"]
    assert rows[0]["outputs"] == "a.csv;b.csv"
    assert rows[1]["session"] == ""


def test_html_is_self_contained_and_shows_every_scan():
    from html.parser import HTMLParser

    from ndmg_cloud.report import report_html

    report = sample_report()
    report["scans"][0].update(started_at="2026-11-24T10:00:00+00:00", stopped_at="2026-11-24T11:00:00+00:00")
    report["scans"][1].update(started_at="2026-11-24T10:10:00+00:00", stopped_at="2026-11-24T10:20:00+00:00",
                              log_url="https://us-east-1.console.aws.amazon.com/cloudwatch/home#x")
    report["scans"][1]["reason"] = "<script>alert(1)</script>"
    page = report_html(report)

    class Links(HTMLParser):
        external = []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag in ("script", "link", "img") or (tag != "a" and attrs.get("src")):
                self.external.append((tag, attrs))

    parser = Links()
    parser.feed(page)
    assert parser.external == []  # no scripts, stylesheets or images to fetch: opens offline
    for scan_id in ("sub-01_ses-1", "sub-02", "sub-03_ses-1", "sub-04_ses-1"):
        assert scan_id in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # reasons are escaped
    assert page.count("<rect ") == 2  # two jobs with times on the timeline
    assert "wall time 3600.0 s" in page
    assert 'href="https://us-east-1.console.aws.amazon.com/cloudwatch/home#x"' in page
    assert "$0.14" in page


def test_estimate_on_demand_versus_spot():
    from ndmg_cloud.cost import estimate

    guess = estimate(100, "m2g", hours_per_scan=1.0)
    assert guess == {"scans": 100, "instance_hours": 100.0, "vcpu_hours": 200.0, "on_demand_usd": 12.6, "spot_usd": 5.04}


def test_report_link_targets():
    from ndmg_cloud.links import report_html_url

    uri = "s3://lab-data/ds/derivatives/ndmg/reports/manual__2026-11-24T10:00:00+00:00/report.json"
    assert report_html_url(uri, "http://127.0.0.1:5000") == (
        "http://127.0.0.1:5000/lab-data/ds/derivatives/ndmg/reports/manual__2026-11-24T10%3A00%3A00%2B00%3A00/report.html"
    )
    assert report_html_url(uri).startswith("https://s3.console.aws.amazon.com/s3/object/lab-data?prefix=ds%2Fderivatives")
