"""CloudFormation deploys the Batch stack as a service role allowed the template's resource
types only, under a stack policy: its permissions and the stack policy are evaluated with
AWS's documented policy logic (iam_eval), on the role and stack the local endpoint holds
after a real ``ndmg_cloud setup`` and an ``ndmg_infra`` run."""

from __future__ import annotations

import json

import boto3
import pytest

from ndmg_cloud.infra.deployer import (
    ACTIONS,
    POLICY_NAME,
    SERVICE_ROLE_ENV,
    SERVICE_ROLE_NAME,
    caller_policy,
    ensure_service_role,
    resource_types,
    stack_policy,
)
from ndmg_cloud.infra.template import template_body

from conftest import ENDPOINT, REGION, ROOT
from helpers import setup_argv
from iam_eval import ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY, evaluate

ACCOUNT = "123456789012"


def client(name: str):
    return boto3.client(name, region_name=REGION, endpoint_url=ENDPOINT)


def deployed_role_policy() -> dict:
    document = client("iam").get_role_policy(RoleName=SERVICE_ROLE_NAME, PolicyName=POLICY_NAME)["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else document


def test_the_service_role_covers_exactly_the_templates_resource_types():
    """A resource type added to ndmg-batch.yaml without its actions here fails this test (and
    CloudFormation could not create it as the service role)."""
    assert resource_types(template_body()) == set(ACTIONS)


def test_setup_deploys_through_the_service_role_with_the_stack_policy(network, capsys):
    from ndmg_cloud.cli.main import main

    subnets, groups = network
    assert main(setup_argv(subnets, groups)) == 0, capsys.readouterr().err
    role = client("iam").get_role(RoleName=SERVICE_ROLE_NAME)["Role"]
    assert f"by CloudFormation as {role['Arn']}" in capsys.readouterr().out
    (stack,) = client("cloudformation").describe_stacks(StackName="ndmg-cloud-batch")["Stacks"]
    assert stack["RoleARN"] == role["Arn"]
    policy = json.loads(client("cloudformation").get_stack_policy(StackName="ndmg-cloud-batch")["StackPolicyBody"])
    assert policy == stack_policy(template_body())
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "cloudformation.amazonaws.com"}]

    # the roles and instance profile the stack made are within the service role's reach ...
    granted = [deployed_role_policy()]
    iam = client("iam")
    made = [r["Arn"] for r in iam.list_roles()["Roles"] if r["RoleName"] != SERVICE_ROLE_NAME]
    assert len(made) == 3
    for arn in made:
        for action in ("iam:CreateRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:DeleteRole"):
            assert evaluate(granted, action, arn) == ALLOWED, (action, arn)
        assert evaluate(granted, "iam:PassRole", arn, {"iam:PassedToService": "batch.amazonaws.com"}) == ALLOWED
    batch_role = next(arn for arn in made if "BatchServiceRole" in arn)
    service_policy = "arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole"
    assert evaluate(granted, "iam:AttachRolePolicy", batch_role, {"iam:PolicyARN": service_policy}) == ALLOWED
    for profile in iam.list_instance_profiles()["InstanceProfiles"]:
        assert evaluate(granted, "iam:AddRoleToInstanceProfile", profile["Arn"]) == ALLOWED
        for role_in_it in profile["Roles"]:  # AddRoleToInstanceProfile's dependent PassRole, no service named
            assert evaluate(granted, "iam:PassRole", role_in_it["Arn"]) == ALLOWED
    # the queue is authorized on the environments it orders too, in any region of the account
    for action, arn in (
        ("batch:CreateJobQueue", "arn:aws:batch:eu-west-1:123456789012:job-queue/ndmg-queue"),
        ("batch:CreateJobQueue", "arn:aws:batch:eu-west-1:123456789012:compute-environment/OnDemandEnvironment-x"),
    ):
        assert evaluate(granted, action, arn) == ALLOWED, (action, arn)
    second = main(setup_argv(subnets, groups))  # and again: the role is updated in place, the stack unchanged
    assert second == 0 and "stack ndmg-cloud-batch: unchanged" in capsys.readouterr().out


@pytest.mark.parametrize(
    "action, resource, context",
    [
        # what the red team's template swap did to another stack: its table and queue
        ("dynamodb:DeleteTable", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/lab-subjects", {}),
        ("sqs:DeleteQueue", f"arn:aws:sqs:{REGION}:{ACCOUNT}:lab-events", {}),
        ("s3:DeleteBucket", "arn:aws:s3:::lab-data", {}),
        ("s3:PutBucketPolicy", "arn:aws:s3:::lab-data", {}),
        # IAM outside the stack's own names, or a stronger policy on its own roles
        ("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/lab-admin", {}),
        ("iam:PutRolePolicy", f"arn:aws:iam::{ACCOUNT}:role/{SERVICE_ROLE_NAME}x", {}),
        ("iam:CreateUser", f"arn:aws:iam::{ACCOUNT}:user/ndmg-cloud-x", {}),
        (
            "iam:AttachRolePolicy",
            f"arn:aws:iam::{ACCOUNT}:role/ndmg-cloud-batch-JobRole-A",
            {"iam:PolicyARN": "arn:aws:iam::aws:policy/AdministratorAccess"},
        ),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/lab-admin", {"iam:PassedToService": "batch.amazonaws.com"}),
        ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/ndmg-cloud-batch-JobRole-A", {"iam:PassedToService": "lambda.amazonaws.com"}),
        ("lambda:CreateFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:x", {}),
        ("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*", {}),
        ("cloudformation:UpdateStack", f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/lab-prod/1", {}),
    ],
)
def test_the_service_role_can_do_nothing_outside_the_templates_resources(action, resource, context):
    granted = [ensure_and_read_policy()]
    assert evaluate(granted, action, resource, context) == IMPLICIT_DENY


def ensure_and_read_policy() -> dict:
    ensure_service_role(client("iam"), "aws", REGION, ACCOUNT)
    return deployed_role_policy()


def test_the_stack_policy_keeps_updates_to_the_templates_types_and_the_queue_in_place():
    policy = [stack_policy(template_body())]

    def decision(action: str, logical: str, kind: str) -> str:
        return evaluate(policy, action, f"LogicalResourceId/{logical}", {"ResourceType": kind})

    assert decision("Update:Modify", "JobDefinition", "AWS::Batch::JobDefinition") == ALLOWED  # a new image
    assert decision("Update:Replace", "JobDefinition", "AWS::Batch::JobDefinition") == ALLOWED  # a new revision
    assert decision("Update:Modify", "JobRole", "AWS::IAM::Role") == ALLOWED
    assert decision("Update:Replace", "JobQueue", "AWS::Batch::JobQueue") == EXPLICIT_DENY  # its queued jobs
    assert decision("Update:Delete", "JobQueue", "AWS::Batch::JobQueue") == EXPLICIT_DENY
    assert decision("Update:Modify", "JobQueue", "AWS::Batch::JobQueue") == ALLOWED  # priority, environments
    assert decision("Update:Modify", "Table", "AWS::DynamoDB::Table") == IMPLICIT_DENY  # no other type


def test_the_caller_needs_only_cloudformation_on_the_projects_stacks_and_the_role():
    policy = [caller_policy("aws", REGION, ACCOUNT)]
    ours = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/ndmg-cloud-batch/abc"
    role = f"arn:aws:iam::{ACCOUNT}:role/{SERVICE_ROLE_NAME}"
    assert evaluate(policy, "cloudformation:UpdateStack", ours) == ALLOWED
    assert evaluate(policy, "iam:PassRole", role, {"iam:PassedToService": "cloudformation.amazonaws.com"}) == ALLOWED
    assert evaluate(policy, "cloudformation:UpdateStack", f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/lab-prod/1") == IMPLICIT_DENY
    assert evaluate(policy, "iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/ndmg-cloud-x") == IMPLICIT_DENY
    assert evaluate(policy, "batch:CreateComputeEnvironment", "*") == IMPLICIT_DENY


def test_a_role_of_that_name_that_is_not_the_projects_is_never_changed(aws):
    iam = client("iam")
    trust = json.dumps({"Version": "2012-10-17", "Statement": []})
    iam.create_role(RoleName=SERVICE_ROLE_NAME, AssumeRolePolicyDocument=trust)
    with pytest.raises(ValueError, match="exists but is not ndmg-cloud's"):
        ensure_service_role(iam, "aws", REGION, ACCOUNT)
    assert iam.list_role_policies(RoleName=SERVICE_ROLE_NAME)["PolicyNames"] == []


def ndmg_infra_conf(network) -> dict:
    subnets, groups = network
    return {
        "image": "ndmg-cloud-m2g:0.3.0",
        "subnets": subnets,
        "security_groups": groups,
        "input_bucket": "lab-data",
        "output_bucket": "lab-results",
        "output_prefix": "ndmg/",
    }


def test_ndmg_infra_refuses_to_deploy_without_the_service_role(network, airflow_db, monkeypatch, capfd):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.delenv(SERVICE_ROLE_ENV, raising=False)
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_infra"]
    assert dag.test(run_conf=ndmg_infra_conf(network)).state == "failed"
    assert f"{SERVICE_ROLE_ENV} is not set" in capfd.readouterr().out
    assert client("cloudformation").describe_stacks()["Stacks"] == []


def test_ndmg_infra_deploys_as_the_service_role(network, airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    arn = ensure_service_role(client("iam"), "aws", REGION, ACCOUNT)
    monkeypatch.setenv(SERVICE_ROLE_ENV, arn)
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_infra"]
    assert dag.test(run_conf=ndmg_infra_conf(network)).state == "success"
    (stack,) = client("cloudformation").describe_stacks(StackName="ndmg-cloud-batch")["Stacks"]
    assert stack["RoleARN"] == arn


def test_setup_deployer_prints_the_role_and_what_airflow_needs(aws, capsys):
    from ndmg_cloud.cli.main import main

    assert main(["setup-deployer"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    arn = client("iam").get_role(RoleName=SERVICE_ROLE_NAME)["Role"]["Arn"]
    assert f"CloudFormation service role: {arn}" in out and f"set {SERVICE_ROLE_ENV}={arn}" in out
    printed = json.loads(out[out.index("{") :])
    assert {s["Sid"] for s in printed["Statement"]} == {"DeployThisProjectsStacks", "HandThemTheServiceRole"}
