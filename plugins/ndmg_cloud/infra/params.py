"""What a deployment of the Batch stack is made of: the ``ndmg_infra`` DAG's form and
``ndmg_cloud setup`` both build one ``InfraParams``, and it alone names the template's
parameters (``cfn_parameters``), so the two front doors can never deploy different stacks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ndmg_cloud.participant.params import DEFAULT_JOB_DEFINITION as JOB_DEFINITION
from ndmg_cloud.participant.params import DEFAULT_JOB_QUEUE as JOB_QUEUE

STACK_NAME = "ndmg-cloud-batch"
# this project's stacks only, and short: CloudFormation names a stack's roles
# <stack>-<logical id>-<suffix> in 64 characters, and the service role (deployer.py) may act
# only on names it has not had to shorten
STACK_PATTERN = "^ndmg-cloud-[A-Za-z0-9-]{1,19}$"
MAX_VCPUS, ROOT_VOLUME_GB = 256, 100
# A folder in a bucket: S3 key characters, ending in '/', no '.' or '..' segments (the
# template's AllowedPattern says the same)
PREFIX = r"([A-Za-z0-9!_.*'()+=@,-]+/)+"
BATCH_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"

# name -> JSON schema; the ndmg_infra DAG turns these into Airflow Params (its trigger form)
INFRA_PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "image": {"type": "string", "title": "Scan image URI", "description": "ECR URI of ndmg-cloud-m2g (or -lite).", "minLength": 1},
    "subnets": {
        "type": "array",
        "title": "Subnets",
        "description": "Subnet ids for the instances.",
        "items": {"type": "string"},
        "minItems": 1,
    },
    "security_groups": {
        "type": "array",
        "title": "Security groups",
        "description": "Security group ids.",
        "items": {"type": "string"},
        "minItems": 1,
    },
    "input_bucket": {"type": "string", "title": "Input bucket", "description": "Bucket of the BIDS datasets.", "minLength": 3},
    "input_prefix": {
        "default": "",
        "type": "string",
        "title": "Input prefix",
        "description": "Datasets' folder in the bucket, ending in / (empty = all of it); jobs never write into its subject folders.",
        "pattern": f"^$|^{PREFIX}$",
    },
    "output_bucket": {"type": "string", "title": "Output bucket", "description": "Bucket for graphs, specs and reports.", "minLength": 3},
    "output_prefix": {
        "type": "string",
        "title": "Output prefix",
        "description": "Outputs' folder in the bucket, ending in / (e.g. ndmg/); runs set output_uri under it.",
        "pattern": f"^{PREFIX}$",
    },
    "max_vcpus": {"default": MAX_VCPUS, "type": "integer", "minimum": 2, "title": "Max vCPUs", "description": "2 per running scan."},
    "root_volume_gb": {
        "default": ROOT_VOLUME_GB,
        "type": "integer",
        "minimum": 30,
        "title": "Root volume (GiB)",
        "description": "Per instance: the scan image plus each running scan's work folder (m2g writes several GB).",
    },
    "use_spot": {"default": True, "type": "boolean", "title": "Spot first", "description": "SPOT_CAPACITY_OPTIMIZED before on-demand."},
    "job_queue": {
        "default": JOB_QUEUE,
        "type": "string",
        "title": "Job queue name",
        "description": "The queue to create (ndmg_participant's job_queue).",
        "pattern": BATCH_NAME,
    },
    "job_definition": {
        "default": JOB_DEFINITION,
        "type": "string",
        "title": "Job definition name",
        "description": "The job definition to register (ndmg_participant's job_definition).",
        "pattern": BATCH_NAME,
    },
    "watch_new_scans": {
        "default": False,
        "type": "boolean",
        "title": "Queue for new scans",
        "description": 'Create <stack>-new-scans, an SQS queue S3 notifies of uploads under the input prefix, for a "new scans" schedule.',
    },
    "stack": {
        "default": STACK_NAME,
        "type": "string",
        "title": "Stack name",
        "description": "CloudFormation stack: ndmg-cloud-<name>. Only this project's stacks (tag project=ndmg-cloud) are ever updated.",
        "pattern": STACK_PATTERN,
    },
}


@dataclass(frozen=True)
class InfraParams:
    """One deployment of the Batch stack (``ndmg-batch.yaml``)."""

    image: str
    input_bucket: str
    output_bucket: str
    output_prefix: str
    subnets: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    input_prefix: str = ""
    max_vcpus: int = MAX_VCPUS
    root_volume_gb: int = ROOT_VOLUME_GB
    use_spot: bool = True
    job_queue: str = JOB_QUEUE
    job_definition: str = JOB_DEFINITION
    watch_new_scans: bool = False
    stack: str = STACK_NAME

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> InfraParams:
        """From the DAG's params (or a conf): the schema's names, its defaults for what is left out."""
        defaults = {name: schema["default"] for name, schema in INFRA_PARAM_SCHEMAS.items() if "default" in schema}
        given = {**defaults, **{k: v for k, v in params.items() if v is not None}}
        stack = str(given.get("stack"))
        if not re.fullmatch(STACK_PATTERN, stack):
            raise ValueError(f"stack {stack[:140]!r} is not one of this project's: give ndmg-cloud-<at most 19 letters, digits or '-'>")
        try:
            return cls(
                image=str(given["image"]),
                input_bucket=str(given["input_bucket"]),
                output_bucket=str(given["output_bucket"]),
                output_prefix=str(given["output_prefix"]),
                subnets=list(given.get("subnets") or []),
                security_groups=list(given.get("security_groups") or []),
                input_prefix=str(given["input_prefix"]),
                max_vcpus=int(given["max_vcpus"]),
                root_volume_gb=int(given["root_volume_gb"]),
                use_spot=bool(given["use_spot"]),
                job_queue=str(given["job_queue"]),
                job_definition=str(given["job_definition"]),
                watch_new_scans=bool(given["watch_new_scans"]),
                stack=str(given["stack"]),
            )
        except KeyError as err:
            raise ValueError(f"the Batch stack needs {err.args[0]!r}: give it") from None

    def cfn_parameters(self) -> dict[str, Any]:
        """The template's parameters (``ndmg-batch.yaml``, section Parameters) and their values.
        JobTimeoutSeconds keeps the template's default."""
        return {
            "ImageUri": self.image,
            "ImageRepositoryArn": ecr_repository_arn(self.image),
            "Subnets": self.subnets,
            "SecurityGroups": self.security_groups,
            "InputBucket": self.input_bucket,
            "InputPrefix": self.input_prefix,
            "OutputBucket": self.output_bucket,
            "OutputPrefix": self.output_prefix,
            "MaxvCpus": self.max_vcpus,
            "RootVolumeGiB": self.root_volume_gb,
            "UseSpot": self.use_spot,
            "QueueName": self.job_queue,
            "JobDefinitionName": self.job_definition,
            "WatchNewScans": self.watch_new_scans,
        }


ECR_IMAGE = re.compile(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/([a-z0-9._/-]+?)(?::[\w.-]+)?(?:@sha256:[0-9a-f]{64})?")


def ecr_repository_arn(image: str) -> str:
    """The ECR repository an image URI names (the only one the instance role may pull from);
    "" for an image from elsewhere (no ECR permission is granted then)."""
    found = ECR_IMAGE.fullmatch(image)
    if not found:
        return ""
    account, region, china, repository = found.groups()
    return f"arn:{'aws-cn' if china else 'aws'}:ecr:{region}:{account}:repository/{repository}"


@dataclass(frozen=True)
class StackOutputs:
    """What a deployed stack gives a run: its queue and job definition, the output location
    runs write under, and the queue of new scans when asked for (the template's Outputs)."""

    job_queue: str | None
    job_definition: str | None
    output_location: str | None
    job_role_arn: str | None = None
    new_scans_queue_url: str | None = None  # with watch_new_scans only
    new_scans_queue_arn: str | None = None

    @classmethod
    def from_outputs(cls, outputs: dict[str, str]) -> StackOutputs:
        return cls(
            outputs.get("JobQueue"),
            outputs.get("JobDefinition"),
            outputs.get("OutputLocation"),
            outputs.get("JobRoleArn"),
            outputs.get("NewScansQueueUrl"),
            outputs.get("NewScansQueueArn"),
        )
