"""``docker compose up`` for real (``make test-images``): the deployment of docker-compose.yaml
with its local-aws profile, on the images ``make images`` built (tests/compose/local.yaml puts
the local bases in and every service on loopback). Wait for every healthcheck, sign in with
the generated password from where the docs say it is, trigger a lite run by clicking the form
in headless Chromium, see it succeed, open its report from the UI; then ``down`` and ``up``
again: the run history and the secrets survive, nothing is regenerated. With the celery profile
too (Redis and a Celery worker): a run whose tasks the worker runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import yaml
from docker_images import require_images
from test_compose import DOCKER_CONFIG, SECRETS_DIR, compose_command
from test_ui import DAG, open_the_report_from_the_ui, signed_in_form, trigger_a_lite_run_from_the_form

from conftest import ROOT, wait_for
from datasets import put_phantoms

pytestmark = pytest.mark.images
PROJECT = "ndmg-compose-test"
URL = "http://127.0.0.1:8080"
ENDPOINT = "http://127.0.0.1:5000"
IMAGES = ("ndmg-cloud-airflow:3.3.2", "ndmg-local/postgres:16", "ndmg-local/moto:5.2.5")
PORTS = {5432: "Postgres", 8080: "the API server", 8974: "the scheduler's health check", 5000: "the local AWS endpoint"}
LOG_SERVERS = {8793: "the scheduler's or a worker's log server", 8794: "the triggerer's log server"}  # off in local.yaml
HEALTHY = ("postgres", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "moto")
CELERY = {"images": ("ndmg-local/redis:7.2-bookworm",), "ports": {6379: "Redis"}, "healthy": ("redis", "airflow-worker")}


def resolved_on_loopback(env: dict[str, str], out: Path, profiles: tuple[str, ...]) -> Path:
    """docker-compose.yaml with ``profiles`` and tests/compose/local.yaml, as Compose resolves
    them, less the ports of the services on the host's network: host networking publishes
    nothing (and Compose 1.29 refuses the two together). The result, written to ``out``."""
    files = ["-f", str(ROOT / "docker-compose.yaml"), "-f", str(ROOT / "tests/compose/local.yaml")]
    flags = [item for profile in profiles for item in ("--profile", profile)]
    done = subprocess.run([*compose_command(), "-p", PROJECT, *files, *flags, "config"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    for name, service in config["services"].items():
        if set(service.get("profiles", profiles)) & set(profiles):  # the services that start
            assert service.get("network_mode") == "host", name  # every one on loopback
            service.pop("ports", None)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@dataclass
class Deployment:
    env: dict[str, str]
    file: Path
    log: Path
    profiles: tuple[str, ...] = ("local-aws",)
    healthy_services: tuple[str, ...] = HEALTHY

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        flags = [item for profile in self.profiles for item in ("--profile", profile)]
        command = [*compose_command(), "-p", PROJECT, "-f", str(self.file), *flags, *args]
        done = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        with self.log.open("a") as log:
            log.write(f"$ compose {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}\n")
        return done

    def up(self) -> None:
        """``up -d`` (no build: make images built the images) and wait for every healthcheck."""
        done = self.compose("up", "-d", "--no-build")
        assert done.returncode == 0, done.stderr[-2000:] + self.compose("logs", "--tail", "40").stdout[-6000:]
        assert wait_for(self.healthy, timeout=420), self.status() + self.compose("logs", "--tail", "40").stdout[-6000:]

    def containers(self) -> dict[str, dict]:
        ids = self.compose("ps", "-q").stdout.split()
        inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout or "[]")
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c["State"] for c in inspected}

    def healthy(self) -> bool:
        states = self.containers()
        init = states.get("airflow-init", {})
        if init.get("Status") == "exited" and init.get("ExitCode") != 0:
            pytest.fail("airflow-init failed: " + self.compose("logs", "airflow-init").stdout[-3000:], pytrace=False)
        return all(states.get(service, {}).get("Health", {}).get("Status") == "healthy" for service in self.healthy_services)

    def status(self) -> str:
        return json.dumps(
            {name: {"status": s.get("Status"), "health": s.get("Health", {}).get("Status")} for name, s in self.containers().items()}
        )

    def read(self, path: str) -> str:
        """A file in the API server's container, as the docs say to read it (compose exec)."""
        done = self.compose("exec", "-T", "airflow-apiserver", "cat", path)
        assert done.returncode == 0, done.stderr
        return done.stdout


def listeners() -> set[tuple[str, int]]:
    """Every listening TCP socket of this machine's network namespace (which the deployment's
    host-networked containers share): (address, port), from /proc/net/tcp and tcp6."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
            found.add((socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, raw), int(port, 16)))
    return found


def on_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(tmp_path_factory, celery: bool = False):
    """A deployment, ready to ``up``; ``down -v`` after (a generator, for the fixtures)."""
    require_images(*IMAGES, *(CELERY["images"] if celery else ()))
    home = tmp_path_factory.mktemp("compose-home")
    (home / ".aws").mkdir()  # mounted read-only: the test's own, empty
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "DOCKER_CONFIG": DOCKER_CONFIG,
        # the local-aws profile as docker-compose.yaml's header runs it: fake keys, the
        # endpoint on loopback, the local backend on
        "NDMG_AWS_ENDPOINT_URL": ENDPOINT,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "NDMG_LOCAL_BACKEND": "on",
    }
    profiles, healthy, ports = ("local-aws",), HEALTHY, {**PORTS, **LOG_SERVERS}
    if celery:  # as the compose file's header starts it, with one worker
        env["NDMG_EXECUTOR"] = "CeleryExecutor"
        profiles, healthy, ports = ("local-aws", "celery"), (*HEALTHY, *CELERY["healthy"]), {**ports, **CELERY["ports"]}
    resolved = resolved_on_loopback(env, home / "docker-compose.resolved.yaml", profiles)
    deployment = Deployment(env, resolved, home / "compose.log", profiles, healthy)
    deployment.compose("down", "-v")  # whatever an earlier, killed run left
    busy = [f"{port} ({what})" for port, what in ports.items() if port_in_use(port)]
    if busy:
        pytest.fail(f"ports on 127.0.0.1 the deployment listens on are taken: {', '.join(busy)}; stop what holds them", pytrace=False)
    try:
        yield deployment
    finally:
        deployment.compose("down", "-v")
        print(f"compose log: {deployment.log}")


@pytest.fixture
def deployment(tmp_path_factory):
    yield from start(tmp_path_factory)


@pytest.fixture
def celery_deployment(tmp_path_factory):
    yield from start(tmp_path_factory, celery=True)


def token(password: str) -> requests.Session:
    session = requests.Session()
    answer = session.post(f"{URL}/auth/token", json={"username": "admin", "password": password}, timeout=10)
    assert answer.status_code in (200, 201), answer.text
    session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return session


def secrets_digest(deployment: Deployment) -> str:
    done = deployment.compose("exec", "-T", "airflow-apiserver", "sh", "-c", f"cd {SECRETS_DIR} && sha256sum *")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_compose_up_sign_in_trigger_from_the_form_see_the_report_then_down_and_up_keeps_runs_and_secrets(deployment, browser):
    import boto3

    before = listeners()
    started = time.monotonic()
    deployment.up()
    print(f"compose up to every service healthy: {time.monotonic() - started:.0f} s")
    opened = listeners() - before
    assert {port for _, port in opened} >= set(PORTS), opened
    assert all(on_loopback(address) for address, _ in opened), f"the deployment listens beyond loopback: {sorted(opened)}"
    password = json.loads(deployment.read(f"{SECRETS_DIR}/passwords.json"))["admin"]
    secrets = secrets_digest(deployment)
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=ENDPOINT, aws_access_key_id="local", aws_secret_access_key="local")
    put_phantoms(s3, Path(deployment.log.parent), "compose-data", "study")

    page, dialog = signed_in_form(browser, {"url": URL, "password": password})
    run_id = trigger_a_lite_run_from_the_form(page, dialog, "compose-data", "study")
    api = token(password)
    run_url = f"{URL}/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}"
    assert wait_for(lambda: api.get(run_url, timeout=10).json()["state"] in ("success", "failed"), timeout=600)
    run = api.get(run_url, timeout=10).json()
    assert run["state"] == "success", run
    text = open_the_report_from_the_ui(page, URL, run_id)
    assert "sub-01_ses-1" in text and "sub-02" in text and "succeeded" in text
    page.close()

    # down (the volumes stay) and up again: the same secrets, the same password, the run kept
    assert deployment.compose("down").returncode == 0
    assert not port_in_use(8080)
    deployment.up()
    assert secrets_digest(deployment) == secrets
    assert json.loads(deployment.read(f"{SECRETS_DIR}/passwords.json"))["admin"] == password
    again = token(password)
    kept = again.get(f"{URL}/api/v2/dags/{DAG}/dagRuns", timeout=10).json()["dag_runs"]
    assert [(r["dag_run_id"], r["state"]) for r in kept] == [(run_id, "success")]
    # the report's route is still there, signed in; the report itself is gone with the local
    # endpoint, which keeps its buckets in memory (docs/pipelines.md says so), and it says so
    page, _ = signed_in_form(browser, {"url": URL, "password": password})
    assert f"run '{run_id}' has no report yet" in open_the_report_from_the_ui(page, URL, run_id)


def test_the_worker_override_is_the_compose_files_command_with_its_log_server_off():
    """local.yaml changes the worker's command only by --skip-serve-logs: the executor guard
    and the rest are the compose file's own."""
    base = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]["airflow-worker"]["command"]
    override = yaml.safe_load((ROOT / "tests/compose/local.yaml").read_text())["services"]["airflow-worker"]["command"]
    assert override[:2] == base[:2]
    assert override[2] == base[2].replace("exec airflow celery worker", "exec airflow celery worker --skip-serve-logs")
    assert override[2] != base[2]


def test_the_celery_profile_runs_a_triggered_run_on_its_worker(celery_deployment):
    """--profile celery with NDMG_EXECUTOR=CeleryExecutor, as the compose file's header starts
    it: Redis with the generated password and one Celery worker, healthy and on loopback; a run
    triggered through the API succeeds, and the worker is what ran its tasks."""
    import boto3

    deployment = celery_deployment
    before = listeners()
    deployment.up()
    opened = listeners() - before
    assert {port for _, port in opened} >= {*PORTS, *CELERY["ports"]}, opened
    assert all(on_loopback(address) for address, _ in opened), f"the deployment listens beyond loopback: {sorted(opened)}"
    # Redis refuses a client without the password airflow-init generated
    anonymous = deployment.compose("exec", "-T", "redis", "redis-cli", "ping")
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr
    password = json.loads(deployment.read(f"{SECRETS_DIR}/passwords.json"))["admin"]
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=ENDPOINT, aws_access_key_id="local", aws_secret_access_key="local")
    put_phantoms(s3, Path(deployment.log.parent), "celery-data", "study")

    api = token(password)
    # what the form's trigger does for a paused DAG (the UI test clicks it): unpause it
    assert api.patch(f"{URL}/api/v2/dags/{DAG}", json={"is_paused": False}, timeout=10).status_code == 200
    conf = {"bucket": "celery-data", "bidsdir": "study", "backend": "local", "pipeline": "lite"}
    answer = api.post(f"{URL}/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    run_id = answer.json()["dag_run_id"]
    run_url = f"{URL}/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}"
    ended = wait_for(lambda: api.get(run_url, timeout=10).json()["state"] in ("success", "failed"), timeout=600)
    state = api.get(run_url, timeout=10).json()["state"]
    assert ended and state == "success", f"run {state}: " + deployment.compose("logs", "--tail", "60").stdout[-8000:]
    # every task of the run went through the broker to the worker
    instances = api.get(f"{run_url}/taskInstances", params={"limit": 100}, timeout=10).json()["task_instances"]
    ran = {ti["task_id"] for ti in instances if ti["state"] == "success"}
    worker_log = deployment.compose("logs", "--no-color", "airflow-worker").stdout
    received = [line for line in worker_log.splitlines() if "received" in line and "execute_workload" in line]
    assert len(received) >= len(ran) > 0, worker_log[-4000:]
