"""Golden command lines and expected outputs per pipeline adapter."""

from __future__ import annotations

import pytest

from ndmg_cloud.bids import Scan
from ndmg_cloud.pipelines import OptionError, get_pipeline

SESSION_SCAN = Scan("sub-01_ses-retest", "01", "retest", {"subject": "01", "session": "retest"},
                    "sub-01/ses-retest/dwi/sub-01_ses-retest_dwi.nii.gz")
SESSIONLESS = Scan("sub-02", "02", None, {"subject": "02"}, "sub-02/dwi/sub-02_dwi.nii.gz")


def test_m2g_command_uses_track_type_and_explicit_parcellations():
    m2g = get_pipeline("m2g")
    options = m2g.resolve_options({"seeds": 10, "n_cpus": 2})
    assert m2g.command(SESSION_SCAN, options, "/in", "/out") == [
        "m2g", "--pipeline", "dwi", "--participant_label", "01", "--session_label", "retest",
        "--parcellation", "AAL", "Desikan", "--voxelsize", "2mm", "--mod", "det",
        "--track_type", "local", "--diffusion_model", "csa", "--space", "native",
        "--seeds", "10", "--n_cpus", "2", "/in", "/out",
    ]  # fmt: skip
    assert "--filtering_type" not in m2g.command(SESSION_SCAN, options, "/in", "/out")


def test_m2g_sessionless_runs_with_the_work_session():
    m2g = get_pipeline("m2g")
    cmd = m2g.command(SESSIONLESS, m2g.resolve_options({}), "/in", "/out")
    assert cmd[cmd.index("--session_label") + 1] == "1"
    assert m2g.expected_outputs(SESSIONLESS, m2g.resolve_options({"parcellation": ["Desikan"], "voxelsize": "1mm"})) == [
        "connectomes_d/Desikan_space-MNI152NLin6_res-1x1x1/sub-02_dwi_Desikan_space-MNI152NLin6_res-1x1x1_connectome.csv"
    ]


def test_legacy_ndmg_command():
    ndmg = get_pipeline("ndmg")
    options = ndmg.resolve_options({"parcellation": ["desikan"]})
    assert ndmg.command(SESSION_SCAN, options, "/in", "/out") == [
        "ndmg_bids", "--participant_label", "01", "--session_label", "retest", "--modality", "dwi",
        "--atlas", "desikan", "--mod", "det", "--tt", "local", "--mf", "csd", "--sp", "native",
        "/in", "/out", "participant",
    ]  # fmt: skip
    assert ndmg.expected_outputs(SESSION_SCAN, options) == [
        "dwi/roi-connectomes/desikan*/sub-01_ses-retest_dwi*_adj.ssv"
    ]


def test_lite_outputs_in_m2g_layout():
    lite = get_pipeline("lite")
    options = lite.resolve_options({"parcellation": ["grid3", "grid4"]})
    assert lite.expected_outputs(SESSION_SCAN, options) == [
        "connectomes_d/grid3/sub-01_ses-retest_dwi_grid3_connectome.csv",
        "connectomes_d/grid4/sub-01_ses-retest_dwi_grid4_connectome.csv",
    ]


@pytest.mark.parametrize(
    "pipeline, options, message",
    [
        ("lite", {"track_type": "local"}, "not supported by pipeline 'lite'"),
        ("lite", {"parcellation": ["Desikan"]}, "is not a grid parcellation"),
        ("m2g", {"parcellation": ["Desikan;rm -rf /"]}, "may only use letters, digits and '-'"),
        ("m2g", {"mod": "magic"}, "must be one of det, prob"),
        ("ndmg", {"seeds": 3}, "not supported by pipeline 'ndmg'"),
    ],
)
def test_options_are_validated_per_pipeline(pipeline, options, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(")):
        get_pipeline(pipeline).resolve_options(options)


def test_lite_atlas_is_fetched_and_named():
    lite = get_pipeline("lite")
    options = lite.resolve_options({"atlas": "s3://lab-atlases/native/my_atlas.nii.gz"})
    assert lite.extra_inputs(options) == {"atlas/my-atlas.nii.gz": "s3://lab-atlases/native/my_atlas.nii.gz"}
    cmd = lite.command(SESSION_SCAN, options, "/work/input", "/work/output")
    assert cmd[cmd.index("--atlas") + 1] == "/work/input/atlas/my-atlas.nii.gz"
    assert "connectomes_d/my-atlas/sub-01_ses-retest_dwi_my-atlas_connectome.csv" in lite.expected_outputs(SESSION_SCAN, options)
    with pytest.raises(OptionError, match="s3:// URI of a NIfTI"):
        lite.resolve_options({"atlas": "/tmp/x.nii.gz"})
    with pytest.raises(OptionError, match="not supported by pipeline 'm2g'"):
        get_pipeline("m2g").resolve_options({"atlas": "s3://b/x.nii.gz"})
