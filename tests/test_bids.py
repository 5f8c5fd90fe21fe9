"""What a scan is: grouping keys, inheritance, T1w choice, invalid scans, filters."""

from __future__ import annotations

import pytest

from ndmg_cloud.core.bids import T1W_RULE, discover_scans, label_problem, normalise_labels, select

from datasets import E2E_INVALID, E2E_KEYS, E2E_VALID


def scans_of(keys, prefix=""):
    found = discover_scans([prefix + k for k in keys], prefix)
    return found, {s.scan_id: s for s in found.scans}


def test_e2e_dataset_gives_one_scan_per_dwi_series():
    found, scans = scans_of(E2E_KEYS, "data/ds/")
    assert sorted(s.scan_id for s in found.valid) == sorted(E2E_VALID)
    assert sorted(s.scan_id for s in found.invalid) == E2E_INVALID
    assert found.has_description and found.warnings == []
    assert found.keys_listed == len(E2E_KEYS)
    # only candidate keys are parsed: no sidecars, junk, derivatives or sourcedata
    candidates = [k for k in E2E_KEYS if k.endswith((".nii.gz", ".bval", ".bvec")) and not k.startswith(("derivatives/", "sourcedata/"))]
    assert found.keys_parsed == len(candidates) == 28


def test_sessionless_subject():
    _, scans = scans_of(E2E_KEYS)
    scan = scans["sub-02"]
    assert scan.session is None and scan.subject == "02"
    assert scan.dwi == "sub-02/dwi/sub-02_dwi.nii.gz"
    assert scan.t1w == "sub-02/anat/sub-02_T1w.nii.gz"


def test_non_numeric_session_labels_are_kept():
    _, scans = scans_of(E2E_KEYS)
    assert scans["sub-01_ses-retest"].session == "retest"
    assert scans["sub-01_ses-test"].session == "test"


def test_bval_bvec_inherited_from_subject_level():
    _, scans = scans_of(E2E_KEYS)
    assert scans["sub-02"].bval == "sub-02/sub-02_dwi.bval"
    assert scans["sub-02"].bvec == "sub-02/sub-02_dwi.bvec"


def test_nearest_gradient_file_wins_over_dataset_level():
    _, scans = scans_of(E2E_KEYS)
    # a dataset-level dwi.bval exists, but the file beside the image is nearer
    assert scans["sub-01_ses-test"].bval == "sub-01/ses-test/dwi/sub-01_ses-test_dwi.bval"


def test_dataset_level_inheritance_and_entity_matching():
    keys = [
        "dataset_description.json",
        "acq-b1000_dwi.bval",
        "acq-b1000_dwi.bvec",
        "acq-b3000_dwi.bval",
        "acq-b3000_dwi.bvec",
        "sub-1/anat/sub-1_T1w.nii.gz",
        "sub-1/dwi/sub-1_acq-b1000_dwi.nii.gz",
        "sub-1/dwi/sub-1_acq-b3000_dwi.nii.gz",
        "sub-1/dwi/sub-1_acq-b5000_dwi.nii.gz",
    ]
    _, scans = scans_of(keys)
    assert scans["sub-1_acq-b1000"].bval == "acq-b1000_dwi.bval"
    assert scans["sub-1_acq-b3000"].bvec == "acq-b3000_dwi.bvec"
    assert "no .bval file" in scans["sub-1_acq-b5000"].reason


def test_two_acquisitions_in_one_session_are_two_scans_sharing_the_t1w():
    _, scans = scans_of(E2E_KEYS)
    ap, pa = scans["sub-03_ses-1_acq-AP"], scans["sub-03_ses-1_acq-PA"]
    assert ap.entities["acquisition"] == "AP" and pa.entities["acquisition"] == "PA"
    assert ap.bval.endswith("acq-AP_dwi.bval") and pa.bval.endswith("acq-PA_dwi.bval")
    assert ap.t1w == pa.t1w == "sub-03/ses-1/anat/sub-03_ses-1_run-1_T1w.nii.gz"


def test_t1w_choice_is_deterministic_and_recorded():
    keys = [
        "sub-1/anat/sub-1_acq-mprage_T1w.nii.gz",
        "sub-1/anat/sub-1_run-2_T1w.nii.gz",
        "sub-1/anat/sub-1_T1w.nii.gz",
        "sub-1/dwi/sub-1_dwi.nii.gz",
        "sub-1/dwi/sub-1_dwi.bval",
        "sub-1/dwi/sub-1_dwi.bvec",
    ]
    for order in (keys, list(reversed(keys))):
        _, scans = scans_of(order)
        assert scans["sub-1"].t1w == "sub-1/anat/sub-1_T1w.nii.gz"
        assert T1W_RULE in scans["sub-1"].t1w_choice
        assert "3 T1w candidates" in scans["sub-1"].t1w_choice


def test_session_falls_back_to_subject_level_anatomy():
    keys = [
        "sub-1/anat/sub-1_T1w.nii.gz",
        "sub-1/ses-a/dwi/sub-1_ses-a_dwi.nii.gz",
        "sub-1/ses-a/dwi/sub-1_ses-a_dwi.bval",
        "sub-1/ses-a/dwi/sub-1_ses-a_dwi.bvec",
    ]
    _, scans = scans_of(keys)
    assert scans["sub-1_ses-a"].t1w == "sub-1/anat/sub-1_T1w.nii.gz"


def test_missing_pieces_make_the_scan_invalid_with_the_reason():
    keys = ["sub-1/dwi/sub-1_dwi.nii.gz", "sub-1/dwi/sub-1_dwi.bval"]
    _, scans = scans_of(keys)
    reason = scans["sub-1"].reason
    assert "no .bvec file for 'sub-1/dwi/sub-1_dwi.nii.gz'" in reason
    assert "no T1w image for sub-1" in reason
    assert not scans["sub-1"].valid


@pytest.mark.parametrize(
    "key, expected",
    [
        ("sub-0;1/dwi/sub-0;1_dwi.nii.gz", "label sub-'0;1'"),
        ("sub-01/ses-a b/dwi/sub-01_ses-a b_dwi.nii.gz", "label ses-'a b'"),
        ("sub-01/dwi/sub-01_acq-x.y_dwi.nii.gz", "label acq-'x.y'"),
        ("sub-01/dwi/sub-01_acq-ü_dwi.nii.gz", "label acq-'ü'"),
        ("sub-01/dwi/sub-02_dwi.nii.gz", "does not carry sub-01"),
        ("sub-01/ses-1/dwi/sub-01_dwi.nii.gz", "does not carry ses-1"),
        ("sub-01/dwi/sub-01_acq_dwi.nii.gz", "not a BIDS key-value pair"),
        ("sub-$(rm -rf ~)/dwi/sub-$(rm -rf ~)_dwi.nii.gz", "not alphanumeric"),
    ],
)
def test_unusable_labels_are_reported_never_parsed_around(key, expected):
    found, _ = scans_of([key, "sub-01/anat/sub-01_T1w.nii.gz"])
    (scan,) = found.scans
    assert not scan.valid
    assert expected in scan.reason


def test_clean_labels_have_no_problem():
    assert label_problem("sub-01/ses-retest/dwi/sub-01_ses-retest_acq-NODDI10DIR_dwi.nii.gz") is None


def test_same_scan_twice_is_invalid():
    keys = [
        "sub-1/dwi/sub-1_dwi.nii.gz",
        "sub-1/dwi/sub-1_dwi.nii",
        "sub-1/dwi/sub-1_dwi.bval",
        "sub-1/dwi/sub-1_dwi.bvec",
        "sub-1/anat/sub-1_T1w.nii.gz",
    ]
    found, _ = scans_of(keys)
    assert len(found.scans) == 1  # one row per scan id, invalid
    assert found.scans[0].reason == "two DWI images for scan sub-1: 'sub-1/dwi/sub-1_dwi.nii' and 'sub-1/dwi/sub-1_dwi.nii.gz'"


def test_keys_that_are_not_bids_paths_are_junk_named_in_a_warning_never_a_second_dwi():
    clean = ["sub-01/dwi/sub-01_dwi.nii.gz", "sub-01/dwi/sub-01_dwi.bval", "sub-01/dwi/sub-01_dwi.bvec", "sub-01/anat/sub-01_T1w.nii.gz"]
    junk = [
        "sub-01/dwi/./sub-01_dwi.nii.gz",
        "sub-01/dwi//sub-01_dwi.nii.gz",
        "sub-01/x/../dwi/sub-01_dwi.nii.gz",
        "sub-02/dwi/sub-02_ses-1_dwi.nii.gz",
    ]
    found, _ = scans_of(clean + junk)
    assert [(s.scan_id, s.reason) for s in found.scans] == [("sub-01", None)]
    [warning] = [w for w in found.warnings if "not BIDS paths" in w]
    assert warning.startswith("4 keys under sub-* are not BIDS paths and were ignored: ")
    assert "'sub-01/dwi/./sub-01_dwi.nii.gz' (an empty, '.' or '..' path segment)" in warning
    assert "'sub-02/dwi/sub-02_ses-1_dwi.nii.gz' (a session in the file name but no ses- folder)" in warning


def test_labels_that_differ_only_in_case_make_both_scans_invalid():
    keys = []
    for sub in ("A", "a", "b"):
        keys += [
            f"sub-{sub}/dwi/sub-{sub}_dwi.nii.gz",
            f"sub-{sub}/dwi/sub-{sub}_dwi.bval",
            f"sub-{sub}/dwi/sub-{sub}_dwi.bvec",
            f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz",
        ]
    found, _ = scans_of(keys)
    reasons = {s.scan_id: s.reason for s in found.scans}
    assert reasons["sub-b"] is None
    assert (
        reasons["sub-A"]
        == reasons["sub-a"]
        == "sub-A and sub-a differ only in case: they would collide on a case-insensitive file system; rename one"
    )


def test_derivatives_sourcedata_output_and_junk_are_ignored():
    keys = [
        "sub-1/dwi/sub-1_dwi.nii.gz",
        "sub-1/dwi/sub-1_dwi.bval",
        "sub-1/dwi/sub-1_dwi.bvec",
        "sub-1/anat/sub-1_T1w.nii.gz",
        "derivatives/x/sub-2/dwi/sub-2_dwi.nii.gz",
        "sourcedata/sub-3/dwi/sub-3_dwi.nii.gz",
        "derivatives/ndmg/sub-4/dwi/sub-4_dwi.nii.gz",
        "sub-1/dwi/notes.txt",
        "random/sub-5_dwi.nii.gz",
        "sub-1/dwi/sub-1_dwi.json",
    ]
    found = discover_scans(keys, "")
    assert [s.scan_id for s in found.scans] == ["sub-1"]


def test_missing_description_is_a_warning():
    found, _ = scans_of(["sub-1/dwi/sub-1_dwi.nii.gz"])
    assert found.has_description is False
    assert "no dataset_description.json" in found.warnings[0]


def test_keys_outside_the_prefix_are_not_scans():
    found = discover_scans(["other/sub-1/dwi/sub-1_dwi.nii.gz"], "ds/")
    assert found.scans == []


def test_filters():
    found, _ = scans_of(E2E_KEYS)
    chosen = select(found.scans, ["01", "03"], ["test", "1"])
    assert sorted(s.scan_id for s in chosen) == ["sub-01_ses-test", "sub-03_ses-1_acq-AP", "sub-03_ses-1_acq-PA"]
    assert normalise_labels(["sub-01", "02"], "sub") == ["01", "02"]
    with pytest.raises(ValueError, match="'0;1' is not a BIDS label"):
        normalise_labels(["0;1"], "sub")


def test_run_labels_compare_as_written():
    keys = ["sub-1/anat/sub-1_T1w.nii.gz"]
    for run in ("01", "1"):
        keys += [f"sub-1/dwi/sub-1_run-{run}_dwi.nii.gz", f"sub-1/dwi/sub-1_run-{run}_dwi.bval", f"sub-1/dwi/sub-1_run-{run}_dwi.bvec"]
    _, scans = scans_of(keys)
    assert scans["sub-1_run-01"].bval == "sub-1/dwi/sub-1_run-01_dwi.bval"
    assert scans["sub-1_run-1"].bval == "sub-1/dwi/sub-1_run-1_dwi.bval"
