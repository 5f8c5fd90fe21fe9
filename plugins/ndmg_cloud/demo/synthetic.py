"""A synthetic BIDS dataset of tiny but real DWI phantoms, simulated with DIPY, in which
subjects differ and sessions of one subject are alike.

Each scan shows an ellipsoidal "brain" (46 x 46 x 18 mm) holding three straight fibre
bundles in isotropic tissue. The bundles are the subject's identity: their positions,
angles and lengths are drawn from the subject's number, so every session of a subject has
the same bundles. A session differs from another by its noise (Rician, SNR 30) and by a
small head motion (up to 1 mm along each axis and 2 degrees about z), as two real sessions
do. b=1000 s/mm^2 on 32 directions plus one b0; 2 mm voxels by default (24 x 24 x 10), or
any other voxel size over the same field of view (an anisotropic phantom images the same
head).

Geometry is in millimetres, in "head" coordinates centred on the brain; the image's
affine maps voxels to world (scanner) coordinates, where the head sits after its motion.
The bundles' ends are known (``geometry(subject).bundles``), so a connectome can be
checked: the regions at the two ends of a bundle must be connected.

    ndmg-synth OUT_DIR [--subjects 5] [--sessions 2] [--sessionless 1] [--inherit-gradients]
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIELD_OF_VIEW_MM = (48.0, 48.0, 20.0)
VOXEL_MM = (2.0, 2.0, 2.0)
SHAPE = (24, 24, 10)  # the field of view at VOXEL_MM
BRAIN_RADII_MM = (23.0, 23.0, 9.0)
B_VALUE = 1000
DIRECTIONS = 32
SNR = 30
S0 = 400.0
WM_EVALS = (0.0017, 0.0003, 0.0003)
ISO_EVALS = (0.0008, 0.0008, 0.0008)
MAX_SHIFT_MM = 1.0  # head motion between sessions
MAX_TURN_DEG = 2.0


@dataclass(frozen=True)
class Bundle:
    """A straight bundle of fibres: a cylinder from ``start`` to ``end`` (head mm)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float

    @property
    def direction(self) -> np.ndarray:
        d = np.subtract(self.end, self.start)
        return d / np.linalg.norm(d)

    def ends_in_world(self, motion: Motion, beyond_mm: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        """World points ``beyond_mm`` past each end (where a streamline along the bundle
        stops), for a head at ``motion``."""
        d = self.direction
        head = np.array([np.asarray(self.start) - beyond_mm * d, np.asarray(self.end) + beyond_mm * d])
        world = head @ motion.rotation.T + np.asarray(motion.shift)
        return world[0], world[1]

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Which of ``points`` (..., 3) lie inside the cylinder."""
        start, d = np.asarray(self.start), self.direction
        length = float(np.linalg.norm(np.subtract(self.end, self.start)))
        rel = points - start
        along = rel @ d
        across = np.linalg.norm(rel - along[..., None] * d, axis=-1)
        return (along >= 0) & (along <= length) & (across <= self.radius)


@dataclass(frozen=True)
class Geometry:
    """One subject's bundles: the same in every session of the subject."""

    bundles: tuple[Bundle, ...]


@dataclass(frozen=True)
class Motion:
    """A session's head pose in the scanner: world = R(turn about z) @ head + shift."""

    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    turn_deg: float = 0.0

    @property
    def rotation(self) -> np.ndarray:
        a = np.deg2rad(self.turn_deg)
        return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])

    def to_head(self, world: np.ndarray) -> np.ndarray:
        return (world - np.asarray(self.shift)) @ self.rotation  # R^T (w - t), row vectors


@dataclass(frozen=True)
class Phantom:
    dwi: np.ndarray  # int16, shape + (volumes,)
    t1w: np.ndarray  # int16, shape
    bvals: np.ndarray
    bvecs: np.ndarray  # (volumes, 3)
    affine: np.ndarray


def inside_brain(head: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
    radii = np.asarray(BRAIN_RADII_MM) - margin_mm
    return ((head / radii) ** 2).sum(axis=-1) <= 1.0


def _segment(centre: tuple[float, float, float], angle_deg: float, length: float, radius: float) -> Bundle:
    """An in-plane bundle through ``centre``, shortened until both ends sit inside the brain
    with room for the isotropic tissue where tracking stops."""
    d = np.array([np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg)), 0.0])
    middle = np.asarray(centre, float)
    while length > 8 and not inside_brain(np.array([middle - d * length / 2, middle + d * length / 2]), 5.0).all():
        length -= 1.0
    start, end = middle - d * length / 2, middle + d * length / 2
    return Bundle(_point(start), _point(end), radius)


def _point(v: np.ndarray) -> tuple[float, float, float]:
    """A point in world space (mm), rounded to a micrometre."""
    return round(float(v[0]), 3), round(float(v[1]), 3), round(float(v[2]), 3)


def geometry(subject: int) -> Geometry:
    """Subject number ``subject``'s bundles: one mostly along x, one mostly along y (each
    shifted and turned by up to 6 mm and 25 degrees), and a third, shorter one at any angle."""
    rng = np.random.default_rng(1000 + subject)
    along_x = _segment((0.0, rng.uniform(-6, 6), rng.uniform(-1.5, 1.5)), rng.uniform(-25, 25), 36.0, 4.0)
    along_y = _segment((rng.uniform(-6, 6), 0.0, rng.uniform(-1.5, 1.5)), 90 + rng.uniform(-25, 25), 36.0, 4.0)
    third = _segment((rng.uniform(-9, 9), rng.uniform(-9, 9), 0.0), rng.uniform(0, 180), rng.uniform(16, 24), 3.0)
    return Geometry((along_x, along_y, third))


def session_motion(subject: int, session: int) -> Motion:
    """A session's small head motion, drawn from (subject, session)."""
    rng = np.random.default_rng([subject, session, 7])
    sx, sy, sz = (float(v) for v in np.round(rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM, 3), 3))
    return Motion(shift=(sx, sy, sz), turn_deg=float(np.round(rng.uniform(-MAX_TURN_DEG, MAX_TURN_DEG), 3)))


def grid_for(voxel_mm: float | tuple[float, float, float] = VOXEL_MM) -> tuple[tuple[int, int, int], np.ndarray]:
    """The image shape and affine covering the field of view, centred on world (0, 0, 0)."""
    voxel = np.asarray(voxel_mm, float)
    x, y, z = (int(round(f / v)) for f, v in zip(FIELD_OF_VIEW_MM, voxel, strict=True))
    shape = (x, y, z)
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) * voxel / 2
    return shape, affine


def world_points(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The world coordinates (mm) of every voxel centre, shape + (3,)."""
    idx = np.stack(list(np.indices(shape)), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


@functools.lru_cache(maxsize=4)
def gradients(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One b0 and DIRECTIONS well-spread b=1000 directions (electrostatic repulsion; 0.7 s,
    so computed once: the arrays are read-only)."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(seed)
    theta = np.arccos(rng.uniform(0, 1, DIRECTIONS))
    phi = rng.uniform(0, 2 * np.pi, DIRECTIONS)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 2000)
    bvecs = np.vstack([[0.0, 0.0, 0.0], hemi.vertices])
    bvals = np.r_[0, np.full(DIRECTIONS, B_VALUE)]
    bvecs.flags.writeable = bvals.flags.writeable = False
    return bvals, bvecs


def tissue(geom: Geometry, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The brain mask and, per voxel, a bit set of the bundles it lies in."""
    brain = inside_brain(head)
    members = np.zeros(head.shape[:-1], np.int8)
    for index, bundle in enumerate(geom.bundles):
        members |= (bundle.contains(head) & brain).astype(np.int8) << index
    return brain, members


def simulate(
    subject: int = 1, session: int = 1, voxel_mm: float | tuple[float, float, float] = VOXEL_MM, noise_seed: int | None = None
) -> Phantom:
    """Subject ``subject``'s head in session ``session``: its bundles, this session's
    motion and noise, imaged on a grid of ``voxel_mm`` voxels."""
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import multi_tensor

    bvals, bvecs = gradients()
    gtab = gradient_table(bvals, bvecs=bvecs)
    shape, affine = grid_for(voxel_mm)
    motion = session_motion(subject, session)
    geom = geometry(subject)
    brain, members = tissue(geom, motion.to_head(world_points(shape, affine)))
    # the image axes are the world axes (diagonal affine): a fibre's direction in the image
    # is its head direction turned by the head's motion
    directions = [motion.rotation @ b.direction for b in geom.bundles]

    clean = np.zeros(shape + (len(bvals),))
    iso = np.array([ISO_EVALS, ISO_EVALS])
    clean[brain], _ = multi_tensor(gtab, iso, S0=S0, angles=[(0, 0), (0, 0)], fractions=[50, 50], snr=None)
    for bits in np.unique(members[members > 0]):
        sticks = [directions[i] for i in range(len(directions)) if bits >> i & 1]
        evals = np.array([WM_EVALS] * len(sticks))
        signal, _ = multi_tensor(gtab, evals, S0=S0, angles=np.array(sticks), fractions=[100 / len(sticks)] * len(sticks), snr=None)
        clean[members == bits] = signal

    rng = np.random.default_rng([subject, session, 11] if noise_seed is None else noise_seed)
    sigma = S0 / SNR
    noisy = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    noisy[~brain] = rng.normal(0, sigma / 4, (np.count_nonzero(~brain), len(bvals))).clip(0)

    t1w = np.zeros(shape)
    t1w[brain] = 600
    t1w[members > 0] = 1000
    t1w += rng.normal(0, 20, shape)
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
    subjects: int = 5,
    sessions: int = 2,
    sessionless: int = 1,
    inherit_gradients: bool = False,
    name: str = "ndmg-cloud synthetic phantoms",
    voxel_mm: float | tuple[float, float, float] = VOXEL_MM,
) -> list[str]:
    """Write a BIDS dataset; return the scan ids in it.

    ``subjects`` subjects with ``sessions`` sessions each, then ``sessionless`` subjects
    without a session level. Subject ``sub-NN`` has the bundles of ``geometry(NN)``. With
    ``inherit_gradients`` the bval/bvec live once at the dataset root (BIDS inheritance)
    instead of beside every image.
    """
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(json.dumps({"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw"}, indent=2) + "\n")
    bvals, bvecs = gradients()
    if inherit_gradients:
        write_gradients(out / "dwi", bvals, bvecs)
    folders: list[tuple[int, int | None]] = [(s, t) for s in range(1, subjects + 1) for t in range(1, sessions + 1)]
    folders += [(subjects + s, None) for s in range(1, sessionless + 1)]
    scan_ids = []
    for subject, session in folders:
        phantom = simulate(subject, session or 1, voxel_mm)
        sub, ses = f"{subject:02d}", (f"{session}" if session else None)
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
    parser.add_argument("--subjects", type=int, default=5, help="subjects with sessions (default 5)")
    parser.add_argument("--sessions", type=int, default=2, help="sessions per subject (default 2)")
    parser.add_argument("--sessionless", type=int, default=1, help="subjects without sessions (default 1)")
    parser.add_argument("--inherit-gradients", action="store_true", help="one dwi.bval/.bvec at the root")
    parser.add_argument(
        "--voxel-mm",
        type=float,
        nargs=3,
        default=VOXEL_MM,
        metavar=("X", "Y", "Z"),
        help="voxel size in mm (default 2 2 2); the field of view stays 48 x 48 x 20 mm",
    )
    args = parser.parse_args(argv)
    scans = make_dataset(args.out, args.subjects, args.sessions, args.sessionless, args.inherit_gradients, voxel_mm=tuple(args.voxel_mm))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {len(scans)} scans to {args.out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
