"""What a scan image holds, laid out in a folder: the pipeline's program (a stand-in with the
real parser, see ``pipeline_facts``), its atlases (small real NIfTI label files under
neuroparc's real names) and the contract ``ndmg-image-contract`` writes at build time,
made by running that command as the Dockerfile does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ndmg_cloud.core.atlases import catalogue
from ndmg_cloud.scan.contract import reference_files
from ndmg_cloud.scan.selfcheck import TOOLCHAIN_ROOT_ENV

import pipeline_facts

ATLASES = ("AAL", "Desikan", "DesikanKlein", "Yeo-7", "Yeo-7-liberal", "Schaefer400")
M2G_COMMIT = "95d271f748e7d35b8d7feaa1b0112f471be8e514"
NEUROPARC = "neurodata/neuroparc@5a5e7469671e65cb58087c47b69d0edb71dc2966"
BASE = "neurodata/m2g@sha256:" + "0" * 64  # a digest-shaped name: these tests never pull it


def write_nifti(path: Path, labels: int = 4) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.arange(4 * 4 * 4).reshape(4, 4, 4) % (labels + 1)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def write_lfs_pointer(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 58395\n")


def make_atlas_dir(root: Path, names=ATLASES, sizes=("2mm",), pipeline: str = "m2g") -> Path:
    from ndmg_cloud.core.pipelines import get_pipeline

    for size in sizes:
        for name in names:
            write_nifti(root / "atlases/label/Human" / catalogue(pipeline).get(name, size).file)
        for rel in reference_files(size) + get_pipeline(pipeline).toolchain.atlas_paths(size):
            write_nifti(root / rel, labels=1)
    return root


# m2g 95d271f7's check_dependencies (m2g/utils/gen_utils.py), as it behaves: the stand-in m2g
# package of these images holds it, since the real m2g needs CPython 3.7 and its requirements.
# tests/test_m2g_real.py runs the real one and checks that it says the same.
M2G_DEPENDENCY_CHECK = """import os, subprocess


def check_dependencies():
    try:
        print(f"Your fsl directory is located here: {os.environ['FSLDIR']}")
    except KeyError:
        raise AssertionError(
            "You do not have FSL installed! See installation instructions here: https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/FslInstallation"
        )
    try:
        print(f"Your AFNI directory is located here: {subprocess.check_output('which afni', shell=True, universal_newlines=True)}")
    except subprocess.CalledProcessError:
        raise AssertionError(
            "You do not have AFNI installed! See installation instructions here: "
            "https://afni.nimh.nih.gov/pub/dist/doc/htmldoc/background_install/main_toc.html"
        )
"""


def install_m2g_package(root: Path) -> Path:
    """A stand-in ``m2g`` package with m2g's own dependency check, under ``root``: the folder
    to put on PYTHONPATH."""
    package = root / "m2g/utils"
    package.mkdir(parents=True, exist_ok=True)
    (root / "m2g/__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "gen_utils.py").write_text(M2G_DEPENDENCY_CHECK)
    return root


@dataclass
class Image:
    bin_dir: Path
    atlas_dir: Path
    contract: Path
    toolchain_root: Path | None = None  # where the pipeline's toolchain is laid out (install_toolchain)
    python_path: Path | None = None  # the pipeline's own Python package, when a stand-in

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a scan container of this image runs in."""
        toolchain = {}
        if self.toolchain_root:
            toolchain = {TOOLCHAIN_ROOT_ENV: str(self.toolchain_root), **toolchain_env(self.toolchain_root)}
        if self.python_path:
            toolchain["PYTHONPATH"] = str(self.python_path)
        return {
            **os.environ,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}",
            "NDMG_IMAGE_CONTRACT": str(self.contract),
            "NDMG_ATLAS_DIR": str(self.atlas_dir),
            **toolchain,
            **extra,
        }


def install_toolchain(image: Image, root: Path, pipeline: str = "m2g", voxelsizes=("2mm", "4mm")) -> None:
    """The programs, variables and files the pipeline needs from its image (FSL and AFNI for
    m2g), as stand-ins that fail when run: the self-check only looks for them. ``$FSLDIR`` is
    ``root/fsl``; the absolute files go under ``root`` (``NDMG_TOOLCHAIN_ROOT``)."""
    from ndmg_cloud.core.pipelines import get_pipeline

    toolchain = get_pipeline(pipeline).toolchain
    image.bin_dir.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)  # also the image's `/`, which m2g writes into
    for program in toolchain.programs:
        stand_in = image.bin_dir / program
        if program == "which":  # every Linux has it, and m2g's own check runs it
            stand_in.symlink_to(shutil.which("which") or "/usr/bin/which")
            continue
        stand_in.write_text(f"#!/bin/sh\necho 'stand-in {program}: not run by these tests' >&2\nexit 1\n")
        stand_in.chmod(0o755)
    # the versions the image contract records, as FSL and AFNI give them
    (image.bin_dir / "afni").write_text(f'#!/bin/sh\n[ "$1" = -ver ] && echo {AFNI_VERSION!r} && exit 0\nexit 1\n')
    (root / "fsl/etc").mkdir(parents=True, exist_ok=True)
    (root / "fsl/etc/fslversion").write_text(FSL_VERSION + "\n")
    for size in voxelsizes:
        for _, where in toolchain.file_paths({"voxelsize": size}, toolchain_env(root), root):
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_text("")
    image.toolchain_root = root


FSL_VERSION = "6.0.5.1:57b01774"  # what $FSLDIR/etc/fslversion holds
AFNI_VERSION = "Precompiled binary linux_ubuntu_16_64: Jan 22 2021 (Version AFNI_21.0.06 'Titus')"  # afni -ver


def toolchain_env(root: Path) -> dict[str, str]:
    """The m2g toolchain's variables in an image laid out by install_toolchain under ``root``."""
    return {"FSLDIR": str(root / "fsl"), "FSLOUTPUTTYPE": "NIFTI_GZ"}


def build_contract(image: Image, revision: str = M2G_COMMIT) -> subprocess.CompletedProcess:
    """The Dockerfile's last step: ``ndmg-image-contract`` against the image's program and atlases."""
    command = [
        str(Path(sys.executable).parent / "ndmg-image-contract"),
        "--pipeline",
        "m2g",
        "--code-version",
        "0.3.0",
        "--revision",
        revision,
        "--source",
        "https://github.com/neurodata/m2g",
        "--atlas-dir",
        str(image.atlas_dir),
        "--atlas-source",
        NEUROPARC,
        "--base-image",
        BASE,
        "--out",
        str(image.contract),
    ]
    env = {**os.environ, "PATH": f"{image.bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("FSL")}  # the image's, not this machine's
    if image.toolchain_root:  # the base image's ENV (FSLDIR ...), which the build step sees
        env.update(toolchain_env(image.toolchain_root))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def m2g_image(root: Path, code: str = pipeline_facts.M2G_DEPLOY, toolchain: bool = True) -> Image:
    """A built m2g image: stand-in m2g of ``code``, atlases, FSL and AFNI (unless not
    ``toolchain``), and its contract (must build)."""
    image = Image(root / "bin", make_atlas_dir(root / "m2g_atlases"), root / "image-contract.json")
    pipeline_facts.install_stand_in(code, image.bin_dir)
    image.python_path = install_m2g_package(root / "python")
    if toolchain:
        install_toolchain(image, root / "toolchain")
    built = build_contract(image)
    assert built.returncode == 0, built.stderr
    return image


def job_environment(job) -> dict[str, str]:
    """A (local endpoint's) Batch job's container environment: its job definition's, then the
    job's own overrides, as Batch merges them."""
    defined = (job.job_definition.container_properties or {}).get("environment") or []
    overridden = (job.container_overrides or {}).get("environment") or []
    return {e["name"]: e["value"] for e in [*defined, *overridden]}


class Containers:
    """What a scan image's container does when the local Batch runs one of its jobs.

    The canary's ``ndmg-scan --self-check`` runs for real: the runner as a process, in the
    image's environment (``image.env``), against the local endpoint; its output goes to the
    job's CloudWatch stream, as the awslogs driver would put it. A scan job leaves what the
    runner leaves after a successful scan, read from its job spec: the expected outputs,
    then the manifest (with the image's contract), unless the scan is in ``broken`` (exit 1,
    nothing written) or ``silent`` (exit 0, nothing written). Returns the exit code.
    """

    def __init__(self, s3, image: Image | None, endpoint: str):
        self.s3, self.image, self.endpoint = s3, image, endpoint
        self.broken: set[str] = set()
        self.silent: set[str] = set()
        self.self_checks: list[subprocess.CompletedProcess] = []

    def __call__(self, job) -> int:
        command = job.container_overrides["command"]
        if "--self-check" in command:
            return self.self_check(job, command)
        spec = self._read(command[command.index("--spec") + 1])
        scan_id = spec["scan"]["scan_id"]
        if scan_id in self.broken:
            return 1
        if scan_id not in self.silent:
            self.leave_outputs(spec)
        return 0

    def self_check(self, job, command: list[str]) -> int:
        # what Batch gives the container: the job definition's environment, the job's overrides
        # on top, and the job's id
        env = {**job_environment(job), "AWS_ENDPOINT_URL": self.endpoint, "AWS_BATCH_JOB_ID": job.job_id}
        env = self.image.env(**env) if self.image else {**os.environ, **env}
        done = subprocess.run(
            [sys.executable, "-m", "ndmg_cloud.scan.runner", *command[1:]], capture_output=True, text=True, env=env, timeout=300
        )
        self.self_checks.append(done)
        self._log(job, (done.stdout + done.stderr).splitlines())
        return done.returncode

    def leave_outputs(self, spec: dict) -> None:
        import hashlib
        import json

        from ndmg_cloud.scan.contract import ImageContract

        bucket, prefix = spec["output_prefix"][len("s3://") :].split("/", 1)
        outputs = []
        for rel in spec["expected_outputs"]:
            body = b"1 2 3\n2 3 5\n"
            self.s3.put_object(Bucket=bucket, Key=prefix + rel, Body=body)
            outputs.append({"path": rel, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
        contract = ImageContract.from_dict(json.loads(self.image.contract.read_text())) if self.image else None
        manifest = {
            "status": "success",
            "scan_id": spec["scan"]["scan_id"],
            "run_id": spec["run_id"],
            "pipeline": {**spec["pipeline"], "contract": contract.summary().to_dict() if contract else None},
            "outputs": outputs,
            "exit_code": 0,
        }
        self.s3.put_object(Bucket=bucket, Key=spec["manifest"].split("/", 3)[3], Body=json.dumps(manifest))

    def _read(self, uri: str) -> dict:
        import json

        bucket, key = uri[len("s3://") :].split("/", 1)
        return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def _log(self, job, lines: list[str]) -> None:
        import time

        import boto3

        logs = boto3.client("logs", region_name="us-east-1", endpoint_url=self.endpoint)
        try:
            logs.create_log_group(logGroupName="/aws/batch/job")
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        logs.create_log_stream(logGroupName="/aws/batch/job", logStreamName=job._stream_name)
        now = int(time.time() * 1000)
        events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines) if line]
        if events:
            logs.put_log_events(logGroupName="/aws/batch/job", logStreamName=job._stream_name, logEvents=events)
