"""``ndmg-scan --self-check`` as a process, in a laid-out m2g image (stand-in program with the
real parser, real NIfTI atlases, a built contract) against the local S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ndmg_cloud.core.atlases import catalogue
from ndmg_cloud.participant.discover import discover
from ndmg_cloud.participant.jobspec import build_spec
from ndmg_cloud.participant.params import resolve

import pipeline_facts as facts
from conftest import ENDPOINT
from datasets import put_dataset
from faults import FaultProxy, Rule
from images import write_lfs_pointer

BUCKET = "lab-data"
ACCESS_DENIED = (403, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")


@pytest.fixture
def m2g_spec(s3):
    put_dataset(s3, BUCKET, "ds/")
    config = resolve({"bucket": BUCKET, "bidsdir": "ds", "parcellation": ["Desikan", "Yeo-7"]}, "run-1")
    scan = next(s for s in discover(config, s3).valid if s.scan_id == "sub-01_ses-retest")
    spec = build_spec(config, scan)
    spec.write(s3)
    spec = spec.to_dict()  # as written
    return spec


def self_check(spec, image, *extra, endpoint=ENDPOINT, **env):
    command = [sys.executable, "-m", "ndmg_cloud.scan.runner", "--self-check", "--spec", spec["spec_uri"], *extra]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=image.env(AWS_ENDPOINT_URL=endpoint, NDMG_S3_MAX_ATTEMPTS="2", **env)
    )


def lines(done):
    return [line for line in done.stdout.splitlines() if line.startswith(("ok  ", "FAIL"))]


def test_a_good_image_passes_every_check_and_writes_its_findings(s3, m2g_spec, image):
    result_uri = f"s3://{BUCKET}/ds/derivatives/ndmg/reports/run-1/canary.json"
    done = self_check(m2g_spec, image, "--result", result_uri)

    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split()[1] for line in lines(done)] == ["contract", "command", "atlases", "tools", "writable", "disk", "s3", "s3"]
    assert all(line.startswith("ok") for line in lines(done))
    assert "m2g 95d271f7" in done.stdout
    assert "m2g accepts the scan's command" in done.stdout and "the program's own parser" in done.stdout
    assert "Desikan, Yeo-7 at 2mm: real NIfTI files, each selected alone" in done.stdout
    assert "13 programs on PATH; $FSLDIR, $FSLOUTPUTTYPE=NIFTI_GZ; its 5 files there; m2g's own dependency check passed" in done.stdout
    assert f"{image.toolchain_root}, {image.atlas_dir}/atlases/mask take new files" in done.stdout
    found = json.loads(s3.get_object(Bucket=BUCKET, Key=result_uri.split("/", 3)[3])["Body"].read())
    assert found["ok"] is True and found["scan_id"] == "sub-01_ses-retest"
    assert found["contract"]["code"]["revision"] == "95d271f748e7d35b8d7feaa1b0112f471be8e514"
    # the probe key is gone again: the output prefix holds nothing
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="ds/derivatives/ndmg/sub-01/ses-retest/")


def test_m2g_code_without_track_type_fails_the_command_check(s3, m2g_spec, image):
    facts.install_stand_in(facts.M2G_TAG, image.bin_dir)  # the image's m2g is the v0.3.0 tag's code
    done = self_check(m2g_spec, image)
    assert done.returncode == 1
    failed = [line for line in lines(done) if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].split()[1] == "command"
    assert "m2g: error: unrecognized arguments: --track_type" in failed[0]
    assert done.stderr.strip().splitlines()[-1].startswith("ndmg-scan: sub-01_ses-retest self-check failed: command: m2g refused")


def test_an_image_without_fsl_and_afni_fails_naming_the_missing_programs(s3, m2g_spec, tmp_path):
    from images import m2g_image

    image = m2g_image(tmp_path / "image", toolchain=False)  # m2g's code and atlases, no FSL or AFNI
    (tmp_path / "empty").mkdir()  # the image's `/`
    env = {k: v for k, v in image.env().items() if not k.startswith("FSL")}
    done = subprocess.run(
        [sys.executable, "-m", "ndmg_cloud.scan.runner", "--self-check", "--spec", m2g_spec["spec_uri"]],
        capture_output=True,
        text=True,
        timeout=300,
        # the image's programs and the system's basics only (this machine may have FSL itself)
        env={**env, "PATH": f"{image.bin_dir}:/usr/bin:/bin", "AWS_ENDPOINT_URL": ENDPOINT, "NDMG_TOOLCHAIN_ROOT": str(tmp_path / "empty")},
    )

    assert done.returncode != 0
    tools = next(line for line in lines(done) if line.split()[1] == "tools")
    assert tools.startswith("FAIL")
    assert "12 of its 13 programs are not on PATH: eddy_correct, fslmaths," in tools and "3dSkullStrip, afni" in tools
    assert "$FSLDIR unset; $FSLOUTPUTTYPE unset" in tools and "no /venv/bin/activate" in tools
    assert "its own dependency check failed: AssertionError: You do not have FSL installed!" in tools
    # the other checks still report: the image is otherwise right
    assert [line.split()[0] for line in lines(done) if line.split()[1] != "tools"] == ["ok"] * 7


def test_fsl_files_are_looked_for_where_fsldir_says_at_the_scans_voxel_size(s3, m2g_spec, image):
    """$FSLDIR set but its MNI152 brain at 2 mm missing, FSL writing NIfTI without gzip: m2g
    would load names that are not there."""
    (image.toolchain_root / "fsl/data/standard/MNI152_T1_2mm_brain.nii.gz").unlink()
    done = self_check(m2g_spec, image, FSLOUTPUTTYPE="NIFTI")

    tools = next(line for line in lines(done) if line.split()[1] == "tools")
    assert done.returncode != 0 and tools.startswith("FAIL")
    assert "$FSLOUTPUTTYPE is 'NIFTI', not 'NIFTI_GZ'" in tools
    assert f"no {image.toolchain_root}/fsl/data/standard/MNI152_T1_2mm_brain.nii.gz" in tools
    assert "programs are not on PATH" not in tools  # FSL's and AFNI's programs are all there


def test_afni_missing_fails_m2gs_own_dependency_check_too(s3, m2g_spec, image):
    (image.bin_dir / "afni").unlink()
    done = self_check(m2g_spec, image)

    tools = next(line for line in lines(done) if line.split()[1] == "tools")
    assert done.returncode == 1 and tools.startswith("FAIL")
    assert "1 of its 13 programs are not on PATH: afni" in tools
    assert "its own dependency check failed: AssertionError: You do not have AFNI installed!" in tools


def test_m2gs_own_check_runs_without_the_runners_credentials(s3, m2g_spec, image):
    """m2g's code gets the pipeline's environment there too: no AWS keys, its own HOME."""
    gen_utils = image.python_path / "m2g/utils/gen_utils.py"
    gen_utils.write_text(
        gen_utils.read_text()
        + "\n_checked = check_dependencies\n\ndef check_dependencies():\n"
        + "    seen = sorted(k for k in os.environ if k.startswith('AWS_') and 'KEY' in k)\n"
        + "    assert not seen, f'saw {seen}'\n"
        + "    assert os.environ['HOME'] != os.path.expanduser('~root'), 'the runner HOME'\n"
        + "    _checked()\n"
    )
    done = self_check(m2g_spec, image)  # the runner has AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY

    assert done.returncode == 0, done.stdout + done.stderr
    assert "m2g's own dependency check passed" in done.stdout


def test_neuroparcs_masks_at_the_scans_voxel_size_are_checked(s3, m2g_spec, image):
    """register.py reads the corpus callosum and lateral-ventricles masks besides the labels."""
    (image.atlas_dir / "atlases/mask/CorpusCallosum_res_2mm.nii.gz").unlink()
    done = self_check(m2g_spec, image)

    atlases = next(line for line in lines(done) if line.split()[1] == "atlases")
    assert done.returncode == 1 and atlases.startswith("FAIL")
    assert f"{image.atlas_dir}/atlases/mask/CorpusCallosum_res_2mm.nii.gz: missing" in atlases


def test_a_root_or_atlas_folder_m2g_cannot_write_into_fails_the_writable_check(s3, m2g_spec, image, tmp_path):
    """m2g saves a QA image at `/` and fslmaths overwrites neuroparc's masks in place."""
    not_a_folder = tmp_path / "root-file"
    not_a_folder.write_text("")
    done = self_check(m2g_spec, image, NDMG_TOOLCHAIN_ROOT=str(not_a_folder))

    writable = next(line for line in lines(done) if line.split()[1] == "writable")
    assert done.returncode == 1 and writable.startswith("FAIL")
    assert f"m2g writes into folders this image does not let it write: {not_a_folder}: Not a directory" in writable
    assert "atlases/mask" not in writable  # the atlas folder takes files


def test_an_lfs_pointer_atlas_fails_the_atlas_check(s3, m2g_spec, image):
    write_lfs_pointer(image.atlas_dir / "atlases/label/Human" / catalogue("m2g").get("Yeo-7", "2mm").file)
    done = self_check(m2g_spec, image)
    assert done.returncode == 1
    assert "FAIL atlases" in done.stdout and "Yeo-7_space-MNI152NLin6_res-2x2x2.nii.gz: a git-LFS pointer" in done.stdout


def test_an_atlas_the_image_does_not_have_fails_the_atlas_check(s3, image):
    put_dataset(s3, BUCKET, "ds/")
    config = resolve({"bucket": BUCKET, "bidsdir": "ds", "parcellation": ["Glasser"]}, "run-1")
    spec = build_spec(config, discover(config, s3).valid[0])
    spec.write(s3)
    spec = spec.to_dict()  # as written
    done = self_check(spec, image)
    assert done.returncode == 1
    assert "Glasser is not among the image's 7 atlases at 2mm" in done.stdout


def test_a_full_work_disk_fails_the_disk_check(s3, m2g_spec, image):
    done = self_check(m2g_spec, image, NDMG_WORK_DISK_GB="1000000")
    assert done.returncode == 1
    assert "FAIL disk" in done.stdout and "a m2g scan needs 1e+06 GB" in done.stdout
    assert "--root-volume-gb" in done.stdout


def test_a_job_role_that_cannot_write_fails_the_s3_check(s3, m2g_spec, image):
    proxy = FaultProxy(ENDPOINT, [Rule("PUT", ".ndmg-self-check-", times=-1, response=ACCESS_DENIED)])
    url = proxy.start()
    try:
        done = self_check(m2g_spec, image, endpoint=url)
    finally:
        proxy.stop()
    assert done.returncode == 1
    assert "FAIL s3 write" in done.stdout and "AccessDenied" in done.stdout
    assert "ok   s3 read" in done.stdout


def test_an_image_without_a_contract_is_refused(s3, m2g_spec, image):
    done = self_check(m2g_spec, image, NDMG_IMAGE_CONTRACT="")
    assert done.returncode == 1
    assert "FAIL contract  this image has no contract for m2g" in done.stdout
    assert "container/Dockerfile.m2g" in done.stdout


def test_a_lite_image_asked_to_run_m2g_is_refused(s3, m2g_spec, image, tmp_path):
    lite_contract = tmp_path / "lite-contract.json"
    subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ndmg-image-contract"), "--pipeline", "lite", "--out", str(lite_contract)],
        check=True,
        capture_output=True,
    )
    done = self_check(m2g_spec, image, NDMG_IMAGE_CONTRACT=str(lite_contract))
    assert done.returncode == 1
    assert "this image runs lite" in done.stdout and "point job_definition at a m2g image" in done.stdout


def test_a_pipeline_without_an_image_recipe_says_how_to_get_one(s3, image):
    put_dataset(s3, BUCKET, "ds/")
    config = resolve({"bucket": BUCKET, "bidsdir": "ds", "pipeline": "ndmg"}, "run-1")
    spec = build_spec(config, discover(config, s3).valid[0])
    spec.write(s3)
    spec = spec.to_dict()  # as written
    done = self_check(spec, image, NDMG_IMAGE_CONTRACT="")
    assert done.returncode == 1
    assert "this project has no image recipe for ndmg" in done.stdout
    assert "ndmg-image-contract --pipeline ndmg" in done.stdout and "canary=false" in done.stdout
