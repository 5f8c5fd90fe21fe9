"""One run per output location at a time: a lease at ``<output>/.ndmg-lease.json``.

``discover`` takes it before anything else with a conditional write (S3 ``If-None-Match: *``:
of two runs writing at once exactly one succeeds), holding the run id and a heartbeat time;
the run's steps refresh the heartbeat, and while the scans wait for Batch their triggers do
(``orchestration/heartbeat.py``, once per run per 10 min); ``verify_and_report`` releases it
(conditionally on its ETag) whatever the outcome. A second run of the same output is refused at once, naming the holder.

A lease is taken over (conditionally on its ETag, so two takers cannot both win) when its
holder run has ended in this Airflow (success or failed: it died without releasing, e.g. the
run was marked failed), or when its heartbeat is older than ``STALE_AFTER_SECONDS`` (a
holder this Airflow does not know, e.g. another deployment writing the same output). The
report says which lease was taken over and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

STALE_AFTER_SECONDS = 24 * 3600  # documented in the README: a heartbeat this old is a dead holder
ENDED = ("success", "failed")


class LeaseHeld(RuntimeError):
    """Another run holds the output location; the message names it and what to do."""


@dataclass(frozen=True)
class Lease:
    run_id: str
    heartbeat: float  # epoch seconds
    taken_at: float

    def body(self) -> bytes:
        return json.dumps({**asdict(self), "heartbeat_utc": _utc(self.heartbeat)}).encode()

    @classmethod
    def parse(cls, body: bytes) -> Lease:
        data = json.loads(body)
        return cls(data["run_id"], float(data["heartbeat"]), float(data.get("taken_at", data["heartbeat"])))


@dataclass(frozen=True)
class TakeOver:
    """The lease this run took over: whose it was and why it could be taken."""

    run_id: str
    heartbeat_utc: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TakeOver:
        return cls(str(data["run_id"]), str(data.get("heartbeat_utc", "")), str(data.get("why", "")))


def take(
    client: Any,
    bucket: str,
    key: str,
    run_id: str,
    holder_state: Callable[[str], str | None],
    now: Callable[[], float] = time.time,
) -> TakeOver | None:
    """Take the lease for ``run_id``; None, or the lease taken over. ``holder_state`` says
    what Airflow knows of a run (its state, or None if it does not know the run)."""
    stamp = now()
    if _put(client, bucket, key, Lease(run_id, stamp, stamp), IfNoneMatch="*"):
        return None
    found = _read(client, bucket, key)
    if found is None:  # released in between: try once more from scratch
        if _put(client, bucket, key, Lease(run_id, stamp, stamp), IfNoneMatch="*"):
            return None
        found = _read(client, bucket, key)
    if found is None:
        raise LeaseHeld(_changing_hands(bucket, key, run_id))
    current, etag = found
    if current.run_id == run_id:  # this run's own lease (a retry of discover)
        _put(client, bucket, key, Lease(run_id, stamp, current.taken_at), IfMatch=etag)
        return None
    state = holder_state(current.run_id)
    age = stamp - current.heartbeat
    why = _takeable(state, age)
    if why is None:
        raise LeaseHeld(_held_message(bucket, key, current, state, age))
    if not _put(client, bucket, key, Lease(run_id, stamp, stamp), IfMatch=etag):
        found = _read(client, bucket, key)  # another run took it over first
        if found is None:
            raise LeaseHeld(_changing_hands(bucket, key, run_id))
        raise LeaseHeld(_held_message(bucket, key, found[0], holder_state(found[0].run_id), 0.0))
    return TakeOver(current.run_id, _utc(current.heartbeat), why)


def _takeable(state: str | None, age: float) -> str | None:
    """Why a lease whose holder is in ``state`` (None: unknown here), heartbeat ``age``
    seconds ago, may be taken over; None if it may not."""
    if state in ENDED:
        return f"its run ended ({state}) without releasing it"
    if state is None and age > STALE_AFTER_SECONDS:
        return f"its heartbeat is {age / 3600:.1f} h old (limit {STALE_AFTER_SECONDS // 3600} h) and this Airflow does not know the run"
    return None


def refresh(client: Any, bucket: str, key: str, run_id: str, now: Callable[[], float] = time.time) -> bool:
    """Move this run's heartbeat on; False if the lease is no longer this run's."""
    found = _read(client, bucket, key)
    if found is None or found[0].run_id != run_id:
        return False
    current, etag = found
    return _put(client, bucket, key, Lease(run_id, now(), current.taken_at), IfMatch=etag)


def release(client: Any, bucket: str, key: str, run_id: str) -> bool:
    """Delete the lease if it is this run's (never another run's): the delete is conditional
    on the ETag read (S3 ``If-Match``), so a lease taken over in between is left alone."""
    found = _read(client, bucket, key)
    if found is None or found[0].run_id != run_id:
        return False
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=found[1])
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "NoSuchKey", "404"):
            return False
        raise
    return True


def _put(client: Any, bucket: str, key: str, lease: Lease, **condition: str) -> bool:
    try:
        client.put_object(Bucket=bucket, Key=key, Body=lease.body(), ContentType="application/json", **condition)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            return False
        raise
    return True


def _read(client: Any, bucket: str, key: str) -> tuple[Lease, str] | None:
    """The lease and its ETag; None when there is none."""
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return Lease.parse(answer["Body"].read()), str(answer["ETag"])


def _changing_hands(bucket: str, key: str, run_id: str) -> str:
    return (
        f"the lease on s3://{bucket}/{key} was taken and released by other runs while run {run_id} tried to take it: trigger this run again"
    )


def _held_message(bucket: str, key: str, lease: Lease, state: str | None, age: float) -> str:
    where = f"s3://{bucket}/{key.rsplit('/', 1)[0]}/"
    known = f"it is {state} in this Airflow" if state else "this Airflow does not know that run"
    return (
        f"run {lease.run_id} holds the lease on {where} (heartbeat {age / 60:.0f} min ago; {known}): one run per "
        f"output location at a time. Wait for it to end, or stop it (ndmg_cloud kill {lease.run_id}, or mark it "
        f"failed in Airflow) and trigger again: a lease whose run has ended is taken over, and so is one whose "
        f"heartbeat is older than {STALE_AFTER_SECONDS // 3600} h"
    )


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
