"""The run plan: what ``discover`` found, written once to the run's job dir.

The plan holds the run config, the scans (every valid one, the first invalid ones), the
scans an earlier run already made (``skipped_done`` rows) and why others run again. It can
be megabytes for a large dataset, so it never travels through XCom: ``discover`` writes it
once (``<jobdir>plan-<run token>.json``) and returns a ``PlanRef`` (its URI, the config and
the counts: the same few hundred bytes whatever N). Each later task reads the plan by its
URI, with one GET.

The plan settled once the image is known (``canary.Settlement``) is written next to it
(``settled-<run token>.json``) for the same reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.s3 import put_json, read_json_at
from ndmg_cloud.participant.jobspec import run_file_uri, spec_uri
from ndmg_cloud.participant.lease import TakeOver
from ndmg_cloud.participant.params import RunConfig
from ndmg_cloud.participant.seal import seal, unseal
from ndmg_cloud.participant.verify import ScanResult

PLAN_REF = "plan-ref"  # the role of discover's XCom in its seal
PILOT, RELEASED = "pilot", "released"  # the two lists of scan tasks (plan_scans', release_scans')


@dataclass(frozen=True)
class ScanTask:
    """One mapped scan task's argument (pilot_scan, run_scan or run_scan_local): the scan and
    its job spec, and for a Batch scan how long RUNNABLE is normal and its turn to submit.
    The SubmitJob payload is not among them: the task builds it from the run's configuration.

    It travels sealed (``sealed_list``), bound to its run, its list and its place in it: the
    task checks the seal (``verified``) before it uses anything of it."""

    scan_id: str
    job_spec_uri: str
    runnable_timeout: int | None = None  # aws_batch: seconds RUNNABLE before the stuck-job check
    submit_not_before: float | None = None  # aws_batch: epoch seconds of its turn to submit (pacing)

    def kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments, as ``expand_kwargs`` hands them over (unset ones left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_kwargs(cls, data: dict[str, Any]) -> ScanTask:
        """Unchecked: for what only names scans (task states, log links); a task that runs a
        scan reads its argument with ``verified``."""
        return cls(
            scan_id=data["scan_id"],
            job_spec_uri=data["job_spec_uri"],
            runnable_timeout=data.get("runnable_timeout"),
            submit_not_before=data.get("submit_not_before"),
        )

    @staticmethod
    def sealed_list(tasks: list[ScanTask], run_id: str, role: str) -> list[dict[str, Any]]:
        """The tasks' arguments, each sealed for its place in the ``role`` list of run ``run_id``."""
        return [seal(task.kwargs(), _place(run_id, role, i)) for i, task in enumerate(tasks)]

    @classmethod
    def verified(cls, data: Any, run_id: str, role: str, map_index: int) -> ScanTask:
        """The argument of map index ``map_index`` of the ``role`` list, if its seal holds."""
        where = _place(run_id, role, map_index)
        body = unseal(data, where, f"the argument of scan task {map_index}")
        return cls.from_kwargs(body)


def _place(run_id: str, role: str, index: int) -> str:
    return f"{run_id}:{role}:{index}"


@dataclass
class PlanRef:
    """The ``discover`` task's XCom: where the plan is, the run config, the counts."""

    uri: str
    config: RunConfig
    scans: int  # scans in the plan: valid ones and the invalid ones listed
    valid: int
    done: int  # valid scans an earlier run already made (before the image check)

    def to_dict(self) -> dict[str, Any]:
        """The XCom: sealed for this run."""
        return seal({**asdict(self), "config": self.config.to_dict()}, f"{self.config.run_id}:{PLAN_REF}")

    @classmethod
    def from_dict(cls, data: Any, run_id: str) -> PlanRef:
        """discover's XCom in run ``run_id``, if its seal holds (``BrokenSeal`` otherwise)."""
        body = unseal(data, f"{run_id}:{PLAN_REF}", "discover's XCom (the run's configuration and plan)")
        return cls(**{**body, "config": RunConfig.from_dict(body["config"])})

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

    def scan_tasks(self) -> list[ScanTask]:
        """The task of every valid scan (one GET of its spec each, whatever N). A dry run runs none."""
        config = self.config
        if config.dry_run:
            return []
        runnable_timeout = config.runnable_timeout_minutes * 60 if config.backend == "aws_batch" else None
        return [ScanTask(scan.scan_id, spec_uri(config, scan.scan_id), runnable_timeout) for scan in self.valid]

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
        put_json(s3_client, uri, seal(self.to_dict(), uri))
        return PlanRef(uri, self.config, len(self.scans), len(self.valid), len(self.done))

    @classmethod
    def read(cls, s3_client: Any, ref: PlanRef) -> RunPlan:
        """The plan ``ref`` points at (a verified ``PlanRef``), if its seal holds."""
        uri = run_file_uri(ref.config, "plan", ".json")  # where this run's plan is, whatever ref.uri says
        return cls.from_dict(unseal(read_json_at(s3_client, uri), uri, "the run plan"))
