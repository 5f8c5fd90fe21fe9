"""Registers ndmg-cloud's additions with Airflow: the "Run report" extra link, the route
that serves report.html, the trigger-time refusal of unknown params and of ndmg_infra for non-admins (see webapp.py), and
the listener that terminates a scan's Batch job when a person marks its task failed
(see cancel.py)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ndmg_cloud.orchestration import cancel
from ndmg_cloud.orchestration.links import RunReportLink
from ndmg_cloud.orchestration.webapp import ADMIN_ONLY_MIDDLEWARE, REPORT_APP, UNKNOWN_PARAMS_MIDDLEWARE


class NdmgCloudPlugin(AirflowPlugin):
    name = "ndmg_cloud"
    operator_extra_links = [RunReportLink()]
    fastapi_apps = [REPORT_APP]
    fastapi_root_middlewares = [UNKNOWN_PARAMS_MIDDLEWARE, ADMIN_ONLY_MIDDLEWARE]
    listeners = [cancel]
