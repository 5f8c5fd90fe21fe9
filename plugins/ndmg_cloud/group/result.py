"""What the group level found for one parcellation (``GroupResult``): the scans used with
their graph statistics, the scans left out and why, the mean connectome and
discriminability; ``to_dict`` is group.json, ``csv_text`` group.csv."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ndmg_cloud.core.csvcells import safe_row
from ndmg_cloud.core.layout import GROUP_FILES, GROUP_HTML, GROUP_JSON, MEAN_CONNECTOME, OutputLayout, S3Location
from ndmg_cloud.group.discrim import Discriminability
from ndmg_cloud.group.graphstats import GraphStats


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
    mean_stats: GraphStats | None = None  # of the mean connectome
    degrees: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # per subject, pooled

    @property
    def group_stats(self) -> dict[str, Any]:
        rows = [s.stats.row() for s in self.scans]
        keys = ("edges", "density", "mean_degree", "mean_strength", "clustering", "global_efficiency")
        means: dict[str, float | None] = {}
        for k in keys:
            values = [float(v) for r in rows if (v := r[k]) is not None]
            means[k] = round(float(np.mean(values)), 4) if values else None
        mean_connectome = {**self.mean_stats.to_dict(), "path": MEAN_CONNECTOME} if self.mean_stats else None
        return {
            "scans": len(self.scans),
            "subjects": len({s.subject for s in self.scans}),
            "scans_left_out": len(self.left_out),
            "mean_over_scans": means,
            "mean_connectome": mean_connectome,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "parcellation": self.parcellation,
            "report": self.report,
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "output": self.output,
            "made_at": self.made_at,
            "nodes": self.nodes,
            "nodes_from": self.nodes_from,
            "group": self.group_stats,
            "discriminability": self.discriminability.to_dict(),
            "scans": [
                {"scan_id": s.scan_id, "subject": s.subject, "session": s.session, "path": s.path, **s.stats.to_dict()} for s in self.scans
            ],
            "left_out": [asdict(x) for x in self.left_out],
        }

    def csv_text(self) -> str:
        out = io.StringIO()
        stats_columns = list(self.scans[0].stats.row()) if self.scans else []
        columns = ["scan_id", "subject", "session", "status", *stats_columns, "reason"]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for s in self.scans:
            writer.writerow(
                safe_row(
                    {
                        "scan_id": s.scan_id,
                        "subject": s.subject,
                        "session": s.session or "",
                        "status": "used",
                        **s.stats.row(),
                        "reason": "",
                    }
                )
            )
        for x in self.left_out:
            writer.writerow(
                safe_row({"scan_id": x.scan_id, "subject": x.subject, "session": x.session or "", "status": x.status, "reason": x.reason})
            )
        return out.getvalue()

    def mean_edge_list(self) -> str:
        rows, cols = np.nonzero(np.triu(self.mean, k=1))
        return "".join(f"{i + 1} {j + 1} {round(float(self.mean[i, j]), 4)}\n" for i, j in zip(rows, cols, strict=True))

    @property
    def files(self) -> dict[str, str]:
        """Where its outputs go: file name (``GROUP_FILES``) -> s3:// URI."""
        layout = OutputLayout(S3Location.parse(self.output))
        return {name: layout.group_uri(self.parcellation, name) for name in GROUP_FILES}

    def summary(self) -> GroupSummary:
        d = self.discriminability
        return GroupSummary(
            parcellation=self.parcellation,
            scans=len(self.scans),
            subjects=len({s.subject for s in self.scans}),
            left_out=[x.scan_id for x in self.left_out],
            discriminability=d.value,
            p_value=d.p_value,
            permutations=d.permutations,
            repeated_subjects=d.subjects,
            why_not=d.why_not,
            files=self.files,
        )


@dataclass(frozen=True)
class GroupSummary:
    """One parcellation's group level in brief: the ``compare_connectomes`` XCom (per report
    and parcellation, read by ``ndmg_cloud group``) and what ``make demo`` prints."""

    parcellation: str
    scans: int  # used
    subjects: int  # of the scans used
    left_out: list[str]  # scan ids
    discriminability: float | None
    p_value: float | None
    permutations: int
    repeated_subjects: int  # subjects with two scans or more: those discriminability compares
    why_not: str | None  # why discriminability was not computed
    files: dict[str, str]  # GROUP_FILES name -> s3:// URI

    @property
    def html(self) -> str:
        return self.files[GROUP_HTML]

    @property
    def document(self) -> str:
        return self.files[GROUP_JSON]

    def to_xcom(self) -> dict[str, Any]:
        """Flat, with each file's URI under its name (``"group.html": "s3://..."``)."""
        data = {k: v for k, v in asdict(self).items() if k not in ("files", "parcellation")}
        return {**data, **self.files}

    @classmethod
    def from_xcom(cls, parcellation: str, data: dict[str, Any]) -> GroupSummary:
        return cls(
            parcellation=parcellation,
            scans=int(data["scans"]),
            subjects=int(data.get("subjects") or 0),
            left_out=list(data.get("left_out") or []),
            discriminability=data.get("discriminability"),
            p_value=data.get("p_value"),
            permutations=int(data.get("permutations") or 0),
            repeated_subjects=int(data.get("repeated_subjects") or 0),
            why_not=data.get("why_not"),
            files={name: data[name] for name in GROUP_FILES if name in data},
        )

    @classmethod
    def from_document(cls, doc: dict[str, Any], uri: str) -> GroupSummary:
        """From a group.json (``GroupResult.to_dict``) at ``uri``."""
        d, group = doc["discriminability"], doc["group"]
        layout = OutputLayout(S3Location.parse(doc["output"]))
        return cls(
            parcellation=doc["parcellation"],
            scans=int(group["scans"]),
            subjects=int(group["subjects"]),
            left_out=[x["scan_id"] for x in doc["left_out"]],
            discriminability=d["value"],
            p_value=d["p_value"],
            permutations=int(d["permutations"]),
            repeated_subjects=int(d["subjects"]),
            why_not=d["why_not"],
            files={name: layout.group_uri(doc["parcellation"], name) for name in GROUP_FILES} | {GROUP_JSON: uri},
        )
