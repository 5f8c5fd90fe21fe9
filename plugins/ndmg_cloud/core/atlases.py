"""The atlas catalogue: which parcellations a pipeline can be asked for, and how to name one
on its command line.

The names come from neuroparc's real label files (``data/neuroparc-labels.json``, listed
from the repository at the commit each pipeline's image holds): ``<name>_space-MNI152NLin6
[_<variant>]_res-<NxNxN>.nii.gz``. m2g and ndmg glob ``atlases/label/Human/*.nii.gz``, keep
the files of the requested resolution and then every file whose path CONTAINS a requested
string, so ``Desikan`` would also select ``DesikanKlein``. Passing the whole file name
selects exactly one file; ``selected_by`` replays that rule so tests and the image
self-check can prove it.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

LABEL_DIR = "atlases/label/Human"
RESOLUTIONS = {"1mm": "1x1x1", "2mm": "2x2x2", "4mm": "4x4x4"}
LABEL_FILE = re.compile(r"(?P<name>.+?)_space-MNI152NLin6(?P<variant>_.+?)?_res-(?P<res>\dx\dx\d)\.nii\.gz")


@dataclass(frozen=True)
class Atlas:
    """One label file at one resolution."""

    name: str  # what a user asks for: AAL, HarvardOxfordsub-maxprob-thr25_label_all
    voxelsize: str  # 1mm, 2mm, 4mm
    file: str  # AAL_space-MNI152NLin6_res-2x2x2.nii.gz

    @property
    def stem(self) -> str:
        """The file name up to its first dot: the name m2g and ndmg give its connectomes."""
        return self.file.split(".")[0]

    @property
    def argument(self) -> str:
        """What the pipeline's parcellation flag gets: the whole file name (one match only)."""
        return self.file


def atlas_name(file: str) -> str | None:
    """``AAL_space-MNI152NLin6_res-2x2x2.nii.gz`` -> ``AAL``; a variant is kept after the
    name (``..._label_all_res-...`` -> ``<name>_label_all``); other files -> None."""
    match = LABEL_FILE.fullmatch(file)
    if not match:
        return None
    return match["name"] + (match["variant"] or "")


def selected_by(requested: list[str], paths: list[str], voxelsize: str) -> list[str]:
    """The label files m2g (and ndmg, with one name) keep for ``requested`` strings: those
    of the resolution whose path contains a requested string, once per match."""
    dims = RESOLUTIONS.get(voxelsize, voxelsize)
    at_resolution = [path for path in paths if dims in path]
    return [path for path in at_resolution for wanted in requested if wanted in path]


@dataclass(frozen=True)
class Catalogue:
    """The label files of one neuroparc commit, by name and resolution."""

    pipeline: str
    repository: str
    commit: str
    files: tuple[str, ...]
    largest: tuple[tuple[str, int], ...] = ()  # (label file, its largest label), where read

    def largest_label(self, name: str) -> int | None:
        """The largest label value of atlas ``name`` in any of its files that were read."""
        files = {atlas.file for atlas in self.atlases.values() if atlas.name == name}
        values = [value for file, value in self.largest if file in files]
        return max(values) if values else None

    def unusable(self, name: str, label_limit: int | None, why: str = "a limit of its code") -> str | None:
        """Why atlas ``name`` cannot be used by a pipeline that keeps labels up to
        ``label_limit`` (``why``: where that limit comes from), or None."""
        largest = self.largest_label(name)
        if label_limit is None or largest is None or largest <= label_limit:
            return None
        return (
            f"atlas {name!r} has labels up to {largest:,}, and {self.pipeline} keeps labels only up to {label_limit:,} "
            f"({why}): its connectome would silently merge and drop regions. Choose an atlas with fewer labels; "
            f"which {self.pipeline} can use: ndmg_cloud atlases --pipeline {self.pipeline}"
        )

    @property
    def atlases(self) -> dict[tuple[str, str], Atlas]:
        return _index(self)

    def names(self, voxelsize: str | None = None) -> list[str]:
        return sorted(
            {a.name for a in self.atlases.values() if voxelsize is None or a.voxelsize == voxelsize},
            key=str.lower,
        )

    def voxelsizes(self) -> list[str]:
        return [size for size in RESOLUTIONS if any(a.voxelsize == size for a in self.atlases.values())]

    def get(self, name: str, voxelsize: str) -> Atlas:
        try:
            return self.atlases[(name, voxelsize)]
        except KeyError:
            raise KeyError(self.complaint(name, voxelsize)) from None

    def complaint(self, name: str, voxelsize: str) -> str:
        """Why ``name`` cannot be asked for, with the closest real names."""
        if any(a.name == name for a in self.atlases.values()):
            return f"atlas {name!r} has no {voxelsize} version; it comes in {', '.join(self._sizes_of(name))}"
        everything = self.names()
        close = difflib.get_close_matches(name, everything, n=3, cutoff=0.5)
        close += [n for n in everything if n.lower() == name.lower() and n not in close]
        hint = f"closest: {', '.join(close)}" if close else "e.g. " + ", ".join(everything[:3])
        return (
            f"{name!r} is not an atlas of {self.pipeline}'s image (neuroparc {self.commit[:8]}); {hint}. "
            f"All {len(everything)}: ndmg_cloud atlases --pipeline {self.pipeline}"
        )

    def _sizes_of(self, name: str) -> list[str]:
        return [size for size in RESOLUTIONS if (name, size) in self.atlases]


@cache
def _index(catalogue: Catalogue) -> dict[tuple[str, str], Atlas]:
    by_res = {dims: size for size, dims in RESOLUTIONS.items()}
    index = {}
    for file in catalogue.files:
        name = atlas_name(file)
        if name is None:
            continue  # an odd name (2019 neuroparc): not offered
        match = LABEL_FILE.fullmatch(file)
        if match is None:
            continue  # not a label file of this catalogue's naming
        size = by_res[match["res"]]
        index[(name, size)] = Atlas(name, size, file)
    return index


@cache
def catalogue(pipeline: str) -> Catalogue:
    """The catalogue of ``m2g`` or ``ndmg`` (the neuroparc commit its image holds)."""
    data = json.loads(resources.files("ndmg_cloud.core").joinpath("data/neuroparc-labels.json").read_text())
    entry = data[pipeline]
    largest = tuple(sorted(entry.get("largest_label", {}).items()))
    return Catalogue(pipeline, entry["repository"], entry["commit"], tuple(entry["files"]), largest)
