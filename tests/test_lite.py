"""The lite pipeline on the synthetic phantoms: its graph connects what each subject's
bundles join, in world coordinates, on a parcellation that means the same place in every
subject, written as m2g writes its graphs; a bad gradient table fails the scan."""

from __future__ import annotations

import numpy as np
import pytest

from ndmg_cloud.demo import synthetic
from ndmg_cloud.report.figures import parse_connectome
from ndmg_cloud.scan import lite

GRID3 = "connectomes_d/grid3/{}_dwi_grid3_connectome.csv"


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    scans = synthetic.make_dataset(root, subjects=1, sessions=1, sessionless=0)
    return root, scans


def edges_of(path):
    return {(int(i), int(j)): float(w) for i, j, w in (line.split() for line in path.read_text().splitlines())}


def bundle_edges(subject: int, session: int, n: int = 3) -> list[tuple[int, int]]:
    """The grid regions just past each end of the subject's bundles (the two long ones
    first), from the phantom's own geometry and the session's head motion: the edges its
    connectome must have."""
    shape, affine = synthetic.grid_for()
    labels = lite.grid_labels(affine, shape, n)
    inverse = np.linalg.inv(affine)
    motion = synthetic.session_motion(subject, session)
    pairs = []
    for bundle in synthetic.geometry(subject).bundles:
        ends = [labels[tuple(np.rint(inverse[:3, :3] @ w + inverse[:3, 3]).astype(int))] for w in bundle.ends_in_world(motion)]
        if ends[0] != ends[1]:
            pairs.append(tuple(sorted(int(e) for e in ends)))
    return pairs


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


def test_subjects_differ_and_sessions_of_a_subject_are_alike():
    geometries = [synthetic.geometry(s) for s in range(1, 6)]
    assert len({g for g in geometries}) == 5  # every subject its own bundles
    assert synthetic.geometry(3) == synthetic.geometry(3)  # whatever the session
    motions = [synthetic.session_motion(1, t) for t in (1, 2)]
    assert motions[0] != motions[1]
    for m in motions:
        assert max(abs(v) for v in m.shift) <= synthetic.MAX_SHIFT_MM and abs(m.turn_deg) <= synthetic.MAX_TURN_DEG
    scans = {(sub, ses): synthetic.simulate(sub, ses) for sub in (1, 2, 3) for ses in (1, 2)}
    bundles = {key: p.t1w > 800 for key, p in scans.items()}  # the bundles are bright in the T1w

    def overlap(a, b):
        return np.count_nonzero(bundles[a] & bundles[b]) / np.count_nonzero(bundles[a] | bundles[b])

    same = [overlap((sub, 1), (sub, 2)) for sub in (1, 2, 3)]
    other = [overlap((a, ses), (b, ses)) for a, b in ((1, 2), (1, 3), (2, 3)) for ses in (1, 2)]
    assert min(same) > max(other)  # moved a little between sessions, still its own bundles
    assert not np.array_equal(scans[1, 1].dwi[..., 0], scans[1, 2].dwi[..., 0])  # its own noise


@pytest.mark.parametrize("model", ["csa", "tensor"])
def test_connectome_joins_the_ends_of_each_bundle(phantom_dataset, tmp_path, model):
    root, _ = phantom_dataset
    written = lite.run(root, tmp_path, "01", "1", ["grid3"], model=model)
    csv = tmp_path / "sub-01/ses-1" / GRID3.format("sub-01_ses-1")
    assert csv in written
    assert (tmp_path / "sub-01/ses-1/qa_d/graphs_plotting/sub-01_ses-1_dwi_grid3_connectome.png") in written
    edges = edges_of(csv)
    expected = set(bundle_edges(1, 1))
    assert len(expected) == 3
    assert expected <= set(edges)
    if model == "csa":  # CSA resolves the crossings: the bundles are the strongest edges
        assert set(sorted(edges, key=edges.get, reverse=True)[:3]) == expected


def test_output_is_m2g_format_and_read_by_the_m2g_reader(phantom_dataset, tmp_path):
    root, _ = phantom_dataset
    lite.run(root, tmp_path, "01", "1", ["grid3"])
    text = (tmp_path / "sub-01/ses-1" / GRID3.format("sub-01_ses-1")).read_text()
    rows = [line.split() for line in text.splitlines()]
    assert all(len(r) == 3 and r[2].endswith(".0") for r in rows)  # networkx writes m2g's floats
    pairs = [(int(i), int(j)) for i, j, _ in rows]
    assert pairs == sorted(pairs) and all(0 < i < j <= 27 for i, j in pairs)  # node 0: background
    graph = parse_connectome(text.encode(), first_node=1)  # the reader the report uses for m2g
    stats = graph.stats()
    assert stats["first_node"] == 1 and stats["edges"] == len(rows) and stats["self_loops"] == 0


def test_edge_lines_follow_networkx_write_weighted_edgelist(tmp_path):
    import networkx as nx

    counts = np.array([[0, 0, 0, 0], [0, 0, 2, 1], [0, 2, 0, 5], [0, 1, 5, 0]], dtype=np.int64)  # what lite counts
    m2g = counts.astype(float)  # m2g's matrix is float (np.add of networkx arrays)
    nx.write_weighted_edgelist(nx.from_numpy_array(m2g), tmp_path / "m2g.csv")
    assert lite.edge_lines(counts) == (tmp_path / "m2g.csv").read_text() == "1 2 2.0\n1 3 1.0\n2 3 5.0\n"


def test_m2g_edge_rule_joins_every_pair_a_streamline_passes_through():
    labels = np.zeros((6, 1, 1), np.int64)
    labels[0], labels[2], labels[4], labels[5] = 1, 7, 3, 3
    nodes = np.array([0, 1, 3, 7])  # ranks: label 1 -> node 1, 3 -> 2, 7 -> 3
    through_all = np.array([[0.0, 0, 0], [2, 0, 0], [4, 0, 0], [5, 0, 0]])
    two_ends = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]])
    matrix = lite.connectome([through_all, two_ends], np.eye(4), labels, nodes)
    assert matrix[0].sum() == 0  # background
    assert (matrix[1, 3], matrix[1, 2], matrix[2, 3]) == (2, 1, 1)  # 1-7 twice, 1-3 and 3-7 once
    assert np.trace(matrix) == 0  # no self-loops, however often a label is passed


def test_grid_labels_mean_the_same_world_place_in_every_image():
    iso_shape, iso = synthetic.grid_for((2.0, 2.0, 2.0))
    aniso_shape, aniso = synthetic.grid_for((2.0, 3.0, 2.5))
    a, b = lite.grid_labels(iso, iso_shape, 3), lite.grid_labels(aniso, aniso_shape, 3)
    assert set(np.unique(a)) == set(np.unique(b)) == set(range(1, 28))
    for world in ([-20.0, -20.0, -8.0], [0.0, 0.0, 0.0], [15.0, -3.0, 6.0], [21.0, 21.0, 8.0]):
        va = np.rint(np.linalg.inv(iso)[:3, :3] @ world + np.linalg.inv(iso)[:3, 3]).astype(int)
        vb = np.rint(np.linalg.inv(aniso)[:3, :3] @ world + np.linalg.inv(aniso)[:3, 3]).astype(int)
        assert a[tuple(va)] == b[tuple(vb)]
    assert a[0, 0, 0] == 1 and a[-1, -1, -1] == 27 and a[-1, 0, 0] == 1 + 2 * 9


def test_an_anisotropic_phantom_tracks_the_same_bundles(tmp_path):
    iso, aniso = tmp_path / "iso", tmp_path / "aniso"
    synthetic.make_dataset(iso, subjects=1, sessions=1, sessionless=0)
    synthetic.make_dataset(aniso, subjects=1, sessions=1, sessionless=0, voxel_mm=(1.6, 2.4, 2.0))
    graphs = {}
    for root in (iso, aniso):
        lite.run(root, root / "out", "01", "1", ["grid3"])
        graphs[root.name] = edges_of(root / "out/sub-01/ses-1" / GRID3.format("sub-01_ses-1"))
    along_x, along_y, third = bundle_edges(1, 1)
    for name, edges in graphs.items():
        assert set(sorted(edges, key=edges.get, reverse=True)[:2]) == {along_x, along_y}, name
        assert edges.get(third, 0) > 0, name  # the short bundle too


def test_short_streamlines_are_dropped(phantom_dataset, tmp_path, caplog):
    root, _ = phantom_dataset
    with caplog.at_level("INFO", logger="ndmg-lite"):
        lite.run(root, tmp_path, "01", "1", ["grid3"], min_length=60.0)  # longer than any bundle
    assert (tmp_path / "sub-01/ses-1" / GRID3.format("sub-01_ses-1")).read_text() == ""
    assert "0 streamlines of 60 mm or more" in caplog.text


@pytest.mark.parametrize(
    "bval, bvec, says",
    [
        ("0 1000 1000", None, "33 volumes but 3 b-values"),
        ("1000 " * 33, None, "no b0 volume"),
        (None, "scale", "b-vector of volume 1 has length 2.000, not 1"),
        ("-5 " + "1000 " * 32, None, "b-value -5 of volume 0 is negative"),
        (None, "flat", "the 32 gradient directions lie in one plane"),
    ],
)
def test_a_bad_gradient_table_fails_the_scan_with_the_reason(phantom_dataset, tmp_path, capsys, bval, bvec, says):
    import shutil

    root, _ = phantom_dataset
    copy = tmp_path / "in"
    shutil.copytree(root, copy)
    dwi = copy / "sub-01/ses-1/dwi"
    if bval is not None:
        (dwi / "sub-01_ses-1_dwi.bval").write_text(bval + "\n")
    if bvec is not None:
        vectors = np.loadtxt(dwi / "sub-01_ses-1_dwi.bvec")
        vectors = vectors * 2 if bvec == "scale" else np.vstack([vectors[:2], np.zeros_like(vectors[2])])
        if bvec == "flat":
            vectors[:, 1:] /= np.linalg.norm(vectors[:, 1:], axis=0)
        np.savetxt(dwi / "sub-01_ses-1_dwi.bvec", vectors, fmt="%.6f")
    code = lite.main(["--participant_label", "01", "--session_label", "1", str(copy), str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("ndmg-lite: sub-01_ses-1_dwi.nii.gz") and says in err
    assert not (tmp_path / "out").exists()  # nothing written for a refused scan


def test_a_bad_parcellation_name_fails_before_tracking(phantom_dataset, tmp_path, monkeypatch):
    root, _ = phantom_dataset
    monkeypatch.setattr(lite, "track", lambda *a, **k: pytest.fail("tracked before refusing the name"))
    with pytest.raises(lite.LiteError, match="'Desikan' is not gridN"):
        lite.run(root, tmp_path, "01", "1", ["grid3", "Desikan"])
    with pytest.raises(lite.LiteError, match="'grid40' is not gridN \\(N from 1 to 12\\)"):
        lite.run(root, tmp_path, "01", "1", ["grid40"])


def test_b_vectors_written_to_few_decimals_are_accepted_as_unit(phantom_dataset, tmp_path):
    import shutil

    root, _ = phantom_dataset
    copy = tmp_path / "in"
    shutil.copytree(root, copy)
    bvec = copy / "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bvec"
    np.savetxt(bvec, np.loadtxt(bvec) * 0.95, fmt="%.3f")  # within lite's 0.1, outside DIPY's 0.01
    lite.run(copy, tmp_path / "out", "01", "1", ["grid3"])
    edges = edges_of(tmp_path / "out/sub-01/ses-1" / GRID3.format("sub-01_ses-1"))
    assert set(bundle_edges(1, 1)) <= set(edges)
