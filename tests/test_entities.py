"""Entity parsing is pybids' own: identical results on every key, BIDS-like or not."""

from __future__ import annotations

from bids.layout import parse_file_entities
from hypothesis import given, settings
from hypothesis import strategies as st

from ndmg_cloud.core.entities import parse_entities

KEYS = [
    "sub",
    "ses",
    "acq",
    "run",
    "dir",
    "rec",
    "echo",
    "space",
    "desc",
    "task",
    "mt",
    "part",
    "hemi",
    "from",
    "to",
    "mode",
    "res",
    "atlas",
    "ce",
    "inv",
    "chunk",
    "label",
    "xfm",
]
DATATYPES = ["anat", "dwi", "func", "fmap", "perf", "junk"]
SUFFIXES = ["dwi", "T1w", "bold", "epi", "phasediff", "magnitude1", "scans", "xfm", "mask", ""]
EXTS = [".nii.gz", ".nii", ".bval", ".bvec", ".json", ".tsv", "", ".tar.gz", ".h5"]
label = st.text(alphabet="abcXYZ0129+-._ é/", min_size=0, max_size=6)
pair = st.builds(lambda k, v: f"{k}-{v}", st.sampled_from(KEYS), label)
filename = st.builds(
    lambda pairs, suffix, ext: "_".join(pairs + ([suffix] if suffix else [])) + ext,
    st.lists(pair, max_size=5),
    st.sampled_from(SUFFIXES),
    st.sampled_from(EXTS),
)
folder = st.one_of(pair, st.sampled_from(DATATYPES), label)
path = st.builds(
    lambda lead, dirs, name: lead + "/".join(dirs + [name]),
    st.sampled_from(["/", "", "//", "\\"]),
    st.lists(folder, max_size=4),
    filename,
)


@settings(max_examples=3000, deadline=None)
@given(path)
def test_identical_to_pybids_on_generated_keys(p):
    assert parse_entities(p) == parse_file_entities(p)


def test_identical_on_typical_dataset_keys():
    for p in [
        "/sub-01/ses-retest/dwi/sub-01_ses-retest_acq-NODDI10DIR_run-02_dwi.nii.gz",
        "/sub-01/dwi/sub-01_dwi.bvec",
        "/dwi.bval",
        "/sub-01/anat/sub-01_run-1_T1w.nii.gz",
        "/derivatives/ndmg/sub-01/ses-1/connectomes_d/AAL_space-MNI152NLin6_res-2x2x2/x.csv",
        "/sub-01/ses-1/fmap/sub-01_ses-1_phasediff.nii.gz",
        "/README",
    ]:
        assert parse_entities(p) == parse_file_entities(p)


def test_run_keeps_its_padding_like_pybids():
    entities = parse_entities("/sub-01/dwi/sub-01_run-02_dwi.nii.gz")
    assert entities["run"] == 2 and str(entities["run"]) == "02"
