"""``NewScansTrigger``: starts a "new scans" schedule once a dataset's uploads have settled.

S3 notifies an SQS queue of every object created under the dataset (the bucket's event
notification configuration: README, "New scans processed when they land"). This trigger runs in
Airflow's triggerer as the ``AssetWatcher`` of the schedule's Asset: it reads the queue
(long polls, no worker held), keeps the notifications of the dataset's subject folders
(never of the runs' own outputs: a report written must not start the next run), and fires one
event when none has come for ``quiet_seconds``: a subject arrives as many objects over
minutes, and a burst of 1,000 uploads makes one run, not 1,000. The run then discovers
the dataset and runs what is not done (a scan still missing files is left for the next).

Messages are deleted only after the event is fired (and a grace period for the triggerer to
store it): a triggerer that dies while the uploads settle leaves them on the queue, where
they become visible again and fire the event of the next triggerer. Notifications of other
prefixes and S3's test event are deleted at once, and logged. An SQS call that fails is
logged with what to do and tried again: the watch never ends on its own. Uploads that never
pause start a run after ``burst_limit`` (an hour, or four quiet times) all the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from ndmg_cloud.orchestration.clients import AWS_CONN_ID

log = logging.getLogger(__name__)

LONG_POLL_SECONDS = 20  # SQS's longest receive wait
HOLD_MARGIN_SECONDS = 120  # messages stay invisible this long past the quiet time
STORE_GRACE_SECONDS = 5.0  # after firing, before deleting: the triggerer stores the event
RETRY_SECONDS = (5, 15, 60, 300)  # an SQS call that failed is tried again after these waits (then every 300 s)


def burst_limit(quiet_seconds: float) -> float:
    """The longest a run waits for uploads that never pause."""
    return max(3600.0, 4 * quiet_seconds)


def created_keys(body: str) -> list[tuple[str, str]]:
    """(bucket, key) of every object an S3 event notification says was created; none for
    S3's test event or a message that is not an S3 notification."""
    try:
        message = json.loads(body)
    except ValueError:
        return []
    if isinstance(message, dict) and "Message" in message and "Records" not in message:  # delivered through SNS
        return created_keys(str(message["Message"]))
    records = message.get("Records") if isinstance(message, dict) else None
    found = []
    for record in records if isinstance(records, list) else []:  # anyone who may send to the queue wrote this
        s3 = record.get("s3") if isinstance(record, dict) else None
        if not isinstance(s3, dict) or not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        bucket, item = s3.get("bucket"), s3.get("object")
        name = bucket.get("name") if isinstance(bucket, dict) else None
        key = item.get("key") if isinstance(item, dict) else None
        if isinstance(name, str) and isinstance(key, str):
            found.append((name, unquote_plus(key)))  # S3 URL-encodes keys in notifications
    return found


@dataclass
class Burst:
    """Uploads under the dataset not yet answered by a run: how many, when the first and
    the last came, and the messages to delete once the run is started."""

    keys: set[str] = field(default_factory=set)
    first_at: float = 0.0
    last_at: float = 0.0
    receipts: dict[str, tuple[str, float]] = field(default_factory=dict)  # message id -> (handle, received at)

    def add(self, keys: list[str], message_id: str, handle: str, now: float) -> None:
        if message_id not in self.receipts:  # a message seen again (its hold ran out) is no new upload
            self.first_at = self.first_at or now
            self.last_at = now
            self.keys.update(keys)
        self.receipts[message_id] = (handle, now)

    def clear(self) -> None:
        self.keys, self.first_at, self.last_at, self.receipts = set(), 0.0, 0.0, {}

    def settled(self, now: float, quiet_seconds: float) -> bool:
        """Quiet long enough; or uploading without a pause for longer than a run should
        wait (``burst_limit``): the run takes what is complete, the next the rest."""
        return bool(self.keys) and (now - self.last_at >= quiet_seconds or now - self.first_at >= burst_limit(quiet_seconds))

    def event(self, prefix: str) -> dict[str, Any]:
        return {
            "prefix": prefix,
            "objects": len(self.keys),
            "examples": sorted(self.keys)[:5],
            "first_upload_at": self.first_at,
            "last_upload_at": self.last_at,
        }


class NewScansTrigger(BaseEventTrigger):
    """Fires once uploads under ``s3://bucket/prefix`` have been quiet for ``quiet_seconds``."""

    def __init__(self, queue_url: str, bucket: str, prefix: str, quiet_seconds: float, aws_conn_id: str | None = AWS_CONN_ID):
        super().__init__()  # type: ignore[no-untyped-call]
        self.queue_url, self.bucket, self.prefix = queue_url, bucket, prefix
        self.quiet_seconds = float(quiet_seconds)
        self.aws_conn_id = aws_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "queue_url": self.queue_url,
                "bucket": self.bucket,
                "prefix": self.prefix,
                "quiet_seconds": self.quiet_seconds,
                "aws_conn_id": self.aws_conn_id,
            },
        )

    @property
    def hold_seconds(self) -> int:
        """How long a received message stays invisible to other readers (SQS's limit: 12 h)."""
        return int(min(self.quiet_seconds + HOLD_MARGIN_SECONDS, 12 * 3600))

    def _mine(self, bucket: str, key: str) -> bool:
        """An input of the dataset: under a subject folder (``sub-*``) of its prefix. Not
        the runs' own outputs (``derivatives/``, the reports, the lease), which the queue
        also hears of when they lie inside the dataset: a run must not start the next."""
        return bucket == self.bucket and key.startswith(self.prefix) and key[len(self.prefix) :].startswith("sub-")

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Read the queue for ever; an SQS call that fails (a wrong queue URL, no permission,
        throttling) is logged with what to do and tried again, never ending the watch."""
        from botocore.exceptions import BotoCoreError, ClientError

        failures = 0
        burst = Burst()
        while True:
            try:
                async for event in self._watch(burst):
                    failures = 0
                    yield event
            except (BotoCoreError, ClientError) as err:
                wait = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.error(
                    "cannot read the new-scans queue %s (%s): check the queue URL of the schedule, and that the Airflow "
                    "connection %r may sqs:ReceiveMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility on it; "
                    "trying again in %d s",
                    self.queue_url,
                    err,
                    self.aws_conn_id,
                    wait,
                )
                await asyncio.sleep(wait)

    async def _watch(self, burst: Burst) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook

        async with await SqsHook(aws_conn_id=self.aws_conn_id).get_async_conn() as sqs:
            while True:
                now = time.time()
                if burst.settled(now, self.quiet_seconds):
                    log.info(
                        "%d new objects under s3://%s/%s, quiet for %.0f s: starting a run",
                        len(burst.keys),
                        self.bucket,
                        self.prefix,
                        now - burst.last_at,
                    )
                    yield TriggerEvent(burst.event(f"s3://{self.bucket}/{self.prefix}"))
                    await asyncio.sleep(STORE_GRACE_SECONDS)
                    await self._delete(sqs, [handle for handle, _ in burst.receipts.values()])
                    burst.clear()  # the same object: run() keeps it across a failed SQS call
                    continue
                wait = LONG_POLL_SECONDS if not burst.keys else max(0, min(LONG_POLL_SECONDS, burst.last_at + self.quiet_seconds - now))
                answer = await sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=int(wait + 0.999), VisibilityTimeout=self.hold_seconds
                )
                await self._take(sqs, answer.get("Messages") or [], burst)
                await self._keep_hidden(sqs, burst)

    async def _take(self, sqs: Any, messages: list[dict[str, Any]], burst: Burst) -> None:
        others = []
        for message in messages:
            created = created_keys(message.get("Body", ""))
            mine = [key for bucket, key in created if self._mine(bucket, key)]
            if mine:
                burst.add(mine, message["MessageId"], message["ReceiptHandle"], time.time())
            else:
                others.append(message["ReceiptHandle"])
                if created:
                    log.info(
                        "ignored: %d new objects outside s3://%s/%s (e.g. s3://%s/%s)", len(created), self.bucket, self.prefix, *created[0]
                    )
        await self._delete(sqs, others)

    async def _keep_hidden(self, sqs: Any, burst: Burst) -> None:
        """A burst longer than the hold: hide its oldest messages again, so that no other
        reader of the queue sees them before this trigger deletes them."""
        now = time.time()
        due = [(mid, handle) for mid, (handle, at) in burst.receipts.items() if now - at > self.hold_seconds - HOLD_MARGIN_SECONDS / 2]
        for i in range(0, len(due), 10):
            batch = due[i : i + 10]
            await sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": self.hold_seconds} for n, (_, handle) in enumerate(batch)
                ],
            )
            for mid, handle in batch:
                burst.receipts[mid] = (handle, now)

    async def _delete(self, sqs: Any, handles: list[str]) -> None:
        for i in range(0, len(handles), 10):
            batch = handles[i : i + 10]
            await sqs.delete_message_batch(
                QueueUrl=self.queue_url, Entries=[{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(batch)]
            )
