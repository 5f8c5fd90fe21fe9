"""``ndmg_cloud``: the seed's command, over the ndmg_participant DAG.

    ndmg_cloud participant --bucket B --bidsdir P [--jobdir J] [--modif M] [--sp native]
                           [--dataset D] [--participant_label L ...] [--pipeline m2g] ...
                           [--follow] [--local]
    ndmg_cloud status [RUN]      per-scan table of a run (the latest by default)
    ndmg_cloud kill RUN          fail the run and terminate every Batch job of it
    ndmg_cloud report RUN        download report.html and print its path
    ndmg_cloud estimate --bucket B --bidsdir P ...   scans, vCPU-hours, dollars
    ndmg_cloud setup ... / teardown                  the Batch infrastructure

Airflow is reached through its REST API v2 with token auth: --airflow-url, --username and
--password, or NDMG_AIRFLOW_URL, NDMG_AIRFLOW_USER and NDMG_AIRFLOW_PASSWORD.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ndmg_cloud.params import PARAM_SCHEMAS
from ndmg_cloud.pipelines import get_pipeline
from ndmg_cloud.taskids import JOB_TASKS, JOB_XCOM_KEY, SCAN_TASKS, VERIFY_AND_REPORT

DAG_ID = "ndmg_participant"
FINISHED = ("success", "failed")


class CliError(RuntimeError):
    """What went wrong, for the user, in one line."""


class Airflow:
    """The few Airflow REST API v2 calls the CLI makes."""

    # A busy metadata DB (SQLite under `airflow standalone`: "database is locked") answers
    # 500 "Database error"; calls that are safe to repeat (all but a trigger) are asked again.
    BUSY_RETRIES, BUSY_WAIT_SECONDS = 3, 2.0

    def __init__(self, url: str, username: str | None, password: str | None):
        self.url = url.rstrip("/")
        self.username, self.password = username, password
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        import requests

        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        for attempt in range(self.BUSY_RETRIES + 1):
            try:
                response = requests.request(method, self.url + path, json=body, headers=headers, timeout=30)
            except requests.ConnectionError:
                raise CliError(
                    f"cannot reach Airflow at {self.url}: is it running? (make airflow starts one; "
                    "set --airflow-url or NDMG_AIRFLOW_URL)"
                ) from None
            repeatable = not (method == "POST" and path.endswith("/dagRuns"))
            if not repeatable or response.status_code != 500 or "Database error" not in response.text:
                break
            if attempt == self.BUSY_RETRIES:
                break
            time.sleep(self.BUSY_WAIT_SECONDS * (attempt + 1))
        if response.status_code in (401, 403):
            raise CliError(
                f"Airflow at {self.url} refused the credentials of user {self.username!r}: "
                "check --username/--password (NDMG_AIRFLOW_USER/NDMG_AIRFLOW_PASSWORD)"
            )
        if response.status_code in (400, 422):
            raise CliError(f"Airflow refused the request: {_detail(response)}")
        if response.status_code == 404:
            raise CliError(f"not found on Airflow: {path} ({_detail(response)})")
        if response.status_code >= 300:
            raise CliError(f"Airflow answered {response.status_code} to {method} {path}: {_detail(response)}")
        return response.json() if response.content else None

    def token(self) -> str:
        if self._token is None:
            if not self.username or not self.password:
                raise CliError("no Airflow credentials: pass --username and --password (or NDMG_AIRFLOW_USER/NDMG_AIRFLOW_PASSWORD)")
            answer = self._request("POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False)
            self._token = answer["access_token"]
        return self._token

    def trigger(self, conf: dict[str, Any]) -> str:
        run = self._request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def run(self, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")

    def latest_run(self) -> str:
        runs = self._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=1")["dag_runs"]
        if not runs:
            raise CliError(f"{DAG_ID} has no runs yet")
        return runs[0]["dag_run_id"]

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        out, offset = [], 0
        while True:
            page = self._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100&offset={offset}")
            out += page["task_instances"]
            offset += 100
            if offset >= page["total_entries"]:
                return out

    def xcom(self, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self._request(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}?map_index={map_index}"
        )
        return entry["value"]

    def fail_run(self, run_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", {"state": "failed"})


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return detail if isinstance(detail, str) else json.dumps(detail)


def airflow_from(args: argparse.Namespace) -> Airflow:
    return Airflow(args.airflow_url, args.username, args.password)


# ---------------------------------------------------------------------------- participant
SEED_FLAGS = ("bucket", "bidsdir", "jobdir", "modif", "dataset")
OPTION_FLAGS = ("voxelsize", "mod", "track_type", "diffusion_model", "skull", "atlas")


def conf_from(args: argparse.Namespace) -> dict[str, Any]:
    """Trigger conf from the flags: only what was given; the DAG's params fill the rest."""
    conf: dict[str, Any] = {k: getattr(args, k) for k in SEED_FLAGS if getattr(args, k) is not None}
    if args.sp:
        conf["space"] = args.sp  # the seed's --sp is m2g's --space
    for key in OPTION_FLAGS + ("pipeline", "job_queue", "job_definition", "backend", "seeds", "max_cost_usd", "pilot_scans"):
        if getattr(args, key, None) is not None:
            conf[key] = getattr(args, key)
    for key in ("participant_label", "session_label", "parcellation"):
        if getattr(args, key):
            conf[key] = getattr(args, key)
    for key in ("force", "dry_run"):
        if getattr(args, key):
            conf[key] = True
    if getattr(args, "no_canary", False):
        conf["canary"] = False
    return conf


def progress(airflow: Airflow, run_id: str) -> tuple[int, int, int, str]:
    """(scans done, failed, total, run state) from the mapped tasks of a run."""
    state = airflow.run(run_id)["state"]
    scans = [ti for ti in airflow.task_instances(run_id) if ti["task_id"] in SCAN_TASKS and ti["map_index"] >= 0]
    done = sum(ti["state"] == "success" for ti in scans)
    failed = sum(ti["state"] in ("failed", "upstream_failed") for ti in scans)
    return done, failed, len(scans), state


def follow(airflow: Airflow, run_id: str, every: float, out: Any = None) -> str:
    out = out or sys.stdout
    width = 30
    while True:
        done, failed, total, state = progress(airflow, run_id)
        filled = int(width * (done + failed) / total) if total else 0
        out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done, {failed} failed  ({state})   ")
        out.flush()
        if state in FINISHED:
            out.write("\n")
            return state
        time.sleep(every)


def report_of(airflow: Airflow, run_id: str) -> tuple[str, dict[str, Any]]:
    import boto3

    from ndmg_cloud.layout import split_uri

    uri = airflow.xcom(run_id, VERIFY_AND_REPORT)
    bucket, key = split_uri(uri)
    report = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    return uri, report


def print_summary(uri: str, report: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    s = report["summary"]
    canary = report.get("canary") or {}
    if canary.get("status") == "failed":
        out.write(f"the canary failed, so no scan was submitted: {canary.get('reason')}\n")
        if canary.get("log_url"):
            out.write(f"canary log: {canary['log_url']}\n")
    elif canary.get("status") == "passed":
        out.write(f"canary passed: {canary.get('reason')}\n")
    out.write(
        f"{s['discovered']} scans: {s['succeeded']} succeeded, {s['failed']} failed, "
        f"{s['missing_outputs']} missing outputs, {s['invalid']} invalid, {s['skipped_done']} already done; "
        f"cost ${s['cost_usd']:.2f}\nreport: {uri}\n"
    )


def cmd_participant(args: argparse.Namespace) -> int:
    conf = conf_from(args)
    if args.local:
        run_id = trigger_locally(conf)
        print(f"triggered {DAG_ID} run {run_id} on the local Airflow")
        return 0
    airflow = airflow_from(args)
    run_id = airflow.trigger(conf)
    print(f"triggered {DAG_ID} run {run_id}")
    if not args.follow:
        print(f"follow it with: ndmg_cloud status {run_id}")
        return 0
    state = follow(airflow, run_id, args.poll_seconds)
    uri, report = report_of(airflow, run_id)
    print_summary(uri, report)
    return 0 if state == "success" else 1


def trigger_locally(conf: dict[str, Any]) -> str:
    import subprocess

    binary = os.path.join(os.path.dirname(sys.executable), "airflow")
    done = subprocess.run(
        [binary, "dags", "trigger", DAG_ID, "--conf", json.dumps(conf), "--output", "json"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise CliError(f"the local Airflow refused the trigger: {(done.stderr.strip() or done.stdout.strip() or str(done.returncode)).splitlines()[-1]}")
    for line in reversed(done.stdout.splitlines()):  # log lines come first; the JSON is last
        if line.startswith("[{"):
            return json.loads(line)[0]["dag_run_id"]
    raise CliError(f"the local Airflow did not say which run it created: {done.stdout[-300:]}")


# --------------------------------------------------------------------- status/kill/report
def cmd_status(args: argparse.Namespace) -> int:
    airflow = airflow_from(args)
    run_id = args.run or airflow.latest_run()
    state = airflow.run(run_id)["state"]
    print(f"run {run_id}: {state}")
    if state in FINISHED:
        try:
            uri, report = report_of(airflow, run_id)
        except CliError:
            report = None
        if report:
            print(f"{'scan':<28} {'status':<16} {'duration':>9}  reason")
            for row in report["scans"]:
                duration = f"{row['duration_s']:.0f} s" if row["duration_s"] is not None else ""
                print(f"{row['scan_id']:<28} {row['status']:<16} {duration:>9}  {row['reason'] or ''}")
            print_summary(uri, report)
            return 0
    print(f"{'scan':<28} {'task state':<16}")
    for ti in airflow.task_instances(run_id):
        if ti["task_id"] in SCAN_TASKS and ti["map_index"] >= 0:
            print(f"{ti.get('rendered_map_index') or ti['map_index']!s:<28} {ti['state'] or 'queued':<16}")
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    airflow = airflow_from(args)
    job_ids = []
    for ti in airflow.task_instances(args.run):
        if ti["task_id"] in JOB_TASKS:
            try:
                job_ids.append(airflow.xcom(args.run, ti["task_id"], JOB_XCOM_KEY, ti["map_index"])["job_id"])
            except CliError:
                pass  # not submitted yet: failing the run stops it before it is
    airflow.fail_run(args.run)
    if job_ids:
        import boto3

        from ndmg_cloud.jobs import CANCEL_REASON

        batch = boto3.client("batch")
        for job_id in job_ids:
            batch.terminate_job(jobId=job_id, reason=f"{CANCEL_REASON} (ndmg_cloud kill)")
    print(f"run {args.run} marked failed; {len(job_ids)} Batch jobs terminated")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import boto3

    from ndmg_cloud.layout import split_uri

    airflow = airflow_from(args)
    uri, report = report_of(airflow, args.run)
    bucket, key = split_uri(uri.replace("report.json", "report.html"))
    target = os.path.abspath(args.out or f"report-{args.run.replace(':', '-').replace('+', '-')}.html")
    boto3.client("s3").download_file(bucket, key, target)
    print_summary(uri, report)
    print(f"report.html: {target}")
    if args.open:
        import webbrowser

        webbrowser.open(f"file://{target}")
    return 0


# ------------------------------------------------------------------------------- estimate
def cmd_estimate(args: argparse.Namespace) -> int:
    import boto3

    from ndmg_cloud.cost import estimate
    from ndmg_cloud.discover import discover
    from ndmg_cloud.params import resolve
    from ndmg_cloud.verify import completed_scans

    conf = conf_from(args)
    config = resolve(conf, "estimate")
    s3 = boto3.client("s3")
    found = discover(config, s3)
    done, _ = ({}, {}) if config.force else completed_scans(config, found.valid, s3)
    todo = len(found.valid) - len(done)
    guess = estimate(todo, config.pipeline, args.hours_per_scan)
    print(
        f"{len(found.scans)} scans found: {len(found.valid)} valid, {len(found.invalid)} invalid, "
        f"{len(done)} already done, {todo} to run"
    )
    print(
        f"{guess['instance_hours']} instance-hours ({guess['vcpu_hours']} vCPU-hours) of r5.large: "
        f"about ${guess['on_demand_usd']:.2f} on-demand, ${guess['spot_usd']:.2f} on Spot"
    )
    return 0


# -------------------------------------------------------------------------- setup/teardown
def cmd_setup(args: argparse.Namespace) -> int:
    import boto3

    from ndmg_cloud.infra import deploy

    deployment = deploy(
        boto3.client("cloudformation"),
        {
            "ImageUri": args.image,
            "Subnets": args.subnets,
            "SecurityGroups": args.security_groups,
            "InputBucket": args.input_bucket,
            "InputPrefix": args.input_prefix,
            "OutputBucket": args.output_bucket,
            "OutputPrefix": args.output_prefix,
            "MaxvCpus": args.max_vcpus,
            "RootVolumeGiB": args.root_volume_gb,
            "UseSpot": not args.on_demand,
            "QueueName": args.job_queue,
            "JobDefinitionName": args.job_definition,
        },
        stack=args.stack,
    )
    print(f"stack {deployment.stack}: {deployment.action}")
    print(f"job_queue:      {deployment.outputs.get('JobQueue')}")
    print(f"job_definition: {deployment.outputs.get('JobDefinition')}")
    return 0


def cmd_teardown(args: argparse.Namespace) -> int:
    import boto3

    from ndmg_cloud.infra import teardown

    removed = teardown(boto3.client("cloudformation"), args.stack)
    print(f"stack {args.stack}: {'deleted' if removed else 'there was none'}")
    return 0


# ---------------------------------------------------------------------------------- atlases
def cmd_atlases(args: argparse.Namespace) -> int:
    from ndmg_cloud.atlases import catalogue

    names = catalogue(args.pipeline)
    sizes = [args.voxelsize] if args.voxelsize else names.voxelsizes()
    print(f"{args.pipeline}: atlases of neuroparc {names.commit[:8]} (the image's /{args.pipeline}_atlases)")
    for name in names.names(args.voxelsize):
        have = [size for size in sizes if (name, size) in names.atlases]
        print(f"  {name:<44} {' '.join(have)}")
    default = get_pipeline(args.pipeline).options["parcellation"].default
    print(f"default: {' '.join(default)}; pass names with --parcellation (param parcellation)")
    return 0


# ----------------------------------------------------------------------------------- parser
def _airflow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--airflow-url", default=os.environ.get("NDMG_AIRFLOW_URL", "http://localhost:8080"))
    p.add_argument("--username", default=os.environ.get("NDMG_AIRFLOW_USER", "admin"))
    p.add_argument("--password", default=os.environ.get("NDMG_AIRFLOW_PASSWORD"))


def _dataset_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", required=True, help="S3 bucket of the BIDS dataset")
    p.add_argument("--bidsdir", help="dataset path inside the bucket")
    p.add_argument("--jobdir", help="where the job JSONs go (s3://)")
    p.add_argument("--modif", help="output folder under the dataset (default derivatives/ndmg)")
    p.add_argument("--sp", choices=("native", "native_dsn"), help="registration space (m2g --space)")
    p.add_argument("--dataset", help="dataset name for job names and tags")
    p.add_argument("--participant_label", nargs="+", default=[])
    p.add_argument("--session_label", nargs="+", default=[])
    p.add_argument("--pipeline", choices=("m2g", "ndmg", "lite"))
    p.add_argument("--parcellation", nargs="+", default=[], help="atlas names (see: ndmg_cloud atlases) or gridN for lite")
    for flag in OPTION_FLAGS:
        p.add_argument(f"--{flag}", help=PARAM_SCHEMAS[flag]["description"])
    p.add_argument("--seeds", type=int)
    p.add_argument("--job_queue")
    p.add_argument("--job_definition")
    p.add_argument("--backend", choices=("aws_batch", "local"))
    p.add_argument("--max_cost_usd", type=float)
    p.add_argument("--pilot_scans", type=int, help=PARAM_SCHEMAS["pilot_scans"]["description"])
    p.add_argument("--no-canary", action="store_true", help="submit without the canary job (it checks the image first)")
    p.add_argument("--force", action="store_true", help="rerun scans that are already done")
    p.add_argument("--dry_run", action="store_true", help="discover and write job specs only")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ndmg_cloud", description="run ndmg/m2g over a BIDS dataset on AWS Batch")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("participant", help="run the pipeline on every scan of a dataset")
    _dataset_flags(p)
    _airflow_flags(p)
    p.add_argument("--follow", action="store_true", help="show progress until the run ends, then the report")
    p.add_argument("--local", action="store_true", help="trigger through the local Airflow CLI")
    p.add_argument("--poll-seconds", type=float, default=10)
    p.set_defaults(func=cmd_participant)

    p = sub.add_parser("status", help="per-scan state of a run")
    p.add_argument("run", nargs="?")
    _airflow_flags(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("kill", help="fail a run and terminate its Batch jobs")
    p.add_argument("run")
    _airflow_flags(p)
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("report", help="download a run's report.html")
    p.add_argument("run")
    p.add_argument("--out")
    p.add_argument("--open", action="store_true")
    _airflow_flags(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("estimate", help="scans, vCPU-hours and dollars before running")
    _dataset_flags(p)
    p.add_argument("--hours-per-scan", type=float)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("atlases", help="the parcellations a pipeline's image offers, per voxel size")
    p.add_argument("--pipeline", choices=("m2g", "ndmg"), default="m2g")
    p.add_argument("--voxelsize", help="only this voxel size (1mm, 2mm, 4mm)")
    p.set_defaults(func=cmd_atlases)

    p = sub.add_parser("setup", help="create or update the Batch infrastructure (CloudFormation)")
    p.add_argument("--image", required=True, help="scan image URI (ECR)")
    p.add_argument("--subnets", nargs="+", required=True)
    p.add_argument("--security-groups", nargs="+", required=True)
    p.add_argument("--input-bucket", required=True)
    p.add_argument("--input-prefix", default="")
    p.add_argument("--output-bucket", required=True)
    p.add_argument("--output-prefix", default="")
    p.add_argument("--max-vcpus", type=int, default=256, help="most vCPUs the compute environments scale to (2 per scan)")
    p.add_argument("--root-volume-gb", type=int, default=100, help="root volume of each instance: the image plus each scan's work (m2g: several GB)")
    p.add_argument("--on-demand", action="store_true", help="no Spot environment")
    p.add_argument("--job_queue", default="ndmg-queue")
    p.add_argument("--job_definition", default="ndmg")
    p.add_argument("--stack", default="ndmg-cloud-batch")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("teardown", help="delete the Batch infrastructure")
    p.add_argument("--stack", default="ndmg-cloud-batch")
    p.set_defaults(func=cmd_teardown)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as err:
        print(f"ndmg_cloud: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # InfraError, PreflightError, S3AccessError, DatasetError ...
        print(f"ndmg_cloud: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # params refused by the library (ParamError, OptionError, ...)
        print(f"ndmg_cloud: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
