"""``ndmg-scan``: run one scan from its job spec (the scan image's entrypoint; the local
backend runs the same code in a subprocess).

    ndmg-scan --spec s3://bucket/.../jobs/<run id>/<scan id>.json

1. read the job spec; remove the scan's old manifest (a rerun that fails half-way must
   never look done);
2. download only this scan's files into a fresh BIDS work tree, under the names m2g's input
   discovery accepts whatever the dataset calls them (``work_files``): the DWI image as
   ``sub-S_ses-T_dwi.nii[.gz]``, its bval/bvec beside it (also when inherited from a higher
   level), the T1w as ``sub-S_ses-T_T1w.nii[.gz]``, and dataset_description.json; a
   session-less scan gets the session ``ses-1`` here;
3. check the inputs (readable NIfTI, as many b-values and b-vectors as volumes);
4. run the pipeline on local folders; SIGTERM stops it and ends the runner, no manifest;
5. upload the outputs under the scan's output prefix (never ``tmp_d/`` or ``tmp/``, never
   an ACL, multipart for large files, retried with backoff by botocore), mapping the work
   names back to the scan's own and prefixing files that do not name the scan with its id;
6. write the scan manifest LAST.

Exit 0 on success; otherwise non-zero and one line ``ndmg-scan: <scan id> failed: <why>``
on stderr. Credentials come only from the default chain (job role, instance profile).

    ndmg-scan --self-check --spec URI [--result URI]

proves the image can run that scan, without running it (see ``ndmg_cloud.scan.selfcheck``).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ndmg_cloud.core.bids import Scan, file_stem
from ndmg_cloud.core.layout import split_uri
from ndmg_cloud.core.manifest import SUCCESS, MadeWith, OutputFile, ScanManifest
from ndmg_cloud.core.pipelines import WORK_SESSION
from ndmg_cloud.core.s3 import put_json, read_at
from ndmg_cloud.core.spec import WORK_INPUT, WORK_OUTPUT, JobSpec
from ndmg_cloud.scan import contract as image_contract
from ndmg_cloud.scan.guard import SpecRefused, check_spec
from ndmg_cloud.scan.scrub import pipeline_environment, redact
from ndmg_cloud.scan.warm import WarmProcess, start_program

SCRATCH_DIRS = {"tmp_d", "tmp"}
LOG_TAIL_LINES = 40
MULTIPART_BYTES = 64 * 1024 * 1024
TERM_GRACE_SECONDS = 10


class ScanFailure(RuntimeError):
    """Why a scan failed, in one line; ``exit_code`` is what the runner exits with."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(ScanFailure):
    def __init__(self) -> None:
        super().__init__("terminated by SIGTERM (job cancelled or Spot instance reclaimed)", 143)


def s3_client() -> Any:
    import boto3
    from botocore.config import Config

    attempts = int(os.environ.get("NDMG_S3_MAX_ATTEMPTS", "8"))
    # standard mode: exponential backoff with jitter on 5xx, SlowDown, throttling, resets
    return boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": attempts}))


def now() -> str:
    return datetime.now(UTC).isoformat()


def load_spec(location: str, client: Any | None) -> JobSpec:
    """The job spec at ``location``, once ``guard.check_spec`` has passed it (exit 2 otherwise)."""
    try:
        raw = read_at(client, location)
        spec = JobSpec.from_dict(json.loads(raw))
    except Exception as err:
        if isinstance(err, ScanFailure):  # SIGTERM arrived meanwhile
            raise
        raise ScanFailure(f"cannot read job spec {location}: {err}", 2) from None
    try:
        warnings = check_spec(spec, hashlib.sha256(raw).hexdigest())
    except SpecRefused as err:
        raise ScanFailure(str(err), 2) from None
    for warning in warnings:
        log(f"warning: {warning}")
    return spec


def image_extension(name: str) -> str:
    """``.nii.gz`` or ``.nii``: how a NIfTI file name ends."""
    return ".nii.gz" if name.endswith(".nii.gz") else ".nii"


def work_stems(subject: str, session: str | None) -> dict[str, str]:
    """The names (without extension) the DWI and the T1w get in the work tree. m2g finds its
    inputs with pybids 0.12, which drops any file whose name its BIDS validator refuses (a
    DWI with ``task-``, ``desc-``, ``space-`` or ``chunk-``; a T1w with ``echo-``, ``desc-``
    or ``space-``; entities out of order; a non-numeric run) and then unpacks exactly one
    DWI and one T1w: each scan's work tree holds only its own, named plainly."""
    series = f"sub-{subject}_ses-{session or WORK_SESSION}"
    return {"dwi": f"{series}_dwi", "t1w": f"{series}_T1w"}


@dataclass
class ScanRun:
    spec: JobSpec
    client: Any
    workdir: Path
    started_at: str = field(default_factory=now)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[OutputFile] = field(default_factory=list)
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    process: subprocess.Popen[str] | WarmProcess | None = None
    terminated: bool = False
    contract: image_contract.ImageContract | None = None

    @property
    def scan(self) -> Scan:
        return self.spec.scan

    @property
    def session(self) -> str:
        return self.scan.session or WORK_SESSION

    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    # 1 ---------------------------------------------------------------------------------
    def forget_old_manifest(self) -> None:
        bucket, key = split_uri(self.spec.manifest)
        self.client.delete_object(Bucket=bucket, Key=key)

    # 2 ---------------------------------------------------------------------------------
    def work_files(self) -> dict[str, Path]:
        """Where each of the spec's inputs goes in the work tree (see ``work_stems``)."""
        inputs = self.spec.inputs
        dwi, t1w = inputs.get("dwi"), inputs.get("t1w")
        if not dwi or not t1w:
            raise ScanFailure(f"job spec has no {'dwi' if not dwi else 't1w'} input", 2)
        series = self.input_dir / f"sub-{self.scan.subject}" / f"ses-{self.session}"
        stems = work_stems(self.scan.subject, self.scan.session)
        return {
            "dwi": series / "dwi" / (stems["dwi"] + image_extension(dwi)),
            "bval": series / "dwi" / f"{stems['dwi']}.bval",  # beside the image, even if inherited
            "bvec": series / "dwi" / f"{stems['dwi']}.bvec",
            "t1w": series / "anat" / (stems["t1w"] + image_extension(t1w)),
            "dataset_description": self.input_dir / "dataset_description.json",
        }

    def download_inputs(self) -> None:
        places = self.work_files()
        for role, target in places.items():
            rel = self.spec.inputs.get(role)
            if rel is None:
                raise ScanFailure(f"job spec has no {role} input", 2)
            target = self.inside(self.input_dir, target.relative_to(self.input_dir).as_posix())
            self.inputs[role] = self._download(rel, target, required=role != "dataset_description")
        for rel, uri in self.spec.extra_inputs.items():
            bucket, key = split_uri(uri)
            self.inputs[rel] = self._download(key, self.inside(self.input_dir, rel), required=True, bucket=bucket)
        if not places["dataset_description"].exists():
            places["dataset_description"].write_text(json.dumps({"Name": self.spec.dataset, "BIDSVersion": "1.9.0"}))

    def _download(self, rel: str, target: Path, required: bool, bucket: str | None = None) -> dict[str, Any]:
        """Fetch a dataset file (``rel`` under the input root), or ``rel`` in ``bucket``."""
        from botocore.exceptions import ClientError

        if bucket is None:
            bucket, root = split_uri(self.spec.input_root)
            key = root + rel
        else:
            key = rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            with open(target, "wb") as out:
                shutil.copyfileobj(response["Body"], out, 1024 * 1024)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404") and not required:
                return {"key": key, "missing": True}
            raise ScanFailure(f"could not download s3://{bucket}/{key} ({code or err})") from None
        return {"key": key, "etag": response.get("ETag", "").strip('"'), "size": target.stat().st_size}

    # 3 ---------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        import nibabel as nib
        import numpy as np

        places = self.work_files()
        dwi, t1w = places["dwi"], places["t1w"]
        if not dwi.is_file() or not t1w.is_file():
            raise ScanFailure(f"no {'DWI' if not dwi.is_file() else 'T1w'} image in the work folder after the download", 2)
        shapes = {}
        for image in (dwi, t1w):
            try:
                shapes[image] = nib.load(image).shape  # type: ignore[attr-defined]  # a NIfTI image (nibabel's stubs type it as FileBasedImage)
            except Exception as err:
                if isinstance(err, ScanFailure):
                    raise
                raise ScanFailure(f"{image.name} is not a readable NIfTI image ({err})", 2) from None
        shape = shapes[dwi]
        volumes = shape[3] if len(shape) == 4 else 1
        try:
            bvals = np.loadtxt(places["bval"], ndmin=1)
            bvecs = np.loadtxt(places["bvec"], ndmin=2)
        except ValueError as err:
            raise ScanFailure(f"cannot read the bval/bvec of {dwi.name}: {err}", 2) from None
        if bvecs.shape[0] != 3 and bvecs.shape[1] == 3:
            bvecs = bvecs.T
        if not (volumes == bvals.size == bvecs.shape[1]):
            raise ScanFailure(
                f"{dwi.name} has {volumes} volumes but its bval has {bvals.size} values and its "
                f"bvec {bvecs.shape[1]} vectors; they must agree",
                2,
            )

    @staticmethod
    def inside(folder: Path, rel: str) -> Path:
        """``folder / rel``, refused if it would resolve outside ``folder``."""
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()):
            raise ScanFailure(f"job spec names input {rel!r}, which lies outside the work folder: refusing it", 2)
        return folder / rel

    # 4 ---------------------------------------------------------------------------------
    def pipeline_command(self) -> list[str]:
        """The command the spec's pipeline builds from the spec's scan and options: the
        runner runs that, never a command line taken from the spec as written (a spec
        whose command differs was not written by this code, and is refused)."""
        from ndmg_cloud.core.pipelines import OptionError, get_pipeline

        block = self.spec.pipeline
        try:
            pipeline = get_pipeline(block.name)
            options = pipeline.resolve_options(block.options)
            command = pipeline.command(self.scan, options, WORK_INPUT, WORK_OUTPUT)
        except (OptionError, KeyError, TypeError, ValueError) as err:
            raise ScanFailure(f"job spec's pipeline block cannot be read: {err}", 2) from None
        if block.command not in (None, command):
            raise ScanFailure(
                f"job spec's pipeline command {block.command!r} is not what pipeline {pipeline.name!r} builds "
                f"from the spec's options ({command!r}): refusing to run it; write the spec again with this code",
                2,
            )
        return command

    def run_pipeline(self) -> int:
        command = [self.local_path(arg) for arg in self.pipeline_command()]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        env = pipeline_environment(os.environ)  # no credentials (scrub.py)
        home = self.workdir / "home"  # a fresh HOME: no ~/.aws, ~/.netrc or ~/.airflow of the runner's user
        home.mkdir(exist_ok=True)
        env["HOME"] = str(home)
        if shutil.which(command[0]) is None:
            # ndmg-lite sits beside this interpreter; m2g's own tools keep the image's PATH
            env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        try:
            self.process = start_program(command, env)  # ndmg-lite may come warm (warm.py)
            log(f"running{' (warm)' if isinstance(self.process, WarmProcess) else ''}: {' '.join(command)}")
        except OSError as err:
            raise ScanFailure(f"cannot start the pipeline {command[0]!r}: {err}", 127) from None
        for line in self.process.stdout or ():
            line = redact(line.rstrip("\n"))
            if line.startswith("ndmg-scan"):  # only the runner speaks as ndmg-scan (its failure line is the reason)
                line = "| " + line
            sys.stdout.write(line + "\n")
            self.log_tail.append(line)
        code = self.process.wait()
        if self.terminated:
            raise Terminated()
        if code != 0:
            last = next((line for line in reversed(self.log_tail) if line.strip()), "")
            exit_code = code if code > 0 else 128 - code
            raise ScanFailure(f"pipeline exited with code {exit_code}: {last[-300:]}", exit_code)
        return code

    def local_path(self, arg: str) -> str:
        """The spec names container paths (/work/input/...); map them to this work dir."""
        for placeholder, real in ((WORK_INPUT, self.input_dir), (WORK_OUTPUT, self.output_dir)):
            if arg == placeholder or arg.startswith(placeholder + "/"):
                return str(real) + arg[len(placeholder) :]
        return arg

    def terminate(self, *_: Any) -> None:
        """SIGTERM: stop the pipeline's whole process group, then fail (no manifest)."""
        self.terminated = True
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(TERM_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        else:
            raise Terminated()

    # 5 ---------------------------------------------------------------------------------
    def output_key(self, path: Path) -> str:
        """Where a work-tree output goes: the scan's output prefix, the work names mapped
        back to the scan's own (``work_stems``; the work session of a session-less scan
        dropped), and files that do not name the scan prefixed with its id (two series of
        one session never write the same key)."""
        scan, subject = self.scan, self.scan.subject
        rel = path.relative_to(self.output_dir).as_posix()
        series = f"sub-{subject}/ses-{self.session}/"
        rel = rel[len(series) :] if rel.startswith(series) else rel
        folder, _, name = rel.rpartition("/")
        stems = work_stems(subject, scan.session)
        own = {"dwi": scan.dwi_stem, "t1w": file_stem(scan.t1w.rsplit("/", 1)[-1]) if scan.t1w else stems["t1w"]}
        for role in ("dwi", "t1w"):
            if stems[role] in name:
                name = name.replace(stems[role], own[role], 1)
                break
        if not scan.session:
            name = name.replace(f"sub-{subject}_ses-{WORK_SESSION}_", f"sub-{subject}_", 1)
        if scan.dwi_stem not in name:
            name = f"{scan.scan_id}_{name}"
        return (folder + "/" if folder else "") + name

    def uploadable(self, path: Path) -> bool:
        """Regular files with one name only: a link, symbolic or hard, is never uploaded (it
        could name a credentials file or another scan's input)."""
        if path.is_symlink():
            log(f"not uploading {path.relative_to(self.output_dir)}: a symbolic link (outputs are regular files only)")
            return False
        if path.is_file() and path.stat().st_nlink > 1:
            log(f"not uploading {path.relative_to(self.output_dir)}: a hard link to another file (outputs are files of their own)")
            return False
        return path.is_file()

    def upload_outputs(self) -> None:
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, prefix = split_uri(self.spec.output_prefix)
        transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES)
        files = sorted(
            p
            for p in self.output_dir.rglob("*")  # (does not descend into linked folders)
            if not SCRATCH_DIRS & set(p.relative_to(self.output_dir).parts[:-1]) and self.uploadable(p)
        )
        for path in files:
            rel = self.output_key(path)
            try:
                self.client.upload_file(str(path), bucket, prefix + rel, Config=transfer)  # no ACL, ever
            except (S3UploadFailedError, ClientError, BotoCoreError) as err:
                raise ScanFailure(f"could not upload {rel} to s3://{bucket}/{prefix}{rel}: {err}") from None
            self.outputs.append(OutputFile(rel, path.stat().st_size, sha256(path)))
        produced = [o.path for o in self.outputs if o.size]
        missing = [p for p in self.spec.expected_outputs if not fnmatch.filter(produced, p)]
        if missing:
            raise ScanFailure(f"the pipeline finished but did not produce {', '.join(missing)}")

    # 6 ---------------------------------------------------------------------------------
    def write_manifest(self, exit_code: int) -> None:
        block = self.spec.pipeline
        manifest = ScanManifest(
            status=SUCCESS,
            scan_id=self.scan.scan_id,
            dataset=self.spec.dataset,
            run_id=self.spec.run_id,
            pipeline=MadeWith(
                name=block.name,
                image=os.environ.get("NDMG_IMAGE", block.image),
                options=block.options,
                command=block.command or [],
                # which code made this scan: resume compares it with the next run's
                contract=self.contract.summary() if self.contract else None,
            ),
            inputs=self.inputs,
            outputs=self.outputs,
            started_at=self.started_at,
            finished_at=now(),
            exit_code=exit_code,
            log_tail=list(self.log_tail),
        )
        bucket, key = split_uri(self.spec.manifest)
        body = json.dumps(manifest.to_dict(), indent=2).encode()
        self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def log(message: str) -> None:
    print(f"ndmg-scan {time.strftime('%H:%M:%S')} {message}", flush=True)


def run_scan(spec_location: str, workdir: Path | None = None, keep: bool = False) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client()
    scan_id = spec_location.rsplit("/", 1)[-1].removesuffix(".json")
    own_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ndmg-scan-"))
    try:
        spec = load_spec(spec_location, client)
        scan_id = spec.scan_id
        run = ScanRun(spec, client, workdir, contract=load_contract(spec.pipeline.name))
        signal.signal(signal.SIGTERM, run.terminate)
        log(f"scan {scan_id}: {spec.pipeline.name} -> {spec.output_prefix}")
        if run.contract:
            log(f"image contract {run.contract.fingerprint}: {run.contract.label}")
        run.forget_old_manifest()
        run.download_inputs()
        run.check_inputs()
        exit_code = run.run_pipeline()
        run.upload_outputs()
        run.write_manifest(exit_code)
        log(f"scan {scan_id}: done, {len(run.outputs)} outputs, manifest {spec.manifest}")
        return 0
    except ScanFailure as failure:
        print(f"ndmg-scan: {scan_id} failed: {failure}", file=sys.stderr, flush=True)
        return failure.exit_code
    except (ClientError, BotoCoreError) as err:
        print(f"ndmg-scan: {scan_id} failed: S3 error after retries: {err}", file=sys.stderr, flush=True)
        return 1
    except OSError as err:  # the work disk: a name too long, no space left
        print(f"ndmg-scan: {scan_id} failed: {err.strerror or err} ({err.filename or 'the work folder'})", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if own_workdir and not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def load_contract(pipeline: str) -> image_contract.ImageContract | None:
    try:
        return image_contract.current(pipeline)
    except image_contract.ContractError as err:
        raise ScanFailure(str(err), 2) from None


def run_self_check(spec_location: str, result_uri: str | None, workdir: Path | None = None) -> int:
    """Check that this image can run the spec's scan; one line per check; exit 0 if all pass."""
    from ndmg_cloud.scan.selfcheck import self_check

    client = s3_client()
    scan_id = spec_location.rsplit("/", 1)[-1].removesuffix(".json")
    try:
        spec = load_spec(spec_location, client)
    except ScanFailure as failure:
        print(f"ndmg-scan: {scan_id} self-check failed: {failure}", file=sys.stderr, flush=True)
        return failure.exit_code
    own_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ndmg-scan-"))
    try:
        result = self_check(spec, client, workdir)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"self-check of scan {result.scan_id} ({result.pipeline}):")
    for check in result.checks:
        print(check.line(), flush=True)
    if result_uri:
        try:
            put_json(client, result_uri, result.to_dict())
        except Exception as err:  # the checks are printed above either way
            print(f"ndmg-scan: {result.scan_id} self-check could not write {result_uri}: {err}", file=sys.stderr, flush=True)
            return 1
    failed_check = result.first_failure
    if failed_check:
        print(f"ndmg-scan: {result.scan_id} self-check failed: {failed_check.name}: {failed_check.detail}", file=sys.stderr, flush=True)
        return 1
    log(f"self-check passed: this image can run scan {result.scan_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ndmg-scan", description="run one scan from its job spec")
    parser.add_argument("--spec", default=os.environ.get("NDMG_JOB_SPEC"), help="s3:// URI or path of the job spec")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a fresh temporary one)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the work folder afterwards")
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="do not run the scan: check that this image could (contract, command line, atlases, disk, S3)",
    )
    parser.add_argument("--result", metavar="URI", help="with --self-check: also write the findings there (s3://)")
    args = parser.parse_args(argv)
    if not args.spec:
        parser.error("give --spec or set NDMG_JOB_SPEC")
    if args.self_check:
        return run_self_check(args.spec, args.result, args.workdir)
    if args.result:
        parser.error("--result goes with --self-check")
    return run_scan(args.spec, args.workdir, args.keep_workdir)


if __name__ == "__main__":
    raise SystemExit(main())
