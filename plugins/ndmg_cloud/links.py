"""The "Run report" button on the verify_and_report task: opens the run's report.html."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

from ndmg_cloud.layout import split_uri


def report_html_url(report_json_uri: str, endpoint: str | None = None) -> str:
    """Where a browser can open report.html: the S3 console, or the local endpoint."""
    bucket, key = split_uri(report_json_uri.removesuffix("report.json") + "report.html")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{quote(key)}"
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={quote(key, safe='')}"


class RunReportLink(BaseOperatorLink):
    name = "Run report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        uri = XCom.get_value(key="return_value", ti_key=ti_key)
        if not uri:
            return ""
        return report_html_url(uri, os.environ.get("AWS_ENDPOINT_URL"))
