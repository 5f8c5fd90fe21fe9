"""Before the fan-out: the canary job, and the run plan settled once the image is known.

The canary (``backend=aws_batch``, param ``canary``, default on) is one short Batch job on
the run's own queue and job definition that runs ``ndmg-scan --self-check`` on one scan of
the run: the image's contract, the pipeline's own parser on the scan's exact command, the
atlases, the work disk, the job role's S3 access. It writes what it found beside the run's
report (``reports/<run id>/canary.json``). If it fails, the run stops having paid for one
small job, not for an instance per scan.

Then the settlement (``settle``, a ``Settlement``): a scan found done by discovery is skipped only if the code that
made it is the code this run will use (the image contract's fingerprint); otherwise it runs
again and its report row says why. The first ``pilot_scans`` scans to run go first; the
rest are released only when every pilot succeeded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ndmg_cloud.core.layout import split_uri
from ndmg_cloud.core.manifest import ContractSummary
from ndmg_cloud.core.s3 import get_json, put_json, read_if_present
from ndmg_cloud.core.spec import RUNNER_COMMAND, SubmitJob
from ndmg_cloud.participant.jobs import SUCCEEDED, JobRecord
from ndmg_cloud.participant.jobspec import job_name_prefix, run_file_uri, run_token, scan_tags, spec_uri, submit_job
from ndmg_cloud.participant.params import RunConfig
from ndmg_cloud.participant.runplan import ScanTask
from ndmg_cloud.participant.seal import seal, unseal
from ndmg_cloud.participant.verify import ScanResult
from ndmg_cloud.scan.contract import ImageContract, local_contract
from ndmg_cloud.scan.selfcheck import SelfCheck

CANARY_TIMEOUT_SECONDS = 15 * 60  # the self-check takes about a minute once the image is pulled


CANARY_PICK = "canary"  # the role of write_job_specs' canary XCom in its seal


@dataclass(frozen=True)
class CanaryJob:
    """The canary task's job: one scan's job spec, checked on the run's queue and job
    definition by the self-check instead of the scan. Built at submit time from the run's
    configuration and the scan id (``canary_job``); the XCom only names the scan (``pick``)."""

    scan_id: str
    job_spec_uri: str
    submission: SubmitJob
    runnable_timeout: int

    @staticmethod
    def pick(config: RunConfig, scan_id: str) -> dict[str, Any]:
        """write_job_specs' XCom ``canary_job``: which scan the canary checks, sealed for this run."""
        return seal({"scan_id": scan_id}, f"{config.run_id}:{CANARY_PICK}")

    @staticmethod
    def picked(data: Any, run_id: str) -> str:
        """The scan id in a ``pick`` XCom of run ``run_id``, if its seal holds."""
        return str(unseal(data, f"{run_id}:{CANARY_PICK}", "write_job_specs' canary_job XCom")["scan_id"])


def canary_job(config: RunConfig, scan_id: str, spec_sha256: str | None = None) -> CanaryJob:
    """The canary of a run: ``ndmg-scan --self-check`` on the scan's job spec, its findings
    written beside the run's report; the scan's tags and ``canary=true``."""
    uri = spec_uri(config, scan_id)
    result = config.outputs.canary_uri(config.run_id)
    command = [RUNNER_COMMAND, "--self-check", "--spec", uri, "--result", result]
    name = f"{job_name_prefix(config.dataset)}canary-{run_token(config.run_id)}"
    tags = {**scan_tags(config, scan_id), "canary": "true"}
    submission = submit_job(config, name, command, uri, tags, CANARY_TIMEOUT_SECONDS, spec_sha256)
    return CanaryJob(scan_id, uri, submission, config.runnable_timeout_minutes * 60)


@dataclass
class CanaryOutcome:
    """What the canary found: ``passed``, ``failed`` or ``skipped`` (with why)."""

    status: str
    reason: str | None = None
    scan_id: str | None = None
    job_id: str | None = None
    log_url: str | None = None
    failure_class: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    contract: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def image(self) -> ImageContract | None:
        return ImageContract.from_dict(self.contract) if self.contract else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryOutcome:
        """As written by ``to_dict``; a report.json of older code may lack it (skipped)."""
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**{"status": "skipped", "reason": "not recorded", **known})


@dataclass
class Settlement:
    """The settled run: what is done, what runs again and why, which scans go first."""

    done: dict[str, ScanResult]  # scan id -> its skipped_done report row
    reruns: dict[str, str]  # scan id -> why it runs although an earlier run made it
    pilots: list[str]  # scan ids run first, to success, before the others are released
    canary: CanaryOutcome
    contract: ContractSummary | None  # the code this run's scans are made with

    def to_run(self, tasks: list[ScanTask]) -> list[ScanTask]:
        """Of the tasks of every valid scan, those of the scans that run in this run."""
        return [t for t in tasks if t.scan_id not in self.done]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "done": {scan_id: row.to_dict() for scan_id, row in self.done.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settlement:
        return cls(
            done={k: ScanResult.from_dict(row) for k, row in data["done"].items()},
            reruns=dict(data["reruns"]),
            pilots=list(data["pilots"]),
            canary=CanaryOutcome.from_dict(data["canary"]),
            contract=ContractSummary.from_dict(data.get("contract")),
        )

    def write(self, s3_client: Any, config: RunConfig) -> str:
        """Write it, sealed, next to the run plan; return its URI (the plan_scans task's XCom)."""
        uri = run_file_uri(config, "settled", ".json")
        put_json(s3_client, uri, seal(self.to_dict(), uri))
        return uri

    @classmethod
    def read(cls, s3_client: Any, config: RunConfig) -> Settlement | None:
        """The run's settlement (where this run writes it; no XCom says where), if its seal
        holds; None if the run stopped before writing it."""
        uri = run_file_uri(config, "settled", ".json")
        raw = read_if_present(s3_client, uri)
        if raw is None:
            return None
        return cls.from_dict(unseal(json.loads(raw), uri, "the run's settlement"))


def skipped(config: RunConfig) -> CanaryOutcome:
    if config.dry_run:
        why = "dry run: nothing is submitted"
    elif config.backend != "aws_batch":
        why = f"backend={config.backend}: scans run on this machine, with the code installed here"
    else:
        why = "canary=false"
    return CanaryOutcome("skipped", why)


def run_contract(config: RunConfig, outcome: CanaryOutcome) -> ImageContract | None:
    """The code this run's scans are made with: the image the canary checked; the code
    installed here on the local backend; unknown (None) when no canary ran."""
    if outcome.status == "passed":
        return outcome.image
    return local_contract(config.pipeline) if config.backend == "local" else None


def canary_outcome(config: RunConfig, job: JobRecord, s3_client: Any) -> CanaryOutcome:
    """The canary's verdict from its Batch job and the findings it wrote (if it got that far)."""
    found = _found(config, s3_client, job.job_id)
    outcome = CanaryOutcome(
        "failed",
        scan_id=found.scan_id if found else None,
        job_id=job.job_id,
        log_url=job.log_url,
        checks=[asdict(c) for c in found.checks] if found else [],
        contract=found.contract.to_dict() if found and found.contract else None,
        log_tail=job.log_tail,
    )
    if job.status == SUCCEEDED and found and found.ok:
        outcome.status = "passed"
        image = outcome.image
        outcome.reason = f"the image can run this run's scans: {image.label}" if image else "passed"
        return outcome
    failing = found.first_failure if found else None
    if failing:
        outcome.reason = f"{failing.name}: {failing.detail}"
    elif job.status == SUCCEEDED:
        outcome.reason = f"the job succeeded but wrote no findings to {config.outputs.canary_uri(config.run_id)}"
    else:
        outcome.reason = job.reason or f"the canary job is {job.status}"
    outcome.failure_class = job.failure_class
    return outcome


def _found(config: RunConfig, s3_client: Any, job_id: str) -> SelfCheck | None:
    """The canary job's findings; none when it died first, or when they are not its own (a
    scan job may write there too: only the canary's Batch job id speaks for the image)."""
    bucket, key = split_uri(config.outputs.canary_uri(config.run_id))
    try:
        found = SelfCheck.from_dict(get_json(s3_client, bucket, key))
    except Exception:  # no findings (the job died before writing them) is itself a finding
        return None
    return found if found.job_id == job_id else None


def settle(
    config: RunConfig,
    tasks: list[ScanTask],
    done: dict[str, ScanResult],
    reruns: dict[str, str],
    contract: ImageContract | None,
    outcome: CanaryOutcome,
) -> Settlement:
    """Keep as done only what this run's code made; the first ``pilot_scans`` of the rest go
    first (aws_batch).

    ``tasks`` are the tasks of every valid scan, ``done`` the rows of the scans
    discovery found done for this pipeline and options (each naming the contract that made
    it), ``contract`` this run's (None when unknown: canary off).
    """
    kept, reruns = {}, dict(reruns)
    for scan_id, row in done.items():
        if contract is not None and row.contract != contract.fingerprint:
            reruns[scan_id] = _rerun_reason(row, contract)
            continue
        if contract is None and config.backend == "aws_batch" and not config.dry_run:
            row = replace(row, reason=f"{row.reason}; its image was not compared ({outcome.reason})")
        kept[scan_id] = row
    to_run = [] if config.dry_run else [t.scan_id for t in tasks if t.scan_id not in kept]
    pilots = to_run[: config.pilot_scans] if config.backend == "aws_batch" else []
    return Settlement(
        done=kept,
        reruns={k: v for k, v in reruns.items() if k not in kept},
        pilots=pilots,
        canary=outcome,
        contract=contract.summary() if contract else None,
    )


def _rerun_reason(row: ScanResult, contract: ImageContract) -> str:
    made, now = row.made_by or "code with no image contract", contract.label
    if made == now:  # the same code in another image: the fingerprints tell them apart
        made, now = f"{made} (contract {row.contract})", f"{now} (contract {contract.fingerprint})"
    return f"done with {made}, this run uses {now}"
