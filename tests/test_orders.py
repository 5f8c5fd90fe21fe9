"""Orders nobody can rewrite (issue 21, finding 1): what a run writes for itself is sealed and
checked before use, the SubmitJob request is built at submit time from the run's own
configuration, and the scan runner re-checks every label, path and location of its spec.

Each test puts a hostile actor in the loop: a second writer that rewrites the job dir's
documents a moment after the run writes them, an XCom rewritten as a USER-role account can
through the REST API, or a job spec crafted to reach outside the scan. Each asserts that
nothing hostile is submitted, written or deleted, and that the run says why it refused.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from ndmg_cloud.participant.params import resolve

from datasets import E2E_VALID, listing, put_dataset, sessionless_scan, upload_tree, write_specs
from helpers import read_json

BUCKET = "lab-data"
BIDSDIR = "studies/ds-test/"
HOSTILE_COMMAND = ["sh", "-c", f"aws s3 rm --recursive s3://{BUCKET}/{BIDSDIR}"]
OTHER_DEFINITION = "arn:aws:batch:us-east-1:123456789012:job-definition/other-team:1"
BROKEN = "has a seal that does not match"


# -- the seals, document by document --------------------------------------------------------


def config_of(run_id: str = "run-A", **params):
    return resolve({"bucket": BUCKET, "bidsdir": "ds", "jobdir": "s3://lab-jobs/jobs/", **params}, run_id)


def test_every_document_a_run_writes_is_refused_once_rewritten(s3):
    from ndmg_cloud.core.s3 import put_json, read_json_at
    from ndmg_cloud.participant.canary import CanaryJob, CanaryOutcome, Settlement
    from ndmg_cloud.participant.jobspec import build_spec, read_spec, run_file_uri, write_specs
    from ndmg_cloud.participant.runplan import RELEASED, PlanRef, RunPlan, ScanTask
    from ndmg_cloud.participant.seal import BrokenSeal

    s3.create_bucket(Bucket="lab-jobs")
    config = config_of()
    scan = sessionless_scan()
    ref = RunPlan(config, [scan]).write(s3)
    write_specs(s3, [build_spec(config, scan)])
    Settlement({}, {}, [], CanaryOutcome("passed"), None).write(s3, config)
    xcom = json.loads(json.dumps(ref.to_dict()))
    # untouched, every one reads back
    assert RunPlan.read(s3, PlanRef.from_dict(xcom, "run-A")).scans == [scan]
    assert read_spec(s3, config, "sub-01")[0].scan_id == "sub-01"
    assert Settlement.read(s3, config) is not None

    def rewrite(uri, change):
        document = read_json_at(s3, uri)
        change(document)
        put_json(s3, uri, document)

    rewrite(run_file_uri(config, "plan", ".json"), lambda d: d["config"].update(job_definition="other-team:1"))
    with pytest.raises(BrokenSeal, match=rf"the run plan \(s3://lab-jobs/jobs/plan-\w+\.json\) {BROKEN}"):
        RunPlan.read(s3, PlanRef.from_dict(xcom, "run-A"))
    rewrite("s3://lab-jobs/jobs/sub-01.json", lambda d: d["batch"]["containerOverrides"].update(command=HOSTILE_COMMAND))
    with pytest.raises(BrokenSeal, match=rf"the job spec \(s3://lab-jobs/jobs/sub-01.json\) {BROKEN}"):
        read_spec(s3, config, "sub-01")
    rewrite(run_file_uri(config, "settled", ".json"), lambda d: d.update(pilots=["sub-09"]))
    with pytest.raises(BrokenSeal, match=f"the run's settlement .* {BROKEN}"):
        Settlement.read(s3, config)

    # XComs, as a USER-role account may patch them: changed, copied to another run, or unsealed
    with pytest.raises(BrokenSeal, match=f"discover's XCom .* {BROKEN}"):
        PlanRef.from_dict({**xcom, "config": {**xcom["config"], "job_queue": "other-queue"}}, "run-A")
    with pytest.raises(BrokenSeal, match=f"discover's XCom .* {BROKEN}"):
        PlanRef.from_dict(xcom, "run-B")
    items = ScanTask.sealed_list([ScanTask("sub-01", "s3://lab-jobs/jobs/sub-01.json"), ScanTask("sub-02", "x")], "run-A", RELEASED)
    assert ScanTask.verified(items[1], "run-A", RELEASED, 1).scan_id == "sub-02"
    for data, run_id, index in ((items[1], "run-A", 0), (items[0], "run-B", 0), ({**items[0], "scan_id": "sub-02"}, "run-A", 0)):
        with pytest.raises(BrokenSeal, match=f"the argument of scan task {index}"):
            ScanTask.verified(data, run_id, RELEASED, index)
    with pytest.raises(BrokenSeal, match="write_job_specs' canary_job XCom .* has no seal"):
        CanaryJob.picked({"scan_id": "sub-01", "batch": {"jobDefinition": OTHER_DEFINITION}}, "run-A")


def test_no_seal_key_is_a_clear_error_naming_what_to_set(monkeypatch):
    from ndmg_cloud.participant.runplan import RunPlan
    from ndmg_cloud.participant.seal import NoSealKey

    monkeypatch.delenv("NDMG_SEAL_KEY")
    with pytest.raises(NoSealKey, match="no seal key: set NDMG_SEAL_KEY .* or NDMG_SEAL_KEY_FILE"):
        RunPlan(config_of(), []).write(None)
    monkeypatch.setenv("NDMG_SEAL_KEY", "short")
    with pytest.raises(NoSealKey, match="the seal key is 5 characters, fewer than 32"):
        RunPlan(config_of(), []).write(None)


def test_only_this_scans_own_command_on_the_runs_queue_and_definition_is_ever_submitted():
    from dataclasses import replace

    from ndmg_cloud.participant.canary import canary_job
    from ndmg_cloud.participant.jobspec import RefusedSubmission, check_submission, scan_submission

    config = config_of()
    good = scan_submission(config, "sub-01", "ab" * 32)
    check_submission(config, good, "sub-01", "ab" * 32)
    check_submission(config, canary_job(config, "sub-01", "ab" * 32).submission, "sub-01", "ab" * 32)
    hostile = [
        ("command", replace(good, command=HOSTILE_COMMAND)),
        ("job definition", replace(good, job_definition=OTHER_DEFINITION)),
        ("job queue", replace(good, job_queue="other-queue")),
        ("environment", replace(good, environment={**good.environment, "AWS_CONFIG_FILE": "/tmp/x"})),
        ("command", replace(good, command=["ndmg-scan", "--spec", "s3://lab-jobs/jobs/sub-02.json"])),  # another scan's spec
    ]
    for what, submission in hostile:
        with pytest.raises(RefusedSubmission, match=f"refusing to submit a job for scan sub-01: .*{what}"):
            check_submission(config, submission, "sub-01", "ab" * 32)


# -- the runner, given a spec crafted to reach outside its scan -----------------------------


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from ndmg_cloud.demo.synthetic import make_dataset

    root = tmp_path_factory.mktemp("phantom")
    make_dataset(root, subjects=1, sessions=1, sessionless=0)
    return root


RAW_ELSEWHERE = "s3://other-lab/raw/sub-09/dwi/sub-09_dwi.nii.gz"


def point_outputs_at(spec: dict, root: str) -> None:
    """Move a spec's output root, keeping its prefix and manifest consistent with the layout."""
    spec["output_prefix"] = spec["output_prefix"].replace(spec["output_root"], root)
    spec["manifest"] = spec["manifest"].replace(spec["output_root"], root)
    spec["output_root"] = root


RUNNER_CASES = [
    # case, change to the spec, extra environment, expected message
    ("label with ../", lambda s: s["scan"].update(session="1/../../../../escaped"), {}, "job spec names label ses-"),
    (
        "300-character label",
        lambda s: s["scan"]["entities"].update(acquisition="a" * 300),
        {},
        "is 300 characters long; labels may have at most 64",
    ),
    ("manifest names another bucket's raw DWI", lambda s: s.update(manifest=RAW_ELSEWHERE), {}, "job spec's manifest 's3://other-lab/raw/"),
    ("outputs into the dataset's root", lambda s: point_outputs_at(s, s["input_root"]), {}, "lies inside the input dataset"),
    (
        "outputs outside the deployment's output roots",
        lambda s: point_outputs_at(s, "s3://other-lab/out/"),
        {"NDMG_INPUT_ROOTS": "s3://lab-data/ds/", "NDMG_OUTPUT_ROOTS": "s3://lab-data/ds/derivatives/"},
        "output root s3://other-lab/out/ is not inside this deployment's NDMG_OUTPUT_ROOTS",
    ),
    ("a Batch job with no allowed roots", lambda s: None, {"AWS_BATCH_JOB_ID": "job-1"}, "this job's environment has no NDMG_INPUT_ROOTS"),
    ("an input named ..", lambda s: s["scan"]["inputs"].update(bval="sub-01/ses-1/dwi/.."), {}, "input bval 'sub-01/ses-1/dwi/..'"),
    (
        "spec rewritten after the orchestrator checked it",
        lambda s: s["pipeline"]["options"].update(grid=4),
        {"NDMG_JOB_SPEC_SHA256": "as-written"},
        "is not the one the orchestrator checked when it submitted this job",
    ),
]


@pytest.mark.parametrize("case, change, env, message", RUNNER_CASES, ids=[c[0] for c in RUNNER_CASES])
def test_the_runner_refuses_a_spec_that_reaches_outside_its_scan_before_touching_anything(
    s3, phantom, tmp_path, case, change, env, message
):
    from test_runner import key_of, run_runner

    _, specs = write_specs(s3, phantom)
    spec = specs["sub-01_ses-1"]
    written = json.dumps(spec).encode()
    s3.put_object(Bucket=BUCKET, Key=key_of(spec["manifest"]), Body=b"{}")  # an old manifest: kept, since nothing ran
    s3.create_bucket(Bucket="other-lab")
    s3.put_object(Bucket="other-lab", Key=key_of(RAW_ELSEWHERE), Body=b"raw DWI of another lab")
    change(spec)
    s3.put_object(Bucket=BUCKET, Key=key_of(spec["spec_uri"]), Body=json.dumps(spec))
    env = {k: hashlib.sha256(written).hexdigest() if v == "as-written" else v for k, v in env.items()}
    before = {bucket: listing(s3, bucket) for bucket in (BUCKET, "other-lab")}

    done = run_runner(spec["spec_uri"], "--workdir", str(tmp_path / "work"), env_extra=env)

    assert done.returncode == 2, done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
    assert {bucket: listing(s3, bucket) for bucket in (BUCKET, "other-lab")} == before  # nothing deleted, nothing written
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.rglob("*.nii.gz"))  # nothing downloaded


def test_a_300_character_label_is_an_invalid_scan_not_a_failed_run(s3):
    from ndmg_cloud.participant.discover import discover

    label = "a" * 300
    keys = [f"sub-01/dwi/sub-01_acq-{label}_dwi.{ext}" for ext in ("nii.gz", "bval", "bvec")] + ["sub-01/anat/sub-01_T1w.nii.gz"]
    keys += [k.replace("01", "02").replace(f"_acq-{label}", "") for k in keys]  # and a valid scan beside it
    put_dataset(s3, BUCKET, "long/", keys=keys)
    scans = discover(resolve({"bucket": BUCKET, "bidsdir": "long"}, "run-1"), s3).scans
    assert [s.scan_id for s in scans if s.valid] == ["sub-02"]
    (reason,) = [s.reason for s in scans if not s.valid]
    assert reason.startswith(f"label acq-{label[:80]!r} in 'sub-01/dwi/sub-01_acq-") and reason.endswith(
        "is 300 characters long; labels may have at most 64"
    )


# -- end to end: the real DAG with a hostile actor in the loop ------------------------------


@pytest.fixture
def hostile(s3, batch_env, batch_behaviour, airflow_db):
    """The e2e dataset, and a record of every job the local Batch ran: (command, definition)."""
    put_dataset(s3, BUCKET, BIDSDIR)
    # another team's job definition exists in the account: a request naming it would run
    registered = batch_env.register_job_definition(
        jobDefinitionName="other-team", type="container", containerProperties={"image": "x", "vcpus": 96, "memory": 700000}
    )
    assert registered["jobDefinitionArn"] == OTHER_DEFINITION
    jobs = []
    batch_behaviour.on_submit = lambda job: jobs.append((job.container_overrides.get("command"), job.job_definition.arn)) and 0
    return jobs


def hostile_spec(document: dict) -> None:
    """What the second writer makes of a job spec: another command, another team's job
    definition, outputs over the dataset and its manifest on a raw DWI. It cannot redo the seal."""
    document["batch"]["containerOverrides"]["command"] = HOSTILE_COMMAND
    document["batch"]["jobDefinition"] = OTHER_DEFINITION
    document["pipeline"]["command"] = HOSTILE_COMMAND
    point_outputs_at(document, document["input_root"])
    document["manifest"] = document["input_root"] + document["scan"]["inputs"]["dwi"]


@pytest.fixture
def second_writer(s3, monkeypatch):
    """Rewrites every job spec a moment after the run writes them (and before it reads them)."""
    from ndmg_cloud.core.s3 import put_json, read_json_at
    from ndmg_cloud.orchestration import participant_tasks

    real = participant_tasks.write_specs
    rewritten = []

    def write_then_rewrite(client, specs):
        real(client, specs)
        for spec in specs:
            document = read_json_at(s3, spec.spec_uri)
            hostile_spec(document)
            put_json(s3, spec.spec_uri, document)
            rewritten.append(spec.spec_uri)

    monkeypatch.setattr(participant_tasks, "write_specs", write_then_rewrite)
    return rewritten


def run_dag(**conf):
    from test_dag_e2e import run_dag as run

    return run(**conf)


@pytest.mark.parametrize("canary", [True, False])
def test_rewritten_specs_submit_nothing_and_the_run_says_why(s3, hostile, second_writer, capfd, canary):
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, canary=canary)

    assert run.state == "failed"
    assert len(second_writer) == len(E2E_VALID)
    assert hostile == []  # no job at all: not the canary, not one scan
    assert f"the job spec (s3://{BUCKET}/{BIDSDIR}derivatives/ndmg/jobs/" in capfd.readouterr().out
    report = read_json(s3, bucket=BUCKET, where=f"{BIDSDIR}derivatives/ndmg/reports/{run.run_id}/report.json")
    assert report["summary"]["submitted"] == 0


def test_a_rewritten_plan_submits_nothing(s3, hostile, monkeypatch, capfd):
    from ndmg_cloud.core.s3 import put_json, read_json_at
    from ndmg_cloud.participant.runplan import RunPlan

    real = RunPlan.write

    def write_then_rewrite(self, client):
        ref = real(self, client)
        document = read_json_at(s3, ref.uri)
        document["config"]["job_definition"] = OTHER_DEFINITION
        put_json(s3, ref.uri, document)
        return ref

    monkeypatch.setattr(RunPlan, "write", write_then_rewrite)
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)

    assert run.state == "failed" and hostile == []
    out = capfd.readouterr().out
    assert f"the run plan (s3://{BUCKET}/{BIDSDIR}derivatives/ndmg/jobs/{run.run_id}/plan-" in out and BROKEN in out


def test_xcoms_rewritten_by_a_user_submit_nothing_hostile(s3, hostile, monkeypatch, capfd):
    """A USER-role account patches the canary's XCom (an old-style payload naming its own
    command and job definition) and the pilot's mapped argument (with an AWS connection of
    its choosing): neither is used."""
    from ndmg_cloud.orchestration import participant_tasks
    from ndmg_cloud.orchestration.taskids import CANARY_JOB_XCOM_KEY

    real_specs, real_plan = participant_tasks.write_job_specs_step, participant_tasks.plan_scans_step

    def specs_then_patch(discovery, ti):
        count = real_specs(discovery, ti)
        scan_id = E2E_VALID[0]
        ti.xcom_push(
            key=CANARY_JOB_XCOM_KEY,
            value={
                "scan_id": scan_id,
                "job_spec_uri": "x",
                "runnable_timeout": 60,
                "batch": {
                    "jobName": "x",
                    "jobQueue": "ndmg-queue",
                    "jobDefinition": OTHER_DEFINITION,
                    "containerOverrides": {"command": HOSTILE_COMMAND},
                },
            },
        )
        return count

    monkeypatch.setattr(participant_tasks, "write_job_specs_step", specs_then_patch)
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR)
    assert run.state == "failed" and hostile == []
    assert "write_job_specs' canary_job XCom" in capfd.readouterr().out

    monkeypatch.setattr(participant_tasks, "write_job_specs_step", real_specs)

    def plan_then_patch(discovery, ti):
        items = real_plan(discovery, ti)
        return [{**item, "aws_conn_id": "another_account"} for item in items] + [{"scan_id": E2E_VALID[1], "job_spec_uri": "x"}]

    monkeypatch.setattr(participant_tasks, "plan_scans_step", plan_then_patch)
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, canary=False, pilot_scans=1)
    assert run.state == "failed" and hostile == []
    out = capfd.readouterr().out
    assert f"the argument of scan task 0 ({run.run_id}:pilot:0) {BROKEN}" in out
    assert f"the argument of scan task 1 ({run.run_id}:pilot:1) has no seal" in out


def test_a_rewritten_spec_on_the_local_backend_leaves_the_dataset_untouched(s3, airflow_db, second_writer, tmp_path, capfd):
    from ndmg_cloud.demo.synthetic import make_dataset

    make_dataset(tmp_path / "ds", subjects=1, sessions=1, sessionless=1)
    s3.create_bucket(Bucket=BUCKET)
    upload_tree(s3, BUCKET, tmp_path / "ds", "phantoms/")
    before = listing(s3, BUCKET, "phantoms/")

    run = run_dag(bucket=BUCKET, bidsdir="phantoms", backend="local", pipeline="lite")

    assert run.state == "failed"
    after = listing(s3, BUCKET, "phantoms/")
    assert {k: v for k, v in after.items() if k in before} == before  # no input file rewritten or deleted
    assert all(k.startswith("phantoms/derivatives/") for k in set(after) - set(before))  # nothing written outside derivatives/
    assert f"the job spec (s3://{BUCKET}/phantoms/derivatives/ndmg/jobs/" in capfd.readouterr().out


def test_a_bucket_of_junk_is_refused_by_the_key_budget_not_held(s3):
    """Discovery holds at most 12 x max_scans + 1,000 candidate keys: past that the run is
    refused, naming what to do; junk keys are counted, only the first few are kept."""
    from ndmg_cloud.core.bids import JUNK_NAMED_IN_WARNING, discover_scans
    from ndmg_cloud.participant.discover import TooManyScans, discover

    keys = [f"sub-{i:05d}/dwi/sub-{i:05d}_dwi.{ext}" for i in range(400) for ext in ("nii.gz", "bval", "bvec")]
    put_dataset(s3, BUCKET, "junk/", keys=keys)
    with pytest.raises(TooManyScans, match="more than 1012 image and gradient files .* raise max_scans"):
        discover(resolve({"bucket": BUCKET, "bidsdir": "junk", "max_scans": 1}, "run-1"), s3)
    found = discover_scans((f"sub-01/dwi/x{i}/../sub-01_dwi.nii.gz" for i in range(5000)), "")
    (warning,) = [w for w in found.warnings if "keys under sub-*" in w]
    assert warning.startswith("5000 keys under sub-* are not BIDS paths") and len(warning) < 10000
    assert JUNK_NAMED_IN_WARNING < 100


def test_label_lists_and_the_cost_ceiling_have_bounds_at_trigger_time():
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    from ndmg_cloud.participant.params import PARAM_SCHEMAS

    with pytest.raises(ParamValidationError):
        Param(**PARAM_SCHEMAS["participant_label"]).resolve(["01"] * 10001)
    assert Param(**PARAM_SCHEMAS["max_cost_usd"]).resolve() == 1000.0
    assert config_of().max_cost_usd == 1000.0 and config_of(max_cost_usd=None).max_cost_usd is None


def test_a_deployment_that_turned_the_local_backend_off_runs_no_scan_on_its_worker(s3, airflow_db, monkeypatch, tmp_path, capfd):
    """docker-compose.yaml sets NDMG_LOCAL_BACKEND=off: its scheduler container holds Airflow's
    secrets, so backend=local is refused at discovery, before the lease and any spec."""
    from ndmg_cloud.demo.synthetic import make_dataset
    from ndmg_cloud.participant.local import LOCAL_BACKEND_ENV

    monkeypatch.setenv(LOCAL_BACKEND_ENV, "off")
    make_dataset(tmp_path / "ds", subjects=1, sessions=1, sessionless=0)
    s3.create_bucket(Bucket=BUCKET)
    upload_tree(s3, BUCKET, tmp_path / "ds", "phantoms/")
    before = listing(s3, BUCKET, "")

    run = run_dag(bucket=BUCKET, bidsdir="phantoms", backend="local", pipeline="lite")

    assert run.state == "failed"
    assert f"backend=local is turned off here ({LOCAL_BACKEND_ENV}=off)" in capfd.readouterr().out
    assert listing(s3, BUCKET, "") == before  # no lease, no plan, no spec, no output
