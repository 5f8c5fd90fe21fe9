"""The images, built for real by ``make images`` and run as containers on this machine's
Docker daemon (``make test-images``): the lite scan image runs a scan against the local AWS
endpoint with nothing but its job role's credentials, and passes its own self-check; the m2g
image, built on a base without FSL and AFNI, holds the real m2g and says, in its canary, that
it cannot run a scan for want of them.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from docker_images import LITE, M2G, PYTHON_BASE, RoleCredentials, image_file, require_images, run

from conftest import ENDPOINT, FAKE_KEY_ID, FAKE_SECRET, REGION, make_job_queue
from datasets import listing, write_specs
from helpers import read_json
from m2g_sources import m2g_python_files, require_m2g_sources

pytestmark = pytest.mark.images
BUCKET = "lab-data"
# run by the image's Python 3.7: the sha256 of each .py file of the installed m2g package
INSTALLED_DIGESTS = """
import hashlib, json, pathlib, m2g
root = pathlib.Path(m2g.__file__).parent
print(json.dumps({"m2g/" + str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.py")}))
"""


@pytest.fixture(scope="module")
def lite_image():
    require_images(LITE)
    return LITE


@pytest.fixture
def role():
    credentials = RoleCredentials()
    yield credentials
    credentials.stop()


def job_environment(role: RoleCredentials) -> dict[str, str]:
    """What a scan job's container gets from the job definition (the CloudFormation template's
    roots) and from Batch (its role's credentials endpoint): no key of any kind."""
    return {
        "AWS_ENDPOINT_URL": ENDPOINT,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": role.uri,
        # on a machine that has an instance role, never let the chain reach it
        "AWS_EC2_METADATA_DISABLED": "true",
        "NDMG_INPUT_ROOTS": f"s3://{BUCKET}/",
        "NDMG_OUTPUT_ROOTS": f"s3://{BUCKET}/",
    }


def test_the_lite_image_runs_a_scan_that_the_verifier_counts_done(s3, phantom_dirs, lite_image, role):
    from ndmg_cloud.core.manifest import ScanManifest
    from ndmg_cloud.participant.discover import discover
    from ndmg_cloud.participant.verify import completed_scans
    from ndmg_cloud.scan.contract import ImageContract

    config, specs = write_specs(s3, phantom_dirs["plain"], bucket=BUCKET)
    before = listing(s3, BUCKET, "ds/sub-")
    spec = specs["sub-01_ses-1"]

    done = run(lite_image, "ndmg-scan", "--spec", spec["spec_uri"], env=job_environment(role))

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert role.requests >= 1  # the container's S3 calls were signed with the role's credentials
    scans = [scan for scan in discover(config, s3).valid if scan.scan_id == "sub-01_ses-1"]
    finished, _ = completed_scans(config, scans, s3)
    assert list(finished) == ["sub-01_ses-1"]
    manifest = ScanManifest.from_dict(read_json(s3, spec["manifest"]))
    assert manifest.status == "success" and manifest.outputs
    # the contract the build recorded is the one the scan's manifest carries
    built = ImageContract.from_dict(json.loads(image_file(lite_image, "/opt/ndmg-cloud/image-contract.json")))
    assert built.base_image == PYTHON_BASE
    assert read_json(s3, spec["manifest"])["pipeline"]["contract"] == built.summary().to_dict()
    assert listing(s3, BUCKET, "ds/sub-") == before  # the input dataset is untouched
    # the key the container's default chain finds is the role's, not this process's
    found = run(lite_image, "python", "-c", "import boto3; print(boto3.Session().get_credentials().access_key)", env=job_environment(role))
    assert found.stdout.strip() == RoleCredentials.ACCESS_KEY_ID, found.stderr


def test_the_lite_image_passes_its_own_self_check(s3, phantom_dirs, lite_image, role):
    _, specs = write_specs(s3, phantom_dirs["plain"], bucket=BUCKET)
    spec = specs["sub-02"]  # the session-less scan
    result_uri = f"s3://{BUCKET}/ds/derivatives/self-check/sub-02.json"

    done = run(lite_image, "ndmg-scan", "--self-check", "--spec", spec["spec_uri"], "--result", result_uri, env=job_environment(role))

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "self-check passed: this image can run scan sub-02" in done.stdout + done.stderr
    result = read_json(s3, result_uri)
    assert result["contract"]["base_image"] == PYTHON_BASE


def test_without_its_role_the_image_says_it_has_no_credentials(s3, phantom_dirs, lite_image, role):
    """Nothing in the image stands in for the job role: no role, no S3."""
    _, specs = write_specs(s3, phantom_dirs["plain"], bucket=BUCKET)
    spec = specs["sub-01_ses-1"]
    env = {k: v for k, v in job_environment(role).items() if k != "AWS_CONTAINER_CREDENTIALS_FULL_URI"}

    done = run(lite_image, "ndmg-scan", "--spec", spec["spec_uri"], env=env)

    assert done.returncode != 0
    assert "credentials" in (done.stdout + done.stderr).lower()
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=spec["manifest"].split("/", 3)[3])


@pytest.fixture
def batch_runs_containers(aws, monkeypatch):
    """The local endpoint's Batch runs each job as a container on the Docker daemon, with
    host networking (so the job reaches the endpoint on 127.0.0.1), as moto does when told."""
    import urllib.request

    monkeypatch.setenv("MOTO_DOCKER_NETWORK_MODE", "host")
    config = json.dumps({"batch": {"use_docker": True}}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{ENDPOINT}/moto-api/config", data=config, method="POST")).read()


def lite_job_queue(role: RoleCredentials, image: str) -> tuple[str, str]:
    """A Batch queue and a job definition of ``image`` as the CloudFormation template makes
    them (the roots where its scans may read and write), on the local endpoint: (queue, definition)."""
    import boto3

    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    make_job_queue(batch, "ndmg-lite-queue", "ndmg-lite", image, job_environment(role), vcpus="1", memory="2048")
    return "ndmg-lite-queue", "ndmg-lite"


def test_a_run_through_batch_runs_the_canary_and_every_scan_as_containers_of_the_lite_image(
    s3, airflow_db, phantom_dirs, lite_image, role, batch_runs_containers
):
    """The closest this machine gets to production: ndmg_participant with backend=aws_batch,
    each Batch job (the canary's self-check, then one per scan) a container of the image."""
    import boto3
    from airflow.dag_processing.dagbag import DagBag

    from conftest import ROOT
    from datasets import upload_tree

    s3.create_bucket(Bucket=BUCKET)
    upload_tree(s3, BUCKET, phantom_dirs["plain"], "ds/")
    before = listing(s3, BUCKET, "ds/sub-")
    queue, definition = lite_job_queue(role, lite_image)

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_participant"]
    run = dag.test(
        run_conf={
            "bucket": BUCKET,
            "bidsdir": "ds",
            "backend": "aws_batch",
            "pipeline": "lite",
            "job_queue": queue,
            "job_definition": definition,
        }
    )

    report = read_json(s3, bucket=BUCKET, where=f"ds/derivatives/ndmg/reports/{run.run_id}/report.json")
    rows = {row["scan_id"]: row for row in report["scans"]}
    assert run.state == "success", report
    assert {scan: row["status"] for scan, row in rows.items()} == {"sub-01_ses-1": "succeeded", "sub-02": "succeeded"}
    assert report["canary"]["status"] == "passed"
    assert report["contract"]["label"].startswith("ndmg-lite ")
    assert {row["made_by"] for row in rows.values()} == {report["contract"]["label"]}
    # each job ran in a container of the image: its output is in the job's CloudWatch stream
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    logs = boto3.client("logs", region_name=REGION, endpoint_url=ENDPOINT)
    jobs = [job for status in ("SUCCEEDED", "FAILED") for job in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]]
    described = batch.describe_jobs(jobs=[job["jobId"] for job in jobs])["jobs"]
    assert sorted(job["status"] for job in described) == ["SUCCEEDED"] * 3  # the canary and two scans
    said = {}
    for job in described:
        stream = job["container"]["logStreamName"]
        events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream)["events"]
        said[job["jobName"]] = "\n".join(event["message"] for event in events)
    canary = next(text for name, text in said.items() if "-canary-" in name)
    assert "self-check passed" in canary
    for name, text in said.items():
        assert "ndmg-scan" in text or "self-check" in text, (name, text)  # every job's container spoke
        for secret in (FAKE_KEY_ID, FAKE_SECRET):  # this process's keys are in no job's output
            assert secret not in text, name
    assert role.requests >= 3
    assert listing(s3, BUCKET, "ds/sub-") == before


def test_the_m2g_image_has_the_real_m2g_and_its_canary_names_the_missing_fsl_and_afni(s3, phantom_dirs, role):
    """Dockerfile.m2g, built by build-m2g.sh on a stand-in of its base that lacks FSL and AFNI:
    the contract step ran the real m2g (the pinned source) and read the real atlases; the
    canary's self-check then fails on the toolchain alone, naming what is missing."""
    from ndmg_cloud.core.pipelines import get_pipeline
    from ndmg_cloud.scan.contract import ImageContract

    require_m2g_sources()  # else make images says what is missing and does not build it
    require_images(M2G)
    contract = ImageContract.from_dict(json.loads(image_file(M2G, "/opt/ndmg-cloud/image-contract.json")))
    assert contract.pipeline == "m2g" and contract.code["version"] == "0.3.0"
    assert contract.base_image.startswith("127.0.0.1:5055/ndmg-local/m2g@sha256:")  # pinned by digest, from the registry
    assert contract.code["source"] == "http://127.0.0.1:5056/m2g"  # the local copy of the pinned source, recorded as such
    assert {"AAL", "Desikan"} <= set(contract.atlases["2mm"]) and {"AAL", "Desikan"} <= set(contract.atlases["4mm"])
    # the m2g installed in the image is the pinned source, file for file
    pinned = {name: hashlib.sha256(text).hexdigest() for name, text in m2g_python_files().items()}
    digests = run(M2G, "python3.7", "-c", INSTALLED_DIGESTS)
    assert digests.returncode == 0, digests.stderr
    assert json.loads(digests.stdout) == pinned

    _, specs = write_specs(s3, phantom_dirs["plain"], bucket=BUCKET, pipeline="m2g")
    spec = specs["sub-01_ses-1"]
    result_uri = f"s3://{BUCKET}/ds/derivatives/self-check/m2g.json"
    done = run(M2G, "ndmg-scan", "--self-check", "--spec", spec["spec_uri"], "--result", result_uri, env=job_environment(role))

    assert done.returncode != 0, done.stdout[-3000:]
    result = read_json(s3, result_uri)
    checks = {c["name"]: c for c in result["checks"]}
    assert [name for name, c in checks.items() if not c["ok"]] == ["tools"], done.stdout
    assert "m2g accepts the scan's command" in checks["command"]["detail"]
    assert "AAL, Desikan at 2mm: real NIfTI files" in checks["atlases"]["detail"]
    missing = checks["tools"]["detail"]
    toolchain = get_pipeline("m2g").toolchain
    named = missing.split("programs are not on PATH: ")[1].split(";")[0].split(", ")
    assert set(named) == set(toolchain.programs) - {"which"}  # every FSL and AFNI program; Debian has which
    assert "$FSLDIR unset; $FSLOUTPUTTYPE unset" in missing and "no /venv/bin/activate" in missing
    assert "its own dependency check failed: AssertionError: You do not have FSL installed!" in missing  # m2g's, run by its Python
    assert checks["writable"]["ok"] and "/m2g_atlases/atlases/mask" in checks["writable"]["detail"]
    # the contract records what the image holds: its base, m2g's Python and packages, FSL and AFNI (absent here)
    assert contract.python["version"] == "3.7.16" and contract.python["packages"]["dipy"] == "1.1.1"
    assert contract.toolchain == {"AFNI": "not found (afni is not on PATH)", "FSL": "not found ($FSLDIR unset)"}
    assert f"on {contract.base_image}; Python 3.7.16 (dipy 1.1.1, nibabel 3.2.2" in checks["contract"]["detail"]
    assert "FAIL tools" in done.stdout


def test_the_m2g_bases_python_is_checked_by_importing_m2g_and_an_older_dipy_is_refused():
    """container/check-m2g-requirements.py (Dockerfile.m2g runs it on the base before m2g's
    setup.py) on the image's own Python 3.7 and packages: m2g imports; with a dipy too old for
    m2g's import in front of them (what a base from before 2022-03-22 holds), it is refused by
    name."""
    import tarfile

    from m2g_sources import M2G_TARBALL, third_party

    require_m2g_sources()
    require_images(M2G)
    with tarfile.open(third_party() / M2G_TARBALL) as archive:
        requirements = archive.extractfile("m2g-95d271f7/requirements.txt").read().decode()  # type: ignore[union-attr]
    # the image keeps m2g installed, not its source: a folder with its requirements.txt
    # only imports the installed m2g (the pinned source, file for file: the test above)
    script = (
        "mkdir -p /tmp/src && printf '%s' \"$REQUIREMENTS\" > /tmp/src/requirements.txt"
        " && python3.7 /opt/ndmg-cloud/check-m2g-requirements.py /tmp/src"
        " && mkdir -p /tmp/older/dipy-0.16.0.dist-info /tmp/older/dipy"
        " && printf 'Metadata-Version: 2.1\\nName: dipy\\nVersion: 0.16.0\\n' > /tmp/older/dipy-0.16.0.dist-info/METADATA"
        " && touch /tmp/older/dipy/__init__.py"
        " && PYTHONPATH=/tmp/older python3.7 /opt/ndmg-cloud/check-m2g-requirements.py /tmp/src"
    )
    done = run(M2G, "bash", "-c", script, env={"REQUIREMENTS": requirements, "MPLCONFIGDIR": "/tmp/mpl"})

    assert "check-m2g-requirements: the pinned m2g imports with this base's Python 3.7.16 packages" in done.stdout, done.stderr
    assert done.returncode == 1
    assert "the pinned m2g cannot be imported with this base's Python 3.7.16 packages" in done.stderr
    assert "No module named 'dipy." in done.stderr and "dipy 0.16.0 (needs 1.1.1)" in done.stderr
