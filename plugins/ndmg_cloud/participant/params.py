"""The run's parameters: the JSON schema behind the trigger form, and their resolution into
one ``RunConfig`` with every location worked out and every bad value refused up front.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ndmg_cloud.core.bids import normalise_labels
from ndmg_cloud.core.layout import OutputLayout, S3Location, as_prefix
from ndmg_cloud.core.pipelines import M2G_SKULL, OPTION_NAMES, PIPELINES, OptionError, get_pipeline

BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
BACKENDS = ("aws_batch", "local")


class ParamError(ValueError):
    """A run parameter that cannot work; the message names the value and the fix."""


# The trigger form's sections, in the order the form shows them.
DATASET, PIPELINE, AWS_BATCH, RUN_CONTROL = "Dataset", "Pipeline", "AWS Batch", "Run control"

# Patterns the schema checks at trigger time (they hold in Python's re and in the browser's
# RegExp alike). S3 keys: AWS's "safe characters", no '.'/'..' segments, and no braces, so no
# value can be read as a template anywhere downstream.
_SAFE_KEY = r"[A-Za-z0-9!_.*'()/+=@,-]"
_NO_DOT_SEGMENT = r"(?!(.*/)?\.{1,2}(/|$))(?!.*//)"  # and no empty segment
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_PATH = _NO_DOT_SEGMENT + _SAFE_KEY + "*"
_S3_URI = rf"s3://{_BUCKET}(/(?!/){_PATH})?"
PATTERNS = {
    "bucket": rf"^{_BUCKET}$",
    "bidsdir": rf"^(?!s3:){_PATH}$",
    "modif": rf"^(?!.*//)/?derivatives(/{_NO_DOT_SEGMENT}{_SAFE_KEY}*)?$",
    "output_uri": rf"^{_S3_URI}$",
    "jobdir": rf"^({_S3_URI}|(?!s3:){_PATH})$",
    "atlas": rf"^s3://{_BUCKET}/{_NO_DOT_SEGMENT}{_SAFE_KEY}+$",
    "dataset": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "participant_label": r"^(sub-)?[A-Za-z0-9]{1,64}$",
    "session_label": r"^(ses-)?[A-Za-z0-9]{1,64}$",
    "parcellation": r"^[A-Za-z0-9][A-Za-z0-9._+-]*$",
    "job_queue": r"^([A-Za-z0-9][A-Za-z0-9_-]{0,127}|arn:aws[a-z-]*:batch:[a-z0-9-]+:[0-9]{12}:job-queue/[A-Za-z0-9][A-Za-z0-9_-]{0,127})$",
    "job_definition": r"^([A-Za-z0-9][A-Za-z0-9_-]{0,127}(:[0-9]+)?|arn:aws[a-z-]*:batch:[a-z0-9-]+:[0-9]{12}:job-definition/[A-Za-z0-9][A-Za-z0-9_-]{0,127}(:[0-9]+)?)$",
}
PIPELINE_DEFAULT = "pipeline default"
# The Batch names a run uses unless told otherwise: what ndmg_cloud setup / ndmg_infra create
DEFAULT_JOB_QUEUE, DEFAULT_JOB_DEFINITION = "ndmg-queue", "ndmg"
DEFAULT_MAX_SCANS = 2000
_S3_RULE = "with S3 key characters only (letters, digits, ! _ . * ' ( ) / + = @ , -) and no '.', '..' or empty segments"
# What each pattern asks for, in the words of the message that refuses a value.
PATTERN_RULES = {
    "bucket": "a bucket name only: 3-63 lowercase letters, digits, '.', '-', without s3:// or a path",
    "bidsdir": f"a folder inside the bucket (not an s3:// URI), {_S3_RULE}",
    "modif": f"a folder under derivatives/ (e.g. 'derivatives/ndmg'; nothing else in a dataset is written to), {_S3_RULE}",
    "output_uri": f"an s3://bucket/path URI, {_S3_RULE}",
    "jobdir": f"an s3://bucket/path URI, {_S3_RULE}",
    "atlas": f"an s3://bucket/key URI of a NIfTI file, {_S3_RULE}",
    "dataset": "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64",
    "participant_label": "a BIDS label: letters and digits only, at most 64 (01 or sub-01)",
    "session_label": "a BIDS label: letters and digits only, at most 64 (1 or ses-1)",
    "parcellation": "an atlas name: letters, digits and . _ + - (e.g. AAL, Desikan)",
    "job_queue": "a Batch job queue name or ARN",
    "job_definition": "a Batch job definition name (name or name:revision) or ARN",
}
assert set(PATTERN_RULES) == set(PATTERNS)


def _param(section: str, default: Any, type_: Any, title: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"default": default, "type": type_, "title": title, "description": description, "section": section, **extra}


def _optional(section: str, type_: str, title: str, description: str, **extra: Any) -> dict[str, Any]:
    """A param the user may leave empty (null): the resolver derives its value."""
    return _param(section, None, ["null", type_], title, description, **extra)


def _optional_choice(section: str, choices: list[str], title: str, description: str, **labels: str) -> dict[str, Any]:
    """A nullable enum whose empty choice reads "pipeline default", not "null"."""
    display = {"null": PIPELINE_DEFAULT, **{c: labels.get(c, c) for c in choices}}
    return _optional(section, "string", title, description, enum=[None, *choices], values_display=display)


MAX_LABELS = 10000  # labels a run may name (a form or conf of a million is refused at trigger time)
DEFAULT_MAX_COST_USD = 1000.0  # a run estimated above this is refused unless the param is raised


def _labels(section: str, title: str, description: str, pattern: str) -> dict[str, Any]:
    return _optional(section, "array", title, description, items={"type": "string", "pattern": pattern}, maxItems=MAX_LABELS)


# name -> JSON schema; the DAG turns these into Airflow Params (and so the trigger form).
PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    # --- Dataset
    "bucket": {
        "type": "string",
        "title": "S3 bucket",
        "description": "Bucket holding the BIDS dataset: its name only (lab-data), no s3:// and no path.",
        "section": DATASET,
        "minLength": 3,
        "maxLength": 63,
        "pattern": PATTERNS["bucket"],
    },
    "bidsdir": _optional(
        DATASET,
        "string",
        "BIDS dataset path",
        "Dataset folder inside the bucket (studies/HNU1); empty = the bucket root.",
        pattern=PATTERNS["bidsdir"],
    ),
    "modif": _param(
        DATASET,
        "derivatives/ndmg",
        "string",
        "Output folder",
        "Output folder under the dataset's derivatives/ (seed --modif); nothing else inside a dataset is written to.",
        minLength=1,
        pattern=PATTERNS["modif"],
    ),
    "output_uri": _optional(
        DATASET,
        "string",
        "Output location",
        "Full s3:// output location; overrides bucket/bidsdir/modif (e.g. when the input is read-only open data). Empty = <dataset>/<output folder>.",
        pattern=PATTERNS["output_uri"],
    ),
    "jobdir": _optional(
        DATASET,
        "string",
        "Job spec folder",
        "Where the per-scan job JSONs go (s3:// URI); empty = <output>/jobs/<run id>/.",
        pattern=PATTERNS["jobdir"],
    ),
    "dataset": _optional(
        DATASET,
        "string",
        "Dataset name",
        "Name used in job names and tags (letters, digits, . _ -); empty = last part of the dataset path.",
        pattern=PATTERNS["dataset"],
    ),
    "participant_label": _labels(
        DATASET, "Participants", "Subject labels (01 or sub-01), one per line; empty = all.", PATTERNS["participant_label"]
    ),
    "session_label": _labels(DATASET, "Sessions", "Session labels (1 or ses-1), one per line; empty = all.", PATTERNS["session_label"]),
    # --- Pipeline
    "pipeline": _param(
        PIPELINE,
        "m2g",
        "string",
        "Pipeline",
        "m2g (current), ndmg (legacy ndmg_bids) or lite (small DIPY demo pipeline).",
        enum=list(PIPELINES),
        values_display={"m2g": "m2g (current ndmg)", "ndmg": "ndmg 0.2.1 (legacy)", "lite": "lite (small demo pipeline)"},
    ),
    "parcellation": _optional(
        PIPELINE,
        "array",
        "Parcellations",
        "m2g: neuroparc atlas names such as AAL, Desikan, Schaefer400 (all of them, and the few m2g cannot use: "
        "ndmg_cloud atlases); ndmg: one atlas; lite: gridN. Empty = the pipeline's default (m2g: AAL and Desikan).",
        items={"type": "string", "pattern": PATTERNS["parcellation"]},
    ),
    "space": _optional_choice(PIPELINE, ["native", "native_dsn"], "Registration space", "m2g/ndmg: native or native_dsn."),
    "voxelsize": _optional_choice(PIPELINE, ["1mm", "2mm", "4mm"], "Voxel size", "m2g: 1mm, 2mm or 4mm."),
    "mod": _optional_choice(PIPELINE, ["det", "prob"], "Tracking", "det or prob.", det="deterministic", prob="probabilistic"),
    "track_type": _optional_choice(PIPELINE, ["local", "particle"], "Track type", "m2g/ndmg: local or particle."),
    "diffusion_model": _optional_choice(PIPELINE, ["csa", "csd", "tensor"], "Diffusion model", "m2g: csa or csd; lite: tensor or csa."),
    "seeds": _optional(PIPELINE, "integer", "Seeds per voxel", "m2g and lite.", minimum=1),
    "skull": _optional_choice(
        PIPELINE,
        list(M2G_SKULL),
        "Skull-strip fix (m2g)",
        "m2g --skull, when the default skull strip failed: below (excess tissue below the brain), cerebelum (cerebellum missing), eye (frontal clipping), general (excess clipping).",
    ),
    "n_cpus": _optional(PIPELINE, "integer", "CPUs for m2g", "m2g --n_cpus.", minimum=1),
    "mem_gb": _optional(PIPELINE, "integer", "Memory for m2g (GB)", "m2g --mem_gb.", minimum=1),
    "atlas": _optional(
        PIPELINE,
        "string",
        "Atlas image (lite)",
        "lite: s3:// URI of a label NIfTI in the DWI's own space, used besides the grids.",
        pattern=PATTERNS["atlas"],
    ),
    # --- AWS Batch
    "job_queue": _param(
        AWS_BATCH,
        DEFAULT_JOB_QUEUE,
        "string",
        "Batch job queue",
        "AWS Batch job queue name or ARN.",
        minLength=1,
        pattern=PATTERNS["job_queue"],
    ),
    "job_definition": _param(
        AWS_BATCH,
        DEFAULT_JOB_DEFINITION,
        "string",
        "Batch job definition",
        "AWS Batch job definition name (name:revision) or ARN.",
        minLength=1,
        pattern=PATTERNS["job_definition"],
    ),
    "job_timeout_minutes": _param(
        AWS_BATCH, 360, "integer", "Job timeout (minutes)", "Batch stops an attempt that runs longer.", minimum=1
    ),
    "runnable_timeout": _param(
        AWS_BATCH,
        30,
        "integer",
        "Stuck-job check (minutes)",
        "A job RUNNABLE this long is checked against its compute environments and cancelled, with the reason, if none can run it.",
        minimum=1,
    ),
    "max_cost_usd": _param(
        AWS_BATCH,
        DEFAULT_MAX_COST_USD,
        ["null", "number"],
        "Cost ceiling (USD)",
        f"Refuse the run if its on-demand estimate exceeds this (default {DEFAULT_MAX_COST_USD:.0f}); empty = no ceiling.",
        minimum=0,
    ),
    "canary": _param(
        AWS_BATCH,
        True,
        "boolean",
        "Canary job first",
        "Before any scan job, one short job on the run's queue and job definition checks that the image can run this run's scans (ndmg-scan --self-check); a failing canary stops the run there.",
    ),
    "pilot_scans": _param(
        AWS_BATCH,
        0,
        "integer",
        "Pilot scans",
        "Run this many scans to success before submitting the rest; 0 = submit all at once.",
        minimum=0,
    ),
    # --- Run control
    "backend": _param(
        RUN_CONTROL,
        os.environ.get("NDMG_DEFAULT_BACKEND", "aws_batch"),
        "string",
        "Backend",
        "aws_batch: one AWS Batch job per scan; local: the scan runner in a subprocess on the Airflow worker.",
        enum=list(BACKENDS),
        values_display={"aws_batch": "AWS Batch (one job per scan)", "local": "local (on the Airflow worker)"},
    ),
    "max_scans": _param(
        RUN_CONTROL,
        DEFAULT_MAX_SCANS,
        "integer",
        "Most scans per run",
        "A run that would run more scans than this is refused before anything is written or submitted (a wrong bidsdir, a bucket of junk); raise it for a bigger dataset.",
        minimum=1,
    ),
    "force": _param(RUN_CONTROL, False, "boolean", "Reprocess done scans", "Run scans even when their outputs are already complete."),
    "dry_run": _param(RUN_CONTROL, False, "boolean", "Dry run", "Discover, write job specs and the report; submit nothing."),
}
assert set(OPTION_NAMES) <= set(PARAM_SCHEMAS)


def defaults() -> dict[str, Any]:
    return {name: schema["default"] for name, schema in PARAM_SCHEMAS.items() if "default" in schema}


def check_conf_keys(conf: dict[str, Any]) -> None:
    """Refuse trigger conf keys that are not params (a typo would otherwise be ignored)."""
    for key in conf:
        if key not in PARAM_SCHEMAS:
            close = difflib.get_close_matches(key, PARAM_SCHEMAS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ParamError(f"unknown parameter '{key}'{hint} Known: {', '.join(PARAM_SCHEMAS)}")


def check_options(conf: dict[str, Any]) -> None:
    """Refuse, at trigger time, pipeline options the run would refuse once it starts: an
    atlas the pipeline's image does not have, one it cannot use, one without the chosen voxel
    size, a value the pipeline does not take (missing params take the schema's defaults)."""
    params = {**defaults(), **conf}
    if params.get("pipeline") is not None and not isinstance(params["pipeline"], str):
        return  # not a pipeline name: the schema's enum refuses it, naming the param
    if isinstance(params.get("parcellation"), str):  # one name typed as a string
        params["parcellation"] = [params["parcellation"]] if params["parcellation"].strip() else []
    try:
        get_pipeline(params.get("pipeline") or "m2g").resolve_options({k: params.get(k) for k in OPTION_NAMES})
    except OptionError as err:
        raise ParamError(str(err)) from None


@dataclass
class RunConfig:
    """Everything a run needs to know, resolved from the params and the run id."""

    run_id: str
    dataset: str
    input_root: S3Location
    output_root: S3Location
    jobdir: str
    pipeline: str
    options: dict[str, Any]
    participants: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    job_queue: str = DEFAULT_JOB_QUEUE
    job_definition: str = DEFAULT_JOB_DEFINITION
    job_timeout_minutes: int = 360
    runnable_timeout_minutes: int = 30
    max_cost_usd: float | None = None
    backend: str = "aws_batch"
    canary: bool = True
    pilot_scans: int = 0
    max_scans: int = DEFAULT_MAX_SCANS
    force: bool = False
    dry_run: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> OutputLayout:
        return OutputLayout(self.output_root)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_root"] = self.input_root.uri()
        data["output_root"] = self.output_root.uri()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        data["input_root"] = S3Location.parse(data["input_root"])
        data["output_root"] = S3Location.parse(data["output_root"])
        return cls(**data)


def check_patterns(params: dict[str, Any]) -> dict[str, Any]:
    """The schema's patterns, for callers that are not Airflow's trigger (the CLI, tests, a
    conf that skipped the form): refuse any value that breaks one, naming it and the rule.
    A label list given as one string is that one label. Returns the params, so normalised."""
    params = dict(params)
    for name in ("participant_label", "session_label", "parcellation"):
        if isinstance(params.get(name), str):
            params[name] = [params[name]] if params[name].strip() else []
    for name, pattern in PATTERNS.items():
        value = params.get(name)
        for item in value if isinstance(value, list) else [value]:
            if item is None or (isinstance(item, str) and not item.strip()):
                continue  # empty: the resolver derives the value (a missing bucket is refused before)
            if not isinstance(item, str) or not re.search(pattern, item.strip()):
                raise ParamError(f"{name} {item!r} is refused: it must be {PATTERN_RULES[name]}")
    return params


def resolve(params: dict[str, Any], run_id: str) -> RunConfig:
    """Turn validated params into a RunConfig, refusing what cannot work.

    Missing params take their schema defaults, so callers outside Airflow pass only what
    they set.
    """
    params = {**defaults(), **params}
    if not run_id.strip(".") or "/" in run_id:
        raise ParamError(
            f"run id {run_id[:100]!r} would put a path segment into the run's keys (jobs/<run id>/, reports/<run id>/): "
            "trigger with a run id that is not only dots and has no '/'"
        )
    bucket = (params.get("bucket") or "").strip()
    if not bucket:
        raise ParamError("no bucket given: set 'bucket' to the S3 bucket that holds the BIDS dataset")
    if bucket.startswith("s3://") or not BUCKET_NAME.fullmatch(bucket):
        raise ParamError(
            f"bucket {bucket!r} is not an S3 bucket name: give the name only "
            "(3-63 lowercase letters, digits, '.', '-'), without s3:// or a path"
        )
    params = check_patterns(params)
    bidsdir = as_prefix(params.get("bidsdir") or "")
    input_root = S3Location(bucket, bidsdir)
    output_root = _output_root(params, input_root)

    pipeline = get_pipeline(params.get("pipeline") or "m2g")
    options = pipeline.resolve_options({k: params.get(k) for k in OPTION_NAMES})

    dataset = (params.get("dataset") or "").strip() or (bidsdir.rstrip("/").rsplit("/", 1)[-1] if bidsdir else bucket)
    backend = params.get("backend") or "aws_batch"
    jobdir = (params.get("jobdir") or "").strip() or OutputLayout(output_root).default_jobdir(run_id)
    if jobdir.startswith("s3://"):
        _refuse_inside_input(S3Location.parse(jobdir), input_root, f"jobdir {jobdir!r}")
    elif backend == "aws_batch":
        raise ParamError(
            f"jobdir {jobdir!r} is a local path, which Batch jobs cannot read; "
            "give an s3:// URI or leave it empty for <output>/jobs/<run id>/"
        )
    pilot_scans = int(params.get("pilot_scans") or 0)
    if pilot_scans and backend != "aws_batch":
        raise ParamError(
            f"pilot_scans={pilot_scans} applies to backend=aws_batch (it saves paying for a fan-out "
            "that would fail); set it to 0 for backend=local"
        )
    try:
        participants = normalise_labels(params.get("participant_label") or [], "sub")
        sessions = normalise_labels(params.get("session_label") or [], "ses")
    except ValueError as err:
        raise ParamError(str(err)) from None
    for key, labels in (("participant_label", participants), ("session_label", sessions)):
        folded: dict[str, str] = {}
        for label in labels:
            other = folded.setdefault(label.lower(), label)
            if other != label:
                raise ParamError(
                    f"{key} {other!r} and {label!r} differ only in case: BIDS folders that differ only in case "
                    "collide on case-insensitive file systems; give one of them"
                )

    return RunConfig(
        run_id=run_id,
        dataset=dataset,
        input_root=input_root,
        output_root=output_root,
        jobdir=jobdir if jobdir.endswith("/") else jobdir + "/",
        pipeline=pipeline.name,
        options=options,
        participants=participants,
        sessions=sessions,
        job_queue=params.get("job_queue") or DEFAULT_JOB_QUEUE,
        job_definition=params.get("job_definition") or DEFAULT_JOB_DEFINITION,
        job_timeout_minutes=int(params.get("job_timeout_minutes") or 360),
        runnable_timeout_minutes=int(params.get("runnable_timeout") or 30),
        max_cost_usd=params.get("max_cost_usd"),
        backend=backend,
        canary=bool(params.get("canary", True)),
        pilot_scans=pilot_scans,
        max_scans=int(params.get("max_scans") or DEFAULT_MAX_SCANS),
        force=bool(params.get("force")),
        dry_run=bool(params.get("dry_run")),
        params=dict(params),
    )


def _output_root(params: dict[str, Any], input_root: S3Location) -> S3Location:
    output_uri = (params.get("output_uri") or "").strip()
    if output_uri:
        try:
            out = S3Location.parse(output_uri)
        except ValueError as err:
            raise ParamError(f"output_uri: {err}") from None
        where = f"output_uri {output_uri!r}"
    else:
        modif = as_prefix(params.get("modif") or "")
        if not modif:
            raise ParamError(
                "modif is empty: outputs would be written into the input dataset itself; use a folder such as 'derivatives/ndmg'"
            )
        out = input_root.child(modif)
        where = f"modif {params.get('modif')!r}"
    if out == input_root:
        raise ParamError(f"{where} is the dataset root {input_root}: choose a separate output folder")
    _refuse_inside_input(out, input_root, where)
    return out


def _refuse_inside_input(location: S3Location, input_root: S3Location, where: str) -> None:
    """Inside the input dataset, this project writes under ``derivatives/`` only (BIDS's
    place for outputs); never into subject folders, sourcedata, code or the root."""
    if input_root.contains(location):
        first = location.prefix[len(input_root.prefix) :].split("/", 1)[0]
        if first.startswith("sub-"):
            raise ParamError(
                f"{where} lies inside subject folder '{first}' of the input dataset; "
                "nothing may be written into input subject folders: use e.g. 'derivatives/ndmg'"
            )
        if first != "derivatives":
            raise ParamError(
                f"{where} lies inside the input dataset {input_root} but not under its derivatives/ folder; "
                f"inside a dataset only derivatives/ is written to: use e.g. '{input_root.uri()}derivatives/{first or 'ndmg'}/' "
                "or a location outside the dataset"
            )
