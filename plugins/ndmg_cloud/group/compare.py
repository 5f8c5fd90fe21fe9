"""The group level: every succeeded scan's connectome of a run, per parcellation ->
graph statistics per scan, the group's mean connectome, and discriminability.

Input: a run's report.json (the ``ndmg_participant`` run that made the connectomes). The
report says which scans succeeded; one listing of the output location says which
connectome files are there; one GET per file reads them (no HEAD per scan). Scans that
failed, are missing or cannot be read are listed under ``left_out`` with the reason,
never dropped. Outputs, per parcellation, under ``<output>/group/<parcellation>/``:

    group.json           scans used and left out, their graph statistics, the group's,
                         discriminability with its p-value (or why it was not computed)
    group.csv            one row per scan (left-out scans too, with the reason)
    group.html           self-contained: mean adjacency heatmap, degree distributions per
                         subject, discriminability against its null distribution
    mean_connectome.csv  the mean adjacency as an m2g edge list (node 0 the background)
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ndmg_cloud.core.layout import (
    DESCRIPTION,
    GROUP_CSV,
    GROUP_HTML,
    GROUP_JSON,
    MEAN_CONNECTOME,
    OutputLayout,
    S3Location,
    is_report,
)
from ndmg_cloud.core.s3 import S3AccessError, get_bytes, list_objects, put_json, read_json_at, write_at
from ndmg_cloud.group.discrim import Discriminability, discriminability
from ndmg_cloud.group.graphstats import adjacency, graph_stats
from ndmg_cloud.group.result import GroupResult, LeftOut, ScanGraph
from ndmg_cloud.participant.verify import Listing
from ndmg_cloud.report.figures import Graph, GraphError, parse_connectome
from ndmg_cloud.report.runreport import FIRST_NODE, RunReport, parcellation_of

log = logging.getLogger(__name__)
READERS = 16  # GETs at a time
MAX_CONNECTOME_BYTES = 64 * 1024 * 1024
MAX_GROUP_NODES = 1000  # regions: a scan's dense adjacency is held while it is compared
USABLE = ("succeeded", "skipped_done")
RUN_ID = re.compile(r"[A-Za-z0-9_.:+~-]{1,250}")  # Airflow's run id characters; "." and ".." alone are no run
PARCELLATION = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}"
)  # a folder name under group/ (never "..")  # skipped_done: made by the same code in an earlier run, verified


class GroupError(RuntimeError):
    """The group level cannot start; the message says why and what to do."""


class DryRunReport(GroupError):
    """The report is a dry run's: no scan ran, there is nothing to compare."""


def newest_report(s3_client: Any, output: str) -> str:
    """The report.json of the newest run under ``output`` that was not a dry run (one
    listing of its reports/, then a GET per report from the newest until one is)."""
    root = S3Location.parse(output)
    try:
        listed = list(list_objects(s3_client, root.bucket, OutputLayout(root).reports_prefix))
    except S3AccessError as err:
        raise GroupError(str(err)) from None
    reports = sorted((o for o in listed if is_report(o.key)), key=lambda o: (o.last_modified, o.key), reverse=True)
    for candidate in reports:
        uri = f"s3://{root.bucket}/{candidate.key}"
        if not RunReport.from_dict(read_json_at(s3_client, uri)).dry_run:
            return uri
    kind = f"only dry-run reports ({len(reports)})" if reports else "no run report"
    raise GroupError(f"{kind} under {OutputLayout(root).reports_uri}/: run ndmg_participant on this output first")


def checked_output(s3_client: Any, report_uri: str, report: RunReport, expected_output: str = "") -> S3Location:
    """The output location a report names, once it is shown to be that run's: the report
    lives at ``<output>reports/<run id>/report.json``; ``<output>`` equals ``expected_output``
    when given; and ``<output>`` is marked as BIDS derivatives (the ``dataset_description.json``
    every run writes there), so no report, wherever it came from, sends group outputs into
    a raw dataset. ``GroupError`` saying which does not hold."""
    try:
        root = S3Location.parse(report.output)
    except ValueError as err:
        raise GroupError(f"the run report {report_uri} names no usable output location: {err}") from None
    layout = OutputLayout(root)
    if not RUN_ID.fullmatch(report.run_id) or not report.run_id.strip(".") or report_uri != layout.report_uri(report.run_id):
        raise GroupError(
            f"the run report {report_uri} says it is run {report.run_id[:200]!r} with outputs at {root}, but that run's report "
            f"lives at {layout.report_uri(report.run_id[:200])}: refusing it (give the report.json of the run itself)"
        )
    if expected_output and S3Location.parse(expected_output) != root:
        raise GroupError(f"the run report {report_uri} is for outputs at {root}, not at the 'output' given ({expected_output})")
    try:
        description = read_json_at(s3_client, root.uri(DESCRIPTION))
    except Exception:
        description = None
    if not isinstance(description, dict) or description.get("DatasetType") != "derivative":
        raise GroupError(
            f"{root} is not marked as derivatives ({root.uri(DESCRIPTION)} with DatasetType 'derivative', which every run "
            "writes): refusing to write group outputs there"
        )
    return root


def parcellation_size(pipeline: str, parcellation: str) -> int | None:
    """The node count a parcellation is known to have (lite's gridN: N**3), else None."""
    m = re.fullmatch(r"grid(\d+)", parcellation)
    return int(m.group(1)) ** 3 if pipeline == "lite" and m else None


def run_group(
    s3_client: Any, report_uri: str, permutations: int = 1000, write: bool = True, expected_output: str = ""
) -> list[GroupResult]:
    """The group level of the run whose report is at ``report_uri``; writes each
    parcellation's outputs (unless ``write`` is False) and returns the results. The report
    must live where its run's reports live (``checked_output``), and under
    ``expected_output`` when one is given."""
    try:
        report = RunReport.from_dict(read_json_at(s3_client, report_uri))
    except Exception as err:
        raise GroupError(f"cannot read the run report {report_uri}: {err.__class__.__name__}: {err}") from None
    if report.dry_run:
        raise DryRunReport(f"{report_uri} is the report of a dry run ({report.run_id}): no connectome was made")
    root = checked_output(s3_client, report_uri, report, expected_output)
    layout = OutputLayout(root)
    try:
        listing = Listing(list_objects(s3_client, root.bucket, root.prefix))
    except S3AccessError as err:
        raise GroupError(str(err)) from None
    usable = [row for row in report.scans if row.status in USABLE]
    failed = [
        LeftOut(row.scan_id, row.subject, row.session, row.status, row.reason or f"the scan did not succeed ({row.status})")
        for row in report.scans
        if row.status not in USABLE
    ]
    named = {parcellation_of(path) for row in usable for path in row.outputs}
    for bad in sorted(p for p in named if not PARCELLATION.fullmatch(p)):
        log.warning("the run report names parcellation %r, which is no folder name: it is left out", bad[:100])
    parcellations = sorted(p for p in named if PARCELLATION.fullmatch(p))
    to_read: dict[str, list[tuple[Any, str]]] = {parc: [] for parc in parcellations}  # (row, key)
    left_out: dict[str, list[LeftOut]] = {parc: [] for parc in parcellations}
    for row in usable:
        prefix = layout.session_prefix(row.subject, row.session)
        paths: dict[str, str] = {}
        for path in row.outputs:
            paths.setdefault(parcellation_of(path), path)  # one connectome per scan and parcellation
        for parc in parcellations:
            if parc not in paths:
                left_out[parc].append(
                    LeftOut(
                        row.scan_id, row.subject, row.session, "no connectome", f"the run report lists no {parc} connectome for this scan"
                    )
                )
                continue
            key = prefix + paths[parc]
            size = listing.objects[key].size if key in listing else None
            if not size:
                what = "is empty" if size == 0 else "is not there now"
                left_out[parc].append(
                    LeftOut(row.scan_id, row.subject, row.session, "missing", f"{row.status} in {report.run_id} but {key} {what}")
                )
            elif size > MAX_CONNECTOME_BYTES:
                left_out[parc].append(LeftOut(row.scan_id, row.subject, row.session, "too large", f"{key} is {size:,} bytes"))
            else:
                to_read[parc].append((row, key))
    if not any(to_read.values()):
        raise GroupError(
            f"no scan with a connectome in the run report {report_uri} "
            f"({len(report.scans)} scans, {len(failed)} did not succeed): nothing to compare"
        )

    def read(item: tuple[Any, str]) -> tuple[Any, str, Graph | str]:
        row, key = item
        try:
            return row, key, parse_connectome(get_bytes(s3_client, f"s3://{root.bucket}/{key}"), FIRST_NODE.get(report.pipeline))
        except GraphError as err:
            return row, key, f"unreadable: {err}"
        except Exception as err:
            return row, key, f"could not be read: {err.__class__.__name__}: {err}"

    made_at = datetime.now(UTC).isoformat(timespec="seconds")
    results = []
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        for parc in sorted(to_read):
            graphs = []
            for row, key, graph in pool.map(read, to_read[parc]):
                if isinstance(graph, str):
                    left_out[parc].append(LeftOut(row.scan_id, row.subject, row.session, "unreadable", f"{key}: {graph}"))
                else:
                    graphs.append((row, key, _background_first(graph)))
            results.append(_compare(report, report_uri, parc, graphs, failed + left_out[parc], permutations, made_at, root))
    if write:
        for result in results:
            write_group(s3_client, result)
    return results


def _background_first(graph: Graph) -> Graph:
    """A dense matrix (legacy ndmg) numbers its regions from 0: shift them to m2g's 1..n."""
    if graph.size is None:
        return graph
    return Graph([(i + 1, j + 1, w) for i, j, w in graph.edges], 1, graph.size)


def _compare(
    report: RunReport,
    report_uri: str,
    parc: str,
    graphs: list[tuple[Any, str, Graph]],
    left_out: list[LeftOut],
    permutations: int,
    made_at: str,
    root: S3Location,
) -> GroupResult:
    known = parcellation_size(report.pipeline, parc)
    nodes = known or max((g.last_node for _, _, g in graphs), default=0)
    nodes_from = f"{parc} has {known} regions" if known else "the highest region any scan of the group connects"
    common: dict[str, Any] = dict(
        dataset=report.dataset,
        parcellation=parc,
        report=report_uri,
        run_id=report.run_id,
        pipeline=report.pipeline,
        output=report.output,
        nodes=nodes,
        nodes_from=nodes_from,
        made_at=made_at,
    )
    if nodes > MAX_GROUP_NODES:
        why = (
            f"{parc} has {nodes:,} regions; the group level compares parcellations of up to "
            f"{MAX_GROUP_NODES:,} (it holds a dense adjacency matrix per scan)"
        )
        skipped = [LeftOut(row.scan_id, row.subject, row.session, "not compared", why) for row, _, _ in graphs]
        return GroupResult(
            **common,
            scans=[],
            left_out=sorted(left_out + skipped, key=lambda x: x.scan_id),
            discriminability=Discriminability(None, None, why_not=why),
            mean=np.zeros((0, 0)),
        )
    upper = np.triu_indices(nodes, k=1)
    scans: list[ScanGraph] = []
    vectors: list[np.ndarray] = []
    degrees: dict[str, list[int]] = {}
    total = np.zeros((nodes, nodes))
    for row, key, graph in graphs:
        matrix = adjacency(graph, nodes)
        stats = graph_stats(matrix)
        scans.append(ScanGraph(row.scan_id, row.subject, row.session, key.removeprefix(root.prefix), stats))
        vectors.append(matrix[upper].astype(np.float32))
        np.fill_diagonal(matrix, 0)
        degrees.setdefault(row.subject, []).extend(np.count_nonzero(matrix, axis=1).tolist())
        total += matrix
    mean = total / len(graphs) if graphs else total
    discr = discriminability(np.array(vectors) if vectors else np.zeros((0, 0)), [s.subject for s in scans], permutations)
    log.info("%s: %d scans, %d left out; discriminability %s (p %s)", parc, len(scans), len(left_out), discr.value, discr.p_value)
    return GroupResult(
        **common,
        scans=scans,
        left_out=sorted(left_out, key=lambda x: x.scan_id),
        discriminability=discr,
        mean=mean,
        mean_stats=graph_stats(mean),
        degrees={k: np.array(v) for k, v in sorted(degrees.items())},
    )


def write_group(s3_client: Any, result: GroupResult) -> dict[str, str]:
    """Write group.json, group.csv, group.html and mean_connectome.csv; return their URIs."""
    from ndmg_cloud.group.page import group_html

    files = result.files
    try:
        write_at(s3_client, files[MEAN_CONNECTOME], result.mean_edge_list().encode(), "text/csv")
        write_at(s3_client, files[GROUP_CSV], result.csv_text().encode(), "text/csv")
        write_at(s3_client, files[GROUP_HTML], group_html(result).encode(), "text/html; charset=utf-8")
        put_json(s3_client, files[GROUP_JSON], result.to_dict())  # last: its presence means the rest is there
    except S3AccessError as err:
        raise GroupError(str(err)) from None
    return files
