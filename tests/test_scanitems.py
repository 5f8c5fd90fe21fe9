"""A mapped scan task pulls a constant number of XCom bytes whatever the run's size: the
scans are released as a ``ScanItems`` (an items file on S3, one fixed-width record per scan),
and each task instance reads its own record with one ranged GET."""

from __future__ import annotations

import json

import pytest

from ndmg_cloud.orchestration.scanitems import ScanItems, write_scan_items
from ndmg_cloud.participant.runplan import ScanTask

from conftest import ROOT
from datasets import put_dataset, scans_keys

TASKS = [ScanTask(f"sub-{i:02d}_ses-1", f"s3://lab/jobs/r/sub-{i:02d}_ses-1.json", 1800, 1.7e9 + i / 5) for i in range(7)]
ITEMS = [task.kwargs() for task in TASKS]  # what each mapped task is given


def test_items_round_trip_through_airflows_serde(s3):
    from airflow.sdk import serde

    s3.create_bucket(Bucket="lab")
    items = write_scan_items(s3, "s3://lab/jobs/r/released.items", ITEMS)
    wire = json.dumps(serde.serialize(items))
    back = serde.deserialize(json.loads(wire))
    assert isinstance(back, ScanItems) and back == items and len(wire) < 200
    assert len(back) == 7 and back[3] == ITEMS[3] and back[-1] == ITEMS[-1] and list(back) == ITEMS
    assert back.tasks() == TASKS


def test_an_item_is_one_ranged_get_and_iterating_is_one_get(s3):
    s3.create_bucket(Bucket="lab")
    items = write_scan_items(s3, "s3://lab/jobs/r/released.items", ITEMS)
    gets = []
    s3_calls = lambda **kw: gets.append(kw.get("Range"))  # noqa: E731

    import ndmg_cloud.orchestration.clients as clients

    real = clients.s3_client

    class Counting:
        def __init__(self):
            self.client = s3

        def get_object(self, **kwargs):
            s3_calls(**kwargs)
            return self.client.get_object(**kwargs)

    clients.s3_client = Counting
    try:
        assert items[5] == ITEMS[5]
        assert gets == [f"bytes={5 * items.width}-{6 * items.width - 1}"]
        assert list(items) == ITEMS and len(gets) == 2
    finally:
        clients.s3_client = real
    with pytest.raises(IndexError):
        items[7]


def test_an_empty_release_maps_no_task(s3, tmp_path):
    items = write_scan_items(s3, str(tmp_path / "released.items"), [])  # a local job dir (local backend)
    assert len(items) == 0 and list(items) == []


def pulled_bytes(s3, monkeypatch, prefix: str, subjects: int) -> dict[tuple[str, int], int]:
    """XCom bytes each task instance pulled, by (task id, map index), for a run of
    ``subjects`` x 2 scans."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import serde
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    put_dataset(s3, "lab-data", prefix, keys=scans_keys(subjects, 2))
    pulled: dict[tuple[str, int], int] = {}
    real = getattr(RuntimeTaskInstance.xcom_pull, "original", RuntimeTaskInstance.xcom_pull)

    def counting(self, *args, **kwargs):
        value = real(self, *args, **kwargs)
        key = (self.task_id, self.map_index)
        pulled[key] = pulled.get(key, 0) + len(json.dumps(serde.serialize(value)))
        return value

    counting.original = real
    monkeypatch.setattr(RuntimeTaskInstance, "xcom_pull", counting)
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["ndmg_participant"]
    run = dag.test(run_conf={"bucket": "lab-data", "bidsdir": prefix, "canary": False})
    assert run.state == "failed"  # stand-in jobs write no outputs; what matters is what the tasks pulled
    return pulled


@pytest.mark.slow  # two dag.test() runs (~50 s): make test-live, beside make bench-scale's smoke run
def test_a_task_pulls_the_same_bytes_whatever_the_number_of_scans(s3, batch_env, batch_behaviour, airflow_db, monkeypatch):
    small = pulled_bytes(s3, monkeypatch, "small/", subjects=2)
    large = pulled_bytes(s3, monkeypatch, "large/", subjects=8)
    scans = lambda pulled: {i: n for (task_id, i), n in pulled.items() if task_id == "run_scan"}  # noqa: E731
    assert sorted(scans(small)) == list(range(4)) and sorted(scans(large)) == list(range(16))
    print(
        f"XCom bytes pulled per run_scan task instance: N=4 {sorted(set(scans(small).values()))}, N=16 {sorted(set(scans(large).values()))}"
    )
    assert max(scans(large).values()) <= max(scans(small).values()) + 8  # the items file's URI differs by a few characters
    assert max(scans(large).values()) < 2500  # its own item, and discover's sealed XCom (the run's configuration)
    # every other task too: the run plan and its settlement are read from S3, not from XCom
    for task_id in ("write_job_specs", "plan_scans", "release_scans", "choose_backend"):
        print(f"{task_id}: N=4 {small[task_id, -1]} B, N=16 {large[task_id, -1]} B")
        assert large[task_id, -1] <= small[task_id, -1] + 16, task_id
    # but the report, which collects every scan's job id: linear in N (4 x the scans, at most 4 x the bytes)
    report = "verify_and_report", -1
    print(f"verify_and_report: N=4 {small[report]} B, N=16 {large[report]} B")
    assert large[report] <= 4 * small[report]
