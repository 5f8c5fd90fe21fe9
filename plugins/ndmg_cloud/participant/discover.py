"""The ``discover`` step: one listing of the dataset, scans out, bad input refused."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ndmg_cloud.core.bids import Discovery, TooManyKeys, discover_scans, select
from ndmg_cloud.core.s3 import list_objects
from ndmg_cloud.participant.params import ParamError, RunConfig
from ndmg_cloud.participant.verify import ScanResult, completed_scans

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The dataset cannot be processed as asked; the message says why and what to do."""


# image and gradient files a scan may bring (DWI, bval, bvec, T1w, a second T1w or run, and
# their .nii/.nii.gz twins), beyond max_scans' worth of which discovery stops holding keys
KEYS_PER_SCAN, KEY_SLACK = 12, 1000


class TooManyScans(ValueError):
    """A run above its ``max_scans``; the message says what to do."""


@dataclass
class Survey:
    """What a run would do with its dataset: the scans found, those an earlier run already
    made for this pipeline and options, and why others run again."""

    found: Discovery
    done: dict[str, ScanResult]  # scan id -> its skipped_done row
    reruns: dict[str, str]  # scan id -> why it runs although made before

    @property
    def to_run(self) -> int:
        return len(self.found.valid) - len(self.done)


def survey(config: RunConfig, s3_client: Any, found: Discovery | None = None) -> Survey:
    """One listing of the dataset (unless ``found`` is its discovery) and one of the output
    location: what this run would run (``force``: every valid scan), refused if more than
    ``max_scans``."""
    found = discover(config, s3_client) if found is None else found
    done, reruns = ({}, {}) if config.force else completed_scans(config, found.valid, s3_client)
    surveyed = Survey(found, done, reruns)
    if surveyed.to_run > config.max_scans:
        raise TooManyScans(
            f"this run would run {surveyed.to_run} scans of {config.input_root}, more than max_scans={config.max_scans}: "
            "check bidsdir, narrow the run with participant_label, or raise max_scans"
        )
    return surveyed


def discover(config: RunConfig, s3_client: Any) -> Discovery:
    root = config.input_root
    # An output folder inside the dataset is never a sub-* folder (params refuse that), so
    # discovery, which reads only sub-* trees, never mistakes outputs for inputs.
    keys = (obj.key for obj in list_objects(s3_client, root.bucket, root.prefix))
    try:
        found = discover_scans(keys, root.prefix, max_candidates=KEYS_PER_SCAN * config.max_scans + KEY_SLACK)
    except TooManyKeys as err:
        raise TooManyScans(str(err)) from None
    for warning in found.warnings:
        log.warning(warning)

    if found.keys_listed == 0:
        raise DatasetError(f"nothing under {root}: check 'bucket' ({root.bucket!r}) and 'bidsdir' ({root.prefix!r})")
    if not found.scans:
        raise DatasetError(
            f"no DWI images under {root} ({found.keys_listed} keys listed): expected "
            "sub-<label>/[ses-<label>/]dwi/sub-<label>[_ses-<label>]..._dwi.nii[.gz]; "
            "check 'bidsdir'"
        )
    _check_filter(config.participants, sorted({s.subject for s in found.scans}), "participant_label", "sub")
    _check_filter(config.sessions, sorted({s.session for s in found.scans if s.session}), "session_label", "ses")
    found.scans = select(found.scans, config.participants, config.sessions)
    if not found.scans:
        raise DatasetError(
            f"participant_label {config.participants} and session_label {config.sessions} together match no scan; loosen one of them"
        )
    if not found.valid and not any(s.waiting for s in found.scans):
        reasons = "; ".join(f"{s.scan_id}: {s.reason}" for s in found.scans[:5])
        raise DatasetError(f"all {len(found.scans)} scans are invalid, nothing to run. {reasons}")
    for scan in found.scans:
        if scan.waiting:
            log.info("%s is waiting for files: %s", scan.scan_id, scan.reason)
    log.info(
        "%d keys listed, %d parsed, %d scans (%d valid, %d invalid)",
        found.keys_listed,
        found.keys_parsed,
        len(found.scans),
        len(found.valid),
        len(found.invalid),
    )
    return found


def _check_filter(wanted: list[str], present: list[str], param: str, key: str) -> None:
    missing = [label for label in wanted if label not in present]
    if missing:
        shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "")
        raise ParamError(f"{param} {missing} not found in the dataset; {key} labels present: {shown or 'none'}")
