"""The scan runner as a process, against the local S3, with the real lite pipeline."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ENDPOINT
from datasets import listing, write_specs
from faults import FaultProxy, Rule
from helpers import read_json

BUCKET = "lab-data"


def run_runner(spec_uri: str, *extra: str, endpoint: str = ENDPOINT, wait: bool = True, env_extra=None):
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "NDMG_S3_MAX_ATTEMPTS": "3", **(env_extra or {})}
    cmd = [sys.executable, "-m", "ndmg_cloud.scan.runner", "--spec", spec_uri, *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def run_through_faults(spec_uri: str, rules: list[Rule]):
    """Run the runner with its S3 traffic through a fault-injecting proxy."""
    proxy = FaultProxy(ENDPOINT, rules)
    url = proxy.start()
    try:
        return run_runner(spec_uri, endpoint=url), proxy
    finally:
        proxy.stop()


def key_of(uri: str) -> str:
    return uri.split("/", 3)[3]


def test_runner_produces_graphs_and_the_manifest_last(s3, phantom_dirs):
    config, specs = write_specs(s3, phantom_dirs["plain"])
    before = listing(s3, BUCKET, "ds/sub-")
    spec = specs["sub-01_ses-1"]
    done, recorder = run_through_faults(spec["spec_uri"], [])  # no faults: it records the requests

    assert done.returncode == 0, done.stderr
    out = key_of(spec["output_prefix"])
    keys = set(listing(s3, BUCKET, out))
    graph = out + "connectomes_d/grid3/sub-01_ses-1_dwi_grid3_connectome.csv"
    assert graph in keys
    assert out + "qa_d/graphs_plotting/sub-01_ses-1_dwi_grid3_connectome.png" in keys
    edges = s3.get_object(Bucket=BUCKET, Key=graph)["Body"].read().decode().splitlines()
    assert edges and all(len(line.split(" ")) == 3 for line in edges)

    manifest = read_json(s3, spec["manifest"])
    assert manifest["status"] == "success" and manifest["exit_code"] == 0
    assert manifest["pipeline"]["name"] == "lite"
    assert manifest["inputs"]["dwi"]["etag"] == s3.head_object(Bucket=BUCKET, Key="ds/sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz")[
        "ETag"
    ].strip('"')
    by_path = {o["path"]: o for o in manifest["outputs"]}
    body = s3.get_object(Bucket=BUCKET, Key=graph)["Body"].read()
    rel = "connectomes_d/grid3/sub-01_ses-1_dwi_grid3_connectome.csv"
    assert by_path[rel]["sha256"] == hashlib.sha256(body).hexdigest()
    assert by_path[rel]["size"] == len(body)
    assert manifest["log_tail"]
    # no scratch, no ACL grants beyond the owner, inputs untouched
    assert not any("/tmp_d/" in k or "/tmp/" in k for k in keys)
    grants = s3.get_object_acl(Bucket=BUCKET, Key=graph)["Grants"]
    assert all("AllUsers" not in json.dumps(g) and "AuthenticatedUsers" not in json.dumps(g) for g in grants)
    assert listing(s3, BUCKET, "ds/sub-") == before
    # the manifest was the last object written, after every output
    puts = [path for method, path, _ in recorder.seen if method == "PUT"]
    assert puts[-1].startswith("/" + BUCKET + "/" + key_of(spec["manifest"]))
    assert len(puts) == len(manifest["outputs"]) + 1


def test_sessionless_scan_is_mapped_back(s3, phantom_dirs):
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = specs["sub-02"]
    done = run_runner(spec["spec_uri"])
    assert done.returncode == 0, done.stderr
    keys = set(listing(s3, BUCKET, "ds/derivatives/ndmg/sub-02/"))
    assert "ds/derivatives/ndmg/sub-02/connectomes_d/grid3/sub-02_dwi_grid3_connectome.csv" in keys
    assert not any("ses-1" in k for k in keys)
    assert read_json(s3, spec["manifest"])["status"] == "success"


def test_inherited_gradients_are_placed_beside_the_image(s3, phantom_dirs, tmp_path):
    _, specs = write_specs(s3, phantom_dirs["inherited"])
    spec = specs["sub-01_ses-1"]
    assert spec["scan"]["inputs"]["bval"] == "dwi.bval"
    done = run_runner(spec["spec_uri"], "--workdir", str(tmp_path), "--keep-workdir")
    assert done.returncode == 0, done.stderr
    series = tmp_path / "input" / "sub-01" / "ses-1" / "dwi"
    assert sorted(p.name for p in series.iterdir()) == [
        "sub-01_ses-1_dwi.bval",
        "sub-01_ses-1_dwi.bvec",
        "sub-01_ses-1_dwi.nii.gz",
    ]  # one series, gradients beside it, no sidecar JSON
    assert (tmp_path / "input" / "dataset_description.json").exists()


def test_transient_s3_errors_are_retried(s3, phantom_dirs):
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = specs["sub-01_ses-1"]
    done, proxy = run_through_faults(
        spec["spec_uri"], [Rule("GET", "sub-01_ses-1_dwi.nii.gz", times=2), Rule("PUT", "connectome.csv", times=1)]
    )
    assert done.returncode == 0, done.stderr
    assert [s for _, p, s in proxy.seen if "sub-01_ses-1_dwi.nii.gz" in p][:3] == [503, 503, 200]
    assert read_json(s3, spec["manifest"])["status"] == "success"


def test_persistent_s3_errors_end_in_one_clean_line(s3, phantom_dirs):
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = specs["sub-01_ses-1"]
    done, proxy = run_through_faults(spec["spec_uri"], [Rule("GET", "_T1w.nii.gz", times=-1)])
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("ndmg-scan: sub-01_ses-1 failed: could not download s3://lab-data/ds/sub-01/ses-1/anat/")
    assert "SlowDown" in lines[-1]
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key_of(spec["manifest"]))


@pytest.mark.slow  # 15 s: with make test-live, to keep make test under 15 minutes
def test_crash_between_upload_and_manifest_leaves_the_scan_not_done(s3, phantom_dirs):
    from ndmg_cloud.core.bids import Scan
    from ndmg_cloud.participant.verify import verify_scans

    config, specs = write_specs(s3, phantom_dirs["plain"])
    spec = specs["sub-01_ses-1"]
    # an earlier success: this rerun must not be able to lean on it
    assert run_runner(spec["spec_uri"]).returncode == 0
    done, proxy = run_through_faults(spec["spec_uri"], [Rule("PUT", "_manifest.json", times=-1)])
    assert done.returncode != 0
    keys = set(listing(s3, BUCKET, key_of(spec["output_prefix"])))
    assert key_of(spec["output_prefix"]) + "connectomes_d/grid3/sub-01_ses-1_dwi_grid3_connectome.csv" in keys
    assert key_of(spec["manifest"]) not in keys  # the old manifest was removed first

    scan = Scan.from_dict({k: v for k, v in spec["scan"].items() if k != "inputs"})
    (row,) = verify_scans(config, [scan], {}, s3)
    assert row.status != "succeeded"


def slow_program(folder: Path, name: str, marker: Path) -> dict[str, str]:
    """A stand-in ``name`` first on PATH: writes its pid to ``marker``, then sleeps."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / name
    program.write_text(f"#!{sys.executable}\nimport os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    program.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_sigterm_stops_the_pipeline_and_writes_no_manifest(s3, phantom_dirs, tmp_path):
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = dict(specs["sub-01_ses-1"])
    marker = tmp_path / "pipeline-pid"
    local_spec = tmp_path / "spec.json"
    local_spec.write_text(json.dumps(spec))
    path = slow_program(tmp_path / "bin", spec["pipeline"]["command"][0], marker)

    proc = run_runner(str(local_spec), wait=False, env_extra=path)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the pipeline never started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 143
    assert "terminated by SIGTERM" in err.strip().splitlines()[-1]
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the pipeline process is gone too
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key_of(spec["manifest"]))


def test_lite_with_an_atlas_image_connects_its_regions(s3, phantom_dirs, tmp_path):
    import nibabel as nib
    import numpy as np

    from ndmg_cloud.demo import synthetic

    # labels 10 and 20 around the two ends of sub-01's first bundle, 30 and 40 around its
    # second's: m2g numbers nodes by rank among the atlas's labels (0 first), so 1-2 and 3-4
    shape, affine = synthetic.grid_for()
    world = synthetic.world_points(shape, affine)
    labels = np.zeros(shape, np.int16)
    motion = synthetic.session_motion(1, 1)
    for label, end in zip((10, 20, 30, 40), [p for b in synthetic.geometry(1).bundles[:2] for p in b.ends_in_world(motion)], strict=True):
        labels[np.linalg.norm(world - end, axis=-1) <= 5.0] = label
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "bundle_ends.nii.gz")
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(tmp_path / "bundle_ends.nii.gz"), BUCKET, "atlases/bundle_ends.nii.gz")

    _, specs = write_specs(s3, phantom_dirs["plain"], atlas=f"s3://{BUCKET}/atlases/bundle_ends.nii.gz")
    spec = specs["sub-01_ses-1"]
    assert "connectomes_d/bundle-ends/sub-01_ses-1_dwi_bundle-ends_connectome.csv" in spec["expected_outputs"]
    done = run_runner(spec["spec_uri"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr

    key = key_of(spec["output_prefix"]) + "connectomes_d/bundle-ends/sub-01_ses-1_dwi_bundle-ends_connectome.csv"
    edges = {
        (int(i), int(j)): float(w)
        for i, j, w in (line.split() for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines())
    }
    strongest = sorted(edges, key=edges.get, reverse=True)[:2]
    assert sorted(strongest) == [(1, 2), (3, 4)]  # each bundle joins its own two ends
    manifest = read_json(s3, spec["manifest"])
    assert manifest["inputs"]["atlas/bundle-ends.nii.gz"]["key"] == "atlases/bundle_ends.nii.gz"


NDMG_BIDS = '''#!{python}
"""Stand-in for ndmg 0.2.1's ndmg_bids: its real parser (facts), then its output layout:
dwi/roi-connectomes/<atlas stem>/<dwi stem>_<atlas stem>_measure-spatial-ds_adj.ssv at the
output ROOT (no sub/ses level; ndmg's name_resource), plus scratch under tmp/."""
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import pipeline_facts
args = pipeline_facts.parser_of(pipeline_facts.NDMG_PYPI).parse_args()
dwi = next(Path(args.bids_dir).rglob("*_dwi.nii.gz"))
stem, label = dwi.name.split(".")[0], args.atlas.split(".")[0]
graph = Path(args.output_dir, "dwi", "roi-connectomes", label, f"{{stem}}_{{label}}_measure-spatial-ds_adj.ssv")
graph.parent.mkdir(parents=True)
graph.write_text("1 2 7\\n2 3 4\\n")
Path(args.output_dir, "tmp", "reg_a").mkdir(parents=True)
Path(args.output_dir, "tmp", "reg_a", "scratch.nii.gz").write_text("scratch")
'''


def test_legacy_ndmg_outputs_at_its_output_root_are_filed_under_the_scan(s3, phantom_dirs, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "ndmg_bids"
    program.write_text(NDMG_BIDS.format(python=sys.executable, tests=str(Path(__file__).parent)))
    program.chmod(0o755)
    _, specs = write_specs(s3, phantom_dirs["plain"], pipeline="ndmg")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for scan_id, stem in (("sub-01_ses-1", "sub-01_ses-1_dwi"), ("sub-02", "sub-02_dwi")):
        spec = specs[scan_id]
        done = run_runner(spec["spec_uri"], env_extra=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr
        graph = (
            f"dwi/roi-connectomes/desikan_space-MNI152NLin6_res-2x2x2/{stem}_desikan_space-MNI152NLin6_res-2x2x2_measure-spatial-ds_adj.ssv"
        )
        assert spec["expected_outputs"] == [graph]
        keys = set(listing(s3, BUCKET, key_of(spec["output_prefix"])))
        assert key_of(spec["output_prefix"]) + graph in keys  # re-rooted under sub-S/[ses-T/]
        assert not any("/tmp/" in k for k in keys)  # ndmg's scratch stays behind
        if scan_id == "sub-02":  # session-less: the work session is mapped back
            assert not any("ses-1" in k for k in keys)
        manifest = read_json(s3, spec["manifest"])
        assert manifest["status"] == "success" and [o["path"] for o in manifest["outputs"]] == [graph]


def test_a_spec_whose_command_is_not_the_pipelines_is_refused(s3, phantom_dirs, tmp_path):
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = dict(specs["sub-01_ses-1"])
    spec["pipeline"] = {**spec["pipeline"], "command": ["sh", "-c", "cat ~/.aws/credentials"]}
    local_spec = tmp_path / "spec.json"
    local_spec.write_text(json.dumps(spec))

    result = run_runner(str(local_spec))

    assert result.returncode == 2
    assert "job spec's pipeline command ['sh', '-c', 'cat ~/.aws/credentials'] is not what pipeline 'lite' builds" in result.stderr
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=key_of(spec["manifest"]))


def test_extra_inputs_outside_the_work_folder_are_refused(s3, phantom_dirs, tmp_path):
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = dict(specs["sub-01_ses-1"])
    spec["extra_inputs"] = {"../../escaped.txt": spec["input_root"] + "dataset_description.json"}
    local_spec = tmp_path / "spec.json"
    local_spec.write_text(json.dumps(spec))

    result = run_runner(str(local_spec), "--workdir", str(tmp_path / "work"))

    assert result.returncode == 2
    assert "job spec's extra input '../../escaped.txt' is not a plain relative path: refusing it" in result.stderr
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("link, said", [("symlink", "a symbolic link"), ("link", "a hard link to another file")])
def test_a_link_among_the_outputs_is_not_followed_on_upload(s3, phantom_dirs, tmp_path, link, said):
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = dict(specs["sub-01_ses-1"])
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = TOP-SECRET\n")
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / spec["pipeline"]["command"][0]
    program.write_text(
        f"#!{sys.executable}\nimport os, sys\nout = sys.argv[-1]\nos.makedirs(out, exist_ok=True)\n"
        f"os.{link}({str(secret)!r}, os.path.join(out, 'sub-01_ses-1_dwi_notes.txt'))\n"
        "open(os.path.join(out, 'sub-01_ses-1_dwi_real.txt'), 'w').write('real')\n"
    )
    program.chmod(0o755)
    local_spec = tmp_path / "spec.json"
    local_spec.write_text(json.dumps(spec))

    result = run_runner(str(local_spec), env_extra={"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"})

    assert f"not uploading sub-01_ses-1_dwi_notes.txt: {said}" in result.stderr + result.stdout
    bucket, prefix = spec["output_prefix"].removeprefix("s3://").split("/", 1)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert any(k.endswith("sub-01_ses-1_dwi_real.txt") for k in keys)  # regular files go up
    assert not any("notes" in k for k in keys)
    assert all(b"TOP-SECRET" not in s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys)


# shaped like AWS keys, built at run time so that no key-like string is committed
FAKE_KEY_ID = "AKIA" + "ABCDEFGHIJKLMNOP"
FAKE_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"


def test_the_pipeline_inherits_no_credentials_and_its_key_like_output_is_redacted(s3, phantom_dirs, tmp_path):
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = dict(specs["sub-01_ses-1"])
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / spec["pipeline"]["command"][0]
    program.write_text(
        f"#!{sys.executable}\nimport os, sys\nprint('env:', ' '.join(sorted(os.environ)))\n"
        "print('home:', os.environ['HOME'], sorted(os.listdir(os.environ['HOME'])))\n"
        f"print('leaked {FAKE_KEY_ID} and {FAKE_SECRET_KEY}', flush=True)\nsys.exit(1)\n"
    )
    program.chmod(0o755)
    local_spec = tmp_path / "spec.json"
    local_spec.write_text(json.dumps(spec))
    user_home = tmp_path / "worker-home"
    (user_home / ".aws").mkdir(parents=True)
    (user_home / ".aws" / "credentials").write_text("[default]\naws_secret_access_key = in-the-home\n")
    worker = {
        "HOME": str(user_home),
        "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
        "AWS_ACCESS_KEY_ID": "AKIA" + "W" * 16,
        "AWS_SECRET_ACCESS_KEY": "worker-secret",
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://a:pw@db/a",
        "AIRFLOW__CORE__FERNET_KEY": "fernet",
        "MY_DB_PASSWORD": "pw",
    }

    result = run_runner(str(local_spec), env_extra=worker)

    seen = next(line for line in result.stdout.splitlines() if line.startswith("env:")).split()[1:]
    assert not set(seen) & {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__FERNET_KEY",
        "MY_DB_PASSWORD",
    }
    assert "PATH" in seen
    home = next(line for line in result.stdout.splitlines() if line.startswith("home:"))
    assert str(user_home) not in home and home.endswith("[]")  # a fresh, empty HOME: no ~/.aws
    assert "pipeline exited with code 1: leaked [redacted] and [redacted]" in result.stderr
    assert FAKE_KEY_ID not in result.stdout + result.stderr


def test_the_local_runner_gets_an_allow_list_of_the_worker_environment():
    from ndmg_cloud.scan.scrub import runner_environment

    worker = {
        "PATH": "/bin",
        "HOME": "/home/a",
        "LC_ALL": "C",
        "NDMG_WARM": "1",
        "AWS_ENDPOINT_URL": "http://x",
        "AWS_ACCESS_KEY_ID": "k",
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt",
        "AIRFLOW_HOME": "/a",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite://",
        "AIRFLOW_CONN_AWS_DEFAULT": "aws://k:s@",
        "GITHUB_TOKEN": "t",
    }
    assert sorted(runner_environment(worker)) == ["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "HOME", "LC_ALL", "NDMG_WARM", "PATH"]


def test_redaction_catches_session_tokens_encoded_keys_url_passwords_and_fernet_keys():
    from cryptography.fernet import Fernet

    from ndmg_cloud.scan.scrub import REDACTED, redact

    token = "IQoJ" + "b3JpZ2luX2VjEFAaCXVzLWVhc3QtMSJHMEUCIQ" * 3
    old_token = "FwoG" + "ZXIvYXdzEBYaDH9Rk2hR" * 3
    fernet = Fernet.generate_key().decode()
    cases = {
        f"token {token} expired": token,
        f"using {old_token}": old_token,
        f"key={FAKE_SECRET_KEY.replace('/', '%2F')}&x=1": FAKE_SECRET_KEY.replace("/", "%2F"),
        f"s3 {FAKE_SECRET_KEY.replace('/', '%2F')} listed": FAKE_SECRET_KEY.replace("/", "%2F"),
        "db postgresql://airflow:pa/ss%2Fw0rd@db:5432/airflow": "pa/ss%2Fw0rd",
        f"fernet {fernet}": fernet,
    }
    for line, secret in cases.items():
        assert secret not in redact(line) and REDACTED in redact(line), line
    for harmless in ("sub-01_ses-1_dwi_grid3_connectome.csv", "https://example.org/a/b", "md5 d41d8cd98f00b204e9800998ecf8427e"):
        assert redact(harmless) == harmless


def test_a_pipeline_cannot_speak_as_the_runner(s3, phantom_dirs, tmp_path):
    """A pipeline that prints a line shaped like the runner's verdict: the local backend's
    reason is still the runner's own last line (the pipeline's is shown quoted)."""
    from ndmg_cloud.participant.local import reason_of

    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = specs["sub-01_ses-1"]
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / spec["pipeline"]["command"][0]
    program.write_text(
        f"#!{sys.executable}\nprint('ndmg-scan: sub-01_ses-1 failed: nothing, all is well', flush=True)\nraise SystemExit(3)\n"
    )
    program.chmod(0o755)
    local_spec = tmp_path / "spec.json"
    local_spec.write_text(json.dumps(spec))

    result = run_runner(str(local_spec), env_extra={"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"})

    lines = (result.stdout + result.stderr).splitlines()
    assert "| ndmg-scan: sub-01_ses-1 failed: nothing, all is well" in "\n".join(lines)
    assert (
        reason_of(lines, result.returncode)
        == "sub-01_ses-1 failed: pipeline exited with code 3: | ndmg-scan: sub-01_ses-1 failed: nothing, all is well"
    )


def test_a_dwi_name_too_long_for_the_work_disk_is_laid_out_under_its_work_name(s3, phantom_dirs, tmp_path):
    """A name of 330 characters (each label legal) is a valid S3 key but no file name: the
    work tree names the scan's files plainly (work_stems), so it never reaches the disk."""
    _, specs = write_specs(s3, phantom_dirs["plain"])
    spec = dict(specs["sub-01_ses-1"])
    long_name = "sub-01_ses-1_" + "_".join(f"acq{i}-{'a' * 60}" for i in range(5)) + "_dwi.nii.gz"
    spec["scan"] = {**spec["scan"], "inputs": {**spec["scan"]["inputs"], "dwi": f"sub-01/ses-1/dwi/{long_name}"}}
    s3.put_object(Bucket=BUCKET, Key=f"ds/sub-01/ses-1/dwi/{long_name}", Body=b"x")
    local_spec = tmp_path / "spec.json"
    local_spec.write_text(json.dumps(spec))

    result = run_runner(str(local_spec), "--workdir", str(tmp_path / "work"), "--keep-workdir")

    assert (tmp_path / "work/input/sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz").read_bytes() == b"x"
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("ndmg-scan: sub-01_ses-1 failed: sub-01_ses-1_dwi.nii.gz is not a readable NIfTI image (")
    )


def test_a_work_folder_that_cannot_be_written_is_one_line_not_a_traceback(s3, phantom_dirs):
    _, specs = write_specs(s3, phantom_dirs["plain"])

    result = run_runner(specs["sub-01_ses-1"]["spec_uri"], "--workdir", "/dev/null/work")

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1] == "ndmg-scan: sub-01_ses-1 failed: Not a directory (/dev/null/work/input/sub-01/ses-1/dwi)"
    )


def test_a_local_scan_runs_with_short_lived_scoped_credentials_never_the_workers(s3, phantom_dirs, tmp_path, monkeypatch):
    """The local backend: the runner (whose environment a pipeline can read through
    /proc/<its parent>/environ) holds STS credentials for this run's job-role policy, not the
    worker's keys; the scan still succeeds with them."""
    from ndmg_cloud.orchestration.scancreds import scan_credentials
    from ndmg_cloud.participant.local import run_local

    config, specs = write_specs(s3, phantom_dirs["plain"])
    spec = specs["sub-01_ses-1"]
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / spec["pipeline"]["command"][0]
    program.write_text(
        f"#!{sys.executable}\nimport os\n"
        "parent = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
        "print('worker key in parent', b'worker-secret-key' in parent, 'STS session in parent', b'AWS_SESSION_TOKEN=' in parent)\n"
        "raise SystemExit(5)\n"
    )
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret-key")
    monkeypatch.delenv("NDMG_WARM", raising=False)

    credentials = scan_credentials(config, "sub-01_ses-1")
    assert credentials["AWS_SESSION_TOKEN"] and credentials["AWS_SECRET_ACCESS_KEY"] != "worker-secret-key"
    raw = s3.get_object(Bucket=BUCKET, Key=key_of(spec["spec_uri"]))["Body"].read()
    monkeypatch.setattr("ndmg_cloud.participant.local.WARM_ENV", "NDMG_NOT_WARM")  # a plain subprocess: its parent is the runner
    record = run_local("sub-01_ses-1", spec["spec_uri"], __import__("hashlib").sha256(raw).hexdigest(), config, credentials)

    assert "worker key in parent False STS session in parent True" in "\n".join(record.log_tail)
