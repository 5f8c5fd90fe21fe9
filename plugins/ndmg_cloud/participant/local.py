"""The ``local`` backend: the scan runner in a subprocess on the Airflow worker.

The same ``ndmg-scan`` code as in the Batch container, the same job spec, and a
``JobRecord`` like Batch's, so verification and the report do not care where a scan ran.
Concurrency is capped by the Airflow pool ``ndmg_local`` (sized to the machine's cores).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import deque

from ndmg_cloud.core.spec import JOB_SPEC_SHA256_ENV
from ndmg_cloud.participant.jobs import FAILED, SUCCEEDED, JobRecord
from ndmg_cloud.participant.params import RunConfig
from ndmg_cloud.scan.guard import INPUT_ROOTS_ENV, OUTPUT_ROOTS_ENV
from ndmg_cloud.scan.scrub import CREDENTIAL_NAMES, redact, runner_environment
from ndmg_cloud.scan.warm import WARM_ENV

log = logging.getLogger(__name__)
LOCAL_POOL = "ndmg_local"
TAIL_LINES = 40
# "off" where the Airflow worker holds secrets a pipeline must never see (docker-compose.yaml
# sets it): the runner would run beside them, in the same container and as the same user
LOCAL_BACKEND_ENV = "NDMG_LOCAL_BACKEND"


def local_backend_refusal() -> str | None:
    """Why this deployment runs no scan on its Airflow worker, or None when it may."""
    setting = os.environ.get(LOCAL_BACKEND_ENV, "on").strip().lower()
    if setting in ("on", ""):
        return None
    return (
        f"backend=local is turned off here ({LOCAL_BACKEND_ENV}={setting}): it would run the pipeline on the Airflow "
        "worker, beside Airflow's secrets. Use backend=aws_batch, or set "
        f"{LOCAL_BACKEND_ENV}=on only where the worker holds no secret worth keeping (the embedded stack)"
    )


def local_pool_slots() -> int:
    return max(1, os.cpu_count() or 1)


def reason_of(lines: list[str], code: int) -> str:
    """Why a runner failed: its own last ``ndmg-scan:`` line (the runner quotes any pipeline
    line that starts so), else its exit code."""
    said = next((line for line in reversed(lines) if line.startswith("ndmg-scan:")), None)
    return (said or f"runner exited with code {code}").removeprefix("ndmg-scan: ")


def run_local(scan_id: str, spec_uri: str, spec_sha256: str, config: RunConfig, credentials: dict[str, str]) -> JobRecord:
    """Run one scan's runner to completion; its output goes to this task's log. The runner
    gets what a deployment's job definition gives it: the SHA-256 of the spec the orchestrator
    checked, the only locations it may read and write (this run's input and output roots), and
    ``credentials``: short-lived ones scoped like a job role (``orchestration.scancreds``)."""
    refusal = local_backend_refusal()
    if refusal:
        raise RuntimeError(refusal)
    command = [sys.executable, "-m", "ndmg_cloud.scan.runner", "--spec", spec_uri]
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    started = int(time.time() * 1000)
    # not the worker's DB URL, JWT secret or Fernet key (scrub.py); ndmg-lite from the warm fork server (warm.py)
    worker = {k: v for k, v in runner_environment(os.environ).items() if k not in CREDENTIAL_NAMES and k != "AWS_PROFILE"}
    env = {
        **worker,
        **credentials,  # short-lived and scoped to the scan's run, never the worker's own keys
        WARM_ENV: "1",
        JOB_SPEC_SHA256_ENV: spec_sha256,
        INPUT_ROOTS_ENV: config.input_root.uri(),
        OUTPUT_ROOTS_ENV: config.output_root.uri(),
    }
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in process.stdout or ():
            line = redact(line.rstrip("\n"))
            tail.append(line)
            log.info("%s", line)
        code = process.wait()
    finally:
        if process.poll() is None:  # the task was killed: do not leave the scan running
            process.terminate()
            process.wait(30)
    stopped = int(time.time() * 1000)
    reason = failure_class = None
    if code != 0:
        failure_class = {143: "cancelled", -15: "cancelled", 137: "out_of_memory", -9: "out_of_memory"}.get(code, "pipeline_error")
        reason = reason_of(list(tail), code)
    return JobRecord(
        job_id=f"local-{scan_id}-{started}",
        status=SUCCEEDED if code == 0 else FAILED,
        attempts=1,
        started_ms=started,
        stopped_ms=stopped,
        reason=reason,
        failure_class=failure_class,
        log_tail=list(tail),
    )
