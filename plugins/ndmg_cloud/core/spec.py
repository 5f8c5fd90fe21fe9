"""The job spec: one JSON per scan, holding everything the scan's container needs (the scan,
its inputs, where its outputs go, the pipeline call) and ``batch``, the SubmitJob payload.

Written by the run (``participant.jobspec`` builds it), read by the scan runner in the image
and by the orchestrator: the one type both sides share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.s3 import put_json, read_json_at

SPEC_VERSION = 1
RUNNER_COMMAND = "ndmg-scan"  # what every scan image provides on its PATH
# Inside the container the pipeline reads and writes local folders only.
WORK_INPUT = "/work/input"
WORK_OUTPUT = "/work/output"


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
    """One scan's job spec: everything its container needs, and ``batch``, the exact
    SubmitJob payload (in AWS's own shape: ``aws batch submit-job --cli-input-json``).
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
    batch: dict[str, Any]
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
            "batch": self.batch,
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
                batch=data["batch"],
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
