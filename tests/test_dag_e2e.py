"""End to end: the real DAG under dag.test() against the local AWS endpoint."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from datasets import E2E_INVALID, E2E_VALID, listing, put_dataset

BUCKET = "lab-data"
BIDSDIR = "studies/ds-test/"
OUT = BIDSDIR + "derivatives/ndmg/"
M2G_ATLASES = ["AAL", "Desikan"]  # the m2g pipeline's default parcellations


def run_dag(**conf):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_participant"]
    return dag.test(run_conf=conf)


def read_json(s3, key):
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def report_of(s3, run):
    return read_json(s3, f"{OUT}reports/{run.run_id}/report.json")


def report_uri_of(run):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(run_id=run.run_id, task_id="verify_and_report", key="return_value")
            .one()
        )
        return XComModel.deserialize_value(row)


def asset_events(uri):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).filter(AssetModel.uri == uri).all()
        )
        session.expunge_all()
        return events


def rows_by_scan(report):
    return {row["scan_id"]: row for row in report["scans"]}


def m2g_outputs(scan_id: str) -> list[str]:
    """The keys m2g writes for a scan, spelled out from m2g's documented layout."""
    parts = scan_id.split("_")
    folder = "/".join(p for p in parts if p.startswith(("sub-", "ses-"))) + "/"
    stem = f"{scan_id}_dwi"
    keys = []
    for atlas in M2G_ATLASES:
        name = f"{atlas}_space-MNI152NLin6_res-2x2x2"
        keys.append(f"{OUT}{folder}connectomes_d/{name}/{stem}_{name}_connectome.csv")
    return keys


def scan_of(job) -> str:
    return scan_of_name(job.job_name)


def scan_of_name(job_name: str) -> str:
    """The scan a job runs, from its name: <dataset>-<scan id>-<8-hex run token>."""
    return job_name[len("ds-test-") : -len("-12345678")]


def write_scan_outputs(s3, scan_id: str, run_id: str = "earlier") -> None:
    """What a scan container leaves behind: the graphs, then the manifest last."""
    for key in m2g_outputs(scan_id):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"0 1 3\n1 2 5\n")
    s3.put_object(Bucket=BUCKET, Key=manifest_key(scan_id), Body=json.dumps({"status": "success", "run_id": run_id}))


def manifest_key(scan_id: str) -> str:
    parts = scan_id.split("_")
    folder = "/".join(p for p in parts if p.startswith(("sub-", "ses-"))) + "/"
    return f"{OUT}{folder}{scan_id}_manifest.json"


@pytest.fixture
def dataset(s3, batch_env, airflow_db):
    put_dataset(s3, BUCKET, BIDSDIR)
    return listing(s3, BUCKET, BIDSDIR + "sub-")


def test_jobs_that_succeed_without_outputs_are_missing_outputs(s3, batch, dataset, batch_behaviour):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)

    assert run.state == "failed"  # missing outputs fail the run, so alerts fire
    jobs = batch.list_jobs(jobQueue="ndmg-queue", jobStatus="SUCCEEDED")["jobSummaryList"]
    assert len(jobs) == len(E2E_VALID)

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


def test_scans_with_outputs_succeed_and_a_failed_job_is_reported(s3, batch, dataset, batch_behaviour):
    def container_did_its_work(job):
        if "sub-05" not in scan_of(job):
            write_scan_outputs(s3, scan_of(job))

    batch_behaviour.on_submit = container_did_its_work
    batch_behaviour.fail["sub-05_ses-1"] = "Essential container in task exited"
    batch_behaviour.run_seconds = 1.5  # jobs stay RUNNING a while: the deferrable wait runs

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)

    assert run.state == "failed"
    rows = rows_by_scan(report_of(s3, run))
    for scan_id in E2E_VALID:
        if scan_id == "sub-05_ses-1":
            continue
        assert rows[scan_id]["status"] == "succeeded", rows[scan_id]
        assert rows[scan_id]["missing"] == []
        assert len(rows[scan_id]["outputs"]) == 2
        assert rows[scan_id]["attempts"] == 1
    failed = rows["sub-05_ses-1"]
    assert failed["status"] == "failed"
    assert "Essential container in task exited" in failed["reason"]
    assert failed["failure_class"] == "pipeline_error"  # exit code 1, not Spot, OOM, pull or timeout
    assert failed["job_id"]
    assert failed["log_url"].startswith("https://us-east-1.console.aws.amazon.com/cloudwatch/")


def test_all_scans_succeed_means_the_run_succeeds(s3, batch, dataset, batch_behaviour):
    batch_behaviour.on_submit = lambda job: write_scan_outputs(s3, scan_of(job))

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, participant_label=["01", "sub-02"])

    assert run.state == "success"
    report = report_of(s3, run)
    assert sorted(rows_by_scan(report)) == ["sub-01_ses-retest", "sub-01_ses-test", "sub-02"]
    assert report["summary"]["succeeded"] == 3
    description = read_json(s3, OUT + "dataset_description.json")
    assert description["DatasetType"] == "derivative"
    # downstream DAGs can subscribe to this dataset's reports
    events = asset_events(f"s3://{BUCKET}/{OUT}reports")
    assert [e.extra["run_id"] for e in events] == [run.run_id]
    assert events[0].extra["report"] == f"s3://{BUCKET}/{OUT}reports/{run.run_id}/report.json"


def test_job_specs_hold_the_exact_submit_payload(s3, batch, dataset, batch_behaviour):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")

    prefix = f"{OUT}jobs/{run.run_id}/"
    specs = {k[len(prefix) :]: read_json(s3, k) for k in listing(s3, BUCKET, prefix)}
    assert sorted(specs) == sorted(f"{s}.json" for s in E2E_VALID)

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
    assert len(listing(s3, BUCKET, f"{OUT}jobs/{run.run_id}/")) == len(E2E_VALID)


def test_bad_input_fails_before_any_submission(s3, batch, dataset, batch_behaviour):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, modif="sub-01/out")

    assert run.state == "failed"
    assert batch_behaviour.submitted == []
    assert listing(s3, BUCKET, BIDSDIR + "sub-") == dataset


def test_mapped_tasks_are_labelled_by_scan_and_links_kept(s3, batch, dataset, batch_behaviour):
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


def test_local_backend_runs_the_lite_pipeline_end_to_end(s3, airflow_db, tmp_path):
    from ndmg_cloud.synthetic import make_dataset

    scans = make_dataset(tmp_path / "ds", subjects=1, sessions=2, sessionless=1)
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted((tmp_path / "ds").rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, "phantoms/" + path.relative_to(tmp_path / "ds").as_posix())
    before = listing(s3, BUCKET, "phantoms/sub-")

    run = run_dag(bucket=BUCKET, bidsdir="phantoms", backend="local", pipeline="lite")

    assert run.state == "success"
    report = read_json(s3, f"phantoms/derivatives/ndmg/reports/{run.run_id}/report.json")
    rows = rows_by_scan(report)
    assert sorted(rows) == sorted(scans)
    for row in rows.values():
        assert row["status"] == "succeeded", row
        assert row["duration_s"] > 0 and row["attempts"] == 1
    assert rows["sub-02"]["outputs"] == ["connectomes_d/grid3/sub-02_dwi_grid3_connectome.csv"]
    edges = s3.get_object(
        Bucket=BUCKET, Key="phantoms/derivatives/ndmg/sub-01/ses-2/connectomes_d/grid3/sub-01_ses-2_dwi_grid3_connectome.csv"
    )["Body"].read()
    assert len(edges.splitlines()) > 3
    assert listing(s3, BUCKET, "phantoms/sub-") == before


def test_a_rerun_submits_only_what_is_not_done(s3, batch, dataset, batch_behaviour):
    def container_did_its_work(job):
        if scan_of(job) == "sub-05_ses-1" and batch_behaviour.fail:
            return  # the first time round this scan fails
        write_scan_outputs(s3, scan_of(job), job.job_name)

    batch_behaviour.on_submit = container_did_its_work
    batch_behaviour.fail["sub-05_ses-1"] = "Essential container in task exited"
    first = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert first.state == "failed"
    assert len(batch_behaviour.submitted) == len(E2E_VALID)

    batch_behaviour.submitted.clear()
    batch_behaviour.fail.clear()
    second = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert second.state == "success"
    assert [scan_of_name(n) for n in batch_behaviour.submitted] == ["sub-05_ses-1"]  # only the failed one
    rows = rows_by_scan(report_of(s3, second))
    assert rows["sub-05_ses-1"]["status"] == "succeeded"
    assert {rows[s]["status"] for s in E2E_VALID if s != "sub-05_ses-1"} == {"skipped_done"}
    assert report_of(s3, second)["summary"]["skipped_done"] == len(E2E_VALID) - 1

    batch_behaviour.submitted.clear()
    third = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert third.state == "success"
    assert batch_behaviour.submitted == []  # everything done: nothing submitted

    forced = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test", force=True)
    assert forced.state == "success"
    assert len(batch_behaviour.submitted) == len(E2E_VALID)


def test_a_worker_crash_after_submit_does_not_submit_again(s3, batch, dataset, batch_behaviour, monkeypatch):
    from ndmg_cloud.operators import ScanBatchOperator

    crashed: set[str] = set()
    real = ScanBatchOperator._persist_links

    def crash_once(self, context, *args, **kwargs):
        # the worker dies after SubmitJob returned, before the task could defer
        if self.scan_id not in crashed:
            crashed.add(self.scan_id)
            raise RuntimeError("simulated worker crash")
        return real(self, context, *args, **kwargs)

    monkeypatch.setattr(ScanBatchOperator, "_persist_links", crash_once)
    batch_behaviour.run_seconds = 1.0

    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")

    assert crashed == set(E2E_VALID)  # every scan's first try died
    names = [scan_of_name(n) for n in batch_behaviour.submitted]
    assert sorted(names) == sorted(E2E_VALID)  # yet exactly one Batch job per scan
    jobs = batch.list_jobs(jobQueue="ndmg-queue", jobStatus="SUCCEEDED")["jobSummaryList"]
    assert len(jobs) == len(E2E_VALID)
    rows = rows_by_scan(report_of(s3, run))
    assert {rows[s]["job_id"] for s in E2E_VALID} == {j["jobId"] for j in jobs}


def test_reattach_only_within_one_round_of_tries():
    from ndmg_cloud.operators import reattachable

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


def test_a_run_above_max_cost_is_refused_before_submitting(s3, batch, dataset, batch_behaviour, capfd):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, max_cost_usd=0.5)
    assert run.state == "failed"
    assert batch_behaviour.submitted == []
    assert "6 scans would cost about $1.13 on-demand ($0.45 on Spot), above max_cost_usd=0.5" in capfd.readouterr().out
