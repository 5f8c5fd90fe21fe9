"""Pipeline adapters: each owns its options, its command line and the outputs it must make.

The verifier asks the adapter what a scan must produce, so a pipeline that exits 0 without
its graphs is never counted as done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ndmg_cloud.bids import Scan

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
    "atlas",
)

# Sessionless scans run in a per-scan work tree with this session; the runner maps it back.
WORK_SESSION = "1"

# Atlases of the neuroparc collection shipped in the m2g image (/m2g_atlases), by the name
# m2g's --parcellation takes. m2g with no --parcellation runs all 47 (hours, many GB), so
# the default is an explicit short list.
M2G_ATLASES = (
    "AAL",
    "Brodmann",
    "CPAC200",
    "Desikan",
    "DesikanKlein",
    "DKT",
    "Glasser",
    "HarvardOxfordcort-maxprob-thr25",
    "HarvardOxfordsub-maxprob-thr25",
    "Hammersmith",
    "JHU",
    "Juelich",
    "MICCAI",
    "Princetonvisual-top",
    "Schaefer2018-200",
    "Schaefer2018-400",
    "Schaefer2018-1000",
    "Talairach",
    "Yeo-7",
    "Yeo-17",
)
M2G_DEFAULT_PARCELLATIONS = ("AAL", "Desikan")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


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


def names_from(allowed: tuple[str, ...] | None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not value:
            return "must be a non-empty list of names"
        for name in value:
            if not isinstance(name, str) or not NAME.fullmatch(name):
                return f"name {name!r} may only use letters, digits and '-'"
            if allowed is not None and name not in allowed:
                return f"{name!r} is not an atlas of this image; choose from {', '.join(allowed)}"
        return None

    return check


def single_name(value: Any) -> str | None:
    complaint = names_from(None)(value)
    if complaint is None and len(value) != 1:
        return "takes exactly one atlas name (ndmg_bids --atlas runs one atlas per job)"
    return complaint


def grid_names(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list such as ['grid3']"
    for name in value:
        m = re.fullmatch(r"grid(\d+)", str(name))
        if not m or not 2 <= int(m.group(1)) <= 12:
            return f"{name!r} is not a grid parcellation; use grid2 ... grid12 (cubes per axis)"
    return None


@dataclass(frozen=True)
class Pipeline:
    name: str
    image: str
    description: str
    options: dict[str, Option] = field(default_factory=dict)

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in; an option this pipeline does not take is an error."""
        resolved = {}
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
            resolved[key] = value
        for key, option in self.options.items():
            if key not in resolved and option.default is not None:
                resolved[key] = option.default
        return resolved

    def command(self, scan: Scan, options: dict[str, Any], input_dir: str, output_dir: str) -> list[str]:
        raise NotImplementedError

    def expected_outputs(self, scan: Scan, options: dict[str, Any]) -> list[str]:
        """Paths (fnmatch patterns) relative to the scan's output prefix."""
        raise NotImplementedError

    def extra_inputs(self, options: dict[str, Any]) -> dict[str, str]:
        """Files besides the scan's own the runner must fetch: work-tree path -> s3:// URI."""
        return {}


def _res(voxelsize: str) -> str:
    size = voxelsize.removesuffix("mm")
    return f"{size}x{size}x{size}"


class M2G(Pipeline):
    def command(self, scan, options, input_dir, output_dir):
        cmd = [
            "m2g",
            "--pipeline", "dwi",
            "--participant_label", scan.subject,
            "--session_label", scan.session or WORK_SESSION,
            "--parcellation", *options["parcellation"],
            "--voxelsize", options["voxelsize"],
            "--mod", options["mod"],
            "--track_type", options["track_type"],
            "--diffusion_model", options["diffusion_model"],
            "--space", options["space"],
            "--seeds", str(options["seeds"]),
        ]  # fmt: skip
        for key in ("n_cpus", "mem_gb"):
            if key in options:
                cmd += [f"--{key}", str(options[key])]
        return cmd + [input_dir, output_dir]

    def expected_outputs(self, scan, options):
        res = _res(options["voxelsize"])
        out = []
        for parc in options["parcellation"]:
            atlas = f"{parc}_space-MNI152NLin6_res-{res}"
            out.append(f"connectomes_d/{atlas}/{scan.dwi_stem}_{atlas}_connectome.csv")
        return out


class LegacyNdmg(Pipeline):
    def command(self, scan, options, input_dir, output_dir):
        cmd = ["ndmg_bids", "--participant_label", scan.subject]
        cmd += ["--session_label", scan.session or WORK_SESSION]
        cmd += ["--modality", "dwi", "--atlas", options["parcellation"][0]]
        cmd += ["--mod", options["mod"], "--tt", options["track_type"]]
        cmd += ["--mf", options["diffusion_model"], "--sp", options["space"]]
        return cmd + [input_dir, output_dir, "participant"]

    def expected_outputs(self, scan, options):
        atlas = options["parcellation"][0]
        return [f"dwi/roi-connectomes/{atlas}*/{scan.dwi_stem}*_adj.ssv"]


def atlas_uri(value: Any) -> str | None:
    if not isinstance(value, str) or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]+/\S+\.nii(\.gz)?", value):
        return "must be the s3:// URI of a NIfTI label image (.nii or .nii.gz)"
    return None


def atlas_name(uri: str) -> str:
    """``s3://b/atlases/my_atlas.nii.gz`` -> ``my-atlas`` (a legal parcellation name)."""
    stem = uri.rsplit("/", 1)[-1].removesuffix(".gz").removesuffix(".nii")
    return re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-") or "atlas"


class Lite(Pipeline):
    """``gridN`` parcellations of the brain mask, plus an ``atlas`` label image in the
    DWI's own space when given (resampled to the DWI grid by nearest neighbour)."""

    def parcellations(self, options):
        names = list(options["parcellation"])
        if "atlas" in options:
            names.append(atlas_name(options["atlas"]))
        return names

    def command(self, scan, options, input_dir, output_dir):
        cmd = ["ndmg-lite", "--participant_label", scan.subject]
        cmd += ["--session_label", scan.session or WORK_SESSION]
        cmd += ["--parcellation", *options["parcellation"]]
        if "atlas" in options:
            cmd += ["--atlas", f"{input_dir}/{next(iter(self.extra_inputs(options)))}"]
        cmd += ["--diffusion_model", options["diffusion_model"], "--seeds", str(options["seeds"])]
        return cmd + [input_dir, output_dir]

    def expected_outputs(self, scan, options):
        return [
            f"connectomes_d/{parc}/{scan.dwi_stem}_{parc}_connectome.csv"
            for parc in self.parcellations(options)
        ]

    def extra_inputs(self, options):
        if "atlas" not in options:
            return {}
        return {f"atlas/{atlas_name(options['atlas'])}.nii.gz": options["atlas"]}


PIPELINES: dict[str, Pipeline] = {
    "m2g": M2G(
        name="m2g",
        image="ndmg-cloud-m2g:latest",
        description="m2g 0.3.0 (neurodata/m2g), the current ndmg",
        options={
            "parcellation": Option(list(M2G_DEFAULT_PARCELLATIONS), names_from(M2G_ATLASES)),
            "space": Option("native", one_of("native", "native_dsn")),
            "voxelsize": Option("2mm", one_of("1mm", "2mm", "4mm")),
            "mod": Option("det", one_of("det", "prob")),
            "track_type": Option("local", one_of("local", "particle")),
            "diffusion_model": Option("csa", one_of("csa", "csd")),
            "seeds": Option(20, positive_int),
            "n_cpus": Option(None, positive_int),
            "mem_gb": Option(None, positive_int),
        },
    ),
    "ndmg": LegacyNdmg(
        name="ndmg",
        image="ndmg-cloud-ndmg:latest",
        description="legacy ndmg_bids of the neurodata/ndmg_dev image (2019)",
        options={
            "parcellation": Option(["desikan"], single_name),
            "space": Option("native", one_of("native", "native_dsn")),
            "mod": Option("det", one_of("det", "prob")),
            "track_type": Option("local", one_of("local", "particle")),
            "diffusion_model": Option("csd", one_of("csd", "csa")),
        },
    ),
    "lite": Lite(
        name="lite",
        image="ndmg-cloud-lite:latest",
        description="small DIPY connectome pipeline for demos and smoke tests (not ndmg)",
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
        raise OptionError(
            f"pipeline {name!r} is unknown; choose one of {', '.join(PIPELINES)}"
        ) from None
