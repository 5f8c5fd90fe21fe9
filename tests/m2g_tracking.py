"""Run m2g's OWN tractography (m2g.track) and connectome code (m2g.graph.GraphTools) on a
phantom, following m2g/scripts/m2g_dwi_pipeline.py::m2g_dwi_worker (m2g 95d271f7) step by
step. Only the FSL/AFNI-dependent steps are replaced (see REPORT.md):

  preproc.eddy_correct        -> copy of the input DWI to dwi/preproc/eddy_corrected_data.nii.gz
  make_gtab_and_bmask         -> the REAL m2g function, run with tiny stand-ins for `fslroi`
                                 and `bet` put first on PATH (fsl_shims/)
  DmriReg.gen_tissue / t1w2dwi_align / tissue2dwi_align
                              -> DmriReg is instantiated only for its file names; the tissue
                                 maps it would write are filled from the phantom's WM/GM(/CSF)
                                 maps, and the WM/GM interface (seed mask) is computed with
                                 the same formula m2g's fslmaths call uses
  DmriReg.atlas2t1w2dwi_align -> nearest-neighbour resampling of the (reoriented, resliced)
                                 label file onto the DWI grid, optionally shifted by a given
                                 or auto-chosen world offset, then m2g's own int16 rounding and
                                 "labels > node count -> 0" step
  qa_tractography             -> skipped (fury rendering)

Everything from the b-vector checks on, and build_seed_list, RunTrack(...).run(), make_hdr,
the .trk save, and GraphTools(...).make_graph/summary/save_graph_png/save_graph are m2g's
own code, called with the pipeline's arguments in the pipeline's order.

Python 3.7, run with the m2g virtualenv's interpreter (scripts/m2g-env.sh venv) by
tests/test_m2g_real.py:
  $PY tests/m2g_phantom.py phantom
  $PY tests/m2g_tracking.py --dwi phantom/phantom_dwi.nii.gz --bval phantom/phantom_dwi.bval \
      --bvec phantom/phantom_dwi.bvec --t1w phantom/phantom_T1w.nii.gz --wm phantom/phantom_wm.nii.gz \
      --gm phantom/phantom_gm.nii.gz --brain-mask phantom/phantom_brainmask.nii.gz \
      --parcellation phantom/phantom_labels.nii.gz --outdir out/sub-01/ses-1 --scratch scratch \
      --random-seed 1
The FSL stand-ins and the run's summary (m2gtrack_summary.json) go to --scratch, never into
the output folder, which holds only what m2g writes.
"""

import argparse
import functools
import json
import os
import shutil
import stat
import sys
import time
from datetime import datetime
from pathlib import Path

T0 = time.time()
os.environ["MPLCONFIGDIR"] = "/tmp/"  # as m2g_dwi_pipeline does

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from dipy.io import read_bvals_bvecs  # noqa: E402
from scipy import ndimage  # noqa: E402

HERE = Path(__file__).resolve().parent

FSLROI = """#!{py}
# stand-in for FSL's `fslroi in out tmin tsize` (only the 4D time-range form m2g uses)
import sys, nibabel as nib, numpy as np
src, dst, t0, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
img = nib.load(src)
data = np.asarray(img.dataobj)[..., t0:t0 + n]
if n == 1:
    data = data[..., 0]
nib.save(nib.Nifti1Image(data, img.affine, img.header), dst)
"""

BET = """#!{py}
# stand-in for FSL's `bet in out [-m] [-f f]`: the brain mask is $M2GTRACK_BRAINMASK if set,
# else (b0 > 10% of its 99th percentile) with holes filled
import os, sys, nibabel as nib, numpy as np
from scipy import ndimage
src, dst = sys.argv[1], sys.argv[2]
img = nib.load(src)
data = img.get_fdata()
given = os.environ.get("M2GTRACK_BRAINMASK")
if given:
    mask = np.asarray(nib.load(given).dataobj) > 0
else:
    mask = ndimage.binary_fill_holes(data > 0.1 * np.percentile(data, 99))
base = dst[:-7] if dst.endswith(".nii.gz") else dst
nib.save(nib.Nifti1Image((data * mask).astype(np.float32), img.affine), base + ".nii.gz")
if "-m" in sys.argv:
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), img.affine), base + "_mask.nii.gz")
"""


def make_shims(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("fslroi", FSLROI), ("bet", BET)):
        p = folder / name
        p.write_text(text.format(py=sys.executable))
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"


def resample_to(src_img, ref_img, order=0, offset_mm=(0.0, 0.0, 0.0)):
    """src_img's data on ref_img's grid; reference world point p is read from src at
    p + offset_mm (a pure translation stands in for the registration)."""
    shift = np.eye(4)
    shift[:3, 3] = offset_mm
    m = np.linalg.inv(src_img.affine) @ shift @ ref_img.affine
    data = np.asarray(src_img.dataobj)
    if data.shape == ref_img.shape[:3] and np.allclose(m, np.eye(4)):
        return data.copy()
    return ndimage.affine_transform(
        data.astype(np.float64), m[:3, :3], m[:3, 3], output_shape=ref_img.shape[:3], order=order, mode="constant", cval=0
    )


def auto_offset(label_img, wm, ref_img, step_mm=6.0):
    """The world shift (mm) that puts the most distinct labels under the phantom's WM."""
    world = nib.affines.apply_affine(ref_img.affine, np.argwhere(wm))
    data = np.asarray(label_img.dataobj)
    lab_world = nib.affines.apply_affine(label_img.affine, np.argwhere(data > 0))
    lo = lab_world.min(0) - world.min(0)
    hi = lab_world.max(0) - world.max(0)
    inv = np.linalg.inv(label_img.affine)
    base = nib.affines.apply_affine(inv, world)
    best = (-1, None)
    for dx in np.arange(lo[0], hi[0] + 1e-6, step_mm):
        for dy in np.arange(lo[1], hi[1] + 1e-6, step_mm):
            for dz in np.arange(lo[2], hi[2] + 1e-6, step_mm):
                v = np.rint(base + inv[:3, :3] @ (dx, dy, dz)).astype(int)
                if (v < 0).any() or (v >= data.shape).any():
                    continue
                n = len(np.unique(data[v[:, 0], v[:, 1], v[:, 2]]))
                if n > best[0]:
                    best = (n, (float(dx), float(dy), float(dz)))
    print(f"[m2gtrack] auto atlas offset {best[1]} mm: {best[0]} distinct values under the WM")
    return best[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dwi", required=True)
    ap.add_argument("--bval", required=True)
    ap.add_argument("--bvec", required=True)
    ap.add_argument("--t1w", help="T1w in DWI space (only reoriented/resliced and named, as in m2g); default: the mean b0")
    ap.add_argument("--wm", required=True, help="WM partial-volume map in DWI space -> m2g's wm_in_dwi")
    ap.add_argument("--gm", help="GM partial-volume map -> gm_in_dwi (default: labelled voxels of the first parcellation)")
    ap.add_argument("--csf", help="CSF map -> csf_mask_dwi (default: zeros)")
    ap.add_argument("--brain-mask", help="used by the `bet` stand-in as nodif_B0_mask")
    ap.add_argument("--parcellation", action="append", required=True, help="label image(s); repeatable")
    ap.add_argument(
        "--atlas-offset",
        action="append",
        help="per parcellation: 'x,y,z' world shift in mm (stands in for atlas->dwi registration), "
        "'auto' (most labels under the WM) or 'none' (default)",
    )
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--scratch", required=True, help="the FSL stand-ins and the summary (not m2g's outputs)")
    ap.add_argument("--vox-size", default="2mm")
    ap.add_argument("--mod", default="det")
    ap.add_argument("--track-type", default="local")
    ap.add_argument("--diffusion-model", default="csa")
    ap.add_argument("--seeds", default=20)
    ap.add_argument("--n-cpus", default=1)
    ap.add_argument(
        "--random-seed",
        type=int,
        help="make seeding reproducible (m2g itself seeds from OS entropy: dipy's random_seeds_from_mask is called with random_seed=None)",
    )
    ap.add_argument("--keep-all-labels", action="store_true", help="skip m2g's 'aligned label > number of labels -> 0' step")
    a = ap.parse_args()

    t_import = time.time()
    from m2g import graph, preproc, register, track
    from m2g.utils import gen_utils

    print(f"[m2gtrack] m2g imported in {time.time() - t_import:.1f} s")

    if a.random_seed is not None:
        import dipy.tracking.utils as dtu

        orig = dtu.random_seeds_from_mask

        @functools.wraps(orig)
        def seeded(*args, **kw):
            kw["random_seed"] = a.random_seed
            return orig(*args, **kw)

        dtu.random_seeds_from_mask = seeded  # m2g.track calls utils.random_seeds_from_mask

    dwi, bvals, bvecs, t1w = a.dwi, a.bval, a.bvec, a.t1w
    parcellations = [str(Path(p).resolve()) for p in a.parcellation]
    offsets = (a.atlas_offset or []) + ["none"] * (len(parcellations) - len(a.atlas_offset or []))
    vox_size, mod_type, track_type, mod_func, seeds, n_cpus = (a.vox_size, a.mod, a.track_type, a.diffusion_model, a.seeds, a.n_cpus)
    skull = None  # m2g's defaults (space native: the tracks are the native streamlines)
    times = {}
    startTime = datetime.now()

    # -------- Initial Setup (as in m2g_dwi_worker) -------- #
    outdir = Path(a.outdir).resolve()
    parcellations = gen_utils.as_list(parcellations)
    init_dirs = gen_utils.make_initial_directories(outdir, dwi, parcellations=parcellations)
    scratch = Path(a.scratch).resolve()
    make_shims(scratch / "fsl_shims")
    if a.brain_mask:
        os.environ["M2GTRACK_BRAINMASK"] = str(Path(a.brain_mask).resolve())

    # -------- Preprocessing -------- #
    eddy_corrected_data = init_dirs["dwi_dirs"][1] / "eddy_corrected_data.nii.gz"
    init_dirs["dwi_dirs"][1] = gen_utils.as_directory(init_dirs["dwi_dirs"][1], remove=True, return_as_path=True)
    # REPLACED: preproc.eddy_correct(dwi, str(eddy_corrected_data), 0)  (FSL eddy_correct)
    shutil.copyfile(dwi, eddy_corrected_data)

    bvec_scaled = str(init_dirs["dwi_dirs"][1] / "bvec_scaled.bvec")
    fbval = str(init_dirs["dwi_dirs"][1] / "bval.bval")
    fbvec = str(init_dirs["dwi_dirs"][1] / "bvec.bvec")
    shutil.copyfile(bvecs, fbvec)
    shutil.copyfile(bvals, fbval)
    bvals, bvecs = read_bvals_bvecs(fbval, fbvec)
    bvecs[np.where(np.any(abs(bvecs) >= 10, axis=1) == True)] = [1, 0, 0]  # noqa: E712
    bvecs[np.where(bvals == 0)] = 0
    bvecs_0_loc = np.all(abs(bvecs) == np.array([0, 0, 0]), axis=1)
    if len(bvecs[np.where(np.logical_and(bvals > 50, bvecs_0_loc))]) > 0:
        raise ValueError("corrupted bval/bvecs")
    np.savetxt(fbval, bvals)
    np.savetxt(fbvec, bvecs)
    preproc.rescale_bvec(fbvec, bvec_scaled)
    eddy_corrected_data, bvecs = gen_utils.reorient_dwi(eddy_corrected_data, bvec_scaled, init_dirs["dwi_dirs"][1])
    eddy_corrected_data = gen_utils.match_target_vox_res(eddy_corrected_data, vox_size, outdir, sens="dwi")
    # real m2g function; its `fslroi`/`bet` shell calls hit the stand-ins in fsl_shims/
    gtab, nodif_B0, nodif_B0_mask = gen_utils.make_gtab_and_bmask(fbval, fbvec, eddy_corrected_data, init_dirs["dwi_dirs"][1])
    eddy_corrected_data_img = nib.load(str(eddy_corrected_data))
    hdr = eddy_corrected_data_img.header

    # -------- Registration (REPLACED except for file naming) -------- #
    prep_anat = init_dirs["anat_dirs"][0]
    t1w = gen_utils.reorient_t1w(t1w or nodif_B0, prep_anat)
    t1w = gen_utils.match_target_vox_res(t1w, vox_size, outdir, sens="anat_d")
    os.environ.setdefault("FSLDIR", "/nonexistent-fsl")  # DmriReg.__init__ only builds paths from it
    reg = register.DmriReg(outdir, nodif_B0, nodif_B0_mask, t1w, vox_size, skull, simple=False)

    ref = eddy_corrected_data_img

    def grid(path, order=0):
        return resample_to(nib.load(str(path)), ref, order=order).astype(np.float32)

    def save(arr, path, dtype=np.float32):
        nib.save(nib.Nifti1Image(np.asarray(arr).astype(dtype), ref.affine), str(path))

    wm = grid(a.wm)
    if a.gm:
        gm = grid(a.gm)
    else:
        gm = (grid(parcellations[0]) > 0).astype(np.float32)
    csf = grid(a.csf) if a.csf else np.zeros_like(wm)
    b0mask = np.asarray(nib.load(nodif_B0_mask).dataobj) > 0
    save(wm, reg.wm_in_dwi)  # tissue2dwi_align: flirt -applyxfm of FAST pve_2
    save(gm, reg.gm_in_dwi)  # ... pve_1
    vent_csf = csf >= 0.99  # csf thresholded at 0.99 (+ eroded MNI ventricles: none here)
    save(np.where(vent_csf, csf, 0), reg.csf_mask_dwi)
    save(vent_csf, reg.vent_csf_in_dwi)
    # fslmaths gm_bin -mul wm_bin -add corpuscallosum_dwi -sub vent_csf -mas nodif_B0_mask -bin
    interface = ((gm >= 0.15) & (wm >= 0.15)).astype(np.float32) - vent_csf
    save((interface > 0) & b0mask, reg.wm_gm_int_in_dwi)

    # reg_utils.skullstrip_check(reg, parcellations, outdir, prep_anat, vox_size, reg_style)
    labels_im_file_list, label_info = [], []
    for idx in range(len(parcellations)):
        labels_im_file = gen_utils.reorient_t1w(parcellations[idx], prep_anat)
        labels_im_file = gen_utils.match_target_vox_res(labels_im_file, vox_size, outdir, sens="anat_d")
        orig_lab = nib.load(labels_im_file).get_data().astype("int")
        num = len(np.unique(orig_lab[orig_lab > 0]))
        # REPLACED: dmrireg.atlas2t1w2dwi_align(labels_im_file, dsn=False) (flirt/applywarp)
        lab_img = nib.load(labels_im_file)
        off = offsets[idx]
        if off == "auto":
            off = auto_offset(lab_img, wm > 0, ref)
        elif off in (None, "none"):
            off = (0.0, 0.0, 0.0)
        else:
            off = tuple(float(v) for v in off.split(","))
        atlas_name = gen_utils.get_filename(labels_im_file)
        dwi_aligned_atlas = f"{reg.reg_anat}/{atlas_name}_aligned_atlas.nii.gz"
        atlas_data = np.around(resample_to(lab_img, ref, order=0, offset_mm=off)).astype("int16")
        # m2g's own post-processing in atlas2t1w2dwi_align:
        node_num = len(np.unique(atlas_data))
        zeroed = sorted(int(v) for v in np.unique(atlas_data[atlas_data > node_num]))
        if not a.keep_all_labels:
            atlas_data[atlas_data > node_num] = 0
        nib.save(nib.Nifti1Image(atlas_data.astype(np.int32), affine=ref.affine), dwi_aligned_atlas)
        align_lab = nib.load(dwi_aligned_atlas).get_data().astype("int")
        num2 = len(np.unique(align_lab[align_lab > 0]))
        if num != num2:
            print("WARNING: The atlas has lost an roi due to alignment! (m2g skullstrip_check message)")
        labels_im_file_list.append(dwi_aligned_atlas)
        label_info.append(
            dict(
                parcellation=parcellations[idx],
                offset_mm=list(off),
                labels_in_atlas=num,
                labels_in_dwi_space=num2,
                zeroed_by_node_num_rule=zeroed,
            )
        )
    times["preprocessing+replaced_registration_s"] = round(time.time() - T0, 1)

    # -------- Tensor Fitting and Fiber Tractography (m2g code, pipeline arguments) -------- #
    prep_track = init_dirs["dwi_dirs"][0]
    start_time = time.time()
    # m2g: str(init_dirs["qa_dirs"][6] / "/Tractography_Model_Peak_Directions.png") == "/Tractography_..."
    # (leading "/" makes pathlib drop the folder: the QA png lands in the filesystem root). Fixed here:
    qa_tensor = str(init_dirs["qa_dirs"][6] / "Tractography_Model_Peak_Directions.png")
    seeds = track.build_seed_list(reg.wm_gm_int_in_dwi, np.eye(4), dens=int(seeds))
    print("Using " + str(len(seeds)) + " seeds...")
    trct = track.RunTrack(
        eddy_corrected_data,
        nodif_B0_mask,
        reg.gm_in_dwi,
        reg.vent_csf_in_dwi,
        reg.csf_mask_dwi,
        reg.wm_in_dwi,
        gtab,
        mod_type,
        track_type,
        mod_func,
        qa_tensor,
        seeds,
        np.eye(4),
    )
    streamlines = trct.run()
    n_before = len(trct.streamlines)
    trk_hdr = trct.make_hdr(streamlines, hdr)
    tractogram = nib.streamlines.Tractogram(streamlines, affine_to_rasmm=trk_hdr["voxel_to_rasmm"])
    trkfile = nib.streamlines.trk.TrkFile(tractogram, header=trk_hdr)
    streams = os.path.join(prep_track, "streamlines.trk")
    nib.streamlines.save(trkfile, streams)
    times["tractography_s"] = round(time.time() - start_time, 1)
    print(f"Tractography runtime: {np.round(time.time() - start_time, 1)}")

    # -------- Connectome Estimation (m2g code, pipeline arguments) -------- #
    start_time = time.time()
    results = []
    for idx in range(len(parcellations)):
        tracks = streamlines
        g1 = graph.GraphTools(
            attr=parcellations[idx],
            rois=labels_im_file_list[idx],
            tracks=tracks,
            affine=np.eye(4),
            outdir=outdir,
            connectome_path=init_dirs["connectomes"][idx],
            n_cpus=n_cpus,
        )
        g1.g = g1.make_graph()
        g1.summary()
        g1.save_graph_png(init_dirs["qa_dirs"][3], init_dirs["connectomes"][idx])
        g1.save_graph(init_dirs["connectomes"][idx])
        lost = Path(init_dirs["connectomes"][idx]).parent / "lost_roi.csv"
        results.append(
            dict(
                label_info[idx],
                connectome=init_dirs["connectomes"][idx],
                nodes=g1.g.number_of_nodes(),
                edges=g1.g.number_of_edges(),
                total_weight=float(sum(w for _, _, w in g1.g.edges(data="weight"))),
                lost_roi_csv=str(lost) if lost.exists() else None,
            )
        )
    times["graphs_s"] = round(time.time() - start_time, 1)
    times["total_s"] = round(time.time() - T0, 1)
    # REPLACED/skipped: qa_tractography(streams, ...) (fury rendering)

    summary = dict(
        m2g_exe_time=str(datetime.now() - startTime),
        seeds=int(len(seeds)),
        streamlines_tracked=int(n_before),
        streamlines_kept_gt60pts=int(len(streamlines)),
        trk=streams,
        times=times,
        graphs=results,
    )
    (scratch / "m2gtrack_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("[m2gtrack] " + json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
