"""The warm ndmg-lite of the local backend: the same outputs as a cold start, its program
stopped with the runner, a plain subprocess when no server can be had."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from test_runner import BUCKET, key_of, run_runner

from ndmg_cloud.scan import warm

from datasets import write_specs

WARM = {warm.WARM_ENV: "1"}


def connectome_of(s3, spec) -> bytes:
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=key_of(spec["manifest"]))["Body"].read())
    (csv,) = [o["path"] for o in manifest["outputs"] if o["path"].endswith("_connectome.csv")]
    return s3.get_object(Bucket=BUCKET, Key=key_of(spec["output_prefix"]) + csv)["Body"].read()


def test_a_warm_scan_writes_what_a_cold_scan_writes(s3, phantom_dirs):
    _, specs = write_specs(s3, phantom_dirs["plain"], parcellation=["grid3"])
    spec = specs["sub-01_ses-1"]
    cold = run_runner(spec["spec_uri"])
    assert cold.returncode == 0, cold.stderr
    assert "running: ndmg-lite" in cold.stdout + cold.stderr
    cold_graph = connectome_of(s3, spec)

    hot = run_runner(spec["spec_uri"], env_extra=WARM)
    assert hot.returncode == 0, hot.stderr
    assert "running (warm): ndmg-lite" in hot.stdout
    assert connectome_of(s3, spec) == cold_graph


def test_sigterm_to_the_runner_stops_its_warm_program(s3, phantom_dirs):
    _, specs = write_specs(s3, phantom_dirs["plain"], parcellation=["grid3"], seeds=400)  # a long scan
    proc = run_runner(specs["sub-01_ses-1"]["spec_uri"], wait=False, env_extra=WARM)
    for line in proc.stdout:  # the runner's own lines, then the program's
        if "running (warm)" in line:
            break
    else:
        pytest.fail("the warm pipeline never started: " + proc.stderr.read())
    time.sleep(1.0)
    children = warm_children()
    assert children, "no warm child is running"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated by SIGTERM" in err.strip().splitlines()[-1]
    time.sleep(0.5)
    for child in children:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key_of(specs["sub-01_ses-1"]["manifest"]))


def test_without_a_server_the_program_runs_as_a_subprocess(monkeypatch):
    monkeypatch.setattr(warm, "ensure_server", lambda: None)
    program = str(Path(sys.executable).parent / "ndmg-lite")
    process = warm.start_program([program, "--help"], {**os.environ, **WARM})
    assert not isinstance(process, warm.WarmProcess)
    assert "participant_label" in process.stdout.read()
    assert process.wait() == 0


def warm_children() -> list[int]:
    """Pids of the programs the warm server has forked (its children)."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"ndmg_cloud.scan.warm" in cmdline:
            parents[int(entry)] = ppid
    servers = {pid for pid, ppid in parents.items() if ppid not in parents}
    return [pid for pid, ppid in parents.items() if ppid in servers]


def test_the_warm_server_lives_in_a_private_folder_and_holds_no_credentials(monkeypatch, tmp_path):
    """Its socket sits in a folder only this user may enter (one open to others, or someone
    else's, is not used: plain subprocesses then); the server's own environment is the
    pipeline's, so a pipeline reading /proc/<its parent>/environ finds no AWS key."""
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"ndmg-warm-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert warm.ensure_server() is None
    shared.chmod(0o700)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "runner-secret-" + "x" * 20)
    path = warm.ensure_server()
    assert path and Path(path).parent == shared
    wanted = f"ndmg_cloud.scan.warm\0--socket\0{path}".encode()
    (pid,) = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and wanted in _cmdline(p)]
    try:
        assert b"runner-secret-" not in Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        os.kill(int(pid), signal.SIGTERM)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
