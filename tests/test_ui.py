"""The Airflow UI in a real headless Chromium: trigger form, mapped scans, report.html."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_screenshots_show_the_form_the_scans_and_the_report(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ui_screenshots.py"), "--out", str(tmp_path), "--chromium", CHROMIUM],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name in ("trigger-form.png", "grid.png", "mapped-scans.png", "report.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, name
