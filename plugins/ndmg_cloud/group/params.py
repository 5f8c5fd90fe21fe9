"""The ndmg_group DAG's parameters: which run's connectomes to compare. The schema refuses
at trigger time what it can; ``report_source`` says what a run was given."""

from __future__ import annotations

from typing import Any

from ndmg_cloud.participant.params import _BUCKET, PATTERN_RULES, PATTERNS

DEFAULT_PERMUTATIONS = 1000
# run ids have ':' '+' '~' (Airflow's allowed_run_id_pattern): S3 key characters and those
REPORT_PATTERN = rf"^s3://{_BUCKET}/(?!.*//)[A-Za-z0-9!_.*'()/+=@,:~-]+/report\.json$"

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
RULES = {"report": "an s3://bucket/path/report.json URI", "output": PATTERN_RULES["output_uri"]}
