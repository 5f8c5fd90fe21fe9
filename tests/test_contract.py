"""The image contract: built at image build time by asking the program and the atlases, and
refused when the image could not run this project's scans (``ndmg-image-contract`` as a
process, against stand-ins with the real programs' parsers)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from ndmg_cloud.core.atlases import catalogue
from ndmg_cloud.core.pipelines import get_pipeline
from ndmg_cloud.scan.contract import ImageContract, flag_problems, local_contract, parse_help

import pipeline_facts as facts
from images import AFNI_VERSION, FSL_VERSION, Image, build_contract, m2g_image, make_atlas_dir, write_lfs_pointer


@pytest.mark.parametrize("code", [facts.M2G_DEPLOY, facts.M2G_TAG, facts.M2G_PYPI, facts.NDMG_PYPI])
def test_flags_are_read_back_from_the_programs_own_help(code):
    flags = parse_help(facts.parser_of(code).format_help())
    expected = {}
    for argument in facts.load(code)["arguments"]:
        nargs = 0 if argument.get("action") == "store_true" else argument.get("nargs", 1)
        for name in argument["names"]:
            if name.startswith("-"):
                expected[name] = nargs
    assert flags == {"-h": 0, "--help": 0, **expected}


def test_what_each_m2g_would_refuse_of_our_flags():
    needed = get_pipeline("m2g").flags
    problems = {
        code: flag_problems(parse_help(facts.parser_of(code).format_help()), needed)
        for code in (facts.M2G_DEPLOY, facts.M2G_POST_PAPER, facts.M2G_TAG, facts.M2G_PYPI)
    }
    assert problems[facts.M2G_DEPLOY] == [] and problems[facts.M2G_POST_PAPER] == []
    assert problems[facts.M2G_TAG] == ["--track_type is not accepted"]
    assert "--parcellation takes 1 value(s), the adapter passes several" in problems[facts.M2G_PYPI]
    assert {"--pipeline is not accepted", "--n_cpus is not accepted", "--track_type is not accepted"} <= set(problems[facts.M2G_PYPI])
    ndmg = parse_help(facts.parser_of(facts.NDMG_PYPI).format_help())
    assert flag_problems(ndmg, get_pipeline("ndmg").flags) == []


def test_the_build_writes_the_contract_of_the_pinned_m2g(tmp_path):
    image = m2g_image(tmp_path)
    contract = json.loads(image.contract.read_text())
    assert contract["pipeline"] == "m2g" and contract["program"] == "m2g"
    assert contract["code"] == {
        "name": "m2g",
        "version": "0.3.0",
        "revision": "95d271f748e7d35b8d7feaa1b0112f471be8e514",
        "source": "https://github.com/neurodata/m2g",
    }
    assert contract["flags"]["--track_type"] == 1 and contract["flags"]["--parcellation"] == "+"
    assert contract["atlases"] == {
        "2mm": ["AAL", "Desikan", "DesikanKlein", "HarvardOxfordsub-maxprob-thr25_label_all", "Schaefer400", "Yeo-7", "Yeo-7-liberal"]
    }
    assert contract["atlas_source"].startswith("neurodata/neuroparc@5a5e7469")
    assert contract["base_image"].startswith("neurodata/m2g@sha256:")
    assert len(contract["fingerprint"]) == 12 and contract["runner"]
    # what the code runs with: the program's Python and its packages, FSL's and AFNI's versions
    assert contract["python"]["version"] == platform.python_version()  # the stand-in m2g's interpreter
    assert contract["python"]["packages"]["nibabel"] == version("nibabel")
    assert contract["toolchain"] == {"FSL": FSL_VERSION, "AFNI": AFNI_VERSION}
    environment = ImageContract.from_dict(contract).summary().environment
    assert environment == (
        f"Python {platform.python_version()} (dipy {version('dipy')}, nibabel {version('nibabel')}, numpy {version('numpy')}, "
        f"pybids {version('pybids')}, networkx {version('networkx')}); AFNI {AFNI_VERSION}; FSL {FSL_VERSION}"
    )


def test_a_contract_without_fsl_and_afni_says_they_were_not_found(tmp_path):
    image = m2g_image(tmp_path, toolchain=False)
    contract = json.loads(image.contract.read_text())
    assert contract["toolchain"] == {"FSL": "not found ($FSLDIR unset)", "AFNI": "not found (afni is not on PATH)"}


@pytest.mark.parametrize("code", [facts.M2G_TAG, facts.M2G_PYPI])
def test_the_build_fails_on_m2g_code_that_refuses_our_command(tmp_path, code):
    image = Image(tmp_path / "bin", make_atlas_dir(tmp_path / "atlases"), tmp_path / "contract.json")
    facts.install_stand_in(code, image.bin_dir)
    built = build_contract(image)
    assert built.returncode == 1
    assert "ndmg-image-contract: this image cannot run m2g scans" in built.stderr
    assert "--track_type is not accepted" in built.stderr
    assert "m2g refused the command (exit 2)" in built.stderr and "unrecognized arguments" in built.stderr
    assert not image.contract.exists()


def test_the_build_fails_on_git_lfs_pointers_instead_of_atlases(tmp_path):
    image = Image(tmp_path / "bin", make_atlas_dir(tmp_path / "atlases"), tmp_path / "contract.json")
    facts.install_stand_in(facts.M2G_DEPLOY, image.bin_dir)
    for name in ("AAL", "Desikan"):
        write_lfs_pointer(image.atlas_dir / "atlases/label/Human" / catalogue("m2g").get(name, "2mm").file)
    built = build_contract(image)
    assert built.returncode == 1
    assert "2 atlas file(s) unusable" in built.stderr
    assert "AAL_space-MNI152NLin6_res-2x2x2.nii.gz: a git-LFS pointer, not a NIfTI image" in built.stderr


def test_the_build_fails_without_the_template_m2g_registers_to(tmp_path):
    image = Image(tmp_path / "bin", make_atlas_dir(tmp_path / "atlases"), tmp_path / "contract.json")
    facts.install_stand_in(facts.M2G_DEPLOY, image.bin_dir)
    (image.atlas_dir / "atlases/reference_brains/MNI152NLin6_res-2x2x2_T1w.nii.gz").unlink()
    built = build_contract(image)
    assert built.returncode == 1
    assert "atlases/reference_brains/MNI152NLin6_res-2x2x2_T1w.nii.gz: missing" in built.stderr


def test_the_lite_image_and_the_local_backend_name_the_same_code(tmp_path):
    out = tmp_path / "contract.json"
    command = [
        str(Path(sys.executable).parent / "ndmg-image-contract"),
        "--pipeline",
        "lite",
        "--base-image",
        "python:3.11-slim-bookworm",
        "--out",
        str(out),
    ]
    built = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert built.returncode == 0, built.stderr
    image = ImageContract.from_dict(json.loads(out.read_text()))
    local = local_contract("lite")
    assert image.code == local.code and image.flags == local.flags
    assert image.code["revision"].startswith("sha256:")
    assert image.fingerprint != local.fingerprint  # a different environment: the base image counts
    assert dataclasses.replace(image, base_image=None).fingerprint == local.fingerprint
    assert local_contract("m2g") is None  # m2g runs only in its image


def test_the_fingerprint_follows_what_results_depend_on_and_is_read_back_as_written():
    contract = local_contract("lite")
    assert dataclasses.replace(contract, code={**contract.code, "revision": "sha256:ffff"}).fingerprint != contract.fingerprint
    assert dataclasses.replace(contract, atlases={"2mm": ["AAL"]}).fingerprint != contract.fingerprint
    # a newer runner or a reworded --help make the same scans: no rerun of a whole dataset
    assert dataclasses.replace(contract, runner="9.9.9", flags={}).fingerprint == contract.fingerprint
    # read back (e.g. by an orchestrator of another version): the fingerprint written at build time
    written = {**contract.to_dict(), "fingerprint": "0123456789ab", "a_field_of_a_newer_version": 1}
    assert ImageContract.from_dict(written).fingerprint == "0123456789ab"
    assert contract.summary().label.startswith("ndmg-lite ")
    assert set(contract.summary().to_dict()) == {"fingerprint", "label", "pipeline", "code", "base_image", "atlas_source", "environment"}
    # what the code runs with is shown, not fingerprinted: the base image's digest pins it
    assert dataclasses.replace(contract, python={"version": "3.7.16"}, toolchain={"FSL": "6.0.7"}).fingerprint == contract.fingerprint


def test_the_parse_only_probe_never_runs_the_program(tmp_path):
    """A program that parses with parse_known_args and would then run is stopped after the
    parse; what it would have ignored counts as refused."""
    from ndmg_cloud.scan.contract import parse_only

    marker = tmp_path / "the-pipeline-ran"
    program = tmp_path / "bin" / "tolerant"
    program.parent.mkdir()
    program.write_text(
        f"#!{sys.executable}\n"
        "import argparse, pathlib\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--seeds')\n"
        "parser.add_argument('input_dir')\n"
        "args, rest = parser.parse_known_args()\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
    )
    program.chmod(0o755)
    os.environ["PATH"] = f"{program.parent}{os.pathsep}{os.environ['PATH']}"
    try:
        good = parse_only(["tolerant", "--seeds", "3", "/in"])
        assert good.ok and good.values == {"seeds": "3", "input_dir": "/in"}
        bad = parse_only(["tolerant", "--seeds", "3", "--track_type", "local", "/in"])
        assert not bad.ok and bad.error.startswith("tolerant would ignore: --track_type")
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]
    assert not marker.exists()


def test_the_probe_is_python_37_code_and_reads_37_help():
    """m2g's image runs Python 3.7: the probe's syntax and 3.7's help layout."""
    import ast

    from ndmg_cloud.scan.contract import _PARSE_ONLY

    ast.parse(_PARSE_ONLY, feature_version=(3, 7))
    help_37 = (  # argparse 3.7 writes nargs="*" as [X [X ...]] and "+" as X [X ...]
        "usage: m2g [-h] [--parcellation PARCELLATION [PARCELLATION ...]]\n\n"
        "optional arguments:\n"
        "  -h, --help            show this help message and exit\n"
        "  --participant_label PARTICIPANT_LABEL [PARTICIPANT_LABEL ...]\n"
        "                        The label(s) of the participant(s)\n"
        "  --extra [EXTRA [EXTRA ...]]\n"
        "  --maybe [MAYBE]       one or none\n"
        "  --skipeddy            Whether to skip eddy correction\n"
        "  --seeds SEEDS         Seeding density\n"
    )
    assert parse_help(help_37) == {
        "-h": 0,
        "--help": 0,
        "--participant_label": "+",
        "--extra": "*",
        "--maybe": "?",
        "--skipeddy": 0,
        "--seeds": 1,
    }
