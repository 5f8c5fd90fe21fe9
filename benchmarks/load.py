"""Load benchmark: a run of more than 1,024 scans (Airflow's default max_map_length) on the
embedded stack, every Batch job finishing at once, every scan accounted for in the report.

Prints wall time, seconds per scan, peak memory, and the Batch and S3 API calls per scan.
Run: .venv/bin/python benchmarks/load.py [--scans 1100]   (or `make bench`)
Only 127.0.0.1 is used; credentials are fake.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from ndmg_cloud.demo import stack as demo
from ndmg_cloud.orchestration.dagtest import run_dag

BUCKET = "ndmg-load"
PREFIX = "bench/ds/"
SERVICE = re.compile(r"Credential=[^/]+/\d+/[^/]+/([a-z0-9-]+)/aws4_request")


def count_requests() -> Counter:
    """Count every request the moto server answers, by AWS service (from the signature)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    calls: Counter = Counter()
    lock = threading.Lock()
    real = DomainDispatcherApplication.__call__

    def counting(self, environ, start_response):
        match = SERVICE.search(environ.get("HTTP_AUTHORIZATION", ""))
        with lock:
            calls[match.group(1) if match else "other"] += 1
        return real(self, environ, start_response)

    DomainDispatcherApplication.__call__ = counting
    return calls


def jobs_write_their_outputs() -> None:
    """Each Batch job 'runs' at once and leaves what a container of the m2g image would: the
    canary its findings, a scan its graphs and then its manifest."""
    from moto.batch_simple import models
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from ndmg_cloud.scan.contract import ImageContract
    from ndmg_cloud.scan.selfcheck import Check, SelfCheck

    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    real = models.BatchSimpleBackend._mark_job_as_finished
    image = ImageContract(
        pipeline="m2g",
        code={"name": "m2g", "version": "0.3.0", "revision": "95d271f748e7d35b8d7feaa1b0112f471be8e514", "source": ""},
        program="m2g",
        flags={},
        atlases={"2mm": ["AAL", "Desikan"]},
    )

    def key(uri: str) -> str:
        return uri.split("/", 3)[3]

    def finish(self, include_start_attempt, job):
        command = job.container_overrides["command"]
        spec = json.loads(s3.get_object(BUCKET, key(command[command.index("--spec") + 1])).value)
        if "--self-check" in command:
            passed = [Check(name, True, "stand-in") for name in ("contract", "command", "atlases", "disk", "s3 read", "s3 write")]
            found = SelfCheck(spec["scan"]["scan_id"], "m2g", passed, image, job_id=job.job_id).to_dict()  # as ndmg-scan writes it
            s3.put_object(BUCKET, key(command[command.index("--result") + 1]), json.dumps(found).encode())
            return real(self, include_start_attempt, job)
        prefix = key(spec["output_prefix"])
        body, outputs = b"0 1 3\n1 2 5\n", []
        for rel in spec["expected_outputs"]:
            s3.put_object(BUCKET, prefix + rel, body)
            outputs.append({"path": rel, "size": len(body)})
        manifest = {
            "status": "success",
            "run_id": spec["run_id"],
            "outputs": outputs,
            "pipeline": {**spec["pipeline"], "contract": image.summary().to_dict()},
        }
        s3.put_object(BUCKET, key(spec["manifest"]), json.dumps(manifest).encode())
        return real(self, include_start_attempt, job)

    models.BatchSimpleBackend._mark_job_as_finished = finish


def make_batch_setup(endpoint: str) -> None:
    import urllib.request

    import boto3

    config = json.dumps({"batch": {"use_docker": False}}).encode()  # jobs end at once, no Docker
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/config", data=config, method="POST")).read()

    batch = boto3.client("batch")
    role = boto3.client("iam").create_role(RoleName="svc", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    ce = batch.create_compute_environment(computeEnvironmentName="ndmg-ce", type="UNMANAGED", state="ENABLED", serviceRole=role)
    batch.create_job_queue(
        jobQueueName="ndmg-queue",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce["computeEnvironmentArn"]}],
    )
    batch.register_job_definition(
        jobDefinitionName="ndmg",
        type="container",
        containerProperties={
            "image": "ndmg-cloud-m2g",
            "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "15200"}],
        },
    )


def make_dataset(scans: int) -> int:
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    keys = ["dataset_description.json"]
    for i in range(scans):
        sub = f"sub-{i:05d}"
        keys += [f"{sub}/dwi/{sub}_dwi.nii.gz", f"{sub}/dwi/{sub}_dwi.bval", f"{sub}/dwi/{sub}_dwi.bvec", f"{sub}/anat/{sub}_T1w.nii.gz"]
    for key in keys:
        s3.put_object(BUCKET, PREFIX + key, b"{}" if key.endswith(".json") else b"x")
    return len(keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=1100)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ndmg-load-"))
    port = demo.free_port()
    demo.configure_environment(home / "airflow", f"http://127.0.0.1:{port}")
    import os

    os.environ["AIRFLOW__CORE__MAX_MAP_LENGTH"] = str(max(100_000, args.scans))
    os.environ["NDMG_BATCH_POLL_SECONDS"] = "1"
    calls = count_requests()
    server = demo.start_endpoint(port)
    try:
        demo.airflow("db", "migrate")
        make_batch_setup(f"http://127.0.0.1:{port}")
        keys = make_dataset(args.scans)
        jobs_write_their_outputs()
        calls.clear()
        print(f"{args.scans} scans ({keys} keys) on s3://{BUCKET}/{PREFIX}; max_map_length {os.environ['AIRFLOW__CORE__MAX_MAP_LENGTH']}")
        started = time.monotonic()
        conf = {"bucket": BUCKET, "bidsdir": PREFIX, "dataset": "load"}
        run_id = run_dag(conf)
        wall = time.monotonic() - started
        import boto3

        from ndmg_cloud.core.s3 import read_json_at
        from ndmg_cloud.participant.params import resolve

        report_uri = resolve(conf, run_id).outputs.report_uri(run_id)  # where the run wrote it
        report = read_json_at(boto3.client("s3"), report_uri)
    finally:
        server.stop()
    summary = report["summary"]
    rows = len(report["scans"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"report rows: {rows} (discovered {summary['discovered']}, succeeded {summary['succeeded']}, failed {summary['failed']}, missing {summary['missing_outputs']})"
    )
    print(f"wall time: {wall:.1f} s  ({wall / args.scans:.3f} s per scan; dag.test() runs mapped tasks one after another)")
    print(f"peak memory (this process, moto included): {peak_mb:.0f} MB")
    batch_calls, s3_calls = calls["batch"], calls["s3"]
    print(f"Batch API calls: {batch_calls} ({batch_calls / args.scans:.2f} per scan)")
    print(f"S3 API calls (orchestrator): {s3_calls} ({s3_calls / args.scans:.2f} per scan)")
    ok = rows == args.scans and summary["succeeded"] == args.scans
    print(f"  -> bar {'met' if ok else 'NOT met'}: every one of {args.scans} scans accounted for and succeeded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
