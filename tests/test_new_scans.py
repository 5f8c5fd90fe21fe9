"""NewScansTrigger (orchestration/new_scans.py) against the local AWS endpoint's S3, which
notifies SQS as AWS does: one event per settled burst, never one per object; the runs' own
outputs and other prefixes start nothing; a trigger that dies mid-burst loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import boto3
import pytest

from ndmg_cloud.orchestration import new_scans
from ndmg_cloud.orchestration.new_scans import NewScansTrigger, created_keys

from conftest import REGION
from helpers import notified_queue


@pytest.fixture
def queue(s3):
    """A bucket whose dataset prefix ds/ notifies a queue of every object created."""
    s3.create_bucket(Bucket="lab-data")
    return notified_queue(s3, "lab-data", "ndmg-new-scans", "ds/")


def collect(trigger: NewScansTrigger, seconds: float, after_first: float | None = None) -> list[tuple[float, dict]]:
    """The events the trigger fires within ``seconds`` (or until ``after_first`` seconds
    after the first), with when each came."""

    async def run() -> list[tuple[float, dict]]:
        events: list[tuple[float, dict]] = []

        async def pull() -> None:
            async for event in trigger.run():
                events.append((time.time(), event.payload))

        puller = asyncio.ensure_future(pull())
        deadline = time.time() + seconds
        while time.time() < deadline and not puller.done():
            if events and after_first is not None:
                deadline = min(deadline, events[0][0] + after_first)
            await asyncio.sleep(0.1)
        puller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await puller
        return events

    return asyncio.run(run())


def waiting(queue: str) -> int:
    attributes = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(new_scans, "STORE_GRACE_SECONDS", 0.2)


@pytest.mark.slow  # about a minute: the local endpoint's SQS reads slow down with 1,000 messages waiting
def test_a_burst_of_a_thousand_uploads_fires_one_event(s3, queue):
    for i in range(1000):
        s3.put_object(Bucket="lab-data", Key=f"ds/sub-{i:04d}/dwi/sub-{i:04d}_dwi.nii.gz", Body=b"x")
    started = time.time()
    events = collect(NewScansTrigger(queue, "lab-data", "ds/", quiet_seconds=2), seconds=180, after_first=8)
    print(f"1,000 notifications read and one event fired in {events[0][0] - started:.0f} s" if events else "no event")
    assert len(events) == 1
    payload = events[0][1]
    assert payload["objects"] == 1000 and payload["prefix"] == "s3://lab-data/ds/"
    assert payload["examples"][0] == "ds/sub-0000/dwi/sub-0000_dwi.nii.gz"
    assert waiting(queue) == 0  # every message taken, once the event was fired


def test_it_fires_only_after_the_uploads_have_been_quiet(s3, queue):
    stamps: list[float] = []

    def upload() -> None:
        for name in ["dwi.nii.gz", "dwi.bval", "dwi.bvec", "T1w.nii.gz"]:
            time.sleep(1.0)
            s3.put_object(Bucket="lab-data", Key=f"ds/sub-07/ses-1/{'anat' if 'T1w' in name else 'dwi'}/sub-07_ses-1_{name}", Body=b"x")
            stamps.append(time.time())

    uploader = threading.Thread(target=upload)
    uploader.start()
    events = collect(NewScansTrigger(queue, "lab-data", "ds/", quiet_seconds=3), seconds=14)
    uploader.join()
    assert len(events) == 1, events
    fired_at, payload = events[0]
    assert payload["objects"] == 4
    assert fired_at >= stamps[-1] + 3  # not before the last upload was 3 s old


def test_outputs_other_prefixes_and_test_events_start_nothing(s3, queue):
    for key in (
        "ds/derivatives/ndmg/sub-01/connectomes_d/x.csv",
        "ds/derivatives/ndmg/reports/r/report.json",
        "ds/dataset_description.json",
        "other/sub-01/x",
    ):
        s3.put_object(Bucket="lab-data", Key=key, Body=b"x")
    assert collect(NewScansTrigger(queue, "lab-data", "ds/", quiet_seconds=1), seconds=6) == []
    assert waiting(queue) == 0  # read, said and deleted, so the queue does not fill up


@pytest.mark.slow  # 11 s: the messages' hold must run out
def test_a_trigger_that_dies_while_uploads_settle_leaves_them_for_the_next(s3, queue, monkeypatch):
    monkeypatch.setattr(new_scans, "HOLD_MARGIN_SECONDS", 2)  # held invisible for quiet + 2 s
    s3.put_object(Bucket="lab-data", Key="ds/sub-01/dwi/sub-01_dwi.nii.gz", Body=b"x")
    assert collect(NewScansTrigger(queue, "lab-data", "ds/", quiet_seconds=5), seconds=3) == []  # dies within the quiet time
    assert waiting(queue) == 1  # not deleted
    events = collect(NewScansTrigger(queue, "lab-data", "ds/", quiet_seconds=1), seconds=40, after_first=3)
    assert [payload["objects"] for _, payload in events] == [1]


def test_a_queue_that_cannot_be_read_is_said_and_tried_again_not_the_end_of_the_watch(aws, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(new_scans, "RETRY_SECONDS", (0.5,))
    caplog.set_level(logging.ERROR, logger="ndmg_cloud.orchestration.new_scans")
    missing = "http://127.0.0.1:1/123456789012/no-such-queue"
    assert (
        collect(
            NewScansTrigger(missing.replace("127.0.0.1:1", "sqs.us-east-1.amazonaws.com"), "lab-data", "ds/", quiet_seconds=1), seconds=3
        )
        == []
    )
    said = [r.getMessage() for r in caplog.records]
    assert len(said) >= 2  # tried again, and said again
    assert "cannot read the new-scans queue https://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue" not in said[0]  # http URL given
    assert said[0].startswith("cannot read the new-scans queue http://sqs.us-east-1.amazonaws.com/123456789012/no-such-queue")
    assert "may sqs:ReceiveMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility on it; trying again in" in said[0]


def test_a_message_seen_again_is_no_new_upload():
    from ndmg_cloud.orchestration.new_scans import Burst, burst_limit

    burst = Burst()
    burst.add(["ds/sub-01/a"], "m1", "h1", now=100.0)
    burst.add(["ds/sub-01/a"], "m1", "h2", now=200.0)  # its hold ran out and it came back
    assert (burst.last_at, burst.receipts["m1"]) == (100.0, ("h2", 200.0))
    assert burst.settled(now=160.0, quiet_seconds=60)
    assert not burst.settled(now=150.0, quiet_seconds=60)
    burst.add(["ds/sub-02/b"], "m2", "h3", now=100.0 + burst_limit(60) - 1)  # uploads without a pause ...
    assert burst.settled(now=100.0 + burst_limit(60), quiet_seconds=60)  # ... start a run after the burst limit


def test_notification_bodies():
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": "ds/sub-01/a+b%2Bc.nii.gz"}}}
    assert created_keys(json.dumps({"Records": [record]})) == [("b", "ds/sub-01/a b+c.nii.gz")]
    assert created_keys(json.dumps({"Records": [{**record, "eventName": "ObjectRemoved:Delete"}]})) == []
    assert created_keys(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []
    assert created_keys(json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [record]})})) == [
        ("b", "ds/sub-01/a b+c.nii.gz")
    ]
    assert created_keys("not json") == [] and created_keys("[]") == []
    hostile = [{"eventName": "ObjectCreated:Put", "s3": {"bucket": "x"}}, {"eventName": "ObjectCreated:Put", "s3": {"object": ["k"]}}, "x"]
    assert created_keys(json.dumps({"Records": hostile})) == []  # anyone who may send to the queue wrote it
