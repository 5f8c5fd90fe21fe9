"""The DAG imports cleanly, is wired as designed, and parsing it touches no AWS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["ndmg_participant"]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"ndmg_participant", "ndmg_infra", "ndmg_group"} <= set(dagbag.dags)


def test_no_task_stores_its_return_value_twice(dagbag):
    """A TaskFlow task annotated to return a dict would also push each key (multiple_outputs)."""
    twice = [
        f"{dag_id}.{t.task_id}"
        for dag_id in ("ndmg_participant", "ndmg_infra", "ndmg_group")
        for t in dagbag.dags[dag_id].tasks
        if getattr(t, "multiple_outputs", False)
    ]
    assert twice == []


def test_tasks_and_wiring(dag):
    assert {t.task_id for t in dag.tasks} == {
        "discover",
        "write_job_specs",
        "canary",
        "plan_scans",
        "pilot_scan",
        "release_scans",
        "choose_backend",
        "run_scan",
        "run_scan_local",
        "verify_and_report",
    }
    assert dag.get_task("write_job_specs").upstream_task_ids == {"discover"}
    assert dag.get_task("canary").upstream_task_ids == {"write_job_specs"}
    plan = dag.get_task("plan_scans")
    assert plan.upstream_task_ids == {"discover", "canary"}
    assert plan.trigger_rule == "none_failed"  # no canary: the run goes on; a failed canary: it stops
    assert dag.get_task("pilot_scan").upstream_task_ids == {"plan_scans"}
    release = dag.get_task("release_scans")
    assert release.upstream_task_ids == {"discover", "pilot_scan"}
    assert release.trigger_rule == "none_failed"  # no pilots: the rest goes; a failed pilot: it does not
    assert dag.get_task("choose_backend").upstream_task_ids == {"discover", "release_scans"}
    for mapped in ("run_scan", "run_scan_local"):
        assert dag.get_task(mapped).upstream_task_ids == {"release_scans", "choose_backend"}
    assert dag.get_task("run_scan_local").pool == "ndmg_local"
    report = dag.get_task("verify_and_report")
    assert report.upstream_task_ids == {"canary", "plan_scans", "pilot_scan", "release_scans", "run_scan", "run_scan_local"}
    assert report.trigger_rule == "all_done"  # runs even when some scans failed


def test_run_scan_is_a_deferrable_mapped_batch_operator(dag):
    from airflow.providers.amazon.aws.operators.batch import BatchOperator

    from ndmg_cloud.orchestration.operators import ScanBatchOperator

    for task_id in ("pilot_scan", "run_scan"):
        mapped = dag.get_task(task_id)
        assert mapped.operator_class is ScanBatchOperator
        assert mapped.partial_kwargs["deferrable"] is True
        assert mapped.partial_kwargs["map_index_template"] == "{{ task.scan_id }}"
    assert issubclass(ScanBatchOperator, BatchOperator)
    canary = dag.get_task("canary")
    assert isinstance(canary, ScanBatchOperator) and canary.deferrable and canary.awslogs_enabled
    link_names = {link.name for link in ScanBatchOperator.operator_extra_links}
    assert {"Batch Job Details", "Batch Job Definition", "Batch Job Queue"} <= link_names


def test_params_carry_the_design_contract(dag):
    params = dag.params
    expected = {
        "bucket",
        "bidsdir",
        "modif",
        "output_uri",
        "jobdir",
        "dataset",
        "participant_label",
        "session_label",
        "pipeline",
        "parcellation",
        "space",
        "voxelsize",
        "mod",
        "diffusion_model",
        "seeds",
        "skull",
        "job_queue",
        "job_definition",
        "backend",
        "force",
        "dry_run",
        "canary",
        "pilot_scans",
    }
    assert expected <= set(params.keys())
    assert params["modif"] == "derivatives/ndmg"
    assert params["pipeline"] == "m2g"
    assert params["job_queue"] == "ndmg-queue" and params["job_definition"] == "ndmg"
    assert params.get_param("pipeline").schema["enum"] == ["m2g", "ndmg", "lite"]
    assert params["canary"] is True and params["pilot_scans"] == 0


def test_the_form_is_stored_once_in_the_serialized_dag_not_once_per_task(dag):
    """The triggerer reads the serialized DAG once per scan it starts: the form's 23 schemas
    are the DAG's, not copied into each of its 10 tasks (route.own_params_only)."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.to_dict(dag)
    tasks_with_form_params = [
        task["__var"]["task_id"] for task in serialized["dag"]["tasks"] if "bucket" in json.dumps(task["__var"].get("params", {}))
    ]
    assert tasks_with_form_params == []
    assert "bucket" in json.dumps(serialized["dag"]["params"])
    assert len(json.dumps(serialized)) < 40_000  # 149 KB with a copy of the form in each task


def test_the_group_level_runs_on_every_dataset_s_reports(dagbag, dag):
    from airflow.sdk.definitions.param import ParamsDict

    group = dagbag.dags["ndmg_group"]
    assert [t.task_id for t in group.tasks] == ["find_report", "compare_connectomes"]
    assert group.get_task("compare_connectomes").upstream_task_ids == {"find_report"}
    assert group.timetable.asset_condition.name == "ndmg-reports"  # the alias verify_and_report emits through
    assert {o.name for o in dag.get_task("verify_and_report").outlets} == {"ndmg-reports"}
    ParamsDict(dict(group.params.items())).validate()  # an Asset-triggered run: every default holds
    from airflow.sdk.exceptions import ParamValidationError

    for bad in ({"report": "s3://b/x/summary.txt"}, {"output": "lab-data/out"}, {"permutations": -1}):
        params = ParamsDict(dict(group.params.items()))
        with pytest.raises(ParamValidationError, match="|".join(bad)):
            for key, value in bad.items():
                params[key] = value
            params.validate()


def test_params_outside_the_schema_are_refused(dag):
    from airflow.sdk.definitions.param import ParamsDict

    good = ParamsDict(dict(dag.params.items()) | {"bucket": "lab-data"})
    good.validate()
    for bad in ({"seeds": "many"}, {"pipeline": "fmriprep"}, {"participant_label": "01"}, {"dry_run": "yes"}):
        params = ParamsDict({k: v for k, v in dag.params.items()})
        with pytest.raises(Exception, match="|".join(bad)):
            for key, value in {"bucket": "lab-data", **bad}.items():
                params[key] = value
            params.validate()


PARSE_PROBE = """
import json, runpy, sys
import botocore.session, boto3
made = []
real = botocore.session.Session.create_client
def spy(self, *a, **k):
    made.append(a[0] if a else k.get("service_name"))
    return real(self, *a, **k)
botocore.session.Session.create_client = spy
import socket
calls = []
real_connect = socket.socket.connect
def connect(self, address):
    calls.append(str(address))
    return real_connect(self, address)
socket.socket.connect = connect
runpy.run_path(sys.argv[1])
print(json.dumps({"clients": made, "connections": calls}))
"""


@pytest.mark.parametrize("dag_file", ["ndmg_participant.py", "ndmg_infra.py", "ndmg_group.py"])
def test_parsing_creates_no_aws_client_and_opens_no_connection(dag_file):
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(ROOT / "dags" / dag_file)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {"clients": [], "connections": []}


ROUTE_PROBE = """
import json
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
bag = DagBag(dag_folder=__import__("sys").argv[1])
out = {"errors": {k: str(v)[-300:] for k, v in bag.import_errors.items()}, "tasks": {}}
if "ndmg_participant" in bag.dags:
    dag = DagSerialization.from_dict(DagSerialization.to_dict(bag.dags["ndmg_participant"]))  # as the scheduler reads it
    for task in dag.tasks:
        args = task.start_trigger_args
        kwargs = args.trigger_kwargs if args else None
        if isinstance(kwargs, dict) and "__var" in kwargs:
            kwargs = kwargs["__var"]
        out["tasks"][task.task_id] = [bool(task.start_from_trigger), args.trigger_cls if args else None, (kwargs or {}).get("role")]
print(json.dumps(out))
"""


@pytest.mark.parametrize("route", ["triggerer", "worker"])
def test_the_scan_tasks_start_in_the_triggerer_on_the_triggerer_route_only(route):
    """Parsed as a dag-processor parses it (a process of its own, the route from its
    environment): on the triggerer route pilot_scan and run_scan start in the triggerer with
    ScanSubmitTrigger; nothing else does, and on the worker route nothing does."""
    out = subprocess.run(
        [sys.executable, "-c", ROUTE_PROBE, str(ROOT / "dags")],
        capture_output=True,
        text=True,
        env={**os.environ, "NDMG_SUBMIT_ROUTE": route},
        check=True,
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["errors"] == {}
    started = {task_id: spec for task_id, spec in probe["tasks"].items() if spec[0]}
    trigger = "ndmg_cloud.orchestration.submit_trigger.ScanSubmitTrigger"
    expected = {"pilot_scan": [True, trigger, "pilot"], "run_scan": [True, trigger, "released"]}
    assert started == (expected if route == "triggerer" else {})


def test_an_unknown_route_is_refused_naming_the_setting_and_the_choices():
    out = subprocess.run(
        [sys.executable, "-c", ROUTE_PROBE, str(ROOT / "dags")],
        capture_output=True,
        text=True,
        env={**os.environ, "NDMG_SUBMIT_ROUTE": "lambda"},
        check=True,
    )
    errors = json.loads(out.stdout.strip().splitlines()[-1])["errors"]
    assert any("NDMG_SUBMIT_ROUTE='lambda' is not a submit route" in e and "'triggerer'" in e and "'worker'" in e for e in errors.values())
