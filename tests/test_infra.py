"""The Batch setup as a CloudFormation template: linted, deployed to the local endpoint,
and redeployed without changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from conftest import ENDPOINT, REGION, ROOT
from ndmg_cloud.infra import deploy, teardown

TEMPLATE = ROOT / "infra" / "ndmg-batch.yaml"


def test_template_passes_cfn_lint():
    done = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def network(aws):
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ENDPOINT)
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
    groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]][:1]
    return subnets, groups


def parameters(network, **extra):
    subnets, groups = network
    return {
        "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ndmg-cloud-m2g:0.3.0",
        "Subnets": subnets,
        "SecurityGroups": groups,
        "InputBucket": "lab-data",
        "OutputBucket": "lab-results",
        **extra,
    }


def test_deploys_the_seed_setup_and_a_second_deploy_changes_nothing(network):
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)

    first = deploy(cfn, parameters(network))
    assert first.action == "created"
    assert "ndmg-queue" in first.outputs["JobQueue"] and "ndmg" in first.outputs["JobDefinition"]

    queue = batch.describe_job_queues(jobQueues=["ndmg-queue"])["jobQueues"][0]
    assert queue["priority"] == 1 and queue["state"] == "ENABLED"
    order = sorted(queue["computeEnvironmentOrder"], key=lambda o: o["order"])
    environments = batch.describe_compute_environments(computeEnvironments=[o["computeEnvironment"] for o in order])["computeEnvironments"]
    by_arn = {e["computeEnvironmentArn"]: e for e in environments}
    kinds = [by_arn[o["computeEnvironment"]]["computeResources"]["type"] for o in order]
    assert kinds == ["SPOT", "EC2"]  # Spot first, on-demand second
    for env in environments:
        resources = env["computeResources"]
        assert resources["instanceTypes"] == ["r5.large"] and resources["minvCpus"] == 0
        assert resources["maxvCpus"] == 256
    spot = by_arn[order[0]["computeEnvironment"]]["computeResources"]
    assert spot["allocationStrategy"] == "SPOT_CAPACITY_OPTIMIZED"

    (definition,) = batch.describe_job_definitions(jobDefinitionName="ndmg", status="ACTIVE")["jobDefinitions"]
    requirements = {r["type"]: r["value"] for r in definition["containerProperties"]["resourceRequirements"]}
    assert requirements == {"VCPU": "2", "MEMORY": "15200"}
    rule = definition["retryStrategy"]["evaluateOnExit"][0]
    assert rule["onStatusReason"] == "Host EC2*" and rule["action"].upper() == "RETRY"
    assert definition["containerProperties"]["jobRoleArn"]
    assert root_volumes(environments) == [(100, "gp3", True)] * 2  # image + work: not the AMI's 30 GiB

    again = deploy(cfn, parameters(network))
    assert again.action == "unchanged"
    assert len(batch.describe_job_definitions(jobDefinitionName="ndmg", status="ACTIVE")["jobDefinitions"]) == 1

    assert teardown(cfn) is True
    assert teardown(cfn) is False


def root_volumes(environments) -> list[tuple[int, str, bool]]:
    """The root volume each environment's instances get, from their launch template."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ENDPOINT)
    out = []
    for env in environments:
        template = env["computeResources"]["launchTemplate"]
        (version,) = ec2.describe_launch_template_versions(
            LaunchTemplateId=template["launchTemplateId"], Versions=[str(template["version"])]
        )["LaunchTemplateVersions"]
        (root,) = [m for m in version["LaunchTemplateData"]["BlockDeviceMappings"] if m["DeviceName"] == "/dev/xvda"]
        out.append((root["Ebs"]["VolumeSize"], root["Ebs"]["VolumeType"], root["Ebs"]["Encrypted"]))
    return out


def test_the_root_volume_size_is_a_setup_flag(network, capsys):
    from ndmg_cloud.cli import main

    subnets, groups = network
    code = main(["setup", "--image", "ndmg-cloud-m2g:95d271f7", "--subnets", *subnets, "--security-groups", *groups,
                 "--input-bucket", "lab-data", "--output-bucket", "lab-results", "--root-volume-gb", "250"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    assert root_volumes(batch.describe_compute_environments()["computeEnvironments"]) == [(250, "gp3", True)] * 2


def test_on_demand_only(network):
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    deploy(cfn, parameters(network, UseSpot=False, MaxvCpus=16))
    queue = batch.describe_job_queues(jobQueues=["ndmg-queue"])["jobQueues"][0]
    assert len(queue["computeEnvironmentOrder"]) == 1


def test_ndmg_infra_dag_deploys_from_the_form(network, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    subnets, groups = network
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_infra"]
    conf = {"image": "ndmg-cloud-m2g:0.3.0", "subnets": subnets, "security_groups": groups,
            "input_bucket": "lab-data", "output_bucket": "lab-results"}  # fmt: skip
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    assert batch.describe_job_queues(jobQueues=["ndmg-queue"])["jobQueues"]
    assert dag.test(run_conf=conf).state == "success"  # and again: unchanged


@pytest.mark.parametrize("status, message", [("ROLLBACK_COMPLETE", "run teardown"), ("UPDATE_IN_PROGRESS", "wait for it to finish")])
def test_a_stack_that_cannot_be_updated_is_a_clear_error(status, message):
    from ndmg_cloud.infra import InfraError

    class Stuck:
        def describe_stacks(self, StackName):
            return {"Stacks": [{"StackStatus": status}]}

    with pytest.raises(InfraError, match=f"stack ndmg-cloud-batch is {status}.*{message}"):
        deploy(Stuck(), {"ImageUri": "x"})
