"""Registers ndmg-cloud's UI additions with Airflow (the "Run report" extra link)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ndmg_cloud.links import RunReportLink


class NdmgCloudPlugin(AirflowPlugin):
    name = "ndmg_cloud"
    operator_extra_links = [RunReportLink()]
