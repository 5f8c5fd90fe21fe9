"""What ndmg-cloud adds to the Airflow api-server (registered by ``ndmg_cloud_plugin``):

- ``GET /ndmg-cloud/dags/<dag id>/runs/<run id>/report``: the run's report.html, read from S3
  with the deployment's AWS connection, for anyone Airflow lets read the DAG's runs. It is
  what the "Run report" extra link and ``ndmg_cloud participant --follow`` point at, so the
  report opens the same way on the embedded stack and on AWS.
- A middleware that refuses, at trigger time, conf keys that are not params of an ndmg DAG
  (Airflow itself would accept a typo such as ``parcelation`` and ignore it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse

from ndmg_cloud.orchestration.links import REPORT_ROUTE_PREFIX, report_html_uri
from ndmg_cloud.orchestration.taskids import DAG_ID, VERIFY_AND_REPORT
from ndmg_cloud.participant.params import ParamError, check_conf_keys

# report.html comes from the run's data (dataset names, reasons): serve it sandboxed, so no
# script in it could act as the signed-in user, with its inline styles and images only.
REPORT_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox allow-popups allow-popups-to-escape-sandbox"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
TRIGGER_PATH = re.compile(rf"(.*/)?api/v2/dags/{DAG_ID}/dagRuns/?")


def _can_read_runs() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))


def stored_xcom(dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int | None = None) -> Any:
    """An XCom value as the metadata DB holds it, read in an Airflow server process (the
    api-server: this route, the cancel listener); None if there is none."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=task_id, map_indexes=map_index, key=key)).first()
        return XComModel.deserialize_value(row) if row is not None else None


def report_json_uri_of(dag_id: str, run_id: str) -> str | None:
    """The URI the run's verify_and_report task returned (None until it has run)."""
    uri = stored_xcom(dag_id, run_id, VERIFY_AND_REPORT)
    return uri if isinstance(uri, str) else None


def read_report_html(report_json_uri: str) -> bytes:
    from ndmg_cloud.core.s3 import get_bytes
    from ndmg_cloud.orchestration.clients import s3_client

    return get_bytes(s3_client(), report_html_uri(report_json_uri))


def create_app() -> FastAPI:
    app = FastAPI(title="ndmg-cloud", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/dags/{dag_id}/runs/{run_id}/report", response_class=HTMLResponse, dependencies=[_can_read_runs()])
    def run_report(dag_id: str, run_id: str) -> HTMLResponse:
        uri = report_json_uri_of(dag_id, run_id)
        if not uri:
            raise HTTPException(404, f"run {run_id!r} of {dag_id} has no report yet: verify_and_report has not run")
        try:
            html = read_report_html(uri)
        except Exception as err:
            raise HTTPException(502, f"cannot read {report_html_uri(uri)}: {err}") from None
        return HTMLResponse(html, headers=REPORT_HEADERS)

    return app


class RefuseUnknownParams:
    """ASGI middleware: a trigger of the ndmg DAG whose conf has a key that is not a param
    gets HTTP 400 naming the key and the closest param, as a schema violation does."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[..., Awaitable[None]]
    ) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not TRIGGER_PATH.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        messages: list[dict[str, Any]] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        problem = unknown_params_problem(body)
        if problem:
            await JSONResponse({"detail": problem}, status_code=400)(scope, receive, send)
            return
        pending = iter(messages)

        async def replay() -> dict[str, Any]:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)


def unknown_params_problem(body: bytes) -> str | None:
    try:
        conf = json.loads(body or b"{}").get("conf") or {}
    except (ValueError, AttributeError):
        return None  # not ours to judge: Airflow answers malformed bodies itself
    if not isinstance(conf, dict):
        return None
    try:
        check_conf_keys(conf)
    except ParamError as err:
        return str(err)
    return None


REPORT_APP = {"app": create_app(), "url_prefix": REPORT_ROUTE_PREFIX, "name": "ndmg-cloud run reports"}
UNKNOWN_PARAMS_MIDDLEWARE = {"middleware": RefuseUnknownParams, "name": "ndmg-cloud unknown params"}
