"""The queue of new scans, created by the Batch stack when asked (``--watch-new-scans``,
the ndmg_infra form's ``watch_new_scans``): a real ``ndmg_cloud setup`` on the local
endpoint makes the queue and points the input bucket's uploads at it, keeping the lab's own
notifications; S3 then notifies it as AWS does, and the schedule's watcher reads it.

The permissions are judged with AWS's documented evaluation logic (iam_eval): the queue
policy as CloudFormation renders it from the template (the local endpoint's CloudFormation
does not create AWS::SQS::QueuePolicy), the service role that creates the queue, the
caller that changes the bucket's notifications, and the watcher's SQS calls as the local
endpoint recorded them."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import cfn_render
import pytest

from ndmg_cloud.infra.deployer import caller_policy, service_role_policy
from ndmg_cloud.infra.iam import new_scans_watcher_statement
from ndmg_cloud.infra.stack import deploy, teardown
from ndmg_cloud.orchestration import new_scans
from ndmg_cloud.orchestration.new_scans import NewScansTrigger

from conftest import ENDPOINT, REGION, ROOT
from helpers import notified_queue, setup_argv, stack_params
from iam_eval import ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY, evaluate

ACCOUNT = "123456789012"
TEMPLATE = ROOT / "plugins" / "ndmg_cloud" / "infra" / "ndmg-batch.yaml"
OURS = "ndmg-cloud-batch-new-scans"


def client(name: str):
    return boto3.client(name, region_name=REGION, endpoint_url=ENDPOINT)


@pytest.fixture
def lab_bucket(aws):
    """lab-data, which already notifies the lab's own queue of uploads under audit/."""
    s3 = client("s3")
    s3.create_bucket(Bucket="lab-data")
    return notified_queue(s3, "lab-data", "lab-audit", "audit/")


def notifications() -> dict[str, dict]:
    found = client("s3").get_bucket_notification_configuration(Bucket="lab-data").get("QueueConfigurations", [])
    return {c["Id"]: c for c in found}


def keys_in(queue_url: str) -> list[str]:
    """The object keys of the S3 notifications waiting in a queue (read and deleted)."""
    from urllib.parse import unquote_plus

    sqs, keys = client("sqs"), []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not messages:
            return sorted(keys)
        for message in messages:
            keys += [
                unquote_plus(r["s3"]["object"]["key"]) for r in json.loads(message["Body"]).get("Records", [])
            ]  # URL-encoded, as AWS sends them
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_setup_asked_for_it_makes_the_queue_and_sends_it_the_uploads_under_the_input_prefix(network, lab_bucket, capsys):
    from ndmg_cloud.cli.main import main

    subnets, groups = network
    argv = setup_argv(subnets, groups, "--input-prefix", "studies/", "--watch-new-scans")
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    given = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{OURS}"  # the stack's output: the queue's URL, as AWS gives it
    assert f"new scans:      uploads under s3://lab-data/studies/ are sent to {given}" in out
    assert f'--when "new scans" --queue {given}' in out  # what to run next
    url = client("sqs").get_queue_url(QueueName=OURS)["QueueUrl"]  # the same queue, at the local endpoint
    retention = client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["MessageRetentionPeriod"])["Attributes"]
    assert retention["MessageRetentionPeriod"] == "1209600"

    # the lab's notification is kept; ours sends what lands under the input prefix
    found = notifications()
    assert set(found) == {"lab-audit", OURS}
    rules = found[OURS]["Filter"]["Key"]["FilterRules"]
    assert [(r["Name"].lower(), r["Value"]) for r in rules] == [("prefix", "studies/")]  # AWS gives the name back as "Prefix"
    s3 = client("s3")
    for key in ("studies/HNU1/sub-03/dwi/sub-03_dwi.nii.gz", "audit/2026.log", "private/sub-01/x.nii.gz"):
        s3.put_object(Bucket="lab-data", Key=key, Body=b"x")
    assert keys_in(url) == ["studies/HNU1/sub-03/dwi/sub-03_dwi.nii.gz"]
    assert keys_in(lab_bucket) == ["audit/2026.log"]  # the lab's still works

    # again: nothing changes, still one notification of ours
    assert main(argv) == 0
    assert "stack ndmg-cloud-batch: unchanged" in capsys.readouterr().out
    assert set(notifications()) == {"lab-audit", OURS}

    # asked no more: ours is taken off the bucket (before its queue goes), the lab's stays
    assert main(setup_argv(subnets, groups, "--input-prefix", "studies/")) == 0
    assert "new scans" not in capsys.readouterr().out
    assert set(notifications()) == {"lab-audit"}
    s3.put_object(Bucket="lab-data", Key="audit/2027.log", Body=b"x")
    assert keys_in(lab_bucket) == ["audit/2027.log"]


def test_teardown_takes_the_notification_off_the_bucket_first(network, lab_bucket, capsys):
    from ndmg_cloud.cli.main import main

    subnets, groups = network
    assert main(setup_argv(subnets, groups, "--watch-new-scans")) == 0, capsys.readouterr().err
    assert notifications()[OURS].get("Filter") is None  # no input prefix: the whole bucket
    assert main(["teardown"]) == 0
    assert "stack ndmg-cloud-batch: deleted" in capsys.readouterr().out
    assert set(notifications()) == {"lab-audit"}


def test_a_stack_that_does_not_watch_never_touches_the_buckets_notifications(network, lab_bucket):
    """A deployment without the queue needs no S3 notification rights: no S3 call is made."""
    cfn = client("cloudformation")
    deploy(cfn, stack_params(network), s3=None)  # an S3 call would need a client
    deploy(cfn, stack_params(network, max_vcpus=16), s3=None)
    assert teardown(cfn, s3=None) is True
    assert set(notifications()) == {"lab-audit"}


def rendered_queue_policy(stack: str, url: str, arn: str, input_bucket: str = "lab-data") -> dict:
    template = cfn_render.load(TEMPLATE)
    names = {
        "AWS::Partition": "aws",
        "AWS::AccountId": ACCOUNT,
        "AWS::Region": REGION,
        "AWS::StackName": stack,
        "WatchNewScans": "true",
        "InputBucket": input_bucket,
        "NewScansQueue": url,
    }
    properties = cfn_render.render(template, "NewScansQueuePolicy", names, {"NewScansQueue.Arn": arn})
    assert properties["Queues"] == [url]
    return properties["PolicyDocument"]


def test_only_the_input_buckets_notifications_may_send_to_the_queue(network, lab_bucket):
    deployed = deploy(
        client("cloudformation"),
        stack_params(network, watch_new_scans=True),
        s3=client("s3"),
    )
    url, arn = deployed.outputs.new_scans_queue_url, deployed.outputs.new_scans_queue_arn
    assert arn == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{OURS}" and url == f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{OURS}"
    policy = [rendered_queue_policy("ndmg-cloud-batch", url, arn)]
    s3 = {"Service": "s3.amazonaws.com"}
    ours = {"aws:SourceArn": "arn:aws:s3:::lab-data", "aws:SourceAccount": ACCOUNT, "aws:SecureTransport": "true"}

    def decide(action: str, principal: dict, **context: str) -> str:
        return evaluate(policy, action, arn, {**ours, **context}, principal=principal)

    assert decide("sqs:SendMessage", s3) == ALLOWED
    assert decide("sqs:SendMessage", s3, **{"aws:SourceArn": "arn:aws:s3:::other-lab"}) == IMPLICIT_DENY  # another bucket
    assert decide("sqs:SendMessage", s3, **{"aws:SourceAccount": "999999999999"}) == IMPLICIT_DENY  # a bucket so named elsewhere
    assert decide("sqs:SendMessage", {"Service": "sns.amazonaws.com"}) == IMPLICIT_DENY
    assert decide("sqs:SendMessage", {"AWS": "arn:aws:iam::999999999999:root"}) == IMPLICIT_DENY
    assert decide("sqs:ReceiveMessage", s3) == IMPLICIT_DENY  # S3 only sends
    assert decide("sqs:SendMessage", s3, **{"aws:SecureTransport": "false"}) == EXPLICIT_DENY
    assert evaluate(policy, "sqs:SendMessage", arn, {k: v for k, v in ours.items() if k != "aws:SourceArn"}, principal=s3) == IMPLICIT_DENY


def registry_permissions(resource_type: str) -> set[str]:
    """What CloudFormation's resource provider for a type calls to create, update and delete
    it: the handlers' permissions in the CloudFormation registry schema cfn-lint ships."""
    import os

    import cfnlint

    base = Path(os.path.dirname(cfnlint.__file__)) / "data" / "schemas" / "resources"
    for path in sorted(base.glob("*.json")):
        schema = json.loads(path.read_text())
        if isinstance(schema, dict) and schema.get("typeName") == resource_type:
            handlers = schema["handlers"]
            return {action.lower() for kind in ("create", "update", "delete") for action in handlers[kind]["permissions"]}
    raise LookupError(f"no registry schema for {resource_type}")


@pytest.mark.parametrize("resource_type", ["AWS::SQS::Queue", "AWS::SQS::QueuePolicy"])
def test_the_service_role_may_do_what_cloudformation_calls_for_the_queue(resource_type):
    policy = [service_role_policy("aws", REGION, ACCOUNT)]
    queue = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{OURS}"
    needed = registry_permissions(resource_type)
    assert needed and {action: evaluate(policy, action, queue) for action in needed} == dict.fromkeys(needed, ALLOWED)


def test_every_type_of_the_template_gets_what_its_resource_provider_calls():
    """Every create/update/delete permission of each resource provider is granted for that
    type (with the conditions aside: other tests judge those), unless it serves a feature the
    template does not use (NOT_CALLED_HERE, each with its reason). Before, a launch template's
    delete (ec2:DeleteTags) and a compute environment's create (batch:SetCapacityTags) were not."""
    import fnmatch

    from ndmg_cloud.infra.deployer import ACTIONS, DESCRIBE, NOT_CALLED_HERE, resource_types
    from ndmg_cloud.infra.template import template_body

    granted = set()
    for statement in service_role_policy("aws", REGION, ACCOUNT)["Statement"]:
        granted |= {a.lower() for a in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}
    assert set(ACTIONS) == resource_types(template_body())
    missing = {
        kind: sorted(
            a for a in registry_permissions(kind) - granted if not any(fnmatch.fnmatch(a, skip.lower()) for skip in NOT_CALLED_HERE)
        )
        for kind in ACTIONS
    }
    assert missing == {kind: [] for kind in ACTIONS}
    assert {a.lower() for a in DESCRIBE} <= granted


def test_the_service_role_may_make_and_remove_only_a_stacks_own_queue():
    policy = [service_role_policy("aws", REGION, ACCOUNT)]
    template = cfn_render.load(TEMPLATE)
    longest = "ndmg-cloud-" + "a" * 19  # the longest stack name setup and the form accept
    for stack in ("ndmg-cloud-batch", longest):
        name = cfn_render.render(template, "NewScansQueue", {"AWS::StackName": stack, "WatchNewScans": "true"}, {})["QueueName"]
        assert len(name) <= 80  # SQS's limit
        queue = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
        for action in ("sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:TagQueue", "sqs:DeleteQueue"):
            assert evaluate(policy, action, queue) == ALLOWED, (action, queue)
    labs = f"arn:aws:sqs:{REGION}:{ACCOUNT}:lab-events"
    for action in ("sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:DeleteQueue"):
        assert evaluate(policy, action, labs) == IMPLICIT_DENY  # another team's queue: not its policy, not at all
    for action in ("sqs:SendMessage", "sqs:ReceiveMessage", "sqs:PurgeQueue"):
        assert evaluate(policy, action, f"arn:aws:sqs:{REGION}:{ACCOUNT}:{OURS}") == IMPLICIT_DENY  # it makes queues, never reads them


def test_the_caller_may_change_the_notifications_of_the_buckets_it_is_given_only(aws, capsys):
    from ndmg_cloud.cli.main import main

    for action in ("s3:GetBucketNotification", "s3:PutBucketNotification"):
        assert evaluate([caller_policy("aws", REGION, ACCOUNT)], action, "arn:aws:s3:::lab-data") == IMPLICIT_DENY
        watching = [caller_policy("aws", REGION, ACCOUNT, ("lab-data",))]
        assert evaluate(watching, action, "arn:aws:s3:::lab-data") == ALLOWED
        assert evaluate(watching, action, "arn:aws:s3:::other-lab") == IMPLICIT_DENY
    assert evaluate(watching, "s3:PutBucketPolicy", "arn:aws:s3:::lab-data") == IMPLICIT_DENY
    assert main(["setup-deployer", "--watched-bucket", "lab-data"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{") :])
    (statement,) = [s for s in printed["Statement"] if s["Sid"] == "PointTheInputBucketsUploadsAtTheQueue"]
    assert statement["Resource"] == ["arn:aws:s3:::lab-data"]


def recorded_sqs_actions(recording: str) -> set[str]:
    """The IAM actions of the SQS requests the local endpoint recorded (JSON protocol: the
    X-Amz-Target header; query protocol: Action=). A batch call is authorized as its single
    form (SQS API reference: DeleteMessageBatch needs sqs:DeleteMessage, and so on)."""
    from urllib.parse import parse_qs

    actions = set()
    for line in recording.splitlines():
        entry = json.loads(line)
        target = {k.lower(): v for k, v in entry["headers"].items()}.get("x-amz-target", "")
        if target.startswith("AmazonSQS."):
            operation = target.removeprefix("AmazonSQS.")
        elif "Action=" in (entry.get("body") or ""):
            operation = parse_qs(entry["body"])["Action"][0]
        else:
            continue
        actions.add("sqs:" + operation.removesuffix("Batch"))
    return actions


def test_the_watcher_reads_the_stacks_queue_with_only_what_its_statement_allows(network, aws, tmp_path, monkeypatch):
    """The whole path on the local endpoint: the stack's queue, the bucket's notification, an
    upload, the schedule's watcher firing; every SQS call it made is allowed by the
    statement ``ndmg-policies --new-scans-queue`` prints, and no other queue's."""
    from moto.moto_api import recorder
    from test_new_scans import collect

    s3 = client("s3")
    s3.create_bucket(Bucket="lab-data")
    outputs = deploy(client("cloudformation"), stack_params(network, input_prefix="studies/", watch_new_scans=True), s3=s3).outputs
    s3.put_object(Bucket="lab-data", Key="studies/HNU1/sub-03/dwi/sub-03_dwi.nii.gz", Body=b"x")

    monkeypatch.setattr(new_scans, "STORE_GRACE_SECONDS", 0.2)
    monkeypatch.setattr(recorder, "_location", str(tmp_path / "recording"))
    recorder.reset_recording()
    recorder.start_recording()
    try:
        events = collect(
            NewScansTrigger(outputs.new_scans_queue_url, "lab-data", "studies/HNU1/", quiet_seconds=1), seconds=20, after_first=1
        )
    finally:
        recorder.stop_recording()
    assert [payload["objects"] for _, payload in events] == [1]

    made = recorded_sqs_actions((tmp_path / "recording").read_text())
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage"} <= made
    statement = {"Version": "2012-10-17", "Statement": [new_scans_watcher_statement(outputs.new_scans_queue_arn)]}
    assert {action: evaluate([statement], action, outputs.new_scans_queue_arn) for action in made} == dict.fromkeys(made, ALLOWED)
    other = f"arn:aws:sqs:{REGION}:{ACCOUNT}:lab-events"
    assert {evaluate([statement], action, other) for action in made} == {IMPLICIT_DENY}
    for action in ("sqs:SendMessage", "sqs:PurgeQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes"):
        assert evaluate([statement], action, outputs.new_scans_queue_arn) == IMPLICIT_DENY


def test_ndmg_policies_adds_the_watcher_for_a_queue_and_refuses_what_is_not_one(capsys):
    from ndmg_cloud.infra.iam import main

    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{OURS}"
    assert main(["--bucket", "lab-data", "--bidsdir", "studies/HNU1", "--account", ACCOUNT, "--new-scans-queue", arn]) == 0
    printed = json.loads(capsys.readouterr().out)
    (statement,) = [s for s in printed["orchestrator_role"]["Statement"] if s["Sid"] == "WatchTheQueueOfNewScans"]
    assert statement["Resource"] == arn
    url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{OURS}"
    assert main(["--bucket", "lab-data", "--account", ACCOUNT, "--new-scans-queue", url]) == 2
    assert f"new scans queue {url!r} is not an SQS queue ARN: give the stack's NewScansQueueArn output" in capsys.readouterr().err


def test_the_ndmg_infra_form_asks_for_the_queue_the_same_way(network, lab_bucket, airflow_db, monkeypatch):
    """The other front door: the ndmg_infra DAG, through the deployment's service role and
    its Airflow AWS connection, makes the same queue and notification."""
    from airflow.dag_processing.dagbag import DagBag

    from ndmg_cloud.infra.deployer import SERVICE_ROLE_ENV, ensure_service_role

    monkeypatch.setenv(SERVICE_ROLE_ENV, ensure_service_role(client("iam"), "aws", REGION, ACCOUNT))
    conf = {
        "image": "ndmg-cloud-m2g:0.3.0",
        "subnets": network[0],
        "security_groups": network[1],
        "input_bucket": "lab-data",
        "input_prefix": "studies/",
        "output_bucket": "lab-results",
        "output_prefix": "ndmg/",
        "watch_new_scans": True,
    }
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_infra"]
    assert dag.test(run_conf=conf).state == "success"
    assert set(notifications()) == {"lab-audit", OURS}
    client("s3").put_object(Bucket="lab-data", Key="studies/HNU1/sub-04/anat/sub-04_T1w.nii.gz", Body=b"x")
    assert keys_in(client("sqs").get_queue_url(QueueName=OURS)["QueueUrl"]) == ["studies/HNU1/sub-04/anat/sub-04_T1w.nii.gz"]


def test_the_input_moving_to_another_bucket_moves_the_notification(network, lab_bucket):
    s3 = client("s3")
    s3.create_bucket(Bucket="lab-data-2")
    deploy(client("cloudformation"), stack_params(network, watch_new_scans=True), s3=s3)
    deploy(client("cloudformation"), stack_params(network, input_bucket="lab-data-2", watch_new_scans=True), s3=s3)
    assert set(notifications()) == {"lab-audit"}
    moved = s3.get_bucket_notification_configuration(Bucket="lab-data-2")["QueueConfigurations"]
    assert [c["Id"] for c in moved] == [OURS]


def test_an_update_that_fails_leaves_the_queue_fed(network, lab_bucket, monkeypatch):
    """The notification comes off before an update that removes the queue; if that update
    fails (CloudFormation rolls back, the queue stays), it is put back: uploads are not lost."""
    from botocore.exceptions import ClientError

    from ndmg_cloud.infra import stack
    from ndmg_cloud.infra.stack import InfraError

    cfn, s3 = client("cloudformation"), client("s3")
    deploy(cfn, stack_params(network, watch_new_scans=True), s3=s3)

    def rolled_back(*args, **kwargs):
        raise ClientError({"Error": {"Code": "ValidationError", "Message": "UPDATE_ROLLBACK_COMPLETE"}}, "UpdateStack")

    monkeypatch.setattr(stack, "_create_or_update", rolled_back)
    with pytest.raises(InfraError, match="could not deploy stack ndmg-cloud-batch: .*UPDATE_ROLLBACK_COMPLETE"):
        deploy(cfn, stack_params(network), s3=s3)
    assert set(notifications()) == {"lab-audit", OURS}
    s3.put_object(Bucket="lab-data", Key="HNU1/sub-05/dwi/sub-05_dwi.nii.gz", Body=b"x")
    assert keys_in(client("sqs").get_queue_url(QueueName=OURS)["QueueUrl"]) == ["HNU1/sub-05/dwi/sub-05_dwi.nii.gz"]


def test_teardown_of_a_stack_whose_input_bucket_is_gone(network, aws):
    s3 = client("s3")
    s3.create_bucket(Bucket="lab-data")
    deploy(client("cloudformation"), stack_params(network, watch_new_scans=True), s3=s3)
    s3.delete_bucket(Bucket="lab-data")
    assert teardown(client("cloudformation"), s3=s3) is True


def stubbed_s3():
    from botocore.stub import Stubber

    s3 = boto3.client("s3", region_name=REGION, endpoint_url="http://127.0.0.1:9")  # never reached: Stubber answers
    return s3, Stubber(s3)


def test_s3_that_cannot_yet_see_the_new_queue_policy_is_asked_again(monkeypatch):
    """S3 checks on PUT that it may send to the queue; a policy just made may not be seen yet
    ("Unable to validate the following destination configurations")."""
    from ndmg_cloud.infra import notifications

    monkeypatch.setattr(notifications, "VALIDATION_RETRY_SECONDS", 0)
    s3, stub = stubbed_s3()
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{OURS}"
    stub.add_response("get_bucket_notification_configuration", {}, {"Bucket": "lab-data"})
    stub.add_client_error(
        "put_bucket_notification_configuration", "InvalidArgument", "Unable to validate the following destination configurations"
    )
    ours = {
        "Id": OURS,
        "QueueArn": arn,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "studies/"}]}},
    }
    put = {"Bucket": "lab-data", "NotificationConfiguration": {"QueueConfigurations": [ours]}, "SkipDestinationValidation": False}
    stub.add_response("put_bucket_notification_configuration", {}, put)  # the second try puts our queue, checked
    with stub:
        notifications.watch(s3, "lab-data", "studies/", arn, "ndmg-cloud-batch")
        stub.assert_no_pending_responses()

    monkeypatch.setattr(notifications, "VALIDATION_WAIT_SECONDS", 0)
    stub.add_response("get_bucket_notification_configuration", {}, {"Bucket": "lab-data"})
    stub.add_client_error(
        "put_bucket_notification_configuration", "InvalidArgument", "Unable to validate the following destination configurations"
    )
    with stub, pytest.raises(notifications.NotificationError, match="could not send the uploads under studies/ to .* of bucket lab-data"):
        notifications.watch(s3, "lab-data", "studies/", arn, "ndmg-cloud-batch")


def test_taking_ours_off_skips_checking_the_labs_destinations_and_a_bucket_gone_has_none():
    """S3 checks every destination on PUT: a lab's notification to a queue since deleted
    must not keep ours on the bucket."""
    from ndmg_cloud.infra import notifications

    s3, stub = stubbed_s3()
    labs = {"Id": "lab-audit", "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:deleted-long-ago", "Events": ["s3:ObjectCreated:*"]}
    ours = {"Id": OURS, "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{OURS}", "Events": ["s3:ObjectCreated:*"]}
    stub.add_response("get_bucket_notification_configuration", {"QueueConfigurations": [labs, ours]}, {"Bucket": "lab-data"})
    stub.add_response(
        "put_bucket_notification_configuration",
        {},
        {"Bucket": "lab-data", "NotificationConfiguration": {"QueueConfigurations": [labs]}, "SkipDestinationValidation": True},
    )
    stub.add_client_error("get_bucket_notification_configuration", "NoSuchBucket", "The specified bucket does not exist")
    stub.add_client_error("get_bucket_notification_configuration", "AccessDenied", "Access Denied")
    with stub:
        assert notifications.unwatch(s3, "lab-data", "ndmg-cloud-batch") is True
        assert notifications.unwatch(s3, "lab-data", "ndmg-cloud-batch") is False  # the bucket is gone
        with pytest.raises(notifications.NotificationError, match="could not read the notifications of bucket lab-data: .*AccessDenied"):
            notifications.unwatch(s3, "lab-data", "ndmg-cloud-batch")
