"""``lite``: a small, real connectome pipeline on DIPY + nibabel (no FSL, no registration).

Not ndmg: for demos, tests and cheap smoke runs of an AWS setup. For one DWI series:
brain mask (median Otsu) -> tensor or CSA model -> peaks -> deterministic tracking ->
connectivity over a native-space grid parcellation of the brain mask (``gridN``: the
mask's bounding box cut into N x N x N blocks), and over an atlas label image in the DWI's
space when given -> m2g-format edge lists at m2g layout paths, plus a QA heatmap:

    <out>/sub-S/ses-T/connectomes_d/<parc>/<dwi stem>_<parc>_connectome.csv
    <out>/sub-S/ses-T/qa_d/graphs_plotting/<dwi stem>_<parc>_connectome.png

    ndmg-lite --participant_label S --session_label T [--parcellation grid3 ...]
              [--diffusion_model csa|tensor] [--seeds 1] [--atlas LABELS.nii.gz]
              INPUT_DIR OUTPUT_DIR
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("ndmg-lite")
FA_STOP = 0.15  # tracking stops where anisotropy drops below this (grey matter, CSF)
FA_SEED = 0.25
STEP_MM = 0.5
MAX_ANGLE = 35.0


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


def grid_labels(mask: np.ndarray, n: int) -> np.ndarray:
    """Label the mask's voxels 1..n**3 by which of n x n x n blocks of its bounding box they
    fall in; 0 outside the mask."""
    labels = np.zeros(mask.shape, np.int32)
    idx = np.nonzero(mask)
    if not idx[0].size:
        return labels
    block = []
    for axis in range(3):
        lo, hi = idx[axis].min(), idx[axis].max() + 1
        block.append(np.minimum(((idx[axis] - lo) * n) // (hi - lo), n - 1))
    labels[idx] = 1 + block[0] * n * n + block[1] * n + block[2]
    return labels


def edge_list(matrix: np.ndarray) -> list[tuple[int, int, int]]:
    """Non-zero undirected edges ``(i, j, weight)``, i < j, nodes numbered from 0."""
    edges = []
    n = matrix.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            if matrix[i, j]:
                edges.append((i, j, int(matrix[i, j])))
    return edges


def preload() -> None:
    """Import what a scan needs (most of a small scan's time), for the warm server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import nibabel.processing  # noqa: F401
    from dipy.data import default_sphere  # noqa: F401
    from dipy.direction import peaks_from_model  # noqa: F401
    from dipy.reconst import dti, shm  # noqa: F401
    from dipy.segment import mask  # noqa: F401
    from dipy.tracking import local_tracking, stopping_criterion, streamline, utils  # noqa: F401


def track(dwi_path: Path, bval: Path, bvec: Path, model: str, seeds: int):
    """Streamlines (in voxel coordinates), the brain mask and the image."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table
    from dipy.data import default_sphere
    from dipy.direction import peaks_from_model
    from dipy.io import read_bvals_bvecs
    from dipy.reconst.dti import TensorModel, fractional_anisotropy
    from dipy.reconst.shm import CsaOdfModel
    from dipy.segment.mask import median_otsu
    from dipy.tracking import utils
    from dipy.tracking.local_tracking import LocalTracking
    from dipy.tracking.stopping_criterion import ThresholdStoppingCriterion
    from dipy.tracking.streamline import Streamlines

    img = nib.load(dwi_path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    bvals, bvecs = read_bvals_bvecs(str(bval), str(bvec))
    if data.ndim != 4 or data.shape[3] != len(bvals) or bvecs.shape[0] != len(bvals):
        raise LiteError(
            f"{dwi_path.name} has {data.shape[3] if data.ndim == 4 else 1} volumes but "
            f"{len(bvals)} b-values and {bvecs.shape[0]} b-vectors"
        )
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=50)
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
    identity = np.eye(4)  # track in voxel space: the grid parcellation is native
    seed_points = utils.seeds_from_mask((fa > FA_SEED) & mask, identity, density=seeds)
    streamlines = Streamlines(
        LocalTracking(
            peaks,
            ThresholdStoppingCriterion(fa, FA_STOP),
            seed_points,
            identity,
            step_size=STEP_MM / float(np.mean(img.header.get_zooms()[:3])),
            max_cross=1,
        )
    )
    return streamlines, mask, img


def atlas_labels(atlas: Path, reference) -> np.ndarray:
    """An atlas label image on the DWI's grid (nearest neighbour; 0 = no region)."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    img = nib.load(atlas)
    if img.ndim != 3:
        raise LiteError(f"atlas {atlas.name} must be a 3D label image, not {img.ndim}D")
    grid = (reference.shape[:3], reference.affine)
    resampled = img if np.allclose(img.affine, reference.affine) and img.shape == grid[0] else resample_from_to(img, grid, order=0)
    labels = np.rint(np.asarray(resampled.dataobj)).astype(np.int32)
    if labels.min() < 0 or labels.max() == 0:
        raise LiteError(f"atlas {atlas.name} has no positive integer labels")
    return labels


def connectome(streamlines, labels: np.ndarray) -> np.ndarray:
    from dipy.tracking.utils import connectivity_matrix

    matrix = connectivity_matrix(streamlines, np.eye(4), labels, symmetric=True)
    n = int(labels.max())
    full = np.zeros((n + 1, n + 1), dtype=np.int64)
    full[: matrix.shape[0], : matrix.shape[1]] = matrix
    return full[1:, 1:]  # drop label 0 (outside the brain)


def write_heatmap(matrix: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ax.imshow(np.log1p(matrix), cmap="viridis")
    ax.set_title(title, fontsize=7)
    ax.set_xlabel("region")
    ax.set_ylabel("region")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(
    input_dir: Path,
    output_dir: Path,
    subject: str,
    session: str,
    parcellations: list[str],
    model: str = "csa",
    seeds: int = 1,
    atlas: Path | None = None,
) -> list[Path]:
    started = time.monotonic()
    image, bval, bvec = find_series(input_dir, subject, session)
    stem = image.name.removesuffix(".gz").removesuffix(".nii")
    streamlines, mask, img = track(image, bval, bvec, model, seeds)
    log.info("%s: %d streamlines in %.1f s", stem, len(streamlines), time.monotonic() - started)
    scan_out = output_dir / f"sub-{subject}" / f"ses-{session}"
    label_images = {}
    for parc in parcellations:
        m = re.fullmatch(r"grid(\d+)", parc)
        if not m:
            raise LiteError(f"parcellation {parc!r} is not gridN")
        label_images[parc] = grid_labels(mask, int(m.group(1)))
    if atlas is not None:
        label_images[atlas.name.removesuffix(".gz").removesuffix(".nii")] = atlas_labels(atlas, img)
    written = []
    for parc, labels in label_images.items():
        matrix = connectome(streamlines, labels)
        edges = edge_list(matrix)
        csv_path = scan_out / "connectomes_d" / parc / f"{stem}_{parc}_connectome.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text("".join(f"{i} {j} {w}\n" for i, j, w in edges))
        png = scan_out / "qa_d" / "graphs_plotting" / f"{stem}_{parc}_connectome.png"
        write_heatmap(matrix, png, f"{stem} {parc}")
        log.info("%s: %s, %d regions, %d edges", stem, parc, matrix.shape[0], len(edges))
        written += [csv_path, png]
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ndmg-lite", description="small DIPY connectome pipeline (not ndmg)")
    parser.add_argument("--participant_label", required=True)
    parser.add_argument("--session_label", required=True)
    parser.add_argument("--parcellation", nargs="+", default=["grid3"])
    parser.add_argument("--diffusion_model", choices=("csa", "tensor"), default="csa")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--atlas", type=Path, help="label NIfTI in the DWI's own space")
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
        )
    except LiteError as err:
        print(f"ndmg-lite: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
