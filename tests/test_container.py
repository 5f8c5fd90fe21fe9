"""The Dockerfiles stay honest: linted by hadolint, and wired to the runner's contract.

Images cannot be built here (no Docker daemon); the runner itself is tested as a process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOCKERFILES = sorted((ROOT / "container").glob("*Dockerfile*"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_there_are_the_images_we_document():
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile.m2g", "Dockerfile.lite", "airflow.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    done = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["Dockerfile.m2g", "Dockerfile.lite"])
def test_scan_images_run_the_runner_not_the_pipeline(name):
    text = (ROOT / "container" / name).read_text()
    assert "ENTRYPOINT []" in text  # Batch's command is ["ndmg-scan", "--spec", ...]
    assert re.search(r'CMD \["ndmg-scan"', text)
    assert "AWS_ACCESS_KEY" not in text and "AWS_SECRET" not in text


def test_lite_image_runs_as_a_plain_user():
    users = re.findall(r"^USER (\S+)", (ROOT / "container" / "Dockerfile.lite").read_text(), re.M)
    assert users and users[-1] not in ("root", "0")


def test_production_image_adds_python_311_to_the_m2g_image():
    text = (ROOT / "container" / "Dockerfile.m2g").read_text()
    assert re.search(r"^FROM neurodata/m2g:", text, re.M)
    assert "--python 3.11" in text
