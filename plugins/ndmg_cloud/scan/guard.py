"""What the scan runner checks in a job spec before it touches anything.

A job spec lives where others may write (the run's job dir), so the runner trusts only its
own environment, set by whoever deployed it:

- ``NDMG_JOB_SPEC_SHA256``: the SHA-256 of the spec the orchestrator checked (sealed, for this
  scan and run) when it submitted the job; any other spec is refused;
- ``NDMG_INPUT_ROOTS`` and ``NDMG_OUTPUT_ROOTS``: the s3:// locations this deployment's scans
  may read datasets from and write outputs to (space-separated). The CloudFormation
  template's job definition sets them from its InputBucket/InputPrefix and
  OutputBucket/OutputPrefix; the local backend from the run's own configuration. A Batch
  job (``AWS_BATCH_JOB_ID`` set) without them is refused; ``ndmg-scan`` run by hand without
  them trusts the person who runs it, and says so.

Then every label, path and URI the spec names is checked again (``check_spec``): labels by
the BIDS label rule, the scan's output prefix and manifest where the layout puts them under
the output root, the output root outside the input dataset (but its ``derivatives/``), and
every file name and path relative and free of ``..``. Only then does the runner delete the
scan's old manifest, download, run or upload anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ndmg_cloud.core.bids import bad_label
from ndmg_cloud.core.layout import OutputLayout, S3Location
from ndmg_cloud.core.spec import JOB_SPEC_SHA256_ENV, JobSpec

INPUT_ROOTS_ENV = "NDMG_INPUT_ROOTS"
OUTPUT_ROOTS_ENV = "NDMG_OUTPUT_ROOTS"
ENTITY_KEY = re.compile(r"[A-Za-z]+")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SpecRefused(ValueError):
    """The job spec is not one this runner may run; the message says what and why."""


def roots(environ: Mapping[str, str], name: str) -> list[S3Location] | None:
    """The locations in environment variable ``name``; None if it is not set."""
    raw = environ.get(name, "").replace(",", " ").split()
    if not raw:
        return None
    try:
        return [S3Location.parse(uri) for uri in raw]
    except ValueError as err:
        raise SpecRefused(f"{name} in this job's environment is not a list of s3:// locations: {err}") from None


def check_spec(spec: JobSpec, sha256: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Refuse (``SpecRefused``) a spec this runner must not run; return warnings to print."""
    environ = os.environ if environ is None else environ
    expected = environ.get(JOB_SPEC_SHA256_ENV)
    if expected and sha256 != expected:
        raise SpecRefused(
            f"job spec {spec.spec_uri} is not the one the orchestrator checked when it submitted this job "
            f"(SHA-256 {sha256[:12]}..., expected {expected[:12]}...): it was rewritten since; refusing to run it"
        )
    _check_scan(spec)
    warnings = _check_locations(spec, environ)
    _check_paths(spec)
    return warnings


def _check_scan(spec: JobSpec) -> None:
    scan = spec.scan
    labels = [("sub", scan.subject)] + ([("ses", scan.session)] if scan.session is not None else [])
    for key, value in labels + [(str(k), v) for k, v in scan.entities.items() if isinstance(v, str)]:
        problem = bad_label(value) if key not in ("suffix", "extension", "datatype") else None
        if problem:
            raise SpecRefused(f"job spec names label {key}-{value[:80]!r}, which {problem}: refusing it")
    pairs = scan.scan_id.split("_")
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not ENTITY_KEY.fullmatch(key) or bad_label(value):
            raise SpecRefused(f"job spec's scan id {scan.scan_id[:200]!r} is not a BIDS entity string ({pair[:80]!r}): refusing it")
    session_pair = [f"ses-{scan.session}"] if scan.session else []
    if pairs[0] != f"sub-{scan.subject}" or [p for p in pairs if p.startswith("ses-")] != session_pair:
        raise SpecRefused(f"job spec's scan id {scan.scan_id!r} does not name its subject and session: refusing it")


def _check_locations(spec: JobSpec, environ: Mapping[str, str]) -> list[str]:
    try:
        input_root, output_root = S3Location.parse(spec.input_root), S3Location.parse(spec.output_root)
    except ValueError as err:
        raise SpecRefused(f"job spec's input or output root is not an s3:// location: {err}") from None
    layout = OutputLayout(output_root)
    expected = {
        "output_prefix": (spec.output_prefix, f"s3://{output_root.bucket}/{layout.scan_prefix(spec.scan)}"),
        "manifest": (spec.manifest, f"s3://{output_root.bucket}/{layout.manifest_key(spec.scan)}"),
    }
    for what, (given, where) in expected.items():
        if given != where:
            raise SpecRefused(f"job spec's {what} {given!r} is not where this scan's goes ({where!r}): refusing it")
    if input_root.contains(output_root) and not input_root.child("derivatives").contains(output_root):
        raise SpecRefused(
            f"job spec's output root {output_root} lies inside the input dataset {input_root} but outside its "
            "derivatives/: the input dataset is never written"
        )
    allowed_inputs, allowed_outputs = roots(environ, INPUT_ROOTS_ENV), roots(environ, OUTPUT_ROOTS_ENV)
    if allowed_inputs is None or allowed_outputs is None:
        missing = " and ".join(n for n, r in ((INPUT_ROOTS_ENV, allowed_inputs), (OUTPUT_ROOTS_ENV, allowed_outputs)) if r is None)
        if environ.get("AWS_BATCH_JOB_ID"):
            raise SpecRefused(
                f"this job's environment has no {missing}: the deployment sets where its scans may read and write "
                "(the CloudFormation template's job definition does); refusing to run without it"
            )
        return [f"no {missing} in this environment: the spec's locations are not held to a deployment's"]
    for what, root, allowed, name in (
        ("input", input_root, allowed_inputs, INPUT_ROOTS_ENV),
        ("output", output_root, allowed_outputs, OUTPUT_ROOTS_ENV),
    ):
        if not any(place.contains(root) for place in allowed):
            raise SpecRefused(
                f"job spec's {what} root {root} is not inside this deployment's {name} ({' '.join(p.uri() for p in allowed)}): refusing it"
            )
    return []


def _check_paths(spec: JobSpec) -> None:
    for role, rel in spec.inputs.items():
        if rel is not None:
            _relative(rel, f"input {role}")
    for role in ("dwi", "t1w"):
        rel = spec.inputs.get(role)
        if rel and not SAFE_NAME.fullmatch(rel.rsplit("/", 1)[-1]):
            raise SpecRefused(f"job spec's {role} file name {rel.rsplit('/', 1)[-1]!r} is not a BIDS file name: refusing it")
    for rel in spec.extra_inputs:
        _relative(rel, "extra input")
    for pattern in spec.expected_outputs:
        _relative(pattern, "expected output")


def _relative(path: str, what: str) -> None:
    """A path under a folder: relative, no empty, ``.`` or ``..`` segment, no backslash."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise SpecRefused(f"job spec's {what} {path[:200]!r} is not a plain relative path: refusing it")
