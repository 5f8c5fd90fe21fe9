"""Schedules as data (participant/schedules.py, orchestration/schedule_dags.py,
cli/schedules.py): records checked as a trigger is, one DAG per good record, bad records
as one import error that stops no other schedule; then the CLI against a real Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ndmg_cloud.participant.params import PARAM_SCHEMAS
from ndmg_cloud.participant.schedules import VARIABLE, ScheduleError, parse, read

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"params": {"bucket": "lab-data", "bidsdir": "studies/HNU1"}, "when": "@daily"}


def test_a_record_becomes_a_schedule():
    schedule = parse("hnu1", GOOD)
    assert schedule.dag_id == "ndmg_schedule_hnu1"
    assert schedule.cron == "@daily" and schedule.new_scans is None
    assert schedule.params == {"bucket": "lab-data", "bidsdir": "studies/HNU1"}
    assert parse("hnu1", {**GOOD, "when": " 0  3 * * 1-5 "}).cron == "0 3 * * 1-5"
    watch = parse("hnu1", {**GOOD, "when": "new scans", "queue": "https://sqs.us-east-1.amazonaws.com/123456789012/ndmg-new-scans"})
    assert watch.new_scans and watch.new_scans.quiet_minutes == 5 and watch.cron is None
    assert parse("hnu1", watch.to_record()) == watch  # what is stored reads back the same


@pytest.mark.parametrize(
    ("record", "field", "says"),
    [
        ({**GOOD, "params": {"bidsdir": "HNU1"}}, "params.bucket", "No value passed and Param has no default value"),
        ({**GOOD, "params": {"bucket": "Lab_Data"}}, "params.bucket", "does not match"),
        ({**GOOD, "params": {"bucket": "lab-data", "pipeline": "fmri"}}, "params.pipeline", "'fmri' is not one of ['m2g', 'ndmg', 'lite']"),
        ({**GOOD, "params": {"bucket": "lab-data", "buckt": "x"}}, "params.buckt", "did you mean 'bucket'?"),
        (
            {**GOOD, "params": {"bucket": "lab-data", "parcellation": ["Nope"]}},
            "params.parcellation",
            "'Nope' is not an atlas of m2g's image",
        ),
        ({**GOOD, "params": {"bucket": "lab-data", "force": True}}, "params.force", "would run every scan again"),
        ({**GOOD, "params": "lab-data"}, "params", "as the trigger form takes them"),
        ({**GOOD, "when": "daily"}, "when", "'daily' is not a cron expression"),
        ({**GOOD, "when": "@once"}, "when", "not a preset of a repeating schedule"),
        ({**GOOD, "when": "61 * * * *"}, "when", "not a cron expression"),
        ({"params": GOOD["params"]}, "when", "say when to run"),
        ({**GOOD, "wehn": "@daily"}, "wehn", "did you mean 'when'?"),
        ({**GOOD, "queue": "https://sqs.us-east-1.amazonaws.com/123456789012/q"}, "queue", "only a 'new scans' schedule has a queue"),
        ({**GOOD, "when": "new scans"}, "queue", "is not an SQS queue URL"),
        ({**GOOD, "when": "new scans", "queue": "http://127.0.0.1:1/1/q", "quiet_minutes": 0}, "quiet_minutes", "more than 0"),
        ({**GOOD, "when": "new scans", "queue": "http://127.0.0.1:1/1/q", "quiet_minutes": 12 * 60}, "quiet_minutes", "at most 660"),
        (
            {**GOOD, "params": {"bucket": "lab-data", "backend": "local", "pilot_scans": 1}},
            "params",
            "pilot_scans=1 applies to backend=aws_batch",
        ),
        ({**GOOD, "params": {"bucket": "lab-data", "jobdir": "jobs/here"}}, "params", "is a local path, which Batch jobs cannot read"),
        ({**GOOD, "colour": "red"}, "colour", "unknown field. A record has params, when"),
    ],
)
def test_a_bad_record_is_refused_naming_it_and_the_field(record, field, says):
    with pytest.raises(ScheduleError) as refused:
        parse("hnu1", record)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"schedule 'hnu1', field {field!r}: ")
    assert says in str(refused.value)


def test_a_bad_name_is_refused():
    with pytest.raises(ScheduleError, match="'HNU 1' is not a schedule name: use 1-50 lowercase"):
        parse("HNU 1", GOOD)


@pytest.mark.parametrize(
    "params",
    [
        {"bidsdir": "HNU1"},
        {"bucket": "Lab_Data"},
        {"bucket": "lab-data", "pipeline": "fmri"},
        {"bucket": "lab-data", "voxelsize": "3mm"},
        {"bucket": "lab-data", "seeds": -1},
        {"bucket": "lab-data", "participant_label": "01"},
        {"bucket": "lab-data", "max_scans": 0},
    ],
)
def test_params_are_refused_as_airflow_refuses_the_trigger(params):
    """The same schema, the same validator: Airflow's own ParamsDict says the same first line."""
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamsDict

    airflow_params = ParamsDict({name: Param(**schema) for name, schema in PARAM_SCHEMAS.items()})
    with pytest.raises(Exception) as airflow_says:
        for name, value in params.items():
            airflow_params[name] = value  # Airflow validates a value as it is set
        airflow_params.validate()  # and the missing ones here
    with pytest.raises(ScheduleError) as we_say:
        parse("s", {"params": params, "when": "@daily"})
    ours = str(we_say.value).split(": ", 1)[1]
    assert ours.split(" (")[0] == str(airflow_says.value).splitlines()[0].split(" (")[0]


def test_a_queue_is_watched_by_one_schedule():
    """Each reader of a queue takes every message it reads: two would lose each other's."""
    watch = {**GOOD, "when": "new scans", "queue": "https://sqs.us-east-1.amazonaws.com/123456789012/q"}
    found = read(json.dumps({"a": watch, "b": {**watch, "params": {"bucket": "lab-data", "bidsdir": "other"}}}))
    assert [s.name for s in found.schedules] == ["a"]
    [problem] = found.problems
    assert str(problem) == (
        "schedule 'b', field 'queue': https://sqs.us-east-1.amazonaws.com/123456789012/q is watched by schedule 'a' already: "
        "give each 'new scans' schedule a queue of its own (S3 can notify one queue per dataset prefix)"
    )


def test_the_record_s_params_are_never_a_template():
    from ndmg_cloud.orchestration.schedule_dags import ScheduledRunOperator

    assert "conf" not in ScheduledRunOperator.template_fields and "trigger_run_id" in ScheduledRunOperator.template_fields


def test_one_bad_record_leaves_the_others():
    text = json.dumps({"good": GOOD, "bad": {**GOOD, "when": "daily"}, "worse": []})
    found = read(text)
    assert [s.name for s in found.schedules] == ["good"]
    assert [p.name for p in found.problems] == ["bad", "worse"]
    assert read("{not json").unreadable.startswith(f"the Variable {VARIABLE} is not JSON")
    assert read(None).schedules == [] and read(None).messages() == []


def _dagbag(records: object) -> tuple[dict, dict]:
    """The DAG folder parsed by Airflow's DagBag in a fresh interpreter, the Variable given
    as Airflow reads it from the environment: (dag id -> facts, import errors)."""
    code = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dags = {i: {"timetable": type(d.timetable).__name__, "cron": d.timetable.expression,
            "max_active_runs": d.max_active_runs, "tasks": [t.task_id for t in d.tasks],
            "paused": d.is_paused_upon_creation, "conf": getattr(d.get_task("run_participant"), "conf", None)}
        for i, d in bag.dags.items() if i.startswith("ndmg_schedule_")}
print(json.dumps([dags, bag.import_errors]))
"""
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    if records is not None:
        env["AIRFLOW_VAR_NDMG_SCHEDULES"] = records if isinstance(records, str) else json.dumps(records)
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "dags")], env=env, capture_output=True, text=True, check=True)
    dags, errors = json.loads(done.stdout.strip().splitlines()[-1])
    return dags, errors


def test_each_good_record_is_a_dag_and_the_bad_ones_one_import_error():
    dags, errors = _dagbag(
        {
            "hnu1": GOOD,
            "nightly": {"params": {"bucket": "lab-data", "bidsdir": "HBN", "pipeline": "lite"}, "when": "0 3 * * *"},
            "typo": {**GOOD, "params": {"bucket": "lab-data", "pipeline": "fmri"}},
            "late": {**GOOD, "when": "25 * * * * *"},
        }
    )
    assert set(dags) == {"ndmg_schedule_hnu1", "ndmg_schedule_nightly"}
    nightly = dags["ndmg_schedule_nightly"]
    assert nightly["timetable"] == "CronTriggerTimetable" and nightly["cron"] == "0 3 * * *"
    assert nightly["max_active_runs"] == 1 and nightly["paused"] is False
    assert nightly["tasks"] == ["wait_for_output", "run_participant"]
    assert nightly["conf"] == {"bucket": "lab-data", "bidsdir": "HBN", "pipeline": "lite"}
    assert list(errors) == ["ndmg_schedule_errors.py"] or [Path(k).name for k in errors] == ["ndmg_schedule_errors.py"]
    error = next(iter(errors.values()))
    assert "2 schedule record(s) make no DAG" in error
    assert "schedule 'typo', field 'params.pipeline': Invalid input for param pipeline: 'fmri' is not one of" in error
    assert "schedule 'late', field 'when': '25 * * * * *' is not a cron expression" in error


@pytest.mark.parametrize("records", [None, "", "{not json", "[1, 2]"])
def test_no_or_an_unreadable_variable_breaks_no_other_dag(records):
    dags, errors = _dagbag(records)
    assert dags == {}
    if records in (None, ""):
        assert errors == {}
    else:
        assert [Path(k).name for k in errors] == ["ndmg_schedule_errors.py"]
        assert f"the Variable {VARIABLE} is" in next(iter(errors.values()))


def test_the_cli_refuses_a_bad_schedule_before_asking_airflow(monkeypatch, capsys):
    from ndmg_cloud.cli.main import main

    monkeypatch.setenv("NDMG_AIRFLOW_URL", "http://127.0.0.1:9")  # nothing answers: it is never asked
    code = main(["schedule", "add", "hnu1", "--bucket", "lab-data", "--parcellation", "Nope", "--when", "@daily"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ndmg_cloud: schedule 'hnu1', field 'params.parcellation': option parcellation=['Nope']")


# ------------------------------------------------------------------ against a real Airflow
SCHEDULE = "ndmg_schedule_nightly"


def _api(live_airflow):
    from ndmg_cloud.cli.airflowapi import Airflow

    return Airflow(live_airflow["url"], "admin", live_airflow["password"])


def _finished(api, dag_id: str, run_id: str) -> str | None:
    state = api.run(run_id, dag_id)["state"]
    return state if state in ("success", "failed") else None


def _report(s3, run_id: str, bucket: str = "sched-data") -> dict:
    body = s3.get_object(Bucket=bucket, Key=f"phantoms/derivatives/ndmg/reports/{run_id}/report.json")["Body"].read()
    return json.loads(body)


def test_wait_for_output_defers_while_the_lease_is_held_then_takes_it_or_is_skipped(s3, monkeypatch):
    """Between looks it defers (a timer in the triggerer; no reschedule-mode race, no worker
    slot), carrying when it began; after the wait it is skipped with the holder's refusal;
    once the lease is free it takes it for the participant run it is about to start."""
    from airflow.providers.common.compat.sdk import AirflowSkipException
    from airflow.sdk.exceptions import TaskDeferred

    from ndmg_cloud.orchestration import schedule_dags
    from ndmg_cloud.participant.lease import Lease

    monkeypatch.setattr(schedule_dags, "s3_client", lambda: s3)
    s3.create_bucket(Bucket="busy-data")
    lease_key = "phantoms/derivatives/ndmg/.ndmg-lease.json"
    now = time.time()
    s3.put_object(Bucket="busy-data", Key=lease_key, Body=Lease("elsewhere__run", now, now).body())
    wait = schedule_dags.OutputLeaseWait(
        task_id="wait_for_output",
        schedule_name="busy",
        params_of_run={"bucket": "busy-data", "bidsdir": "phantoms", "pipeline": "lite"},
        poll_seconds=300,
        wait_seconds=3 * 3600,
    )
    context = {"run_id": "scheduled__2026-12-08T03:00:00+00:00", "ti": None}

    with pytest.raises(TaskDeferred) as deferred:
        wait.execute(context)
    assert deferred.value.method_name == "look_again"
    since = deferred.value.kwargs["since"]
    assert now - 1 <= since <= time.time()
    assert 290 <= (deferred.value.trigger.moment.timestamp() - time.time()) <= 300  # the next look
    with pytest.raises(TaskDeferred) as again:
        wait.look_again(context, event=None, since=since)
    assert again.value.kwargs["since"] == since  # the wait is counted from the first look

    with pytest.raises(AirflowSkipException) as skipped:
        wait.look_again(context, event=None, since=time.time() - 3 * 3600)
    assert (
        "for the 3 h this run may wait (NDMG_SCHEDULE_WAIT_HOURS): run elsewhere__run holds the lease on s3://busy-data/phantoms/"
        in str(skipped.value)
    )

    s3.delete_object(Bucket="busy-data", Key=lease_key)
    assert wait.look_again(context, event=None, since=since) is None
    held = json.loads(s3.get_object(Bucket="busy-data", Key=lease_key)["Body"].read())
    assert held["run_id"] == "busy__scheduled__2026-12-08T03:00:00+00:00"  # the participant run's id, known in advance


@pytest.mark.slow
def test_a_schedule_added_from_the_cli_runs_under_airflow_and_then_finds_nothing_new(cli, live_airflow, s3, tmp_path, capsys):
    """ndmg_cloud schedule add/list/pause/resume/remove against the live api-server,
    dag-processor, scheduler and triggerer: the record becomes a DAG with its next run; a
    run of it starts ndmg_participant and waits for it; a second run finds 0 new scans and
    runs no scan and no canary; a bad record shows as an import error and stops no other."""
    from datetime import UTC, datetime, timedelta

    from conftest import wait_for
    from datasets import put_phantoms

    put_phantoms(s3, tmp_path, "sched-data", "phantoms")
    api = _api(live_airflow)
    flags = ["--bucket", "sched-data", "--bidsdir", "phantoms", "--pipeline", "lite", "--backend", "local"]
    soon = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=2)  # one run in this test, at that time
    cron = f"{soon.minute} {soon.hour} * * *"
    assert cli("schedule", "add", "nightly", *flags, "--when", cron) == 0
    out = capsys.readouterr().out
    assert f"schedule nightly: lite on s3://sched-data/phantoms/ {cron}" in out
    assert cli("schedule", "add", "nightly", *flags, "--when", "@daily") == 2  # exists: --replace says so
    assert "schedule 'nightly' exists: `ndmg_cloud schedule add nightly --replace ...` replaces it" in capsys.readouterr().err

    assert wait_for(lambda: api.dag(SCHEDULE) is not None, timeout=120)
    dag = api.dag(SCHEDULE)
    assert dag["is_paused"] is False and dag["max_active_runs"] == 1
    assert dag["next_dagrun_run_after"].startswith(soon.isoformat()[:16])  # its next time, not one just missed
    assert cli("schedule", "list") == 0
    listed = capsys.readouterr().out
    assert f"nightly: lite on s3://sched-data/phantoms/ {cron} ({SCHEDULE}, active)" in listed
    assert f"  next run:    {soon.isoformat()[:16].replace('T', ' ')} UTC" in listed
    assert "  last run:    none yet" in listed

    assert cli("schedule", "pause", "nightly") == 0
    assert api.dag(SCHEDULE)["is_paused"] is True
    assert cli("schedule", "list") == 0
    assert f"({SCHEDULE}, paused)" in capsys.readouterr().out
    assert cli("schedule", "resume", "nightly") == 0
    assert api.dag(SCHEDULE)["is_paused"] is False
    capsys.readouterr()

    # the scheduler starts it at its time: the whole dataset is new
    assert wait_for(lambda: api.runs(SCHEDULE), timeout=240)
    first = api.runs(SCHEDULE)[0]
    assert first["run_type"] == "scheduled" and first["run_after"].startswith(soon.isoformat()[:16])
    assert wait_for(lambda: _finished(api, SCHEDULE, first["dag_run_id"]), timeout=300)
    assert api.run(first["dag_run_id"], SCHEDULE)["state"] == "success"
    report = _report(s3, f"nightly__{first['dag_run_id']}")
    assert report["summary"]["new_scans"] == 2 and report["summary"]["succeeded"] == 2, json.dumps(report["scans"])[:3000]
    assert all(row["new"] for row in report["scans"])

    # another run (triggered from the UI, say): nothing new, so no scan task and no canary
    second = api.trigger({}, dag_id=SCHEDULE)
    assert wait_for(lambda: _finished(api, SCHEDULE, second), timeout=300)
    assert api.run(second, SCHEDULE)["state"] == "success"
    participant = f"nightly__{second}"
    report = _report(s3, participant)
    assert report["summary"]["new_scans"] == 0 and report["summary"]["skipped_done"] == 2 and report["summary"]["submitted"] == 0
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in api.task_instances(participant)}
    assert states[("canary", -1)] == "skipped"
    assert not [key for key in states if key[0] in ("run_scan", "run_scan_local", "pilot_scan") and key[1] >= 0]
    assert cli("schedule", "list") == 0
    listed = capsys.readouterr().out
    assert "  last run:    success, " in listed and f"({second})" in listed
    assert "  last report: 2 scans (0 new): 0 succeeded, 0 failed, 0 missing outputs, 0 invalid, 2 already done" in listed

    # a bad record beside it (written in Admin > Variables, say): an import error naming it
    records = json.loads(api.variable(VARIABLE))
    records["broken"] = {"params": {"bucket": "sched-data", "voxelsize": "3mm"}, "when": "@daily"}
    api.set_variable(VARIABLE, json.dumps(records), "edited by hand", exists=True)

    def import_error() -> str | None:
        errors = api._request("GET", "/api/v2/importErrors")["import_errors"]
        found = [e["stack_trace"] for e in errors if e["filename"].endswith("ndmg_schedule_errors.py")]
        return found[0] if found else None

    assert wait_for(import_error, timeout=120)
    assert "schedule 'broken', field 'params.voxelsize': Invalid input for param voxelsize: '3mm' is not one of" in import_error()
    dag = api.dag(SCHEDULE)
    assert dag["has_import_errors"] is False and dag["is_stale"] is False  # the good one stands
    assert cli("schedule", "list") == 1  # a bad record: exit code 1
    assert "broken: NOT A SCHEDULE: schedule 'broken', field 'params.voxelsize'" in capsys.readouterr().out

    assert cli("schedule", "remove", "broken") == 0
    assert cli("schedule", "remove", "nightly") == 0
    assert api.dag(SCHEDULE)["is_paused"] is True  # at once; Airflow drops the DAG at its next parse
    assert wait_for(lambda: api.dag(SCHEDULE)["is_stale"] and import_error() is None, timeout=120)


@pytest.mark.slow
def test_a_scheduled_run_waits_while_another_run_holds_the_output_then_goes_or_is_skipped(cli, live_airflow, s3, tmp_path, capsys):
    """The lease: a schedule's run never fails because another run writes the same output
    location: it waits (and starts once the lease is free), or is skipped saying why."""
    from ndmg_cloud.participant.lease import Lease

    from conftest import wait_for
    from datasets import put_phantoms

    put_phantoms(s3, tmp_path, "busy-data", "phantoms")
    api = _api(live_airflow)
    lease_key = "phantoms/derivatives/ndmg/.ndmg-lease.json"
    flags = ["--bucket", "busy-data", "--bidsdir", "phantoms", "--pipeline", "lite", "--backend", "local"]
    assert cli("schedule", "add", "busy", *flags, "--when", "@yearly") == 0
    assert wait_for(lambda: api.dag("ndmg_schedule_busy") is not None, timeout=120)

    def hold() -> None:  # a run of another deployment, alive (fresh heartbeat)
        now = time.time()
        s3.put_object(Bucket="busy-data", Key=lease_key, Body=Lease("elsewhere__run", now, now).body())

    def states(run_id: str) -> dict[str, str]:
        return {ti["task_id"]: ti["state"] for ti in api.task_instances(run_id, "ndmg_schedule_busy")}

    # held for longer than the run may wait (36 s here): skipped, with the reason, not failed
    hold()
    skipped = api.trigger({}, dag_id="ndmg_schedule_busy")
    assert wait_for(lambda: _finished(api, "ndmg_schedule_busy", skipped), timeout=240)
    assert api.run(skipped, "ndmg_schedule_busy")["state"] == "success"
    assert states(skipped) == {"wait_for_output": "skipped", "run_participant": "skipped"}
    log = json.dumps(api.task_log(skipped, {"task_id": "wait_for_output", "map_index": -1, "try_number": 1}, "ndmg_schedule_busy"))
    assert "run elsewhere__run holds the lease on s3://busy-data/phantoms/derivatives/ndmg/" in log
    with pytest.raises(Exception, match="has no run"):
        api.run(f"busy__{skipped}")  # no participant run was started
    capsys.readouterr()
    assert cli("schedule", "list") == 0
    assert (
        "  last run:    skipped: another run held the output location (the log of its wait_for_output task names it), "
        in capsys.readouterr().out
    )

    # held, then released while it waits: it goes, and its participant run holds the lease
    hold()
    waited = api.trigger({}, dag_id="ndmg_schedule_busy")
    assert wait_for(lambda: states(waited).get("wait_for_output") == "deferred", timeout=120)
    assert cli("schedule", "list") == 0
    assert "  last run:    running: waiting for another run to free the output location, " in capsys.readouterr().out
    s3.delete_object(Bucket="busy-data", Key=lease_key)
    assert wait_for(lambda: _finished(api, "ndmg_schedule_busy", waited), timeout=300)
    assert api.run(waited, "ndmg_schedule_busy")["state"] == "success"
    assert api.run(f"busy__{waited}")["state"] == "success"
    assert _report(s3, f"busy__{waited}", "busy-data")["lease"]["took_over"] is None  # its own lease, not one taken over
    assert cli("schedule", "remove", "busy") == 0


@pytest.mark.slow
def test_a_new_subject_uploaded_to_a_processed_dataset_starts_one_run_of_only_its_scans(cli, live_airflow, s3, aws, tmp_path, capsys):
    """S3 notifies an SQS queue (the local endpoint delivers them, as AWS does); the
    schedule's AssetWatcher, in the live triggerer, waits for the uploads to be quiet, then
    starts exactly one run, which runs only the new subject's scan and says it was new."""
    import boto3

    from ndmg_cloud.demo.synthetic import make_dataset

    from conftest import wait_for
    from datasets import put_phantoms
    from helpers import notified_queue

    put_phantoms(s3, tmp_path, "watch-data", "phantoms")  # sub-01/ses-1 and sub-02
    api = _api(live_airflow)
    params = {"bucket": "watch-data", "bidsdir": "phantoms", "pipeline": "lite", "backend": "local"}
    first = api.trigger(params)  # processed already
    assert wait_for(lambda: _finished(api, "ndmg_participant", first), timeout=300)
    assert api.run(first)["state"] == "success"

    queue = notified_queue(s3, "watch-data", "watch-data-new-scans", "phantoms/")
    sqs = boto3.client("sqs")
    flags = ["--bucket", "watch-data", "--bidsdir", "phantoms", "--pipeline", "lite", "--backend", "local"]
    assert cli("schedule", "add", "watch", *flags, "--when", "new scans", "--queue", queue, "--quiet-minutes", "0.25") == 0
    assert "schedule watch: lite on s3://watch-data/phantoms/ when new scans land (after 0.25 quiet minutes)" in capsys.readouterr().out
    assert wait_for(lambda: api.dag("ndmg_schedule_watch") is not None, timeout=120)

    # a new subject arrives as several objects over seconds
    make_dataset(tmp_path / "more", subjects=3, sessions=1, sessionless=0)
    files = sorted(p for p in (tmp_path / "more" / "sub-03").rglob("*") if p.is_file())
    for path in files:
        s3.upload_file(str(path), "watch-data", "phantoms/" + path.relative_to(tmp_path / "more").as_posix())
        time.sleep(2)
    last_upload = time.time()
    s3.put_object(Bucket="watch-data", Key="elsewhere/sub-09/dwi/x.nii.gz", Body=b"x")  # not the dataset's prefix

    assert wait_for(lambda: api.runs("ndmg_schedule_watch"), timeout=180)
    run = api.runs("ndmg_schedule_watch")[0]
    assert run["run_type"] == "asset_triggered"
    assert wait_for(lambda: _finished(api, "ndmg_schedule_watch", run["dag_run_id"]), timeout=300)
    assert api.run(run["dag_run_id"], "ndmg_schedule_watch")["state"] == "success"
    report = _report(s3, f"watch__{run['dag_run_id']}", "watch-data")
    rows = {row["scan_id"]: row for row in report["scans"]}
    assert {scan: (row["status"], row["new"]) for scan, row in rows.items()} == {
        "sub-01_ses-1": ("skipped_done", False),
        "sub-02": ("skipped_done", False),
        "sub-03_ses-1": ("succeeded", True),
    }
    assert report["summary"]["new_scans"] == 1 and report["summary"]["submitted"] == 1
    started = api.run(run["dag_run_id"], "ndmg_schedule_watch")["start_date"]
    from datetime import datetime

    assert datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() >= last_upload + 15 - 2  # after the quiet time

    time.sleep(25)  # longer than the quiet time: the burst made one run, not one per object
    assert len(api.runs("ndmg_schedule_watch")) == 1
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0)  # all taken
    assert cli("schedule", "remove", "watch") == 0


@pytest.mark.slow
def test_a_scheduled_run_that_cannot_start_its_participant_run_fails_and_gives_the_lease_back(cli, live_airflow, s3, tmp_path):
    """ndmg_participant paused: the schedule's run fails at once (it would wait for ever),
    and the lease it took for the run that never started is released, so other runs of the
    output are not refused for a day."""
    from conftest import wait_for
    from datasets import put_phantoms

    put_phantoms(s3, tmp_path, "paused-data", "phantoms")
    api = _api(live_airflow)
    flags = ["--bucket", "paused-data", "--bidsdir", "phantoms", "--pipeline", "lite", "--backend", "local"]
    assert cli("schedule", "add", "stuck", *flags, "--when", "@yearly") == 0
    assert wait_for(lambda: api.dag("ndmg_schedule_stuck") is not None, timeout=120)
    api.set_paused("ndmg_participant", True)
    try:
        run = api.trigger({}, dag_id="ndmg_schedule_stuck")
        assert wait_for(lambda: _finished(api, "ndmg_schedule_stuck", run), timeout=240)
    finally:
        api.set_paused("ndmg_participant", False)
    assert api.run(run, "ndmg_schedule_stuck")["state"] == "failed"
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(run, "ndmg_schedule_stuck")}
    assert states == {"wait_for_output": "success", "run_participant": "failed"}
    log = json.dumps(api.task_log(run, {"task_id": "run_participant", "map_index": -1, "try_number": 1}, "ndmg_schedule_stuck"))
    assert "ndmg_participant is paused" in log
    assert "Contents" not in s3.list_objects_v2(Bucket="paused-data", Prefix="phantoms/derivatives/ndmg/.ndmg-lease.json")
    assert cli("schedule", "remove", "stuck") == 0
