"""A synthetic BIDS dataset of tiny but real DWI phantoms, simulated with DIPY.

Each scan is a 24 x 24 x 10 volume (2 mm voxels) inside an ellipsoidal "brain": two fibre
bundles, one along x and one along y, cross in the middle; the rest of the brain is
isotropic. b=1000 s/mm^2 on 32 directions plus one b0; Rician noise at SNR 30. The bundles'
ends lie in known places, so a connectome of the phantom can be checked: the regions at
the two ends of a bundle must be connected.

    ndmg-synth OUT_DIR [--subjects 4] [--sessions 2] [--sessionless 1] [--inherit-gradients]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPE = (24, 24, 10)
VOXEL_MM = 2.0
B_VALUE = 1000
DIRECTIONS = 32
SNR = 30
S0 = 400.0
# Bundle cross-sections (inclusive-exclusive voxel ranges) and their extent along their axis.
BUNDLE_X = {"y": (10, 14), "z": (3, 7), "x": (3, 21)}  # runs along x
BUNDLE_Y = {"x": (10, 14), "z": (3, 7), "y": (3, 21)}  # runs along y
WM_EVALS = (0.0017, 0.0003, 0.0003)
ISO_EVALS = (0.0008, 0.0008, 0.0008)


@dataclass(frozen=True)
class Phantom:
    dwi: np.ndarray  # int16, SHAPE + (volumes,)
    t1w: np.ndarray  # int16, SHAPE
    bvals: np.ndarray
    bvecs: np.ndarray  # (volumes, 3)
    affine: np.ndarray


def gradients(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One b0 and DIRECTIONS well-spread b=1000 directions (electrostatic repulsion)."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(seed)
    theta = np.arccos(rng.uniform(0, 1, DIRECTIONS))
    phi = rng.uniform(0, 2 * np.pi, DIRECTIONS)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 2000)
    bvecs = np.vstack([[0.0, 0.0, 0.0], hemi.vertices])
    bvals = np.r_[0, np.full(DIRECTIONS, B_VALUE)]
    return bvals, bvecs


def masks() -> dict[str, np.ndarray]:
    """Boolean masks of the brain, the two bundles and their crossing."""
    x, y, z = np.indices(SHAPE)
    centre = (np.array(SHAPE) - 1) / 2
    radii = np.array(SHAPE) / 2 - 0.5
    brain = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (z - centre[2]) / radii[2]
    ) ** 2 <= 1.0

    def box(spec: dict[str, tuple[int, int]]) -> np.ndarray:
        m = np.zeros(SHAPE, bool)
        m[slice(*spec["x"]), slice(*spec["y"]), slice(*spec["z"])] = True
        return m & brain

    along_x, along_y = box(BUNDLE_X), box(BUNDLE_Y)
    return {"brain": brain, "along_x": along_x, "along_y": along_y, "crossing": along_x & along_y}


def simulate(seed: int) -> Phantom:
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import multi_tensor

    bvals, bvecs = gradients()
    gtab = gradient_table(bvals, bvecs=bvecs)
    m = masks()
    evals = np.array([WM_EVALS, WM_EVALS])

    def signal(angles, fractions, mevals=evals):
        s, _ = multi_tensor(gtab, mevals, S0=S0, angles=angles, fractions=fractions, snr=None)
        return s

    # angles are (theta, phi) in degrees: x axis = (90, 0), y axis = (90, 90)
    tissue = {
        "iso": signal([(0, 0), (0, 0)], [50, 50], np.array([ISO_EVALS, ISO_EVALS])),
        "along_x": signal([(90, 0), (90, 0)], [50, 50]),
        "along_y": signal([(90, 90), (90, 90)], [50, 50]),
        "crossing": signal([(90, 0), (90, 90)], [50, 50]),
    }
    clean = np.zeros(SHAPE + (len(bvals),))
    clean[m["brain"]] = tissue["iso"]
    clean[m["along_x"]] = tissue["along_x"]
    clean[m["along_y"]] = tissue["along_y"]
    clean[m["crossing"]] = tissue["crossing"]

    rng = np.random.default_rng(seed)
    sigma = S0 / SNR
    noisy = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    noisy[~m["brain"]] = rng.normal(0, sigma / 4, (np.count_nonzero(~m["brain"]), len(bvals))).clip(0)

    t1w = np.zeros(SHAPE)
    t1w[m["brain"]] = 600
    t1w[m["along_x"] | m["along_y"]] = 1000
    t1w += rng.normal(0, 20, SHAPE)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -np.array(SHAPE) * VOXEL_MM / 2
    return Phantom(
        dwi=np.round(noisy).astype(np.int16),
        t1w=np.round(t1w.clip(0)).astype(np.int16),
        bvals=bvals,
        bvecs=bvecs,
        affine=affine,
    )


def write_gradients(prefix: Path, bvals: np.ndarray, bvecs: np.ndarray) -> None:
    prefix.with_name(prefix.name + ".bval").write_text(" ".join(str(int(b)) for b in bvals) + "\n")
    rows = [" ".join(f"{v:.6f}" for v in bvecs[:, axis]) for axis in range(3)]
    prefix.with_name(prefix.name + ".bvec").write_text("\n".join(rows) + "\n")


def make_dataset(
    out: Path,
    subjects: int = 4,
    sessions: int = 2,
    sessionless: int = 1,
    inherit_gradients: bool = False,
    name: str = "ndmg-cloud synthetic phantoms",
) -> list[str]:
    """Write a BIDS dataset; return the scan ids in it.

    ``subjects`` subjects with ``sessions`` sessions each, then ``sessionless`` subjects
    without a session level. With ``inherit_gradients`` the bval/bvec live once at the
    dataset root (BIDS inheritance) instead of beside every image.
    """
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw"}, indent=2) + "\n"
    )
    bvals, bvecs = gradients()
    if inherit_gradients:
        write_gradients(out / "dwi", bvals, bvecs)
    folders = [(f"{s:02d}", f"{t}") for s in range(1, subjects + 1) for t in range(1, sessions + 1)]
    folders += [(f"{subjects + s:02d}", None) for s in range(1, sessionless + 1)]
    scan_ids = []
    for seed, (sub, ses) in enumerate(folders, start=1):
        phantom = simulate(seed)
        entity = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        base = out / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
        (base / "dwi").mkdir(parents=True, exist_ok=True)
        (base / "anat").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(phantom.dwi, phantom.affine), base / "dwi" / f"{entity}_dwi.nii.gz")
        nib.save(nib.Nifti1Image(phantom.t1w, phantom.affine), base / "anat" / f"{entity}_T1w.nii.gz")
        (base / "dwi" / f"{entity}_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": "j-"}) + "\n")
        if not inherit_gradients:
            write_gradients(base / "dwi" / f"{entity}_dwi", phantom.bvals, phantom.bvecs)
        scan_ids.append(entity)
    return scan_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ndmg-synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the BIDS dataset into")
    parser.add_argument("--subjects", type=int, default=4, help="subjects with sessions (default 4)")
    parser.add_argument("--sessions", type=int, default=2, help="sessions per subject (default 2)")
    parser.add_argument("--sessionless", type=int, default=1, help="subjects without sessions (default 1)")
    parser.add_argument("--inherit-gradients", action="store_true", help="one dwi.bval/.bvec at the root")
    args = parser.parse_args(argv)
    scans = make_dataset(args.out, args.subjects, args.sessions, args.sessionless, args.inherit_gradients)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {len(scans)} scans to {args.out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
