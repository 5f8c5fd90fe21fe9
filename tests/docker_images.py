"""The images ``make images`` builds (container/local/make-images.sh), run as containers on
this machine's Docker daemon, and what a container of a scan image gets on AWS Batch in
place of keys: its job role's credentials, served here the way the ECS agent serves them.

Every container runs with host networking, so its traffic stays on this machine's loopback:
the local AWS endpoint and the credentials endpoint listen on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# the tags make-images.sh gives them
LITE = "ndmg-cloud-lite:local"
M2G = "ndmg-cloud-m2g:local"  # on a stand-in of neurodata/m2g without FSL and AFNI
PYTHON_BASE = "ndmg-local/python:3.11-slim-bookworm"
MAKE_IMAGES = "make images (container/local/make-images.sh)"


def require_images(*tags: str) -> None:
    """Fail, naming the command that builds them, unless Docker answers and has ``tags``."""
    if not shutil.which("docker"):
        pytest.fail(f"docker is not installed: run {MAKE_IMAGES}, which installs Debian's docker.io", pytrace=False)
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        pytest.fail(f"no Docker daemon answers ({info.stderr.strip()[-200:]}): run {MAKE_IMAGES}, which starts one", pytrace=False)
    for tag in tags:
        if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0:
            pytest.fail(f"the image {tag} is not built: run {MAKE_IMAGES}", pytrace=False)


def run(image: str, *command: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``docker run --rm --network host`` of ``command`` in ``image``, with exactly ``env``."""
    flags = [item for name, value in (env or {}).items() for item in ("--env", f"{name}={value}")]
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "host", *flags, image, *command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def image_file(image: str, path: str) -> str:
    """The text of ``path`` inside ``image``."""
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "cat", path], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


class RoleCredentials:
    """The job role's temporary credentials, served on 127.0.0.1 as the ECS agent serves them
    to a Batch job's container (``AWS_CONTAINER_CREDENTIALS_FULL_URI``, which botocore's
    default chain reads; AWS itself sets the relative form). ``requests`` counts the fetches:
    a container that found keys some other way would make none."""

    ACCESS_KEY_ID = "ASIA" + "JOBROLETEMPORARY"

    def __init__(self) -> None:
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps(
                    {
                        "AccessKeyId": owner.ACCESS_KEY_ID,
                        "SecretAccessKey": "job-role-temporary-secret",
                        "Token": "job-role-session-token",
                        "Expiration": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self._server.server_port}/v2/credentials/ndmg-batch-job-role"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
