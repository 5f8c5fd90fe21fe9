"""The adapters' command lines against the real programs' parsers (facts from their source),
and the atlas catalogue against neuroparc's real file names and m2g's name matching."""

from __future__ import annotations

import itertools

import pytest

from ndmg_cloud.core.atlases import RESOLUTIONS, catalogue, selected_by
from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.pipelines import M2G_SKULL, OptionError, get_pipeline

import pipeline_facts as facts

SESSION_SCAN = Scan(
    "sub-01_ses-retest", "01", "retest", {"subject": "01", "session": "retest"}, "sub-01/ses-retest/dwi/sub-01_ses-retest_dwi.nii.gz"
)
SESSIONLESS = Scan("sub-02", "02", None, {"subject": "02"}, "sub-02/dwi/sub-02_dwi.nii.gz")
ACQ_SCAN = Scan(
    "sub-32_ses-1_acq-NODDI10DIR",
    "32",
    "1",
    {"subject": "32", "session": "1", "acquisition": "NODDI10DIR"},
    "sub-32/ses-1/dwi/sub-32_ses-1_acq-NODDI10DIR_dwi.nii.gz",
)
M2G_PARCELLATIONS = [None, ["Yeo-7", "Yeo-7-liberal", "HarvardOxfordsub-maxprob-thr25", "Schaefer1000"], ["DS16784"]]


def m2g_option_sets():
    m2g = get_pipeline("m2g")
    for parc, size, mod, track, model, space, skull, extra in itertools.product(
        M2G_PARCELLATIONS,
        RESOLUTIONS,
        ("det", "prob"),
        ("local", "particle"),
        ("csa", "csd"),
        ("native", "native_dsn"),
        (None, *M2G_SKULL),
        ({}, {"seeds": 7, "n_cpus": 2, "mem_gb": 30}),
    ):
        given = {
            "parcellation": parc,
            "voxelsize": size,
            "mod": mod,
            "track_type": track,
            "diffusion_model": model,
            "space": space,
            "skull": skull,
            **extra,
        }
        yield m2g.resolve_options(given)


def test_every_m2g_command_is_accepted_by_the_pinned_m2g_and_means_what_we_meant():
    m2g = get_pipeline("m2g")
    count = 0
    for options in m2g_option_sets():
        for scan in (SESSION_SCAN, SESSIONLESS, ACQ_SCAN):
            argv = m2g.command(scan, options, "/work/input", "/work/output")
            for code in (facts.M2G_DEPLOY, facts.M2G_POST_PAPER):
                parsed = facts.parse(code, argv)
                assert parsed.pipeline == "dwi"
                assert parsed.participant_label == [scan.subject]
                assert parsed.session_label == [scan.session or "1"]
                assert parsed.parcellation == [a.file for a in m2g.atlases(options)]
                assert (parsed.voxelsize, parsed.mod, parsed.track_type) == (options["voxelsize"], options["mod"], options["track_type"])
                assert (parsed.diffusion_model, parsed.space) == (options["diffusion_model"], options["space"])
                assert int(parsed.seeds) == options["seeds"] and parsed.skull == options.get("skull")
                assert (parsed.input_dir, parsed.output_dir) == ("/work/input", "/work/output")
                assert parsed.push_location is None  # m2g's own upload (public-read) stays off
            count += 1
    assert count == 3 * 3 * 3 * 2 * 2 * 2 * 2 * 5 * 2


@pytest.mark.parametrize("older", [facts.M2G_TAG, facts.M2G_PYPI])
def test_older_m2g_code_refuses_our_command_so_the_pin_matters(older, capsys):
    m2g = get_pipeline("m2g")
    argv = m2g.command(SESSION_SCAN, m2g.resolve_options({}), "/work/input", "/work/output")
    with pytest.raises(SystemExit) as refused:
        facts.parse(older, argv)
    assert refused.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert "--track_type" not in {n for a in facts.load(older)["arguments"] for n in a["names"]}


def test_a_list_of_atlases_is_a_set():
    m2g = get_pipeline("m2g")
    assert m2g.resolve_options({"parcellation": ["Desikan", "AAL", "Desikan"]}) == m2g.resolve_options({})
    assert m2g.resolve_options({})["parcellation"] is not m2g.resolve_options({})["parcellation"]  # no shared default


def test_m2g_outputs_are_named_as_m2g_names_them():
    # m2g: connectomes_d/<atlas file up to its first dot>/<dwi file up to its first dot>_<same>_connectome.csv
    m2g = get_pipeline("m2g")
    options = m2g.resolve_options({"parcellation": ["HarvardOxfordsub-maxprob-thr25_label_all"], "voxelsize": "1mm"})
    stem = "HarvardOxfordsub-maxprob-thr25_space-MNI152NLin6_label_all_res-1x1x1"
    assert m2g.expected_outputs(SESSIONLESS, options) == [f"connectomes_d/{stem}/sub-02_dwi_{stem}_connectome.csv"]
    default = m2g.resolve_options({})
    assert m2g.expected_outputs(SESSION_SCAN, default) == [
        "connectomes_d/AAL_space-MNI152NLin6_res-2x2x2/sub-01_ses-retest_dwi_AAL_space-MNI152NLin6_res-2x2x2_connectome.csv",
        "connectomes_d/Desikan_space-MNI152NLin6_res-2x2x2/sub-01_ses-retest_dwi_Desikan_space-MNI152NLin6_res-2x2x2_connectome.csv",
    ]


def test_catalogue_holds_every_neuroparc_label_file_and_each_name_selects_exactly_one():
    m2g = catalogue("m2g")
    paths = [f"/m2g_atlases/atlases/label/Human/{name}" for name in m2g.files]
    assert len(m2g.files) == 141 and len(m2g.names()) == 47
    for size in RESOLUTIONS:
        assert len(m2g.names(size)) == 47
        for name in m2g.names(size):
            atlas = m2g.get(name, size)
            assert selected_by([atlas.argument], paths, size) == [f"/m2g_atlases/atlases/label/Human/{atlas.file}"], name
    # why whole file names: m2g keeps every file whose path CONTAINS a requested string
    assert len(selected_by(["Desikan"], paths, "2mm")) == 2  # Desikan and DesikanKlein
    assert len(selected_by(["Yeo-7"], paths, "2mm")) == 2  # Yeo-7 and Yeo-7-liberal
    assert len(selected_by(["HarvardOxfordsub-maxprob-thr25_space-"], paths, "2mm")) == 2
    assert not [n for n in m2g.names() if n.startswith("Schaefer2018")]


def test_the_default_run_builds_exactly_the_two_default_connectomes():
    m2g = get_pipeline("m2g")
    argv = m2g.command(SESSION_SCAN, m2g.resolve_options({}), "/in", "/out")
    parsed = facts.parse(facts.M2G_DEPLOY, argv)
    paths = [f"/m2g_atlases/atlases/label/Human/{name}" for name in catalogue("m2g").files]
    chosen = selected_by(parsed.parcellation, paths, parsed.voxelsize)
    assert [p.rsplit("/", 1)[1] for p in chosen] == [
        "AAL_space-MNI152NLin6_res-2x2x2.nii.gz",
        "Desikan_space-MNI152NLin6_res-2x2x2.nii.gz",
    ]


@pytest.mark.parametrize(
    "asked, closest",
    [
        ("Schaefer2018-200", "Schaefer200"),
        ("Schaefer2018-400", "Schaefer400"),
        ("desikan", "Desikan"),
        ("AAL2", "AAL"),
    ],
)
def test_unknown_atlas_names_are_refused_with_the_closest_real_ones(asked, closest):
    with pytest.raises(OptionError) as refused:
        get_pipeline("m2g").resolve_options({"parcellation": ["AAL", asked]})
    message = str(refused.value)
    assert f"{asked!r} is not an atlas of m2g's image" in message
    assert closest in message.split("closest:")[1]
    assert "ndmg_cloud atlases" in message


@pytest.mark.parametrize("voxelsize", list(RESOLUTIONS))
def test_an_atlas_whose_labels_m2g_cannot_keep_is_refused_with_the_reason(voxelsize):
    """m2g's graph.py keeps labels as 16-bit integers: DS72784's labels (up to 72,778) would
    wrap around and its connectome would silently lose regions."""
    with pytest.raises(OptionError) as refused:
        get_pipeline("m2g").resolve_options({"parcellation": ["AAL", "DS72784"], "voxelsize": voxelsize})
    message = str(refused.value)
    assert "'DS72784' has labels up to 72,778" in message
    assert "m2g keeps labels only up to 32,767 (its graph.py stores labels as 16-bit integers)" in message
    assert "ndmg_cloud atlases --pipeline m2g" in message
    # the largest atlas m2g can keep, and an atlas without that limit in another pipeline
    assert get_pipeline("m2g").resolve_options({"parcellation": ["DS16784"], "voxelsize": voxelsize})["parcellation"] == ["DS16784"]
    assert catalogue("m2g").unusable("DS16784", 32767, "") is None


def test_legacy_ndmg_command_is_the_released_ndmg_bids():
    ndmg = get_pipeline("ndmg")
    for size, mod, track, model, space in itertools.product(
        ("1mm", "2mm"), ("det", "prob"), ("local", "particle"), ("csd", "csa"), ("native", "native_dsn")
    ):
        options = ndmg.resolve_options({"voxelsize": size, "mod": mod, "track_type": track, "diffusion_model": model, "space": space})
        for scan in (SESSION_SCAN, SESSIONLESS):
            parsed = facts.parse(facts.NDMG_PYPI, ndmg.command(scan, options, "/work/input", "/work/output"))
            assert parsed.atlas == f"desikan_space-MNI152NLin6_res-{RESOLUTIONS[size]}.nii.gz"
            assert (parsed.vox, parsed.mod, parsed.tt, parsed.mf, parsed.sp) == (size, mod, track, model, space)
            assert (parsed.bids_dir, parsed.output_dir) == ("/work/input", "/work/output")
            assert not parsed.push_data and parsed.bucket is None  # ndmg's own upload stays off
    # the pre-2019-08-12 command line is refused by the released ndmg
    with pytest.raises(SystemExit):
        facts.parse(facts.NDMG_PYPI, ["ndmg_bids", "--modality", "dwi", "/in", "/out", "participant"])


def test_legacy_ndmg_writes_at_the_output_root_one_atlas_per_job():
    ndmg = get_pipeline("ndmg")
    options = ndmg.resolve_options({"parcellation": ["aal"]})
    stem = "aal_space-MNI152NLin6_res-2x2x2"
    assert ndmg.expected_outputs(SESSION_SCAN, options) == [
        f"dwi/roi-connectomes/{stem}/sub-01_ses-retest_dwi_{stem}_measure-spatial-ds_adj.ssv"
    ]
    ndmg_files = catalogue("ndmg").files
    paths = [f"/ndmg_atlases/atlases/label/Human/{f}" for f in ndmg_files]
    for size in ("1mm", "2mm"):
        for name in catalogue("ndmg").names(size):
            atlas = catalogue("ndmg").get(name, size)
            assert len(selected_by([atlas.argument], paths, size)) == 1, name
    with pytest.raises(OptionError, match="takes 1 atlas name"):
        ndmg.resolve_options({"parcellation": ["aal", "desikan"]})
    with pytest.raises(OptionError, match="closest: desikan"):
        ndmg.resolve_options({"parcellation": ["Desikan"]})
    with pytest.raises(OptionError, match="must be one of 1mm, 2mm"):
        ndmg.resolve_options({"voxelsize": "4mm"})


def test_an_atlas_without_the_asked_voxel_size_is_refused():
    # the 2019 neuroparc (legacy ndmg) has some atlases at 1 mm only
    ndmg = catalogue("ndmg")
    only_1mm = sorted(set(ndmg.names("1mm")) - set(ndmg.names("2mm")))
    assert only_1mm
    with pytest.raises(OptionError, match="has no 2mm version; it comes in 1mm"):
        get_pipeline("ndmg").resolve_options({"parcellation": [only_1mm[0]], "voxelsize": "2mm"})


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
        ("m2g", {"parcellation": ["Desikan;rm -rf /"]}, "may only use letters, digits, '_' and '-'"),
        ("m2g", {"mod": "magic"}, "must be one of det, prob"),
        ("m2g", {"skull": "cerebellum"}, "must be one of below, cerebelum, eye, general"),
        ("ndmg", {"n_cpus": 3}, "not supported by pipeline 'ndmg'"),
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
