"""The m2g toolchain the canary looks for (``Pipeline.toolchain``) against m2g's own source at
the pinned commit (../shared/third_party): every program its shell commands start is listed,
or is one of the few it never reaches, and every listed program is one it starts."""

from __future__ import annotations

import re
import tarfile

import pytest

from ndmg_cloud.core.pipelines import get_pipeline

from m2g_sources import M2G_TARBALL, m2g_python_files, require_m2g_sources, third_party

# what m2g's source starts through a shell but the diffusion run never reaches, and why
NOT_REACHED = {
    "epi_reg": "reg_utils.align_epi, which nothing calls",
    "3dUnifize": "reg_utils.normalize_t1w, which nothing calls",
    "3dcalc": "reg_utils.apply_mask, called only by extract_t1w_brain, which nothing calls",
    "git": "m2g_bids clones neuroparc only when /m2g_atlases is missing (the image has it)",
}
# started otherwise than by a command string: check_dependencies' `which afni`
CHECKED = {"which", "afni"}
# the first word of a shell command: `cmd = f"prog ...`, `cmd = (\n f"prog ...`, `run(f"prog ...`
COMMAND = re.compile(r'(?:cmd\s*=\s*\(?\s*|run\()f?["\'](?:\. /venv/bin/activate && )?([A-Za-z0-9_]+) ')


@pytest.fixture(scope="module")
def m2g_source() -> dict[str, str]:
    """m2g's Python files (the diffusion pipeline: not functional/, not the cloud launcher)."""
    require_m2g_sources(python=False)
    return {
        name: text.decode()
        for name, text in m2g_python_files().items()
        if not name.startswith("m2g/functional/") and not name.endswith("m2g_cloud.py")
    }


def started(source: dict[str, str]) -> set[str]:
    return {program for text in source.values() for program in COMMAND.findall(text)}


def test_every_program_m2g_starts_is_looked_for_and_nothing_else(m2g_source):
    listed = set(get_pipeline("m2g").toolchain.programs)
    programs = started(m2g_source)
    assert {"fslmaths", "flirt", "eddy_correct", "3dSkullStrip"} <= programs  # the pattern finds them
    assert programs - listed == set(NOT_REACHED)
    assert listed - programs == CHECKED
    assert "subprocess.check_output('which afni'" in m2g_source["m2g/utils/gen_utils.py"]


def test_the_programs_left_out_are_in_functions_nothing_calls(m2g_source):
    everything = "\n".join(m2g_source.values())
    for function in ("align_epi", "normalize_t1w", "extract_t1w_brain"):
        calls = re.findall(rf"(?<!def ){function}\(", everything)
        assert calls == [], function
    # apply_mask is called once, from extract_t1w_brain
    assert len(re.findall(r"(?<!def )apply_mask\(", everything)) == 1


def test_the_files_and_variables_are_the_ones_m2g_reads(m2g_source):
    toolchain = get_pipeline("m2g").toolchain
    register = m2g_source["m2g/register.py"]
    for template in toolchain.files:
        if template.startswith("$FSLDIR/"):
            as_written = template.replace("$FSLDIR", "{FSLDIR}").replace("{voxelsize}", "{vox_size}")
            assert as_written in register or template.replace("$FSLDIR", "${FSLDIR}") in register, template
    assert 'os.environ["FSLDIR"]' in register
    assert ". /venv/bin/activate && eddy_correct" in m2g_source["m2g/preproc.py"]
    # m2g's own image sets FSLOUTPUTTYPE=NIFTI_GZ, and m2g loads FSL's outputs as .nii.gz
    with tarfile.open(third_party() / M2G_TARBALL) as archive:
        dockerfile = archive.extractfile("m2g-95d271f7/Dockerfile").read().decode()
    assert "FSLOUTPUTTYPE=NIFTI_GZ" in dockerfile
