"""Where a person opens a run's report.html: the api-server route of ``webapp.py``, which
reads it from S3 with the deployment's credentials (the same on the embedded stack and on
AWS). The "Run report" button on verify_and_report and the CLI both point there."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

from ndmg_cloud.core.layout import REPORT_HTML, sibling
from ndmg_cloud.orchestration.taskids import DAG_ID

REPORT_ROUTE_PREFIX = "/ndmg-cloud"


def report_html_uri(report_json_uri: str) -> str:
    """report.html beside the report.json a run's verify_and_report returned."""
    return sibling(report_json_uri, REPORT_HTML)


def report_path(run_id: str, dag_id: str = DAG_ID) -> str:
    return f"{REPORT_ROUTE_PREFIX}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/report"


def airflow_report_url(airflow_url: str, run_id: str, dag_id: str = DAG_ID) -> str:
    """The report as served by the Airflow at ``airflow_url`` (e.g. http://localhost:8080)."""
    return airflow_url.rstrip("/") + report_path(run_id, dag_id)


def deployment_base_url() -> str:
    """The api-server's public URL: ``[api] base_url``, else the server the workers report
    to (``[core] execution_api_server_url`` without ``/execution/``), else Airflow's own
    default, http://localhost:8080."""
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or ""
    if not base:
        execution = conf.get("core", "execution_api_server_url", fallback="") or ""
        base = execution.rstrip("/").removesuffix("/execution")
    return (base or "http://localhost:8080").rstrip("/")


class RunReportLink(BaseOperatorLink):
    name = "Run report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if not XCom.get_value(key="return_value", ti_key=ti_key):
            return ""  # no report yet
        return airflow_report_url(deployment_base_url(), ti_key.run_id, ti_key.dag_id)
