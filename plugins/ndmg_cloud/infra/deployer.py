"""What CloudFormation may do when it deploys the Batch stack: a service role (CloudFormation
acts with its permissions, not the caller's) allowed the template's resource types only, and a
stack policy that keeps an update from removing or replacing the job queue.

With the service role, whoever deploys (the ``ndmg_infra`` task's Airflow connection, an
admin's ``ndmg_cloud setup``) needs no IAM, Batch or EC2 rights of its own: CloudFormation on
``ndmg-cloud-*`` stacks and ``iam:PassRole`` on this role (``caller_policy``). And whatever
template reaches CloudFormation, it can create, change or delete nothing but roles and
instance profiles named ``ndmg-cloud-*``, launch templates, Batch resources and the stack's own queue of new scans
(``ndmg-cloud-*-new-scans``): not another team's DynamoDB table, SQS queue or bucket.

``ACTIONS`` is keyed by the template's resource types; a test fails when the template gains
a type this module does not cover."""

from __future__ import annotations

import json
import re
from typing import Any

from ndmg_cloud.infra.template import template_body
from ndmg_cloud.participant.jobspec import PROJECT, PROJECT_TAG

SERVICE_ROLE_NAME = "ndmg-cloud-deployer"
SERVICE_ROLE_ENV = "NDMG_CFN_SERVICE_ROLE_ARN"  # set by the deployment for the ndmg_infra DAG
SERVICE_ROLE_ARN = re.compile(r"arn:aws(-[a-z]+)*:iam::\d{12}:role/(.+/)?[\w+=,.@-]{1,64}")
POLICY_NAME = "ndmg-cloud-deploy-batch-stack"
BATCH_SERVICE_POLICY = "arn:{partition}:iam::aws:policy/service-role/AWSBatchServiceRole"
VERSION = "2012-10-17"

# the API actions CloudFormation makes to create, update and delete each resource type of
# ndmg-batch.yaml (and to read it back while it waits): its resource providers' handler
# permissions in the CloudFormation registry (tests/test_new_scans_queue.py checks them against
# the schemas cfn-lint ships), less NOT_CALLED_HERE
ACTIONS: dict[str, tuple[str, ...]] = {
    "AWS::IAM::Role": (
        "iam:CreateRole",
        "iam:DeleteRole",
        "iam:GetRole",
        "iam:UpdateRole",
        "iam:UpdateAssumeRolePolicy",
        "iam:UpdateRoleDescription",
        "iam:TagRole",
        "iam:UntagRole",
        "iam:PutRolePolicy",
        "iam:GetRolePolicy",
        "iam:DeleteRolePolicy",
        "iam:ListRolePolicies",
        "iam:ListAttachedRolePolicies",
        "iam:ListInstanceProfilesForRole",
    ),
    "AWS::IAM::InstanceProfile": (
        "iam:CreateInstanceProfile",
        "iam:DeleteInstanceProfile",
        "iam:GetInstanceProfile",
        "iam:AddRoleToInstanceProfile",
        "iam:RemoveRoleFromInstanceProfile",
    ),
    "AWS::EC2::LaunchTemplate": (
        "ec2:CreateLaunchTemplate",
        "ec2:CreateLaunchTemplateVersion",
        "ec2:ModifyLaunchTemplate",
        "ec2:DeleteLaunchTemplate",
        "ec2:DeleteLaunchTemplateVersions",
        "ec2:CreateTags",
        "ec2:DeleteTags",
    ),
    "AWS::Batch::ComputeEnvironment": (
        "batch:CreateComputeEnvironment",
        "batch:UpdateComputeEnvironment",
        "batch:DeleteComputeEnvironment",
        "batch:TagResource",
        "batch:UntagResource",
        "batch:SetCapacityTags",
    ),
    "AWS::Batch::JobQueue": (
        "batch:CreateJobQueue",
        "batch:UpdateJobQueue",
        "batch:DeleteJobQueue",
        "batch:TagResource",
        "batch:UntagResource",
    ),
    "AWS::Batch::JobDefinition": (
        "batch:RegisterJobDefinition",
        "batch:DeregisterJobDefinition",
        "batch:TagResource",
        "batch:UntagResource",
    ),
    "AWS::SQS::Queue": (
        "sqs:CreateQueue",
        "sqs:DeleteQueue",
        "sqs:GetQueueAttributes",
        "sqs:SetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:TagQueue",
        "sqs:UntagQueue",
        "sqs:ListQueueTags",
    ),
    # a queue policy is the queue's Policy attribute
    "AWS::SQS::QueuePolicy": ("sqs:SetQueueAttributes", "sqs:GetQueueAttributes"),
}
# registry permissions for features this template does not use, never granted
NOT_CALLED_HERE: dict[str, str] = {
    "eks:*": "compute environments on EKS (ours are EC2 and Spot)",
    "iam:PutRolePermissionsBoundary": "roles with a permissions boundary (ours have none)",
    "iam:DeleteRolePermissionsBoundary": "roles with a permissions boundary (ours have none)",
    "iam:CreateServiceLinkedRole": "compute environments without a service role (ours get the stack's BatchServiceRole)",
}
# reads without resource-level permissions
DESCRIBE = (
    "batch:DescribeComputeEnvironments",
    "batch:DescribeJobQueues",
    "batch:DescribeJobDefinitions",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
)
# logical ids whose replacement or removal by an update would cancel the queued jobs of runs
PROTECTED = ("JobQueue",)


def resource_types(template: str) -> set[str]:
    """The resource types a CloudFormation template (YAML) declares."""
    return set(re.findall(r"^\s+Type:\s*(AWS::\S+)\s*$", template, re.M))


def logical_ids(template: str, resource_type: str) -> list[str]:
    """The logical ids of a template's resources of one type."""
    return re.findall(rf"^  (\w+):[ \t]*\n    Type:[ \t]*{re.escape(resource_type)}[ \t]*$", template, re.M)


def resources_of(resource_type: str, partition: str, region: str, account: str) -> list[str]:
    """The ARNs CloudFormation may act on for a resource type. CloudFormation names a stack's
    roles and instance profiles ``<stack>-<logical id>-<suffix>`` and every stack is
    ``ndmg-cloud-*``: so only the template's own roles (not this service role, not any other
    role of the account named ndmg-cloud-...)."""
    # any region: one service role serves the account's stacks wherever they are deployed
    iam, batch = f"arn:{partition}:iam::{account}", f"arn:{partition}:batch:*:{account}"
    template = template_body()
    return {
        "AWS::IAM::Role": [f"{iam}:role/ndmg-cloud-*-{name}-*" for name in logical_ids(template, resource_type)],
        "AWS::IAM::InstanceProfile": [f"{iam}:instance-profile/ndmg-cloud-*-{name}-*" for name in logical_ids(template, resource_type)],
        "AWS::EC2::LaunchTemplate": [f"arn:{partition}:ec2:*:{account}:launch-template/*"],
        "AWS::Batch::ComputeEnvironment": [f"{batch}:compute-environment/*"],
        # CreateJobQueue and UpdateJobQueue are also authorized on the environments they order
        "AWS::Batch::JobQueue": [f"{batch}:job-queue/*", f"{batch}:compute-environment/*"],
        "AWS::Batch::JobDefinition": [f"{batch}:job-definition/*"],
        # the template names it <stack>-new-scans
        "AWS::SQS::Queue": [f"arn:{partition}:sqs:*:{account}:ndmg-cloud-*-new-scans"],
        "AWS::SQS::QueuePolicy": [f"arn:{partition}:sqs:*:{account}:ndmg-cloud-*-new-scans"],
    }[resource_type]


def service_role_policy(partition: str, region: str, account: str) -> dict[str, Any]:
    """The service role's permissions: each resource type's actions on its own ARNs."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": re.sub(r"\W", "", kind.removeprefix("AWS::")),
            "Effect": "Allow",
            "Action": list(actions),
            "Resource": resources_of(kind, partition, region, account),
        }
        for kind, actions in ACTIONS.items()
    ]
    roles = resources_of("AWS::IAM::Role", partition, region, account)
    statements += [
        {
            # the Batch service role of the template carries this AWS-managed policy, and only it
            "Sid": "AttachTheBatchServicePolicyOnly",
            "Effect": "Allow",
            "Action": ["iam:AttachRolePolicy", "iam:DetachRolePolicy"],
            "Resource": roles,
            "Condition": {"StringEquals": {"iam:PolicyARN": BATCH_SERVICE_POLICY.format(partition=partition)}},
        },
        {
            # compute environments get the service and instance roles, the job definition its job role
            "Sid": "PassTheStacksOwnRoles",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": roles,
            "Condition": {"StringEquals": {"iam:PassedToService": ["batch.amazonaws.com", "ec2.amazonaws.com", "ecs-tasks.amazonaws.com"]}},
        },
        {
            # AddRoleToInstanceProfile needs iam:PassRole of the role it adds, without a service
            "Sid": "PutTheInstanceRoleInItsProfile",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": [r for r in roles if r.endswith("-InstanceRole-*")],
        },
        {"Sid": "Describe", "Effect": "Allow", "Action": list(DESCRIBE), "Resource": "*"},
    ]
    return {"Version": VERSION, "Statement": statements}


def trust_policy() -> dict[str, Any]:
    return {
        "Version": VERSION,
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "cloudformation.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }


def caller_policy(partition: str, region: str, account: str, watched_buckets: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the deployer itself (the ndmg_infra task's AWS connection) needs: CloudFormation on
    this project's stacks, and handing them the service role; and for a stack with a queue
    of new scans, its input bucket's notifications (``notifications``: CloudFormation cannot
    change a bucket it did not create)."""
    stacks = f"arn:{partition}:cloudformation:{region}:{account}:stack/ndmg-cloud-*/*"
    watching = [
        {
            "Sid": "PointTheInputBucketsUploadsAtTheQueue",
            "Effect": "Allow",
            "Action": ["s3:GetBucketNotification", "s3:PutBucketNotification"],
            "Resource": [f"arn:{partition}:s3:::{bucket}" for bucket in sorted(set(watched_buckets))],
        }
    ]
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "DeployThisProjectsStacks",
                "Effect": "Allow",
                "Action": [
                    "cloudformation:CreateStack",
                    "cloudformation:UpdateStack",
                    "cloudformation:DeleteStack",
                    "cloudformation:DescribeStacks",
                    "cloudformation:GetTemplate",
                    "cloudformation:SetStackPolicy",
                    "cloudformation:TagResource",
                ],
                "Resource": stacks,
            },
            {
                "Sid": "HandThemTheServiceRole",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": f"arn:{partition}:iam::{account}:role/{SERVICE_ROLE_NAME}",
                "Condition": {"StringEquals": {"iam:PassedToService": "cloudformation.amazonaws.com"}},
            },
            *(watching if watched_buckets else []),
        ],
    }


def stack_policy(template: str) -> dict[str, Any]:
    """The stack policy: updates may change the template's own resource types; none may remove
    or replace the job queue (its queued jobs would be cancelled: tear the stack down instead)."""
    return {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "Update:*",
                "Resource": "*",
                "Condition": {"StringEquals": {"ResourceType": sorted(resource_types(template))}},
            },
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["Update:Replace", "Update:Delete"],
                "Resource": [f"LogicalResourceId/{logical}" for logical in PROTECTED],
            },
        ]
    }


def check_service_role_arn(arn: str) -> str:
    """An IAM role ARN, or ValueError naming the value and what to do."""
    if not SERVICE_ROLE_ARN.fullmatch(arn):
        raise ValueError(f"{SERVICE_ROLE_ENV} {arn[:200]!r} is not an IAM role ARN: give the ARN `ndmg_cloud setup-deployer` prints")
    return arn


def ensure_service_role(iam: Any, partition: str, region: str, account: str) -> str:
    """Create the service role, or bring its trust and permissions to this version; its ARN.
    A role of that name without this project's tag is another's: refused (ValueError)."""
    trust = json.dumps(trust_policy())
    try:
        role = iam.get_role(RoleName=SERVICE_ROLE_NAME)["Role"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(
            RoleName=SERVICE_ROLE_NAME,
            AssumeRolePolicyDocument=trust,
            Description="CloudFormation deploys ndmg-cloud's Batch stacks with this role only",
            Tags=[{"Key": PROJECT_TAG, "Value": PROJECT}],
        )["Role"]
    else:
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=SERVICE_ROLE_NAME).get("Tags", [])}
        if tags.get(PROJECT_TAG) != PROJECT:
            raise ValueError(
                f"IAM role {SERVICE_ROLE_NAME} exists but is not ndmg-cloud's (no tag {PROJECT_TAG}={PROJECT}): refusing to change it"
            )
        iam.update_assume_role_policy(RoleName=SERVICE_ROLE_NAME, PolicyDocument=trust)
    policy = json.dumps(service_role_policy(partition, region, account))
    iam.put_role_policy(RoleName=SERVICE_ROLE_NAME, PolicyName=POLICY_NAME, PolicyDocument=policy)
    return str(role["Arn"])
