"""The Batch setup as a CloudFormation template: linted, deployed to the local endpoint,
and redeployed without changes."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import boto3
import pytest

from ndmg_cloud.infra.params import InfraParams
from ndmg_cloud.infra.stack import InfraError, deploy, teardown

from conftest import ENDPOINT, REGION, ROOT
from helpers import setup_argv, stack_params
from iam_eval import ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY, evaluate, object_arn

TEMPLATE = ROOT / "plugins" / "ndmg_cloud" / "infra" / "ndmg-batch.yaml"


def test_template_passes_cfn_lint():
    done = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def service_role(aws, monkeypatch):
    """The deployment's CloudFormation service role, as the ndmg_infra DAG needs it."""
    from ndmg_cloud.infra.deployer import SERVICE_ROLE_ENV, ensure_service_role

    arn = ensure_service_role(boto3.client("iam", region_name=REGION, endpoint_url=ENDPOINT), "aws", REGION, "123456789012")
    monkeypatch.setenv(SERVICE_ROLE_ENV, arn)
    return arn


def test_deploys_the_seed_setup_and_a_second_deploy_changes_nothing(network):
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)

    first = deploy(cfn, stack_params(network))
    assert first.action == "created"
    assert "ndmg-queue" in first.outputs.job_queue and "ndmg" in first.outputs.job_definition

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

    again = deploy(cfn, stack_params(network))
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
    from ndmg_cloud.cli.main import main

    subnets, groups = network
    code = main(setup_argv(subnets, groups, "--root-volume-gb", "250", image="ndmg-cloud-m2g:95d271f7"))
    assert code == 0, capsys.readouterr().err
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    assert root_volumes(batch.describe_compute_environments()["computeEnvironments"]) == [(250, "gp3", True)] * 2


def test_on_demand_only(network):
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    deploy(cfn, stack_params(network, use_spot=False, max_vcpus=16))
    queue = batch.describe_job_queues(jobQueues=["ndmg-queue"])["jobQueues"][0]
    assert len(queue["computeEnvironmentOrder"]) == 1


def test_ndmg_infra_dag_deploys_from_the_form(network, airflow_db, service_role):
    from airflow.dag_processing.dagbag import DagBag

    subnets, groups = network
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_infra"]
    conf = {
        "image": "ndmg-cloud-m2g:0.3.0",
        "subnets": subnets,
        "security_groups": groups,
        "input_bucket": "lab-data",
        "output_bucket": "lab-results",
        "output_prefix": "ndmg/",
    }
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    assert batch.describe_job_queues(jobQueues=["ndmg-queue"])["jobQueues"]
    assert dag.test(run_conf=conf).state == "success"  # and again: unchanged


@pytest.mark.parametrize("status, message", [("ROLLBACK_COMPLETE", "run teardown"), ("UPDATE_IN_PROGRESS", "wait for it to finish")])
def test_a_stack_that_cannot_be_updated_is_a_clear_error(status, message):
    from ndmg_cloud.infra.stack import InfraError

    class Stuck:
        def describe_stacks(self, StackName):
            return {"Stacks": [{"StackStatus": status}]}

    with pytest.raises(InfraError, match=f"stack ndmg-cloud-batch is {status}.*{message}"):
        deploy(Stuck(), InfraParams(image="x", input_bucket="a", output_bucket="b", output_prefix="ndmg/"))


def deployed_job_role_policies(cfn, stack: str = "ndmg-cloud-batch") -> list[dict]:
    """The job role's policies as CloudFormation rendered them (read back from IAM)."""
    iam = boto3.client("iam", region_name=REGION, endpoint_url=ENDPOINT)
    role_arn = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]}["JobRoleArn"]
    role = role_arn.rsplit("/", 1)[-1]
    documents = [
        iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    ]
    return [policy_document(d) for d in documents]


def policy_document(document) -> dict:
    """IAM sends a policy URL-encoded JSON (boto3 decodes it); moto's CloudFormation stores
    the rendered dict as its Python text, read back here as data."""
    if isinstance(document, dict):
        return document
    text = unquote(document)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


# (action, bucket, key, decision) for a deployment with InputPrefix studies/ and OutputPrefix
# ndmg/ in one bucket: the dataset studies/HNU1/, its run writing under ndmg/HNU1/
JOB_ROLE_DECISIONS = [
    ("s3:GetObject", "lab-data", "studies/HNU1/sub-01/dwi/sub-01_dwi.nii.gz", ALLOWED),
    ("s3:GetObject", "lab-data", "studies-private/sub-01/dwi/sub-01_dwi.nii.gz", IMPLICIT_DENY),  # the trailing /
    ("s3:PutObject", "lab-data", "studies/HNU1/sub-01/dwi/sub-01_dwi.nii.gz", EXPLICIT_DENY),
    ("s3:DeleteObject", "lab-data", "studies/HNU1/sub-01/anat/sub-01_T1w.nii.gz", EXPLICIT_DENY),
    ("s3:PutObject", "lab-data", "studies/HNU1/derivatives/ndmg/sub-01/x.csv", EXPLICIT_DENY),
    ("s3:PutObject", "lab-data", "studies/HNU1/dataset_description.json", IMPLICIT_DENY),
    ("s3:DeleteObject", "lab-data", "studies/HNU1/participants.tsv", IMPLICIT_DENY),
    ("s3:PutObject", "lab-data", "ndmg/HNU1/sub-01/ses-1/connectomes/sub-01_ses-1_AAL_connectome.csv", ALLOWED),
    ("s3:PutObject", "lab-data", "ndmg/HNU1/sub-01/ses-1/sub-01_ses-1_manifest.json", ALLOWED),
    ("s3:DeleteObject", "lab-data", "ndmg/HNU1/sub-01/ses-1/sub-01_ses-1_manifest.json", ALLOWED),
    ("s3:AbortMultipartUpload", "lab-data", "ndmg/HNU1/sub-01/ses-1/sub-01_ses-1_dwi.nii.gz", ALLOWED),
    ("s3:GetObject", "lab-data", "ndmg/HNU1/jobs/run1/sub-01_ses-1.json", ALLOWED),
    ("s3:PutObject", "lab-data", "ndmg/HNU1/jobs/run1/sub-01_ses-1.json", EXPLICIT_DENY),
    ("s3:PutObject", "lab-data", "ndmg/HNU1/reports/run1/canary.json", ALLOWED),
    ("s3:PutObject", "lab-data", "ndmg/HNU1/reports/run1/report.json", EXPLICIT_DENY),
    ("s3:PutObject", "lab-data", "ndmg/HNU1/reports/manual__sub-1/report.json", EXPLICIT_DENY),  # a run id with "sub-" in it
    ("s3:PutObject", "lab-data", "ndmg/HNU1/group/sub-x/group.csv", EXPLICIT_DENY),  # a parcellation named like a subject
    ("s3:PutObject", "lab-data", "ndmg/HNU1/xsub-01/x.csv", IMPLICIT_DENY),  # "sub-" not at a folder boundary
    ("s3:PutObject", "lab-data", "ndmg/sub-01/ses-1/x.csv", ALLOWED),  # outputs right under the output prefix
    ("s3:PutObject", "lab-data", "ndmg/HNU1/.ndmg-lease.json", EXPLICIT_DENY),
    ("s3:DeleteObject", "lab-data", "ndmg/HNU1/dataset_description.json", EXPLICIT_DENY),
    ("s3:PutObject", "other-lab", "ndmg/HNU1/sub-01/x.csv", IMPLICIT_DENY),
    ("s3:DeleteBucket", "lab-data", "", IMPLICIT_DENY),
]


def test_the_deployed_job_role_reads_the_input_and_writes_only_output_subjects(network):
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    deploy(cfn, stack_params(network, input_bucket="lab-data", input_prefix="studies/", output_bucket="lab-data"))
    policies = deployed_job_role_policies(cfn)
    decided = [
        (action, bucket, key, evaluate(policies, action, object_arn(bucket, key) if key else f"arn:aws:s3:::{bucket}"))
        for action, bucket, key, _ in JOB_ROLE_DECISIONS
    ]
    assert decided == JOB_ROLE_DECISIONS


def test_the_deployed_job_role_lists_only_under_the_input_prefix(network):
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    deploy(cfn, stack_params(network, input_prefix="studies/"))
    policies = deployed_job_role_policies(cfn)
    listing = lambda prefix: evaluate(policies, "s3:ListBucket", "arn:aws:s3:::lab-data", {"s3:prefix": prefix})  # noqa: E731
    assert listing("studies/HNU1/sub-01/") == ALLOWED
    assert listing("private/") == IMPLICIT_DENY


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"output_prefix": ""}, "output prefix '' is not a folder: give one ending in '/' (e.g. 'ndmg/'), not the bucket root"),
        ({"output_prefix": "ndmg"}, "output prefix 'ndmg' is not a folder"),
        ({"input_prefix": "studies"}, "input prefix 'studies' is not a folder"),
        (
            {"output_bucket": "lab-data", "input_prefix": "studies/", "output_prefix": "studies/HNU1/derivatives/"},
            "output prefix 'studies/HNU1/derivatives/' lies inside input prefix 'studies/' of bucket 'lab-data'",
        ),
        ({"output_bucket": "lab-data", "output_prefix": "ndmg/"}, "output prefix 'ndmg/' lies inside input prefix ''"),
    ],
)
def test_a_deployment_whose_jobs_could_not_write_is_refused_before_cloudformation(network, extra, message):
    with pytest.raises(InfraError, match=re.escape(message)):
        deploy(None, stack_params(network, **extra))


@pytest.mark.parametrize(
    "params, refusal",
    [
        # the README's old quick start: setup with an output bucket, a trigger without output_uri
        (
            {"bucket": "lab-data", "bidsdir": "studies/HNU1"},
            "the run's output location s3://lab-data/studies/HNU1/derivatives/ndmg/ lies outside s3://lab-results/ndmg/, "
            "the only place the job role of 'ndmg' may write (and read job specs): set output_uri to a folder under it, "
            "e.g. output_uri=s3://lab-results/ndmg/HNU1/",
        ),
        ({"bucket": "lab-data", "bidsdir": "studies/HNU1", "output_uri": "s3://lab-results/ndmg/HNU1/"}, None),
        (
            {"bucket": "lab-data", "bidsdir": "elsewhere/HNU1", "output_uri": "s3://lab-results/ndmg/HNU1/"},
            "the dataset s3://lab-data/elsewhere/HNU1/ lies outside s3://lab-data/studies/, the only place the job role",
        ),
        (
            {"bucket": "lab-data", "bidsdir": "studies/HNU1", "output_uri": "s3://lab-results/ndmg/HNU1/", "jobdir": "s3://lab-data/jobs/"},
            "the run's jobdir s3://lab-data/jobs/ lies outside s3://lab-results/ndmg/",
        ),
    ],
)
def test_preflight_refuses_a_run_the_deployed_job_role_could_not_do(network, params, refusal):
    from ndmg_cloud.participant.params import resolve
    from ndmg_cloud.participant.preflight import PreflightError, preflight

    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    deploy(cfn, stack_params(network, input_prefix="studies/"))
    config = resolve(params, "run1")
    if refusal is None:
        assert preflight(batch, config).endswith(":job-definition/ndmg:1")
    else:
        with pytest.raises(PreflightError, match=re.escape(refusal)):
            preflight(batch, config)


def test_instances_require_imdsv2_within_one_hop(network):
    """IMDSv2 only, one hop. (Not a wall for a Batch container in host network mode: the
    instance role itself is kept small, test_the_instance_role_pulls_only_the_scan_image.)"""
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ENDPOINT)
    deploy(cfn, stack_params(network))
    for env in batch.describe_compute_environments()["computeEnvironments"]:
        template = env["computeResources"]["launchTemplate"]
        (version,) = ec2.describe_launch_template_versions(
            LaunchTemplateId=template["launchTemplateId"], Versions=[str(template["version"])]
        )["LaunchTemplateVersions"]
        options = version["LaunchTemplateData"]["MetadataOptions"]
        assert (options["HttpTokens"], int(options["HttpPutResponseHopLimit"])) == ("required", 1)


PROBE = """
import encodings.idna, os, socket, threading
listener = socket.socket()
listener.bind(("0.0.0.0", 8080))
listener.listen(16)
threading.Thread(target=lambda: [listener.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()

def reaches(address, uid):
    pid = os.fork()
    if pid == 0:
        if uid:
            os.setgid(uid)
            os.setuid(uid)
        try:
            socket.socket().connect((address, 8080))
            os._exit(0)
        except OSError:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0

print({f"{address} uid {uid}": reaches(address, uid) for address in ("169.254.169.254", "169.254.170.2") for uid in (0, 65534)})
"""


def boot_script(user_data_b64: str) -> str:
    """The shell part of the launch template's MIME user data, as cloud-init runs a boothook
    (its ``#cloud-boothook`` line taken off)."""
    import base64
    import email

    message = email.message_from_string(base64.b64decode(user_data_b64).decode())
    (part,) = [p for p in message.walk() if p.get_content_type() == "text/cloud-boothook"]
    return part.get_payload().removeprefix("#cloud-boothook").lstrip()


def test_only_root_reaches_the_metadata_service_on_a_scan_instance(network, tmp_path):
    """The deployed launch template's boot script, run by the kernel's own netfilter in a fresh
    network namespace where the metadata (169.254.169.254) and ECS credentials (169.254.170.2)
    addresses answer: root (the ECS agent) reaches both, a non-root scan only the second, and
    running the script twice (a reboot) adds one rule."""
    import os
    import shutil

    from helpers import require_tool

    require_tool("iptables", shutil.which("iptables") is not None and os.geteuid() == 0, "iptables")
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=ENDPOINT)
    deploy(cfn, stack_params(network))
    (template,) = ec2.describe_launch_templates()["LaunchTemplates"]
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])["LaunchTemplateVersions"]
    script = tmp_path / "boothook"
    script.write_text(boot_script(version["LaunchTemplateData"]["UserData"]))
    script.chmod(0o700)
    (tmp_path / "probe.py").write_text(PROBE)
    inside = (
        "set -e; ip link set lo up; ip addr add 169.254.169.254/32 dev lo; ip addr add 169.254.170.2/32 dev lo; "
        f"{script}; {script}; iptables --list-rules OUTPUT; {sys.executable} -I {tmp_path / 'probe.py'}"
    )
    done = subprocess.run(["unshare", "--net", "bash", "-c", inside], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    rules, reached = done.stdout.strip().splitlines()[:-1], ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert len([r for r in rules if "169.254.169.254" in r]) == 1, rules
    assert reached == {
        "169.254.169.254 uid 0": True,
        "169.254.169.254 uid 65534": False,
        "169.254.170.2 uid 0": True,
        "169.254.170.2 uid 65534": True,
    }


def test_the_form_and_setup_deploy_the_same_stack():
    """ndmg_infra's form and ndmg_cloud setup name the same template parameters with the same
    values and defaults: a stack made by one and redeployed by the other is unchanged (before,
    a redeploy from the form reset the queue and job definition names setup had chosen)."""
    import yaml

    from ndmg_cloud.cli.main import infra_params, parser

    class Template(yaml.SafeLoader):
        """CloudFormation YAML: its intrinsic functions (!Ref, !Sub ...) read as nothing."""

    Template.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load(TEMPLATE.read_text(), Loader=Template)
    given = {
        "image": "img:1",
        "subnets": ["subnet-1"],
        "security_groups": ["sg-1"],
        "input_bucket": "lab-data",
        "output_bucket": "lab-results",
        "output_prefix": "ndmg/",
    }
    from_form = InfraParams.from_params(given)  # the form's defaults for the rest
    argv = setup_argv(["subnet-1"], ["sg-1"], image="img:1")
    from_setup = infra_params(parser().parse_args(argv))
    assert from_form == from_setup
    assert set(from_form.cfn_parameters()) == set(template["Parameters"]) - {"JobTimeoutSeconds"}  # that one: the template's default
    custom = InfraParams.from_params({**given, "job_queue": "lab-queue", "job_definition": "lab-ndmg"})
    argv += ["--job-queue", "lab-queue", "--job-definition", "lab-ndmg"]
    assert custom.cfn_parameters() == infra_params(parser().parse_args(argv)).cfn_parameters()


FOREIGN_TEMPLATE = json.dumps(
    {
        "Resources": {
            "Table": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "TableName": "lab-subjects",
                    "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                    "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                    "BillingMode": "PAY_PER_REQUEST",
                },
            },
            "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "lab-events"}},
        }
    }
)


@pytest.mark.parametrize(
    "stack, refusal",
    [
        ("lab-prod", "is not one of this project's"),
        ("ndmg-cloud-" + "a" * 20, "is not one of this project's"),  # too long for the service role's patterns
        ("ndmg-cloud-lab", "exists but is not ndmg-cloud's"),
    ],
)
def test_another_teams_stack_is_never_changed_by_setup_the_form_or_teardown(network, airflow_db, capfd, service_role, stack, refusal):
    """Another team's stack (a DynamoDB table with data, an SQS queue), by a name outside this
    project's pattern, or inside it without the project tag: every front door refuses it."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    from ndmg_cloud.infra.params import INFRA_PARAM_SCHEMAS

    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=ENDPOINT)
    cfn.create_stack(StackName=stack, TemplateBody=FOREIGN_TEMPLATE)
    dynamodb.put_item(TableName="lab-subjects", Item={"id": {"S": "sub-01"}})

    with pytest.raises(InfraError, match=refusal):
        deploy(cfn, stack_params(network, stack=stack))
    if stack == "ndmg-cloud-lab":  # a name the form accepts: the DAG runs, its task refuses; teardown too
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_infra"]
        conf = {**{k: v for k, v in vars(stack_params(network)).items() if v not in ([], "")}, "stack": stack, "image": "x:1"}
        assert dag.test(run_conf=conf).state == "failed"
        assert refusal in capfd.readouterr().out
        with pytest.raises(InfraError, match=refusal):
            teardown(cfn, stack)
    else:  # a name the form refuses at trigger time, and setup too
        with pytest.raises(ParamValidationError, match="does not match"):
            Param(**INFRA_PARAM_SCHEMAS["stack"]).resolve(stack)
        with pytest.raises(ValueError, match=refusal):
            InfraParams.from_params({**vars(stack_params(network)), "stack": stack})

    body = cfn.get_template(StackName=stack)["TemplateBody"]
    assert json.loads(json.dumps(body) if not isinstance(body, str) else body) == json.loads(FOREIGN_TEMPLATE)
    assert dynamodb.get_item(TableName="lab-subjects", Key={"id": {"S": "sub-01"}})["Item"]
    assert boto3.client("sqs", region_name=REGION, endpoint_url=ENDPOINT).get_queue_url(QueueName="lab-events")["QueueUrl"]


def test_the_instance_role_pulls_only_the_scan_image(network):
    """The instance role (reachable from a container in host network mode) may pull the scan
    image's own ECR repository and nothing else: no other repository, no S3, no IAM."""
    from ndmg_cloud.infra.params import ecr_repository_arn

    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    iam = boto3.client("iam", region_name=REGION, endpoint_url=ENDPOINT)
    deploy(cfn, stack_params(network))  # image 123456789012.dkr.ecr.us-east-1.amazonaws.com/ndmg-cloud-m2g:0.3.0
    (role,) = [r["RoleName"] for r in iam.list_roles()["Roles"] if "InstanceRole" in r["RoleName"]]
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []  # no AWS-managed policy with ecr:* on *
    policies = [
        policy_document(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    ]
    ours = "arn:aws:ecr:us-east-1:123456789012:repository/ndmg-cloud-m2g"
    assert ecr_repository_arn("123456789012.dkr.ecr.us-east-1.amazonaws.com/ndmg-cloud-m2g:0.3.0") == ours
    assert evaluate(policies, "ecr:BatchGetImage", ours) == ALLOWED
    assert evaluate(policies, "ecr:BatchGetImage", "arn:aws:ecr:us-east-1:123456789012:repository/finance-app") == IMPLICIT_DENY
    assert evaluate(policies, "s3:GetObject", object_arn("lab-data", "studies/sub-01/dwi/x.nii.gz")) == IMPLICIT_DENY
    assert evaluate(policies, "iam:PassRole", "*") == IMPLICIT_DENY
    assert ecr_repository_arn("ndmg-cloud-m2g:0.3.0") == ""  # an image from another registry: no ECR permission at all


def test_one_stack_per_output_location_gives_each_its_own_job_role(network):
    """A lab with two output locations deploys two stacks (their own queue and job
    definition): each stack's job role writes its own location's subject folders only, and
    preflight refuses a run that names the other location's job definition."""
    from ndmg_cloud.participant.params import resolve
    from ndmg_cloud.participant.preflight import PreflightError, preflight

    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=ENDPOINT)
    batch = boto3.client("batch", region_name=REGION, endpoint_url=ENDPOINT)
    for site in ("hnu1", "nki"):
        deploy(
            cfn,
            stack_params(
                network,
                input_prefix="studies/",
                output_prefix=f"{site}/",
                stack=f"ndmg-cloud-{site}",
                job_queue=f"ndmg-{site}",
                job_definition=f"ndmg-{site}",
            ),
        )
    roles = {site: deployed_job_role_policies(cfn, f"ndmg-cloud-{site}") for site in ("hnu1", "nki")}
    decided = {
        (site, where): evaluate(roles[site], "s3:PutObject", object_arn("lab-results", f"{where}/sub-01/ses-1/connectomes/g.csv"))
        for site in roles
        for where in ("hnu1", "nki")
    }
    assert decided == {
        ("hnu1", "hnu1"): ALLOWED,
        ("hnu1", "nki"): IMPLICIT_DENY,
        ("nki", "hnu1"): IMPLICIT_DENY,
        ("nki", "nki"): ALLOWED,
    }
    conf = {"bucket": "lab-data", "bidsdir": "studies/NKI", "output_uri": "s3://lab-results/nki/NKI/", "job_queue": "ndmg-hnu1"}
    with pytest.raises(PreflightError, match="lab-results/hnu1/"):
        preflight(batch, resolve({**conf, "job_definition": "ndmg-hnu1"}, "run-1"))
    assert preflight(batch, resolve({**conf, "job_queue": "ndmg-nki", "job_definition": "ndmg-nki"}, "run-1"))
