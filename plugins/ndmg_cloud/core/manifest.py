"""The scan manifest: written LAST by the scan runner, read by the verifier and by resume.

A scan counts as done only when its manifest says success for the run, pipeline, options and
image contract in question, and its outputs have the sizes it records (``ndmg_cloud.participant.verify``).
A manifest on S3 may have been written by anything (older code, a person, a half-finished
upload), so ``from_dict`` reads what it can and leaves the judging to the verifier: a
missing field is None (or empty), never a crash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SUCCESS = "success"


class NotAManifest(ValueError):
    """What was read is not a JSON object."""


@dataclass(frozen=True)
class ContractSummary:
    """An image contract in brief (``scan.contract.ImageContract.summary``): what every scan
    manifest, a run's settlement and its report record of the code that made the outputs."""

    fingerprint: str | None  # twelve hex digits over what a scan's result depends on
    label: str | None  # the code as a person names it: ``m2g 95d271f7``
    pipeline: str | None = None
    code: dict[str, str] = field(default_factory=dict)  # name, version, revision, source
    base_image: str | None = None
    atlas_source: str | None = None
    environment: str | None = None  # ``Python 3.7.16 (dipy 1.1.1, ...); FSL 6.0.4; AFNI ...``

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ContractSummary | None:
        """A summary as written (None for anything that is not one)."""
        if not isinstance(data, dict):
            return None
        code = data.get("code")
        return cls(
            fingerprint=data.get("fingerprint"),
            label=data.get("label"),
            pipeline=data.get("pipeline"),
            code=code if isinstance(code, dict) else {},
            base_image=data.get("base_image"),
            atlas_source=data.get("atlas_source"),
            environment=data.get("environment") if isinstance(data.get("environment"), str) else None,
        )


@dataclass
class MadeWith:
    """The code that made a scan's outputs."""

    name: str | None = None  # the pipeline
    image: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    contract: ContractSummary | None = None  # the image contract's summary

    @property
    def label(self) -> str | None:
        return self.contract.label if self.contract else None

    @property
    def fingerprint(self) -> str | None:
        return self.contract.fingerprint if self.contract else None


@dataclass
class OutputFile:
    path: str  # under the scan's output prefix
    size: int | None  # None: the manifest does not say (it then matches no object)
    sha256: str


@dataclass
class ScanManifest:
    """What one scan's job did (see the module docstring; the README, "Outputs and report")."""

    status: str | None
    scan_id: str | None
    dataset: str | None
    run_id: str | None
    pipeline: MadeWith
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {key, etag, size}
    outputs: list[OutputFile] = field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    log_tail: list[str] = field(default_factory=list)
    streamlines: int | None = None  # when the pipeline reports it

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS

    def size_of(self) -> dict[str, int | None]:
        """Output path -> the size the manifest records."""
        return {o.path: o.size for o in self.outputs}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.streamlines is None:
            del data["streamlines"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ScanManifest:
        """Read a manifest as found on S3; ``NotAManifest`` if it is not a JSON object."""
        if not isinstance(data, dict):
            raise NotAManifest("not a JSON object")
        made: dict[str, Any] = data["pipeline"] if isinstance(data.get("pipeline"), dict) else {}
        options, inputs = made.get("options"), data.get("inputs")
        outputs = [
            OutputFile(str(o.get("path")), o.get("size") if isinstance(o.get("size"), int) else None, str(o.get("sha256", "")))
            for o in data.get("outputs") or []
            if isinstance(o, dict)
        ]
        streamlines = data.get("streamlines")
        return cls(
            status=data.get("status"),
            scan_id=data.get("scan_id"),
            dataset=data.get("dataset"),
            run_id=data.get("run_id"),
            pipeline=MadeWith(
                name=made.get("name"),
                image=made.get("image"),
                options=options if isinstance(options, dict) else {},
                command=made.get("command") or [],
                contract=ContractSummary.from_dict(made.get("contract")),
            ),
            inputs=inputs if isinstance(inputs, dict) else {},
            outputs=outputs,
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            exit_code=data.get("exit_code"),
            log_tail=[str(line) for line in data.get("log_tail") or []],
            streamlines=streamlines if isinstance(streamlines, int) and not isinstance(streamlines, bool) else None,
        )
