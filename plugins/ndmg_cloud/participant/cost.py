"""What a scan costs: instance time of the r5.large each Batch job runs on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ndmg_cloud.participant.params import RunConfig

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


# Spot r5.large has run at roughly 40 % of on-demand; the seed's "$.05 a scan" is this.
SPOT_FRACTION = 0.4
HOURS_PER_SCAN = {"m2g": 1.5, "ndmg": 1.5, "lite": 0.05}


@dataclass(frozen=True)
class CostEstimate:
    """What a run of ``scans`` scans would cost, before it runs."""

    scans: int
    instance_hours: float
    vcpu_hours: float
    on_demand_usd: float
    spot_usd: float

    def __str__(self) -> str:
        return (
            f"{self.instance_hours} instance-hours ({self.vcpu_hours} vCPU-hours) of r5.large: "
            f"about ${self.on_demand_usd:.2f} on-demand, ${self.spot_usd:.2f} on Spot"
        )


class OverBudget(ValueError):
    """A run whose estimate is above its ``max_cost_usd``; the message says what to do."""


def estimate(scans: int, pipeline: str, hours_per_scan: float | None = None) -> CostEstimate:
    """Before a run: instance-hours, vCPU-hours and dollars on-demand vs Spot."""
    hours = scans * (hours_per_scan if hours_per_scan is not None else HOURS_PER_SCAN.get(pipeline, 1.5))
    on_demand = hours * R5_LARGE_ON_DEMAND_USD_PER_HOUR
    return CostEstimate(
        scans=scans,
        instance_hours=round(hours, 2),
        vcpu_hours=round(hours * R5_LARGE_VCPUS, 2),
        on_demand_usd=round(on_demand, 2),
        spot_usd=round(on_demand * SPOT_FRACTION, 2),
    )


def check_cost(config: RunConfig, scans: int, hours_per_scan: float | None = None) -> CostEstimate:
    """The estimate of ``scans`` scans of a run; ``OverBudget`` if it is above the run's
    ``max_cost_usd`` (AWS Batch only: the local backend bills nothing)."""
    guess = estimate(scans, config.pipeline, hours_per_scan)
    max_cost_usd = config.max_cost_usd
    if max_cost_usd is not None and config.backend == "aws_batch" and guess.on_demand_usd > max_cost_usd:
        raise OverBudget(
            f"{scans} scans would cost about ${guess.on_demand_usd:.2f} on-demand "
            f"(${guess.spot_usd:.2f} on Spot), above max_cost_usd={max_cost_usd}: "
            "raise max_cost_usd or narrow the run with participant_label"
        )
    return guess


# a report cell's tooltip (short: a 10,000-scan report repeats it on every row)
NOT_BILLED_TITLE = "backend=local: ran on the Airflow worker, no AWS Batch instance billed"
ON_DEMAND_TITLE = f"estimate: run time (all attempts) x r5.large on-demand ${R5_LARGE_ON_DEMAND_USD_PER_HOUR}/h"


def cost_basis(backend: str) -> str:
    """How a run's ``cost_usd`` figures were made, in words (report.json's ``cost_basis``)."""
    if backend == "local":
        return "not billed: backend=local runs scans on the Airflow worker"
    return f"estimate: job run time x r5.large on-demand ${R5_LARGE_ON_DEMAND_USD_PER_HOUR}/h (us-east-1)"


def cost_cell(backend: str, row: dict[str, Any]) -> tuple[str, str]:
    """A report row's cost as (text, tooltip): never an empty cell without a reason."""
    if not row.get("job_id"):
        return "—", "no job ran for this scan in this run"
    if backend == "local":
        return "not billed", NOT_BILLED_TITLE
    if not row.get("cost_usd"):
        return "—", "unknown: Batch reported no start and stop time for this job"
    return f"${row['cost_usd']:.3f}", ON_DEMAND_TITLE
