"""Schedules as data: "keep this dataset processed", said once, without writing a DAG.

A schedule is a record: its name, the params of the dataset's runs (exactly what the
trigger form of ``ndmg_participant`` takes, checked as Airflow checks a trigger) and when
to run: a cron expression or preset (``@daily``, ``0 3 * * *``) or ``new scans`` (an SQS
queue that S3 notifies of the dataset's uploads; a run starts once the uploads have been
quiet for ``quiet_minutes``).

The records live in one Airflow Variable, ``ndmg_schedules`` (a JSON object, name ->
record): a deployment already keeps such data there, ``ndmg_cloud schedule`` edits it
through the same REST API it triggers runs with (so it works wherever the CLI does,
without write access to the DAG folder), and Airflow's roles decide who may edit it (``op``
and ``admin``). ``dags/ndmg_schedules.py`` turns each
good record into a DAG of its own; ``dags/ndmg_schedule_errors.py`` shows the bad ones as
one import error naming each record and field, so one bad record stops only itself.

No Airflow here: the DAG factory is ``orchestration/schedule_dags.py``.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ndmg_cloud.core.layout import S3Location
from ndmg_cloud.participant.params import PARAM_SCHEMAS, PATTERN_RULES, ParamError, check_conf_keys, check_options, check_patterns, resolve

VARIABLE = "ndmg_schedules"  # the Airflow Variable holding every record
DAG_ID_PREFIX = "ndmg_schedule_"  # each schedule's DAG: ndmg_schedule_<name>
NEW_SCANS = "new scans"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
NAME_RULE = "1-50 lowercase letters, digits, '_' and '-', starting with a letter or digit"
# Airflow's cron presets that repeat (its @once and @continuous are not schedules of a dataset)
PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}
DEFAULT_QUIET_MINUTES = 5.0
MAX_QUIET_MINUTES = 11 * 60  # the uploads' messages stay hidden that long, and SQS hides one 12 h at most
SQS_QUEUE_URL = re.compile(r"^https?://[A-Za-z0-9.:-]+(/[0-9]{12}|/[A-Za-z0-9_-]+)?/[A-Za-z0-9_-]{1,80}(\.fifo)?$")
FIELDS = ("params", "when", "quiet_minutes", "queue", "start")


class ScheduleError(ValueError):
    """A record that cannot be a schedule: the message names the record, the field and the fix."""

    def __init__(self, name: str, field_name: str, why: str):
        super().__init__(f"schedule {name!r}, field {field_name!r}: {why}")
        self.name, self.field = name, field_name


@dataclass(frozen=True)
class NewScans:
    """Run when new scans land: the SQS queue S3 notifies of the dataset's uploads, and how
    long the uploads must be quiet before a run starts (a subject arrives as many objects)."""

    queue: str
    quiet_minutes: float = DEFAULT_QUIET_MINUTES


@dataclass(frozen=True)
class Schedule:
    name: str
    params: dict[str, Any]  # the trigger conf of its runs: only what the record sets
    input_root: S3Location  # the dataset, as its runs resolve it
    cron: str | None = None  # a cron expression or preset; None when it runs on new scans
    new_scans: NewScans | None = None
    start: datetime | None = None  # no run before it (ndmg_cloud schedule add: when it was added)

    @property
    def dag_id(self) -> str:
        return dag_id_of(self.name)

    @property
    def dataset(self) -> str:
        """The dataset's location, s3://bucket/bidsdir/."""
        return self.input_root.uri()

    @property
    def when(self) -> str:
        return self.cron or NEW_SCANS

    def describe(self) -> str:
        if self.new_scans:
            return f"when new scans land (after {self.new_scans.quiet_minutes:g} quiet minutes)"
        return str(self.cron)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"params": self.params, "when": self.when}
        if self.start:
            record["start"] = self.start.isoformat(timespec="seconds")
        if self.new_scans:
            record.update(queue=self.new_scans.queue, quiet_minutes=self.new_scans.quiet_minutes)
        return record


def dag_id_of(name: str) -> str:
    """The DAG of the schedule ``name``."""
    return DAG_ID_PREFIX + name


def participant_run_id(schedule_name: str, run_id: str) -> str:
    """The ndmg_participant run a schedule's run starts: named after both, so each tells
    the other (and a retry finds the run it started)."""
    return f"{schedule_name}__{run_id}"


def parse(name: str, record: Any) -> Schedule:
    """One record as a Schedule, or a ScheduleError naming the record and its bad field."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ScheduleError(str(name), "name", f"{name!r} is not a schedule name: use {NAME_RULE}")
    if not isinstance(record, dict):
        raise ScheduleError(name, "record", f"a record is a JSON object with {', '.join(FIELDS)}; found {type(record).__name__}")
    for key in record:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ScheduleError(name, str(key), f"unknown field{hint} A record has {', '.join(FIELDS)}")
    params = record.get("params")
    if not isinstance(params, dict):
        raise ScheduleError(
            name, "params", 'the params of the dataset\'s runs, as the trigger form takes them, e.g. {"bucket": "lab-data"}'
        )
    check_params(name, params)
    try:  # what a run refuses once it starts (a local jobdir for Batch, pilots on the local backend ...)
        input_root = resolve(params, "schedule-check").input_root
    except ParamError as err:
        raise ScheduleError(name, "params", str(err)) from None
    if params.get("force"):
        raise ScheduleError(
            name,
            "params.force",
            "force=true would run every scan again at every run of the schedule: leave it out (a run skips only scans done by the same code and options)",
        )
    when = record.get("when")
    if not isinstance(when, str) or not when.strip():
        raise ScheduleError(
            name, "when", f"say when to run: a cron expression (0 3 * * *), a preset ({', '.join(PRESETS)}) or {NEW_SCANS!r}"
        )
    when = " ".join(when.split())
    start = _start(name, record.get("start"))
    if when.lower() in (NEW_SCANS, "new-scans"):
        return Schedule(name, dict(params), input_root, new_scans=_new_scans(name, record), start=start)
    for key in ("queue", "quiet_minutes"):
        if key in record:
            raise ScheduleError(name, key, f"only a {NEW_SCANS!r} schedule has a {key}; this one runs at {when!r}")
    return Schedule(name, dict(params), input_root, cron=check_cron(name, when), start=start)


def _start(name: str, value: Any) -> datetime | None:
    """No run before this time: a new cron schedule's first run is its next time, not the
    one just missed (which Airflow would start at once)."""
    if value is None:
        return None
    try:
        start = datetime.fromisoformat(str(value))
    except ValueError:
        start = None
    if start is None or start.tzinfo is None:
        raise ScheduleError(name, "start", f"{value!r}: give an ISO 8601 time with its zone, e.g. 2026-12-07T19:00:00+00:00")
    return start.astimezone(UTC)


def check_params(name: str, params: dict[str, Any]) -> None:
    """The checks a trigger of ndmg_participant gets: each param against its JSON schema as
    Airflow's Param validates it (a missing value takes the schema's default), then the ones
    the api-server adds (unknown keys, patterns, pipeline options)."""
    import jsonschema

    try:
        check_conf_keys(params)
    except ParamError as err:
        bad = next((key for key in params if key not in PARAM_SCHEMAS), "params")
        raise ScheduleError(name, f"params.{bad}", str(err)) from None
    for param, schema in PARAM_SCHEMAS.items():
        value = params.get(param, schema.get("default"))
        if param not in params and "default" not in schema:
            raise ScheduleError(name, f"params.{param}", f"Invalid input for param {param}: No value passed and Param has no default value")
        try:
            jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        except jsonschema.ValidationError as err:
            rule = f" ({param} must be {PATTERN_RULES[param]})" if err.validator == "pattern" and param in PATTERN_RULES else ""
            raise ScheduleError(name, f"params.{param}", f"Invalid input for param {param}: {err.message}{rule}") from None
    try:
        check_patterns(params)
        check_options(params)
    except ParamError as err:  # its message starts with the param it refuses
        named = re.match(r"(?:option )?([a-z_]+)\b", str(err))
        refused = named.group(1) if named and named.group(1) in PARAM_SCHEMAS else None
        raise ScheduleError(name, f"params.{refused}" if refused else "params", str(err)) from None


def check_cron(name: str, when: str) -> str:
    from croniter import croniter

    if when in PRESETS:
        return when
    if when.startswith("@"):
        raise ScheduleError(
            name,
            "when",
            f"{when!r} is not a preset of a repeating schedule: use one of {', '.join(PRESETS)}, a cron expression or {NEW_SCANS!r}",
        )
    if len(when.split()) != 5 or not croniter.is_valid(when):
        raise ScheduleError(
            name,
            "when",
            f"{when!r} is not a cron expression: give five fields, minute hour day month weekday (0 3 * * * is 03:00 UTC daily)",
        )
    return when


def _new_scans(name: str, record: dict[str, Any]) -> NewScans:
    queue = record.get("queue")
    if not isinstance(queue, str) or not SQS_QUEUE_URL.match(queue.strip()):
        raise ScheduleError(
            name,
            "queue",
            f"{queue!r} is not an SQS queue URL: give the URL of the queue S3 notifies of the dataset's uploads "
            "(README: New scans processed when they land), e.g. https://sqs.us-east-1.amazonaws.com/123456789012/ndmg-new-scans",
        )
    quiet = record.get("quiet_minutes", DEFAULT_QUIET_MINUTES)
    if isinstance(quiet, bool) or not isinstance(quiet, (int, float)) or not 0 < quiet <= MAX_QUIET_MINUTES:
        raise ScheduleError(
            name,
            "quiet_minutes",
            f"{quiet!r}: give the minutes of quiet after the last upload before a run starts, more than 0 and at most {MAX_QUIET_MINUTES}",
        )
    return NewScans(queue.strip(), float(quiet))


@dataclass
class Records:
    """Every record of the Variable: the schedules, and the records that are not."""

    schedules: list[Schedule]
    problems: list[ScheduleError]
    unreadable: str | None = None  # the Variable as a whole is not a JSON object: why

    def messages(self) -> list[str]:
        return ([self.unreadable] if self.unreadable else []) + [str(p) for p in self.problems]


def read(text: str | None) -> Records:
    """All records from the Variable's text (None: no Variable, no schedule). A bad record
    is set aside with its reason; the others stand."""
    if text is None or not text.strip():
        return Records([], [])
    try:
        data = json.loads(text)
    except ValueError as err:
        return Records(
            [],
            [],
            f"the Variable {VARIABLE} is not JSON ({err}): fix it in Admin > Variables, or remove and add the schedules with ndmg_cloud schedule",
        )
    if not isinstance(data, dict):
        return Records(
            [], [], f"the Variable {VARIABLE} is a JSON {type(data).__name__}, not an object of name -> record: fix it in Admin > Variables"
        )
    return of_records(data)


def of_records(data: dict[str, Any]) -> Records:
    """All records of the Variable's JSON object (name -> record)."""
    schedules, problems = [], []
    for name, record in data.items():
        try:
            schedules.append(parse(name, record))
        except ScheduleError as err:
            problems.append(err)
    return _one_watcher_per_queue(Records(schedules, problems))


def _one_watcher_per_queue(records: Records) -> Records:
    """A queue read by two schedules would lose each one's notifications to the other (each
    takes every message it reads): the second record on a queue is refused."""
    owner: dict[str, str] = {}
    kept = []
    for schedule in records.schedules:
        queue = schedule.new_scans.queue if schedule.new_scans else None
        if queue and queue in owner:
            records.problems.append(
                ScheduleError(
                    schedule.name,
                    "queue",
                    f"{queue} is watched by schedule {owner[queue]!r} already: give each 'new scans' schedule a queue of its own "
                    "(S3 can notify one queue per dataset prefix)",
                )
            )
            continue
        if queue:
            owner[queue] = schedule.name
        kept.append(schedule)
    records.schedules = kept
    return records
