"""SubmitJob pacing: a run's scans are submitted at most ``submit_rate()`` per second.

AWS Batch allows an account 50 SubmitJob calls per second (a fixed quota, shared with every
other user of the account). When the scans are released, each is given the earliest time
it may be submitted (``submit_not_before``): the i-th at release + i / rate. A task that
starts later than its turn (Airflow launches tasks more slowly than that) does not wait;
one that starts early sleeps until its turn. A throttled SubmitJob is retried with
backoff by the submit client (botocore's standard mode, see ``operators.SUBMIT_CONFIG``).
With the default of 5 per second and ``max_active_runs`` = 4, the DAG stays under 20 per
second, well under the quota. Set ``NDMG_SUBMIT_RATE`` (per second, per run) to change it.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

from ndmg_cloud.participant.runplan import ScanTask

DEFAULT_SUBMIT_RATE = 5.0  # SubmitJob calls per second per run
BATCH_SUBMIT_QUOTA = 50  # per second per account (AWS Batch service quotas, fixed)


def submit_rate() -> float:
    """SubmitJob calls per second for one run (``NDMG_SUBMIT_RATE``), within (0, 50]."""
    raw = os.environ.get("NDMG_SUBMIT_RATE", str(DEFAULT_SUBMIT_RATE))
    try:
        rate = float(raw)
    except ValueError:
        rate = 0.0
    if not 0 < rate <= BATCH_SUBMIT_QUOTA:
        raise ValueError(
            f"NDMG_SUBMIT_RATE={raw!r} is not a rate AWS Batch allows: give SubmitJob calls per second, "
            f"above 0 and at most {BATCH_SUBMIT_QUOTA} (the account's quota), e.g. {DEFAULT_SUBMIT_RATE:g}"
        )
    return rate


def paced(tasks: list[ScanTask], rate: float, start: float | None = None) -> list[ScanTask]:
    """Batch scans' tasks, each with its turn to submit: the i-th at start + i / rate."""
    start = time.time() if start is None else start
    return [replace(task, submit_not_before=round(start + turn / rate, 3)) for turn, task in enumerate(tasks)]
