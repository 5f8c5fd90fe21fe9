"""End to end: the real DAG under dag.test() against the local AWS endpoint."""

from __future__ import annotations

import json

import pytest

from conftest import ENDPOINT, ROOT
from datasets import E2E_INVALID, E2E_VALID, listing, put_dataset
from helpers import read_json
from images import AFNI_VERSION, FSL_VERSION, Containers, build_contract, m2g_image

BUCKET = "lab-data"
BIDSDIR = "studies/ds-test/"
OUT = BIDSDIR + "derivatives/ndmg/"


def run_dag(**conf):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_participant"]
    return dag.test(run_conf=conf)


def report_of(s3, run):
    """The report of ``run`` of the e2e dataset, where its output layout puts it."""
    from ndmg_cloud.core.layout import OutputLayout, S3Location

    return read_json(s3, OutputLayout(S3Location(BUCKET, OUT)).report_uri(run.run_id))


def report_uri_of(run):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(run_id=run.run_id, task_id="verify_and_report", key="return_value").one()
        return XComModel.deserialize_value(row)


def asset_events(uri):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).filter(AssetModel.uri == uri).all()
        session.expunge_all()
        return events


def rows_by_scan(report):
    return {row["scan_id"]: row for row in report["scans"]}


def scan_of(job) -> str:
    return scan_of_name(job.job_name)


def scan_of_name(job_name: str) -> str:
    """The scan a job runs, from its name: <dataset>-<scan id>-<8-hex run token>."""
    return job_name[len("ds-test-") : -len("-12345678")]


def scan_jobs(names: list[str]) -> list[str]:
    """The scans of the submitted jobs, leaving out the canary."""
    return [scan_of_name(n) for n in names if "-canary-" not in n]


@pytest.fixture
def dataset(s3, batch_env, airflow_db):
    put_dataset(s3, BUCKET, BIDSDIR)
    return listing(s3, BUCKET, BIDSDIR + "sub-")


@pytest.fixture(scope="module")
def module_image(tmp_path_factory):
    """The m2g scan image the job definition names (pinned m2g, atlases, contract), built
    once for the module: no test here changes it."""
    return m2g_image(tmp_path_factory.mktemp("image"))


@pytest.fixture
def containers(s3, batch_behaviour, module_image):
    """Every Batch job runs as a container of that image: the canary's self-check for real."""
    batch_behaviour.on_submit = Containers(s3, module_image, ENDPOINT)
    return batch_behaviour.on_submit


def test_jobs_that_succeed_without_outputs_are_missing_outputs(s3, batch, dataset, containers):
    containers.silent.update(E2E_VALID)  # every job exits 0 and writes nothing
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)

    assert run.state == "failed"  # missing outputs fail the run, so alerts fire
    jobs = batch.list_jobs(jobQueue="ndmg-queue", jobStatus="SUCCEEDED")["jobSummaryList"]
    assert len(jobs) == len(E2E_VALID) + 1  # and the canary

    report = report_of(s3, run)
    rows = rows_by_scan(report)
    assert sorted(rows) == sorted(E2E_VALID + E2E_INVALID)
    for scan_id in E2E_VALID:
        assert rows[scan_id]["status"] == "missing_outputs", rows[scan_id]
        assert rows[scan_id]["job_id"]
        assert "expected file(s) are missing" in rows[scan_id]["reason"]
    assert rows["sub-04_ses-1"]["status"] == "invalid"
    assert ".bvec" in rows["sub-04_ses-1"]["reason"]
    assert report["summary"]["submitted"] == len(E2E_VALID)
    assert report["summary"]["missing_outputs"] == len(E2E_VALID)
    assert report["summary"]["invalid"] == 1
    # the input subjects are untouched
    assert listing(s3, BUCKET, BIDSDIR + "sub-") == dataset
    # the final task failed the run, yet it returned the report URI
    assert report_uri_of(run) == f"s3://{BUCKET}/{OUT}reports/{run.run_id}/report.json"


def test_scans_with_outputs_succeed_and_a_failed_job_is_reported(s3, batch, dataset, batch_behaviour, containers):
    containers.broken.add("sub-05_ses-1")  # its container exits 1
    batch_behaviour.run_seconds = 1.5  # jobs stay RUNNING a while: the deferrable wait runs

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)

    assert run.state == "failed"
    report = report_of(s3, run)
    rows = rows_by_scan(report)
    for scan_id in E2E_VALID:
        if scan_id == "sub-05_ses-1":
            continue
        assert rows[scan_id]["status"] == "succeeded", rows[scan_id]
        assert rows[scan_id]["missing"] == []
        assert len(rows[scan_id]["outputs"]) == 2
        assert rows[scan_id]["attempts"] == 1
        assert rows[scan_id]["made_by"] == "m2g 95d271f7"
    failed = rows["sub-05_ses-1"]
    assert failed["status"] == "failed"
    assert "Essential container in task exited" in failed["reason"]
    assert failed["failure_class"] == "pipeline_error"  # exit code 1, not Spot, OOM, pull or timeout
    assert failed["job_id"]
    assert failed["log_url"].startswith("https://us-east-1.console.aws.amazon.com/cloudwatch/")


def test_all_scans_succeed_means_the_run_succeeds(s3, batch, dataset, containers):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, participant_label=["01", "sub-02"])

    assert run.state == "success"
    report = report_of(s3, run)
    assert sorted(rows_by_scan(report)) == ["sub-01_ses-retest", "sub-01_ses-test", "sub-02"]
    assert report["summary"]["succeeded"] == 3
    description = read_json(s3, bucket=BUCKET, where=OUT + "dataset_description.json")
    assert description["DatasetType"] == "derivative"
    # downstream DAGs can subscribe to this dataset's reports
    events = asset_events(f"s3://{BUCKET}/{OUT}reports")
    assert [e.extra["run_id"] for e in events] == [run.run_id]
    assert events[0].extra["report"] == f"s3://{BUCKET}/{OUT}reports/{run.run_id}/report.json"


def test_job_specs_hold_the_exact_submit_payload(s3, batch, dataset, containers):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")

    prefix = f"{OUT}jobs/{run.run_id}/"
    specs = {k[len(prefix) :]: read_json(s3, bucket=BUCKET, where=k) for k in listing(s3, BUCKET, prefix) if k.startswith(prefix + "sub-")}
    assert sorted(specs) == sorted(f"{s}.json" for s in E2E_VALID)
    run_files = sorted(k[len(prefix) :] for k in listing(s3, BUCKET, prefix) if not k.startswith(prefix + "sub-"))
    # the run plan, its settlement and the scans' task arguments, named by run
    assert run_files == [f"plan-{token(run)}.json", f"released-{token(run)}.items", f"settled-{token(run)}.json"]
    plan = read_json(s3, bucket=BUCKET, where=f"{prefix}plan-{token(run)}.json")
    assert sorted(s["scan_id"] for s in plan["scans"]) == sorted(E2E_VALID + ["sub-04_ses-1"])

    spec = specs["sub-02.json"]
    assert spec["scan"]["session"] is None
    assert spec["scan"]["inputs"]["bval"] == "sub-02/sub-02_dwi.bval"  # inherited
    assert spec["output_prefix"] == f"s3://{BUCKET}/{OUT}sub-02/"
    submitted = {j["jobName"]: j for j in batch.list_jobs(jobQueue="ndmg-queue", jobStatus="SUCCEEDED")["jobSummaryList"]}
    assert spec["batch"]["jobName"] in submitted
    described = batch.describe_jobs(jobs=[submitted[spec["batch"]["jobName"]]["jobId"]])["jobs"][0]
    assert described["container"]["command"] == spec["batch"]["containerOverrides"]["command"]
    assert described["tags"]["scan"] == "sub-02"
    assert described["tags"]["dataset"] == "ds-test"


def test_dry_run_writes_specs_and_report_but_submits_nothing(s3, batch, dataset, batch_behaviour):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dry_run=True)

    assert run.state == "success"
    assert batch_behaviour.submitted == []
    report = report_of(s3, run)
    statuses = {row["scan_id"]: row["status"] for row in report["scans"]}
    assert statuses == {**{s: "dry_run" for s in E2E_VALID}, "sub-04_ses-1": "invalid"}
    jobdir = f"{OUT}jobs/{run.run_id}/"
    written = sorted(k[len(jobdir) :] for k in listing(s3, BUCKET, jobdir))
    assert written == sorted([f"{s}.json" for s in E2E_VALID] + [f"plan-{token(run)}.json", f"settled-{token(run)}.json"])


def test_bad_input_fails_before_any_submission(s3, batch, dataset, batch_behaviour):
    # the schema cannot know the output lies in an input subject folder; discover refuses it
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, output_uri=f"s3://{BUCKET}/{BIDSDIR}sub-01/out")

    assert run.state == "failed"
    assert batch_behaviour.submitted == []
    assert listing(s3, BUCKET, BIDSDIR + "sub-") == dataset


def test_mapped_tasks_are_labelled_by_scan_and_links_kept(s3, batch, dataset, containers):
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(run_id=run.run_id, task_id="run_scan").all()
        labels = sorted(ti.rendered_map_index for ti in tis)
    assert labels == sorted(E2E_VALID)


def test_params_outside_the_schema_are_refused_at_trigger(dataset):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="seeds"):
        run_dag(bucket=BUCKET, bidsdir=BIDSDIR, seeds="many")


@pytest.mark.slow  # 20 s: a dag.test() twin of the run test_demo makes (make demo) on the same backend
def test_local_backend_runs_the_lite_pipeline_end_to_end(s3, airflow_db, tmp_path):
    from ndmg_cloud.demo.synthetic import make_dataset

    scans = make_dataset(tmp_path / "ds", subjects=1, sessions=2, sessionless=1)
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted((tmp_path / "ds").rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, "phantoms/" + path.relative_to(tmp_path / "ds").as_posix())
    before = listing(s3, BUCKET, "phantoms/sub-")

    run = run_dag(bucket=BUCKET, bidsdir="phantoms", backend="local", pipeline="lite")

    assert run.state == "success"
    report = read_json(s3, bucket=BUCKET, where=f"phantoms/derivatives/ndmg/reports/{run.run_id}/report.json")
    rows = rows_by_scan(report)
    assert sorted(rows) == sorted(scans)
    for row in rows.values():
        assert row["status"] == "succeeded", row
        assert row["duration_s"] > 0 and row["attempts"] == 1
        assert row["new"]
    assert report["summary"]["new_scans"] == len(scans)
    assert rows["sub-02"]["outputs"] == ["connectomes_d/grid3/sub-02_dwi_grid3_connectome.csv"]
    edges = s3.get_object(
        Bucket=BUCKET, Key="phantoms/derivatives/ndmg/sub-01/ses-2/connectomes_d/grid3/sub-01_ses-2_dwi_grid3_connectome.csv"
    )["Body"].read()
    assert len(edges.splitlines()) > 3
    assert listing(s3, BUCKET, "phantoms/sub-") == before
    assert report["canary"]["status"] == "skipped" and "backend=local" in report["canary"]["reason"]
    assert report["contract"]["label"].startswith("ndmg-lite ")
    assert {row["made_by"] for row in rows.values()} == {report["contract"]["label"]}
    assert_report_html_shows_the_connectomes(s3, run, rows)

    # a rerun skips what this code made; a scan made by other lite code runs again
    manifest_key = "phantoms/derivatives/ndmg/sub-02/sub-02_manifest.json"
    manifest = read_json(s3, bucket=BUCKET, where=manifest_key)
    assert manifest["pipeline"]["contract"] == report["contract"]
    manifest["pipeline"]["contract"] = {**manifest["pipeline"]["contract"], "fingerprint": "0" * 12, "label": "ndmg-lite 00000000"}
    s3.put_object(Bucket=BUCKET, Key=manifest_key, Body=json.dumps(manifest))
    again = run_dag(bucket=BUCKET, bidsdir="phantoms", backend="local", pipeline="lite")
    rows = rows_by_scan(read_json(s3, bucket=BUCKET, where=f"phantoms/derivatives/ndmg/reports/{again.run_id}/report.json"))
    assert {scan: row["status"] for scan, row in rows.items() if scan != "sub-02"} == {s: "skipped_done" for s in scans if s != "sub-02"}
    assert rows["sub-02"]["status"] == "succeeded"
    assert rows["sub-02"]["reason"] == f"ran again: done with ndmg-lite 00000000, this run uses {report['contract']['label']}"
    assert not rows["sub-02"]["new"]  # made before, by other code: run again, not new


def assert_report_html_shows_the_connectomes(s3, run, rows):
    """report.html of a real lite run: a heatmap drawn from each succeeded scan's edge list,
    lite's QA image, graph figures, a time axis, not-billed cost cells, Airflow log links."""
    from test_figures import data_uri_png, decode_png
    from test_report import Page

    html = s3.get_object(Bucket=BUCKET, Key=f"phantoms/derivatives/ndmg/reports/{run.run_id}/report.html")["Body"].read().decode()
    page = Page(html)
    heatmaps, qa = page.of_class("heatmap"), page.of_class("qa")
    assert sorted(heatmaps) == sorted(rows) == sorted(qa)
    for scan_id, row in rows.items():
        graph = row["graphs"]["grid3"]
        assert graph["edges"] > 3 and graph["nodes"] >= 2 and 0 < graph["density"] <= 1 and row["streamlines"] > 0
        _, pixels = decode_png(data_uri_png(heatmaps[scan_id]["src"]))
        assert len(pixels) == graph["nodes"]
        assert sum(1 for line in pixels for index in line if index) == 2 * (graph["edges"] - graph["self_loops"]) + graph["self_loops"]
        assert data_uri_png(qa[scan_id]["src"]).startswith(b"\x89PNG")
        assert row["log_url"].startswith("http") and "/tasks/run_scan_local/mapped/" in row["log_url"]
        assert f'href="{row["log_url"]}"' in html
    assert len(page.ticks) >= 3
    assert html.count(">not billed</td>") == len(rows)
    print(f"report.html of the lite run: {len(html.encode()):,} bytes")


@pytest.mark.slow  # 48 s, two dag.test() runs: with make test-live, to keep make test under 15 minutes (15:02 in CI)
def test_a_rerun_submits_only_what_is_not_done(s3, batch, dataset, containers):
    containers.broken.add("sub-05_ses-1")  # the first time round this scan fails
    first = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert first.state == "failed"
    after_first = batch_submitted(batch)
    assert sorted(scan_jobs(after_first)) == sorted(E2E_VALID)

    containers.broken.clear()
    second = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert second.state == "success"
    assert scan_jobs(batch_submitted(batch, since=after_first)) == ["sub-05_ses-1"]  # only the failed one
    rows = rows_by_scan(report_of(s3, second))
    assert rows["sub-05_ses-1"]["status"] == "succeeded"
    assert {rows[s]["status"] for s in E2E_VALID if s != "sub-05_ses-1"} == {"skipped_done"}
    assert report_of(s3, second)["summary"]["skipped_done"] == len(E2E_VALID) - 1

    before = batch_submitted(batch)
    third = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert third.state == "success"
    assert scan_jobs(batch_submitted(batch, since=before)) == []  # everything done: only the canary ran

    before = batch_submitted(batch)
    forced = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", force=True)
    assert forced.state == "success"
    assert len(scan_jobs(batch_submitted(batch, since=before))) == len(E2E_VALID)


def batch_submitted(batch, since: list[str] = ()) -> list[str]:
    """Names of every job the queue has seen, oldest first (less those in ``since``)."""
    jobs = []
    for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
        jobs += batch.list_jobs(jobQueue="ndmg-queue", jobStatus=status)["jobSummaryList"]
    names = [j["jobName"] for j in sorted(jobs, key=lambda j: j["createdAt"])]
    return [n for n in names if n not in set(since)]


@pytest.mark.slow  # dag.test() twin of a live-tier scenario: make test-live
def test_a_worker_crash_after_submit_does_not_submit_again(s3, batch, dataset, batch_behaviour, containers, monkeypatch):
    from ndmg_cloud.orchestration.operators import ScanBatchOperator

    crashed: set[str] = set()
    real = ScanBatchOperator._persist_links

    def crash_once(self, context, *args, **kwargs):
        # the worker dies after SubmitJob returned, before the task could defer
        key = f"{self.task_id}:{self.scan_id}"
        if key not in crashed:
            crashed.add(key)
            raise RuntimeError("simulated worker crash")
        return real(self, context, *args, **kwargs)

    monkeypatch.setattr(ScanBatchOperator, "_persist_links", crash_once)
    batch_behaviour.run_seconds = 1.0

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")

    assert {c for c in crashed if c.startswith("run_scan:")} == {f"run_scan:{s}" for s in E2E_VALID}
    assert any(c.startswith("canary:") for c in crashed)  # the canary's first try died too
    names = batch_behaviour.submitted
    assert sorted(scan_jobs(names)) == sorted(E2E_VALID)  # yet exactly one Batch job per scan
    assert len([n for n in names if "-canary-" in n]) == 1  # and one canary
    jobs = [j for j in batch.list_jobs(jobQueue="ndmg-queue", jobStatus="SUCCEEDED")["jobSummaryList"] if "-canary-" not in j["jobName"]]
    assert len(jobs) == len(E2E_VALID)
    rows = rows_by_scan(report_of(s3, run))
    assert {rows[s]["job_id"] for s in E2E_VALID} == {j["jobId"] for j in jobs}
    assert run.state == "success"


@pytest.mark.slow  # dag.test() twin of a live-tier scenario: make test-live
def test_a_crash_inside_the_submit_window_does_not_submit_again(s3, batch, dataset, batch_behaviour, containers, monkeypatch):
    """SubmitJob reaches Batch (the job exists) but the try dies before it hears the job id:
    the retry finds the job by its name and reattaches."""
    from ndmg_cloud.orchestration.operators import ScanBatchOperator

    real = ScanBatchOperator._submit
    crashed: set[str] = set()

    def created_then_crash(self):
        response = real(self)  # the job now exists in Batch
        if self.scan_id not in crashed:
            crashed.add(self.scan_id)
            raise ConnectionResetError("the worker died with the request on the wire")
        return response

    monkeypatch.setattr(ScanBatchOperator, "_submit", created_then_crash)
    batch_behaviour.run_seconds = 1.0

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")

    assert set(E2E_VALID) <= crashed
    names = batch_behaviour.submitted
    assert sorted(scan_jobs(names)) == sorted(E2E_VALID)  # one SubmitJob per scan
    assert len([n for n in names if "-canary-" in n]) == 1
    rows = rows_by_scan(report_of(s3, run))
    jobs = [j for j in batch.list_jobs(jobQueue="ndmg-queue", jobStatus="SUCCEEDED")["jobSummaryList"] if "-canary-" not in j["jobName"]]
    assert {rows[s]["job_id"] for s in E2E_VALID} == {j["jobId"] for j in jobs}
    assert run.state == "success"


@pytest.mark.slow  # dag.test() twin of a live-tier scenario: make test-live
def test_a_duplicate_job_is_an_orphan_terminated_and_reported(s3, batch, dataset, batch_behaviour, containers, monkeypatch):
    """A job of the run that no scan row names (here: a second SubmitJob for one scan that
    nothing recorded) is terminated at the end of the run and listed under orphans."""
    from ndmg_cloud.orchestration.operators import ScanBatchOperator

    real = ScanBatchOperator._submit
    duplicates: list[str] = []

    def submit_twice(self):
        if self.scan_id == "sub-02" and not duplicates:
            batch_behaviour.run_seconds = 600  # the unseen duplicate would run on
            duplicates.append(real(self)["jobId"])
            batch_behaviour.run_seconds = 1.0
        return real(self)

    monkeypatch.setattr(ScanBatchOperator, "_submit", submit_twice)
    batch_behaviour.run_seconds = 1.0

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")

    report = report_of(s3, run)
    assert [o["job_id"] for o in report["orphans"]] == duplicates
    assert report["orphans"][0]["terminated"] is True
    job = batch.describe_jobs(jobs=duplicates)["jobs"][0]
    assert job["status"] == "FAILED" and "orphan" in job["statusReason"]
    assert rows_by_scan(report)["sub-02"]["status"] == "succeeded"  # the recorded job's outcome


def test_a_clear_submits_afresh_even_when_a_job_with_the_name_exists():
    from ndmg_cloud.orchestration.operators import submitting_since

    saved = {"submitting_since": 1000.0, "max_tries": 2}
    assert submitting_since(saved, 2) == 1000.0  # a retry of this round looks for the job
    assert submitting_since(saved, 5) is None  # after a Clear: submit afresh
    assert submitting_since({"job_id": "j", "max_tries": 2}, 2) is None


def test_reattach_only_within_one_round_of_tries():
    from ndmg_cloud.orchestration.operators import reattachable

    saved = {"job_id": "j-1", "max_tries": 2}
    assert reattachable(saved, 2) == "j-1"  # an automatic retry
    assert reattachable(saved, 5) is None  # after a manual Clear (max_tries was raised)
    assert reattachable(None, 2) is None and reattachable({}, 2) is None


def test_more_scans_than_max_map_length_is_a_clear_error(s3, batch, dataset, batch_behaviour, monkeypatch, capfd):
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "4")
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)
    assert run.state == "failed"
    assert batch_behaviour.submitted == []
    assert "6 scans to run, but Airflow maps at most [core] max_map_length=4" in capfd.readouterr().out


def test_a_run_above_max_scans_is_refused_before_anything_is_written(s3, batch, dataset, batch_behaviour, capfd):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, max_scans=5)
    assert run.state == "failed"
    assert batch_behaviour.submitted == []
    assert f"this run would run 6 scans of s3://{BUCKET}/{BIDSDIR}, more than max_scans=5" in capfd.readouterr().out
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{OUT}jobs/")


def test_invalid_scans_beyond_the_cap_are_counted_not_listed(s3, batch, dataset, monkeypatch):
    from ndmg_cloud.orchestration import participant_tasks as steps

    monkeypatch.setattr(steps, "INVALID_ROWS_KEPT", 0)
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dry_run=True)
    report = report_of(s3, run)
    assert (report["summary"]["invalid"], report["summary"]["invalid_not_listed"]) == (len(E2E_INVALID), len(E2E_INVALID))
    assert not set(E2E_INVALID) & set(rows_by_scan(report))
    assert report["summary"]["discovered"] == len(E2E_VALID) + len(E2E_INVALID)


def test_a_run_above_max_cost_is_refused_before_submitting(s3, batch, dataset, batch_behaviour, capfd):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, max_cost_usd=0.5)
    assert run.state == "failed"
    assert batch_behaviour.submitted == []
    assert "6 scans would cost about $1.13 on-demand ($0.45 on Spot), above max_cost_usd=0.5" in capfd.readouterr().out


# --- the canary, pilots and provenance ------------------------------------------------------


def test_a_failing_canary_stops_the_run_before_any_scan_job(s3, batch, dataset, containers, tmp_path):
    import pipeline_facts

    # the job definition's image holds the v0.3.0 tag's m2g, which refuses --track_type
    broken = m2g_image(tmp_path / "old-image")
    pipeline_facts.install_stand_in(pipeline_facts.M2G_TAG, broken.bin_dir)
    containers.image = broken

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")

    assert run.state == "failed"
    listed = batch.list_jobs(jobQueue="ndmg-queue", jobStatus="FAILED")["jobSummaryList"]
    listed += batch.list_jobs(jobQueue="ndmg-queue", jobStatus="SUCCEEDED")["jobSummaryList"]
    assert [j["jobName"] for j in listed] == [f"ds-test-canary-{token(run)}"]  # only the canary ran
    report = report_of(s3, run)
    canary = report["canary"]
    assert canary["status"] == "failed"
    assert canary["reason"].startswith("command: m2g refused the command (exit 2)")
    assert "unrecognized arguments: --track_type" in canary["reason"]
    assert canary["log_url"] and any("FAIL command" in line for line in canary["log_tail"])
    rows = rows_by_scan(report)
    for scan_id in E2E_VALID:
        assert rows[scan_id]["status"] == "failed" and rows[scan_id]["failure_class"] == "canary_failed"
        assert rows[scan_id]["reason"].startswith("not submitted: the canary failed: command:")
    assert report["summary"]["submitted"] == 0
    assert listing(s3, BUCKET, BIDSDIR + "sub-") == dataset


def test_a_canary_that_cannot_start_names_why(s3, batch, dataset, batch_behaviour, containers):
    batch_behaviour.fail["-canary-"] = "CannotPullContainerError: pull access denied for ndmg-cloud-m2g"
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert run.state == "failed"
    assert scan_jobs(batch_behaviour.submitted) == []
    canary = report_of(s3, run)["canary"]
    assert canary["status"] == "failed" and canary["failure_class"] == "image_pull"
    assert "CannotPullContainerError" in canary["reason"]


def test_a_passing_canary_lets_the_run_proceed_and_is_in_the_report(s3, batch, dataset, containers):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")

    assert run.state == "success"
    names = batch_submitted(batch)
    assert names[0] == f"ds-test-canary-{token(run)}"  # before any scan job
    assert sorted(scan_jobs(names)) == sorted(E2E_VALID)
    report = report_of(s3, run)
    assert report["canary"]["status"] == "passed"
    assert [c["name"] for c in report["canary"]["checks"]] == [
        "contract",
        "command",
        "atlases",
        "tools",
        "writable",
        "disk",
        "s3 read",
        "s3 write",
    ]
    assert report["contract"]["label"] == "m2g 95d271f7"
    # what the code ran with, from the image contract: the report's Code line shows it
    environment = report["contract"]["environment"]
    assert environment.startswith("Python 3.") and environment.endswith(f"AFNI {AFNI_VERSION}; FSL {FSL_VERSION}")
    canary_done = containers.self_checks[0]
    assert canary_done.returncode == 0 and "self-check passed" in canary_done.stdout
    html = s3.get_object(Bucket=BUCKET, Key=f"{OUT}reports/{run.run_id}/report.html")["Body"].read().decode()
    assert "Canary" in html and "passed" in html and "m2g 95d271f7" in html
    code_line = next(line for line in html.splitlines() if line.startswith("<p><b>Code:</b>"))
    assert environment.split("; AFNI")[0] in code_line and f"FSL {FSL_VERSION}" in code_line and "AFNI_21.0.06" in code_line


def test_pilot_scans_run_to_success_before_the_rest(s3, batch, dataset, containers):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", pilot_scans=2)

    assert run.state == "success"
    names = batch_submitted(batch)
    jobs = {j["jobName"]: j for s in ("SUCCEEDED",) for j in batch.list_jobs(jobQueue="ndmg-queue", jobStatus=s)["jobSummaryList"]}
    pilots, rest = sorted(scan_jobs(names)[:2]), scan_jobs(names)[2:]  # the two pilots go together
    assert pilots == sorted(E2E_VALID)[:2] and sorted(rest) == sorted(E2E_VALID)[2:]
    last_pilot_stop = max(jobs[n]["stoppedAt"] for n in names if scan_of_name(n) in pilots)
    assert all(jobs[n]["createdAt"] >= last_pilot_stop for n in names if scan_of_name(n) in rest)
    report = report_of(s3, run)
    assert report["pilots"] == pilots
    assert [r["scan_id"] for r in report["scans"] if r["pilot"]] == pilots


def test_a_failed_pilot_stops_the_rest(s3, batch, dataset, containers):
    first = sorted(E2E_VALID)[0]
    containers.broken.add(first)
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", pilot_scans=1)

    assert run.state == "failed"
    assert scan_jobs(batch_submitted(batch)) == [first]
    rows = rows_by_scan(report_of(s3, run))
    assert rows[first]["status"] == "failed" and rows[first]["pilot"]
    for scan_id in E2E_VALID[1:]:
        assert rows[scan_id]["failure_class"] == "pilot_failed"
        assert rows[scan_id]["reason"] == f"not submitted: pilot scan(s) {first} did not succeed"


def test_canary_false_submits_at_once_and_says_the_image_was_not_checked(s3, batch, dataset, containers):
    first = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", participant_label=["02"], canary=False)
    assert first.state == "success"
    assert batch_submitted(batch) == [f"ds-test-sub-02-{token(first)}"]
    assert report_of(s3, first)["canary"] == {**report_of(s3, first)["canary"], "status": "skipped", "reason": "canary=false"}

    second = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", participant_label=["02"], canary=False)
    row = rows_by_scan(report_of(s3, second))["sub-02"]
    assert row["status"] == "skipped_done"
    assert row["reason"].endswith("its image was not compared (canary=false)")


@pytest.mark.slow  # 32 s, two dag.test() runs: with make test-live, to keep make test under 15 minutes (14:09 with it)
def test_scans_made_by_other_code_run_again_and_say_why(s3, batch, dataset, containers, tmp_path):
    first = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", participant_label=["01"])
    assert first.state == "success"

    # the job definition now points at an image of other m2g code
    newer = m2g_image(tmp_path / "newer")
    rebuilt = build_contract(newer, revision="1b665be2c621b57f4f36601e7ca6bf6624aa1e2e")
    assert rebuilt.returncode == 0, rebuilt.stderr
    containers.image = newer
    before = batch_submitted(batch)
    # a new image is exactly when a pilot is wanted: it is chosen among the scans to rerun
    second = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", participant_label=["01"], pilot_scans=1)

    assert second.state == "success"
    assert scan_jobs(batch_submitted(batch, since=before)) == ["sub-01_ses-retest", "sub-01_ses-test"]  # pilot first
    assert report_of(s3, second)["pilots"] == ["sub-01_ses-retest"]
    rows = rows_by_scan(report_of(s3, second))
    for scan_id in ("sub-01_ses-retest", "sub-01_ses-test"):
        assert rows[scan_id]["status"] == "succeeded"
        assert rows[scan_id]["reason"] == "ran again: done with m2g 95d271f7, this run uses m2g 1b665be2"
        assert rows[scan_id]["made_by"] == "m2g 1b665be2"

    # other options: everything runs again, and the rows say which
    third = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", participant_label=["01"], seeds=10)
    assert third.state == "success"
    row = rows_by_scan(report_of(s3, third))["sub-01_ses-test"]
    assert row["reason"] == "ran again: done with seeds=20; this run asks seeds=10"


def token(run) -> str:
    from ndmg_cloud.participant.jobspec import run_token

    return run_token(run.run_id)


def test_every_job_runs_the_job_definition_revision_the_canary_checked(s3, batch, dataset, batch_behaviour, containers):
    def canary_then_a_new_revision(job):
        code = containers(job)
        if "-canary-" in job.job_name:  # meanwhile someone registers another image
            batch.register_job_definition(
                jobDefinitionName="ndmg",
                type="container",
                containerProperties={
                    "image": "someone-elses-image:latest",
                    "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "15200"}],
                },
            )
        return code

    batch_behaviour.on_submit = canary_then_a_new_revision
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", participant_label=["01"])

    assert run.state == "success"
    jobs = batch.describe_jobs(jobs=[j["jobId"] for j in batch.list_jobs(jobQueue="ndmg-queue", jobStatus="SUCCEEDED")["jobSummaryList"]])[
        "jobs"
    ]
    revisions = {j["jobName"]: j["jobDefinition"] for j in jobs}
    assert len(revisions) == 3 and len(set(revisions.values())) == 1  # the canary and both scans
    assert next(iter(revisions.values())).endswith("job-definition/ndmg:1")


LEASE = f"{OUT}.ndmg-lease.json"


def test_a_second_run_of_one_output_is_refused_at_once_naming_the_holder(s3, batch, dataset, batch_behaviour):
    import time

    from ndmg_cloud.participant.lease import Lease

    # a run of another Airflow writing the same output, its heartbeat a minute old
    s3.put_object(Bucket=BUCKET, Key=LEASE, Body=Lease("manual__elsewhere", time.time() - 60, time.time() - 600).body())

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)

    assert run.state == "failed"
    assert batch_behaviour.submitted == []
    assert json.loads(s3.get_object(Bucket=BUCKET, Key=LEASE)["Body"].read())["run_id"] == "manual__elsewhere"
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        discover = session.query(TaskInstance).filter_by(run_id=run.run_id, task_id="discover").one()
        assert discover.state == "failed" and discover.try_number == 1  # refused, not retried


@pytest.mark.slow  # 25 s, two dag.test() runs: with make test-live, to keep make test under 15 minutes
def test_a_run_releases_its_lease_and_the_next_takes_over_one_left_by_an_ended_run(s3, batch, dataset, containers):
    first = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)
    assert first.state == "success"
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LEASE)  # released at the end

    import time

    from ndmg_cloud.participant.lease import Lease

    # as if the first run had died holding it (marked failed before verify_and_report ran)
    s3.put_object(Bucket=BUCKET, Key=LEASE, Body=Lease(first.run_id, time.time(), time.time()).body())
    second = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)

    report = report_of(s3, second)
    assert report["lease"]["took_over"]["run_id"] == first.run_id
    assert "its run ended (success)" in report["lease"]["took_over"]["why"]
    assert any(w.startswith(f"took over the lease of run {first.run_id}") for w in report["warnings"])
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LEASE)


@pytest.mark.slow  # dag.test() twin of a live-tier scenario: make test-live
def test_throttled_polls_are_counted_in_the_report(s3, batch, dataset, containers, batch_behaviour, monkeypatch):
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook

    from ndmg_cloud.orchestration.triggers import ScanJobTrigger

    from faults import throttling_hook

    monkeypatch.setattr(ScanJobTrigger, "_hook", throttling_hook(lambda: BatchClientHook(aws_conn_id="aws_default"), first=3))
    batch_behaviour.run_seconds = 2.0  # RUNNING at first: the tasks defer to their triggers
    # Failed jobs: their tasks resume on a worker with the trigger's event, as under a real
    # Airflow. A succeeded scan's count travels in its TaskSuccessEvent's XComs, which
    # dag.test() drops; the live throttling storm (test_crash.py) counts those.
    batch_behaviour.fail["-"] = "Essential container in task exited"

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, canary=False)

    assert run.state == "failed"
    assert report_of(s3, run)["summary"]["throttled_polls"] == 3


def test_a_retry_waits_out_the_window_of_a_call_that_died_in_flight_but_not_of_one_that_ended():
    from ndmg_cloud.orchestration.operators import SUBMIT_WINDOW_SECONDS, in_flight_for

    died = {"submitting_since": 1000.0, "call_started": 1000.0, "max_tries": 2}
    assert in_flight_for(died, 1010.0) == SUBMIT_WINDOW_SECONDS - 10
    assert in_flight_for(died, 1000.0 + SUBMIT_WINDOW_SECONDS + 1) == 0
    assert in_flight_for({**died, "call_ended": True}, 1010.0) == 0  # the try saw its call fail
    again = {"submitting_since": 1000.0, "call_started": 5000.0, "max_tries": 2}  # a later try's own call
    assert in_flight_for(again, 5010.0) == SUBMIT_WINDOW_SECONDS - 10


@pytest.mark.slow  # 40 s, two dag.test() runs
def test_a_scan_whose_files_are_still_uploading_waits_and_the_next_run_takes_it(s3, airflow_db, tmp_path):
    """A DWI without its gradients yet is not an error: the run goes on (even with nothing
    else to run), says the scan is waiting for files, and the next run takes it, as new."""
    from ndmg_cloud.demo.synthetic import make_dataset

    make_dataset(tmp_path / "ds", subjects=0, sessions=1, sessionless=1)  # sub-01, session-less
    s3.create_bucket(Bucket=BUCKET)
    files = sorted(p for p in (tmp_path / "ds").rglob("*") if p.is_file())
    gradients = [p for p in files if p.suffix in (".bval", ".bvec")]
    for path in files:
        if path not in gradients:
            s3.upload_file(str(path), BUCKET, "up/" + path.relative_to(tmp_path / "ds").as_posix())

    run = run_dag(bucket=BUCKET, bidsdir="up", backend="local", pipeline="lite")
    assert run.state == "success"
    report = read_json(s3, bucket=BUCKET, where=f"up/derivatives/ndmg/reports/{run.run_id}/report.json")
    [row] = report["scans"]
    assert row["status"] == "invalid" and row["waiting_for_files"] and not row["new"]
    assert row["reason"].endswith("(waiting for files: a later run takes this scan once they are uploaded)")
    assert report["summary"]["waiting_for_files"] == 1 and report["summary"]["submitted"] == 0

    for path in gradients:
        s3.upload_file(str(path), BUCKET, "up/" + path.relative_to(tmp_path / "ds").as_posix())
    again = run_dag(bucket=BUCKET, bidsdir="up", backend="local", pipeline="lite")
    report = read_json(s3, bucket=BUCKET, where=f"up/derivatives/ndmg/reports/{again.run_id}/report.json")
    [row] = report["scans"]
    assert (row["scan_id"], row["status"], row["new"], row["waiting_for_files"]) == ("sub-01", "succeeded", True, False)
