"""The Dockerfiles stay honest: linted by hadolint (and the build script by shellcheck),
wired to the runner's contract, and consistent with what the m2g base image holds (facts
from m2g's own Dockerfile) and with the code and atlases the tests check our commands against.

Images cannot be built here (no Docker daemon); the runner itself is tested as a process,
and the contract step of the Dockerfiles runs in tests/test_contract.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ndmg_cloud.core.atlases import catalogue
from ndmg_cloud.core.pipelines import get_pipeline

import pipeline_facts
from conftest import ROOT

DOCKERFILES = sorted((ROOT / "container").rglob("*Dockerfile*"))
BIN = Path(sys.executable).parent
M2G = (ROOT / "container" / "Dockerfile.m2g").read_text()
BASE_FACTS = json.loads((pipeline_facts.FACTS / "m2g-image.json").read_text())


def arg_default(text: str, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)", text, re.M).group(1)


def test_there_are_the_images_we_document():
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile.m2g", "Dockerfile.lite", "airflow.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT / "container").as_posix())
def test_hadolint_finds_nothing(dockerfile):
    done = subprocess.run([str(BIN / "hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", ["build-m2g.sh", "local/make-images.sh", "local/postgres-entrypoint.sh"])
def test_shellcheck_finds_nothing_in_the_build_scripts(script):
    done = subprocess.run([str(BIN / "shellcheck"), str(ROOT / "container" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["Dockerfile.m2g", "Dockerfile.lite"])
def test_scan_images_run_the_runner_and_carry_a_contract(name):
    text = (ROOT / "container" / name).read_text()
    assert "ENTRYPOINT []" in text  # Batch's command is ["ndmg-scan", "--spec", ...]
    assert re.search(r'CMD \["ndmg-scan"', text)
    assert "AWS_ACCESS_KEY" not in text and "AWS_SECRET" not in text
    assert "NDMG_IMAGE_CONTRACT=/opt/ndmg-cloud/image-contract.json" in text
    pipeline = name.split(".")[1]
    assert re.search(rf"ndmg-image-contract\"? --pipeline {pipeline}\b", text)
    # the scan image installs core + scan only (test_packages builds that wheel)
    assert "COPY container/scan-pyproject.toml ./pyproject.toml" in text


def test_lite_image_runs_as_a_plain_user():
    users = re.findall(r"^USER (\S+)", (ROOT / "container" / "Dockerfile.lite").read_text(), re.M)
    assert users and users[-1] not in ("root", "0")


def test_the_m2g_image_pins_the_code_the_tests_check_our_command_against():
    deploy = pipeline_facts.load(pipeline_facts.M2G_DEPLOY)["source"]
    assert deploy.startswith(f"neurodata/m2g@{arg_default(M2G, 'M2G_COMMIT')}:")
    assert arg_default(M2G, "NEUROPARC_COMMIT") == catalogue("m2g").commit
    # git verifies the commit it checked out, for the code and for the atlases
    assert M2G.count('test "$(git -C') == 2
    assert '--revision "${M2G_COMMIT}"' in M2G and '--atlas-source "${atlas_repo#https://github.com/}@${NEUROPARC_COMMIT}"' in M2G
    # from GitHub unless told otherwise; the contract names a GitHub repository as owner/name
    assert arg_default(M2G, "M2G_REPO") == "https://github.com/neurodata/m2g.git"
    assert arg_default(M2G, "NEUROPARC_REPO") == "https://github.com/neurodata/neuroparc.git"
    assert "atlas_repo=${NEUROPARC_REPO%.git}" in M2G


def test_the_m2g_image_uses_what_the_base_image_has():
    # m2g's Dockerfile: Python 3.7 with pip3.7, git, atlases in /m2g_atlases, ENTRYPOINT ["m2g"]
    assert "pip3.7" in BASE_FACTS["pip"] and "pip3.7 install --no-cache-dir --no-deps --no-build-isolation --force-reinstall" in M2G
    assert "git" in BASE_FACTS["apt_installs"] and "git clone" in M2G
    assert BASE_FACTS["atlas_dir"] == get_pipeline("m2g").atlas_dir
    assert f"--atlas-dir {BASE_FACTS['atlas_dir']}" in M2G and f"mv /tmp/neuroparc/atlases {BASE_FACTS['atlas_dir']}/atlases" in M2G
    assert BASE_FACTS["entrypoint"] == ["m2g"] and "ENTRYPOINT []" in M2G
    assert "--python 3.11" in M2G  # the runner gets its own Python; m2g keeps 3.7
    # the base's packages are checked against the pinned m2g's requirements before m2g's
    # setup.py (which imports them) runs, by the base's own Python 3.7
    assert "python3.7 (deadsnakes PPA)" in BASE_FACTS["apt_installs"]
    check = "python3.7 /opt/ndmg-cloud/check-m2g-requirements.py /opt/m2g-src"
    assert check in M2G and M2G.index(check) < M2G.index("pip3.7 install --no-cache-dir --no-deps")


@pytest.mark.parametrize(
    "base, ok",
    [
        ("neurodata/m2g@sha256:" + "ab" * 32, True),
        ("neurodata/m2g:latest", False),
        ("neurodata/m2g:0.3.0", False),
    ],
)
def test_the_m2g_build_refuses_a_base_not_pinned_by_digest(base, ok):
    guard = next(line for line in M2G.splitlines() if line.startswith('RUN case "${M2G_BASE}"'))
    done = subprocess.run(["bash", "-o", "pipefail", "-c", guard[len("RUN ") :]], env={"M2G_BASE": base}, capture_output=True, text=True)
    assert (done.returncode == 0) == ok
    if not ok:
        assert f"M2G_BASE={base} is not pinned by digest" in done.stderr and "build-m2g.sh" in done.stderr


FAKE_DOCKER = """#!/usr/bin/env bash
# records each call; answers `image inspect` with the digests in $DIGESTS
echo "$*" >> "$CALLS"
if [ "$1 $2" = "image inspect" ]; then printf '%b' "$DIGESTS"; fi
"""


@pytest.mark.parametrize(
    "digests, pinned",
    [
        ("someone/mirror@sha256:" + "1" * 64 + "\\nneurodata/m2g@sha256:" + "2" * 64 + "\\n", "neurodata/m2g@sha256:" + "2" * 64),
        ("", None),  # a local image without a registry digest
    ],
)
def test_the_build_script_pins_the_base_by_this_repositorys_digest(tmp_path, digests, pinned):
    """build-m2g.sh against a stand-in docker client (no daemon runs here): what it asks for."""
    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CALLS": str(calls), "DIGESTS": digests}
    done = subprocess.run(
        ["bash", str(ROOT / "container" / "build-m2g.sh"), "repo/ndmg-cloud-m2g:95d271f7"], capture_output=True, text=True, env=env
    )
    made = calls.read_text().splitlines()
    assert made[0] == "pull neurodata/m2g:latest"
    if pinned:
        assert done.returncode == 0, done.stderr
        build = next(c for c in made if c.startswith("build "))
        assert f"--build-arg M2G_BASE={pinned}" in build and "-f container/Dockerfile.m2g" in build
        assert made[-1] == "run --rm repo/ndmg-cloud-m2g:95d271f7 cat /opt/ndmg-cloud/image-contract.json"
    else:
        assert done.returncode == 1 and "no digest of neurodata/m2g" in done.stderr
        assert not any(c.startswith("build ") for c in made)
