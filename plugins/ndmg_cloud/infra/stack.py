"""The Batch infrastructure from code: deploy ``ndmg-batch.yaml`` (package data of
``ndmg_cloud.infra``) as a CloudFormation stack, idempotently (a second deploy with the same parameters changes nothing)."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from ndmg_cloud.infra import notifications
from ndmg_cloud.infra.deployer import stack_policy
from ndmg_cloud.infra.params import STACK_NAME, STACK_PATTERN, InfraParams, StackOutputs
from ndmg_cloud.infra.template import template_body
from ndmg_cloud.participant.jobspec import PROJECT, PROJECT_TAG

# Managed compute environments and roles can take many minutes: wait up to an hour.
WAIT = {"Delay": 15, "MaxAttempts": 240}
UNUSABLE = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED")


class InfraError(RuntimeError):
    """The stack could not be deployed; the message says why."""


@dataclass
class Deployment:
    stack: str
    action: str  # created, updated or unchanged
    outputs: StackOutputs


def _parameters(values: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for key, value in values.items():
        if value is None:
            continue
        text = ",".join(value) if isinstance(value, (list, tuple)) else str(value).lower() if isinstance(value, bool) else str(value)
        out.append({"ParameterKey": key, "ParameterValue": text})
    return out


def _outputs(cfn: Any, stack: str) -> StackOutputs:
    return _outputs_of(cfn.describe_stacks(StackName=stack)["Stacks"][0])


def _outputs_of(described: dict[str, Any]) -> StackOutputs:
    return StackOutputs.from_outputs({o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])})


def _status(cfn: Any, stack: str) -> str | None:
    try:
        status = cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    except ClientError as err:
        if "does not exist" in str(err):
            return None
        raise
    return None if status == "DELETE_COMPLETE" else status


@dataclass(frozen=True)
class Watch:
    """Where a deployed stack's queue of new scans is fed from."""

    bucket: str
    prefix: str
    queue_arn: str


def _watching(cfn: Any, stack: str) -> Watch | None:
    """The deployed stack's queue of new scans and the input it is notified of, if any."""
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    deployed = {p["ParameterKey"]: str(p.get("ParameterValue") or "") for p in described.get("Parameters", [])}
    outputs = _outputs_of(described)
    if deployed.get("WatchNewScans", "false").lower() != "true" or not outputs.new_scans_queue_arn:
        return None
    return Watch(deployed.get("InputBucket", ""), deployed.get("InputPrefix", ""), outputs.new_scans_queue_arn)


def _s3_for(s3: Any, stack: str) -> Any:
    if s3 is None:
        raise InfraError(f"stack {stack} has a queue of new scans: its input bucket's notification needs an S3 client")
    return s3


def _exists(cfn: Any, stack: str) -> bool:
    return _status(cfn, stack) is not None


def _same_as_deployed(cfn: Any, stack: str, body: str, parameters: list[dict[str, str]]) -> bool:
    """The stack already runs this template with these parameter values."""
    deployed = cfn.get_template(StackName=stack)["TemplateBody"]
    if not isinstance(deployed, str) or deployed.strip() != body.strip():
        return False
    current = {p["ParameterKey"]: p.get("ParameterValue") for p in cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Parameters", [])}
    return all(_items(current.get(p["ParameterKey"])) == _items(p["ParameterValue"]) for p in parameters)


def _items(value: str | None) -> list[str]:
    """A parameter value as a list: "a,b" (the API) or "['a', 'b']" (the local endpoint)."""
    if value is None:
        return []
    if value.startswith("[") and value.endswith("]"):
        return [str(v) for v in ast.literal_eval(value)]
    return value.split(",")


def check_locations(params: InfraParams) -> None:
    """Refuse, before CloudFormation does less clearly or not at all: an output prefix that
    is empty or not a folder, and outputs inside the input prefix (the job role is denied
    writes into every subject folder there, so no scan could write)."""
    input_prefix, output_prefix = params.input_prefix, params.output_prefix
    for name, prefix, required in (("input prefix", input_prefix, False), ("output prefix", output_prefix, True)):
        if (required and not prefix) or (prefix and not prefix.endswith("/")) or prefix.startswith("/"):
            raise InfraError(
                f"{name} {prefix!r} is not a folder: give one ending in '/' (e.g. 'ndmg/')"
                + (", not the bucket root" if required else ", or nothing for the whole bucket")
            )
    if params.input_bucket == params.output_bucket and output_prefix.startswith(input_prefix):
        raise InfraError(
            f"output prefix {output_prefix!r} lies inside input prefix {input_prefix!r} of bucket "
            f"{params.input_bucket!r}: jobs may never write there; choose an output prefix outside it "
            "(or another bucket)"
        )


def deploy(cfn: Any, params: InfraParams, service_role_arn: str | None = None, s3: Any = None) -> Deployment:
    """Create the stack, or update it; report which, and the queue and job definition.
    With ``service_role_arn`` CloudFormation acts as that role (``deployer``) and the stack
    gets the project's stack policy, before an update too. With ``watch_new_scans`` the input
    bucket's uploads are pointed at the stack's queue (``notifications``, with ``s3``), and
    taken off again when a stack that watched stops watching."""
    check_locations(params)
    stack = params.stack
    if not re.fullmatch(STACK_PATTERN, stack):
        raise InfraError(
            f"stack {stack[:140]!r} is not one of this project's (ndmg-cloud-<name of at most 19 letters, digits or '-'>): refusing to deploy it"
        )
    args: dict[str, Any] = {
        "StackName": stack,
        "TemplateBody": template_body(),
        "Parameters": _parameters(params.cfn_parameters()),
        "Capabilities": ["CAPABILITY_IAM"],
        "Tags": [{"Key": PROJECT_TAG, "Value": PROJECT}],
    }
    policy = json.dumps(stack_policy(args["TemplateBody"]))
    if service_role_arn:
        args["RoleARN"] = service_role_arn
    try:
        status = _status(cfn, stack)
        if status is not None and status.endswith("_IN_PROGRESS"):
            raise InfraError(f"stack {stack} is {status}: wait for it to finish, then run setup again")
        if status in UNUSABLE:
            raise InfraError(
                f"stack {stack} is {status} (see its events in the CloudFormation console): run teardown, fix the cause, then setup again"
            )
        if status is not None:
            check_ours(cfn, stack)
        before = _watching(cfn, stack) if status is not None else None
        if before and not params.watch_new_scans:
            notifications.unwatch(_s3_for(s3, stack), before.bucket, stack)  # before its queue goes
        try:
            action = _create_or_update(cfn, stack, args, policy, exists=status is not None)
        except (ClientError, WaiterError):
            if before and not params.watch_new_scans:  # the update rolled back: its queue is still there
                notifications.watch(_s3_for(s3, stack), before.bucket, before.prefix, before.queue_arn, stack)
            raise
        deployment = Deployment(stack, action, _outputs(cfn, stack))
        if params.watch_new_scans:
            queue = deployment.outputs.new_scans_queue_arn
            if not queue:
                raise InfraError(f"stack {stack} was asked for a queue of new scans and gives none (output NewScansQueueArn)")
            notifications.watch(_s3_for(s3, stack), params.input_bucket, params.input_prefix, queue, stack)
            if before and before.bucket != params.input_bucket:
                notifications.unwatch(_s3_for(s3, stack), before.bucket, stack)  # the stack's input moved
        return deployment
    except (ClientError, WaiterError, notifications.NotificationError) as err:
        raise InfraError(f"could not deploy stack {stack}: {err}") from None


def _create_or_update(cfn: Any, stack: str, args: dict[str, Any], policy: str, exists: bool) -> str:
    """created, updated or unchanged."""
    if not exists:
        cfn.create_stack(**args, StackPolicyBody=policy)
        cfn.get_waiter("stack_create_complete").wait(StackName=stack, WaiterConfig=WAIT)
        return "created"
    if _same_as_deployed(cfn, stack, args["TemplateBody"], args["Parameters"]):
        return "unchanged"
    cfn.set_stack_policy(StackName=stack, StackPolicyBody=policy)  # in force during this update
    try:
        cfn.update_stack(**args)
    except ClientError as err:
        if "No updates are to be performed" in str(err):
            return "unchanged"
        raise
    cfn.get_waiter("stack_update_complete").wait(StackName=stack, WaiterConfig=WAIT)
    return "updated"


def check_ours(cfn: Any, stack: str) -> None:
    """Refuse (``InfraError``) a stack that does not carry this project's tag: another
    team's stack is never updated or deleted, whatever its name."""
    tags = {t["Key"]: t["Value"] for t in cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Tags") or []}
    if tags.get(PROJECT_TAG) != PROJECT:
        raise InfraError(
            f"stack {stack} exists but is not ndmg-cloud's (it has no tag {PROJECT_TAG}={PROJECT}): refusing to change it; "
            "give another stack name"
        )


def teardown(cfn: Any, stack: str = STACK_NAME, s3: Any = None) -> bool:
    """Delete the stack (its queue of new scans' notification first); False when there was none."""
    if not _exists(cfn, stack):
        return False
    check_ours(cfn, stack)
    watched = _watching(cfn, stack)
    if watched:
        try:
            notifications.unwatch(_s3_for(s3, stack), watched.bucket, stack)
        except notifications.NotificationError as err:
            raise InfraError(f"could not delete stack {stack}: {err}") from None
    cfn.delete_stack(StackName=stack)
    cfn.get_waiter("stack_delete_complete").wait(StackName=stack, WaiterConfig=WAIT)
    return True
