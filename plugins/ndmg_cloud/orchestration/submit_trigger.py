"""``ScanSubmitTrigger``: a scan's whole task in the triggerer (the triggerer route, ``route.py``).

The scheduler defers each scan task straight to the triggerer (``start_from_trigger``); no
worker starts. The trigger:

1. reads and checks what a worker would: its sealed item (``release_scans``' items file or
   ``plan_scans``' list, at its map index) and the run's configuration (``discover``'s sealed
   XCom), then the scan's sealed job spec, and builds the SubmitJob request from the run's
   configuration and the scan id alone (``scanjob.prepare_scan``); a refusal fails the task
   for good, with the reason;
2. submits the job exactly once per try, whatever the crash point: its record (an object in
   the run's job dir, ``jobspec.submission_uri``, sealed for this task instance) says before
   the call that a call began and, right after it, which job it made. It is read and written
   on S3 by the trigger itself, not as an XCom: every XCom request of a triggerer's triggers
   goes through its supervisor one at a time, and two per scan before its SubmitJob held
   1,000 scans to about 15 a second. A trigger that runs again in the same try (its triggerer
   died; another took over) reattaches to the recorded job; if only the intent is recorded,
   it looks for the job by its name (unique to scan and run), waiting out the earlier call's
   window (``scanjob.SUBMIT_WINDOW_SECONDS``) before it concludes there is none. A later
   try (an Airflow retry or a Clear) reattaches to the earlier try's job while that job is
   still live, and submits afresh once it has ended. Every Batch call waits for its turn in
   the triggerer's API budget (``budget.py``);
3. waits as ``ScanJobTrigger`` does (shared poller, stuck-job watchdog, the run's lease kept
   alive), and meanwhile, once the triggerer's burst of submissions is over
   (``publisher.py``), has XCom ``batch_job`` and the job's Batch link written; a job that
   ends first ends the task with them. A SUCCEEDED job ends the task here; anything else
   resumes it on a worker, where retries and the reason apply.

A user who marks the task failed (or clears it) while its SubmitJob is unanswered still gets
the job that call makes terminated, as soon as the answer comes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from airflow.providers.amazon.aws.links.base_aws import BaseAwsLink
from airflow.providers.amazon.aws.links.batch import BatchJobDetailsLink
from airflow.triggers.base import TaskSuccessEvent, TriggerEvent

from ndmg_cloud.core.s3 import put_json, read_if_present
from ndmg_cloud.orchestration.budget import ApiBudget, api_budget, pace
from ndmg_cloud.orchestration.heartbeat import LeaseRef
from ndmg_cloud.orchestration.publisher import publisher
from ndmg_cloud.orchestration.scanitems import ScanItems  # and so on serde's allow-list here too
from ndmg_cloud.orchestration.scanjob import SUBMIT_CONFIG, SUBMIT_WINDOW_SECONDS, PreparedScan, job_named_since, prepare_scan
from ndmg_cloud.orchestration.taskids import DISCOVER, JOB_XCOM_KEY, PILOT_SCAN, PLAN_SCANS, RELEASE_SCANS
from ndmg_cloud.orchestration.triggers import REFUSED, ScanJobEvent, ScanJobTrigger, _partition
from ndmg_cloud.participant.jobs import SubmittedJob, terminate_job
from ndmg_cloud.participant.jobspec import check_submission, submission_uri
from ndmg_cloud.participant.runplan import PILOT, RELEASED
from ndmg_cloud.participant.seal import BrokenSeal, NoSealKey, seal, unseal

LIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")


@dataclass(frozen=True)
class SubmitRecord:
    """What a try of a scan task has done about its SubmitJob (``jobspec.submission_uri``)."""

    try_number: int
    call_started: float  # epoch seconds the (last) call began
    job_id: str = ""  # the job the call made, once its answer came
    call_ended: bool = False  # the call ended without a job (an error): nothing is in flight

    def sealed(self, where: str) -> dict[str, Any]:
        return seal(asdict(self), where)

    @classmethod
    def read(cls, value: Any, where: str) -> SubmitRecord | None:
        """The record, if there is one and its seal holds (a rewritten one is ignored, said)."""
        if value is None:
            return None
        body = unseal(value, where, "the SubmitJob record")
        return cls(int(body["try_number"]), float(body["call_started"]), str(body.get("job_id") or ""), bool(body.get("call_ended")))

    def in_flight(self, now: float) -> float:
        """Seconds for which this record's call may still create a job."""
        return 0.0 if self.call_ended or self.job_id else max(0.0, self.call_started + SUBMIT_WINDOW_SECONDS - now)


@dataclass(frozen=True)
class _Clients:
    s3: Any
    batch: Any  # lookups, DescribeJobs, TerminateJob (adaptive retries)
    submit: Any  # SubmitJob only: bounded (scanjob.SUBMIT_CONFIG)
    region: str | None


_CLIENTS: dict[tuple[asyncio.AbstractEventLoop, str | None, str | None], _Clients] = {}


def _push(ti: Any, *, key: str, value: Any) -> None:
    """XCom ``key`` of the task instance (``ti.xcom_push`` reads the operator, which the
    triggerer holds only in its serialized form: Airflow 3.3.2)."""
    from airflow.sdk.execution_time.xcom import XCom

    XCom.set(key=key, value=value, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=ti.map_index)


def _make_clients(aws_conn_id: str | None, region_name: str | None, budget: ApiBudget) -> _Clients:
    from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    from ndmg_cloud.orchestration.clients import RETRIES

    batch = BatchClientHook(aws_conn_id=aws_conn_id, region_name=region_name, config=Config(retries=RETRIES))
    submit = BatchClientHook(aws_conn_id=aws_conn_id, region_name=region_name, config=SUBMIT_CONFIG)
    # every Batch request of both, the SDK's retries included, waits for its turn (budget.py)
    return _Clients(
        S3Hook(aws_conn_id=aws_conn_id).get_conn(), pace(batch.client, budget), pace(submit.client, budget), batch.conn_region_name
    )


_MAKING: dict[tuple[asyncio.AbstractEventLoop, str | None, str | None], asyncio.Future[_Clients]] = {}
_PULLING: dict[tuple[str, str, str], asyncio.Future[Any]] = {}


async def _run_xcom(ti: Any, task_id: str) -> Any:
    """The XCom of a run's unmapped task ``task_id`` (``release_scans``' items, ``discover``'s
    configuration), one request for all the triggers of that run that ask at the same time:
    a triggerer starting 1,000 scans otherwise sends its supervisor 2,000 identical requests,
    one at a time, before the first SubmitJob. Nothing is kept once the answer is in: a
    trigger that asks later asks again (a cleared run may have new items)."""
    key = (ti.dag_id, ti.run_id, task_id)
    while (pending := _PULLING.get(key)) is not None:
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            if not pending.cancelled():
                raise  # this trigger was cancelled
            # the trigger that asked was cancelled: ask again
    future = _PULLING[key] = asyncio.get_running_loop().create_future()
    try:
        # map_indexes=-1: the task is unmapped; without it the SDK asks for a sequence slice,
        # a request the triggerer's supervisor cannot answer (Airflow 3.3.2)
        value = ti.xcom_pull(task_ids=task_id, map_indexes=-1)
    except Exception as err:
        future.set_exception(err)
        future.exception()  # retrieved: no "never retrieved" warning when no trigger waited
        raise
    except BaseException:
        future.cancel()
        raise
    else:
        future.set_result(value)
        return value
    finally:
        del _PULLING[key]


async def _clients(aws_conn_id: str | None, region_name: str | None) -> _Clients:
    """This triggerer's clients (boto3 clients are thread-safe: one set per connection),
    paced by its Batch API budget, made once: the triggers started together wait for the first one's (1,000 triggers each
    making their own kept the triggerer busy for minutes)."""
    key = (asyncio.get_running_loop(), aws_conn_id, region_name)  # the loop: its budget paces them
    if key in _CLIENTS:
        return _CLIENTS[key]
    making = _MAKING.get(key)
    if making is None:
        making = _MAKING[key] = asyncio.ensure_future(asyncio.to_thread(_make_clients, aws_conn_id, region_name, api_budget()))
    try:
        clients = await asyncio.shield(making)
    except Exception:
        _MAKING.pop(key, None)  # the next trigger tries again
        raise
    _CLIENTS[key] = clients
    return clients


SUBMIT_THREADS = 8  # SubmitJob calls in flight at once, per triggerer (the budget paces them)


@functools.cache
def _submitter() -> concurrent.futures.ThreadPoolExecutor:
    """The threads SubmitJob calls are made in (not asyncio's default ones, which the scans
    still preparing keep busy with their S3 reads)."""
    return concurrent.futures.ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="ndmg-submit")


class ScanSubmitTrigger(ScanJobTrigger):
    """See the module docstring. Its kwargs are the task's static settings; the scan comes
    from the task instance it runs for."""

    def __init__(
        self,
        *,
        role: str,
        poll_interval: int = 30,
        max_polls: int = 4200,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
    ) -> None:
        super().__init__(
            job_id="",
            job_queue="",
            runnable_timeout=30 * 60,
            poll_interval=poll_interval,
            max_polls=max_polls,
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            end_on_success=True,
        )
        self.role = role
        # a cancel during SubmitJob: whichever of the call's thread and the cancel comes second
        # terminates the job the call made (the lock orders them)
        self._call_lock = threading.Lock()
        self._cancelled = False
        self._made = ""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{self.__class__.__module__}.{self.__class__.__qualname__}",
            {
                "role": self.role,
                "poll_interval": self.poll_interval,
                "max_polls": self.max_polls,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
            },
        )

    def _stop(self) -> None:
        """Terminate this scan's job, or have a SubmitJob still unanswered terminate the job it makes."""
        with self._call_lock:
            self._cancelled = True
            self.job_id = self.job_id or self._made
        if self.job_id:
            super()._stop()

    async def _events(self) -> AsyncIterator[TriggerEvent]:  # check, submit once, then wait
        ti: Any = self.task_instance  # the triggerer's RuntimeTaskInstance (start_from_trigger)
        if ti is None:
            raise RuntimeError("ScanSubmitTrigger runs only for a task started from the triggerer (start_from_trigger)")
        clients = await _clients(self.aws_conn_id, self.region_name)
        writer = publisher(_push)
        with writer.submitting():
            try:
                scan, record = await self._prepare(ti, clients)
            except (ValueError, NoSealKey) as err:  # BrokenSeal, a spec that does not read, no seal key
                yield TriggerEvent(ScanJobEvent(REFUSED, "", f"scan task {ti.map_index}: nothing submitted: {err}").payload())
                return
            self.scan_id, self.job_queue = scan.task.scan_id, scan.submission.job_queue
            self.runnable_timeout = scan.config.runnable_timeout_minutes * 60
            self.lease = LeaseRef.of_run(scan.config)
            self.job_id = await self._submit_once(ti, clients, scan, record)
        # the XComs that say which job the scan has are written once the triggerer's burst of
        # submissions is over (publisher.py); the job is polled meanwhile
        writes = writer.publish(ti, self._job_xcoms(clients))
        async for event in self._wait():
            left = await writes.take_back()
            if isinstance(event, TaskSuccessEvent):  # the supervisor writes them as it ends the task
                # (as JSON text: readers decode it, jobs.xcom_json); the link's parts serve a
                # worker's finalize(), which no worker runs (the UI reads _link_<class>):
                # each XCom costs the supervisor's loop a write as it ends the task
                left.pop(BatchJobDetailsLink.key, None)
                event.xcoms = {**left, **(event.xcoms or {})}
            else:  # the task resumes on a worker
                for key, value in left.items():
                    _push(ti, key=key, value=value)
            yield event

    def _job_xcoms(self, clients: _Clients) -> dict[str, Any]:
        """XCom ``batch_job`` and the job's Batch link (the link the Airflow UI shows on the
        task, while the job runs)."""
        xcoms: dict[str, Any] = {}
        xcoms[JOB_XCOM_KEY] = SubmittedJob(self.scan_id, self.job_id).to_xcom()
        if clients.region:
            # what the provider's link reads, and the URL the api-server shows (it reads
            # _link_<class>, which a worker's finalize() writes: no worker runs this task)
            link = BatchJobDetailsLink()
            parts = {
                "region_name": clients.region,
                "aws_domain": BaseAwsLink.get_aws_domain(_partition(clients.region)),
                "job_id": self.job_id,
            }
            xcoms[link.key] = parts
            xcoms[link.xcom_key] = link.format_link(**parts)
        return xcoms

    async def _prepare(self, ti: Any, clients: _Clients) -> tuple[PreparedScan, SubmitRecord | None]:
        """The checked scan and its SubmitJob record, read in one thread: 1,000 triggers that
        each queued their reads one by one in asyncio's few threads would all wait for every
        scan's first read before any could submit."""
        items = await _run_xcom(ti, PLAN_SCANS if self.role == PILOT else RELEASE_SCANS)
        discovery = await _run_xcom(ti, DISCOVER)

        def checked() -> tuple[PreparedScan, SubmitRecord | None]:
            if items is None or not 0 <= ti.map_index < len(items):
                item = None
            elif isinstance(items, ScanItems):
                item = items.item(ti.map_index, clients.s3)  # this triggerer's client, not a new one per scan
            else:
                item = items[ti.map_index]
            scan = prepare_scan(clients.s3, item, discovery, ti.run_id, self.role, ti.map_index)
            return scan, self._read_record(ti, clients, scan)

        return await asyncio.to_thread(checked)

    def _where(self, ti: Any) -> str:
        return f"{ti.run_id}:submission:{ti.task_id}:{ti.map_index}"

    def _read_record(self, ti: Any, clients: _Clients, scan: PreparedScan) -> SubmitRecord | None:
        """The scan task's record, if there is one and its seal holds (else ignored, said)."""
        uri = submission_uri(scan.config, scan.task.scan_id)
        raw = read_if_present(clients.s3, uri)
        try:
            return None if raw is None else SubmitRecord.read(json.loads(raw), self._where(ti))
        except (BrokenSeal, ValueError) as err:
            self.log.warning("SubmitJob record %s: %s: ignoring it", uri, err)
            return None

    def _store_record(self, ti: Any, clients: _Clients, scan: PreparedScan, record: SubmitRecord) -> None:
        put_json(clients.s3, submission_uri(scan.config, scan.task.scan_id), record.sealed(self._where(ti)))

    async def _write_record(self, ti: Any, clients: _Clients, scan: PreparedScan, record: SubmitRecord) -> None:
        await asyncio.to_thread(self._store_record, ti, clients, scan, record)

    async def _submit_once(self, ti: Any, clients: _Clients, scan: PreparedScan, record: SubmitRecord | None) -> str:
        """The job of this try: the one its record names, one an earlier call of this try
        made, a still-live one of an earlier try, or a new one (see the module docstring)."""
        name = scan.submission.job_name
        since: float | None = None
        if record is not None and record.job_id:
            if record.try_number == ti.try_number:
                self.log.info(
                    "Reattaching scan %s to Batch job %s, submitted by this try: not submitting again", self.scan_id, record.job_id
                )
                return record.job_id
            status = await self._status(clients, record.job_id)
            if status in LIVE:
                self.log.info(
                    "Batch job %s of try %d is still %s: this try waits for it, not submitting again",
                    record.job_id,
                    record.try_number,
                    status,
                )
                await self._write_record(ti, clients, scan, SubmitRecord(ti.try_number, record.call_started, record.job_id))
                return record.job_id
        elif record is not None and record.try_number == ti.try_number:
            since = record.call_started
            found = await self._job_named_since(clients, scan, since)
            wait = record.in_flight(time.time())
            if found is None and wait > 0:
                self.log.info(
                    "An earlier run of this trigger began submitting scan %s and died during the call, which may still create "
                    "the job for %.0f s; waiting for that before looking for job %s again",
                    self.scan_id,
                    wait,
                    name,
                )
                await asyncio.sleep(wait)
                found = await self._job_named_since(clients, scan, since)
            if found:
                self.log.info(
                    "Batch job %s carries this scan's job name %s: an earlier run of this trigger submitted it; reattaching", found, name
                )
                await self._write_record(ti, clients, scan, SubmitRecord(ti.try_number, since, found))
                return found
        return await self._submit(ti, clients, scan, since)

    async def _submit(self, ti: Any, clients: _Clients, scan: PreparedScan, since: float | None) -> str:
        check_submission(scan.config, scan.submission, scan.task.scan_id, scan.spec_sha256)
        now = time.time()

        def call() -> str:  # the paced client waits for its turn in this thread, right before sending
            self._store_record(ti, clients, scan, SubmitRecord(ti.try_number, since or now))  # the intent
            job_id = str(clients.submit.submit_job(**scan.submission.payload())["jobId"])
            with self._call_lock:
                self._made, stopped = job_id, self._cancelled
            if stopped:  # the user stopped the task during the call: stop what it made
                terminate_job(clients.batch, job_id, "the Airflow task was stopped while its SubmitJob was unanswered")
            # written here, not on the event loop: see ScanJobTrigger._say
            self.log.info("Batch job %s submitted for scan %s (job spec %s)", job_id, scan.task.scan_id, scan.job_spec_uri)
            return job_id

        try:
            # its own threads: a SubmitJob does not queue behind the S3 reads of scans still preparing;
            # in this trigger's context, so that its log line goes to this scan's trigger log
            in_context = functools.partial(contextvars.copy_context().run, call)
            job_id = await asyncio.shield(asyncio.get_running_loop().run_in_executor(_submitter(), in_context))
        except Exception as err:
            with contextlib.suppress(Exception):  # unrecorded, a rerun only waits out the call's window
                await self._write_record(ti, clients, scan, SubmitRecord(ti.try_number, since or now, call_ended=True))
            raise RuntimeError(f"could not submit scan {scan.task.scan_id} to job queue {scan.submission.job_queue!r}: {err}") from err
        # in the submitting threads, not behind the S3 reads of the scans still preparing; a
        # trigger that dies before this write finds the job by its name (the intent says a call began)
        made = SubmitRecord(ti.try_number, since or now, job_id)
        try:
            await asyncio.get_running_loop().run_in_executor(_submitter(), self._store_record, ti, clients, scan, made)
        except Exception as err:
            self.log.warning(
                "Could not record Batch job %s of scan %s (%s): a rerun of this trigger finds it by its name",
                job_id,
                scan.task.scan_id,
                err,
            )
        return job_id

    async def _job_named_since(self, clients: _Clients, scan: PreparedScan, since: float) -> str | None:
        find = functools.partial(job_named_since, clients.batch, scan.submission.job_queue, scan.submission.job_name, since)
        return await asyncio.to_thread(find)

    async def _status(self, clients: _Clients, job_id: str) -> str | None:
        jobs = (await asyncio.to_thread(clients.batch.describe_jobs, jobs=[job_id])).get("jobs", [])
        return str(jobs[0].get("status")) if jobs else None


def submit_trigger_args(task_id: str, *, poll_interval: int, max_polls: int, aws_conn_id: str | None) -> Any:
    """The ``start_trigger_args`` of a scan task on the triggerer route."""
    from airflow.triggers.base import StartTriggerArgs

    return StartTriggerArgs(
        trigger_cls=f"{ScanSubmitTrigger.__module__}.{ScanSubmitTrigger.__qualname__}",
        trigger_kwargs={
            "role": PILOT if task_id == PILOT_SCAN else RELEASED,
            "poll_interval": poll_interval,
            "max_polls": max_polls,
            "aws_conn_id": aws_conn_id,
        },
        next_method="execute_complete",
        next_kwargs=None,
        timeout=None,
    )
