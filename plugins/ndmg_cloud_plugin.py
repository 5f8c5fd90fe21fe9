"""Registers ndmg-cloud's additions with Airflow: the "Run report" extra link, the route
that serves report.html, and the trigger-time refusal of unknown params (see webapp.py)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ndmg_cloud.links import RunReportLink
from ndmg_cloud.webapp import REPORT_APP, UNKNOWN_PARAMS_MIDDLEWARE


class NdmgCloudPlugin(AirflowPlugin):
    name = "ndmg_cloud"
    operator_extra_links = [RunReportLink()]
    fastapi_apps = [REPORT_APP]
    fastapi_root_middlewares = [UNKNOWN_PARAMS_MIDDLEWARE]
