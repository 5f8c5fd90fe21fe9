"""No credentials in any artifact; no public grants on anything written."""

from __future__ import annotations

import json
import re

from test_dag_e2e import BIDSDIR, BUCKET, run_dag

from conftest import ENDPOINT, FAKE_KEY_ID, FAKE_SECRET
from datasets import put_dataset
from images import Containers, m2g_image

CREDENTIAL = re.compile(
    "|".join([re.escape(FAKE_KEY_ID), re.escape(FAKE_SECRET), r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"aws_session_token"]),
    re.IGNORECASE,
)


def xcoms_of(run_id):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(run_id=run_id).all()
        return {f"{r.task_id}[{r.map_index}].{r.key}": json.dumps(XComModel.deserialize_value(r), default=str) for r in rows}


def artifacts_of(run, s3, batch_env, capfd) -> dict[str, str]:
    """Everything a run left that a person or another program could read: every object it
    wrote (with no grant but the owner's), the Batch jobs, XComs, job logs and task logs."""
    import boto3

    artifacts: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=BIDSDIR + "derivatives/"):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            artifacts["s3://" + obj["Key"]] = body.decode("utf-8", "replace")
            grants = s3.get_object_acl(Bucket=BUCKET, Key=obj["Key"])["Grants"]
            assert all(g["Grantee"].get("Type") == "CanonicalUser" for g in grants), obj["Key"]
    job_ids = [
        j["jobId"]
        for status in ("SUCCEEDED", "FAILED")
        for j in batch_env.list_jobs(jobQueue="ndmg-queue", jobStatus=status)["jobSummaryList"]
    ]
    for job in batch_env.describe_jobs(jobs=job_ids)["jobs"]:
        artifacts[f"batch job {job['jobName']}"] = json.dumps(job, default=str)
    artifacts.update(xcoms_of(run.run_id))
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=ENDPOINT)
    for stream in logs.describe_log_streams(logGroupName="/aws/batch/job")["logStreams"]:
        events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream["logStreamName"])["events"]
        artifacts[f"job log {stream['logStreamName']}"] = "\n".join(e["message"] for e in events)
    out, err = capfd.readouterr()
    artifacts["task logs (stdout)"] = out
    artifacts["task logs (stderr)"] = err
    assert "Batch job" in out + err  # the logs really are captured
    return artifacts


def leaks_in(artifacts: dict[str, str]) -> dict[str, list[str]]:
    return {name: CREDENTIAL.findall(text) for name, text in artifacts.items() if CREDENTIAL.search(text)}


def test_no_credentials_in_specs_jobs_xcoms_reports_or_logs(s3, batch_env, airflow_db, batch_behaviour, capfd, tmp_path):
    put_dataset(s3, BUCKET, BIDSDIR)

    # the canary's self-check runs for real, with the test's (fake) keys in its environment
    containers = Containers(s3, m2g_image(tmp_path / "image"), ENDPOINT)
    containers.broken.add("sub-05_ses-1")
    batch_behaviour.on_submit = containers
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert run.state == "failed"  # the failure paths are part of what is scanned

    artifacts = artifacts_of(run, s3, batch_env, capfd)
    assert any(k.endswith(".json") and "/jobs/" in k for k in artifacts)  # specs are in the scan
    assert any(k.endswith("report.html") for k in artifacts)
    assert any(k.endswith("canary.json") for k in artifacts)  # what the canary's container wrote
    assert len([k for k in artifacts if k.startswith("batch job")]) == 7  # six scans and the canary
    assert any(k.startswith("job log") and "self-check passed" in v for k, v in artifacts.items())
    assert leaks_in(artifacts) == {}


def test_no_credentials_where_a_failing_canary_writes(s3, batch_env, airflow_db, batch_behaviour, capfd, tmp_path):
    import pipeline_facts

    put_dataset(s3, BUCKET, BIDSDIR)
    image = m2g_image(tmp_path / "image")
    pipeline_facts.install_stand_in(pipeline_facts.M2G_TAG, image.bin_dir)  # it refuses our command
    batch_behaviour.on_submit = Containers(s3, image, ENDPOINT)
    run = run_dag(bucket=BUCKET, bidsdir=BIDSDIR, dataset="ds-test")
    assert run.state == "failed"

    artifacts = artifacts_of(run, s3, batch_env, capfd)
    assert any(k.startswith("job log") and "FAIL command" in v for k, v in artifacts.items())
    assert any(k.endswith("canary.json") and '"ok": false' in v for k, v in artifacts.items())
    assert leaks_in(artifacts) == {}


def test_the_scan_operator_renders_nothing_of_its_payload_even_with_conn_and_var_in_reach():
    """Values from data that look like templates stay text: rendering the operator with a
    context that holds connections and variables changes nothing of what it would submit."""
    import copy

    from ndmg_cloud.core.spec import SubmitJob
    from ndmg_cloud.orchestration.operators import ScanBatchOperator

    braces = "s3://bkt/{{ conn.aws_default.password }}/{{ var.value.token }}/"
    batch = {
        "jobName": "ds-{{ conn.aws_default.login }}-abcd1234",
        "jobQueue": "ndmg-queue",
        "jobDefinition": "ndmg",
        "containerOverrides": {
            "command": ["ndmg-scan", "--spec", braces + "sub-01.json"],
            "environment": [{"name": "NDMG_SPEC", "value": braces}],
        },
        "tags": {"ndmg:dataset": "{% raw %}x{% endraw %}"},
    }
    secrets = type("Secrets", (), {"__getattr__": lambda self, name: self, "__str__": lambda self: "SECRET"})()
    context = {"conn": secrets, "var": secrets, "ds": "2026-01-01"}
    op = ScanBatchOperator(task_id="run_scan", scan_task={"scan_id": "sub-01", "job_spec_uri": braces + "sub-01.json"})
    op.take_job("sub-01", braces + "sub-01.json", SubmitJob.from_payload(copy.deepcopy(batch)), 1800)
    op.render_template_fields(context)  # what Airflow does before execute (the canary's class inherits this)
    assert (op.container_overrides, op.job_name, op.tags) == (batch["containerOverrides"], batch["jobName"], batch["tags"])
    assert op.submission == SubmitJob.from_payload(batch)  # what SubmitJob is sent: the payload as given
    assert "SECRET" not in json.dumps(vars(op), default=str)
