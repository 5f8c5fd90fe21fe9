"""``ndmg_cloud``: the seed's command, over the ndmg_participant DAG.

    ndmg_cloud participant --bucket B --bidsdir P [--jobdir J] [--modif M] [--space native]
                           [--dataset D] [--participant-label L ...] [--pipeline m2g] ...
                           [--follow] [--local]
    ndmg_cloud schedule add NAME --bucket B --bidsdir P --when @daily | 'new scans' --queue URL
    ndmg_cloud schedule list | pause NAME | resume NAME | remove NAME   keep datasets processed
    ndmg_cloud status [RUN]      per-scan table of a run (the latest by default), or why it failed
    ndmg_cloud kill RUN          fail the run and terminate every Batch job of it
    ndmg_cloud report RUN        download report.html and print its path
    ndmg_cloud group RUN | --output S3URI   the group level of a run (ndmg_group): graph
                                 statistics and discriminability, followed to the end
    ndmg_cloud estimate --bucket B --bidsdir P ...   scans, vCPU-hours, dollars
    ndmg_cloud atlases                               the parcellations an image offers
    ndmg_cloud setup ... / teardown                  the Batch infrastructure
    ndmg_cloud setup-deployer                        the service role CloudFormation deploys it with

Airflow is reached through its REST API v2 with token auth: --airflow-url and --username
(or NDMG_AIRFLOW_URL, NDMG_AIRFLOW_USER); the password from NDMG_AIRFLOW_PASSWORD, the one
`airflow standalone` generated in AIRFLOW_HOME, or a prompt (never a flag). AWS is
reached with the usual AWS settings (AWS_PROFILE or ~/.aws, AWS_ENDPOINT_URL for the
embedded stack).

Flags are spelled with dashes (--dry-run); the seed's underscore spellings (--dry_run,
--participant_label) work too. Seed flags that are gone get a one-line migration hint.
Whatever fails ends in one line on stderr, ``ndmg_cloud: <what happened>: <what to do>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ndmg_cloud.cli.airflowapi import (
    Airflow,
    CliError,
    NoReport,
    NotFound,
    Unreachable,
    error_of,
    failures,
    one_line,
    password_from_airflow_home,
)
from ndmg_cloud.core.pipelines import get_pipeline
from ndmg_cloud.demo.stack import REGION as EMBEDDED_REGION
from ndmg_cloud.demo.stack import REPO
from ndmg_cloud.group.params import DEFAULT_PERMUTATIONS, GroupParams
from ndmg_cloud.group.result import GroupSummary
from ndmg_cloud.infra.params import MAX_VCPUS, ROOT_VOLUME_GB, STACK_NAME, InfraParams
from ndmg_cloud.orchestration.taskids import (
    COMPARE_CONNECTOMES,
    DAG_ID,
    DISCOVER,
    GROUP_DAG_ID,
    JOB_TASKS,
    JOB_XCOM_KEY,
    SCAN_TASKS,
    VERIFY_AND_REPORT,
)
from ndmg_cloud.participant.params import DEFAULT_JOB_DEFINITION as JOB_DEFINITION
from ndmg_cloud.participant.params import DEFAULT_JOB_QUEUE as JOB_QUEUE
from ndmg_cloud.participant.params import PARAM_SCHEMAS
from ndmg_cloud.participant.schedules import DEFAULT_QUIET_MINUTES

if TYPE_CHECKING:
    from ndmg_cloud.report.runreport import RunReport  # imported where read: it pulls in the figures

FINISHED = ("success", "failed")
# Where `make airflow` (ndmg-demo --standalone, run from the repository) keeps its Airflow.
DEMO_AIRFLOW_HOME = REPO / ".airflow-demo"
# What `make airflow` points every AWS client at (demo.configure_environment); PORT is the
# one of its line "local AWS endpoint (moto) on http://127.0.0.1:PORT".
EMBEDDED_AWS_ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:PORT",
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_DEFAULT_REGION": EMBEDDED_REGION,
}


# ------------------------------------------------------------------------------- AWS errors
def embedded_stack_hint() -> str:
    exports = " ".join(f"{name}={value}" for name, value in EMBEDDED_AWS_ENV.items())
    return (
        f"for the embedded stack of `make airflow`: export {exports} "
        "(PORT: from its line 'local AWS endpoint (moto) on http://127.0.0.1:PORT')"
    )


CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "AuthFailure",
    "InvalidSignatureException",
}
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "AllAccessDisabled", "UnauthorizedOperation", "403"}


def aws_error(err: Exception, doing: str) -> CliError:
    """One line for a botocore failure while ``doing`` ("cannot read s3://b/k")."""
    from botocore import exceptions as bx

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    or_embedded = "" if endpoint else f"; or, {embedded_stack_hint()}"
    if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return CliError(f"{doing}: no usable AWS credentials ({err}): set your AWS settings (AWS_PROFILE or ~/.aws){or_embedded}")
    if isinstance(err, bx.NoRegionError):
        return CliError(f"{doing}: no AWS region: export AWS_DEFAULT_REGION=<your region>{or_embedded}")
    if isinstance(err, bx.ProfileNotFound):
        return CliError(f"{doing}: {err}: fix AWS_PROFILE or ~/.aws/config{or_embedded}")
    if isinstance(err, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        if endpoint:
            return CliError(
                f"{doing}: nothing answers at AWS_ENDPOINT_URL={endpoint}: if it is the embedded stack, "
                "start it (`make airflow`) and export the endpoint it prints (the port changes at every start); "
                "for AWS itself, unset AWS_ENDPOINT_URL"
            )
        return CliError(f"{doing}: cannot reach AWS ({err}): check the network and AWS_DEFAULT_REGION{or_embedded}")
    if isinstance(err, bx.ClientError):
        error = err.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message") or ""
        if code in CREDENTIAL_CODES:
            return CliError(f"{doing}: AWS refused the credentials ({code}): renew them (aws sso login, AWS_PROFILE){or_embedded}")
        if code in DENIED_CODES:
            return CliError(
                f"{doing}: access denied ({message or code}): your AWS identity needs that permission "
                "(ndmg-policies prints the orchestrator's policy)"
            )
        if code == "NoSuchBucket":
            return CliError(f"{doing}: the bucket does not exist: check its name and the AWS region")
        if code in ("NoSuchKey", "404", "NotFound"):
            return CliError(f"{doing}: no such object: it was deleted or moved since it was written")
        return CliError(f"{doing}: AWS answered {code}: {message}")
    return CliError(f"{doing}: {err}")


@contextmanager
def aws(doing: str) -> Iterator[None]:
    """Turn botocore failures inside the block into one ``CliError`` line naming ``doing``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as err:
        raise aws_error(err, doing) from None


def airflow_from(args: argparse.Namespace) -> Airflow:
    """The Airflow the flags name. The password is never a flag (argv shows in ``ps`` and
    shell history): NDMG_AIRFLOW_PASSWORD, else the one `airflow standalone` generated in
    AIRFLOW_HOME, else a prompt on a terminal."""
    password = os.environ.get("NDMG_AIRFLOW_PASSWORD") or password_from_airflow_home(args.username)
    if not password and sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"Airflow password of {args.username} at {args.airflow_url}: ")
    return Airflow(args.airflow_url, args.username, password)


def report_url(airflow_url: str, run_id: str) -> str:
    """The run's report.html as the Airflow api-server serves it (route of webapp.py)."""
    from ndmg_cloud.orchestration.links import airflow_report_url

    return airflow_report_url(airflow_url, run_id)


# ---------------------------------------------------------------------------- participant
def conf_from(args: argparse.Namespace) -> dict[str, Any]:
    """Trigger conf from the flags: only what was given; the DAG's params fill the rest."""
    conf: dict[str, Any] = {}
    for name in PARAM_FLAGS:
        value = getattr(args, name, None)
        if value is not None and value is not False and value != []:
            conf[name] = value
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


def report_uri_of(airflow: Airflow, run_id: str) -> str:
    """Where a participant run's report.json is (verify_and_report's XCom): Airflow only."""
    try:
        return str(airflow.xcom(run_id, VERIFY_AND_REPORT))
    except NotFound:
        raise NoReport(f"run {run_id} has no report: verify_and_report did not write one; `ndmg_cloud status {run_id}` says why") from None


def report_of(airflow: Airflow, run_id: str) -> tuple[str, RunReport]:
    import boto3

    from ndmg_cloud.core.layout import split_uri
    from ndmg_cloud.report.runreport import RunReport

    uri = report_uri_of(airflow, run_id)
    bucket, key = split_uri(uri)
    with aws(f"cannot read {uri}"):
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return uri, RunReport.from_dict(json.loads(body))


def print_summary(uri: str, report: RunReport, out: Any = None) -> None:
    out = out or sys.stdout
    s = report.summary
    canary = report.canary
    if canary.status == "failed":
        out.write(f"the canary failed, so no scan was submitted: {canary.reason}\n")
        if canary.log_url:
            out.write(f"canary log: {canary.log_url}\n")
    elif canary.status == "passed":
        out.write(f"canary passed: {canary.reason}\n")
    out.write(f"{s.line()}; cost ${s.cost_usd:.2f}\nreport: {uri}\n")


def finish(airflow: Airflow, run_id: str, state: str) -> int:
    """After following a run: its report and where to open it, or why it failed."""
    try:
        uri, report = report_of(airflow, run_id)
    except NoReport:
        lines = failures(airflow, run_id, airflow.task_instances(run_id))
        for line in lines or [f"run {run_id} has no report: verify_and_report did not write one"]:
            print(line)
        return 1
    print_summary(uri, report)
    print(f"open the report: {report_url(airflow.url, run_id)}")
    return 0 if state == "success" else 1


def cmd_participant(args: argparse.Namespace) -> int:
    conf = conf_from(args)
    airflow = airflow_from(args)
    if args.local:
        run_id = trigger_locally(conf)
        print(f"triggered {DAG_ID} run {run_id} on the local Airflow")
    else:
        run_id = airflow.trigger(conf)
        print(f"triggered {DAG_ID} run {run_id}")
    if not args.follow:
        print(f"follow it with: ndmg_cloud status {run_id}")
        return 0
    try:
        state = follow(airflow, run_id, args.poll_seconds)
    except Unreachable:
        raise CliError(
            f"cannot follow run {run_id}: no Airflow API server answers at {airflow.url}: start it "
            "(`make airflow`, or `airflow api-server`) or pass --airflow-url; the run goes on: "
            f"`ndmg_cloud status {run_id}` shows it later"
        ) from None
    except KeyboardInterrupt:
        print()
        return _fail(f"stopped following; the run goes on: `ndmg_cloud status {run_id}` (`ndmg_cloud kill {run_id}` stops it)", 130)
    return finish(airflow, run_id, state)


def trigger_locally(conf: dict[str, Any], dag_id: str = DAG_ID) -> str:
    """Trigger through the `airflow` command beside this Python, on the Airflow of AIRFLOW_HOME."""
    import subprocess

    home = os.environ.get("AIRFLOW_HOME")
    use_it = (
        f"set AIRFLOW_HOME to the home of the Airflow you started (`make airflow` keeps it in "
        f"{DEMO_AIRFLOW_HOME}: export AIRFLOW_HOME={DEMO_AIRFLOW_HOME}), or drop --local to trigger "
        "through the REST API (--airflow-url)"
    )
    if not home:
        raise CliError(f"--local triggers through the Airflow of AIRFLOW_HOME, and it is not set: {use_it}")
    binary = os.path.join(os.path.dirname(sys.executable), "airflow")
    try:
        done = subprocess.run(
            [binary, "dags", "trigger", dag_id, "--conf", json.dumps(conf), "--output", "json"],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise CliError(f"--local needs the airflow command beside ndmg_cloud ({binary}): install Airflow here, or drop --local") from None
    said = f"{done.stderr}\n{done.stdout}"
    if done.returncode != 0 and ("migration required" in said.lower() or "airflow db migrate" in said):
        raise CliError(f"the Airflow at AIRFLOW_HOME={home} has no database ('Database migration required'): {use_it}")
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or str(done.returncode)).splitlines()[-1]
        raise CliError(f"the local Airflow (AIRFLOW_HOME={home}) refused the trigger: {last}")
    for line in reversed(done.stdout.splitlines()):  # log lines come first; the JSON is last
        if line.startswith("[{"):
            return str(json.loads(line)[0]["dag_run_id"])
    raise CliError(f"the local Airflow did not say which run it created: {done.stdout[-300:]}")


# ------------------------------------------------------------------------------- schedule
def cmd_schedule(args: argparse.Namespace) -> int:
    from ndmg_cloud.cli import schedules
    from ndmg_cloud.participant.schedules import parse

    if args.action == "add":
        record = schedules.record_from(args, conf_from(args))
        parse(args.name, record)  # refused before asking for a password
    airflow = airflow_from(args)
    if args.action == "add":
        schedules.add(airflow, args.name, record, args.replace)
    elif args.action == "list":
        return 1 if schedules.show(airflow, lambda run_id: report_of(airflow, run_id)) else 0
    elif args.action in ("pause", "resume"):
        schedules.set_paused(airflow, args.name, args.action == "pause")
    else:
        schedules.remove(airflow, args.name)
    return 0


# ---------------------------------------------------------------------------------- group
def group_params(args: argparse.Namespace, airflow: Airflow) -> GroupParams:
    """Which report the group level reads: a participant run's (its id), a report.json
    URI, or the newest run's under an output location."""
    given = [name for name in ("run", "report", "output") if getattr(args, name)]
    if len(given) != 1:
        raise CliError(
            "name one source of connectomes: a participant RUN id, --report s3://.../report.json or "
            f"--output s3://bucket/path (given: {', '.join(given) or 'none'})"
        )
    report = report_uri_of(airflow, args.run) if args.run else args.report or ""
    permutations = DEFAULT_PERMUTATIONS if args.permutations is None else args.permutations
    return GroupParams(report=report, output=args.output or "", permutations=permutations)


def print_group(found: dict[str, dict[str, dict[str, Any]]], out: Any = None) -> None:
    """What compare_connectomes returned: per report, per parcellation, a ``GroupSummary``."""
    out = out or sys.stdout
    for parcellation, value in (item for by_parcellation in found.values() for item in by_parcellation.items()):
        g = GroupSummary.from_xcom(parcellation, value)
        left = f", left out: {', '.join(g.left_out)}" if g.left_out else ""
        out.write(f"{parcellation}: {g.scans} scans used{left}\n")
        if g.discriminability is None:
            out.write(f"  discriminability not computed: {g.why_not}\n")
        else:
            p = "no p-value (0 shuffles)" if g.p_value is None else f"p-value {g.p_value:.3g}"
            out.write(f"  discriminability {g.discriminability:.3f}, {p}\n")
        out.write(f"  {g.html}\n  {g.document}\n")


def cmd_group(args: argparse.Namespace) -> int:
    airflow = airflow_from(args)
    params = group_params(args, airflow)
    conf = params.conf()
    run_id = trigger_locally(conf, GROUP_DAG_ID) if args.local else airflow.trigger(conf, dag_id=GROUP_DAG_ID)
    print(f"triggered {GROUP_DAG_ID} run {run_id} on {params.source}", flush=True)
    try:
        while (state := airflow.run(run_id, dag_id=GROUP_DAG_ID)["state"]) not in FINISHED:
            time.sleep(args.poll_seconds)
    except Unreachable:
        raise CliError(
            f"cannot follow {GROUP_DAG_ID} run {run_id}: no Airflow API server answers at {airflow.url}; "
            "the run goes on: its outputs appear under <output>/group/"
        ) from None
    if state != "success":
        tis = airflow.task_instances(run_id, dag_id=GROUP_DAG_ID)
        for line in failures(airflow, run_id, tis, dag_id=GROUP_DAG_ID) or [f"{GROUP_DAG_ID} run {run_id} {state}"]:
            print(line)
        return 1
    compare = next(ti for ti in airflow.task_instances(run_id, dag_id=GROUP_DAG_ID) if ti["task_id"] == COMPARE_CONNECTOMES)
    if compare["state"] == "skipped":  # a dry run's report: nothing was made
        print(f"nothing to compare: {error_of(airflow.task_log(run_id, compare, GROUP_DAG_ID)) or 'the report is a dry run'}")
        return 1
    print_group(airflow.xcom(run_id, COMPARE_CONNECTOMES, dag_id=GROUP_DAG_ID))
    return 0


# --------------------------------------------------------------------- status/kill/report
def cmd_status(args: argparse.Namespace) -> int:
    airflow = airflow_from(args)
    run_id = args.run or airflow.latest_run()
    state = airflow.run(run_id)["state"]
    print(f"run {run_id}: {state}")
    unreadable = None
    if state in FINISHED:
        try:
            uri, report = report_of(airflow, run_id)
        except NoReport:
            report = None
        except CliError as err:  # e.g. no AWS settings: show what Airflow knows, then say so
            report, unreadable = None, err
        if report:
            print(f"{'scan':<28} {'status':<16} {'duration':>9}  reason")
            for row in report.scans:
                duration = f"{row.duration_s:.0f} s" if row.duration_s is not None else ""
                print(f"{row.scan_id:<28} {row.status:<16} {duration:>9}  {row.reason or ''}")
            print_summary(uri, report)
            print(f"open the report: {report_url(airflow.url, run_id)}")
            return 0
    tis = airflow.task_instances(run_id)
    for line in failures(airflow, run_id, tis):
        print(line)
    scans = [ti for ti in tis if ti["task_id"] in SCAN_TASKS and ti["map_index"] >= 0]
    if scans:
        print(f"{'scan':<28} {'task state':<16}")
        for ti in scans:
            print(f"{ti.get('rendered_map_index') or ti['map_index']!s:<28} {ti['state'] or 'queued':<16}")
    elif state not in FINISHED:
        print("no scan tasks yet: discover and write_job_specs come first")
    if unreadable:
        raise unreadable
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    """Fail the run, then terminate every job of it: those its tasks recorded and any other
    job carrying the run's job names (a duplicate, a job submitted as the task died)."""
    from ndmg_cloud.participant.jobs import SubmittedJob
    from ndmg_cloud.participant.runplan import PlanRef

    airflow = airflow_from(args)
    job_ids = set()
    for ti in airflow.task_instances(args.run):
        if ti["task_id"] in JOB_TASKS:
            try:
                job_ids.add(SubmittedJob.from_xcom(airflow.xcom(args.run, ti["task_id"], JOB_XCOM_KEY, ti["map_index"])).job_id)
            except NotFound:
                pass  # not submitted yet: failing the run stops it before it is
    try:
        discovered = airflow.xcom(args.run, DISCOVER)
    except NotFound:
        discovered = None  # discovery never finished: no job can carry the run's names
    config = PlanRef.config_in(discovered) if discovered else None
    import boto3

    from ndmg_cloud.participant.jobs import ACTIVE, describe_jobs, terminate_run_job
    from ndmg_cloud.participant.reconcile import jobs_of_run

    with aws(f"the Batch jobs of run {args.run} could not be listed; the run was not marked failed"):
        batch = boto3.client("batch")
        active = {job_id for job_id, job in describe_jobs(batch, sorted(job_ids)).items() if job.get("status") in ACTIVE}
        if config:
            active |= {j["jobId"] for j in jobs_of_run(batch, config.job_queue, config.dataset, args.run) if j.get("status") in ACTIVE}
    airflow.fail_run(args.run)  # Airflow's api-server terminates the jobs the tasks recorded (cancel.py)
    with aws(f"run {args.run} is marked failed, but its Batch jobs could not be terminated"):
        # and this every job of the run (again: TerminateJob is idempotent); a job id from an
        # XCom that names another run's or team's job is left alone
        terminated = [job_id for job_id in sorted(active) if terminate_run_job(batch, job_id, args.run, "ndmg_cloud kill")]
    print(f"run {args.run} marked failed; {len(terminated)} Batch jobs terminated")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import boto3

    from ndmg_cloud.core.layout import REPORT_HTML, sibling, split_uri

    airflow = airflow_from(args)
    uri, report = report_of(airflow, args.run)
    html = sibling(uri, REPORT_HTML)
    bucket, key = split_uri(html)
    target = os.path.abspath(args.out or f"report-{args.run.replace(':', '-').replace('+', '-')}.html")
    with aws(f"cannot download {html}"):
        boto3.client("s3").download_file(bucket, key, target)
    print_summary(uri, report)
    print(f"report.html: {target}")
    if args.open:
        import webbrowser

        webbrowser.open(f"file://{target}")
    return 0


# ------------------------------------------------------------------------------- estimate
def cmd_estimate(args: argparse.Namespace) -> int:
    """What the run would cost, from the same survey of the dataset and refusals as the DAG's
    discover task (max_scans, max_cost_usd)."""
    import boto3

    from ndmg_cloud.participant.cost import check_cost
    from ndmg_cloud.participant.discover import discover, survey
    from ndmg_cloud.participant.params import resolve

    config = resolve(conf_from(args), "estimate")
    s3 = boto3.client("s3")
    with aws(f"cannot list {config.input_root}"):
        found = discover(config, s3)
    with aws(f"cannot read what is already done under {config.output_root}"):
        surveyed = survey(config, s3, found)
    print(
        f"{len(found.scans)} scans found: {len(found.valid)} valid, {len(found.invalid)} invalid, "
        f"{len(surveyed.done)} already done, {surveyed.to_run} to run"
    )
    print(check_cost(config, surveyed.to_run, args.hours_per_scan))
    return 0


# -------------------------------------------------------------------------- setup/teardown
def infra_params(args: argparse.Namespace) -> InfraParams:
    """The stack ``setup``'s flags describe: the flags are the ndmg_infra form's params by
    name (``--on-demand`` is ``use_spot`` false), read by the same ``InfraParams.from_params``."""
    return InfraParams.from_params({**vars(args), "use_spot": not args.on_demand})


def deployer_role() -> str:
    """Create or update the CloudFormation service role (``infra.deployer``) with the
    caller's credentials (an AWS administrator's); its ARN."""
    import boto3

    from ndmg_cloud.infra.deployer import SERVICE_ROLE_NAME, ensure_service_role

    with aws(f"cannot create or update the CloudFormation service role {SERVICE_ROLE_NAME}"):
        session = boto3.session.Session()
        arn = str(session.client("sts").get_caller_identity()["Arn"])
        partition, account = arn.split(":")[1], arn.split(":")[4]
        try:
            return ensure_service_role(session.client("iam"), partition, session.region_name or "us-east-1", account)
        except ValueError as err:
            raise CliError(str(err)) from None


def cmd_setup_deployer(args: argparse.Namespace) -> int:
    import boto3

    from ndmg_cloud.infra.deployer import SERVICE_ROLE_ENV, caller_policy

    arn = deployer_role()
    session = boto3.session.Session()
    partition, account = arn.split(":")[1], arn.split(":")[4]
    print(f"CloudFormation service role: {arn}")
    print(f"set {SERVICE_ROLE_ENV}={arn} where Airflow runs the ndmg_infra DAG; its AWS connection needs only:")
    print(json.dumps(caller_policy(partition, session.region_name or "us-east-1", account, tuple(args.watched_bucket)), indent=2))
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    import boto3

    from ndmg_cloud.infra.stack import deploy

    params = infra_params(args)
    role = deployer_role()
    with aws(f"cannot deploy stack {params.stack}"):
        deployment = deploy(boto3.client("cloudformation"), params, service_role_arn=role, s3=boto3.client("s3"))
    outputs = deployment.outputs
    print(f"stack {deployment.stack}: {deployment.action} (by CloudFormation as {role})")
    print(f"job_queue:      {outputs.job_queue}")
    print(f"job_definition: {outputs.job_definition}")
    print(f"output_uri:     under {outputs.output_location} (e.g. {outputs.output_location}<dataset>/)")
    if outputs.new_scans_queue_url:  # watch_new_scans: deploy pointed the input's uploads at it
        where = f"s3://{params.input_bucket}/{params.input_prefix}"
        print(f"new scans:      uploads under {where} are sent to {outputs.new_scans_queue_url}")
        print(
            f"  watch one dataset with it: ndmg_cloud schedule add NAME --bucket {params.input_bucket} --bidsdir {params.input_prefix}<dataset> "
            f'... --when "new scans" --queue {outputs.new_scans_queue_url}'
        )
    return 0


def cmd_teardown(args: argparse.Namespace) -> int:
    import boto3

    from ndmg_cloud.infra.stack import teardown

    with aws(f"cannot delete stack {args.stack}"):
        removed = teardown(boto3.client("cloudformation"), args.stack, s3=boto3.client("s3"))
    print(f"stack {args.stack}: {'deleted' if removed else 'there was none'}")
    return 0


# ---------------------------------------------------------------------------------- atlases
def cmd_atlases(args: argparse.Namespace) -> int:
    from ndmg_cloud.core.atlases import catalogue

    names, pipeline = catalogue(args.pipeline), get_pipeline(args.pipeline)
    sizes = [args.voxelsize] if args.voxelsize else names.voxelsizes()
    print(f"{args.pipeline}: atlases of neuroparc {names.commit[:8]} (the image's /{args.pipeline}_atlases)")
    refused = []
    for name in names.names(args.voxelsize):
        have = " ".join(size for size in sizes if (name, size) in names.atlases)
        largest, limit = names.largest_label(name), pipeline.labels
        if limit and largest is not None and largest > limit.largest:
            refused.append(name)
            have += f"   not for {args.pipeline}: labels up to {largest:,}; {limit.why} (up to {limit.largest:,})"
        print(f"  {name:<44} {have}")
    default = pipeline.options["parcellation"].default
    usable = len(names.names(args.voxelsize)) - len(refused)
    print(f"{usable} usable with {args.pipeline}" + (f", {len(refused)} not: {', '.join(refused)}" if refused else ""))
    print(f"default: {' '.join(default)}; pass names with --parcellation (param parcellation)")
    return 0


# ----------------------------------------------------------------------------------- parser
# Every param of the DAG is a flag (canary is --no-canary); help comes from the param's
# description unless the command line needs other words.
PARAM_FLAGS = tuple(name for name in PARAM_SCHEMAS if name != "canary")
FLAG_HELP = {
    "bucket": "S3 bucket of the BIDS dataset: its name only (lab-data)",
    "bidsdir": "dataset folder inside the bucket (studies/HNU1); default: the bucket root",
    "participant_label": "subject labels (01 or sub-01), space separated; default: all",
    "session_label": "session labels (1 or ses-1), space separated; default: all",
    "parcellation": "atlas names, space separated (list them: ndmg_cloud atlases); lite: gridN",
    "dry_run": "discover, write job specs and the report; submit nothing",
    "force": "rerun scans that are already done",
}
SEED_ALIASES = {"space": ["--sp"]}  # the seed ndmg_cloud's name of m2g's --space

# Seed flags that no longer exist: what to do instead (exit code 2, one line).
GONE_FLAGS = {
    "--password": "a password on the command line shows in `ps` and shell history: export NDMG_AIRFLOW_PASSWORD, "
    "or run on a terminal and type it when asked",
    "--credentials": "jobs get AWS access from their job role; the orchestrator uses your normal AWS settings (AWS_PROFILE or ~/.aws)",
    "--state": "the action is the subcommand now: ndmg_cloud participant | status | kill",
    "--filtering_type": "use --track-type (local or particle), the option m2g reads",
    "--modality": "ndmg_cloud runs the diffusion pipelines only (--pipeline m2g, ndmg or lite)",
    "--acquisition": "functional MRI is not processed here: ndmg_cloud runs the diffusion pipelines only",
    "--tr": "functional MRI is not processed here: ndmg_cloud runs the diffusion pipelines only",
    "--log": "group-level plots are not made: the report (ndmg_cloud report RUN) lists every scan and its outputs",
    "--debug": "each scan's whole log is in its task log (and CloudWatch on AWS); the report has a failed scan's last lines",
    "--big": "voxel-wise graphs are not made: the connectomes are per parcellation (--parcellation)",
    "--push_location": "each scan job uploads its outputs, privately, under the dataset's --modif folder (or --output-uri)",
    "--push_data": "each scan job uploads its outputs, privately, under the dataset's --modif folder (or --output-uri)",
}
SEED_PIPELINES = {"dwi": "m2g", "func": None}  # m2g_cloud's --pipeline took a modality


def gone_flag_hint(argv: list[str]) -> str | None:
    """The migration hint for the first seed flag in ``argv`` that no longer exists."""
    for i, token in enumerate(argv):
        if token == "--":
            return None
        flag, _, inline = token.partition("=")
        if flag in GONE_FLAGS:
            return f"{flag} is gone: {GONE_FLAGS[flag]}"
        if flag == "--pipeline":
            value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
            if value in SEED_PIPELINES:
                instead = SEED_PIPELINES[value]
                if instead:
                    return f"--pipeline {value} is the seed's modality: the diffusion pipeline is --pipeline {instead} (or ndmg, lite)"
                return f"--pipeline {value} is gone: ndmg_cloud runs the diffusion pipelines only (--pipeline m2g, ndmg or lite)"
    return None


class _Help(argparse.HelpFormatter):
    """Shows each flag once, with its dashed spellings (the underscore ones are the seed's
    habits): ``--space, --sp {native,native_dsn}``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        shown = ", ".join(s for s in action.option_strings if "_" not in s) or action.option_strings[0]
        if action.nargs == 0:
            return shown
        return f"{shown} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


UNDERSCORE_NOTE = "Every flag also takes its underscore spelling, as the seed's ndmg_cloud did"


def _flag(name: str) -> list[str]:
    """--job-queue, and --job_queue too for names with underscores."""
    dashed = "--" + name.replace("_", "-")
    return [dashed, f"--{name}"] if "_" in name else [dashed]


def _add(p: argparse.ArgumentParser, name: str, help: str, **kwargs: Any) -> None:
    p.add_argument(*_flag(name), *SEED_ALIASES.get(name, []), dest=name, help=help, **kwargs)


def _param_flag(p: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """A flag per DAG param: type and choices from its JSON schema."""
    schema = PARAM_SCHEMAS[name]
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    kind = next(t for t in types if t != "null")
    if kind == "array":
        kwargs.update(nargs="+", default=[])
    elif kind == "boolean":
        kwargs.update(action="store_true")
    else:
        kwargs.setdefault("type", {"integer": int, "number": float}.get(kind, str))
        choices = [value for value in schema.get("enum", ()) if value is not None]
        if choices:
            kwargs.setdefault("choices", choices)
    _add(p, name, FLAG_HELP.get(name) or schema.get("description") or schema["title"], **kwargs)


def _airflow_flags(p: argparse.ArgumentParser) -> None:
    _add(
        p,
        "airflow_url",
        "Airflow api-server URL (env NDMG_AIRFLOW_URL; default http://localhost:8080)",
        default=os.environ.get("NDMG_AIRFLOW_URL", "http://localhost:8080"),
    )
    _add(p, "username", "Airflow user (env NDMG_AIRFLOW_USER; default admin)", default=os.environ.get("NDMG_AIRFLOW_USER", "admin"))


def _dataset_flags(p: argparse.ArgumentParser) -> None:
    for name in PARAM_FLAGS:
        _param_flag(p, name, **({"required": True} if name == "bucket" else {}))
    p.add_argument(
        "--no-canary",
        "--no_canary",
        dest="no_canary",
        action="store_true",
        help="submit without the canary job (it checks the image first)",
    )


def _subcommand(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
    return parser


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ndmg_cloud", description="run ndmg/m2g over a BIDS dataset on AWS Batch")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    p = _subcommand(sub, "participant", "run the pipeline on every scan of a dataset")
    _dataset_flags(p)
    _airflow_flags(p)
    _add(p, "follow", "show progress until the run ends, then the report (or why it failed)", action="store_true")
    _add(p, "local", "trigger through the `airflow` command on the Airflow of AIRFLOW_HOME", action="store_true")
    _add(p, "poll_seconds", "seconds between two progress checks of --follow (default 10)", type=float, default=10)
    p.set_defaults(func=cmd_participant)

    p = _subcommand(sub, "schedule", "keep a dataset processed: runs on a cron schedule or when new scans land")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="add, list, pause, resume or remove")
    a = actions.add_parser("add", help="add a schedule (its params are the participant flags)", formatter_class=_Help)
    a.add_argument("name", help="the schedule's name (its DAG is ndmg_schedule_<name>)")
    _add(
        a,
        "when",
        "when to run: a cron expression ('0 3 * * *', UTC), a preset (@hourly @daily @weekly @monthly @quarterly @yearly) "
        "or 'new scans' (with --queue)",
        required=True,
    )
    _add(a, "queue", "with --when 'new scans': the SQS queue S3 notifies of the dataset's uploads")
    _add(
        a,
        "quiet_minutes",
        f"with --when 'new scans': minutes without uploads before a run starts (default {DEFAULT_QUIET_MINUTES:g})",
        type=float,
    )
    _add(a, "replace", "replace the schedule of that name", action="store_true")
    _dataset_flags(a)
    _airflow_flags(a)
    a = actions.add_parser("list", help="each schedule: next run, last run, its last report", formatter_class=_Help)
    _airflow_flags(a)
    for action, help in (("pause", "no run starts until resumed"), ("resume", "runs start again"), ("remove", "delete the schedule")):
        a = actions.add_parser(action, help=help, formatter_class=_Help)
        a.add_argument("name", help="the schedule's name")
        _airflow_flags(a)
    p.set_defaults(func=cmd_schedule)

    p = _subcommand(sub, "status", "per-scan state of a run, or why it failed")
    p.add_argument("run", nargs="?", help="run id (default: the latest run)")
    _airflow_flags(p)
    p.set_defaults(func=cmd_status)

    p = _subcommand(sub, "kill", "fail a run and terminate its Batch jobs")
    p.add_argument("run", help="run id (see: ndmg_cloud status)")
    _airflow_flags(p)
    p.set_defaults(func=cmd_kill)

    p = _subcommand(sub, "report", "download a run's report.html")
    p.add_argument("run", help="run id (see: ndmg_cloud status)")
    _add(p, "out", "where to save report.html (default: report-<run id>.html here)")
    _add(p, "open", "open it in the browser", action="store_true")
    _airflow_flags(p)
    p.set_defaults(func=cmd_report)

    p = _subcommand(sub, "group", "compare a run's connectomes: graph statistics and discriminability")
    p.add_argument("run", nargs="?", help="the ndmg_participant run id whose connectomes to compare")
    _add(p, "report", "or: the s3:// URI of a run's report.json")
    _add(p, "output", "or: a dataset's output location (s3://bucket/path): its newest run")
    _add(p, "permutations", "label shuffles behind the p-value (default 1000)", type=int)
    _add(p, "local", "trigger through the `airflow` command on the Airflow of AIRFLOW_HOME", action="store_true")
    _add(p, "poll_seconds", "seconds between two checks of the run's state (default 5)", type=float, default=5)
    _airflow_flags(p)
    p.set_defaults(func=cmd_group)

    p = _subcommand(sub, "estimate", "scans, vCPU-hours and dollars before running")
    _dataset_flags(p)
    _add(p, "hours_per_scan", "instance-hours one scan takes (default: the pipeline's usual figure)", type=float)
    p.set_defaults(func=cmd_estimate)

    p = _subcommand(sub, "atlases", "the parcellations a pipeline's image offers, per voxel size")
    _add(p, "pipeline", "the pipeline whose atlases to list (default m2g)", choices=("m2g", "ndmg"), default="m2g")
    _add(p, "voxelsize", "only this voxel size (1mm, 2mm, 4mm)")
    p.set_defaults(func=cmd_atlases)

    p = _subcommand(sub, "setup", "create or update the Batch infrastructure (CloudFormation)")
    _add(p, "image", "scan image URI (ECR)", required=True)
    _add(p, "subnets", "subnets of the compute environments", nargs="+", required=True)
    _add(p, "security_groups", "security groups of the compute environments", nargs="+", required=True)
    _add(p, "input_bucket", "bucket the jobs read datasets from", required=True)
    _add(
        p,
        "input_prefix",
        "folder of the datasets in the input bucket, ending in / (default: all of it); "
        "jobs read it and never write into its subject folders",
        default="",
    )
    _add(p, "output_bucket", "bucket the jobs write outputs to", required=True)
    _add(
        p,
        "output_prefix",
        "folder of the outputs in the output bucket, ending in / (e.g. ndmg/); runs set output_uri under it",
        required=True,
    )
    _add(p, "max_vcpus", f"most vCPUs the compute environments scale to (2 per scan; default {MAX_VCPUS})", type=int, default=MAX_VCPUS)
    _add(
        p,
        "root_volume_gb",
        f"root volume of each instance: the image plus each scan's work (m2g: several GB; default {ROOT_VOLUME_GB})",
        type=int,
        default=ROOT_VOLUME_GB,
    )
    _add(p, "on_demand", "no Spot environment", action="store_true")
    _add(p, "job_queue", f"name of the job queue to create (default {JOB_QUEUE})", default=JOB_QUEUE)
    _add(p, "job_definition", f"name of the job definition to register (default {JOB_DEFINITION})", default=JOB_DEFINITION)
    _add(
        p,
        "watch_new_scans",
        "also create the SQS queue <stack>-new-scans and send it the input bucket's uploads under the input prefix "
        "(for a schedule --when 'new scans')",
        action="store_true",
    )
    _add(p, "stack", f"CloudFormation stack name (default {STACK_NAME})", default=STACK_NAME)
    p.set_defaults(func=cmd_setup)

    p = _subcommand(sub, "setup-deployer", "create or update the CloudFormation service role the Batch stack is deployed with")
    _add(
        p,
        "watched_bucket",
        "input bucket of a stack deployed --watch-new-scans from Airflow: the connection may change its notifications",
        nargs="+",
        default=[],
    )
    p.set_defaults(func=cmd_setup_deployer)

    p = _subcommand(sub, "teardown", "delete the Batch infrastructure")
    _add(p, "stack", f"CloudFormation stack name (default {STACK_NAME})", default=STACK_NAME)
    p.set_defaults(func=cmd_teardown)

    for p in sub.choices.values():
        seed_spellings = [flag for action in p._actions for flag in action.option_strings if "_" in flag]
        if seed_spellings:
            p.epilog = f"{UNDERSCORE_NOTE} ({', '.join(seed_spellings[:3])} ...)."
    return top


# ------------------------------------------------------------------------------------- main
def _fail(message: object, code: int = 2) -> int:
    print(f"ndmg_cloud: {one_line(message)}", file=sys.stderr)
    return code


def explain(err: Exception) -> str:
    """The one line a user sees for an error that ended a command."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err, CliError):
        return str(err)
    if isinstance(err, (BotoCoreError, ClientError)):
        return str(aws_error(err, "an AWS call failed"))
    if isinstance(err, (RuntimeError, ValueError)):
        # the library's refusals (InfraError, PreflightError, S3AccessError, DatasetError,
        # ParamError, OptionError ...) each say what was wrong and what to do
        return str(err)
    return (
        f"unexpected {type(err).__name__}: {err}: this is a bug of ndmg_cloud; NDMG_CLI_DEBUG=1 shows where it happened (please report it)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    hint = gone_flag_hint(argv)
    if hint:
        return _fail(hint)
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # the reader went away (ndmg_cloud atlases | head): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:  # the last net: never a traceback for a user
        if os.environ.get("NDMG_CLI_DEBUG"):
            raise
        return _fail(explain(err))


if __name__ == "__main__":
    raise SystemExit(main())
