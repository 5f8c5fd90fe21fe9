"""The embedded stack that ``make demo``, ``make airflow``, the tests and the benchmarks stand
on: a local AWS endpoint (moto server on a free loopback port), Airflow on SQLite in a home
of its own with every AWS client pointed at that endpoint, and the synthetic dataset."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from ndmg_cloud.participant.seal import SEAL_KEY_ENV

REPO = Path(__file__).resolve().parents[3]  # the checkout (plugins/ndmg_cloud/demo/stack.py)
BUCKET = "ndmg-demo"
BIDSDIR = "synthetic"
REGION = "us-east-1"
EMBEDDED_EXPORTS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
RUN_CONF = {"bucket": BUCKET, "bidsdir": BIDSDIR, "backend": "local", "pipeline": "lite"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def configure_environment(home: Path, endpoint: str) -> None:
    """Airflow on SQLite in ``home`` and every AWS client pointed at the local endpoint."""
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__MAX_MAP_LENGTH": "100000",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("NDMG_DEMO_LOG_LEVEL", "WARNING"),
            # Fake credentials that only the local endpoint accepts.
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "extra": {"endpoint_url": endpoint, "region_name": REGION}}),
            "NDMG_BATCH_POLL_SECONDS": "2",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    # the run's seals (participant/seal.py): a fresh secret per embedded stack, never a default
    os.environ.setdefault(SEAL_KEY_ENV, secrets.token_hex(32))


def start_standalone(**popen: Any) -> subprocess.Popen[bytes]:
    """``airflow standalone`` in its own process group (so it can be stopped whole)."""
    return subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"], start_new_session=True, **popen)


def stop_process_group(process: subprocess.Popen[Any], grace: float = 30) -> None:
    """SIGTERM the process and its children, SIGKILL them after ``grace`` seconds."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def start_endpoint(port: int) -> Any:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def airflow(*args: str, quiet: bool = True) -> None:
    binary = str(Path(sys.executable).parent / "airflow")
    out = subprocess.DEVNULL if quiet else None
    subprocess.run([binary, *args], check=True, stdout=out, stderr=out)


def upload_dataset(workdir: Path) -> list[str]:
    import boto3

    from ndmg_cloud.demo.synthetic import make_dataset

    dataset = workdir / "dataset"
    scans = make_dataset(dataset, subjects=5, sessions=2, sessionless=1)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(dataset.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{BIDSDIR}/{path.relative_to(dataset).as_posix()}")
    return scans


NEW_SCANS_QUEUE = "ndmg-demo-new-scans"


def watch_dataset() -> str:
    """An SQS queue that S3 notifies of every object created under the demo dataset (as the
    README's "New scans processed when they land" sets it up on AWS); its URL, for
    ``schedule add --when 'new scans'``."""
    import boto3

    from ndmg_cloud.infra import notifications

    sqs = boto3.client("sqs")
    url = str(sqs.create_queue(QueueName=NEW_SCANS_QUEUE)["QueueUrl"])
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    notifications.watch(boto3.client("s3"), BUCKET, f"{BIDSDIR}/", arn, BUCKET)  # as setup --watch-new-scans does: Id ndmg-demo-new-scans
    return url


def upload_new_subject(workdir: Path, pause_seconds: float = 1.0) -> list[str]:
    """The next subject of the demo dataset (sub-NN, one session), uploaded object by object
    as an upload would arrive; the keys it put."""
    import time

    import boto3

    from ndmg_cloud.demo.synthetic import make_dataset

    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{BIDSDIR}/sub-", Delimiter="/").get("CommonPrefixes", [])
    taken = {p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in listed}
    number = next(n for n in range(1, 100) if f"sub-{n:02d}" not in taken)
    make_dataset(workdir, subjects=number, sessions=1, sessionless=0)
    keys = []
    for path in sorted((workdir / f"sub-{number:02d}").rglob("*")):
        if path.is_file():
            key = f"{BIDSDIR}/{path.relative_to(workdir).as_posix()}"
            s3.upload_file(str(path), BUCKET, key)
            keys.append(key)
            time.sleep(pause_seconds)
    return keys
