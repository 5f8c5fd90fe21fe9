"""A run in flight across an upgrade from before the package split and before seals.

The code from before ``plugins/ndmg_cloud/`` was split into packages (git history, commit
``BEFORE_SPLIT``) runs a real Airflow (api-server, scheduler, dag-processor, triggerer) until
every scan waits in the triggerer: Airflow has then stored the old class paths, the trigger
table's ``ndmg_cloud.triggers.ScanJobTrigger`` and the release_scans XCom's
``ndmg_cloud.scanitems.ScanItems``. Every component is stopped, the same Airflow home is
started again on today's code and the jobs end: the old class paths still resolve (each scan
task succeeds in the new triggerer, none is submitted twice), but the run's documents were
written without seals (docs/security.md), so its last task uses nothing of them, fails and
says why; its lease is released all the same, and the next run skips both scans. The live
tier (``make test-live``).
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_crash import TIMERS, Parts

from ndmg_cloud.cli.airflowapi import Airflow

from conftest import ENDPOINT, LIVE_PASSWORD, ROOT, dag_ready, live_environment, wait_for
from datasets import put_dataset, scans_keys
from helpers import read_json, submissions
from images import Containers

pytestmark = pytest.mark.crash
BEFORE_SPLIT = "dfe0d194dd9eb0881ed3e23a78a8cb4a016a98d2"  # the last commit before the package split


def code_before_the_split(where: Path) -> Path:
    """plugins/ and dags/ as they were at BEFORE_SPLIT, from this checkout's history."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_SPLIT, "plugins", "dags"], capture_output=True)
    if done.returncode != 0:
        pytest.skip(
            f"this checkout lacks commit {BEFORE_SPLIT[:8]} (a shallow clone?): `git fetch --unshallow` to run the upgrade test "
            f"({done.stderr.decode().strip()})"
        )
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(where, filter="data")
    return where


def stored_class_paths(home: Path, run_id: str) -> tuple[set[str], str]:
    """The trigger classes in Airflow's trigger table, and release_scans' stored XCom."""
    with sqlite3.connect(home / "airflow.db") as db:
        classpaths = {row[0] for row in db.execute("SELECT classpath FROM trigger")}
        (value,) = db.execute("SELECT value FROM xcom WHERE run_id = ? AND task_id = 'release_scans'", (run_id,)).fetchone()
    return classpaths, value if isinstance(value, str) else json.dumps(value)


def test_a_run_started_before_the_split_ends_after_the_upgrade_and_the_next_run_skips_its_scans(
    moto_server, s3, batch_env, batch_behaviour, tmp_path_factory
):
    old = code_before_the_split(tmp_path_factory.mktemp("before-split"))
    home = tmp_path_factory.mktemp("upgrade")
    before = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(old / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(old / "plugins"),
        "PYTHONPATH": str(old / "plugins"),  # ahead of the editable install: `import ndmg_cloud` is the old code
    }
    env, url = live_environment(home, **TIMERS, **before)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)

    put_dataset(s3, "lab-data", "up/", keys=scans_keys(2, 1))
    batch_behaviour.on_submit = Containers(s3, None, ENDPOINT)  # each job leaves its outputs and manifest
    batch_behaviour.hold = True  # and runs until released
    parts = Parts(home, env, url)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        parts.start(name)
    try:
        assert wait_for(lambda: dag_ready(url), timeout=180), (home / "api-server.log").read_text()[-3000:]
        api = Airflow(url, "admin", LIVE_PASSWORD)
        run_id = api.trigger({"bucket": "lab-data", "bidsdir": "up", "canary": False})

        def waiting() -> int:
            return sum(
                ti["task_id"] == "run_scan" and ti["state"] == "deferred" and bool((ti.get("trigger") or {}).get("triggerer_id"))
                for ti in api.task_instances(run_id)
            )

        assert wait_for(lambda: waiting() == 2, timeout=300), api.task_instances(run_id)
        classpaths, released = stored_class_paths(home, run_id)
        assert classpaths == {"ndmg_cloud.triggers.ScanJobTrigger"}  # what the old code stored
        assert "ndmg_cloud.scanitems.ScanItems" in released
    finally:
        parts.stop_all()

    after = {k: v for k, v in env.items() if k not in before}
    after.update({"AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")})
    parts = Parts(home, after, url)
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        parts.start(name)
    try:
        assert wait_for(lambda: dag_ready(url), timeout=180), (home / "api-server.log").read_text()[-3000:]
        batch_behaviour.release()
        api = Airflow(url, "admin", LIVE_PASSWORD)
        assert wait_for(lambda: api.run(run_id)["state"] in ("success", "failed"), timeout=300), api.task_instances(run_id)
        tis = {ti["task_id"]: ti for ti in api.task_instances(run_id)}
        # its scans ended in the new triggerer (the old class paths resolve); its plan was
        # written before seals, so the new code uses nothing of it and says why
        scans = [ti for ti in api.task_instances(run_id) if ti["task_id"] == "run_scan"]
        assert {ti["state"] for ti in scans} == {"success"}, [(ti, api.task_log(run_id, ti)) for ti in scans if ti["state"] != "success"]
        assert api.run(run_id)["state"] == "failed" and tis["verify_and_report"]["state"] == "failed"
        log = json.dumps(api.task_log(run_id, tis["verify_and_report"]))
        assert "discover's XCom (the run's configuration and plan)" in log and "has no seal" in log
        # the lease was released (from the run's params, not its XCom): a new run goes at once,
        # and skips both scans, which the old run's jobs finished
        again = api.trigger({"bucket": "lab-data", "bidsdir": "up", "canary": False})
        assert wait_for(lambda: api.run(again)["state"] in ("success", "failed"), timeout=300), api.task_instances(again)
        assert api.run(again)["state"] == "success", api.task_instances(again)
        report = read_json(s3, api.xcom(again, "verify_and_report"))
    finally:
        parts.stop_all()

    assert {row["scan_id"]: row["status"] for row in report["scans"]} == {"sub-01_ses-1": "skipped_done", "sub-02_ses-1": "skipped_done"}
    assert submissions(batch_behaviour.submitted, run_id) == {"sub-01_ses-1": 1, "sub-02_ses-1": 1}  # never submitted again
    assert submissions(batch_behaviour.submitted, again) == {}
