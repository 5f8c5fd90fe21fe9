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

import csv
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ndmg_cloud.discrim import Discriminability, discriminability
from ndmg_cloud.figures import Graph, GraphError, parse_connectome
from ndmg_cloud.graphstats import GraphStats, adjacency, graph_stats
from ndmg_cloud.layout import OutputLayout, S3Location
from ndmg_cloud.report import FIRST_NODE, RunReport, parcellation_of
from ndmg_cloud.s3 import S3AccessError, get_bytes, list_objects, put_bytes, put_json, read_json_at
from ndmg_cloud.verify import Listing

log = logging.getLogger(__name__)
READERS = 16  # GETs at a time
MAX_CONNECTOME_BYTES = 64 * 1024 * 1024


class GroupError(RuntimeError):
    """The group level cannot start; the message says why and what to do."""


class DryRunReport(GroupError):
    """The report is a dry run's: no scan ran, there is nothing to compare."""


@dataclass(frozen=True)
class ScanGraph:
    """One scan's connectome in the group, and its statistics."""

    scan_id: str
    subject: str
    session: str | None
    path: str  # relative to the output location
    stats: GraphStats


@dataclass(frozen=True)
class LeftOut:
    scan_id: str
    subject: str
    session: str | None
    status: str
    reason: str


@dataclass
class GroupResult:
    """One parcellation's group level; ``to_dict`` is group.json."""

    dataset: str
    parcellation: str
    report: str
    run_id: str
    pipeline: str
    output: str
    nodes: int
    nodes_from: str
    scans: list[ScanGraph]
    left_out: list[LeftOut]
    discriminability: Discriminability
    made_at: str
    mean: np.ndarray = field(repr=False)  # nodes x nodes, node k at index k - 1
    degrees: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # per subject, pooled

    @property
    def group_stats(self) -> dict[str, Any]:
        rows = [s.stats.row() for s in self.scans]
        keys = ("edges", "density", "mean_degree", "mean_strength", "clustering", "global_efficiency")
        means = {k: round(float(np.mean([r[k] for r in rows if r[k] is not None])), 4) if rows else None for k in keys}
        return {
            "scans": len(self.scans), "subjects": len({s.subject for s in self.scans}),
            "scans_left_out": len(self.left_out), "mean_over_scans": means,
            "mean_connectome": {**graph_stats(self.mean).to_dict(), "path": "mean_connectome.csv"},
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "parcellation": self.parcellation, "report": self.report,
            "run_id": self.run_id, "pipeline": self.pipeline, "output": self.output, "made_at": self.made_at,
            "nodes": self.nodes, "nodes_from": self.nodes_from,
            "group": self.group_stats,
            "discriminability": self.discriminability.to_dict(),
            "scans": [{"scan_id": s.scan_id, "subject": s.subject, "session": s.session, "path": s.path,
                       **s.stats.to_dict()} for s in self.scans],
            "left_out": [asdict(x) for x in self.left_out],
        }  # fmt: skip

    def csv_text(self) -> str:
        out = io.StringIO()
        columns = ["scan_id", "subject", "session", "status", *next(iter([s.stats.row() for s in self.scans]), {}), "reason"]
        if len(columns) == 5:
            columns = ["scan_id", "subject", "session", "status", "reason"]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for s in self.scans:
            writer.writerow({"scan_id": s.scan_id, "subject": s.subject, "session": s.session or "",
                             "status": "used", **s.stats.row(), "reason": ""})  # fmt: skip
        for x in self.left_out:
            writer.writerow({"scan_id": x.scan_id, "subject": x.subject, "session": x.session or "",
                             "status": x.status, "reason": x.reason})  # fmt: skip
        return out.getvalue()

    def mean_edge_list(self) -> str:
        rows, cols = np.nonzero(np.triu(self.mean, k=1))
        return "".join(f"{i + 1} {j + 1} {round(float(self.mean[i, j]), 4)}\n" for i, j in zip(rows, cols))


def newest_report(s3_client: Any, output: str) -> str:
    """The report.json of the newest run under ``output`` (one listing of its reports/)."""
    root = S3Location.parse(output)
    reports = [o for o in list_objects(s3_client, root.bucket, OutputLayout(root).reports_prefix) if o.key.endswith("/report.json")]
    if not reports:
        raise GroupError(f"no run report under {root.uri('reports/')}: run ndmg_participant on this output first")
    newest = max(reports, key=lambda o: (o.last_modified, o.key))
    return f"s3://{root.bucket}/{newest.key}"


def parcellation_size(pipeline: str, parcellation: str) -> int | None:
    """The node count a parcellation is known to have (lite's gridN: N**3), else None."""
    m = re.fullmatch(r"grid(\d+)", parcellation)
    return int(m.group(1)) ** 3 if pipeline == "lite" and m else None


def run_group(s3_client: Any, report_uri: str, permutations: int = 1000, write: bool = True) -> list[GroupResult]:
    """The group level of the run whose report is at ``report_uri``; writes each
    parcellation's outputs (unless ``write`` is False) and returns the results."""
    try:
        report = RunReport.from_dict(read_json_at(s3_client, report_uri))
    except Exception as err:  # noqa: BLE001 - say which file, whatever the reason
        raise GroupError(f"cannot read the run report {report_uri}: {err.__class__.__name__}: {err}") from None
    if report.params.get("dry_run"):
        raise DryRunReport(f"{report_uri} is the report of a dry run ({report.run_id}): no connectome was made")
    root = S3Location.parse(report.output)
    layout = OutputLayout(root)
    listing = Listing(list_objects(s3_client, root.bucket, root.prefix))
    to_read: dict[str, list[tuple[Any, str]]] = {}  # parcellation -> (row, key)
    left_out: dict[str, list[LeftOut]] = {}
    failed: list[LeftOut] = []
    for row in report.scans:
        if row.status != "succeeded":
            reason = row.reason or f"the scan did not succeed ({row.status})"
            failed.append(LeftOut(row.scan_id, row.subject, row.session, row.status, reason))
            continue
        prefix = layout.session_prefix(row.subject, row.session)
        for path in row.outputs:
            parc, key = parcellation_of(path), prefix + path
            to_read.setdefault(parc, [])
            left_out.setdefault(parc, [])
            if key not in listing or listing.objects[key].size == 0:
                left_out[parc].append(LeftOut(row.scan_id, row.subject, row.session, "missing",
                                              f"succeeded in {report.run_id} but {key} is not there now"))  # fmt: skip
            elif listing.objects[key].size > MAX_CONNECTOME_BYTES:
                left_out[parc].append(LeftOut(row.scan_id, row.subject, row.session, "too large",
                                              f"{key} is {listing.objects[key].size:,} bytes"))  # fmt: skip
            else:
                to_read[parc].append((row, key))
    if not to_read:
        raise GroupError(
            f"no succeeded scan with a connectome in the run report {report_uri} "
            f"({len(report.scans)} scans, {len(failed)} did not succeed): nothing to compare"
        )

    def read(item: tuple[Any, str]) -> tuple[Any, str, Graph | str]:
        row, key = item
        try:
            return row, key, parse_connectome(get_bytes(s3_client, f"s3://{root.bucket}/{key}"), FIRST_NODE.get(report.pipeline))
        except GraphError as err:
            return row, key, f"unreadable: {err}"
        except Exception as err:  # noqa: BLE001 - a file we cannot fetch is a finding
            return row, key, f"could not be read: {err.__class__.__name__}: {err}"

    made_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
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
            write_group(s3_client, layout, result)
    return results


def _background_first(graph: Graph) -> Graph:
    """A dense matrix (legacy ndmg) numbers its regions from 0: shift them to m2g's 1..n."""
    if graph.size is None:
        return graph
    return Graph([(i + 1, j + 1, w) for i, j, w in graph.edges], 1, graph.size)


def _compare(report: RunReport, report_uri: str, parc: str, graphs: list, left_out: list[LeftOut],
             permutations: int, made_at: str, root: S3Location) -> GroupResult:  # fmt: skip
    known = parcellation_size(report.pipeline, parc)
    highest = max((g.last_node for _, _, g in graphs), default=0)
    nodes = known or highest
    nodes_from = (
        f"{parc} has {known} regions" if known else "the highest region any scan of the group connects"
    )  # fmt: skip
    matrices = [adjacency(g, nodes) for _, _, g in graphs]
    scans = [
        ScanGraph(row.scan_id, row.subject, row.session, key.removeprefix(root.prefix), graph_stats(m))
        for (row, key, _), m in zip(graphs, matrices)
    ]
    upper = np.triu_indices(nodes, k=1)
    vectors = np.array([m[upper] for m in matrices]) if matrices else np.zeros((0, 0))
    subjects = [s.subject for s in scans]
    discr = discriminability(vectors, subjects, permutations)
    degrees: dict[str, list[float]] = {}
    for s, m in zip(scans, matrices):
        degrees.setdefault(s.subject, []).extend(np.count_nonzero(m, axis=1).tolist())
    log.info("%s: %d scans, %d left out; discriminability %s (p %s)", parc, len(scans), len(left_out), discr.value, discr.p_value)
    return GroupResult(
        dataset=report.dataset, parcellation=parc, report=report_uri, run_id=report.run_id,
        pipeline=report.pipeline, output=report.output, nodes=nodes, nodes_from=nodes_from, scans=scans,
        left_out=sorted(left_out, key=lambda x: x.scan_id), discriminability=discr, made_at=made_at,
        mean=np.mean(matrices, axis=0) if matrices else np.zeros((nodes, nodes)),
        degrees={k: np.array(v) for k, v in sorted(degrees.items())},
    )  # fmt: skip


GROUP_FILES = ("group.json", "group.csv", "group.html", "mean_connectome.csv")


def group_uris(result: GroupResult) -> dict[str, str]:
    root = S3Location.parse(result.output)
    prefix = OutputLayout(root).group_prefix(result.parcellation)
    return {name: f"s3://{root.bucket}/{prefix}{name}" for name in GROUP_FILES}


def write_group(s3_client: Any, layout: OutputLayout, result: GroupResult) -> dict[str, str]:
    """Write group.json, group.csv, group.html and mean_connectome.csv; return their URIs."""
    from ndmg_cloud.grouppage import group_html

    bucket, prefix = layout.root.bucket, layout.group_prefix(result.parcellation)
    uris = group_uris(result)
    try:
        put_bytes(s3_client, bucket, prefix + "mean_connectome.csv", result.mean_edge_list().encode(), "text/csv")
        put_bytes(s3_client, bucket, prefix + "group.csv", result.csv_text().encode(), "text/csv")
        put_bytes(s3_client, bucket, prefix + "group.html", group_html(result).encode(), "text/html; charset=utf-8")
        put_json(s3_client, uris["group.json"], result.to_dict())  # last: its presence means the rest is there
    except S3AccessError as err:
        raise GroupError(str(err)) from None
    return uris
