"""The output lease's heartbeat while a run's scans run (``participant/lease.py``).

No worker task runs while the scans wait for Batch (hours, or more than a day for a large
dataset on few vCPUs): the scans' triggers beat instead. Each trigger calls ``beat`` on every
poll; the triggerer's process refreshes each run's lease at most once per ``BEAT_SECONDS``,
whatever the number of its triggers, so 10,000 waiting scans cost one S3 read and one
conditional write per run per interval. A failed refresh is logged, never fatal: the lease
only guards against another deployment taking the output over."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async

from ndmg_cloud.participant import lease

log = logging.getLogger(__name__)
BEAT_SECONDS = 600.0  # far below lease.STALE_AFTER_SECONDS
_BEATEN: dict[tuple[str, str, str], float] = {}  # the lease -> when this process last refreshed it


@dataclass(frozen=True)
class LeaseRef:
    """Where a run's lease is: what a trigger carries (serialized with its kwargs)."""

    bucket: str
    key: str
    run_id: str

    def to_dict(self) -> dict[str, str]:
        return {"bucket": self.bucket, "key": self.key, "run_id": self.run_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LeaseRef | None:
        return cls(str(data["bucket"]), str(data["key"]), str(data["run_id"])) if data else None

    @classmethod
    def of_run(cls, config: Any) -> dict[str, str] | None:
        """The lease a run's scan triggers keep alive (its ``RunConfig``), as trigger kwargs;
        None for a dry run, which takes none."""
        return None if config.dry_run else cls(config.output_root.bucket, config.outputs.lease_key, config.run_id).to_dict()


async def beat(held: LeaseRef | None, aws_conn_id: str | None, now: float | None = None) -> None:
    """Refresh the run's lease if this process has not for ``BEAT_SECONDS``."""
    if held is None:
        return
    moment = time.monotonic() if now is None else now
    which = (held.bucket, held.key, held.run_id)
    if moment - _BEATEN.get(which, -float("inf")) < BEAT_SECONDS:
        return
    _BEATEN[which] = moment  # before the await: the other triggers of this run skip this round
    try:
        # sync_to_async, as Airflow asks of a sync hook in a trigger: the connection lookup
        # goes through the triggerer's channel to its supervisor
        moved = await sync_to_async(_refresh)(held, aws_conn_id)
    except Exception as err:  # S3 down, throttled, no permission: the next round tries again
        log.warning("could not refresh the lease of run %s at s3://%s/%s: %s", held.run_id, held.bucket, held.key, err)
        return
    if not moved:
        log.warning(
            "run %s no longer holds the lease at s3://%s/%s (taken over, or moved on at once by another triggerer)",
            held.run_id,
            held.bucket,
            held.key,
        )


def _refresh(held: LeaseRef, aws_conn_id: str | None) -> bool:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return lease.refresh(S3Hook(aws_conn_id=aws_conn_id).get_conn(), held.bucket, held.key, held.run_id)
