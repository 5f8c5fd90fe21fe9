"""The lite pipeline on the synthetic phantoms: its graph connects what the bundles join."""

from __future__ import annotations

import numpy as np
import pytest

from ndmg_cloud import lite, synthetic


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    scans = synthetic.make_dataset(root, subjects=1, sessions=1, sessionless=0)
    return root, scans


def edges_of(path):
    return {(int(i), int(j)): int(w) for i, j, w in (line.split() for line in path.read_text().splitlines())}


def test_dataset_is_valid_small_bids(phantom_dataset):
    import nibabel as nib

    root, scans = phantom_dataset
    assert scans == ["sub-01_ses-1"]
    dwi = root / "sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz"
    img = nib.load(dwi)
    assert img.shape == synthetic.SHAPE + (1 + synthetic.DIRECTIONS,)
    bvals = np.loadtxt(root / "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval")
    assert bvals[0] == 0 and set(bvals[1:]) == {1000} and len(bvals) >= 31
    assert (root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz").exists()
    assert (root / "dataset_description.json").exists()
    size = sum(p.stat().st_size for p in (root / "sub-01").rglob("*") if p.is_file())
    assert size < 600 * 1024  # a few hundred KB per scan


@pytest.mark.parametrize("model", ["csa", "tensor"])
def test_connectome_joins_the_ends_of_each_bundle(phantom_dataset, tmp_path, model):
    root, _ = phantom_dataset
    written = lite.run(root, tmp_path, "01", "1", ["grid3"], model=model)
    csv = tmp_path / "sub-01/ses-1/connectomes_d/grid3/sub-01_ses-1_dwi_grid3_connectome.csv"
    assert csv in written
    assert (tmp_path / "sub-01/ses-1/qa_d/graphs_plotting/sub-01_ses-1_dwi_grid3_connectome.png") in written
    edges = edges_of(csv)

    # the grid regions holding each bundle's two ends, from the phantom's own geometry
    labels = lite.grid_labels(synthetic.masks()["brain"], 3)
    mid = lambda r: (r[0] + r[1]) // 2  # noqa: E731
    bx, by = synthetic.BUNDLE_X, synthetic.BUNDLE_Y
    x_ends = sorted({labels[bx["x"][0], mid(bx["y"]), mid(bx["z"])] - 1, labels[bx["x"][1] - 1, mid(bx["y"]), mid(bx["z"])] - 1})
    y_ends = sorted({labels[mid(by["x"]), by["y"][0], mid(by["z"])] - 1, labels[mid(by["x"]), by["y"][1] - 1, mid(by["z"])] - 1})
    centre = labels[mid(bx["x"]), mid(bx["y"]), mid(bx["z"])] - 1

    def joined(a, b):
        """Directly, or (tensor: one fibre per voxel stops at the crossing) via the centre."""
        direct = edges.get((a, b), 0)
        via = min(edges.get(tuple(sorted((a, centre))), 0), edges.get(tuple(sorted((centre, b))), 0))
        return max(direct, via)

    assert joined(*x_ends) > 0 and joined(*y_ends) > 0
    if model == "csa":  # the default: CSA resolves the crossing, each bundle is one strong edge
        top_two = sorted(edges, key=edges.get, reverse=True)[:2]
        assert sorted(top_two) == sorted([tuple(x_ends), tuple(y_ends)])


def test_grid_labels_cover_the_mask_only():
    mask = synthetic.masks()["brain"]
    labels = lite.grid_labels(mask, 3)
    assert labels[~mask].max() == 0
    assert set(np.unique(labels[mask])) <= set(range(1, 28))


def test_edge_list_is_m2g_format():
    matrix = np.array([[0, 2, 0], [2, 0, 5], [0, 5, 0]])
    assert lite.edge_list(matrix) == [(0, 1, 2), (1, 2, 5)]
