"""The triggerer route's trigger (``ndmg_cloud.orchestration.submit_trigger``) on its own:
its SubmitJob record, and a user's cancel that lands while SubmitJob is unanswered. The
whole route under a real triggerer is in tests/test_crash.py (``triggerer_parts``)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import greenback
import pytest
import structlog

from ndmg_cloud.orchestration import publisher as publisher_module
from ndmg_cloud.orchestration import submit_trigger
from ndmg_cloud.orchestration.scanjob import SUBMIT_WINDOW_SECONDS
from ndmg_cloud.orchestration.submit_trigger import ScanSubmitTrigger, SubmitRecord
from ndmg_cloud.orchestration.triggers import USER_ACTION_CANCEL
from ndmg_cloud.participant.jobspec import run_token
from ndmg_cloud.participant.seal import BrokenSeal


class FakeBatch:
    """SubmitJob that answers when told to; TerminateJob recorded."""

    meta = SimpleNamespace(events=SimpleNamespace(register=lambda *args, **kwargs: None))  # budget.pace: no turns here

    def __init__(self):
        self.called, self.answer = threading.Event(), threading.Event()
        self.terminated: list[str] = []

    def submit_job(self, **payload):
        self.called.set()
        assert self.answer.wait(10)
        return {"jobId": "job-made-during-the-cancel"}

    def terminate_job(self, jobId, reason):  # boto3's argument name
        self.terminated.append(jobId)


@pytest.fixture
def unanswered(monkeypatch):
    """A trigger whose SubmitJob call is on the wire, and the fake Batch that holds it."""
    monkeypatch.setattr(submit_trigger, "check_submission", lambda *args: None)
    batch = FakeBatch()
    clients = SimpleNamespace(s3=None, batch=batch, submit=batch, region=None)
    scan = SimpleNamespace(
        task=SimpleNamespace(scan_id="sub-01"),
        submission=SimpleNamespace(payload=lambda: {"jobName": "ds-sub-01-abc"}, job_queue="q", job_name="ds-sub-01-abc"),
        job_spec_uri="s3://lab/jobs/sub-01.json",
        config=None,
        spec_sha256="",
    )
    ti = SimpleNamespace(run_id="run-1", task_id="run_scan", map_index=0, try_number=1)
    trigger = ScanSubmitTrigger(role="released", aws_conn_id=None)
    monkeypatch.setattr(trigger, "_hook", lambda: SimpleNamespace(client=batch))

    trigger.records = []  # the records the trigger wrote (on S3 in a run)
    monkeypatch.setattr(trigger, "_store_record", lambda ti, clients, scan, record: trigger.records.append(record))
    return trigger, batch, clients, scan, ti


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel-before-the-answer", "answer-before-the-cancel"])
def test_a_scan_cancelled_while_its_submit_job_is_unanswered_has_its_new_job_terminated(unanswered, cancel_first):
    trigger, batch, clients, scan, ti = unanswered

    async def scenario():
        submitting = asyncio.ensure_future(trigger._submit(ti, clients, scan, None))
        called = await asyncio.to_thread(batch.called.wait, 10)
        assert called, submitting.exception() if submitting.done() else "still running"
        if cancel_first:
            submitting.cancel(USER_ACTION_CANCEL)
            trigger._stop()  # what run() does on the user's cancel
            assert batch.terminated == []  # no job yet: nothing to terminate
            batch.answer.set()
            for _ in range(100):  # the call's thread terminates what the call made
                if batch.terminated:
                    break
                await asyncio.sleep(0.05)
        else:
            batch.answer.set()
            for _ in range(100):  # the answer is in, not yet read by the trigger
                if trigger._made:
                    break
                await asyncio.sleep(0.01)
            submitting.cancel(USER_ACTION_CANCEL)
            trigger._stop()
        if cancel_first:
            with pytest.raises(asyncio.CancelledError):
                await submitting
        else:
            await asyncio.gather(submitting, return_exceptions=True)  # it may have returned before the cancel

    asyncio.run(scenario())
    assert batch.terminated == ["job-made-during-the-cancel"]  # once, by whichever came second
    assert trigger.records[0].job_id == "" and not trigger.records[0].call_ended  # the intent, before the call


def test_a_submit_record_holds_only_where_it_was_sealed(monkeypatch):
    monkeypatch.setenv("NDMG_SEAL_KEY", "k" * 40)
    record = SubmitRecord(try_number=2, call_started=1000.0)
    sealed = record.sealed("run-1:submission:run_scan:3")
    assert SubmitRecord.read(sealed, "run-1:submission:run_scan:3") == record
    with pytest.raises(BrokenSeal):
        SubmitRecord.read(sealed, "run-1:submission:run_scan:4")  # another scan's task
    with pytest.raises(BrokenSeal):
        SubmitRecord.read({**sealed, "job_id": "someone-elses-job"}, "run-1:submission:run_scan:3")
    assert record.in_flight(1010.0) == SUBMIT_WINDOW_SECONDS - 10  # the call may still make a job
    assert SubmitRecord(2, 1000.0, call_ended=True).in_flight(1010.0) == 0
    assert SubmitRecord(2, 1000.0, job_id="j").in_flight(1010.0) == 0


def test_a_scans_submit_record_lives_in_its_runs_job_dir_and_only_its_own_task_reads_it(monkeypatch, s3):
    """The record goes to S3 from the trigger's own threads (no request through the
    triggerer's supervisor before SubmitJob); a record sealed for another scan task, or one
    that does not read, is ignored, said, as if there were none."""
    monkeypatch.setenv("NDMG_SEAL_KEY", "k" * 40)
    s3.create_bucket(Bucket="lab")
    config = SimpleNamespace(jobdir="s3://lab/out/jobs/run-1/", run_id="run-1")
    scan = SimpleNamespace(task=SimpleNamespace(scan_id="sub-01"), config=config)
    other = SimpleNamespace(task=SimpleNamespace(scan_id="sub-02"), config=config)
    clients = SimpleNamespace(s3=s3)
    trigger = ScanSubmitTrigger(role="released", aws_conn_id=None)
    ti = SimpleNamespace(run_id="run-1", task_id="run_scan", map_index=0, try_number=1)
    ti_other = SimpleNamespace(run_id="run-1", task_id="run_scan", map_index=1, try_number=1)
    said = []
    trigger._log = SimpleNamespace(warning=lambda message, *args: said.append(message % args))

    async def scenario():
        assert trigger._read_record(ti, clients, scan) is None  # nothing yet: a first call
        await trigger._write_record(ti, clients, scan, SubmitRecord(1, 1000.0))
        intent = trigger._read_record(ti, clients, scan)
        await trigger._write_record(ti_other, clients, other, SubmitRecord(1, 1000.0, "job-of-sub-02"))
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lab")["Contents"])
        # sub-02's record copied over sub-01's: sealed for another task instance
        s3.copy_object(Bucket="lab", Key=keys[0], CopySource={"Bucket": "lab", "Key": keys[1]})
        swapped = trigger._read_record(ti, clients, scan)
        s3.put_object(Bucket="lab", Key=keys[0], Body=b"not json")
        unreadable = trigger._read_record(ti, clients, scan)
        return intent, keys, swapped, unreadable

    intent, keys, swapped, unreadable = asyncio.run(scenario())
    assert intent == SubmitRecord(1, 1000.0)
    assert keys == [
        f"out/jobs/run-1/submission-{run_token('run-1')}-sub-01.json",
        f"out/jobs/run-1/submission-{run_token('run-1')}-sub-02.json",
    ]
    assert swapped is None and unreadable is None
    assert len(said) == 2 and all(f"SubmitJob record s3://lab/{keys[0]}" in line and line.endswith("ignoring it") for line in said)
    assert "run-1:submission:run_scan:0" in said[0]  # the swapped one: sealed elsewhere


def test_each_scan_reads_its_item_with_the_triggerers_own_s3_client(monkeypatch):
    """A triggerer starts 1,000 scans at once: making an S3 client per scan (about 0.2 s of
    CPU each) held the first SubmitJob back by five minutes (bench-scale, N = 1,000)."""
    from io import BytesIO

    from ndmg_cloud.orchestration import clients as clients_module
    from ndmg_cloud.orchestration.scanitems import ScanItems

    records = [b'{"scan":"sub-00"}'.ljust(64), b'{"scan":"sub-01"}'.ljust(64)]

    class KeptS3:
        def __init__(self):
            self.ranges = []

        def get_object(self, Bucket, Key, Range):  # boto3's argument names
            self.ranges.append(Range)
            start, end = map(int, Range.removeprefix("bytes=").split("-"))
            return {"Body": BytesIO(b"".join(records)[start : end + 1])}

    def new_client():
        raise AssertionError("a new S3 client was made for one scan")

    monkeypatch.setattr(clients_module, "s3_client", new_client)
    prepared = []
    monkeypatch.setattr(submit_trigger, "prepare_scan", lambda s3, item, *rest: prepared.append((s3, item)))
    kept = KeptS3()
    items = ScanItems("s3://lab/runs/r1/items", 2, 64)
    ti = SimpleNamespace(
        dag_id="ndmg_participant",
        run_id="run-1",
        map_index=1,
        xcom_pull=lambda task_ids, map_indexes: items if task_ids != "discover" else {},
    )
    trigger = ScanSubmitTrigger(role="released")
    monkeypatch.setattr(trigger, "_read_record", lambda ti, clients, scan: clients.s3.ranges.append("its SubmitJob record"))
    asyncio.run(trigger._prepare(ti, SimpleNamespace(s3=kept)))
    assert prepared == [(kept, {"scan": "sub-01"})]
    assert kept.ranges == ["bytes=64-127", "its SubmitJob record"]  # its own item, one ranged GET; then, in the same thread, its record


def test_the_triggers_of_a_run_starting_together_share_one_request_for_its_items():
    """1,000 scans starting in one triggerer ask its supervisor once for release_scans'
    XCom, not 1,000 times one after the other; a trigger asking after the answer came asks
    again (a cleared run may have new items); a failed request fails every trigger waiting."""
    import greenback

    asked = []

    def xcom_pull(task_ids, map_indexes):  # as the triggerer's SDK does: the loop runs meanwhile
        asked.append(task_ids)
        greenback.await_(asyncio.sleep(0.05))
        if task_ids == "broken":
            raise RuntimeError("the supervisor said no")
        return f"{task_ids} of run-1"

    ti = SimpleNamespace(dag_id="ndmg_participant", run_id="run-1", xcom_pull=xcom_pull)

    async def trigger(task_id):
        await greenback.ensure_portal()  # what the triggerer gives each trigger
        return await submit_trigger._run_xcom(ti, task_id)

    async def scenario():
        together = await asyncio.gather(*(trigger("release_scans") for _ in range(50)))
        later = await trigger("release_scans")
        failed = await asyncio.gather(*(trigger("broken") for _ in range(3)), return_exceptions=True)
        return together, later, failed

    together, later, failed = asyncio.run(scenario())
    assert together == ["release_scans of run-1"] * 50 and later == "release_scans of run-1"
    assert [str(err) for err in failed] == ["the supervisor said no"] * 3
    assert asked == ["release_scans", "release_scans", "broken"]
    assert submit_trigger._PULLING == {}


def test_a_scans_xcoms_wait_until_no_scan_of_the_triggerer_is_about_to_submit(monkeypatch):
    """The supervisor answers a trigger's requests one at a time: the XComs that only name a
    scan's job (batch_job, link) are written after the triggerer's burst of
    submissions, one at a time, and a scan that starts submitting meanwhile stops the writes
    after the one under way, so its two requests wait behind one write, not thousands."""
    monkeypatch.setattr(publisher_module, "QUIET_SECONDS", 0.05)
    written = []

    def push(ti, *, key, value):
        greenback.await_(asyncio.sleep(0.02))  # raises without a portal in the writing task, as the SDK does
        written.append(f"{ti}:{key}")

    async def scenario():
        writer = publisher_module.publisher(push)
        assert writer is publisher_module.publisher(push)  # one per triggerer (event loop)
        with writer.submitting():
            writer.publish("sub-01", {"batch_job": 1, "_link_BatchJobDetailsLink": 2})  # submitted: its XComs wait
            with writer.submitting():
                await asyncio.sleep(0.2)
                assert written == []  # two scans still about to submit
            await asyncio.sleep(0.2)
            assert written == []
        second = writer.publish("sub-02", {"batch_job": 1, "_link_BatchJobDetailsLink": 2})
        for _ in range(100):
            if written:
                break
            await asyncio.sleep(0.01)
        with writer.submitting():  # a new scan starts: the writes stop after the one under way
            before = len(written)
            await asyncio.sleep(0.3)
            assert len(written) <= before + 1 < 4
        await asyncio.wait_for(second.written.wait(), 5)
        assert written == ["sub-01:batch_job", "sub-01:_link_BatchJobDetailsLink", "sub-02:batch_job", "sub-02:_link_BatchJobDetailsLink"]

        with writer.submitting():  # a burst that never ends: the XComs go out after at_most
            await asyncio.wait_for(writer.settled(at_most=0.1), 5)

    asyncio.run(scenario())


@pytest.mark.parametrize("ends", ["during-the-burst", "after-the-burst"])
def test_a_job_that_succeeds_before_its_xcoms_are_written_ends_its_task_with_them(monkeypatch, ends):
    """A scan's job that SUCCEEDED while the triggerer's burst was still on ends its task with
    a TaskSuccessEvent carrying batch_job and the Batch link (the supervisor writes them as it
    ends the task): none is written through the supervisor's queue, where 1,000 scans' three
    writes each took 46 s at the end of a run. A job that ends after the burst has them
    written already, each once."""
    from airflow.triggers.base import TaskSuccessEvent

    monkeypatch.setattr(publisher_module, "QUIET_SECONDS", 0.01)
    written = []

    def push(ti, *, key, value):
        greenback.await_(asyncio.sleep(0))  # raises without a portal in the writing task, as the SDK does
        written.append(key)

    monkeypatch.setattr(submit_trigger, "_push", push)
    clients = SimpleNamespace(s3=None, batch=None, submit=None, region="us-east-1")
    scan = SimpleNamespace(
        task=SimpleNamespace(scan_id="sub-01"),
        submission=SimpleNamespace(job_queue="q"),
        config=SimpleNamespace(runnable_timeout_minutes=30, lease=None),
    )
    trigger = ScanSubmitTrigger(role="released", aws_conn_id=None)
    trigger.task_instance = SimpleNamespace(run_id="run-1", task_id="run_scan", map_index=0, try_number=1)
    job_over = None

    async def clients_of(*args):
        return clients

    async def prepare(ti, clients):
        return scan, None

    async def submit_once(ti, clients, scan, record):
        return "job-1"

    async def wait():
        await job_over.wait()
        yield TaskSuccessEvent(xcoms={"return_value": "job-1"})

    monkeypatch.setattr(submit_trigger, "_clients", clients_of)
    monkeypatch.setattr(submit_trigger.LeaseRef, "of_run", staticmethod(lambda config: None))
    monkeypatch.setattr(trigger, "_prepare", prepare)
    monkeypatch.setattr(trigger, "_submit_once", submit_once)
    monkeypatch.setattr(trigger, "_wait", wait)

    async def scenario():
        nonlocal job_over
        job_over = asyncio.Event()
        writer = publisher_module.publisher(push)
        with writer.submitting():  # another scan of this triggerer is still about to submit
            events = asyncio.ensure_future(_all(trigger._events()))
            await asyncio.sleep(0.1)
            if ends == "during-the-burst":
                job_over.set()
                return await asyncio.wait_for(events, 5)
        await asyncio.sleep(0.2)  # the burst is over: the XComs are written
        job_over.set()
        return await asyncio.wait_for(events, 5)

    (event,) = asyncio.run(scenario())
    assert isinstance(event, TaskSuccessEvent)
    links = ["batch_job_details", "_link_BatchJobDetailsLink"]  # the provider's parts, and the URL the UI shows
    if ends == "during-the-burst":  # nothing written by the trigger: on the event
        assert written == []
        assert set(event.xcoms) == {"return_value", "batch_job", "_link_BatchJobDetailsLink"}  # the UI's link, not its parts
        assert event.xcoms["batch_job"]["job_id"] == "job-1"
        assert event.xcoms["_link_BatchJobDetailsLink"] == "https://console.aws.amazon.com/batch/home?region=us-east-1#jobs/detail/job-1"
    else:  # written while the job ran: each once
        assert written == ["batch_job", *links]
        assert set(event.xcoms) == {"return_value"}


async def _all(events):
    return [event async for event in events]


class LineCatcher:
    """The trigger's log: each line, with the thread that wrote it and the trigger id the
    triggerer routes it by (a structlog context variable, as Airflow's trigger runner binds it)."""

    def __init__(self):
        self.lines: list[tuple[str, str, object]] = []

    def info(self, message, *args):
        trigger_id = structlog.contextvars.get_contextvars().get("trigger_id")
        self.lines.append((message % args, threading.current_thread().name, trigger_id))

    warning = info


def test_a_scans_submission_line_is_written_off_the_event_loop_into_its_own_trigger_log(unanswered, monkeypatch):
    """Airflow 3.3.2's trigger runner reads its supervisor's answers on the event loop and
    writes log lines to it with a blocking write: a line written on the loop while the
    supervisor was sending it new triggers stopped both for good (a 10,000-scan run). The
    line every scan writes goes from another thread, still routed to its own trigger's log."""
    trigger, batch, clients, scan, ti = unanswered
    catcher = LineCatcher()
    monkeypatch.setattr(trigger, "_log", catcher)  # what its log property returns
    batch.answer.set()

    async def scenario():
        structlog.contextvars.bind_contextvars(trigger_id=7)  # what the runner binds for each trigger
        return threading.current_thread().name, await trigger._submit(ti, clients, scan, None)

    loop_thread, job_id = asyncio.run(scenario())
    (line,) = [line for line in catcher.lines if "submitted for scan" in line[0]]
    message, thread, trigger_id = line
    assert message == f"Batch job {job_id} submitted for scan sub-01 (job spec s3://lab/jobs/sub-01.json)"
    assert thread != loop_thread and thread.startswith("ndmg-submit")
    assert trigger_id == 7
