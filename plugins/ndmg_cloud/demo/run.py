"""The embedded default: the whole DAG with no AWS account and no Docker.

``ndmg-demo`` (``make demo``): start a local AWS endpoint (moto server on a free loopback
port), generate a synthetic BIDS dataset of DWI phantoms (5 subjects x 2 sessions + 1
session-less subject, each subject its own fibre bundles), upload it, run
``ndmg_participant`` with ``backend=local`` and ``pipeline=lite``, print a per-scan table,
then run ``ndmg_group`` on the run's report and print discriminability and its p-value;
copy report.html/json and group.html/json to ``demo-output/`` and stop the endpoint.

``ndmg-demo --standalone`` (``make airflow``): the same endpoint and dataset, then
``airflow standalone`` so the DAG can be triggered from the UI form; Ctrl-C stops both.
S3 there notifies an SQS queue of the dataset's uploads, for a "new scans" schedule;
``ndmg-demo --new-subject`` (in another shell, with the exports it prints) uploads the
dataset's next subject, as a lab's upload would arrive, for that schedule to pick up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ndmg_cloud.core.layout import GROUP, GROUP_HTML, GROUP_JSON, REPORT_HTML, REPORT_JSON, OutputLayout, split_uri
from ndmg_cloud.core.s3 import list_objects, read_json_at
from ndmg_cloud.demo.stack import (
    BIDSDIR,
    BUCKET,
    EMBEDDED_EXPORTS,
    RUN_CONF,
    airflow,
    configure_environment,
    free_port,
    start_endpoint,
    start_standalone,
    stop_process_group,
    upload_dataset,
    upload_new_subject,
    watch_dataset,
)
from ndmg_cloud.orchestration.dagtest import run_dag
from ndmg_cloud.orchestration.taskids import GROUP_DAG_ID
from ndmg_cloud.participant.params import resolve
from ndmg_cloud.report.runreport import RunReport


def print_group(s3: Any, layout: OutputLayout, report_uri: str, out_dir: Path, airflow_log: Path) -> bool:
    """Run ndmg_group on the run's report; print discriminability; copy group.html/json."""
    from ndmg_cloud.group.result import GroupSummary

    print(f"\nrunning ndmg_group on {report_uri} ...", flush=True)
    with output_to(airflow_log):
        run_dag({"report": report_uri}, GROUP_DAG_ID)
    listed = list_objects(s3, layout.root.bucket, layout.root.key(f"{GROUP}/"))
    documents = sorted(f"s3://{layout.root.bucket}/{o.key}" for o in listed if o.key.endswith(f"/{GROUP_JSON}"))
    if not documents:
        print(f"ndmg-demo: ndmg_group wrote no {GROUP_JSON}; see {airflow_log}", file=sys.stderr)
        return False
    groups = [GroupSummary.from_document(read_json_at(s3, uri), uri) for uri in documents]
    for g in groups:
        print(f"group level of {g.parcellation}: {g.scans} scans of {g.subjects} subjects used, {len(g.left_out)} left out")
        if g.discriminability is None:
            print(f"discriminability not computed: {g.why_not}")
        else:
            print(
                f"discriminability {g.discriminability:.3f}, p-value {g.p_value:.3g} ({g.permutations} label shuffles; "
                f"{g.repeated_subjects} subjects with 2 sessions; chance is 0.5)"
            )
    for name in (GROUP_HTML, GROUP_JSON):  # of the first parcellation (the demo has one)
        download(s3, groups[0].files[name], out_dir / name)
    print(f"group:  {(out_dir / GROUP_HTML).resolve().as_uri()}")
    print(f"        {(out_dir / GROUP_JSON).resolve().as_uri()}")
    return True


def download(s3: Any, uri: str, path: Path) -> None:
    bucket, key = split_uri(uri)
    s3.download_file(bucket, key, str(path))


def print_table(report: RunReport, s3: Any) -> None:
    print(f"\n{'scan':<16} {'status':<16} {'duration':>9} {'edges':>6}  reason")
    output = report.output.removeprefix(f"s3://{BUCKET}/")
    for row in report.scans:
        edges = ""
        folder = f"sub-{row.subject}/" + (f"ses-{row.session}/" if row.session else "")
        for path in row.outputs:
            if path.endswith("_connectome.csv"):
                body = s3.get_object(Bucket=BUCKET, Key=f"{output}{folder}{path}")["Body"].read()
                edges = str(len(body.splitlines()))
        duration = f"{row.duration_s:.1f} s" if row.duration_s is not None else ""
        print(f"{row.scan_id:<16} {row.status:<16} {duration:>9} {edges:>6}  {row.reason or ''}")
    s = report.summary
    print(f"\n{s.discovered} scans: {s.succeeded} succeeded, {s.failed} failed, {s.missing_outputs} missing outputs, {s.invalid} invalid")
    if report.contract:
        print(f"made with {report.contract.label} (image contract {report.contract.fingerprint})")


@contextlib.contextmanager
def output_to(log_path: Path) -> Iterator[None]:
    """Everything written to this process's stdout/stderr, and by its subprocesses, goes to
    ``log_path`` (Airflow's and the libraries' chatter), so the demo prints only its lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def serve_report(run_id: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """The api-server of the demo's Airflow, with a one-time password, for the report URL."""
    from ndmg_cloud.orchestration.links import airflow_report_url

    home = Path(os.environ["AIRFLOW_HOME"])
    password = secrets.token_urlsafe(9)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
    }
    log = open(home / "api-server.log", "ab")
    binary = str(Path(sys.executable).parent / "airflow")
    process = subprocess.Popen([binary, "api-server"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    return process, airflow_report_url(url, run_id), password


def demo(out_dir: Path, serve: bool) -> int:
    import boto3

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    airflow_log = (out_dir / "airflow.log").resolve()
    airflow_log.unlink(missing_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ndmg-demo-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    configure_environment(workdir / "airflow", endpoint)
    server = start_endpoint(port)
    api_server = None
    try:
        print(f"local AWS endpoint (moto) on {endpoint}")
        with output_to(airflow_log):
            airflow("db", "migrate")
            scans = upload_dataset(workdir)
        print(f"uploaded a synthetic BIDS dataset of {len(scans)} scans to s3://{BUCKET}/{BIDSDIR}/")
        print(f"running ndmg_participant with {json.dumps(RUN_CONF)} (Airflow's log: {airflow_log}) ...", flush=True)
        with output_to(airflow_log):
            run_id = run_dag(RUN_CONF)
        s3 = boto3.client("s3")
        layout = resolve(RUN_CONF, run_id).outputs  # where the run wrote, as it worked it out
        report_uri = layout.report_uri(run_id)
        try:
            report = RunReport.from_dict(read_json_at(s3, report_uri))
        except s3.exceptions.NoSuchKey:
            print(f"ndmg-demo: the run {run_id} wrote no report; see {airflow_log}", file=sys.stderr)
            return 1
        print_table(report, s3)
        for name in (REPORT_HTML, REPORT_JSON):
            download(s3, layout.report_uri(run_id, name), out_dir / name)
        print(f"\nreport: {(out_dir / REPORT_HTML).resolve().as_uri()}")
        print(f"        {(out_dir / REPORT_JSON).resolve().as_uri()}")
        grouped = print_group(s3, layout, report_uri, out_dir, airflow_log)
        print(f"demo wall time: {time.monotonic() - started:.0f} s", flush=True)
        failing = len(report.failing) or not grouped
        if serve:
            api_server, url, password = serve_report(run_id)
            print(f"\nthe same report served by Airflow: {url}")
            print(f"(sign in as admin, password {password}); press Enter to stop", flush=True)
            sys.stdin.readline()
        return 1 if failing else 0
    finally:
        if api_server is not None:
            stop_process_group(api_server)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def standalone(home: Path) -> int:
    from ndmg_cloud.participant.local import LOCAL_POOL, local_pool_slots

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    configure_environment(home, endpoint)
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
    os.environ["NDMG_DEFAULT_BACKEND"] = "local"
    os.environ["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "False"
    os.environ.setdefault("AIRFLOW__API__HOST", "127.0.0.1")  # this machine only, unless you say otherwise
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    server = start_endpoint(port)
    try:
        airflow("db", "migrate")
        airflow("pools", "set", LOCAL_POOL, str(local_pool_slots()), "ndmg-cloud local backend: one scan per core")
        scans = upload_dataset(Path(tempfile.mkdtemp(prefix="ndmg-demo-")))
        queue = watch_dataset()
        print(f"local AWS endpoint (moto) on {endpoint}; {len(scans)} synthetic scans in s3://{BUCKET}/{BIDSDIR}/")
        print("Starting airflow standalone: open http://localhost:8080 (the admin password is printed below),")
        print("trigger ndmg_participant and fill the form with:")
        print(f"  {json.dumps(RUN_CONF)}")
        print("For ndmg_cloud and aws in another shell:")
        print(f"  export {' '.join(f'{name}={os.environ[name]}' for name in EMBEDDED_EXPORTS)}")
        print(f"  export AIRFLOW_HOME={home}")
        print("To see new scans processed when they land: process the dataset once (the form, or")
        print("ndmg_cloud participant with the conf above), then keep it processed and upload a subject:")
        print(f"  ndmg_cloud schedule add demo --bucket {BUCKET} --bidsdir {BIDSDIR} --pipeline lite --backend local \\")
        print(f"      --when 'new scans' --queue {queue} --quiet-minutes 0.5")
        print("  ndmg-demo --new-subject      # then: ndmg_cloud schedule list")
        print("Ctrl-C stops Airflow and the endpoint.\n", flush=True)
        process = start_standalone()
        try:
            return process.wait()
        except KeyboardInterrupt:
            stop_process_group(process, 60)
            return process.returncode or 0
    finally:
        server.stop()


def new_subject(pause_seconds: float = 1.0) -> int:
    if not os.environ.get("AWS_ENDPOINT_URL"):
        print(
            "ndmg-demo: --new-subject uploads to the embedded stack of `make airflow`: export what it printed "
            "(AWS_ENDPOINT_URL=http://127.0.0.1:PORT ...) first",
            file=sys.stderr,
        )
        return 2
    keys = upload_new_subject(Path(tempfile.mkdtemp(prefix="ndmg-demo-")), pause_seconds)
    subject = keys[0].split("/")[1]
    print(f"uploaded {subject} to s3://{BUCKET}/{BIDSDIR}/ as {len(keys)} objects, {pause_seconds:g} s apart:")
    for key in keys:
        print(f"  {key}")
    print("a 'new scans' schedule of the dataset starts one run once the uploads have been quiet: ndmg_cloud schedule list")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ndmg-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where report.html/json and group.html/json go")
    parser.add_argument("--standalone", action="store_true", help="start airflow standalone on the embedded stack")
    parser.add_argument("--home", type=Path, default=Path(".airflow-demo"), help="AIRFLOW_HOME for --standalone")
    parser.add_argument(
        "--new-subject",
        action="store_true",
        help="upload the next subject to the dataset of a running --standalone (its exports set), object by object",
    )
    parser.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=sys.stdin.isatty(),
        help="after the run, serve the report from Airflow's api-server until Enter (default: in a terminal)",
    )
    args = parser.parse_args(argv)
    if args.new_subject:
        return new_subject()
    if args.standalone:
        return standalone(args.home.resolve())
    return demo(args.out, args.serve)


if __name__ == "__main__":
    raise SystemExit(main())
