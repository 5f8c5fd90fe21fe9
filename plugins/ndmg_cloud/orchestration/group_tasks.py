"""The ``ndmg_group`` DAG's task callables: which run reports to compare, and the group
level of each (``ndmg_cloud.group``)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException

from ndmg_cloud.group.params import GroupParams
from ndmg_cloud.orchestration.clients import s3_client

log = logging.getLogger(__name__)


def find_report_step(params: dict[str, Any], triggering_asset_events: Any = None) -> list[str]:
    """The ndmg_group DAG's first task: the report.json files whose connectomes to compare:
    the 'report' param, else the newest run under 'output', else, for a run the reports
    Asset triggered, the newest report of each dataset whose event it gathered."""
    from ndmg_cloud.group.compare import GroupError, newest_report

    given = GroupParams.from_params(params)
    report, output = given.report, given.output
    if report and output:
        raise AirflowFailException(f"give 'report' or 'output', not both (report={report!r}, output={output!r})")
    if report:
        return [report]
    if output:
        try:
            return [newest_report(s3_client(), output)]
        except GroupError as err:
            raise AirflowFailException(str(err)) from None
    newest: dict[str, Any] = {}  # per dataset's reports Asset (an event is listed under its alias too)
    for events in (triggering_asset_events or {}).values():
        for event in events:
            uri = event.asset.uri
            if (event.extra or {}).get("report") and (uri not in newest or event.timestamp > newest[uri].timestamp):
                newest[uri] = event
    if not newest:
        raise AirflowFailException(
            "no run report to compare: trigger with 'report' (s3://.../reports/<run>/report.json) or 'output' "
            "(a dataset's output location); a successful ndmg_participant run triggers it by itself"
        )
    for event in newest.values():
        log.info("reports of %s run %s: %s", event.source_dag_id, event.extra.get("run_id"), event.extra["report"])
    return [event.extra["report"] for event in newest.values()]


def compare_connectomes_step(reports: list[str], params: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The ndmg_group DAG's work: per report and parcellation, group.json/.csv/.html under
    ``<output>/group/<parcellation>/``; returns what each found, for the CLI and the log."""
    from airflow.providers.common.compat.sdk import AirflowSkipException

    from ndmg_cloud.group.compare import DryRunReport, GroupError, run_group

    given = GroupParams.from_params(params)
    permutations = given.permutations
    out: dict[str, dict[str, dict[str, Any]]] = {}
    dry = []
    for report in reports:
        try:
            results = run_group(s3_client(), report, permutations, expected_output=given.output)
        except DryRunReport as err:
            log.info("%s", err)
            dry.append(str(err))
            continue
        except GroupError as err:
            raise AirflowFailException(str(err)) from None
        out[report] = {}
        for result in results:
            summary = result.summary()
            out[report][result.parcellation] = summary.to_xcom()
            log.info(
                "%s: %d scans used, %d left out; discriminability %s, p-value %s%s; %s",
                summary.parcellation,
                summary.scans,
                len(summary.left_out),
                summary.discriminability,
                summary.p_value,
                f" ({summary.why_not})" if summary.why_not else "",
                summary.html,
            )
    if not out:
        raise AirflowSkipException("; ".join(dry))
    return out
