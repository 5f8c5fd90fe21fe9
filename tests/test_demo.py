"""`make demo` (the README's first command) runs the whole DAG on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_scan_and_leaves_the_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ndmg-demo"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith("sub-")]
    assert len(table) == 9  # 4 subjects x 2 sessions + 1 session-less
    assert all(" succeeded " in line for line in table)
    assert any(line.startswith("sub-05 ") for line in table)  # the session-less subject
    assert "9 scans: 9 succeeded, 0 failed, 0 missing outputs, 0 invalid" in lines
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["succeeded"] == 9
    assert "<html" in (tmp_path / "out" / "report.html").read_text()
    assert f"report: {tmp_path / 'out' / 'report.html'}" in done.stdout
