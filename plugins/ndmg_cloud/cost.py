"""What a scan costs: instance time of the r5.large each Batch job runs on."""

from __future__ import annotations

# r5.large (2 vCPU, 16 GiB), us-east-1 on-demand, USD per hour. A job definition of 2 vCPUs
# and 15200 MiB takes the whole instance, so a job pays for one instance while it runs.
R5_LARGE_ON_DEMAND_USD_PER_HOUR = 0.126
R5_LARGE_VCPUS = 2


def job_cost_usd(started_ms: int | None, stopped_ms: int | None, vcpus: int = R5_LARGE_VCPUS) -> float:
    """On-demand cost of one attempt from its start/stop times (ms since the epoch)."""
    if not started_ms or not stopped_ms or stopped_ms < started_ms:
        return 0.0
    hours = (stopped_ms - started_ms) / 3_600_000
    instances = max(1.0, vcpus / R5_LARGE_VCPUS)
    return hours * R5_LARGE_ON_DEMAND_USD_PER_HOUR * instances
