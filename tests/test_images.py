"""The images, built for real by ``make images`` and run as containers on this machine's
Docker daemon (``make test-images``): the lite scan image runs a scan against the local AWS
endpoint with nothing but its job role's credentials, and passes its own self-check.
"""

from __future__ import annotations

import json

import pytest
from docker_images import LITE, PYTHON_BASE, RoleCredentials, image_file, require_images, run

from conftest import ENDPOINT, FAKE_KEY_ID, FAKE_SECRET, REGION
from datasets import listing, write_specs
from helpers import read_json

pytestmark = pytest.mark.images
BUCKET = "lab-data"


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
    for secret in (FAKE_KEY_ID, FAKE_SECRET):  # this process's keys never reached the container
        assert secret not in done.stdout + done.stderr


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
