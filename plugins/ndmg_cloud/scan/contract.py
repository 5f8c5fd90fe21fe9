"""The scan image contract: which pipeline code an image holds and what its command line
and atlases are, recorded once when the image is built and checked before scans run.

``ndmg-image-contract`` writes it during ``docker build`` (``/opt/ndmg-cloud/image-
contract.json``, found through ``NDMG_IMAGE_CONTRACT``). It asks the program itself: the
flags come from its ``--help``, a sample of the adapter's command line is parsed by the
program's own argument parser (``parse_only``: parsed, never run), the atlas names come
from the label files in the image, each checked to be a real NIfTI file (not git-LFS
pointer text). The build fails when any of that does not hold. The runner records the
contract's summary in every scan manifest, so resume can tell which code made a scan.

The local backend has no image: its contract is made on the spot from the installed code
(``local_contract``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ndmg_cloud.core.atlases import LABEL_DIR, RESOLUTIONS, atlas_name
from ndmg_cloud.core.manifest import ContractSummary
from ndmg_cloud.core.pipelines import Nargs, Pipeline, get_pipeline

CONTRACT_ENV = "NDMG_IMAGE_CONTRACT"
DEFAULT_PATH = "/opt/ndmg-cloud/image-contract.json"
PARSE_TIMEOUT_SECONDS = 600  # m2g imports FSL/AFNI/CPAC wrappers before it parses
LFS_POINTER = b"version https://git-lfs"
PARSED_MARK = "@@ndmg-parsed@@"


class ContractError(RuntimeError):
    """The image cannot run this project's scans; the message says what is wrong."""


# What a scan's result depends on: the fingerprint covers these and nothing else (not the
# runner's version, nor the flags, which follow from the code).
RESULT_FIELDS = ("pipeline", "code", "base_image", "atlas_source", "atlases")


@dataclass(frozen=True)
class ImageContract:
    pipeline: str  # m2g, ndmg, lite
    code: dict[str, str]  # name, version, revision (git commit or source digest), source
    program: str  # the pipeline's command
    flags: dict[str, Nargs]  # every flag the program accepts, from its --help
    atlases: dict[str, list[str]] = field(default_factory=dict)  # voxel size -> names
    atlas_source: str | None = None  # e.g. neurodata/neuroparc@<commit>
    base_image: str | None = None  # the image it was built on, by digest
    runner: str = ""  # ndmg-cloud version of the runner inside
    # the Python that runs the program: {"version": "3.7.16", "packages": {name: version}}
    python: dict[str, Any] = field(default_factory=dict)
    toolchain: dict[str, str] = field(default_factory=dict)  # FSL, AFNI -> version, or "not found: ..."
    key_packages: tuple[str, ...] = ()  # the packages ``environment`` names
    # Twelve hex digits over RESULT_FIELDS, computed when the contract is made; one read
    # back keeps the fingerprint written at build time (whatever version reads it).
    fingerprint: str = field(init=False, default="")

    def __post_init__(self) -> None:
        body = json.dumps({k: getattr(self, k) for k in RESULT_FIELDS}, sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "fingerprint", hashlib.sha256(body.encode()).hexdigest()[:12])

    @property
    def label(self) -> str:
        """``m2g 95d271f7``: the code, as a person names it."""
        revision = self.code.get("revision") or "?"
        return f"{self.code.get('name', self.pipeline)} {revision.split(':')[-1][:8]}"

    @property
    def environment(self) -> str | None:
        """``Python 3.7.16 (dipy 1.1.1, nibabel 3.2.2, ...); FSL 6.0.4; AFNI not found``:
        what the code ran with, as the report's Code line and the canary show it."""
        parts = []
        if self.python.get("version"):
            packages = {name.lower(): version for name, version in (self.python.get("packages") or {}).items()}
            named = [f"{name} {packages[name.lower()]}" for name in self.key_packages if name.lower() in packages]
            parts.append(f"Python {self.python['version']}" + (f" ({', '.join(named)})" if named else ""))
        parts += [f"{name} {version}" for name, version in sorted(self.toolchain.items())]  # as read back from the file
        return "; ".join(parts) or None

    def summary(self) -> ContractSummary:
        """What each scan manifest records (the full contract stays in the image)."""
        return ContractSummary(
            self.fingerprint, self.label, self.pipeline, dict(self.code), self.base_image, self.atlas_source, self.environment
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["key_packages"] = list(self.key_packages)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageContract:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "fingerprint"}
        if "key_packages" in known:
            known["key_packages"] = tuple(known["key_packages"] or ())
        contract = cls(**known)
        if data.get("fingerprint"):
            object.__setattr__(contract, "fingerprint", data["fingerprint"])
        return contract


# --- the program's command line ----------------------------------------------------------

_OPTION_LINE = re.compile(r"^  (-\S.*?)(?:\s{2,}|$)")


def parse_help(text: str) -> dict[str, Nargs]:
    """Flags and how many values each takes, from argparse ``--help`` output.

    ``--seeds SEEDS`` -> 1, ``--parcellation P [P ...]`` (and 3.7's ``P [P ...]``) -> "+",
    ``[P ...]`` / ``[P [P ...]]`` -> "*", ``[P]`` -> "?", ``--skipeddy`` -> 0.
    """
    flags: dict[str, Nargs] = {}
    for line in text.splitlines():
        match = _OPTION_LINE.match(line)
        if not match:
            continue
        for alias in match.group(1).split(", "):
            name, _, metavar = alias.partition(" ")
            if name.startswith("-"):
                flags[name] = _nargs(metavar.strip())
    return flags


def _nargs(metavar: str) -> Nargs:
    if not metavar:
        return 0
    if metavar.startswith("["):
        return "*" if "..." in metavar else "?"
    if "..." in metavar:
        return "+"
    return len(metavar.split())


def flag_problems(accepted: dict[str, Nargs], needed: dict[str, Nargs]) -> list[str]:
    """What the program would refuse of the flags the adapter may emit."""
    problems = []
    for flag, wanted in needed.items():
        if flag not in accepted:
            problems.append(f"{flag} is not accepted")
            continue
        has = accepted[flag]
        if wanted == "+" and has not in ("+", "*"):
            problems.append(f"{flag} takes {has!r} value(s), the adapter passes several")
        elif wanted == 1 and has == 0:
            problems.append(f"{flag} takes no value, the adapter passes one")
        elif wanted == 0 and has != 0:
            problems.append(f"{flag} needs a value, the adapter passes none")
    return problems


def find_program(name: str) -> str | None:
    """``name`` on PATH, or beside this interpreter (``ndmg-lite`` in a venv not on PATH)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def program_help(program: str) -> str:
    """``<program> --help`` as the program prints it."""
    path = find_program(program)
    if path is None:
        raise ContractError(f"{program} is not on PATH")
    done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=PARSE_TIMEOUT_SECONDS)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ContractError(f"{program} --help exited with {done.returncode}: {' | '.join(tail)}")
    return done.stdout


# Runs the program's own entry point with argparse stopped right after its first parse: the
# exact argv is checked by the real parser, and nothing of the pipeline runs. Both ways a
# program may parse are stopped (parse_known_args too, whose leftovers count as refused).
# The mark comes in the environment. Python 3.7-safe (m2g's image runs 3.7).
_PARSE_ONLY = r"""
import argparse, json, os, runpy, sys
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
_args, _known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
inside = []
def report(parsed, extra):
    sys.stdout.write("\n" + os.environ["NDMG_PARSED_MARK"] + json.dumps({"values": vars(parsed), "extra": extra}, default=str) + "\n")
    sys.stdout.flush()
    os._exit(0)
def parse_args(self, args=None, namespace=None):
    inside.append(1)
    report(_args(self, args, namespace), [])  # a refused argv exits 2 in here, as it would
def parse_known_args(self, args=None, namespace=None):
    parsed, extra = _known(self, args, namespace)
    if inside:  # called by parse_args above
        return parsed, extra
    report(parsed, extra)
argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = parse_args, parse_known_args
runpy.run_path(script, run_name="__main__")
sys.stdout.write("\nthe program returned without parsing its arguments\n")
sys.exit(3)
"""


@dataclass
class Parsed:
    """What the program's own parser made of an argv."""

    ok: bool
    values: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    how: str = "the program's own parser"


def parse_only(argv: list[str], contract: ImageContract | None = None) -> Parsed:
    """Parse ``argv`` (program first) with the program's real argument parser, without
    running it. A program that is not a Python script is checked against the contract's
    recorded flags instead."""
    path = find_program(argv[0])
    if path is None:
        return Parsed(False, error=f"{argv[0]} is not on PATH")
    interpreter = python_of(Path(path))
    if interpreter is None:
        if contract is None:
            return Parsed(False, error=f"{path} is not a Python program and no contract records its flags")
        return _parse_with_flags(argv, contract.flags)
    process = subprocess.Popen(
        [*interpreter, "-c", _PARSE_ONLY, path, *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "NDMG_PARSED_MARK": PARSED_MARK},
        start_new_session=True,  # whatever it starts can be stopped with it
    )
    try:
        out, err = process.communicate(timeout=PARSE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return Parsed(False, error=f"{argv[0]} did not finish parsing in {PARSE_TIMEOUT_SECONDS} s")
    for line in out.splitlines():
        if line.startswith(PARSED_MARK):
            return _judge_parse(argv, json.loads(line[len(PARSED_MARK) :]))
    lines = [line for line in (err + "\n" + out).splitlines() if line.strip()]
    error = next((line for line in reversed(lines) if "error:" in line), lines[-1] if lines else "")
    return Parsed(False, error=f"{argv[0]} refused the command (exit {process.returncode}): {error.strip()}")


def _judge_parse(argv: list[str], found: dict[str, Any]) -> Parsed:
    """Accepted only if nothing was left over and every flag landed in the parse (a parser
    other than the program's own, say a library's, would not know them)."""
    values, extra = found["values"], found["extra"]
    if extra:
        return Parsed(False, values, error=f"{argv[0]} would ignore: {' '.join(extra)}")
    unknown = [a for a in argv[1:] if a.startswith("--") and a[2:].replace("-", "_") not in values]
    if unknown:
        return Parsed(False, values, error=f"{argv[0]}'s parser did not take {' '.join(unknown)}: not its own parser?")
    return Parsed(True, values)


def python_of(path: Path) -> list[str] | None:
    """The interpreter of a Python script, from its #! line."""
    try:
        with open(path, "rb") as f:
            first = f.readline(300).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!") or "python" not in first:
        return None
    return first[2:].split()


def _parse_with_flags(argv: list[str], flags: dict[str, Nargs]) -> Parsed:
    parser = argparse.ArgumentParser(prog=argv[0], add_help=False, exit_on_error=False)
    for flag, nargs in flags.items():
        if nargs == 0:
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, nargs=None if nargs == 1 else nargs)
    parser.add_argument("positionals", nargs="*")
    try:
        values, extra = parser.parse_known_args(argv[1:])
    except argparse.ArgumentError as err:
        return Parsed(False, error=str(err), how="the flags recorded in the image contract")
    if extra:
        return Parsed(False, error=f"unrecognized arguments: {' '.join(extra)}", how="the flags recorded in the image contract")
    return Parsed(True, vars(values), how="the flags recorded in the image contract")


# --- atlases ----------------------------------------------------------------------------


def nifti_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable NIfTI label file, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
        if head.startswith(LFS_POINTER):
            return "a git-LFS pointer, not a NIfTI image (built from neuroparc's LFS era)"
        if head[:2] != b"\x1f\x8b":
            return "not a gzip-compressed NIfTI file"
        with gzip.open(path) as f:
            header = f.read(348)
    except (OSError, EOFError) as err:
        return f"unreadable ({err})"
    if len(header) < 348:
        return "too short for a NIfTI header"
    sizes = {struct.unpack("<i", header[:4])[0], struct.unpack(">i", header[:4])[0]}
    if 348 not in sizes and 540 not in sizes:
        return "no NIfTI header"
    return None


def reference_files(voxelsize: str) -> list[str]:
    """The template and brain mask m2g and ndmg need at a voxel size (both assert on them)."""
    dims = RESOLUTIONS[voxelsize]
    return [
        f"atlases/reference_brains/MNI152NLin6_res-{dims}_T1w.nii.gz",
        f"atlases/mask/MNI152NLin6_res-{dims}_T1w_descr-brainmask.nii.gz",
    ]


def atlas_inventory(atlas_dir: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Atlas names per voxel size found in ``atlas_dir``, and what is wrong with the files."""
    by_size: dict[str, list[str]] = {}
    problems = []
    labels = sorted((atlas_dir / LABEL_DIR).glob("*.nii.gz"))
    if not labels:
        return {}, [f"no label files under {atlas_dir / LABEL_DIR}"]
    by_dims = {dims: size for size, dims in RESOLUTIONS.items()}
    for path in labels:
        problem = nifti_problem(path)
        if problem:
            problems.append(f"{path.name}: {problem}")
            continue
        name = atlas_name(path.name)
        dims = re.search(r"_res-(\dx\dx\d)", path.name)
        if name and dims and dims.group(1) in by_dims:
            by_size.setdefault(by_dims[dims.group(1)], []).append(name)
    for size in list(by_size):
        for rel in reference_files(size):
            problem = "missing" if not (atlas_dir / rel).exists() else nifti_problem(atlas_dir / rel)
            if problem:
                problems.append(f"{rel}: {problem}")
    return {size: sorted(names, key=str.lower) for size, names in sorted(by_size.items())}, problems


# --- making a contract ------------------------------------------------------------------


def runner_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ndmg-cloud")
    except PackageNotFoundError:
        return "unknown"


def local_contract(pipeline_name: str) -> ImageContract | None:
    """The contract of the code installed here (the local backend), for ``lite`` only:
    m2g and ndmg run only in their images."""
    if pipeline_name != "lite":
        return None
    from ndmg_cloud.scan import lite

    source = Path(lite.__file__).read_bytes()
    return ImageContract(
        pipeline="lite",
        code={
            "name": "ndmg-lite",
            "version": runner_version(),
            "revision": "sha256:" + hashlib.sha256(source).hexdigest()[:16],
            "source": "ndmg_cloud/lite.py",
        },
        program="ndmg-lite",
        flags=parse_help(lite.build_parser().format_help()),
        runner=runner_version(),
    )


def current(pipeline_name: str) -> ImageContract | None:
    """This image's contract (``NDMG_IMAGE_CONTRACT``), else the local one, else None."""
    path = os.environ.get(CONTRACT_ENV)
    if path:
        try:
            return ImageContract.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ContractError(f"cannot read the image contract {path}: {err}") from None
    return local_contract(pipeline_name)


# Run by the program's own interpreter (m2g's CPython 3.7 has no importlib.metadata).
_PYTHON_PACKAGES = """import json, platform
try:
    from importlib.metadata import distributions
    packages = {d.metadata["Name"]: d.version for d in distributions() if d.metadata["Name"]}
except ImportError:
    import pkg_resources
    packages = {d.project_name: d.version for d in pkg_resources.working_set}
print(json.dumps({"version": platform.python_version(), "packages": packages}, sort_keys=True))
"""
VERSION_TIMEOUT_SECONDS = 60


def program_python(program: str) -> dict[str, Any]:
    """The Python that runs ``program`` (from its #! line): its version and its packages."""
    path = find_program(program)
    interpreter = python_of(Path(path)) if path else None
    if not interpreter:
        return {}
    try:
        done = subprocess.run([*interpreter, "-c", _PYTHON_PACKAGES], capture_output=True, text=True, timeout=VERSION_TIMEOUT_SECONDS)
        found: dict[str, Any] = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return found


def toolchain_versions(pipeline: Pipeline, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Each tool's version as the image has it (``Toolchain.versions``): the first line of a
    file (``$FSLDIR/etc/fslversion``) or of a command's output (``afni -ver``), else why not."""
    environ = dict(os.environ if environ is None else environ)
    found = {}
    for name, source in pipeline.toolchain.versions:
        if source.startswith("$"):
            variable, _, rest = source[1:].partition("/")
            if not environ.get(variable):
                found[name] = f"not found (${variable} unset)"
                continue
            path = Path(environ[variable]) / rest
            try:
                found[name] = path.read_text().strip().splitlines()[0].strip() or f"not found ({path} is empty)"
            except (OSError, IndexError):
                found[name] = f"not found (no {path})"
            continue
        command = source.split()
        if shutil.which(command[0], path=environ.get("PATH")) is None:
            found[name] = f"not found ({command[0]} is not on PATH)"
            continue
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=VERSION_TIMEOUT_SECONDS, env=environ)
        except (OSError, subprocess.TimeoutExpired) as err:
            found[name] = f"not found ({source}: {err})"
            continue
        lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
        found[name] = lines[0][:200] if done.returncode == 0 and lines else f"not found ({source} exited {done.returncode})"
    return found


def sample_command(pipeline: Pipeline) -> list[str]:
    """The adapter's command with every optional flag it may emit set (for the build check)."""
    from ndmg_cloud.core.bids import Scan

    scan = Scan("sub-01_ses-1", "01", "1", {"subject": "01", "session": "1"}, "sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz")
    extras = {"m2g": {"skull": "eye", "n_cpus": 2, "mem_gb": 8}}.get(pipeline.name, {})
    options = pipeline.resolve_options(extras)
    return pipeline.command(scan, options, "/work/input", "/work/output")


def build_contract(
    pipeline_name: str,
    code: dict[str, str],
    atlas_dir: Path | None = None,
    atlas_source: str | None = None,
    base_image: str | None = None,
) -> ImageContract:
    """Ask the installed program and atlases; refuse (ContractError) what cannot work."""
    pipeline = get_pipeline(pipeline_name)
    flags = parse_help(program_help(pipeline.program))
    problems = [f"{pipeline.program} --help: {p}" for p in flag_problems(flags, pipeline.flags)]
    parsed = parse_only(sample_command(pipeline))
    if not parsed.ok:
        problems.append(parsed.error)
    atlases: dict[str, list[str]] = {}
    if pipeline.catalogue:
        if atlas_dir is None:
            problems.append(f"pipeline {pipeline_name} needs --atlas-dir")
        else:
            atlases, atlas_problems = atlas_inventory(atlas_dir)
            if atlas_problems:
                shown = "; ".join(atlas_problems[:5]) + (f" (and {len(atlas_problems) - 5} more)" if len(atlas_problems) > 5 else "")
                problems.append(f"{len(atlas_problems)} atlas file(s) unusable: {shown}")
    if problems:
        raise ContractError(f"this image cannot run {pipeline_name} scans: " + "; ".join(problems))
    return ImageContract(
        pipeline=pipeline_name,
        code=code,
        program=pipeline.program,
        flags=flags,
        atlases=atlases,
        atlas_source=atlas_source,
        base_image=base_image,
        runner=runner_version(),
        python=program_python(pipeline.program),
        toolchain=toolchain_versions(pipeline),
        key_packages=pipeline.toolchain.key_packages,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ndmg-image-contract",
        description="write a scan image's contract at build time; fails unless the image can run this project's scans",
    )
    parser.add_argument("--pipeline", required=True, choices=("m2g", "ndmg", "lite"))
    parser.add_argument("--code-name", help="pipeline code name (default: the pipeline's)")
    parser.add_argument("--code-version", default="", help="its version label, e.g. 0.3.0")
    parser.add_argument("--revision", default="", help="the git commit the code was installed from")
    parser.add_argument("--source", default="", help="where that code comes from (repository URL)")
    parser.add_argument("--atlas-dir", type=Path, help="the pipeline's atlas folder (m2g: /m2g_atlases)")
    parser.add_argument("--atlas-source", help="where the atlases come from, e.g. neurodata/neuroparc@<commit>")
    parser.add_argument("--base-image", help="the base image, by digest")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get(CONTRACT_ENV, DEFAULT_PATH)))
    args = parser.parse_args(argv)
    try:
        lite = local_contract("lite") if args.pipeline == "lite" else None
        if lite is not None:  # our own code: the same identity as on the local backend
            code = lite.code
        else:
            code = {
                "name": args.code_name or args.pipeline,
                "version": args.code_version,
                "revision": args.revision,
                "source": args.source,
            }
        contract = build_contract(args.pipeline, code, args.atlas_dir, args.atlas_source, args.base_image)
    except ContractError as err:
        print(f"ndmg-image-contract: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(contract.to_dict(), indent=2, sort_keys=True) + "\n")
    sizes = ", ".join(f"{len(names)} at {size}" for size, names in contract.atlases.items()) or "none"
    print(f"ndmg-image-contract: {contract.label} ({contract.fingerprint}); {len(contract.flags)} flags; atlases: {sizes} -> {args.out}")
    if contract.environment:
        print(f"ndmg-image-contract: {contract.environment}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
