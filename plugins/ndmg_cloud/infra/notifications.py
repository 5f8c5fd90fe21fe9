"""The input bucket's S3 event notification that feeds a stack's queue of new scans
(``WatchNewScans``): uploads under the input prefix, to ``<stack>-new-scans``.

CloudFormation cannot add a notification to a bucket it did not create, so ``deploy`` puts
it after the stack, and takes it away before a stack stops watching or is deleted (S3
refuses every later change of a bucket's notifications while one names a queue that is
gone). PutBucketNotificationConfiguration replaces the bucket's whole configuration: the
lab's own notifications are read and kept, and only the one with this stack's id changes.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

EVENTS = ["s3:ObjectCreated:*"]
# S3 checks on PUT that it may send to the queue; a queue policy just made can take a while
# to be seen (SQS attribute changes propagate): try again for this long
VALIDATION_WAIT_SECONDS, VALIDATION_RETRY_SECONDS = 120.0, 10.0


class NotificationError(RuntimeError):
    """The bucket's notifications could not be changed; the message says why and what to do."""


def notification_id(owner: str) -> str:
    """The Id of the notification that feeds ``owner``'s queue of new scans (a stack's, or
    the embedded demo's)."""
    return f"{owner}-new-scans"


def _configuration(s3: Any, bucket: str) -> dict[str, Any] | None:
    """The bucket's notifications as S3 gives them; None when the bucket is gone."""
    try:
        found = s3.get_bucket_notification_configuration(Bucket=bucket)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return None
        raise NotificationError(f"could not read the notifications of bucket {bucket}: {err}") from None
    return {key: value for key, value in found.items() if key != "ResponseMetadata"}


def _put(s3: Any, bucket: str, configuration: dict[str, Any], what: str, validate: bool = True) -> None:
    """Put the whole configuration. ``validate=False`` when only taking ours off: S3 checks
    every destination on PUT, and a lab's notification to a queue since deleted would
    otherwise keep ours on for ever."""
    deadline = time.monotonic() + VALIDATION_WAIT_SECONDS
    while True:
        try:
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=configuration, SkipDestinationValidation=not validate
            )
            return
        except ClientError as err:
            why = str(err)
            if "unable to validate" in why.lower() and time.monotonic() < deadline:
                time.sleep(VALIDATION_RETRY_SECONDS)
                continue
            if "overlap" in why.lower():
                why += (
                    " (another notification of this bucket already sends object-created events under this prefix: "
                    "S3 sends each event to one destination; point that one elsewhere or give it a narrower prefix)"
                )
            raise NotificationError(f"could not {what} of bucket {bucket}: {why}") from None


def watch(s3: Any, bucket: str, prefix: str, queue_arn: str, owner: str) -> None:
    """Point the bucket's uploads under ``prefix`` at the queue (``owner``'s notification,
    replaced if there was one; the bucket's others kept)."""
    ours: dict[str, Any] = {"Id": notification_id(owner), "QueueArn": queue_arn, "Events": EVENTS}
    if prefix:
        ours["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
    configuration = _configuration(s3, bucket)
    if configuration is None:
        raise NotificationError(f"bucket {bucket} does not exist: give the input bucket of the datasets")
    others = [c for c in configuration.get("QueueConfigurations", []) if c.get("Id") != ours["Id"]]
    configuration["QueueConfigurations"] = [*others, ours]
    _put(s3, bucket, configuration, f"send the uploads under {prefix or 'the bucket root'} to {queue_arn}")


def unwatch(s3: Any, bucket: str, owner: str) -> bool:
    """Take ``owner``'s notification off the bucket; False when it had none (or the bucket
    is gone)."""
    configuration = _configuration(s3, bucket)
    if configuration is None:
        return False
    queues = configuration.get("QueueConfigurations", [])
    kept = [c for c in queues if c.get("Id") != notification_id(owner)]
    if len(kept) == len(queues):
        return False
    configuration["QueueConfigurations"] = kept
    _put(s3, bucket, configuration, f"take notification {notification_id(owner)} off the notifications", validate=False)
    return True
