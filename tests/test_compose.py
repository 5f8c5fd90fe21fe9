"""docker-compose.yaml has the deployment's shape (it cannot run here: no Docker daemon)."""

from __future__ import annotations

import re

import yaml

from conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
LOCK = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
AIRFLOW = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-init")


def test_services():
    assert {"postgres", *AIRFLOW} <= set(COMPOSE["services"])
    commands = {name: COMPOSE["services"][name]["command"] for name in AIRFLOW}
    assert commands["airflow-apiserver"] == ["airflow", "api-server"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]  # deferrable run_scan tasks wait here
    assert "airflow pools set ndmg_local" in " ".join(commands["airflow-init"])


def test_healthchecks_and_start_order():
    for name in ("postgres", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert "healthcheck" in COMPOSE["services"][name], name
    assert "/api/v2/monitor/health" in " ".join(COMPOSE["services"]["airflow-apiserver"]["healthcheck"]["test"])
    for name in AIRFLOW:
        assert COMPOSE["services"][name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert COMPOSE["services"]["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_local_executor_mounts_and_read_only_credentials():
    for name in AIRFLOW:
        service = COMPOSE["services"][name]
        assert service["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert "./dags:/opt/airflow/dags" in service["volumes"]
        assert "./plugins:/opt/airflow/plugins" in service["volumes"]
        aws = [v for v in service["volumes"] if v.endswith("/.aws:ro")]
        assert aws, "host AWS credentials must be mounted read-only"
        assert int(service["environment"]["AIRFLOW__CORE__MAX_MAP_LENGTH"]) >= 100_000


def test_versions_match_the_lock():
    dockerfile = (ROOT / "container" / "airflow.Dockerfile").read_text()
    (airflow_tag,) = re.findall(r"^FROM apache/airflow:([\d.]+)", dockerfile, re.M)
    assert airflow_tag == LOCK["apache-airflow"] == "3.3.2"
    moto = COMPOSE["services"]["moto"]
    assert moto["image"] == f"motoserver/moto:{LOCK['moto']}"
    assert moto["profiles"] == ["local-aws"]
    assert moto["ports"] == ["127.0.0.1:5000:5000"]  # loopback only
