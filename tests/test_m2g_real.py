"""The real m2g (the pinned 95d271f7, in a CPython 3.7 virtualenv with its own requirements:
scripts/m2g-env.sh) takes what this project gives it: every command line the project can
write goes through m2g's own parser, and every naming case the project's discovery accepts,
laid out by the scan runner as ``ndmg-scan`` lays it out, goes through m2g's main up to its
diffusion worker (its BIDS check, its atlases, its pybids 0.12 input discovery), which must
receive exactly the scan's DWI, bval, bvec and T1w.

Marked ``m2g`` (make test-m2g; CI runs it). Without CPython 3.7 or the pinned sources the
module is skipped with one line naming what is missing (CI fails instead).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import ENDPOINT, ROOT
from m2g_sources import NEUROPARC_TARBALL, require_m2g_sources, third_party

pytestmark = pytest.mark.m2g

DRIVER = Path(__file__).with_name("m2g_driver.py")
BUCKET = "lab-data"


@pytest.fixture(scope="module")
def m2g_python() -> Path:
    """The interpreter of a virtualenv holding m2g 95d271f7 and its requirements."""
    require_m2g_sources(python=True)
    built = subprocess.run([str(ROOT / "scripts/m2g-env.sh"), "venv"], capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr
    return Path(built.stdout.strip()) / "bin/python"


@pytest.fixture(scope="module")
def atlas_home(tmp_path_factory) -> Path:
    """A HOME whose ~/.m2g/m2g_atlases is neuroparc at the pinned commit: where m2g looks for
    its atlases outside its image (m2g_bids.get_atlas_dir)."""
    home = tmp_path_factory.mktemp("m2g-home")
    with tarfile.open(third_party() / NEUROPARC_TARBALL) as archive:
        archive.extractall(home / ".m2g", filter="data")
    (home / ".m2g" / NEUROPARC_TARBALL.split("-atlases")[0]).rename(home / ".m2g/m2g_atlases")
    return home


def run_m2g(python: Path, mode: str, cases: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """Each case through the real m2g (tests/m2g_driver.py): one process for all of them,
    since importing m2g takes seconds."""
    cases_file, out_file = tmp_path / f"{mode}-cases.json", tmp_path / f"{mode}-results.json"
    cases_file.write_text(json.dumps(cases))
    done = subprocess.run([str(python), str(DRIVER), mode, str(cases_file), str(out_file)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out_file.read_text())


# -------------------------------------------------------------------------------- the parser
def m2g_commands() -> list[tuple[str, list[str], dict[str, Any]]]:
    """Every command line the m2g adapter can write: the defaults, then each value of each
    option the form offers (every atlas at every voxel size), for a scan with a session and
    one without: (what it is, the argv after ``m2g``, the options it was made from)."""
    from ndmg_cloud.core.atlases import catalogue
    from ndmg_cloud.core.bids import Scan
    from ndmg_cloud.core.pipelines import M2G_LABELS, M2G_SKULL, PIPELINES

    from datasets import sessionless_scan

    m2g = PIPELINES["m2g"]
    dwi = "sub-01/ses-retest/dwi/sub-01_ses-retest_dwi"
    with_session = Scan(
        "sub-01_ses-retest", "01", "retest", {}, f"{dwi}.nii.gz", f"{dwi}.bval", f"{dwi}.bvec", "sub-01/anat/sub-01_T1w.nii.gz"
    )
    names = catalogue("m2g")

    def usable(voxelsize: str) -> list[str]:  # the atlases the options check lets through
        return [name for name in names.names(voxelsize) if names.unusable(name, M2G_LABELS.largest) is None]

    variants: list[tuple[str, dict[str, Any]]] = [("defaults", {})]
    for voxelsize in ("1mm", "2mm", "4mm"):
        for name in usable(voxelsize):
            variants.append((f"parcellation {name} at {voxelsize}", {"voxelsize": voxelsize, "parcellation": [name]}))
    variants.append(("every 2mm atlas at once", {"parcellation": usable("2mm")}))
    for option, values in {
        "space": ("native", "native_dsn"),
        "mod": ("det", "prob"),
        "track_type": ("local", "particle"),
        "diffusion_model": ("csa", "csd"),
        "skull": M2G_SKULL,
        "seeds": (1, 20, 1000),
        "n_cpus": (1, 2, 96),
        "mem_gb": (1, 16, 768),
    }.items():
        variants += [(f"{option} {value}", {option: value}) for value in values]
    commands = []
    for scan in (with_session, sessionless_scan()):
        for what, given in variants:
            options = m2g.resolve_options(given)
            argv = m2g.command(scan, options, "/work/input", "/work/output")
            assert argv[0] == "m2g"
            commands.append((f"{what}, {scan.scan_id}", argv[1:], options))
    return commands


def test_m2g_parses_every_command_the_project_can_write(m2g_python, tmp_path):
    from ndmg_cloud.core.pipelines import PIPELINES

    commands = m2g_commands()
    results = run_m2g(m2g_python, "parse", [{"argv": argv, "home": None} for _, argv, _ in commands], tmp_path)

    refused = [
        f"{what}: m2g exited {r['code']}: {r['stderr'].strip()[-300:]}"
        for (what, _, _), r in zip(commands, results, strict=True)
        if r["outcome"] != "stopped"
    ]
    assert not refused, "m2g's parser refused commands the project writes:\n" + "\n".join(refused)
    m2g = PIPELINES["m2g"]
    for (what, argv, options), result in zip(commands, results, strict=True):
        got = result["parsed"]
        # what m2g's main reads from its parser is what the options meant
        assert got["pipeline"] == "dwi", what
        assert got["participant_label"] == [argv[argv.index("--participant_label") + 1]], what
        assert got["parcellation"] == [atlas.file for atlas in m2g.atlases(options)], what
        for key in ("voxelsize", "mod", "track_type", "diffusion_model", "space"):
            assert got[key] == options[key], (what, key)
        assert int(got["seeds"]) == options["seeds"], what
        for key in ("skull", "n_cpus", "mem_gb"):
            assert got[key] == (str(options[key]) if key in options else {"skull": None, "n_cpus": 1, "mem_gb": 20}[key]), (what, key)
        assert (got["input_dir"], got["output_dir"]) == ("/work/input", "/work/output"), what
    assert len(commands) > 300


def test_a_flag_m2g_does_not_know_is_refused_by_its_parser(m2g_python, tmp_path):
    """The driver tells a refused command from an accepted one (else the test above proves
    nothing): the older m2g's --filtering_type is refused, with argparse's exit 2."""
    [result] = run_m2g(m2g_python, "parse", [{"argv": ["--filtering_type", "x", "/in", "/out"], "home": None}], tmp_path)
    assert result["outcome"] == "exit" and result["code"] == 2
    assert "unrecognized arguments: --filtering_type" in result["stderr"]


# ----------------------------------------------------------------------------- discovery
T1W = "anat/{subject}_T1w"
# (what, the scan's DWI without extension, its T1w, its bval/bvec stem if inherited)
NAMING_CASES: list[tuple[str, str, str, str | None]] = [
    ("plain", "sub-01/ses-1/dwi/sub-01_ses-1_dwi", "sub-01/ses-1/anat/sub-01_ses-1_T1w", None),
    ("sessionless", "sub-01/dwi/sub-01_dwi", "sub-01/anat/sub-01_T1w", None),
    ("session label not a number", "sub-01/ses-retest/dwi/sub-01_ses-retest_dwi", "sub-01/ses-retest/anat/sub-01_ses-retest_T1w", None),
    ("acq-", "sub-01/ses-1/dwi/sub-01_ses-1_acq-b1000_dwi", "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_T1w", None),
    ("dir-", "sub-01/ses-1/dwi/sub-01_ses-1_dir-AP_dwi", "sub-01/ses-1/anat/sub-01_ses-1_T1w", None),
    ("run-", "sub-01/ses-1/dwi/sub-01_ses-1_run-02_dwi", "sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w", None),
    ("run- not a number", "sub-01/ses-1/dwi/sub-01_ses-1_run-a_dwi", "sub-01/ses-1/anat/sub-01_ses-1_run-b_T1w", None),
    ("part-", "sub-01/ses-1/dwi/sub-01_ses-1_part-mag_dwi", "sub-01/ses-1/anat/sub-01_ses-1_part-mag_T1w", None),
    ("rec-", "sub-01/ses-1/dwi/sub-01_ses-1_rec-norm_dwi", "sub-01/ses-1/anat/sub-01_ses-1_rec-norm_T1w", None),
    ("ce-", "sub-01/ses-1/dwi/sub-01_ses-1_dwi", "sub-01/ses-1/anat/sub-01_ses-1_ce-gad_T1w", None),
    ("chunk-", "sub-01/ses-1/dwi/sub-01_ses-1_chunk-1_dwi", "sub-01/ses-1/anat/sub-01_ses-1_chunk-1_T1w", None),
    ("task-", "sub-01/ses-1/dwi/sub-01_ses-1_task-rest_dwi", "sub-01/ses-1/anat/sub-01_ses-1_task-rest_T1w", None),
    ("desc-", "sub-01/ses-1/dwi/sub-01_ses-1_desc-raw_dwi", "sub-01/ses-1/anat/sub-01_ses-1_desc-raw_T1w", None),
    ("space-", "sub-01/ses-1/dwi/sub-01_ses-1_space-orig_dwi", "sub-01/ses-1/anat/sub-01_ses-1_space-orig_T1w", None),
    ("echo-", "sub-01/ses-1/dwi/sub-01_ses-1_dwi", "sub-01/ses-1/anat/sub-01_ses-1_echo-1_T1w", None),
    (
        "entities out of BIDS order",
        "sub-01/ses-1/dwi/sub-01_ses-1_run-1_acq-b1000_dwi",
        "sub-01/ses-1/anat/sub-01_ses-1_rec-x_acq-y_T1w",
        None,
    ),
    ("inherited bval/bvec", "sub-01/ses-1/dwi/sub-01_ses-1_dwi", "sub-01/ses-1/anat/sub-01_ses-1_T1w", "dwi"),
    ("inherited from the subject", "sub-01/ses-1/dwi/sub-01_ses-1_acq-x_dwi", "sub-01/anat/sub-01_T1w", "sub-01/sub-01_acq-x_dwi"),
    ("subject-level T1w", "sub-01/ses-1/dwi/sub-01_ses-1_dwi", "sub-01/anat/sub-01_T1w", None),
    ("uncompressed NIfTI", "sub-01/ses-1/dwi/sub-01_ses-1_dwi", "sub-01/ses-1/anat/sub-01_ses-1_T1w", None),
]


def naming_case_keys(dwi: str, t1w: str, inherited: str | None, extension: str) -> list[str]:
    gradients = inherited or dwi
    keys = [f"{dwi}{extension}", f"{gradients}.bval", f"{gradients}.bvec", f"{t1w}{extension}", "dataset_description.json"]
    keys.append(f"{dwi}.json")  # a sidecar: never part of m2g's input
    return keys


def test_m2g_discovers_exactly_the_scans_files_in_every_naming_case_the_project_accepts(m2g_python, atlas_home, s3, tmp_path):
    from ndmg_cloud.participant.discover import discover
    from ndmg_cloud.participant.jobspec import build_spec
    from ndmg_cloud.participant.params import resolve
    from ndmg_cloud.scan.runner import ScanRun

    s3.create_bucket(Bucket=BUCKET)
    cases, expected = [], []
    for n, (what, dwi, t1w, inherited) in enumerate(NAMING_CASES):
        extension = ".nii" if what == "uncompressed NIfTI" else ".nii.gz"
        prefix = f"case{n}/"
        for key in naming_case_keys(dwi, t1w, inherited, extension):
            body = b'{"Name": "case", "BIDSVersion": "1.9.0"}' if key.endswith(".json") else b"x" * 16
            s3.put_object(Bucket=BUCKET, Key=prefix + key, Body=body)
        config = resolve(
            {"bucket": BUCKET, "bidsdir": prefix, "pipeline": "m2g", "backend": "local", "jobdir": str(tmp_path / "jobs")}, "r"
        )
        found = discover(config, s3)
        assert [scan.reason for scan in found.scans] == [None], f"{what}: the project's discovery refused it"
        [scan] = found.valid
        assert scan.dwi == dwi + extension and scan.t1w == t1w + extension, what
        run = ScanRun(build_spec(config, scan), s3, tmp_path / f"work{n}")
        run.download_inputs()  # the work folder, as ndmg-scan lays it out
        argv = [run.local_path(arg) for arg in run.pipeline_command()]
        cases.append({"argv": argv[1:], "home": str(atlas_home)})
        places = run.work_files()
        expected.append(
            (
                what,
                {
                    "dwi": str(places["dwi"]),
                    "bvals": str(places["bval"]),
                    "bvecs": str(places["bvec"]),
                    "t1w": str(places["t1w"]),
                    "outdir": f"{run.output_dir}/sub-{scan.subject}/ses-{scan.session or '1'}",
                },
            )
        )

    results = run_m2g(m2g_python, "discover", cases, tmp_path)

    problems = []
    for (what, files), result in zip(expected, results, strict=True):
        if result["outcome"] != "returned":
            problems.append(f"{what}: m2g failed: {result.get('error') or result.get('code')}")
        elif [{k: call[k] for k in files} for call in result["worker_calls"]] != [files]:
            problems.append(f"{what}: m2g's worker got {result['worker_calls']}, not {files}")
    assert not problems, "\n".join(problems)
    # and with the atlases the command named, at the command's voxel size
    atlases = atlas_home / ".m2g/m2g_atlases/atlases"
    for result in results:
        [call] = result["worker_calls"]
        assert sorted(Path(p).name for p in call["parcellations"]) == [
            "AAL_space-MNI152NLin6_res-2x2x2.nii.gz",
            "Desikan_space-MNI152NLin6_res-2x2x2.nii.gz",
        ]
        assert call["atlas"] == str(atlases / "reference_brains/MNI152NLin6_res-2x2x2_T1w.nii.gz")


def test_m2g_finds_no_scan_under_the_datasets_own_names_that_it_refuses(m2g_python, atlas_home, tmp_path):
    """Why the work folder renames: m2g's pybids drops a DWI named with task- (the measured
    'No pairs found') and cannot unpack a T1w named with echo-. If m2g ever took these names,
    the renaming could go (this test would say so)."""
    cases = []
    for n, (dwi, t1w) in enumerate(
        (
            ("sub-01_ses-1_task-rest_dwi", "sub-01_ses-1_T1w"),
            ("sub-01_ses-1_dwi", "sub-01_ses-1_echo-1_T1w"),
        )
    ):
        root = tmp_path / f"raw{n}"
        for rel in (f"dwi/{dwi}.nii.gz", f"dwi/{dwi}.bval", f"dwi/{dwi}.bvec", f"anat/{t1w}.nii.gz"):
            (root / "sub-01/ses-1" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "sub-01/ses-1" / rel).write_bytes(b"x" * 16)
        (root / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.9.0"}')
        argv = [
            "--pipeline",
            "dwi",
            "--participant_label",
            "01",
            "--session_label",
            "1",
            "--parcellation",
            "AAL_space-MNI152NLin6_res-2x2x2.nii.gz",
            "--voxelsize",
            "2mm",
        ]
        cases.append({"argv": [*argv, str(root), str(tmp_path / f"out{n}")], "home": str(atlas_home)})

    task, echo = run_m2g(m2g_python, "discover", cases, tmp_path)

    assert task["outcome"] == "error" and task["error"].startswith("ValueError: No pairs found")
    assert echo["outcome"] == "error" and "not enough values to unpack" in echo["error"]


# ---------------------------------------------------------------------- tracking and graphs
PHANTOM_EDGES = {(1, 2), (3, 4), (5, 6), (1, 7), (2, 7), (5, 7), (6, 7)}  # tests/m2g_phantom.py's design


@pytest.fixture(scope="module")
def phantom(m2g_python, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("m2g-phantom")
    made = subprocess.run(
        [str(m2g_python), str(DRIVER.with_name("m2g_phantom.py")), str(folder)], capture_output=True, text=True, timeout=300
    )
    assert made.returncode == 0, made.stderr[-3000:]
    return folder


def test_m2gs_own_tracking_and_graph_make_connectomes_the_runner_verifier_and_group_level_take(m2g_python, phantom, s3, tmp_path):
    """Two scans (one session-less) of a phantom through what ndmg-scan does around m2g: the
    work folder, m2g's own tracking (m2g.track) and graph (m2g.graph.GraphTools) code as its
    diffusion worker calls it (tests/m2g_tracking.py: the FSL steps stood in for), then the
    upload under the spec's expected outputs, the verifier and the group level."""
    from ndmg_cloud.core.atlases import catalogue
    from ndmg_cloud.group.compare import run_group
    from ndmg_cloud.participant.discover import discover
    from ndmg_cloud.participant.jobspec import build_spec
    from ndmg_cloud.participant.params import resolve
    from ndmg_cloud.participant.verify import completed_scans
    from ndmg_cloud.report.runreport import RunReport
    from ndmg_cloud.scan.runner import ScanRun

    s3.create_bucket(Bucket=BUCKET)
    for folder, stem in (("sub-01/ses-1", "sub-01_ses-1"), ("sub-02", "sub-02")):
        for ext in ("dwi.nii.gz", "dwi.bval", "dwi.bvec"):
            s3.upload_file(str(phantom / f"phantom_{ext}"), BUCKET, f"ds/{folder}/dwi/{stem}_{ext}")
        s3.upload_file(str(phantom / "phantom_T1w.nii.gz"), BUCKET, f"ds/{folder}/anat/{stem}_T1w.nii.gz")
    config = resolve({"bucket": BUCKET, "bidsdir": "ds", "pipeline": "m2g", "parcellation": ["AAL"]}, "manual__m2g")
    # the phantom's labels under the file name of the atlas the command asks for, as the
    # image's /m2g_atlases holds it: the names flow through m2g as in a real run
    atlas = tmp_path / "m2g_atlases" / catalogue("m2g").get("AAL", "2mm").file
    atlas.parent.mkdir()
    atlas.write_bytes((phantom / "phantom_labels.nii.gz").read_bytes())
    scans = discover(config, s3).valid
    assert [scan.scan_id for scan in scans] == ["sub-01_ses-1", "sub-02"]
    for n, scan in enumerate(scans):
        run = ScanRun(build_spec(config, scan), s3, tmp_path / scan.scan_id)
        run.download_inputs()
        places = run.work_files()
        outdir = run.output_dir / f"sub-{scan.subject}" / f"ses-{scan.session or '1'}"
        tracked = subprocess.run(
            [str(m2g_python), str(DRIVER.with_name("m2g_tracking.py")), "--dwi", str(places["dwi"]), "--bval", str(places["bval"])]
            + ["--bvec", str(places["bvec"]), "--t1w", str(places["t1w"]), "--parcellation", str(atlas)]
            + ["--wm", str(phantom / "phantom_wm.nii.gz"), "--gm", str(phantom / "phantom_gm.nii.gz")]
            + ["--brain-mask", str(phantom / "phantom_brainmask.nii.gz"), "--outdir", str(outdir)]
            + ["--scratch", str(tmp_path / f"scratch{n}"), "--random-seed", "1"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert tracked.returncode == 0, tracked.stdout[-2000:] + tracked.stderr[-3000:]
        summary = json.loads((tmp_path / f"scratch{n}/m2gtrack_summary.json").read_text())
        assert summary["streamlines_kept_gt60pts"] > 1000, summary
        run.upload_outputs()  # fails if an expected output is missing
        run.write_manifest(0)
        assert run.spec.expected_outputs == [
            f"connectomes_d/AAL_space-MNI152NLin6_res-2x2x2/{scan.dwi_stem}_AAL_space-MNI152NLin6_res-2x2x2_connectome.csv"
        ]
        assert not any("ses-1" in output.path for output in run.outputs if scan.session is None)

    done, _ = completed_scans(config, scans, s3)
    assert sorted(done) == ["sub-01_ses-1", "sub-02"]
    report = RunReport.from_dict(
        {  # the rows the verifier gives, in the report the participant run writes
            "dataset": "ds",
            "run_id": config.run_id,
            "pipeline": "m2g",
            "options": config.options,
            "input": config.input_root.uri(),
            "output": config.output_root.uri(),
            "started_at": "",
            "scans": [done[scan_id].to_dict() for scan_id in sorted(done)],
        }
    )
    uri = f"{config.output_root.uri()}reports/{config.run_id}/report.json"
    s3.put_object(Bucket=BUCKET, Key=uri.split("/", 3)[3], Body=json.dumps(report.to_dict()).encode())
    s3.put_object(Bucket=BUCKET, Key="ds/derivatives/ndmg/dataset_description.json", Body=b'{"Name": "m2g", "DatasetType": "derivative"}')

    [group] = run_group(s3, uri, permutations=10, write=False)

    assert group.parcellation == "AAL_space-MNI152NLin6_res-2x2x2"
    assert sorted(graph.scan_id for graph in group.scans) == ["sub-01_ses-1", "sub-02"] and not group.left_out
    # node = the label's rank among the atlas's values (background 0 is node 0), so labels 1-7
    # are nodes 1-7; the mean connectome holds node k at index k - 1
    edges = {(int(i) + 1, int(j) + 1) for i, j in zip(*np.nonzero(np.triu(group.mean)), strict=True)}
    assert edges == PHANTOM_EDGES
    assert all(graph.stats.row()["edges"] == len(PHANTOM_EDGES) for graph in group.scans)


# ------------------------------------------------------ the console script and the canary
@pytest.fixture
def m2g_scan(m2g_python, atlas_home, phantom, s3, tmp_path):
    """A phantom scan's spec written where a run writes it, its work folder laid out by the
    runner, and an "image" of this machine: the real m2g console script on PATH, neuroparc as
    its atlases, the contract ndmg-image-contract builds from them (as the Dockerfile's last
    step), and no FSL or AFNI."""
    from ndmg_cloud.participant.discover import discover
    from ndmg_cloud.participant.jobspec import build_spec
    from ndmg_cloud.participant.params import resolve
    from ndmg_cloud.scan.runner import ScanRun

    from images import Image, build_contract

    s3.create_bucket(Bucket=BUCKET)
    for ext in ("dwi.nii.gz", "dwi.bval", "dwi.bvec"):
        s3.upload_file(str(phantom / f"phantom_{ext}"), BUCKET, f"ds/sub-01/ses-1/dwi/sub-01_ses-1_task-x_{ext}")
    s3.upload_file(str(phantom / "phantom_T1w.nii.gz"), BUCKET, "ds/sub-01/ses-1/anat/sub-01_ses-1_echo-1_T1w.nii.gz")
    config = resolve({"bucket": BUCKET, "bidsdir": "ds", "pipeline": "m2g", "parcellation": ["AAL"]}, "manual__canary")
    [scan] = discover(config, s3).valid
    spec = build_spec(config, scan)
    spec.write(s3)
    run = ScanRun(spec, s3, tmp_path / "work")
    run.download_inputs()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "m2g").symlink_to(m2g_python.parent / "m2g")
    image = Image(bin_dir, atlas_home / ".m2g/m2g_atlases", tmp_path / "image-contract.json")
    built = build_contract(image)
    assert built.returncode == 0, built.stderr
    root = tmp_path / "root"  # the image's `/`
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSL", "AFNI"))}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", HOME=str(atlas_home), NDMG_IMAGE_CONTRACT=str(image.contract))
    env.update(NDMG_ATLAS_DIR=str(image.atlas_dir), NDMG_TOOLCHAIN_ROOT=str(root), AWS_ENDPOINT_URL=ENDPOINT)
    return {"run": run, "spec": spec, "image": image, "env": env}


def m2g_and_canary(m2g_scan, **env_extra):
    """The real m2g on the runner's work folder, with the scan's command; then the canary
    (``ndmg-scan --self-check``) for the same scan in the same environment."""
    run, env = m2g_scan["run"], {**m2g_scan["env"], **env_extra}
    command = [run.local_path(arg) for arg in run.pipeline_command()]
    m2g = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**env, "MPLCONFIGDIR": str(run.workdir / "mpl")})
    canary = subprocess.run(
        [sys.executable, "-m", "ndmg_cloud.scan.runner", "--self-check", "--spec", m2g_scan["spec"].spec_uri],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    checks = {line.split()[1]: line for line in canary.stdout.splitlines() if line.startswith(("ok  ", "FAIL"))}
    return m2g, canary, checks


def test_without_fsl_m2g_stops_at_its_dependency_check_and_the_canary_says_the_same(m2g_scan):
    m2g, canary, checks = m2g_and_canary(m2g_scan)

    assert m2g.returncode == 1
    said = "AssertionError: You do not have FSL installed!"
    assert said in m2g.stderr.strip().splitlines()[-1]
    assert canary.returncode == 1 and checks["tools"].startswith("FAIL")
    assert f"its own dependency check failed: {said}" in checks["tools"]
    # the rest of the image is right: the real m2g's parser took the command, the atlases are there
    assert [name for name, line in checks.items() if line.startswith("FAIL")] == ["tools"]
    assert "checked by the program's own parser" in checks["command"]
    # the contract the build step wrote from the real m2g: its Python, packages and toolchain
    contract = json.loads(m2g_scan["image"].contract.read_text())
    assert contract["python"]["version"] == "3.7.16"
    packages = contract["python"]["packages"]
    assert (packages["dipy"], packages["pybids"], packages["nibabel"], packages["m2g"]) == ("1.1.1", "0.12.0", "3.2.2", "0.3.0")
    assert contract["toolchain"] == {"AFNI": "not found (afni is not on PATH)", "FSL": "not found ($FSLDIR unset)"}
    shown = "Python 3.7.16 (dipy 1.1.1, nibabel 3.2.2, numpy 1.20.1, pybids 0.12.0, networkx 2.4, vtk 9.1.0)"
    assert f"{shown}; AFNI not found (afni is not on PATH); FSL not found ($FSLDIR unset))" in checks["contract"]


def test_past_its_dependency_check_the_real_m2g_fails_at_its_first_fsl_step_which_the_canary_names(m2g_scan, tmp_path):
    """$FSLDIR set and an `afni` on PATH (m2g only asks `which afni`): the real m2g parses the
    command, checks the BIDS folder, finds the atlases and the scan's files (named plainly by
    the runner: this scan's own names have task- and echo-), starts its diffusion worker and
    fails at eddy_correct, its first FSL step; the canary names what that step lacks."""
    fsl = tmp_path / "fsl"
    fsl.mkdir()
    afni = m2g_scan["image"].bin_dir / "afni"
    afni.write_text("#!/bin/sh\nexit 0\n")
    afni.chmod(0o755)

    m2g, canary, checks = m2g_and_canary(m2g_scan, FSLDIR=str(fsl), FSLOUTPUTTYPE="NIFTI_GZ")

    work_dwi = m2g_scan["run"].work_files()["dwi"]
    assert m2g.returncode == 1
    assert f"Running shell command: . /venv/bin/activate && eddy_correct {work_dwi}" in m2g.stdout
    assert "subprocess.CalledProcessError" in m2g.stderr and "eddy_correct" in m2g.stderr.strip().splitlines()[-1]
    assert canary.returncode == 1 and checks["tools"].startswith("FAIL")
    assert "eddy_correct" in checks["tools"] and ", /venv/bin/activate" in checks["tools"]
    assert "own dependency check" not in checks["tools"]  # m2g's own check passes here, as it did for m2g


# ------------------------------------------------------------------- the base's packages
def old_package(folder: Path, name: str, version: str, module: str | None = None) -> None:
    """Metadata of ``name`` at ``version`` in ``folder`` (put ahead of the real one on the
    path: what pip sees), and, when ``module`` is given, that module as an older release
    would lack what m2g imports from it."""
    dist = folder / f"{name}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if module:
        (folder / module).mkdir()
        (folder / module / "__init__.py").write_text(f"__version__ = {version!r}\n")


def test_a_base_m2g_cannot_import_on_is_refused_naming_its_older_packages(m2g_python, tmp_path):
    """container/check-m2g-requirements.py, which Dockerfile.m2g runs on the base's Python
    before m2g's setup.py (which imports m2g): the real m2g source imported with this tier's
    packages passes; with a nibabel older than requirements.txt that still imports (as in m2g's
    own image, whose Dockerfile installs nibabel 3.0.0 last) it passes and says so; with a dipy
    so old that m2g's import fails (a base from before 2022-03-22) it refuses, naming it."""
    check = ROOT / "container/check-m2g-requirements.py"
    with tarfile.open(third_party() / "m2g-95d271f7.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    source = tmp_path / "m2g-95d271f7"

    def checked(older: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl"), **({"PYTHONPATH": str(older)} if older else {})}
        return subprocess.run([str(m2g_python), str(check), str(source)], capture_output=True, text=True, timeout=300, env=env)

    ok = checked()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "check-m2g-requirements: the pinned m2g imports with this base's Python 3.7.16 packages"

    old_package(tmp_path / "like-m2gs-image", "nibabel", "3.0.0")
    differs = checked(tmp_path / "like-m2gs-image")
    assert differs.returncode == 0, differs.stderr
    assert "these differ from its requirements.txt (as in m2g's own image): nibabel 3.0.0 (needs 3.2.2)" in differs.stdout

    old_package(tmp_path / "before-2022", "dipy", "0.16.0", module="dipy")
    refused = checked(tmp_path / "before-2022")
    assert refused.returncode == 1
    message = refused.stderr.strip()
    assert message.startswith("check-m2g-requirements: the pinned m2g cannot be imported with this base's Python 3.7.16 packages")
    assert "ModuleNotFoundError: No module named 'dipy." in message
    assert "Missing or older than its requirements.txt: dipy 0.16.0 (needs 1.1.1)." in message
    assert "Build on a neurodata/m2g image from 2022-03-22 or later" in message
