"""The run plan: what ``discover`` found, written once to the run's job dir.

The plan holds the run config, the scans (every valid one, the first invalid ones), the
scans an earlier run already made (``skipped_done`` rows) and why others run again. It can
be megabytes for a large dataset, so it never travels through XCom: ``discover`` writes it
once (``<jobdir>plan-<run token>.json``) and returns a ``PlanRef`` (its URI, the config and
the counts: the same few hundred bytes whatever N). Each later task reads the plan by its
URI, with one GET.

``Settlement`` is the plan settled once the image is known (``canary.settle``); it is
written next to the plan (``settled-<run token>.json``) for the same reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.s3 import put_json, read_json_at
from ndmg_cloud.participant.jobspec import run_file_uri, spec_uri
from ndmg_cloud.participant.lease import TakeOver
from ndmg_cloud.participant.params import RunConfig
from ndmg_cloud.participant.verify import ScanResult


@dataclass
class PlanRef:
    """The ``discover`` task's XCom: where the plan is, the run config, the counts."""

    uri: str
    config: RunConfig
    scans: int  # scans in the plan: valid ones and the invalid ones listed
    valid: int
    done: int  # valid scans an earlier run already made (before the image check)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanRef:
        return cls(**{**data, "config": RunConfig.from_dict(data["config"])})

    @staticmethod
    def config_in(data: dict[str, Any]) -> RunConfig:
        """The run config in a discover XCom: a PlanRef's, or the whole plan's that code
        before the plan file returned (a run in flight across an upgrade: its lease is
        still released, ``ndmg_cloud kill`` still finds its jobs)."""
        return RunConfig.from_dict(data["config"])


@dataclass
class RunPlan:
    """What one listing of the dataset found (see the module docstring)."""

    config: RunConfig
    scans: list[Scan]  # valid scans, and the first invalid ones (the rest are counted)
    done: dict[str, ScanResult] = field(default_factory=dict)  # scan id -> its skipped_done row
    reruns: dict[str, str] = field(default_factory=dict)  # scan id -> why it runs again
    invalid_omitted: int = 0  # invalid scans beyond those listed: counted, not listed
    warnings: list[str] = field(default_factory=list)
    took_over: TakeOver | None = None  # the lease this run took over, if it did
    keys_listed: int = 0
    started_at: str = ""

    @property
    def valid(self) -> list[Scan]:
        return [s for s in self.scans if s.valid]

    def scan_tasks(self) -> list[dict[str, Any]]:
        """The task arguments of every valid scan's mapped task (run_scan, run_scan_local or
        pilot_scan). The SubmitJob payload is not among them: the task reads it from the
        job spec (one GET, whatever N). A dry run runs none."""
        config = self.config
        if config.dry_run:
            return []
        tasks = [{"scan_id": scan.scan_id, "job_spec_uri": spec_uri(config, scan)} for scan in self.valid]
        if config.backend == "aws_batch":
            for item in tasks:
                item["runnable_timeout"] = config.runnable_timeout_minutes * 60
        return tasks

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "scans": [s.to_dict() for s in self.scans],
            "done": {scan_id: row.to_dict() for scan_id, row in self.done.items()},
            "reruns": self.reruns,
            "invalid_omitted": self.invalid_omitted,
            "warnings": self.warnings,
            "took_over": self.took_over.to_dict() if self.took_over else None,
            "keys_listed": self.keys_listed,
            "started_at": self.started_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        return cls(
            config=RunConfig.from_dict(data["config"]),
            scans=[Scan.from_dict(s) for s in data["scans"]],
            done={scan_id: ScanResult.from_dict(row) for scan_id, row in data["done"].items()},
            reruns=data["reruns"],
            invalid_omitted=data["invalid_omitted"],
            warnings=data["warnings"],
            took_over=TakeOver(**data["took_over"]) if data["took_over"] else None,
            keys_listed=data["keys_listed"],
            started_at=data["started_at"],
        )

    def write(self, s3_client: Any) -> PlanRef:
        """Write the plan to the run's job dir; return the XCom that points at it."""
        uri = run_file_uri(self.config, "plan", ".json")
        put_json(s3_client, uri, self.to_dict())
        return PlanRef(uri, self.config, len(self.scans), len(self.valid), len(self.done))

    @classmethod
    def read(cls, s3_client: Any, ref: PlanRef) -> RunPlan:
        return cls.from_dict(read_json_at(s3_client, ref.uri))


@dataclass
class Settlement:
    """The settled run: what is done, what runs again and why, which scans go first."""

    done: dict[str, ScanResult]  # scan id -> its skipped_done report row
    reruns: dict[str, str]  # scan id -> why it runs although an earlier run made it
    pilots: list[str]  # scan ids run first, to success, before the others are released
    canary: dict[str, Any]  # the CanaryOutcome, as a dict
    contract: dict[str, Any] | None  # summary of the code this run's scans are made with

    def to_run(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of the task arguments of every valid scan, those of the scans that run in this run."""
        return [t for t in tasks if t["scan_id"] not in self.done]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "done": {scan_id: row.to_dict() for scan_id, row in self.done.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settlement:
        return cls(**{**data, "done": {k: ScanResult.from_dict(row) for k, row in data["done"].items()}})

    def write(self, s3_client: Any, config: RunConfig) -> str:
        """Write it next to the run plan; return its URI (the plan_scans task's XCom)."""
        uri = run_file_uri(config, "settled", ".json")
        put_json(s3_client, uri, self.to_dict())
        return uri

    @classmethod
    def read(cls, s3_client: Any, uri: str) -> Settlement:
        return cls.from_dict(read_json_at(s3_client, uri))
