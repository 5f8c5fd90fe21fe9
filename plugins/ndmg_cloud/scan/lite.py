"""``lite``: a small, real connectome pipeline on DIPY + nibabel (no FSL, no registration).

Not ndmg: for demos, tests and cheap smoke runs of an AWS setup. For one DWI series:

1. the gradient table is checked (one b-value and one unit b-vector per volume, a b0,
   at least 6 directions that span 3D); a bad one fails the scan with the reason;
2. the image is resliced to isotropic voxels when its voxels are not (nearest smallest side);
3. brain mask (median Otsu) -> tensor or CSA model -> peaks -> deterministic tracking in
   WORLD coordinates (millimetres, through the image's affine), streamlines shorter than
   ``--min_length`` mm dropped;
4. connectivity over parcellations that mean the same place in every subject:

   * ``gridN``: the fixed world-space box ``GRID_BOX_MM`` (the synthetic phantoms' field of
     view, centred on world (0, 0, 0)) cut into N x N x N blocks; block (a, b, c) is label
     ``1 + a*N*N + b*N + c``. A region is the block's non-white-matter brain voxels (FA below
     the tracking threshold): white matter is where streamlines run, not a node. It suits
     data whose world origin is the brain's centre (the phantoms); for real data use
     ``--atlas``;
   * ``--atlas``: a label image already in the data's world space (resampled to the DWI
     grid by nearest neighbour);

5. edges exactly as m2g writes them (m2g ``graph.py`` ``make_graph``): node index = the
   rank of the label among ``np.unique(atlas)`` INCLUDING 0, so node 0 is the background
   and has no edges (for ``gridN`` the rank is the label itself); every pair of labels a
   streamline passes through is an edge, weight = the number of such streamlines; written
   as networkx ``write_weighted_edgelist`` writes m2g's float graph (``i j 3.0``, i < j,
   rows in order), at m2g layout paths, plus a QA heatmap:

    <out>/sub-S/ses-T/connectomes_d/<parc>/<dwi stem>_<parc>_connectome.csv
    <out>/sub-S/ses-T/qa_d/graphs_plotting/<dwi stem>_<parc>_connectome.png

    ndmg-lite --participant_label S --session_label T [--parcellation grid3 ...]
              [--diffusion_model csa|tensor] [--seeds 1] [--min_length 10]
              [--atlas LABELS.nii.gz] INPUT_DIR OUTPUT_DIR
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ndmg-lite")
FA_STOP = 0.15  # tracking stops where anisotropy drops below this (grey matter, CSF)
FA_SEED = 0.25
STEP_MM = 0.5
MIN_LENGTH_MM = 10.0
B0_THRESHOLD = 50
UNIT_TOLERANCE = 0.1  # |norm(bvec) - 1| allowed for a diffusion-weighted volume
MIN_DIRECTIONS = 6
MAX_GRID = 12  # grid12: 1,728 regions; a dense 1,729 x 1,729 matrix per parcellation
GRID_BOX_MM = ((-24.0, 24.0), (-24.0, 24.0), (-10.0, 10.0))  # world x, y, z


class LiteError(RuntimeError):
    """The input cannot be processed; the message says why."""


def find_series(input_dir: Path, subject: str, session: str) -> tuple[Path, Path, Path]:
    dwi_dir = input_dir / f"sub-{subject}" / f"ses-{session}" / "dwi"
    images = sorted(dwi_dir.glob("*_dwi.nii.gz")) + sorted(dwi_dir.glob("*_dwi.nii"))
    if len(images) != 1:
        raise LiteError(f"expected exactly one DWI image in {dwi_dir}, found {len(images)}")
    image = images[0]
    stem = image.name.removesuffix(".gz").removesuffix(".nii")
    bval, bvec = dwi_dir / f"{stem}.bval", dwi_dir / f"{stem}.bvec"
    for path in (bval, bvec):
        if not path.exists():
            raise LiteError(f"{path.name} is missing beside {image.name}")
    return image, bval, bvec


def read_gradients(bval: Path, bvec: Path) -> tuple[np.ndarray, np.ndarray]:
    """The b-values (n,) and b-vectors (n, 3) as written, or a LiteError naming the file."""
    try:
        bvals = np.loadtxt(bval, ndmin=1, dtype=float).ravel()
    except ValueError as err:
        raise LiteError(f"{bval.name} is not a row of numbers: {err}") from None
    try:
        rows = np.loadtxt(bvec, ndmin=2, dtype=float)
    except ValueError as err:
        raise LiteError(f"{bvec.name} is not rows of numbers: {err}") from None
    if rows.shape[0] != 3 and rows.shape[1] == 3:
        rows = rows.T  # one vector per line: accepted, as DIPY does
    if rows.shape[0] != 3:
        raise LiteError(f"{bvec.name} has {rows.shape[0]} rows; FSL/BIDS b-vectors are 3 rows (x, y, z)")
    return bvals, rows.T


def check_gradients(volumes: int, bvals: np.ndarray, bvecs: np.ndarray, name: str) -> np.ndarray:
    """Refuse a gradient table the model would silently misread; the message says what
    is wrong and where. Returns the b-vectors with the diffusion-weighted ones scaled to
    exactly unit length (DIPY demands 1 +- 0.01; files written to 4-6 decimals are within
    ``UNIT_TOLERANCE``)."""
    if len(bvals) != volumes or len(bvecs) != volumes:
        raise LiteError(f"{name} has {volumes} volumes but {len(bvals)} b-values and {len(bvecs)} b-vectors")
    if not np.all(np.isfinite(bvals)) or not np.all(np.isfinite(bvecs)):
        raise LiteError(f"{name}: the gradient table holds a value that is not a number")
    if bvals.min() < 0:
        raise LiteError(f"{name}: b-value {bvals.min():g} of volume {int(bvals.argmin())} is negative")
    weighted = bvals > B0_THRESHOLD
    if weighted.all():
        raise LiteError(f"{name}: no b0 volume (b-value <= {B0_THRESHOLD}); the model needs one")
    norms = np.linalg.norm(bvecs[weighted], axis=1)
    bad = np.nonzero(np.abs(norms - 1) > UNIT_TOLERANCE)[0]
    if bad.size:
        volume = int(np.nonzero(weighted)[0][bad[0]])
        raise LiteError(
            f"{name}: b-vector of volume {volume} has length {norms[bad[0]]:.3f}, not 1 "
            f"({bad.size} diffusion-weighted volumes are off); check the .bvec file"
        )
    directions = bvecs[weighted] / norms[:, None]
    if len(directions) < MIN_DIRECTIONS:
        raise LiteError(f"{name}: {len(directions)} diffusion-weighted volumes; a tensor needs at least {MIN_DIRECTIONS}")
    if np.linalg.matrix_rank(directions, tol=0.1) < 3:
        raise LiteError(f"{name}: the {len(directions)} gradient directions lie in one plane; a tensor needs them to span 3D")
    unit = bvecs.astype(float).copy()
    unit[weighted] = directions
    return unit


@dataclass(frozen=True)
class Image:
    """The DWI on isotropic voxels, with its world affine."""

    data: np.ndarray
    affine: np.ndarray
    voxel_mm: float
    resliced_from: tuple[float, float, float] | None = None


def load_isotropic(path: Path) -> Image:
    import nibabel as nib

    img: Any = nib.load(path)  # a NIfTI image (nibabel's stubs say FileBasedImage)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 4:
        raise LiteError(f"{path.name} is {data.ndim}D; a DWI series is 4D (x, y, z, volume)")
    zx, zy, zz = (float(z) for z in img.header.get_zooms()[:3])
    zooms = (zx, zy, zz)
    if max(zooms) - min(zooms) <= 0.01 * min(zooms):
        return Image(data, img.affine, zooms[0])
    from dipy.align.reslice import reslice

    target = min(zooms)
    resliced, affine = reslice(data, img.affine, zooms, (target,) * 3, order=1)
    return Image(np.asarray(resliced, np.float32), affine, target, zooms)


def preload() -> None:
    """Import what a scan needs (most of a small scan's time), for the warm server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import nibabel.processing  # noqa: F401
    from dipy.align import reslice  # noqa: F401
    from dipy.data import default_sphere  # noqa: F401
    from dipy.direction import peaks_from_model  # noqa: F401
    from dipy.reconst import dti, shm  # noqa: F401
    from dipy.segment import mask  # noqa: F401
    from dipy.tracking import local_tracking, stopping_criterion, streamline, utils  # noqa: F401


@dataclass(frozen=True)
class Tracking:
    streamlines: list[np.ndarray]  # world coordinates (mm)
    image: Image
    mask: np.ndarray
    fa: np.ndarray
    dropped_short: int


def track(image: Image, bvals: np.ndarray, bvecs: np.ndarray, model: str, seeds: int, min_length: float) -> Tracking:
    """Deterministic tracking in world coordinates; streamlines under ``min_length`` mm dropped."""
    from dipy.core.gradients import gradient_table
    from dipy.data import default_sphere
    from dipy.direction import peaks_from_model
    from dipy.reconst.dti import TensorModel, fractional_anisotropy
    from dipy.reconst.shm import CsaOdfModel
    from dipy.segment.mask import median_otsu
    from dipy.tracking import utils
    from dipy.tracking.local_tracking import LocalTracking
    from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion
    from dipy.tracking.streamline import Streamlines, length

    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD)
    data = image.data
    _, mask = median_otsu(data, vol_idx=np.nonzero(~gtab.b0s_mask)[0], median_radius=1, numpass=1)
    fa = fractional_anisotropy(TensorModel(gtab).fit(data, mask=mask).evals)
    fa[~mask] = 0
    recon = TensorModel(gtab) if model == "tensor" else CsaOdfModel(gtab, sh_order_max=4)
    peaks = peaks_from_model(
        recon,
        data,
        default_sphere,
        relative_peak_threshold=0.5,
        min_separation_angle=25,
        mask=mask,
        npeaks=1 if model == "tensor" else 3,
    )
    seed_points = utils.seeds_from_mask((fa > FA_SEED) & mask, image.affine, density=seeds)
    tracked = Streamlines(
        LocalTracking(peaks, ThresholdStoppingCriterion(fa, FA_STOP), seed_points, image.affine, step_size=STEP_MM, max_cross=1)
    )
    keep = [s for s in tracked if len(s) > 1 and length(s) >= min_length]
    return Tracking(keep, image, mask, fa, len(tracked) - len(keep))


def grid_labels(affine: np.ndarray, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Label each voxel by the block of the world box ``GRID_BOX_MM`` (n x n x n blocks)
    its centre lies in: ``1 + a*n*n + b*n + c``; 0 outside the box. The same world place
    has the same label in every image."""
    idx = np.stack(list(np.indices(shape[:3])), axis=-1).astype(float)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    labels = np.ones(shape[:3], np.int32)
    inside = np.ones(shape[:3], bool)
    for axis, (lo, hi) in enumerate(GRID_BOX_MM):
        block = np.floor((world[..., axis] - lo) / (hi - lo) * n).astype(int)
        inside &= (block >= 0) & (block < n)
        labels += np.clip(block, 0, n - 1) * n ** (2 - axis)
    labels[~inside] = 0
    return labels


def atlas_labels(atlas: Path, image: Image) -> tuple[np.ndarray, np.ndarray]:
    """An atlas label image on the DWI's grid (nearest neighbour; 0 = no region), and the
    atlas's own labels (``np.unique`` of the file, 0 included): node k is the k-th."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    img: Any = nib.load(atlas)  # a NIfTI image (nibabel's stubs say FileBasedImage)
    if img.ndim != 3:
        raise LiteError(f"atlas {atlas.name} must be a 3D label image, not {img.ndim}D")
    own = np.rint(np.asarray(img.dataobj)).astype(np.int64)
    if own.min() < 0 or own.max() == 0:
        raise LiteError(f"atlas {atlas.name} has no positive integer labels")
    grid = (image.data.shape[:3], image.affine)
    same = np.allclose(img.affine, image.affine) and img.shape == grid[0]
    resampled = img if same else resample_from_to(img, grid, order=0)
    return np.rint(np.asarray(resampled.dataobj)).astype(np.int64), np.union1d(np.unique(own), [0])


def connectome(streamlines: list[np.ndarray], affine: np.ndarray, labels: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """m2g's rule: for every streamline, each pair of distinct non-zero labels among the
    voxels its points fall in gains 1. ``nodes``: the parcellation's labels in order, 0
    first; the matrix is indexed by rank in it (node 0 = background, never connected)."""
    rank = np.full(int(nodes.max()) + 1, -1, np.int64)
    rank[nodes] = np.arange(len(nodes))
    inverse = np.linalg.inv(affine)
    matrix = np.zeros((len(nodes), len(nodes)), np.int64)
    shape = np.array(labels.shape)
    for s in streamlines:
        vox = np.floor(s @ inverse[:3, :3].T + inverse[:3, 3] + 0.5).astype(int)  # m2g/DIPY's rounding
        vox = vox[((vox >= 0) & (vox < shape)).all(axis=1)]
        passed = np.unique(labels[vox[:, 0], vox[:, 1], vox[:, 2]])
        passed = rank[passed[(passed > 0) & (passed < len(rank))]]
        passed = passed[passed > 0]
        for a in range(len(passed)):
            matrix[passed[a], passed[a + 1 :]] += 1
    return matrix + matrix.T


def edge_lines(matrix: np.ndarray) -> str:
    """The graph as networkx ``write_weighted_edgelist`` writes m2g's float adjacency:
    ``i j weight`` for each non-zero pair i < j, in row order, weights as floats."""
    rows, cols = np.nonzero(np.triu(matrix, k=1))
    return "".join(f"{i} {j} {float(matrix[i, j])}\n" for i, j in zip(rows, cols, strict=True))


def write_heatmap(matrix: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ax.imshow(np.log1p(matrix[1:, 1:]), cmap="viridis", extent=(0.5, len(matrix) - 0.5, len(matrix) - 0.5, 0.5))
    ax.set_title(title, fontsize=7)
    ax.set_xlabel("region (node)")
    ax.set_ylabel("region (node)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def grid_sizes(parcellations: list[str]) -> dict[str, int]:
    sizes = {}
    for parc in parcellations:
        m = re.fullmatch(r"grid(\d+)", parc)
        if not m or not 1 <= int(m.group(1)) <= MAX_GRID:
            raise LiteError(f"parcellation {parc!r} is not gridN (N from 1 to {MAX_GRID})")
        sizes[parc] = int(m.group(1))
    return sizes


def parcellate(
    parcellations: list[str], tracking: Tracking, atlas: tuple[str, np.ndarray, np.ndarray] | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per parcellation name: the label image on the DWI grid and its node labels (0 first);
    ``atlas``: (name, labels, nodes) from ``atlas_labels``."""
    out = {}
    image = tracking.image
    grey = tracking.mask & (tracking.fa < FA_STOP)  # regions are not white matter
    for parc, n in grid_sizes(parcellations).items():
        labels = grid_labels(image.affine, image.data.shape, n)
        labels[~grey] = 0
        out[parc] = (labels, np.arange(n**3 + 1))
    if atlas is not None:
        name, labels, nodes = atlas
        out[name] = (labels, nodes)
    return out


def run(
    input_dir: Path,
    output_dir: Path,
    subject: str,
    session: str,
    parcellations: list[str],
    model: str = "csa",
    seeds: int = 1,
    atlas: Path | None = None,
    min_length: float = MIN_LENGTH_MM,
) -> list[Path]:
    started = time.monotonic()
    grid_sizes(parcellations)  # a bad name fails before anything is read
    image_path, bval, bvec = find_series(input_dir, subject, session)
    stem = image_path.name.removesuffix(".gz").removesuffix(".nii")
    image = load_isotropic(image_path)
    bvals, bvecs = read_gradients(bval, bvec)
    bvecs = check_gradients(image.data.shape[3], bvals, bvecs, image_path.name)
    if image.resliced_from:
        log.info("%s: resliced from %s mm voxels to %.2f mm isotropic", stem, image.resliced_from, image.voxel_mm)
    atlas_parcellation = None  # a bad atlas fails before the tracking, not after it
    if atlas is not None:
        if not atlas.is_file():
            raise LiteError(f"atlas {atlas} is not a file")
        atlas_parcellation = (atlas.name.removesuffix(".gz").removesuffix(".nii"), *atlas_labels(atlas, image))
    tracking = track(image, bvals, bvecs, model, seeds, min_length)
    log.info(
        "%s: %d streamlines of %g mm or more (%d shorter dropped) in %.1f s",
        stem,
        len(tracking.streamlines),
        min_length,
        tracking.dropped_short,
        time.monotonic() - started,
    )
    label_images = parcellate(parcellations, tracking, atlas_parcellation)
    scan_out = output_dir / f"sub-{subject}" / f"ses-{session}"
    written = []
    for parc, (labels, nodes) in label_images.items():
        matrix = connectome(tracking.streamlines, image.affine, labels, nodes)
        csv_path = scan_out / "connectomes_d" / parc / f"{stem}_{parc}_connectome.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(edge_lines(matrix))
        png = scan_out / "qa_d" / "graphs_plotting" / f"{stem}_{parc}_connectome.png"
        write_heatmap(matrix, png, f"{stem} {parc}")
        edges = int(np.count_nonzero(np.triu(matrix, k=1)))
        log.info("%s: %s, %d regions, %d edges", stem, parc, len(nodes) - 1, edges)
        written += [csv_path, png]
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ndmg-lite", description="small DIPY connectome pipeline (not ndmg)")
    parser.add_argument("--participant_label", required=True)
    parser.add_argument("--session_label", required=True)
    parser.add_argument("--parcellation", nargs="+", default=["grid3"])
    parser.add_argument("--diffusion_model", choices=("csa", "tensor"), default="csa")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--min_length", type=float, default=MIN_LENGTH_MM, help="shortest streamline kept, mm")
    parser.add_argument("--atlas", type=Path, help="label NIfTI in the DWI's world space")
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ndmg-lite %(message)s", stream=sys.stdout)
    try:
        run(
            args.input_dir,
            args.output_dir,
            args.participant_label,
            args.session_label,
            args.parcellation,
            args.diffusion_model,
            args.seeds,
            args.atlas,
            args.min_length,
        )
    except LiteError as err:
        print(f"ndmg-lite: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
