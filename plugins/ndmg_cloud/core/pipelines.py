"""Pipeline adapters: each owns its options, its command line and the outputs it must make.

The verifier asks the adapter what a scan must produce, so a pipeline that exits 0 without
its graphs is never counted as done.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ndmg_cloud.core.atlases import RESOLUTIONS, Atlas, catalogue
from ndmg_cloud.core.bids import Scan

# The option names shared by the DAG params and the adapters.
OPTION_NAMES = (
    "parcellation",
    "space",
    "voxelsize",
    "mod",
    "track_type",
    "diffusion_model",
    "seeds",
    "n_cpus",
    "mem_gb",
    "skull",
    "atlas",
)

# Sessionless scans run in a per-scan work tree with this session; the runner maps it back.
WORK_SESSION = "1"

# m2g with no --parcellation runs every atlas of the resolution (47, some of 72,784 nodes):
# hours and many GB. So the default is an explicit short list.
M2G_DEFAULT_PARCELLATIONS = ("AAL", "Desikan")
# m2g's --skull: its own fixes for a skull strip that failed with the default
M2G_SKULL = ("below", "cerebelum", "eye", "general")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Switch (0), one value (1) or one or more ("+"): what an argparse flag takes.
Nargs = int | str


class OptionError(ValueError):
    """A pipeline option the pipeline does not take, or a value it does not accept."""


@dataclass(frozen=True)
class Option:
    default: Any
    check: Callable[[Any], str | None]  # returns a complaint or None


def one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    return check


def positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else "must be a whole number above 0"


def atlas_names(pipeline: str, at_most: int | None = None) -> Callable[[Any], str | None]:
    """A list of atlas names of the pipeline's catalogue (at any resolution; the adapter
    checks the resolution once the voxel size is known, and its label limit)."""

    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not value:
            return "must be a non-empty list of atlas names"
        if at_most is not None and len(value) > at_most:
            return f"takes {at_most} atlas name (one atlas per job)"
        offered = catalogue(pipeline).names()
        for name in value:
            if not isinstance(name, str) or not NAME.fullmatch(name):
                return f"name {name!r} may only use letters, digits, '_' and '-'"
            if name not in offered:
                return "names an unknown atlas: " + catalogue(pipeline).complaint(name, "any")
        return None

    return check


def grid_names(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list such as ['grid3']"
    for name in value:
        m = re.fullmatch(r"grid(\d+)", str(name))
        if not m or not 2 <= int(m.group(1)) <= 12:
            return f"{name!r} is not a grid parcellation; use grid2 ... grid12 (cubes per axis)"
    return None


@dataclass(frozen=True)
class LabelLimit:
    """The largest atlas label a pipeline keeps intact, and where in its code that comes from."""

    largest: int
    why: str


# m2g's graph.py maps labels to nodes through np.unique(atlas).astype("int16") and reads each
# streamline's labels the same way: a label above 32,767 wraps around (negative, or onto
# another label), so DS72784 (labels up to 72,778) loses half its regions without an error.
M2G_LABELS = LabelLimit(32767, "its graph.py stores labels as 16-bit integers")


@dataclass(frozen=True)
class Toolchain:
    """What a pipeline runs besides its own Python code: the programs it calls through a
    shell, the environment it insists on and the files it reads or sources. Facts from the
    pipeline's source, checked by the canary (``ndmg-scan --self-check``) in the image, so
    that an image without them fails one short job, not N scans an hour in.

    ``env`` pairs a variable with the value it must have (None: any, but set). A file may
    start with ``$VAR/`` (one of ``env``) and hold ``{voxelsize}`` (the scan's option).
    ``atlas_files`` are read from the pipeline's atlas folder besides its label files (they
    may hold ``{voxelsize}`` and ``{dims}``, 2mm -> 2x2x2); ``writable`` are folders it writes
    into outside its work folder (``{atlas_dir}``: its atlas folder); ``own_check`` is Python
    run by the interpreter of the pipeline's program: the pipeline's own dependency check.
    """

    programs: tuple[str, ...] = ()
    env: tuple[tuple[str, str | None], ...] = ()
    files: tuple[str, ...] = ()
    atlas_files: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    own_check: str | None = None
    why: str = ""  # where in the pipeline's source these come from
    # what the image contract records of the toolchain: (name, a file to read or a command to
    # run for its version), and the Python packages a person names the code's environment by
    versions: tuple[tuple[str, str], ...] = ()
    key_packages: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.programs or self.env or self.files or self.atlas_files or self.writable or self.own_check)

    def atlas_paths(self, voxelsize: str) -> list[str]:
        """``atlas_files`` at a voxel size, relative to the atlas folder."""
        return [rel.format(voxelsize=voxelsize, dims=RESOLUTIONS[voxelsize]) for rel in self.atlas_files]

    def file_paths(self, options: dict[str, Any], environ: Mapping[str, str], root: Path = Path("/")) -> list[tuple[str, Path]]:
        """``files`` for a scan's ``options``: (the path, where to look for it). A leading
        ``$VAR`` is taken from ``environ`` (left out when unset: the variable's own check names
        it); any other path is looked for under ``root``."""
        paths = []
        for template in self.files:
            path = template.format(**options)
            if not path.startswith("$"):
                paths.append((path, root / path.lstrip("/")))
            elif environ.get(name := path[1:].partition("/")[0]):
                path = environ[name] + path[1 + len(name) :]
                paths.append((path, Path(path)))
        return paths


@dataclass(frozen=True)
class Pipeline:
    """One pipeline: its options, its command line and the outputs it must make.

    ``program`` and ``flags`` are the command line's shape: every flag the adapter may
    emit and how many values it gives it (0, 1 or "+"). An image's contract must show its
    program accepts all of them (see ``ndmg_cloud.scan.contract``). ``work_disk_gb`` is the
    free disk a scan needs in the work folder.
    """

    name: str
    image: str
    description: str
    program: str
    flags: dict[str, Nargs]
    work_disk_gb: float
    options: dict[str, Option] = field(default_factory=dict)
    catalogue: str | None = None  # which atlas catalogue names its parcellations
    atlas_dir: str | None = None  # where its image keeps the atlases
    toolchain: Toolchain = Toolchain()  # the programs, variables and files it needs in its image
    labels: LabelLimit | None = None  # the largest atlas label it keeps intact, if it has a limit

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in; an option this pipeline does not take is an error."""
        resolved: dict[str, Any] = {}
        for key, value in given.items():
            if value is None or value == [] or value == "":  # empty = the pipeline's default
                continue
            if key not in self.options:
                supported = ", ".join(sorted(self.options)) or "none"
                raise OptionError(
                    f"option {key}={value!r} is not supported by pipeline '{self.name}' "
                    f"(it takes: {supported}); remove it or choose another pipeline"
                )
            complaint = self.options[key].check(value)
            if complaint:
                raise OptionError(f"option {key}={value!r} for pipeline '{self.name}' {complaint}")
            # a list of names is a set: the same atlases in another order are the same run
            resolved[key] = sorted(set(value), key=str.lower) if isinstance(value, list) else value
        for key, option in self.options.items():
            if key not in resolved and option.default is not None:
                resolved[key] = list(option.default) if isinstance(option.default, list) else option.default
        if self.catalogue:
            self.atlases(resolved)  # every name exists at the chosen voxel size
        if self.catalogue and self.labels:
            for name in resolved.get("parcellation", []):
                refusal = catalogue(self.catalogue).unusable(name, self.labels.largest, self.labels.why)
                if refusal:
                    raise OptionError(
                        f"option parcellation={resolved['parcellation']!r} for pipeline '{self.name}' names an atlas it cannot use: {refusal}"
                    )
        return resolved

    def atlases(self, options: dict[str, Any]) -> list[Atlas]:
        """The label files of the requested parcellations at the requested voxel size."""
        names = catalogue(self.catalogue)
        try:
            return [names.get(name, options["voxelsize"]) for name in options["parcellation"]]
        except KeyError as err:
            raise OptionError(f"option parcellation for pipeline '{self.name}': {err.args[0]}") from None

    def command(self, scan: Scan, options: dict[str, Any], input_dir: str, output_dir: str) -> list[str]:
        raise NotImplementedError

    def expected_outputs(self, scan: Scan, options: dict[str, Any]) -> list[str]:
        """Paths (fnmatch patterns) relative to the scan's output prefix."""
        raise NotImplementedError

    def extra_inputs(self, options: dict[str, Any]) -> dict[str, str]:
        """Files besides the scan's own the runner must fetch: work-tree path -> s3:// URI."""
        return {}


class M2G(Pipeline):
    """m2g's ``deploy`` code from 2022-03-22 on (``--track_type``, ``--parcellation`` nargs +).
    Outputs: ``connectomes_d/<atlas stem>/<dwi stem>_<atlas stem>_connectome.csv``."""

    def command(self, scan: Scan, options: dict[str, Any], input_dir: str, output_dir: str) -> list[str]:
        cmd = [
            "m2g",
            "--pipeline",
            "dwi",
            "--participant_label",
            scan.subject,
            "--session_label",
            scan.session or WORK_SESSION,
            "--parcellation",
            *(atlas.argument for atlas in self.atlases(options)),
            "--voxelsize",
            options["voxelsize"],
            "--mod",
            options["mod"],
            "--track_type",
            options["track_type"],
            "--diffusion_model",
            options["diffusion_model"],
            "--space",
            options["space"],
            "--seeds",
            str(options["seeds"]),
        ]
        for key in ("skull", "n_cpus", "mem_gb"):
            if key in options:
                cmd += [f"--{key}", str(options[key])]
        return cmd + [input_dir, output_dir]

    def expected_outputs(self, scan: Scan, options: dict[str, Any]) -> list[str]:
        return [f"connectomes_d/{atlas.stem}/{scan.dwi_stem}_{atlas.stem}_connectome.csv" for atlas in self.atlases(options)]


class LegacyNdmg(Pipeline):
    """The released ``ndmg_bids`` (ndmg 0.2.1, 2019): one atlas per job; it writes
    ``dwi/roi-connectomes/<atlas stem>/<dwi stem>_<atlas stem>_measure-spatial-ds_adj.ssv``
    at the output root, which the runner re-roots under the scan's output prefix."""

    def command(self, scan: Scan, options: dict[str, Any], input_dir: str, output_dir: str) -> list[str]:
        [atlas] = self.atlases(options)
        cmd = ["ndmg_bids", "--participant_label", scan.subject]
        cmd += ["--session_label", scan.session or WORK_SESSION]
        cmd += ["--atlas", atlas.argument, "--vox", options["voxelsize"]]
        cmd += ["--mod", options["mod"], "--tt", options["track_type"]]
        cmd += ["--mf", options["diffusion_model"], "--sp", options["space"]]
        cmd += ["--seeds", str(options["seeds"])]
        return cmd + [input_dir, output_dir]

    def expected_outputs(self, scan: Scan, options: dict[str, Any]) -> list[str]:
        [atlas] = self.atlases(options)
        return [f"dwi/roi-connectomes/{atlas.stem}/{scan.dwi_stem}_{atlas.stem}_measure-spatial-ds_adj.ssv"]


def atlas_uri(value: Any) -> str | None:
    if not isinstance(value, str) or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]+/\S+\.nii(\.gz)?", value):
        return "must be the s3:// URI of a NIfTI label image (.nii or .nii.gz)"
    return None


def atlas_name(uri: str) -> str:
    """``s3://b/atlases/my_atlas.nii.gz`` -> ``my-atlas`` (a legal parcellation name)."""
    stem = uri.rsplit("/", 1)[-1].removesuffix(".gz").removesuffix(".nii")
    return re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-") or "atlas"


class Lite(Pipeline):
    """``gridN`` parcellations of a fixed world-space box (the same regions in every
    subject), plus an ``atlas`` label image in the DWI's world space when given (resampled
    to the DWI grid by nearest neighbour). See lite.py."""

    def parcellations(self, options: dict[str, Any]) -> list[str]:
        names = list(options["parcellation"])
        if "atlas" in options:
            names.append(atlas_name(options["atlas"]))
        return names

    def command(self, scan: Scan, options: dict[str, Any], input_dir: str, output_dir: str) -> list[str]:
        cmd = ["ndmg-lite", "--participant_label", scan.subject]
        cmd += ["--session_label", scan.session or WORK_SESSION]
        cmd += ["--parcellation", *options["parcellation"]]
        if "atlas" in options:
            cmd += ["--atlas", f"{input_dir}/{next(iter(self.extra_inputs(options)))}"]
        cmd += ["--diffusion_model", options["diffusion_model"], "--seeds", str(options["seeds"])]
        return cmd + [input_dir, output_dir]

    def expected_outputs(self, scan: Scan, options: dict[str, Any]) -> list[str]:
        return [f"connectomes_d/{parc}/{scan.dwi_stem}_{parc}_connectome.csv" for parc in self.parcellations(options)]

    def extra_inputs(self, options: dict[str, Any]) -> dict[str, str]:
        if "atlas" not in options:
            return {}
        return {f"atlas/{atlas_name(options['atlas'])}.nii.gz": options["atlas"]}


# What m2g 95d271f7's diffusion pipeline (m2g_bids -> m2g_dwi_pipeline) needs besides Python:
# - the programs its gen_utils.run (a shell) starts: FSL's (gen_utils.py, register.py,
#   reg_utils.py, preproc.py) and AFNI's 3dSkullStrip (reg_utils.t1w_skullstrip);
#   check_dependencies shells out to `which afni` before anything runs. Not listed: epi_reg,
#   3dUnifize, 3dcalc, whose functions (align_epi, normalize_t1w, extract_t1w_brain) nothing
#   calls (tests/test_m2g_toolchain.py checks both ways against the source);
# - $FSLDIR (check_dependencies, register.py), and FSLOUTPUTTYPE=NIFTI_GZ as m2g's Dockerfile
#   sets it: m2g loads the *.nii.gz names it gives FSL's outputs;
# - the FSL files register.py reads: the MNI152 brain and mask at the scan's voxel size, and
#   flirt's schedules; and /venv/bin/activate, which preproc.eddy_correct sources first;
# - neuroparc's files register.py reads from the atlas folder besides the label files: the
#   HarvardOxford subcortical labels, the lateral-ventricles and corpus callosum masks (which
#   fslmaths then overwrites in place: the mask folder must be writable), and the FA template
#   of direct_streamline_norm (space native_dsn);
# - `/` writable: m2g_dwi_pipeline saves Tractography_Model_Peak_Directions.png at `/`
#   (qa_dirs[6] / "/Tractography...", an absolute path);
# - m2g's own check_dependencies (gen_utils.py): $FSLDIR set and `which afni` found.
M2G_TOOLCHAIN = Toolchain(
    programs=(
        "eddy_correct",
        "fslmaths",
        "fslroi",
        "bet",
        "fast",
        "flirt",
        "fnirt",
        "applywarp",
        "invwarp",
        "convert_xfm",
        "3dSkullStrip",
        "afni",
        "which",
    ),
    env=(("FSLDIR", None), ("FSLOUTPUTTYPE", "NIFTI_GZ")),
    files=(
        "$FSLDIR/data/standard/MNI152_T1_{voxelsize}_brain.nii.gz",
        "$FSLDIR/data/standard/MNI152_T1_{voxelsize}_brain_mask.nii.gz",
        "$FSLDIR/etc/flirtsch/T1_2_MNI152_2mm.cnf",
        "$FSLDIR/etc/flirtsch/bbr.sch",
        "/venv/bin/activate",
    ),
    atlas_files=(
        "atlases/label/Human/HarvardOxfordsub-maxprob-thr25_space-MNI152NLin6_label_all_res-{dims}.nii.gz",
        "atlases/mask/HarvardOxford-thr25_space-MNI152NLin6_variant-lateral-ventricles_res-{dims}_descr-brainmask.nii.gz",
        "atlases/mask/CorpusCallosum_res_{voxelsize}.nii.gz",
        "atlases/reference_brains/FSL_HCP1065_FA_2mm.nii.gz",
    ),
    writable=("/", "{atlas_dir}/atlases/mask"),
    own_check="from m2g.utils.gen_utils import check_dependencies; check_dependencies()",
    versions=(("FSL", "$FSLDIR/etc/fslversion"), ("AFNI", "afni -ver")),
    key_packages=("dipy", "nibabel", "numpy", "pybids", "networkx", "vtk"),
    why="m2g's diffusion pipeline needs FSL and AFNI: check_dependencies, register.py, preproc.eddy_correct",
)

PIPELINES: dict[str, Pipeline] = {
    "m2g": M2G(
        name="m2g",
        image="ndmg-cloud-m2g:latest",
        description="m2g (neurodata/m2g deploy code, pinned in the image), the current ndmg",
        program="m2g",
        flags={
            "--pipeline": 1,
            "--participant_label": "+",
            "--session_label": "+",
            "--parcellation": "+",
            "--voxelsize": 1,
            "--mod": 1,
            "--track_type": 1,
            "--diffusion_model": 1,
            "--space": 1,
            "--seeds": 1,
            "--skull": 1,
            "--n_cpus": 1,
            "--mem_gb": 1,
        },
        work_disk_gb=20,  # eddy-corrected data, registrations, streamlines: several GB a scan
        catalogue="m2g",
        atlas_dir="/m2g_atlases",
        toolchain=M2G_TOOLCHAIN,
        labels=M2G_LABELS,
        options={
            "parcellation": Option(list(M2G_DEFAULT_PARCELLATIONS), atlas_names("m2g")),
            "space": Option("native", one_of("native", "native_dsn")),
            "voxelsize": Option("2mm", one_of("1mm", "2mm", "4mm")),
            "mod": Option("det", one_of("det", "prob")),
            "track_type": Option("local", one_of("local", "particle")),
            "diffusion_model": Option("csa", one_of("csa", "csd")),
            "seeds": Option(20, positive_int),
            "skull": Option(None, one_of(*M2G_SKULL)),
            "n_cpus": Option(None, positive_int),
            "mem_gb": Option(None, positive_int),
        },
    ),
    "ndmg": LegacyNdmg(
        name="ndmg",
        image="ndmg-cloud-ndmg:latest",
        description="legacy ndmg_bids (ndmg 0.2.1, 2019)",
        program="ndmg_bids",
        flags={
            "--participant_label": "+",
            "--session_label": "+",
            "--atlas": 1,
            "--vox": 1,
            "--mod": 1,
            "--tt": 1,
            "--mf": 1,
            "--sp": 1,
            "--seeds": 1,
        },
        work_disk_gb=20,
        catalogue="ndmg",
        atlas_dir="/ndmg_atlases",
        options={
            "parcellation": Option(["desikan"], atlas_names("ndmg", at_most=1)),
            "voxelsize": Option("2mm", one_of("1mm", "2mm")),
            "space": Option("native", one_of("native", "native_dsn")),
            "mod": Option("det", one_of("det", "prob")),
            "track_type": Option("local", one_of("local", "particle")),
            "diffusion_model": Option("csd", one_of("csd", "csa")),
            "seeds": Option(20, positive_int),
        },
    ),
    "lite": Lite(
        name="lite",
        image="ndmg-cloud-lite:latest",
        description="small DIPY connectome pipeline for demos and smoke tests (not ndmg)",
        program="ndmg-lite",
        flags={
            "--participant_label": 1,
            "--session_label": 1,
            "--parcellation": "+",
            "--atlas": 1,
            "--diffusion_model": 1,
            "--seeds": 1,
        },
        work_disk_gb=0.5,
        toolchain=Toolchain(key_packages=("dipy", "nibabel", "numpy")),  # what its contract names
        options={
            "parcellation": Option(["grid3"], grid_names),
            "diffusion_model": Option("csa", one_of("csa", "tensor")),
            "seeds": Option(1, positive_int),
            "atlas": Option(None, atlas_uri),
        },
    ),
}


def get_pipeline(name: str) -> Pipeline:
    try:
        return PIPELINES[name]
    except KeyError:
        raise OptionError(f"pipeline {name!r} is unknown; choose one of {', '.join(PIPELINES)}") from None
