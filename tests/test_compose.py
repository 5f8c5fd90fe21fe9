"""docker-compose.yaml as Docker Compose itself resolves it (`docker compose config` needs no
Docker daemon), its init step run for real (Airflow stubbed), and the Airflow image's recipe.

Without Compose these tests are skipped with a line saying how to install it (make test installs
it as root on Debian; in CI, where .ci/run sets NDMG_REQUIRE_TEST_TOOLS=1, they fail instead).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from conftest import ROOT
from helpers import missing_tool

COMPOSE_FILE = ROOT / "docker-compose.yaml"
LOCK = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
AIRFLOW = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-init")
SECRETS_DIR = "/opt/airflow/secrets"
DOCKER_CONFIG = os.environ.get("DOCKER_CONFIG", str(Path.home() / ".docker"))


def compose_command() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    missing_tool("Docker Compose (docker compose or docker-compose)", "docker-compose")


def resolve(home: Path, *options: str, **env: str) -> dict:
    """The file as Compose resolves it, in an environment holding only `env` (and PATH, HOME)."""
    done = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), *options, "config"],
        # HOME is a scratch one (~/.aws is mounted); the Compose plugin is where Docker keeps it
        env={"PATH": os.environ["PATH"], "HOME": str(home), "DOCKER_CONFIG": DOCKER_CONFIG, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def services(home) -> dict:
    return resolve(home)["services"]


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only), from either Compose's output (v1 strings, v2 mappings)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found[target] = (source, mode == ["ro"])
        else:
            found[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return found


def ports(service: dict) -> set[tuple[str, str, int]]:
    """(host address, published port, container port), from either Compose's output."""
    found = set()
    for port in service.get("ports", []):
        if isinstance(port, str):
            *host, published, target = port.split("/")[0].split(":")
            found.add((host[0] if host else "", published, int(target)))
        else:
            found.add((port.get("host_ip", ""), str(port["published"]), int(port["target"])))
    return found


def test_services(services):
    assert {"postgres", *AIRFLOW} <= set(services)
    commands = {name: services[name]["command"] for name in AIRFLOW}
    assert commands["airflow-apiserver"] == ["airflow", "api-server"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]  # deferrable run_scan tasks wait here
    assert "airflow pools set ndmg_local" in " ".join(commands["airflow-init"])


def test_healthchecks_and_start_order(services):
    for name in ("postgres", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert "healthcheck" in services[name], name
    assert "/api/v2/monitor/health" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    for name in AIRFLOW:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in set(AIRFLOW) - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_the_scheduler_serves_the_health_check_its_healthcheck_probes(services):
    from airflow.configuration import conf

    scheduler = services["airflow-scheduler"]
    # off by default: without it the probe below fails forever and the scheduler is "unhealthy"
    assert scheduler["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"].lower() == "true"
    port = conf.get_default_value("scheduler", "scheduler_health_check_server_port")
    assert "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT" not in scheduler["environment"]
    assert f"http://localhost:{port}/health" in scheduler["healthcheck"]["test"]


def test_local_executor_mounts_and_read_only_credentials(services, home):
    for name in AIRFLOW:
        service = services[name]
        mounted = mounts(service)
        assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert mounted["/opt/airflow/dags"][0] == str(ROOT / "dags")
        assert mounted["/opt/airflow/plugins"][0] == str(ROOT / "plugins")
        assert mounted["/home/airflow/.aws"] == (str(home / ".aws"), True), "host AWS credentials must be mounted read-only"
        assert int(service["environment"]["AIRFLOW__CORE__MAX_MAP_LENGTH"]) >= 100_000
        # the mounted ndmg_cloud wins over the image's copy, in Airflow and in runner subprocesses
        assert service["environment"]["PYTHONPATH"] == "/opt/airflow/plugins"


def test_versions_match_the_lock(home):
    dockerfile = (ROOT / "container" / "airflow.Dockerfile").read_text()
    (airflow_tag,) = re.findall(r"^ARG AIRFLOW_BASE=apache/airflow:([\d.]+)-python3\.11$", dockerfile, re.M)
    assert airflow_tag == LOCK["apache-airflow"] == "3.3.2"
    # the local stand-in make images builds installs the same Airflow
    standin = (ROOT / "container" / "local" / "airflow.Dockerfile").read_text()
    assert f"apache-airflow=={LOCK['apache-airflow']} " in standin
    moto = resolve(home, "--profile", "local-aws")["services"]["moto"]
    assert moto["image"] == f"motoserver/moto:{LOCK['moto']}"
    assert moto["profiles"] == ["local-aws"]
    assert ports(moto) == {("127.0.0.1", "5000", 5000)}  # loopback only


def test_only_the_api_server_is_published_and_on_loopback_unless_asked(services, home):
    assert ports(services["airflow-apiserver"]) == {("127.0.0.1", "8080", 8080)}
    for name in ("postgres", *set(AIRFLOW) - {"airflow-apiserver"}):
        assert not services[name].get("ports"), f"{name} must not be published"
    everywhere = resolve(home, NDMG_AIRFLOW_BIND="0.0.0.0")["services"]["airflow-apiserver"]
    assert ports(everywhere) == {("0.0.0.0", "8080", 8080)}


def test_no_secret_is_written_in_the_file(services):
    from airflow.configuration import conf

    assert "change-me" not in COMPOSE_FILE.read_text()
    # Postgres is on the compose network only (not published, checked above).
    allowed = {("database", "sql_alchemy_conn")}
    for name in AIRFLOW:
        env = services[name]["environment"]
        assert mounts(services[name])[SECRETS_DIR][0] == "airflow-secrets"
        for section, key in conf.sensitive_config_values - allowed:
            variable = f"AIRFLOW__{section.upper()}__{key.upper()}"
            assert variable not in env, f"{name}: {variable} is a literal secret; read it from {SECRETS_DIR} with {variable}_CMD"
        for variable in ("AIRFLOW__API_AUTH__JWT_SECRET_CMD", "AIRFLOW__API__SECRET_KEY_CMD", "AIRFLOW__CORE__FERNET_KEY_CMD"):
            assert re.fullmatch(rf"cat {SECRETS_DIR}/\w+", env[variable]), (name, variable, env[variable])
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith(SECRETS_DIR + "/")


def run_init(services: dict, secrets: Path, stubs: Path) -> str:
    """airflow-init's script on this machine: the secrets in `secrets`, `airflow` a stub."""
    init = services["airflow-init"]
    (script,) = init["command"]
    stubs.mkdir(exist_ok=True)
    (stubs / "airflow").write_text(f'#!/bin/sh\necho "airflow $*" >> "{stubs}/calls"\n')
    (stubs / "airflow").chmod(0o755)
    (stubs / "python").unlink(missing_ok=True)
    (stubs / "python").symlink_to(sys.executable)
    done = subprocess.run(
        [*init["entrypoint"], script.replace(SECRETS_DIR, str(secrets))],
        env={"PATH": f"{stubs}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_init_generates_the_secrets_once_and_says_where_the_password_is(services, tmp_path, monkeypatch):
    from airflow.configuration import conf

    secrets, stubs = tmp_path / "secrets", tmp_path / "bin"
    secrets.mkdir()
    assert services["airflow-init"]["entrypoint"][0] == "/bin/bash"  # not the image's, which starts Airflow first
    printed = run_init(services, secrets, stubs)
    env = services["airflow-apiserver"]["environment"]
    passwords_file = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    assert f"docker compose exec airflow-apiserver cat {secrets}/" in printed
    assert (stubs / "calls").read_text().splitlines() == [
        "airflow db migrate",
        "airflow pools set ndmg_local 2 ndmg-cloud local backend",
    ]
    made = {path.name: path.read_text() for path in secrets.iterdir()}
    assert {path.name for path in secrets.iterdir() if path.stat().st_mode & 0o077} == set()

    # Airflow reads each secret through its *_CMD variable, exactly as the file holds it.
    for section, key in (("api_auth", "jwt_secret"), ("api", "secret_key"), ("core", "fernet_key")):
        variable = f"AIRFLOW__{section.upper()}__{key.upper()}"
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv(f"{variable}_CMD", env[f"{variable}_CMD"].replace(SECRETS_DIR, str(secrets)))
        value = conf.get(section, key)
        assert value == made[Path(env[f"{variable}_CMD"].split()[-1]).name] and len(value) >= 32
    Fernet(conf.get("core", "fernet_key"))

    # The password file the API server reads has one for every configured user.
    passwords = json.loads(Path(passwords_file.replace(SECRETS_DIR, str(secrets))).read_text())
    users = [u.split(":")[0] for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
    assert users == ["admin"] and set(passwords) == set(users)
    assert len(passwords["admin"]) >= 12 and passwords["admin"] != "admin"

    # The celery profile's Redis asks for the generated password; the broker URL carries it.
    password = made["redis_password"]
    assert len(password) >= 32 and f"requirepass {password}\n" in made["redis.conf"]
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL_CMD", env["AIRFLOW__CELERY__BROKER_URL_CMD"].replace(SECRETS_DIR, str(secrets)))
    assert conf.get("celery", "broker_url") == f"redis://:{password}@redis:6379/0"

    # A restart keeps them (tokens, encrypted connections and the password stay valid).
    run_init(services, secrets, stubs)
    assert {path.name: path.read_text() for path in secrets.iterdir()} == made


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            sources += [word for word in line.split()[1:-1] if not word.startswith("--")]
    return sources


def test_the_airflow_image_installs_the_project_and_its_scripts():
    dockerfile = (ROOT / "container" / "airflow.Dockerfile").read_text()
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    wheel_stage, airflow_stage = dockerfile.split("\nFROM ${AIRFLOW_BASE}\n")
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in wheel_stage
    requirements = airflow_stage.index("-r /opt/ndmg-cloud/requirements.txt")
    project = airflow_stage.index(f"--no-deps /opt/ndmg-cloud/wheels/{name.replace('-', '_')}-*.whl")
    assert requirements < project  # the pinned requirements, then the project without resolving again
    assert "-c /opt/ndmg-cloud/constraints.txt" in airflow_stage
    assert f"mkdir -m 700 {SECRETS_DIR}" in airflow_stage
    # backend=local with pipeline=lite runs in these containers: the lite image's packages too
    assert "-r /opt/ndmg-cloud/lite-requirements.txt" in airflow_stage


def test_the_build_context_holds_what_the_dockerfiles_copy_and_no_venv():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*"  # an allowlist: nothing goes to the builder unless named
    kept = [pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")]
    for dockerfile in sorted((ROOT / "container").glob("*Dockerfile*")):
        for source in copy_sources(dockerfile):
            assert any(fnmatch.fnmatch(source, pattern) for pattern in kept), (
                f"{dockerfile.name} copies {source}: add !{source} to .dockerignore"
            )
            assert any((ROOT).glob(source)), f"{dockerfile.name} copies {source}, which does not exist"
    assert not any(fnmatch.fnmatch(path, pattern) for path in (".venv", ".git", "tests") for pattern in kept)


def test_no_scan_runs_in_airflows_containers_unless_turned_on(services, home):
    """The scheduler's container holds the secrets volume and ~/.aws: backend=local (the
    pipeline in a subprocess there) is off unless a local-aws machine turns it on."""
    from ndmg_cloud.participant.local import LOCAL_BACKEND_ENV

    for name in AIRFLOW:
        assert services[name]["environment"][LOCAL_BACKEND_ENV] == "off"
    turned_on = resolve(home, **{LOCAL_BACKEND_ENV: "on"})["services"]["airflow-scheduler"]["environment"]
    assert turned_on[LOCAL_BACKEND_ENV] == "on"


def test_the_celery_profile_adds_redis_and_workers_like_airflows_own_compose(home):
    """--profile celery with NDMG_EXECUTOR=CeleryExecutor: Redis (unpublished, password from
    the secrets volume) and Celery workers that scale; every Airflow part on CeleryExecutor.
    Without the profile neither starts. (tests/test_crash.py runs such a setup live.)"""
    default = resolve(home)["services"]  # Compose 1.x lists profiled services too: `up` skips them
    assert all(default[name].get("profiles") == ["celery"] for name in ("redis", "airflow-worker") if name in default)
    assert default["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert default["airflow-triggerer"]["environment"]["NDMG_TRIGGERERS"] == "1"
    services = resolve(home, "--profile", "celery", NDMG_EXECUTOR="CeleryExecutor", NDMG_TRIGGERERS="2")["services"]
    redis, worker = services["redis"], services["airflow-worker"]
    assert redis["profiles"] == worker["profiles"] == ["celery"]
    for name in (*AIRFLOW, "airflow-worker"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL_CMD"] == f"cat {SECRETS_DIR}/celery_broker_url"
        assert env["NDMG_TRIGGERERS"] == "2", name  # each triggerer takes half the Batch API budget
    assert "airflow celery worker" in " ".join(worker["command"])
    # the executor loads with the celery pinned in constraints.txt (celery 5.7 broke provider 3.26)
    from airflow.providers.celery.executors.celery_executor import CeleryExecutor  # noqa: F401

    assert "inspect ping -d" in " ".join(worker["healthcheck"]["test"])  # this worker answers its broker
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "container_name" not in worker  # --scale airflow-worker=N
    assert redis["command"] == ["redis-server", f"{SECRETS_DIR}/redis.conf"]
    assert mounts(redis)[SECRETS_DIR] == ("airflow-secrets", True)
    assert not redis.get("ports") and not worker.get("ports")
    # the worker refuses to start on the default executor, saying what to set
    script = worker["command"][-1]
    done = subprocess.run(
        ["bash", "-c", script.replace("$$", "$")],
        env={"PATH": os.environ["PATH"], "AIRFLOW__CORE__EXECUTOR": "LocalExecutor"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "NDMG_EXECUTOR=CeleryExecutor" in done.stderr
