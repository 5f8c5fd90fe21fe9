"""A small synthetic DWI phantom for m2g's own tracking and graph code (tests/m2g_tracking.py;
Python 3.7, run with the m2g virtualenv's interpreter by tests/test_m2g_real.py).

Grid 48 x 40 x 16 voxels of 2 mm (96 x 80 x 32 mm), identity-like diagonal affine.
Three straight bundles (radius 2.5 voxels = 5 mm), in the z = 8 plane:
  A: along x, y = 12, x 4..43   (39 voxels = 78 mm)
  B: along x, y = 28, x 4..43   (39 voxels = 78 mm)
  C: along y, x = 24, y 2..37   (35 voxels = 70 mm), crossing A and B at 90 degrees
m2g keeps only streamlines with > 60 points at step 0.5 voxel, i.e. longer than ~30 voxels
(60 mm at 2 mm voxels), so all three bundles survive.

Outputs (prefix OUT/phantom_):
  dwi.nii.gz, dwi.bval, dwi.bvec   b=1000 x 32 directions + 2 b0, Rician noise SNR 30
  T1w.nii.gz                        brain 600, WM 1000
  wm.nii.gz   WM "PVE" (1.0 in bundles)       -> m2g's wm_in_dwi (tracking/stopping mask)
  gm.nii.gz   GM "PVE" (1.0 in the end caps)  -> m2g's gm_in_dwi; WM*GM = seeding interface
  brainmask.nii.gz
  labels.nii.gz  label image in the same space:
      1/2 = A's start/end cap, 3/4 = B's caps, 5/6 = C's caps,
      7 = a deep "nucleus" cube at the A x C crossing (not GM, so not seeded),
      12 = an isolated region far from any bundle (non-contiguous label value on purpose)
Expected connectome: 1-2, 3-4, 5-6 (one per bundle), plus 1-7, 2-7, 5-7, 6-7 because m2g
counts every label a streamline passes through, not just its endpoints.
"""

import argparse
import os

import nibabel as nib
import numpy as np
from dipy.core.gradients import gradient_table
from dipy.core.sphere import HemiSphere, disperse_charges
from dipy.sims.voxel import multi_tensor

SHAPE = (48, 40, 16)
VOX = 2.0
R = 2.5
S0 = 400.0
SNR = 30.0
WM_EVALS = (0.0017, 0.0003, 0.0003)
ISO_EVALS = (0.0008, 0.0008, 0.0008)
# (start voxel, end voxel)
BUNDLES = {
    "A": ((4, 12, 8), (43, 12, 8)),
    "B": ((4, 28, 8), (43, 28, 8)),
    "C": ((24, 2, 8), (24, 37, 8)),
}


def in_cylinder(idx, a, b, r):
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = (b - a) / np.linalg.norm(b - a)
    rel = idx - a
    along = rel @ d
    across = np.linalg.norm(rel - along[..., None] * d, axis=-1)
    return (along >= 0) & (along <= np.linalg.norm(b - a)) & (across <= r), d


def cube(shape, centre, half):
    m = np.zeros(shape, bool)
    sl = tuple(slice(max(c - h, 0), c + h + 1) for c, h in zip(centre, half))
    m[sl] = True
    return m


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.RandomState(a.seed)

    affine = np.diag([VOX, VOX, VOX, 1.0])
    affine[:3, 3] = -(np.asarray(SHAPE) - 1) * VOX / 2
    idx = np.stack(np.indices(SHAPE), axis=-1).astype(float)

    # gradients: 2 b0 + 32 directions on a hemisphere
    theta = np.arccos(rng.uniform(0, 1, 32))
    phi = rng.uniform(0, 2 * np.pi, 32)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 2000)
    bvecs = np.vstack([[0, 0, 0], [0, 0, 0], hemi.vertices])
    bvals = np.r_[0, 0, np.full(32, 1000)]
    gtab = gradient_table(bvals, bvecs)

    centre = (np.asarray(SHAPE) - 1) / 2.0
    radii = np.asarray(SHAPE) / 2.0 - 0.5
    brain = (((idx - centre) / radii) ** 2).sum(-1) <= 1.0
    brain |= cube(SHAPE, (24, 20, 8), (22, 19, 6))  # box-shaped brain: fits all bundle ends

    members = np.zeros(SHAPE, np.int8)
    dirs = []
    for i, (s, e) in enumerate(BUNDLES.values()):
        m, d = in_cylinder(idx, s, e, R)
        members |= (m & brain).astype(np.int8) << i
        dirs.append(d)
    wm = members > 0

    # signal
    clean = np.zeros(SHAPE + (len(bvals),))
    iso, _ = multi_tensor(gtab, np.array([ISO_EVALS, ISO_EVALS]), S0=S0, angles=[(0, 0), (0, 0)], fractions=[50, 50], snr=None)
    clean[brain] = iso
    for bits in np.unique(members[members > 0]):
        sticks = [dirs[i] for i in range(len(dirs)) if bits >> i & 1]
        evals = np.array([WM_EVALS] * len(sticks))
        sig, _ = multi_tensor(gtab, evals, S0=S0, angles=np.array(sticks), fractions=[100.0 / len(sticks)] * len(sticks), snr=None)
        clean[members == bits] = sig
    sigma = S0 / SNR
    noisy = np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)
    noisy[~brain] = np.abs(rng.normal(0, sigma / 4, (np.count_nonzero(~brain), len(bvals))))

    # labels: 6 end caps (5 x 9 x 9 voxels, covering the last 5 voxels of each bundle)
    labels = np.zeros(SHAPE, np.int16)
    gm = np.zeros(SHAPE, bool)
    lab = 1
    for s, e in BUNDLES.values():
        s, e = np.asarray(s), np.asarray(e)
        d = np.sign(e - s)
        for end, inward in ((s, d), (e, -d)):
            c = end + 2 * inward
            half = np.where(d != 0, 2, 4)
            m = cube(SHAPE, tuple(c), tuple(half)) & brain
            labels[m] = lab
            gm |= m
            lab += 1
    labels[cube(SHAPE, (24, 12, 8), (2, 2, 2))] = 7  # deep nucleus on the A x C crossing
    labels[cube(SHAPE, (40, 20, 3), (2, 2, 1)) & brain & ~wm] = 12  # isolated region

    t1 = np.where(brain, 600.0, 0.0)
    t1[wm] = 1000.0
    t1 += rng.normal(0, 20, SHAPE)

    def save(arr, name, dtype):
        nib.save(nib.Nifti1Image(arr.astype(dtype), affine), os.path.join(a.out, "phantom_" + name))

    save(np.round(noisy), "dwi.nii.gz", np.int16)
    save(np.round(t1.clip(0)), "T1w.nii.gz", np.int16)
    save(wm, "wm.nii.gz", np.float32)
    save(gm, "gm.nii.gz", np.float32)
    save(brain, "brainmask.nii.gz", np.uint8)
    save(labels, "labels.nii.gz", np.int16)
    np.savetxt(os.path.join(a.out, "phantom_dwi.bval"), bvals[None], fmt="%d")
    np.savetxt(os.path.join(a.out, "phantom_dwi.bvec"), bvecs.T, fmt="%.6f")
    print(
        "wrote phantom to",
        a.out,
        "shape",
        SHAPE,
        "voxel",
        VOX,
        "mm;",
        "WM voxels",
        int(wm.sum()),
        "seed-interface voxels",
        int((wm & gm).sum()),
        "labels",
        sorted(int(x) for x in np.unique(labels) if x),
    )


if __name__ == "__main__":
    main()
