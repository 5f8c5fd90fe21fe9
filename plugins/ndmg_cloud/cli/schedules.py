"""``ndmg_cloud schedule add|list|pause|resume|remove``: keep a dataset processed.

The records are the Airflow Variable ``ndmg_schedules`` (participant/schedules.py says
why there), edited through the REST API the other commands use; each record becomes the
DAG ``ndmg_schedule_<name>`` at Airflow's next parse of dags/ndmg_schedules.py. Pausing is
Airflow's own switch on that DAG, so the UI and this command always agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from ndmg_cloud.cli.airflowapi import Airflow, CliError
from ndmg_cloud.orchestration.taskids import WAIT_FOR_OUTPUT
from ndmg_cloud.participant.schedules import VARIABLE, Records, Schedule, dag_id_of, of_records, parse, participant_run_id

DESCRIPTION = "ndmg-cloud schedules (name -> record): edit with `ndmg_cloud schedule`; each record is the DAG ndmg_schedule_<name>"
PARSE_NOTE = (
    "Airflow makes its DAG at its next parse of dags/ndmg_schedules.py ([dag_processor] min_file_process_interval, 30 s by default)"
)


def _stored(airflow: Airflow) -> tuple[dict[str, Any], bool]:
    """The records as stored (name -> record, good or bad), and whether the Variable exists."""
    text = airflow.variable(VARIABLE)
    if text is None:
        return {}, False
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CliError(
            f"the Variable {VARIABLE} on Airflow at {airflow.url} is not JSON ({err}): fix or delete it in Admin > Variables"
        ) from None
    if not isinstance(data, dict):
        raise CliError(
            f"the Variable {VARIABLE} on Airflow at {airflow.url} is not a JSON object of name -> record: fix or delete it in Admin > Variables"
        )
    return data, True


def _store(airflow: Airflow, records: dict[str, Any], exists: bool) -> None:
    airflow.set_variable(VARIABLE, json.dumps(records, indent=2, sort_keys=True), DESCRIPTION, exists)


def add(airflow: Airflow, name: str, record: dict[str, Any], replace: bool, out: Any = None) -> Schedule:
    """Check the record as a trigger is checked, then store it (``replace``: over one of that name)."""
    out = out or sys.stdout
    schedule = parse(name, record)  # a ScheduleError names the field and what to do
    records, exists = _stored(airflow)
    replacing = name in records
    if replacing and not replace:
        raise CliError(
            f"schedule {name!r} exists: `ndmg_cloud schedule add {name} --replace ...` replaces it, `ndmg_cloud schedule remove {name}` removes it"
        )
    records[name] = schedule.to_record()
    clash = [p for p in of_records(records).problems if p.name == name and p.field == "queue"]
    if clash:
        raise clash[0]
    _store(airflow, records, exists)
    dag = airflow.dag(schedule.dag_id)
    if not replacing and dag and dag.get("is_paused"):  # removed, then added again: on again (a replaced one keeps its switch)
        airflow.set_paused(schedule.dag_id, False)
    out.write(f"schedule {name}: {schedule.params.get('pipeline') or 'm2g'} on {schedule.dataset} {schedule.describe()}\n")
    out.write(f"its DAG is {schedule.dag_id}: {PARSE_NOTE}; `ndmg_cloud schedule list` shows its next run\n")
    return schedule


def remove(airflow: Airflow, name: str, out: Any = None) -> None:
    out = out or sys.stdout
    records, exists = _stored(airflow)
    if name not in records:
        raise CliError(f"no schedule {name!r} on Airflow at {airflow.url}: `ndmg_cloud schedule list` shows them")
    del records[name]
    _store(airflow, records, exists)
    dag_id = dag_id_of(name)
    if airflow.dag(dag_id):  # no run may start before Airflow drops the DAG at its next parse
        airflow.set_paused(dag_id, True)
    out.write(f"schedule {name} removed; its runs' history stays in Airflow (DAG {dag_id}), their reports stay on S3\n")


def set_paused(airflow: Airflow, name: str, paused: bool, out: Any = None) -> None:
    out = out or sys.stdout
    records, _ = _stored(airflow)
    if name not in records:
        raise CliError(f"no schedule {name!r} on Airflow at {airflow.url}: `ndmg_cloud schedule list` shows them")
    dag_id = dag_id_of(name)
    if airflow.dag(dag_id) is None:
        raise CliError(
            f"Airflow has no DAG {dag_id} yet: {PARSE_NOTE}; try again then (a bad record makes none: `ndmg_cloud schedule list`)"
        )
    airflow.set_paused(dag_id, paused)
    out.write(f"schedule {name} {'paused: no run starts until `ndmg_cloud schedule resume ' + name + '`' if paused else 'resumed'}\n")


def _time(value: str | None) -> str:
    return value[:16].replace("T", " ") + " UTC" if value else "none"


def show(airflow: Airflow, report_reader: Any, out: Any = None) -> int:
    """Every schedule: when, paused or not, next run, last run, last report's summary; and
    every record that is not a schedule, with why. Returns how many records are bad."""
    out = out or sys.stdout
    records, _ = _stored(airflow)
    found: Records = of_records(records)
    if not records:
        out.write("no schedules: `ndmg_cloud schedule add NAME --bucket B --bidsdir P --when @daily` adds one\n")
        return 0
    for schedule in sorted(found.schedules, key=lambda s: s.name):
        dag = airflow.dag(schedule.dag_id)
        state = "not yet in Airflow" if dag is None else ("paused" if dag.get("is_paused") else "active")
        out.write(
            f"{schedule.name}: {schedule.params.get('pipeline') or 'm2g'} on {schedule.dataset} {schedule.describe()} ({schedule.dag_id}, {state})\n"
        )
        if dag is None:
            out.write(f"  {PARSE_NOTE}\n")
            continue
        next_run = "paused" if dag.get("is_paused") else _time(dag.get("next_dagrun_run_after"))
        if schedule.new_scans and not dag.get("is_paused"):
            next_run = f"when new scans land on {schedule.new_scans.queue}"
        out.write(f"  next run:    {next_run}\n")
        runs = airflow.runs(schedule.dag_id, limit=10)
        if not runs:
            out.write("  last run:    none yet\n")
            continue
        last = runs[0]
        out.write(f"  last run:    {_run_state(airflow, schedule, last)}, {_time(last.get('run_after'))} ({last['dag_run_id']})\n")
        out.write(f"  last report: {_last_report(schedule, runs, report_reader)}\n")
    for problem in found.problems:
        out.write(f"{problem.name}: NOT A SCHEDULE: {problem}\n")
    return len(found.problems)


def _run_state(airflow: Airflow, schedule: Schedule, run: dict[str, Any]) -> str:
    """The run's state, and why when it did not run its participant run: a run whose
    ``wait_for_output`` was skipped ends "success" in Airflow, having run nothing."""
    state = str(run["state"])
    if state not in ("success", "running"):
        return state
    tasks = {ti["task_id"]: ti.get("state") for ti in airflow.task_instances(run["dag_run_id"], schedule.dag_id)}
    if tasks.get(WAIT_FOR_OUTPUT) == "skipped":
        return f"skipped: another run held the output location (the log of its {WAIT_FOR_OUTPUT} task names it)"
    if state == "running" and tasks.get(WAIT_FOR_OUTPUT) == "deferred":
        return "running: waiting for another run to free the output location"
    return state


def _last_report(schedule: Schedule, runs: list[dict[str, Any]], report_reader: Any) -> str:
    """The summary of the newest report among the schedule's latest runs."""
    for run in runs:
        run_id = participant_run_id(schedule.name, run["dag_run_id"])
        try:
            uri, report = report_reader(run_id)
        except CliError:
            continue
        return f"{report.summary.line()} ({uri})"
    return "none yet among its latest runs"


def record_from(args: argparse.Namespace, conf: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"params": conf, "when": args.when, "start": datetime.now(UTC).isoformat(timespec="seconds")}
    if args.queue is not None:
        record["queue"] = args.queue
    if args.quiet_minutes is not None:
        record["quiet_minutes"] = args.quiet_minutes
    return record
