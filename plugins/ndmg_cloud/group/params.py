"""The ndmg_group DAG's parameters: which run's connectomes to compare. The schema refuses
at trigger time what it can; ``GroupParams`` is what a run was given."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ndmg_cloud.core.layout import REPORT_JSON
from ndmg_cloud.participant.params import _BUCKET, PATTERN_RULES, PATTERNS

DEFAULT_PERMUTATIONS = 1000
# run ids have ':' '+' '~' (Airflow's allowed_run_id_pattern): S3 key characters and those
REPORT_PATTERN = rf"^s3://{_BUCKET}/(?!.*//)[A-Za-z0-9!_.*'()/+=@,:~-]+/{re.escape(REPORT_JSON)}$"

GROUP_PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "report": {
        "type": "string",
        "default": "",
        "title": "Run report",
        "description": "s3:// URI of the report.json of the ndmg_participant run whose connectomes to compare. "
        "Empty: the run that triggered this one, or the newest run under 'output'.",
        "pattern": rf"^$|{REPORT_PATTERN}",
    },
    "output": {
        "type": "string",
        "default": "",
        "title": "Output location",
        "description": "s3://bucket/path of a dataset's outputs (a run's output_uri): its newest run report is used.",
        "pattern": rf"^$|{PATTERNS['output_uri']}",
    },
    "permutations": {
        "type": "integer",
        "default": DEFAULT_PERMUTATIONS,
        "minimum": 0,
        "maximum": 100000,
        "title": "Label shuffles",
        "description": "Permutations of the subject labels behind the discriminability p-value (0: no p-value).",
    },
}
RULES = {"report": f"an s3://bucket/path/{REPORT_JSON} URI", "output": PATTERN_RULES["output_uri"]}


@dataclass(frozen=True)
class GroupParams:
    """An ndmg_group run's params, as the trigger form or a conf gave them."""

    report: str = ""  # a run's report.json
    output: str = ""  # or a dataset's output location: its newest run's report
    permutations: int = DEFAULT_PERMUTATIONS

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> GroupParams:
        permutations = params.get("permutations")
        return cls(
            report=(params.get("report") or "").strip(),
            output=(params.get("output") or "").strip(),
            permutations=DEFAULT_PERMUTATIONS if permutations is None else int(permutations),
        )

    def conf(self) -> dict[str, Any]:
        """The trigger conf that asks for these (what is left empty is left out)."""
        conf: dict[str, Any] = {k: v for k, v in (("report", self.report), ("output", self.output)) if v}
        if self.permutations != DEFAULT_PERMUTATIONS:
            conf["permutations"] = self.permutations
        return conf

    @property
    def source(self) -> str:
        return self.report or self.output
