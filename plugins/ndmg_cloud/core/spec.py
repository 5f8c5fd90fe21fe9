"""The job spec: one JSON per scan, holding everything the scan's container needs (the scan,
its inputs, where its outputs go, the pipeline call) and ``batch``, the SubmitJob payload.

Written by the run (``participant.jobspec`` builds it), read by the scan runner in the image
and by the orchestrator: the one type both sides share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.s3 import put_json, read_json_at

SPEC_VERSION = 1
RUNNER_COMMAND = "ndmg-scan"  # what every scan image provides on its PATH
JOB_SPEC_ENV = "NDMG_JOB_SPEC"  # the job spec's URI, in a scan job's environment
# the SHA-256 of the job spec the orchestrator checked before submitting: the runner refuses another
JOB_SPEC_SHA256_ENV = "NDMG_JOB_SPEC_SHA256"
# Inside the container the pipeline reads and writes local folders only.
WORK_INPUT = "/work/input"
WORK_OUTPUT = "/work/output"


@dataclass(frozen=True)
class SubmitJob:
    """One Batch SubmitJob request. ``payload()`` is AWS's own shape, the job spec's ``batch``
    (valid for ``aws batch submit-job --cli-input-json``)."""

    job_name: str
    job_queue: str
    job_definition: str
    command: list[str] | None = None  # None: the job definition's
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    timeout_seconds: int | None = None
    retry_strategy: dict[str, Any] | None = None
    propagate_tags: bool = True

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"jobName": self.job_name, "jobQueue": self.job_queue, "jobDefinition": self.job_definition}
        overrides: dict[str, Any] = {}
        if self.command is not None:
            overrides["command"] = list(self.command)
        if self.environment:
            overrides["environment"] = [{"name": k, "value": v} for k, v in self.environment.items()]
        if overrides:
            payload["containerOverrides"] = overrides
        if self.tags:
            payload["tags"] = dict(self.tags)
        payload["propagateTags"] = self.propagate_tags
        if self.retry_strategy is not None:
            payload["retryStrategy"] = self.retry_strategy
        if self.timeout_seconds is not None:
            payload["timeout"] = {"attemptDurationSeconds": self.timeout_seconds}
        return payload

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> SubmitJob:
        """A payload in AWS's shape; ``ValueError`` naming what is missing."""
        try:
            overrides = data.get("containerOverrides") or {}
            return cls(
                job_name=data["jobName"],
                job_queue=data["jobQueue"],
                job_definition=data["jobDefinition"],
                command=list(overrides["command"]) if "command" in overrides else None,
                environment={e["name"]: e["value"] for e in overrides.get("environment") or []},
                tags=dict(data.get("tags") or {}),
                timeout_seconds=(data.get("timeout") or {}).get("attemptDurationSeconds"),
                retry_strategy=data.get("retryStrategy"),
                propagate_tags=bool(data.get("propagateTags", True)),
            )
        except KeyError as err:
            raise ValueError(f"no {err.args[0]!r} in the SubmitJob payload") from None
        except (AttributeError, TypeError) as err:
            raise ValueError(f"the SubmitJob payload is not in AWS's shape: {err}") from None


@dataclass
class PipelineCall:
    """What the scan's container runs: the pipeline, its image and options, and the
    command line this code builds from them (the runner rebuilds it and refuses another)."""

    name: str
    image: str
    options: dict[str, Any]
    command: list[str] | None = None  # None: a spec that did not record it (the runner builds it)


@dataclass
class JobSpec:
    """One scan's job spec: everything its container needs, and ``batch``, its SubmitJob
    request (written in AWS's own shape: ``aws batch submit-job --cli-input-json``).
    ``to_dict`` is the document at ``spec_uri`` (the contract in the README, "Outputs and report")."""

    spec_uri: str
    run_id: str
    dataset: str
    scan: Scan
    inputs: dict[str, str | None]  # role (dwi, bval, bvec, t1w, dataset_description) -> path under input_root
    input_root: str
    output_root: str
    output_prefix: str  # s3:// folder of the scan's outputs
    manifest: str  # s3:// URI of the scan manifest, written last
    expected_outputs: list[str]  # patterns under output_prefix
    extra_inputs: dict[str, str]  # path in the work dir -> s3:// URI (e.g. an atlas)
    pipeline: PipelineCall
    batch: SubmitJob
    spec_version: int = SPEC_VERSION

    @property
    def scan_id(self) -> str:
        return self.scan.scan_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": self.spec_version,
            "spec_uri": self.spec_uri,
            "run_id": self.run_id,
            "dataset": self.dataset,
            "scan": {**self.scan.to_dict(), "inputs": self.inputs},
            "input_root": self.input_root,
            "output_root": self.output_root,
            "output_prefix": self.output_prefix,
            "manifest": self.manifest,
            "expected_outputs": self.expected_outputs,
            "extra_inputs": self.extra_inputs,
            "pipeline": asdict(self.pipeline),
            "batch": self.batch.payload(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """A spec as written by ``to_dict``; ``ValueError`` naming what is wrong otherwise."""
        try:
            version = data.get("spec_version", SPEC_VERSION)
            if version > SPEC_VERSION:
                raise ValueError(f"spec_version {version} is newer than this code's {SPEC_VERSION}")
            scan = dict(data["scan"])
            inputs = scan.pop("inputs")
            return cls(
                spec_uri=data["spec_uri"],
                run_id=data["run_id"],
                dataset=data["dataset"],
                scan=Scan.from_dict(scan),
                inputs=inputs,
                input_root=data["input_root"],
                output_root=data["output_root"],
                output_prefix=data["output_prefix"],
                manifest=data["manifest"],
                expected_outputs=list(data["expected_outputs"]),
                extra_inputs=dict(data.get("extra_inputs") or {}),
                pipeline=PipelineCall(**data["pipeline"]),
                batch=SubmitJob.from_payload(data["batch"]),
                spec_version=version,
            )
        except KeyError as err:
            raise ValueError(f"no {err.args[0]!r} in the job spec") from None
        except (AttributeError, TypeError) as err:
            raise ValueError(f"the job spec is not one this code wrote: {err}") from None

    def write(self, s3_client: Any) -> None:
        """Put the spec at its URI: S3, or a local folder (``local`` backend only)."""
        put_json(s3_client, self.spec_uri, self.to_dict())

    @classmethod
    def read(cls, s3_client: Any, uri: str) -> JobSpec:
        return cls.from_dict(read_json_at(s3_client, uri))
