"""What a scan is: from the keys of a BIDS dataset on S3 to one ``Scan`` per DWI series.

Pure functions over a key listing; no AWS here. The only place that decides which files
make up a scan, which inherited bval/bvec applies and which T1w is used.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ndmg_cloud.core.entities import parse_entities

LABEL = re.compile(r"[a-zA-Z0-9]+")
MAX_LABEL_CHARS = 64  # longer labels make keys, job names and work paths beyond what S3, Batch and filesystems take
IMAGE_EXTENSIONS = (".nii.gz", ".nii")
GRADIENT_EXTENSIONS = (".bval", ".bvec")
CANDIDATE_EXTENSIONS = IMAGE_EXTENSIONS + GRADIENT_EXTENSIONS
# Top-level folders that never hold raw subject data.
IGNORED_TOP_LEVEL = ("derivatives", "sourcedata", "code", "stimuli", "phenotype")
# Entities that name the kind of file, not which series it belongs to.
FILE_KIND_ENTITIES = ("suffix", "extension", "datatype")
DESCRIPTION = "dataset_description.json"

WAITING_FOR_FILES = "waiting for files"
T1W_RULE = "the T1w with the fewest entities besides sub/ses, then the lowest run, then the first path in sort order"


@dataclass
class Scan:
    """One DWI series and the files it needs. ``reason`` set means invalid."""

    scan_id: str
    subject: str
    session: str | None
    entities: dict[str, Any]
    dwi: str  # paths relative to the dataset root
    bval: str | None = None
    bvec: str | None = None
    t1w: str | None = None
    t1w_choice: str | None = None
    reason: str | None = None
    # invalid only because files it needs are not there (yet): an upload still under way,
    # not a mistake; a later run takes the scan once they are
    waiting: bool = False

    @property
    def valid(self) -> bool:
        return self.reason is None

    @property
    def dwi_stem(self) -> str:
        """File name of the DWI image without its extension: ``sub-01_ses-1_dwi``."""
        return file_stem(self.dwi.rsplit("/", 1)[-1])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["entities"] = {k: _plain(v) for k, v in self.entities.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scan:
        return cls(**data)


@dataclass
class Discovery:
    """The outcome of reading one dataset listing."""

    scans: list[Scan] = field(default_factory=list)
    keys_listed: int = 0
    keys_parsed: int = 0
    has_description: bool = False
    subjects: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> list[Scan]:
        return [s for s in self.scans if s.valid]

    @property
    def invalid(self) -> list[Scan]:
        return [s for s in self.scans if not s.valid]


@dataclass(frozen=True)
class _File:
    path: str  # relative to the dataset root
    entities: dict[str, Any]

    @property
    def directory(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    @property
    def series_entities(self) -> dict[str, Any]:
        return {k: v for k, v in self.entities.items() if k not in FILE_KIND_ENTITIES}


def _plain(value: Any) -> Any:
    # pybids returns run as PaddedInt ("02"); keep the label as written.
    return str(value) if isinstance(value, int) else value


def is_candidate(rel: str) -> bool:
    """Whether a key (relative to the dataset root) can be part of a scan.

    Cheap string tests first, so only the few keys that matter are parsed.
    """
    if not rel.endswith(CANDIDATE_EXTENSIONS):
        return False
    top = rel.split("/", 1)[0]
    if "/" not in rel:  # dataset-level files: only inherited bval/bvec matter
        return rel.endswith(GRADIENT_EXTENSIONS)
    return top.startswith("sub-")


JUNK_NAMED_IN_WARNING = 5


def junk_problem(rel: str) -> str | None:
    """Why a key under ``sub-*`` is not a BIDS path at all, or None: an empty, '.' or '..'
    segment, or a file name whose session its folders do not have. Such a key is junk:
    never part of a scan (it could otherwise be read as a second DWI of a clean scan)."""
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "an empty, '.' or '..' path segment"
    has_session_folder = len(parts) > 2 and parts[1].startswith("ses-")
    if not has_session_folder and any(pair.startswith("ses-") for pair in file_stem(parts[-1]).split("_")):
        return "a session in the file name but no ses- folder"
    return None


def label_problem(rel: str) -> str | None:
    """Why the labels in a path are not usable, or None.

    pybids skips characters it does not accept, so ``sub-0;1`` would parse as ``0``;
    this looks at the raw path instead.
    """
    parts = rel.split("/")
    dirs, name = parts[:-1], parts[-1]
    dir_labels: dict[str, str] = {}
    for part in dirs[:2]:
        for key in ("sub", "ses"):
            if part.startswith(key + "-"):
                dir_labels[key] = part[len(key) + 1 :]
    pairs = file_stem(name).split("_")[:-1]
    file_labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not LABEL.fullmatch(key):
            return f"'{pair}' in '{rel}' is not a BIDS key-value pair"
        file_labels.setdefault(key, value)
    for key, value in list(dir_labels.items()) + list(file_labels.items()):
        problem = bad_label(value)
        if problem:
            return f"label {key}-{value[:80]!r} in '{rel[:300]}' {problem}"
    for key in ("sub", "ses"):
        if key in dir_labels and file_labels.get(key) != dir_labels[key]:
            return f"file name '{name}' does not carry {key}-{dir_labels[key]} of its folder in '{rel}'"
    return None


def bad_label(value: str) -> str | None:
    """Why ``value`` is not a label this project accepts, or None."""
    if not LABEL.fullmatch(value):
        return "is not alphanumeric; BIDS labels may only use letters and digits"
    if len(value) > MAX_LABEL_CHARS:
        return f"is {len(value)} characters long; labels may have at most {MAX_LABEL_CHARS}"
    return None


def file_stem(name: str) -> str:
    """A file name without its extension (``.nii.gz`` counts as one)."""
    for ext in CANDIDATE_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name.split(".", 1)[0]


def _looks_like_dwi(rel: str) -> bool:
    """A DWI image by its raw name, so that one pybids cannot parse is reported, not lost."""
    parts = rel.split("/")
    return len(parts) >= 3 and parts[-2] == "dwi" and parts[-1].endswith(("_dwi.nii.gz", "_dwi.nii"))


def _is_image(f: _File, suffix: str, datatype: str) -> bool:
    e = f.entities
    return e.get("suffix") == suffix and e.get("datatype") == datatype and (e.get("extension") in IMAGE_EXTENSIONS)


def _ancestors(directory: str) -> list[str]:
    """``sub-01/ses-1/dwi`` -> [that, ``sub-01/ses-1``, ``sub-01``, ``""``]."""
    out = [directory]
    while directory:
        directory = directory.rsplit("/", 1)[0] if "/" in directory else ""
        out.append(directory)
    return out


def _applies_to(sidecar: _File, dwi: _File) -> bool:
    mine = sidecar.series_entities
    theirs = dwi.series_entities
    # labels compare as written: pybids' run 01 and run 1 are equal ints, but not the same run
    return all(k in theirs and str(theirs[k]) == str(v) for k, v in mine.items())


def _nearest_gradient(dwi: _File, by_dir: dict[str, list[_File]], ext: str) -> tuple[str | None, str]:
    """BIDS inheritance: the nearest applicable file up the tree, the most specific first."""
    for directory in _ancestors(dwi.directory):
        applicable = [f for f in by_dir.get(directory, ()) if f.entities.get("extension") == ext and _applies_to(f, dwi)]
        if not applicable:
            continue
        applicable.sort(key=lambda f: -len(f.series_entities))
        if len(applicable) > 1 and len(applicable[0].series_entities) == len(applicable[1].series_entities):
            names = ", ".join(sorted(f.path for f in applicable[:2]))
            return None, f"two {ext} files apply equally to '{dwi.path}': {names}"
        return applicable[0].path, ""
    return None, f"no {ext} file for '{dwi.path}' (neither beside it nor inherited from above)"


def _choose_t1w(dwi: _File, anat: dict[str, list[_File]]) -> tuple[str | None, str]:
    subject = dwi.entities.get("subject")
    session = dwi.entities.get("session")
    folders = [f"sub-{subject}/ses-{session}/anat"] if session else []
    folders.append(f"sub-{subject}/anat")  # session-less anatomy is shared by all sessions
    for folder in folders:
        candidates = anat.get(folder, [])
        if not candidates:
            continue

        def rank(f: _File) -> tuple[int, int, str]:
            extra = [k for k in f.series_entities if k not in ("subject", "session")]
            run = f.entities.get("run")
            return (len(extra), -1 if run is None else int(run), f.path)

        chosen = min(candidates, key=rank)
        if len(candidates) == 1:
            return chosen.path, "the only T1w"
        return chosen.path, f"chosen from {len(candidates)} T1w candidates by rule: {T1W_RULE}"
    return None, f"no T1w image for sub-{subject}" + (f" ses-{session}" if session else "")


class TooManyKeys(ValueError):
    """More candidate files than the run's key budget: the message says what to do."""


def discover_scans(keys: Iterable[str], prefix: str = "", max_candidates: int | None = None) -> Discovery:
    """Group the keys of one dataset into scans.

    ``prefix`` is the dataset root inside the bucket ("" or ending in "/"). Only ``sub-*``
    trees and dataset-level bval/bvec are read; everything else is ignored. At most
    ``max_candidates`` image and gradient files are held (``TooManyKeys`` beyond): a bucket
    of junk costs a listing, never the worker's memory. Junk keys are counted; the first few
    are named.
    """
    result = Discovery()
    dwis: list[_File] = []
    gradients: dict[str, list[_File]] = defaultdict(list)
    anat: dict[str, list[_File]] = defaultdict(list)
    bad_labels: dict[str, str] = {}
    subjects: set[str] = set()
    junk_keys: list[tuple[str, str]] = []  # the first few, named in the warning
    junk_count = 0

    for key in keys:
        result.keys_listed += 1
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix) :]
        if rel == DESCRIPTION:
            result.has_description = True
            continue
        top = rel.split("/", 1)[0]
        if top in IGNORED_TOP_LEVEL or not is_candidate(rel):
            continue
        junk = junk_problem(rel) if "/" in rel else None
        if junk:
            junk_count += 1
            if len(junk_keys) < JUNK_NAMED_IN_WARNING:
                junk_keys.append((rel[:300], junk))
            continue
        if top.startswith("sub-"):
            subjects.add(top[4:])
        result.keys_parsed += 1
        if max_candidates is not None and result.keys_parsed > max_candidates:
            raise TooManyKeys(
                f"more than {max_candidates} image and gradient files under '{prefix or '/'}' (the budget of this run's "
                "max_scans): check bidsdir, narrow the run with participant_label, or raise max_scans"
            )
        f = _File(rel, parse_entities("/" + rel))
        problem = label_problem(rel) if "/" in rel else None
        if _is_image(f, "dwi", "dwi") or _looks_like_dwi(rel):
            if problem or not _is_image(f, "dwi", "dwi"):
                bad_labels[rel] = problem or f"'{rel}' is not a valid BIDS DWI file name"
            dwis.append(f)
        elif problem:
            continue  # an unusable T1w or gradient file is simply not a candidate
        elif f.entities.get("suffix") == "dwi" and f.entities.get("extension") in GRADIENT_EXTENSIONS:
            gradients[f.directory].append(f)
        elif _is_image(f, "T1w", "anat"):
            anat[f.directory].append(f)

    seen: dict[str, Scan] = {}
    for dwi in sorted(dwis, key=lambda f: f.path):
        scan = _scan_for(dwi, gradients, anat, bad_labels.get(dwi.path))
        if scan.scan_id in seen:  # one row per scan id: the first, made invalid
            other = seen[scan.scan_id]
            other.reason = f"two DWI images for scan {scan.scan_id}: '{other.dwi}' and '{scan.dwi}'"
            continue
        seen[scan.scan_id] = scan
        result.scans.append(scan)
    _refuse_case_collisions(result.scans)
    result.subjects = sorted(subjects)
    if junk_count:
        named = "; ".join(f"'{rel}' ({why})" for rel, why in junk_keys)
        more = f" and {junk_count - len(junk_keys)} more" if junk_count > len(junk_keys) else ""
        result.warnings.append(f"{junk_count} keys under sub-* are not BIDS paths and were ignored: {named}{more}")
    if not result.has_description:
        result.warnings.append(f"no {DESCRIPTION} under '{prefix or '/'}': this may not be a BIDS dataset root")
    return result


def _refuse_case_collisions(scans: list[Scan]) -> None:
    """Labels that differ only in case (sub-A, sub-a) would write into one folder on a
    case-insensitive file system: both scans are invalid, with the reason."""
    for label_of, key in ((lambda s: s.subject, "sub"), (lambda s: f"{s.subject}/{s.session}", "ses")):
        spellings: dict[str, set[str]] = defaultdict(set)
        for scan in scans:
            if key == "sub" or scan.session:
                spellings[label_of(scan).lower()].add(label_of(scan))
        for scan in scans:
            same = spellings.get(label_of(scan).lower(), set())
            if len(same) > 1 and scan.reason is None:
                names = " and ".join(f"{key}-{name.rsplit('/', 1)[-1]}" for name in sorted(same))
                scan.reason = f"{names} differ only in case: they would collide on a case-insensitive file system; rename one"


def _scan_for(dwi: _File, gradients: dict[str, list[_File]], anat: dict[str, list[_File]], bad_label: str | None) -> Scan:
    stem = file_stem(dwi.path.rsplit("/", 1)[-1])
    scan_id = stem[: -len("_dwi")] if stem.endswith("_dwi") else stem
    parts = dwi.path.split("/")
    subject = parts[0][4:]
    session = parts[1][4:] if len(parts) > 2 and parts[1].startswith("ses-") else None
    entities = dict(dwi.series_entities)
    scan = Scan(scan_id, subject, session, entities, dwi.path)
    if bad_label:
        scan.reason = bad_label
        return scan
    scan.bval, bval_problem = _nearest_gradient(dwi, gradients, ".bval")
    scan.bvec, bvec_problem = _nearest_gradient(dwi, gradients, ".bvec")
    scan.t1w, t1w_note = _choose_t1w(dwi, anat)
    if scan.t1w:
        scan.t1w_choice = t1w_note
    problems = [p for p in (bval_problem, bvec_problem) if p]
    if not scan.t1w:
        problems.append(t1w_note)
    if problems:
        scan.waiting = all(p.startswith("no ") for p in problems)  # absent, not ambiguous
        scan.reason = "; ".join(problems) + (
            f" ({WAITING_FOR_FILES}: a later run takes this scan once they are uploaded)" if scan.waiting else ""
        )
    return scan


def normalise_labels(labels: Iterable[str], key: str) -> list[str]:
    """Accept ``01`` or ``sub-01``; refuse anything that is not a BIDS label."""
    out = []
    for raw in labels:
        label = str(raw)
        if label.startswith(key + "-"):
            label = label[len(key) + 1 :]
        if not LABEL.fullmatch(label):
            raise ValueError(
                f"{key} label {raw!r} is not a BIDS label: use letters and digits only, without the '{key}-' prefix (e.g. '01')"
            )
        out.append(label)
    return out


def select(scans: list[Scan], participants: list[str], sessions: list[str]) -> list[Scan]:
    """Keep the scans of the given participants / sessions (empty list = all)."""
    return [s for s in scans if (not participants or s.subject in participants) and (not sessions or s.session in sessions)]
