"""Why a Batch job may sit in RUNNABLE: can any compute environment of its queue run it?

Pure functions over DescribeJobQueues / DescribeComputeEnvironments answers, so the
watchdog can tell a queue that will never run the job (cancel it, say why) from one that
is still scaling up (leave it alone).
"""

from __future__ import annotations

from typing import Any

# GiB of memory per instance type family size; Batch reserves some for the agent.
SIZE_GIB = {"large": 16, "xlarge": 32, "2xlarge": 64, "4xlarge": 128, "8xlarge": 256, "12xlarge": 384, "16xlarge": 512, "24xlarge": 768}
FAMILY_GIB_PER_VCPU = {"r": 8, "m": 4, "c": 2, "x": 16, "z": 8, "t": 4}
AGENT_RESERVE_MIB = 1024


def instance_vcpus(instance_type: str) -> int | None:
    """vCPUs of an instance type (r5.large -> 2); None when unknown or 'optimal'."""
    family, _, size = instance_type.partition(".")
    if not size or size not in SIZE_GIB or family[:1] not in FAMILY_GIB_PER_VCPU:
        return None
    return SIZE_GIB[size] // 8


def instance_memory_mib(instance_type: str) -> int | None:
    """Memory of an instance type (r5.large -> 16384); None when unknown or 'optimal'."""
    family, _, size = instance_type.partition(".")
    if not size or size not in SIZE_GIB or family[:1] not in FAMILY_GIB_PER_VCPU:
        return None
    return SIZE_GIB[size] // 8 * FAMILY_GIB_PER_VCPU[family[0]] * 1024


def job_needs(job: dict[str, Any]) -> tuple[int, int]:
    """(vCPUs, MiB) the job asks for."""
    container = job.get("container") or {}
    vcpus, memory = container.get("vcpus") or 0, container.get("memory") or 0
    for req in container.get("resourceRequirements") or ():
        if req.get("type") == "VCPU":
            vcpus = float(req["value"])
        elif req.get("type") == "MEMORY":
            memory = int(req["value"])
    return int(vcpus), int(memory)


def why_it_cannot_run(ce: dict[str, Any], vcpus: int, memory: int) -> str | None:
    """Why this compute environment can never run the job, or None if it could."""
    name = ce.get("computeEnvironmentName", "?")
    if ce.get("status") == "INVALID":
        return f"compute environment {name} is INVALID ({ce.get('statusReason', 'no reason given')})"
    if ce.get("state") == "DISABLED":
        return f"compute environment {name} is DISABLED"
    resources = ce.get("computeResources") or {}
    if not resources:
        return None  # unmanaged: its capacity is not ours to judge
    if resources.get("maxvCpus", 0) < vcpus:
        return f"compute environment {name} allows at most {resources.get('maxvCpus')} vCPUs, the job needs {vcpus}"
    types = resources.get("instanceTypes") or ()
    cores = [c for c in (instance_vcpus(t) for t in types) if c is not None]
    if types and len(cores) == len(types) and max(cores) < vcpus:
        types = ", ".join(resources["instanceTypes"])
        return f"instance types {types} of compute environment {name} have fewer than the job's {vcpus} vCPUs"
    sizes = [m for m in (instance_memory_mib(t) for t in types) if m is not None]
    if types and len(sizes) == len(types) and max(sizes) - AGENT_RESERVE_MIB < memory:
        types = ", ".join(resources["instanceTypes"])
        return f"instance types {types} of compute environment {name} cannot fit the job's {memory} MiB"
    return None


def diagnose_stuck(job: dict[str, Any], queue: dict[str, Any] | None, environments: list[dict[str, Any]]) -> str | None:
    """Why a RUNNABLE job will never start, or None when some environment can run it (it
    may be scaling up: leave the job alone)."""
    if queue is None:
        return "its job queue no longer exists"
    if queue.get("state") == "DISABLED" or queue.get("status") == "INVALID":
        return f"job queue {queue.get('jobQueueName')} is {queue.get('state')}/{queue.get('status')}"
    vcpus, memory = job_needs(job)
    reasons = [why_it_cannot_run(ce, vcpus, memory) for ce in environments]
    if not environments:
        return f"job queue {queue.get('jobQueueName')} has no compute environment"
    if any(r is None for r in reasons):
        return None
    return "; ".join(r for r in reasons if r)
