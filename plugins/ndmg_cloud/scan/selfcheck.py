"""``ndmg-scan --self-check --spec URI``: prove this image can run one scan of this project,
without running the pipeline. The canary job of each ``aws_batch`` run does this before any
scan job is submitted; it costs one short job instead of N failed instances.

Checks, one line each:

- contract: the image carries a contract (``ndmg_cloud.scan.contract``) for the spec's pipeline;
- command: the pipeline's own argument parser accepts the spec's exact command (parsed,
  never run);
- atlases: each requested atlas is in the contract and a real NIfTI file in the image,
  and the pipeline's name matching selects exactly that file;
- tools: the programs the pipeline runs (FSL and AFNI for m2g) are on PATH, the variables
  and files it insists on are there, and its own dependency check passes (``Pipeline.toolchain``);
- writable: the folders it writes into outside its work folder take a new file (m2g: ``/``
  and its atlas mask folder);
- disk: the work folder has the room the pipeline needs;
- s3 read: the job's role can read the job spec and the scan's inputs;
- s3 write: it can write and delete a probe key under the scan's output prefix.

With ``--result URI`` the findings (and the contract) are also written there as JSON, for
the orchestrator to read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ndmg_cloud.core.atlases import LABEL_DIR, selected_by
from ndmg_cloud.core.layout import PROBE_NAME, split_uri
from ndmg_cloud.core.pipelines import OptionError, Pipeline, get_pipeline
from ndmg_cloud.core.spec import WORK_INPUT, WORK_OUTPUT, JobSpec
from ndmg_cloud.scan.contract import (
    PARSE_TIMEOUT_SECONDS,
    ContractError,
    ImageContract,
    current,
    find_program,
    nifti_problem,
    parse_only,
    python_of,
    reference_files,
)
from ndmg_cloud.scan.scrub import pipeline_environment

RECIPES = {"m2g": "container/Dockerfile.m2g", "lite": "container/Dockerfile.lite"}  # our scan images
ATLAS_DIR_ENV = "NDMG_ATLAS_DIR"  # where the atlases are, when not where the pipeline keeps them
WORK_DISK_ENV = "NDMG_WORK_DISK_GB"  # free GB a scan needs, when not the pipeline's figure
TOOLCHAIN_ROOT_ENV = "NDMG_TOOLCHAIN_ROOT"  # where the toolchain's files are, when not under / (tests)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name:<9} {self.detail}"


@dataclass
class SelfCheck:
    scan_id: str
    pipeline: str
    checks: list[Check] = field(default_factory=list)
    contract: ImageContract | None = None
    checked_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    job_id: str | None = None  # the Batch job that checked (AWS_BATCH_JOB_ID), as written

    def to_dict(self) -> dict[str, Any]:
        """The findings document (``--result``; the canary's ``canary.json``)."""
        return {
            "ok": self.ok,
            "job_id": self.job_id or os.environ.get("AWS_BATCH_JOB_ID"),  # set by Batch in every job's container
            "scan_id": self.scan_id,
            "pipeline": self.pipeline,
            "checked_at": self.checked_at,
            "checks": [asdict(c) for c in self.checks],
            "contract": self.contract.to_dict() if self.contract else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelfCheck:
        """A findings document; ``ValueError`` if it is not one."""
        try:
            return cls(
                scan_id=str(data["scan_id"]),
                pipeline=str(data.get("pipeline") or ""),
                checks=[Check(str(c["name"]), bool(c["ok"]), str(c["detail"])) for c in data.get("checks") or []],
                contract=ImageContract.from_dict(data["contract"]) if data.get("contract") else None,
                checked_at=str(data.get("checked_at") or ""),
                job_id=data.get("job_id"),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a self-check's findings: {err!r}") from None


def self_check(spec: JobSpec, client: Any, workdir: Path) -> SelfCheck:
    """Run every check (each reports on its own; one failing does not hide the others)."""
    name = spec.pipeline.name
    result = SelfCheck(spec.scan_id, name)
    pipeline = get_pipeline(name)
    options = spec.pipeline.options
    _check_contract(result, name)
    _check_command(result, spec.pipeline.command or pipeline.command(spec.scan, options, WORK_INPUT, WORK_OUTPUT))
    if pipeline.catalogue:
        _check_atlases(result, pipeline, options)
    if pipeline.toolchain:
        _check_tools(result, pipeline, options)
    if pipeline.toolchain.writable:
        _check_writable(result, pipeline)
    _check_disk(result, pipeline, workdir)
    _check_s3(result, spec, client)
    return result


def _check_contract(result: SelfCheck, pipeline: str) -> None:
    try:
        contract = current(pipeline)
    except ContractError as err:
        result.add("contract", False, str(err))
        return
    if contract is None:
        recipe = RECIPES.get(pipeline)
        how = (
            f"build the scan image from {recipe}"
            if recipe
            else f"this project has no image recipe for {pipeline}: build one whose last step is "
            f"`ndmg-image-contract --pipeline {pipeline}` (container/README.md), or run with canary=false"
        )
        result.add("contract", False, f"this image has no contract for {pipeline} (NDMG_IMAGE_CONTRACT unset): {how}")
        return
    result.contract = contract
    if contract.pipeline != pipeline:
        result.add(
            "contract",
            False,
            f"this image runs {contract.pipeline} ({contract.label}), the run asks for "
            f"{pipeline}: point job_definition at a {pipeline} image",
        )
        return
    on = f"; on {contract.base_image}" if contract.base_image else ""
    environment = f"; {contract.environment}" if contract.environment else ""
    result.add("contract", True, f"{contract.label} (contract {contract.fingerprint}, runner {contract.runner}{on}{environment})")


def _check_command(result: SelfCheck, command: list[str]) -> None:
    parsed = parse_only(command, result.contract)
    if parsed.ok:
        result.add("command", True, f"{command[0]} accepts the scan's command ({len(command) - 1} arguments, checked by {parsed.how})")
    else:
        result.add("command", False, parsed.error)


def _check_atlases(result: SelfCheck, pipeline: Pipeline, options: dict[str, Any]) -> None:
    try:
        atlases = pipeline.atlases(options)
    except OptionError as err:
        result.add("atlases", False, str(err))
        return
    size = options["voxelsize"]
    offered = set((result.contract.atlases if result.contract else {}).get(size, []))
    root = atlas_root(pipeline)
    label_dir = root / LABEL_DIR
    present = [str(p) for p in sorted(label_dir.glob("*.nii.gz"))]
    problems = []
    for atlas in atlases:
        if result.contract and atlas.name not in offered:
            problems.append(f"{atlas.name} is not among the image's {len(offered)} atlases at {size}")
            continue
        problem = nifti_problem(label_dir / atlas.file) if (label_dir / atlas.file).exists() else "missing"
        if problem:
            problems.append(f"{label_dir / atlas.file}: {problem}")
            continue
        chosen = selected_by([atlas.argument], present, size)
        if [Path(p).name for p in chosen] != [atlas.file]:
            problems.append(f"{atlas.argument!r} selects {len(chosen)} files, not exactly {atlas.file}")
    for rel in reference_files(size) + pipeline.toolchain.atlas_paths(size):
        problem = nifti_problem(root / rel) if (root / rel).exists() else "missing"
        if problem:
            problems.append(f"{root / rel}: {problem}")
    if problems:
        result.add("atlases", False, "; ".join(problems))
    else:
        names = ", ".join(a.name for a in atlases)
        result.add("atlases", True, f"{names} at {size}: real NIfTI files, each selected alone")


def atlas_root(pipeline: Pipeline) -> Path:
    return Path(os.environ.get(ATLAS_DIR_ENV) or pipeline.atlas_dir or ".")


def _own_check(pipeline: Pipeline) -> str | None:
    """What the pipeline's own dependency check says is wrong (run by its program's
    interpreter), or None when it passes."""
    path = find_program(pipeline.program)
    interpreter = python_of(Path(path)) if path else None
    if not path or not interpreter or not pipeline.toolchain.own_check:
        return f"its own dependency check cannot run: {pipeline.program} is not a Python program on PATH"
    # the pipeline's own code, so the pipeline's environment: no credentials, its own HOME
    env = {**pipeline_environment(os.environ), "PYTHONWARNINGS": "ignore", "HOME": tempfile.mkdtemp(prefix="ndmg-own-check-")}
    try:
        done = subprocess.run(
            [*interpreter, "-c", pipeline.toolchain.own_check],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=PARSE_TIMEOUT_SECONDS,  # importing m2g imports its CPAC wrappers, as parsing does
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"its own dependency check did not finish: {err}"
    finally:
        shutil.rmtree(env["HOME"], ignore_errors=True)
    if done.returncode == 0:
        return None
    said = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return f"its own dependency check failed: {said[-1] if said else f'exit {done.returncode}'}"


def _check_tools(result: SelfCheck, pipeline: Pipeline, options: dict[str, Any]) -> None:
    toolchain = pipeline.toolchain
    programs = [p for p in toolchain.programs if shutil.which(p) is None]
    env = []
    for name, wanted in toolchain.env:
        value = os.environ.get(name)
        if not value:
            env.append(f"${name} unset")
        elif wanted is not None and value != wanted:
            env.append(f"${name} is {value!r}, not {wanted!r}")
    root = Path(os.environ.get(TOOLCHAIN_ROOT_ENV) or "/")
    files = [path for path, where in toolchain.file_paths(options, os.environ, root) if not where.is_file()]
    missing = []
    if programs:
        missing.append(f"{len(programs)} of its {len(toolchain.programs)} programs are not on PATH: {', '.join(programs)}")
    missing += env
    if files:
        missing.append(f"no {', '.join(files)}")
    own = _own_check(pipeline) if toolchain.own_check else None
    if own:
        missing.append(own)
    if missing:
        detail = "; ".join(missing)
        result.add(
            "tools", False, f"{result.pipeline} cannot run here: {detail} ({toolchain.why}); build the image on a base that has them"
        )
        return
    found = [f"{len(toolchain.programs)} programs on PATH"]
    if toolchain.env:
        found.append(", ".join(f"${name}" + (f"={wanted}" if wanted else "") for name, wanted in toolchain.env))
    if toolchain.files:
        found.append(f"its {len(toolchain.files)} files there")
    if toolchain.own_check:
        found.append(f"{pipeline.name}'s own dependency check passed")
    result.add("tools", True, "; ".join(found))


def _check_writable(result: SelfCheck, pipeline: Pipeline) -> None:
    """Each folder the pipeline writes into outside its work folder takes a new file (an
    absolute folder is looked for under NDMG_TOOLCHAIN_ROOT when set, as the tools' files)."""
    root = Path(os.environ.get(TOOLCHAIN_ROOT_ENV) or "/")
    problems = []
    folders = []
    for folder in pipeline.toolchain.writable:
        where = Path(folder.format(atlas_dir=atlas_root(pipeline))) if "{atlas_dir}" in folder else root / folder.lstrip("/")
        folders.append(str(where))
        probe = where / f".ndmg-write-probe-{uuid.uuid4().hex[:12]}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            problems.append(f"{where}: {err.strerror or err}")
    if problems:
        result.add(
            "writable",
            False,
            f"{pipeline.name} writes into folders this image does not let it write: {'; '.join(problems)} "
            f"({pipeline.toolchain.why}); run the job with a writable root file system and atlas folder",
        )
    else:
        result.add("writable", True, f"{', '.join(folders)} take new files")


def _check_disk(result: SelfCheck, pipeline: Pipeline, workdir: Path) -> None:
    need = float(os.environ.get(WORK_DISK_ENV) or pipeline.work_disk_gb)
    free = shutil.disk_usage(workdir).free / 1e9
    if free < need:
        result.add(
            "disk",
            False,
            f"{workdir} has {free:.1f} GB free, a {pipeline.name} scan needs {need:g} GB: "
            "give the compute environment bigger root volumes (ndmg_cloud setup --root-volume-gb)",
        )
    else:
        result.add("disk", True, f"{free:.1f} GB free in {workdir} (a scan needs {need:g} GB)")


def _check_s3(result: SelfCheck, spec: JobSpec, client: Any) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    inputs = spec.inputs
    bucket, root = split_uri(spec.input_root)
    keys = [(bucket, root + path) for role in ("dwi", "bval", "bvec", "t1w") if (path := inputs.get(role))]
    keys += [split_uri(uri) for uri in spec.extra_inputs.values()]
    try:
        for in_bucket, key in keys:
            client.head_object(Bucket=in_bucket, Key=key)
    except (ClientError, BotoCoreError) as err:
        result.add("s3 read", False, f"cannot read s3://{in_bucket}/{key}: {_code(err)}: the job role needs s3:GetObject on the dataset")
    else:
        result.add("s3 read", True, f"read the job spec and the scan's {len(keys)} inputs")

    out_bucket, prefix = split_uri(spec.output_prefix)
    probe = prefix + PROBE_NAME + uuid.uuid4().hex[:12]
    try:
        client.put_object(Bucket=out_bucket, Key=probe, Body=b"ndmg-cloud self-check\n")
        client.delete_object(Bucket=out_bucket, Key=probe)
    except (ClientError, BotoCoreError) as err:
        result.add(
            "s3 write",
            False,
            f"cannot write and delete s3://{out_bucket}/{probe}: {_code(err)}: the job "
            "role needs s3:PutObject and s3:DeleteObject on the output prefix",
        )
    else:
        result.add("s3 write", True, f"wrote and deleted a probe under {spec.output_prefix}")


def _code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return response.get("Error", {}).get("Code") or err.__class__.__name__
