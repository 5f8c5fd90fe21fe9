"""Least-privilege IAM policies generated from the params, linted by parliament."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from parliament import analyze_policy_string

from ndmg_cloud.infra.iam import job_role_policy, main, orchestrator_policy
from ndmg_cloud.participant.params import resolve

from datasets import sessionless_scan

CONFIGS = [
    {"bucket": "lab-data", "bidsdir": "studies/ds1"},
    {"bucket": "openneuro.org", "bidsdir": "ds000221", "output_uri": "s3://my-lab/ds000221-ndmg", "jobdir": "s3://my-lab-jobs/run/"},
    {
        "bucket": "lab-data",
        "pipeline": "lite",
        "atlas": "s3://lab-atlases/native/a.nii.gz",
        "job_queue": "arn:aws:batch:eu-west-1:123456789012:job-queue/q",
    },
]


def findings(policy):
    return [(f.issue, f.detail) for f in analyze_policy_string(json.dumps(policy)).findings]


@pytest.mark.parametrize("params", CONFIGS)
def test_policies_pass_parliament(params):
    config = resolve(params, "run1")
    assert findings(job_role_policy(config)) == []
    assert findings(orchestrator_policy(config, "us-east-1", "123456789012")) == []


def actions_on(policy, resource_part):
    out = set()
    for st in policy["Statement"]:
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if any(resource_part in r for r in resources):
            out |= set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    return out


def test_job_role_reads_inputs_and_writes_only_output_subjects():
    config = resolve(CONFIGS[1], "run1")
    policy = job_role_policy(config)
    assert actions_on(policy, "arn:aws:s3:::openneuro.org/ds000221/*") == {"s3:GetObject"}
    assert actions_on(policy, "arn:aws:s3:::my-lab/ds000221-ndmg/sub-*") == {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    assert actions_on(policy, "arn:aws:s3:::my-lab-jobs/run/*") == {"s3:GetObject"}
    assert actions_on(policy, "arn:aws:s3:::my-lab/ds000221-ndmg/reports/*/canary.json") == {"s3:PutObject"}  # the canary
    all_actions = {a for st in policy["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert not any(a.startswith(("batch:", "iam:", "s3:PutObjectAcl")) or a.endswith("*") for a in all_actions)


def test_orchestrator_submits_only_to_the_named_queue_and_definition():
    config = resolve(CONFIGS[0], "run1")
    policy = orchestrator_policy(config, "us-east-1", "123456789012")
    submit = next(st for st in policy["Statement"] if st["Action"] == "batch:SubmitJob")
    assert submit["Resource"] == [
        "arn:aws:batch:us-east-1:123456789012:job-queue/ndmg-queue",
        "arn:aws:batch:us-east-1:123456789012:job-definition/ndmg",
        "arn:aws:batch:us-east-1:123456789012:job-definition/ndmg:*",
        "arn:aws:batch:us-east-1:123456789012:job/*",  # SubmitJob also names the new job
    ]
    assert "s3:PutObject" not in actions_on(policy, "arn:aws:s3:::lab-data/studies/ds1/sub-")
    text = json.dumps(policy)
    assert "PutObjectAcl" not in text and '"*:*"' not in text


def test_the_orchestrator_may_stop_only_jobs_this_project_tagged():
    from ndmg_cloud.participant.jobspec import PROJECT, PROJECT_TAG  # on every job submitted (test_jobspec)

    from iam_eval import ALLOWED, IMPLICIT_DENY, evaluate

    policy = orchestrator_policy(resolve(CONFIGS[0], "run1"), "us-east-1", "123456789012")
    job = "arn:aws:batch:us-east-1:123456789012:job/0b9c4f6e"
    ours = {f"aws:ResourceTag/{PROJECT_TAG}": PROJECT}
    for action in ("batch:TerminateJob", "batch:CancelJob"):
        assert evaluate([policy], action, job, ours) == ALLOWED
        assert evaluate([policy], action, job, {}) == IMPLICIT_DENY  # another team's job
        assert evaluate([policy], action, job, {f"aws:ResourceTag/{PROJECT_TAG}": "other"}) == IMPLICIT_DENY
    assert evaluate([policy], "batch:TagResource", job, {f"aws:RequestTag/{PROJECT_TAG}": PROJECT}) == ALLOWED
    assert evaluate([policy], "batch:TagResource", job, {}) == IMPLICIT_DENY


def test_every_job_the_orchestrator_submits_may_be_tagged_at_submit_and_stopped_later():
    """AWS authorizes SubmitJob's tags as batch:TagResource with the request's tags: the
    canary's job as much as a scan's must carry the project tag, or its SubmitJob is denied."""
    from ndmg_cloud.participant.canary import canary_job
    from ndmg_cloud.participant.jobspec import build_spec

    from iam_eval import ALLOWED, evaluate

    config = resolve(CONFIGS[0], "run1")
    policy = orchestrator_policy(config, "us-east-1", "123456789012")
    scan = sessionless_scan()
    spec = build_spec(config, scan)
    job = "arn:aws:batch:us-east-1:123456789012:job/0b9c4f6e"
    for what, payload in (("scan", spec.batch.payload()), ("canary", canary_job(config, scan.scan_id).submission.payload())):
        tags = payload["tags"]
        assert evaluate([policy], "batch:TagResource", job, {f"aws:RequestTag/{k}": v for k, v in tags.items()}) == ALLOWED, what
        assert evaluate([policy], "batch:TerminateJob", job, {f"aws:ResourceTag/{k}": v for k, v in tags.items()}) == ALLOWED, what


def test_the_orchestrator_reads_back_the_run_files_it_writes_to_any_job_dir():
    from ndmg_cloud.participant.jobspec import run_file_uri, submission_uri

    from iam_eval import ALLOWED, IMPLICIT_DENY, evaluate

    for params in CONFIGS[:2]:  # the default job dir (under the output) and one in another bucket
        config = resolve(params, "run1")
        policy = orchestrator_policy(config, "us-east-1", "123456789012")
        uris = [run_file_uri(config, kind, suffix) for kind, suffix in (("plan", ".json"), ("settled", ".json"), ("released", ".items"))]
        for uri in [*uris, submission_uri(config, "sub-01")]:  # and a scan's SubmitJob record (the triggerer's)
            arn = "arn:aws:s3:::" + uri.removeprefix("s3://")
            assert evaluate([policy], "s3:PutObject", arn, {}) == ALLOWED
            assert evaluate([policy], "s3:GetObject", arn, {}) == ALLOWED, (params, uri)
    other = "arn:aws:s3:::my-lab-jobs-other/run/plan-1.json"
    assert (
        evaluate([orchestrator_policy(resolve(CONFIGS[1], "run1"), "us-east-1", "123456789012")], "s3:GetObject", other, {})
        == IMPLICIT_DENY
    )


def test_command_prints_both_policies(capsys):
    assert main(["--bucket", "lab-data", "--bidsdir", "ds1", "--account", "123456789012"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"job_role", "orchestrator_role"}
    assert main(["--bucket", "lab-data", "--modif", "sub-01", "--account", "1"]) == 2
    assert "modif 'sub-01' is refused: it must be a folder under derivatives/" in capsys.readouterr().err


# -- every AWS call of whole runs, judged against the deployed orchestrator policy -----------

# The IAM action and resource each API call the orchestrator makes is authorized as (AWS's
# Service Authorization Reference: Amazon S3, AWS Batch, CloudWatch Logs).
S3_ACTIONS = {"GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "PutObject": "s3:PutObject", "DeleteObject": "s3:DeleteObject"}
BATCH_READS = {"DescribeJobs", "ListJobs", "DescribeJobQueues", "DescribeJobDefinitions", "DescribeComputeEnvironments"}


def iam_requests(call, region, account, tags_of):
    """(action, resource, context) of each authorization one API call needs."""
    service, operation, params = call
    if service == "s3" and operation in S3_ACTIONS:
        return [(S3_ACTIONS[operation], f"arn:aws:s3:::{params['Bucket']}/{params['Key']}", {})]
    if service == "s3" and operation == "ListObjectsV2":
        return [("s3:ListBucket", f"arn:aws:s3:::{params['Bucket']}", {"s3:prefix": params.get("Prefix", "")})]
    batch = f"arn:aws:batch:{region}:{account}"
    if service == "batch" and operation in BATCH_READS:
        return [(f"batch:{operation}", "*", {})]
    if service == "batch" and operation == "SubmitJob":
        queue, definition = params["jobQueue"], params["jobDefinition"]
        queue = queue if queue.startswith("arn:") else f"{batch}:job-queue/{queue}"
        definition = definition if definition.startswith("arn:") else f"{batch}:job-definition/{definition}"
        tags = {f"aws:RequestTag/{k}": v for k, v in (params.get("tags") or {}).items()}
        return [("batch:SubmitJob", r, {}) for r in (queue, definition, f"{batch}:job/new")] + [
            ("batch:TagResource", f"{batch}:job/new", tags)
        ]
    if service == "batch" and operation == "TerminateJob":
        job = params["jobId"]
        return [("batch:TerminateJob", f"{batch}:job/{job}", {f"aws:ResourceTag/{k}": v for k, v in tags_of(job).items()})]
    if service == "logs" and operation == "GetLogEvents":
        stream = params["logStreamName"]
        return [("logs:GetLogEvents", f"arn:aws:logs:{region}:{account}:log-group:{params['logGroupName']}:log-stream:{stream}", {})]
    raise AssertionError(f"no IAM mapping for {service}:{operation}: add it from AWS's Service Authorization Reference")


@pytest.fixture
def aws_calls(monkeypatch):
    """Every AWS API call this process makes outside the local endpoint's own threads (the
    stand-in containers' writes are the job role's, not the orchestrator's)."""
    import threading

    from botocore.client import BaseClient

    calls = []
    real = BaseClient._make_api_call

    def recording(self, operation, params):
        if "process_request_thread" not in threading.current_thread().name:
            calls.append((self.meta.service_model.service_name, operation, dict(params)))
        return real(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recording)
    return calls


def test_every_call_of_a_whole_run_and_its_group_level_is_allowed_by_the_orchestrator_policy(
    s3, batch_env, batch_behaviour, airflow_db, aws_calls, monkeypatch
):
    """A participant run on the local Batch (canary, a pilot, scans, a duplicate job swept as
    an orphan and terminated, the lease taken and released, the report) and the group level
    on its report: each call, as IAM would authorize it, against the policy ``ndmg-policies``
    prints for the run (evaluated as AWS documents, tests/iam_eval.py)."""
    from airflow.dag_processing.dagbag import DagBag

    from ndmg_cloud.orchestration.operators import ScanBatchOperator

    from conftest import ENDPOINT, ROOT
    from datasets import put_phantoms
    from iam_eval import ALLOWED, evaluate
    from images import Containers

    put_phantoms(s3, Path(__import__("tempfile").mkdtemp()), "lab-data", "phantoms")
    batch_behaviour.on_submit = Containers(s3, None, ENDPOINT)
    real, duplicates = ScanBatchOperator._submit, []

    def submit_twice(self):  # one unrecorded duplicate: the orphan sweep terminates it
        if not duplicates and "--self-check" not in (self.submission.command or []):
            batch_behaviour.run_seconds = 600
            duplicates.append(real(self)["jobId"])
            batch_behaviour.run_seconds = 0
        return real(self)

    monkeypatch.setattr(ScanBatchOperator, "_submit", submit_twice)
    dags = DagBag(dag_folder=str(ROOT / "dags")).dags
    conf = {"bucket": "lab-data", "bidsdir": "phantoms", "pipeline": "lite", "pilot_scans": 1}
    aws_calls.clear()  # the test's own setup is not the orchestrator's
    run = dags["ndmg_participant"].test(run_conf=conf)
    assert run.state == "success"
    group = dags["ndmg_group"].test(run_conf={"report": f"s3://lab-data/phantoms/derivatives/ndmg/reports/{run.run_id}/report.json"})
    assert group.state == "success"
    calls = list(aws_calls)

    config = resolve(conf, run.run_id)
    policy = orchestrator_policy(config, "us-east-1", "123456789012")
    tags_of = lambda job: batch_env.describe_jobs(jobs=[job])["jobs"][0].get("tags") or {}  # noqa: E731
    operations = {(service, op) for service, op, _ in calls}
    assert {("batch", "SubmitJob"), ("batch", "TerminateJob"), ("s3", "DeleteObject"), ("s3", "ListObjectsV2")} <= operations
    denied = [
        (service, operation, action, resource)
        for call in calls
        for action, resource, context in iam_requests(call, "us-east-1", "123456789012", tags_of)
        if evaluate([policy], action, resource, context) != ALLOWED
        for service, operation, _ in [call]
    ]
    assert denied == []
    # and a job of another team, tagged project=other, can neither be re-tagged nor stopped
    job = "arn:aws:batch:us-east-1:123456789012:job/theirs"
    assert (
        evaluate([policy], "batch:TagResource", job, {"aws:ResourceTag/project": "other", "aws:RequestTag/project": "ndmg-cloud"})
        != ALLOWED
    )
    assert evaluate([policy], "batch:TerminateJob", job, {"aws:ResourceTag/project": "other"}) != ALLOWED
