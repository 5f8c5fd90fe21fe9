"""The run report: ``report.json``, ``report.csv`` and a self-contained ``report.html``
under ``<output>/reports/<run id>/``.

For the scientist: each succeeded scan's connectomes are read (one GET per file, from the
keys of verify's one listing) for their graph figures, and the first ``EMBED_SCANS`` get an
adjacency heatmap and the pipeline's QA image inline in report.html."""

from __future__ import annotations

import csv
import fnmatch
import io
import logging
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any
from urllib.parse import quote

from ndmg_cloud.core.bids import Scan
from ndmg_cloud.core.csvcells import safe_row
from ndmg_cloud.core.layout import REPORT_CSV, REPORT_HTML, REPORT_JSON
from ndmg_cloud.core.manifest import ContractSummary
from ndmg_cloud.core.pipelines import get_pipeline
from ndmg_cloud.core.s3 import get_bytes, put_json, write_at
from ndmg_cloud.participant.canary import CanaryOutcome
from ndmg_cloud.participant.cost import cost_basis, cost_cell
from ndmg_cloud.participant.lease import TakeOver
from ndmg_cloud.participant.params import RunConfig
from ndmg_cloud.participant.reconcile import Orphan
from ndmg_cloud.participant.verify import Listing, ScanResult, fnmatch_magic
from ndmg_cloud.report.figures import GraphError, colour_bar, data_uri, heatmap, parse_connectome, time_ticks

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "scan_id",
    "subject",
    "session",
    "status",
    "job_id",
    "attempts",
    "started_at",
    "stopped_at",
    "duration_s",
    "cost_usd",
    "outputs",
    "missing",
    "reason",
    "failure_class",
    "log_url",
    "made_by",
    "pilot",
    "new",
    "waiting_for_files",
    # the graph figures of the scan's first parcellation (the others are in report.json)
    "parcellation",
    "nodes",
    "edges",
    "density",
    "total_weight",
    "streamlines",
)
GRAPH_COLUMNS = ("nodes", "edges", "density", "total_weight")
FAILING_STATUSES = ("failed", "missing_outputs")
STATUS_COLOURS = {
    "succeeded": "#b7e4c7",
    "failed": "#f4a6a6",
    "missing_outputs": "#f9d28b",
    "invalid": "#d9d9d9",
    "skipped_done": "#cfe3f7",
    "dry_run": "#e8ddf5",
}
TIMELINE_WIDTH, TIMELINE_LEFT, ROW_HEIGHT = 900, 220, 18
AXIS_HEIGHT, LOAD_HEIGHT = 34, 60
MAX_TIMELINE_ROWS = 500  # bars drawn; the "jobs running" curve above them counts every job

# What report.html embeds: a 10,000-scan run must still give a page a browser opens.
EMBED_SCANS = 200  # succeeded scans whose heatmap (and QA image) are drawn inline
EMBED_PARCELLATIONS = 1  # per scan, the run's first parcellations
MAX_QA_BYTES = 300_000  # a larger QA image is named, not embedded
MAX_QA_TOTAL_BYTES = 5_000_000  # of all QA images on the page
MAX_CONNECTOME_BYTES = 64 * 1024 * 1024  # a larger edge list is not read for the report
READERS = 16  # GETs at a time
QA_FOLDERS = ("qa_d/", "qa/")
FIRST_NODE = {"lite": 1, "m2g": 1}  # node 0 is the atlas background (m2g's numbering): never an edge


@dataclass
class ScanFigure:
    """What report.html draws for one scan: the heatmap of one of its connectomes and the
    pipeline's QA image of it (when present, small enough, and within the budget)."""

    scan_id: str
    parcellation: str
    path: str  # the connectome, relative to the scan's output prefix
    stats: dict[str, Any]
    heatmap: str | None = None  # data: URI
    side: int = 0
    nodes_per_pixel: int = 1
    first_node: int = 0
    last_node: int = 0
    qa_path: str | None = None
    qa_image: str | None = None  # data: URI
    qa_note: str | None = None  # why the QA image is not embedded
    error: str | None = None
    streamlines: int | None = None


@dataclass
class Connectomes:
    """The connectome figures of a run: ``summary`` goes into report.json, ``figures``
    into report.html only."""

    summary: dict[str, Any] = field(default_factory=dict)
    figures: list[ScanFigure] = field(default_factory=list)


@dataclass
class _Read:
    row: ScanResult
    parcellation: str
    path: str
    key: str
    size: int
    embed: bool = False
    qa_path: str | None = None
    qa_key: str | None = None
    qa_fetch: bool = False
    qa_note: str | None = None


def read_connectomes(
    config: RunConfig,
    scans: list[Scan],
    rows: list[ScanResult],
    listing: Listing,
    s3_client: Any,
    embed: int = EMBED_SCANS,
    parcellations: int = EMBED_PARCELLATIONS,
    max_qa_bytes: int = MAX_QA_BYTES,
    max_qa_total: int = MAX_QA_TOTAL_BYTES,
    max_connectome_bytes: int = MAX_CONNECTOME_BYTES,
) -> Connectomes:
    """Graph figures of every succeeded scan's connectomes (into ``row.graphs``), heatmaps
    of the first ``embed`` scans' first ``parcellations``, and their QA images. One GET per
    connectome and per embedded QA image; sizes and QA keys come from ``listing`` (verify's
    one listing of the output prefix), so nothing is HEADed. Dry runs and scans without
    connectomes read nothing."""
    by_id = {s.scan_id: s for s in scans}
    pipeline = get_pipeline(config.pipeline)
    outputs = config.outputs
    reads: list[_Read] = []
    succeeded = [r for r in rows if r.status == "succeeded" and r.scan_id in by_id]
    qa_budget = max_qa_total
    for index, row in enumerate(succeeded):
        scan = by_id[row.scan_id]
        prefix = outputs.scan_prefix(scan)
        for k, path in enumerate(_in_run_order(row.outputs, pipeline.expected_outputs(scan, config.options))):
            item = _Read(row, parcellation_of(path), path, prefix + path, listing.objects[prefix + path].size)
            item.embed = index < embed and k < parcellations
            item.qa_path = qa_image_of(listing, prefix, path, item.parcellation)
            if item.qa_path:
                item.qa_key = prefix + item.qa_path
                qa_size = listing.objects[item.qa_key].size
                if not item.embed:
                    pass
                elif qa_size > max_qa_bytes:
                    item.qa_note = f"QA image not embedded: {qa_size:,} bytes, above {max_qa_bytes:,}"
                elif qa_size > qa_budget:
                    item.qa_note = f"QA image not embedded: the page's budget of {max_qa_total:,} bytes of QA images is spent"
                else:
                    item.qa_fetch, qa_budget = True, qa_budget - qa_size
            reads.append(item)

    bucket, first_node = outputs.root.bucket, FIRST_NODE.get(config.pipeline)

    def read(item: _Read) -> tuple[_Read, ScanFigure]:
        figure = ScanFigure(
            item.row.scan_id,
            item.parcellation,
            item.path,
            {},
            qa_path=item.qa_path,
            qa_note=item.qa_note,
            streamlines=item.row.streamlines,
        )
        if item.size > max_connectome_bytes:
            figure.error = f"not read for the report: {item.size:,} bytes, above {max_connectome_bytes:,}"
            return item, figure
        try:
            graph = parse_connectome(get_bytes(s3_client, f"s3://{bucket}/{item.key}"), first_node)
        except GraphError as err:
            figure.error = f"unreadable: {err}"
            return item, figure
        except Exception as err:  # a connectome we cannot fetch is a finding, not a crash
            figure.error = f"could not be read: {err.__class__.__name__}: {err}"
            return item, figure
        figure.stats = graph.stats()
        if item.embed:
            drawn = heatmap(graph)
            figure.heatmap, figure.side, figure.nodes_per_pixel = drawn.data_uri(), drawn.side, drawn.nodes_per_pixel
            figure.first_node, figure.last_node = drawn.first_node, drawn.last_node
        if item.qa_fetch:
            try:
                body = get_bytes(s3_client, f"s3://{bucket}/{item.qa_key}")
                if body.startswith(b"\x89PNG"):
                    figure.qa_image = data_uri(body, "image/png")
                else:
                    figure.qa_note = "QA image not embedded: not a PNG"
            except Exception as err:
                figure.qa_note = f"QA image could not be read: {err.__class__.__name__}"
        return item, figure

    figures: list[ScanFigure] = []
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        for item, figure in pool.map(read, reads):
            entry: dict[str, Any] = {"path": item.path, **figure.stats, "qa_image": item.qa_path}
            if figure.error:
                entry["error"] = figure.error
            item.row.graphs[item.parcellation] = entry
            if item.embed:
                figures.append(figure)
    return Connectomes(_connectome_summary(succeeded, figures, reads, embed, parcellations, max_qa_bytes), figures)


def _in_run_order(outputs: list[str], expected: list[str]) -> list[str]:
    """The outputs in the order of the pipeline's expected outputs (the run's parcellations)."""
    present = set(outputs)
    ordered = [
        hit
        for pattern in expected
        for hit in ([pattern] if pattern in present else fnmatch.filter(outputs, pattern) if fnmatch_magic(pattern) else [])
    ]
    return list(dict.fromkeys(ordered + outputs))


def parcellation_of(path: str) -> str:
    """``connectomes_d/<parcellation>/<file>`` (m2g, lite; ndmg: ``roi-connectomes``)."""
    parts = path.split("/")
    return parts[-2] if len(parts) > 1 else parts[-1].rsplit(".", 1)[0]


def qa_image_of(listing: Listing, prefix: str, path: str, parcellation: str) -> str | None:
    """The QA image the pipeline drew of a connectome, from the listing: m2g and lite write
    ``qa_d/graphs_plotting/<connectome stem>.png``; else any PNG under the scan's QA folder
    naming the parcellation."""
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    exact = f"qa_d/graphs_plotting/{stem}.png"
    if prefix + exact in listing and listing.objects[prefix + exact].size > 0:
        return exact
    for folder in QA_FOLDERS:
        for rel in listing.nonempty_under(prefix + folder):
            if rel.endswith(".png") and parcellation in rel:
                return folder + rel
    return None


def _connectome_summary(
    succeeded: list[ScanResult], figures: list[ScanFigure], reads: list[_Read], embed: int, parcellations: int, max_qa: int
) -> dict[str, Any]:
    by_parcellation: dict[str, list[dict[str, Any]]] = {}
    for row in succeeded:
        for parc, entry in row.graphs.items():
            if "error" not in entry:
                by_parcellation.setdefault(parc, []).append(entry)
    drawn = {f.scan_id for f in figures if f.heatmap}
    with_graphs = sum(1 for r in succeeded if r.outputs)
    return {
        "files_read": sum(1 for r in succeeded for e in r.graphs.values() if "error" not in e),
        "unreadable": sum(1 for r in succeeded for e in r.graphs.values() if "error" in e),
        "scans_embedded": len(drawn),
        "scans_left_out": max(0, with_graphs - embed),  # beyond the cap: figures in report.json only
        "qa_images_embedded": sum(1 for f in figures if f.qa_image),
        "qa_images_left_out": sum(1 for r in reads if r.qa_path) - sum(1 for f in figures if f.qa_image),
        "limits": {"embed_scans": embed, "embed_parcellations": parcellations, "max_qa_bytes": max_qa},
        "by_parcellation": {
            parc: {"scans": len(entries), **{k: _spread([e[k] for e in entries]) for k in GRAPH_COLUMNS}}
            for parc, entries in by_parcellation.items()
        },
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def airflow_log_url(base_url: str, dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> str:
    """A task instance's page (its log) in the Airflow 3 UI: the URL Airflow's own
    ``TaskInstance.log_url`` builds from ``[api] base_url``."""
    mapped = f"/mapped/{map_index}" if map_index is not None and map_index >= 0 else ""
    return f"{base_url.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id)}/tasks/{task_id}{mapped}"


@dataclass
class Summary:
    """The report's counts (the README, "Outputs and report")."""

    discovered: int
    invalid: int
    invalid_not_listed: int  # counted here, no row (the first INVALID_ROWS_KEPT have one)
    waiting_for_files: int  # of the invalid: only missing files a later run may find (an upload under way)
    skipped_done: int
    submitted: int
    new_scans: int  # scans no earlier run had made (each row says: new)
    succeeded: int
    failed: int
    missing_outputs: int
    dry_run: int
    failure_classes: dict[str, int]
    cost_usd: float
    throttled_polls: int  # DescribeJobs polls Batch answered with a throttling error

    def line(self) -> str:
        """The counts in one line, as the CLI prints them."""
        waiting = f" ({self.waiting_for_files} waiting for files)" if self.waiting_for_files else ""
        return (
            f"{self.discovered} scans ({self.new_scans} new): {self.succeeded} succeeded, {self.failed} failed, "
            f"{self.missing_outputs} missing outputs, {self.invalid} invalid{waiting}, {self.skipped_done} already done"
        )


@dataclass
class RunReport:
    """One run's report; ``to_dict`` is ``report.json`` (the contract in the README, "Outputs and report")."""

    dataset: str
    run_id: str
    params: dict[str, Any]
    pipeline: str
    options: dict[str, Any]
    backend: str
    cost_basis: str
    input: str
    output: str
    jobdir: str
    started_at: str
    finished_at: str
    summary: Summary
    warnings: list[str]
    orphans: list[Orphan]  # jobs of the run that no row names (terminated if still active)
    took_over: TakeOver | None  # the output location's lease this run took over, and why (report.json: lease.took_over)
    canary: CanaryOutcome  # what the canary found: status passed, failed or skipped; its checks
    contract: ContractSummary | None  # the code the scans were made with
    pilots: list[str]
    connectomes: dict[str, Any]  # what read_connectomes read and embedded (the page's figures summary)
    scans: list[ScanResult]

    @property
    def failing(self) -> list[ScanResult]:
        """The rows that fail the run."""
        return [r for r in self.scans if r.status in FAILING_STATUSES]

    @property
    def dry_run(self) -> bool:
        """A dry run's report: nothing was submitted, no connectome made."""
        return bool(self.params.get("dry_run"))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "took_over"}
        return {
            **data,
            "summary": asdict(self.summary),
            "orphans": [o.to_dict() for o in self.orphans],
            "lease": {"took_over": self.took_over.to_dict() if self.took_over else None},
            "canary": self.canary.to_dict(),
            "contract": self.contract.to_dict() if self.contract else None,
            "scans": [r.to_dict() for r in self.scans],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """A report.json (one written by older code too: what it lacks is left empty)."""
        known = {f.name for f in fields(cls)}
        summary = {f.name: data.get("summary", {}).get(f.name, 0) for f in fields(Summary)}
        summary["failure_classes"] = data.get("summary", {}).get("failure_classes") or {}
        empty: dict[str, Any] = {
            "params": {},
            "options": {},
            "warnings": [],
            "pilots": [],
            "connectomes": {},
            "cost_basis": "",
            "jobdir": "",
            "backend": "",
            "pipeline": "",
            "input": "",
            "output": "",
            "finished_at": "",
        }
        took_over = (data.get("lease") or {}).get("took_over")
        return cls(
            **{
                **empty,
                **{k: v for k, v in data.items() if k in known},
                "summary": Summary(**summary),
                "orphans": [Orphan.from_dict(o) for o in data.get("orphans") or []],
                "took_over": TakeOver.from_dict(took_over) if took_over else None,
                "canary": CanaryOutcome.from_dict(data.get("canary") or {}),
                "contract": ContractSummary.from_dict(data.get("contract")),
                "scans": [ScanResult.from_dict(r) for r in data.get("scans", [])],
            }
        )


def build_report(
    config: RunConfig,
    rows: list[ScanResult],
    started_at: str,
    finished_at: str,
    submitted: int,
    warnings: list[str] | None = None,
    canary: CanaryOutcome | None = None,
    contract: ContractSummary | None = None,
    connectomes: dict[str, Any] | None = None,
    orphans: list[Orphan] | None = None,
    took_over: TakeOver | None = None,
    throttled_polls: int = 0,
    invalid_omitted: int = 0,
) -> RunReport:
    """``canary``: what the canary found (status passed, failed or skipped; its checks);
    ``contract``: the image contract summary of the code this run's scans were made with;
    ``connectomes``: the summary of ``read_connectomes`` (what was read and embedded)."""
    counts = Counter(r.status for r in rows)
    summary = Summary(
        discovered=len(rows) + invalid_omitted,
        invalid=counts["invalid"] + invalid_omitted,
        invalid_not_listed=invalid_omitted,
        waiting_for_files=sum(r.waiting_for_files for r in rows),
        skipped_done=counts["skipped_done"],
        submitted=submitted,
        new_scans=sum(r.new for r in rows),
        succeeded=counts["succeeded"],
        failed=counts["failed"],
        missing_outputs=counts["missing_outputs"],
        dry_run=counts["dry_run"],
        failure_classes=dict(Counter(r.failure_class for r in rows if r.failure_class)),
        cost_usd=round(sum(r.cost_usd for r in rows), 4),
        throttled_polls=throttled_polls,
    )
    return RunReport(
        dataset=config.dataset,
        run_id=config.run_id,
        params=config.params,
        pipeline=config.pipeline,
        options=config.options,
        backend=config.backend,
        cost_basis=cost_basis(config.backend),
        input=config.input_root.uri(),
        output=config.output_root.uri(),
        jobdir=config.jobdir,
        started_at=started_at,
        finished_at=finished_at,
        summary=summary,
        warnings=list(warnings or []),
        orphans=list(orphans or []),
        took_over=took_over,
        canary=canary or CanaryOutcome("skipped", "not recorded"),
        contract=contract,
        pilots=[r.scan_id for r in rows if r.pilot],
        connectomes=connectomes or {},
        scans=rows,
    )


def headline_graph(row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """A row's first readable parcellation and its graph figures (the run's first
    parcellation, as ``read_connectomes`` fills ``graphs`` in the run's order)."""
    for parc, entry in (row.get("graphs") or {}).items():
        if "error" not in entry:
            return parc, entry
    return None, {}


def report_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report["scans"]:
        flat = dict(row)
        for key in ("outputs", "missing"):
            flat[key] = ";".join(row[key])
        parc, graph = headline_graph(row)
        flat["parcellation"] = parc
        flat.update({k: graph.get(k) for k in GRAPH_COLUMNS})
        writer.writerow(safe_row({k: "" if flat.get(k) is None else flat[k] for k in CSV_COLUMNS}))
    return buf.getvalue()


def _seconds(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _timeline(report: dict[str, Any]) -> dict[str, Any]:
    """Bars of each job's start..stop on a time axis from the run's start (clock times in
    UTC and time elapsed), under a curve of how many jobs ran at once."""
    spans: list[tuple[Any, float, float]] = sorted(
        (
            (r, start, stop)
            for r in report["scans"]
            if (start := _seconds(r["started_at"])) is not None and (stop := _seconds(r["stopped_at"])) is not None
        ),
        key=lambda span: span[1],
    )
    if not spans:
        return {"rows": []}
    first_start = spans[0][1]
    run_start = _seconds(report.get("started_at"))
    t0 = run_start if run_start is not None and run_start <= first_start else first_start
    t1 = max(max(stop for _, _, stop in spans), t0 + 1)
    scale = (TIMELINE_WIDTH - TIMELINE_LEFT - 30) / (t1 - t0)
    drawn = spans[:MAX_TIMELINE_ROWS]
    top = LOAD_HEIGHT + AXIS_HEIGHT
    rows = [
        {
            "scan_id": r["scan_id"],
            "status": r["status"],
            "duration": f"{stop - start:.1f} s",
            "x": round(TIMELINE_LEFT + (start - t0) * scale, 1),
            "y": top + i * ROW_HEIGHT,
            "w": max(round((stop - start) * scale, 1), 1.0),
        }
        for i, (r, start, stop) in enumerate(drawn)
    ]
    bottom = top + len(rows) * ROW_HEIGHT
    ticks = [
        {"x": round(TIMELINE_LEFT + offset * scale, 1), "clock": clock, "elapsed": since} for offset, clock, since in time_ticks(t0, t1)
    ]
    return {
        "rows": rows,
        "left_out": len(spans) - len(drawn),
        "width": TIMELINE_WIDTH,
        "left": TIMELINE_LEFT,
        "right": TIMELINE_WIDTH - 30,
        "top": top,
        "bottom": bottom,
        "height": bottom + AXIS_HEIGHT,
        "ticks": ticks,
        "load": _load_curve(spans, t0, scale),
        "span": f"{t1 - t0:.1f} s",
    }


def _load_curve(spans: list[tuple[Any, float, float]], t0: float, scale: float) -> dict[str, Any]:
    """A step curve of the jobs running at each moment, over every job (drawn as a bar or
    not); one step per pixel column at most, at the column's busiest moment."""
    events = sorted([(start, 1) for _, start, _ in spans] + [(stop, -1) for _, _, stop in spans])
    level, columns = 0, {}  # type: tuple[int, dict[int, list[int]]]  # pixel column -> [most running in it, running when it ends]
    for moment, change in events:
        column = int(TIMELINE_LEFT + (moment - t0) * scale)
        busiest = columns.setdefault(column, [level, level])
        level += change
        busiest[0], busiest[1] = max(busiest[0], level), level
    peak = max((most for most, _ in columns.values()), default=0)

    def y(running: int) -> float:
        return round(LOAD_HEIGHT - (LOAD_HEIGHT - 14) * running / max(peak, 1), 1)

    points, before = [f"{TIMELINE_LEFT},{LOAD_HEIGHT}"], 0
    for column in sorted(columns):
        most, after = columns[column]
        points += [f"{column},{y(before)}", f"{column},{y(most)}", f"{column + 1},{y(most)}", f"{column + 1},{y(after)}"]
        before = after
    return {"points": " ".join(points), "peak": peak, "base": LOAD_HEIGHT}


def safe_link(url: Any) -> str | None:
    """A link the report may show: https, or http to this machine (the embedded stack's
    Airflow); anything else (javascript:, data:, another host over http) is not a link."""
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        return None
    parts = urlsplit(url.strip())
    if parts.scheme == "https" and parts.netloc:
        return url
    if parts.scheme == "http" and (parts.hostname or "") in ("localhost", "127.0.0.1", "::1"):
        return url
    return None


def report_html(report: dict[str, Any], connectomes: Connectomes | None = None) -> str:
    """The report as one HTML page with no external resources (opens offline); figures
    are inline PNG (data: URIs) and SVG."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("ndmg_cloud.report", "templates"), autoescape=select_autoescape(["j2"]))
    env.filters["safe_link"] = safe_link
    started, finished = _seconds(report["started_at"]), _seconds(report["finished_at"])
    wall = f"{finished - started:.1f} s" if started and finished else "unknown"
    backend = report.get("backend") or (report.get("params") or {}).get("backend") or "aws_batch"
    connectomes = connectomes or Connectomes(report.get("connectomes") or {})
    return env.get_template("report.html.j2").render(
        report=report,
        colours=STATUS_COLOURS,
        timeline=_timeline(report),
        wall_time=wall,
        backend=backend,
        cost_cell=lambda row: cost_cell(backend, row),
        headline_graph=headline_graph,
        figures=connectomes.figures,
        drawn={f.scan_id for f in connectomes.figures if f.heatmap},
        graphs=connectomes.summary,
        colour_bar=data_uri(colour_bar(), "image/png"),
    )


def write_report(s3_client: Any, config: RunConfig, run_report: RunReport, connectomes: Connectomes | None = None) -> str:
    """Write report.csv, report.html and report.json; return the report.json URI."""
    report = run_report.to_dict()  # the document the csv and the page are made from
    outputs = config.outputs
    write_at(s3_client, outputs.report_uri(config.run_id, REPORT_CSV), report_csv(report).encode(), "text/csv")
    html = report_html(report, connectomes).encode()
    write_at(s3_client, outputs.report_uri(config.run_id, REPORT_HTML), html, "text/html; charset=utf-8")
    log.info("report.html: %d bytes", len(html))
    uri = outputs.report_uri(config.run_id, REPORT_JSON)
    put_json(s3_client, uri, report)  # last: its presence means the rest is there
    return uri
