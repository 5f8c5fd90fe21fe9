"""The input bucket's S3 event notification that feeds a stack's queue of new scans
(``WatchNewScans``): uploads under the input prefix, to ``<stack>-new-scans``.

CloudFormation cannot add a notification to a bucket it did not create, so ``deploy`` puts
it after the stack, and takes it away before a stack stops watching or is deleted (S3
refuses every later change of a bucket's notifications while one names a queue that is
gone). PutBucketNotificationConfiguration replaces the bucket's whole configuration: the
lab's own notifications are read and kept, and only the one with this stack's id changes.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

EVENTS = ["s3:ObjectCreated:*"]


class NotificationError(RuntimeError):
    """The bucket's notifications could not be changed; the message says why and what to do."""


def notification_id(stack: str) -> str:
    return f"{stack}-new-scans"


def _configuration(s3: Any, bucket: str) -> dict[str, Any]:
    found = s3.get_bucket_notification_configuration(Bucket=bucket)
    return {key: value for key, value in found.items() if key != "ResponseMetadata"}


def _put(s3: Any, bucket: str, configuration: dict[str, Any], what: str) -> None:
    try:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=configuration)
    except ClientError as err:
        why = str(err)
        if "overlap" in why.lower():
            why += (
                " (another notification of this bucket already sends object-created events under this prefix: "
                "S3 sends each event to one destination; point that one elsewhere or give it a narrower prefix)"
            )
        raise NotificationError(f"could not {what} of bucket {bucket}: {why}") from None


def watch(s3: Any, bucket: str, prefix: str, queue_arn: str, stack: str) -> dict[str, Any]:
    """Point the bucket's uploads under ``prefix`` at the queue (this stack's notification,
    replaced if there was one); the notification as put."""
    ours: dict[str, Any] = {"Id": notification_id(stack), "QueueArn": queue_arn, "Events": EVENTS}
    if prefix:
        ours["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
    configuration = _configuration(s3, bucket)
    others = [c for c in configuration.get("QueueConfigurations", []) if c.get("Id") != ours["Id"]]
    configuration["QueueConfigurations"] = [*others, ours]
    _put(s3, bucket, configuration, f"send the uploads under {prefix or 'the bucket root'} to {queue_arn}")
    return ours


def unwatch(s3: Any, bucket: str, stack: str) -> bool:
    """Take this stack's notification off the bucket; False when it had none."""
    configuration = _configuration(s3, bucket)
    queues = configuration.get("QueueConfigurations", [])
    kept = [c for c in queues if c.get("Id") != notification_id(stack)]
    if len(kept) == len(queues):
        return False
    configuration["QueueConfigurations"] = kept
    _put(s3, bucket, configuration, f"take notification {notification_id(stack)} off the notifications")
    return True
