"""The run plan settled once the image is known (``canary.settle``), without Airflow."""

from __future__ import annotations

import dataclasses

from ndmg_cloud.participant.canary import CanaryOutcome, settle, skipped
from ndmg_cloud.participant.params import resolve
from ndmg_cloud.participant.runplan import ScanTask
from ndmg_cloud.participant.verify import ScanResult
from ndmg_cloud.scan.contract import local_contract

RUNS = [ScanTask(s, f"s3://lab-data/jobs/{s}.json") for s in ("sub-01", "sub-02", "sub-03")]


def done_row(contract) -> ScanResult:
    return ScanResult(
        "sub-01",
        "01",
        None,
        "skipped_done",
        reason="already done by run r0 (force=true reruns it)",
        made_by=contract.label,
        contract=contract.fingerprint,
    )


def test_the_same_code_in_another_image_reruns_and_the_fingerprints_tell_them_apart():
    config = resolve({"bucket": "lab-data", "pipeline": "lite", "pilot_scans": 1}, "run-1")
    then = local_contract("lite")
    now = dataclasses.replace(then, base_image="python:3.11-slim-bookworm")  # same code, other base
    settled = settle(config, RUNS, {"sub-01": done_row(then)}, {}, now, CanaryOutcome("passed"))
    assert settled.done == {}
    assert settled.reruns["sub-01"] == (
        f"done with {then.label} (contract {then.fingerprint}), this run uses {now.label} (contract {now.fingerprint})"
    )
    assert settled.pilots == ["sub-01"]  # a rerun is as good a pilot as a new scan


def test_the_same_contract_is_done_and_without_a_canary_the_row_says_so():
    config = resolve({"bucket": "lab-data", "pipeline": "lite"}, "run-1")
    same = local_contract("lite")
    settled = settle(config, RUNS, {"sub-01": done_row(same)}, {}, same, CanaryOutcome("passed"))
    assert list(settled.done) == ["sub-01"] and settled.to_run(RUNS) == RUNS[1:]
    off = resolve({"bucket": "lab-data", "pipeline": "lite", "canary": False}, "run-1")
    settled = settle(off, RUNS, {"sub-01": done_row(same)}, {}, None, skipped(off))
    assert settled.done["sub-01"].reason.endswith("its image was not compared (canary=false)")
