"""One run per output location: the lease on S3, taken with a conditional write (the local
endpoint implements If-None-Match / If-Match on PutObject, as S3 does)."""

from __future__ import annotations

import json

import pytest

from ndmg_cloud.participant import lease

BUCKET, KEY = "lab-data", "ds/derivatives/ndmg/.ndmg-lease.json"
HOUR = 3600.0


def clock(t: float):
    return lambda: t


def unknown(_run_id):
    return None


def holder(s3) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())


@pytest.fixture
def bucket(s3):
    s3.create_bucket(Bucket=BUCKET)
    return s3


def test_the_first_run_takes_it_and_a_second_is_refused_naming_the_first(bucket):
    assert lease.take(bucket, BUCKET, KEY, "run-a", unknown, clock(1000.0)) is None
    with pytest.raises(lease.LeaseHeld, match="run run-a holds the lease on s3://lab-data/ds/derivatives/ndmg/") as held:
        lease.take(bucket, BUCKET, KEY, "run-b", lambda run: "running", clock(1060.0))
    assert "it is running in this Airflow" in str(held.value) and "ndmg_cloud kill run-a" in str(held.value)
    assert holder(bucket)["run_id"] == "run-a"


def test_a_retry_of_the_holder_keeps_it(bucket):
    lease.take(bucket, BUCKET, KEY, "run-a", unknown, clock(1000.0))
    assert lease.take(bucket, BUCKET, KEY, "run-a", unknown, clock(1100.0)) is None
    assert holder(bucket)["heartbeat"] == 1100.0 and holder(bucket)["taken_at"] == 1000.0


@pytest.mark.parametrize("state", ["success", "failed"])
def test_a_lease_whose_run_ended_is_taken_over_and_says_so(bucket, state):
    lease.take(bucket, BUCKET, KEY, "run-a", unknown, clock(1000.0))
    took = lease.take(bucket, BUCKET, KEY, "run-b", lambda run: state, clock(1060.0))
    assert took.run_id == "run-a" and f"its run ended ({state})" in took.why
    assert holder(bucket)["run_id"] == "run-b"


def test_an_unknown_holder_is_taken_over_only_when_its_heartbeat_is_stale(bucket):
    lease.take(bucket, BUCKET, KEY, "elsewhere", unknown, clock(1000.0))
    with pytest.raises(lease.LeaseHeld, match="this Airflow does not know that run"):
        lease.take(bucket, BUCKET, KEY, "run-b", unknown, clock(1000.0 + 23 * HOUR))
    took = lease.take(bucket, BUCKET, KEY, "run-b", unknown, clock(1000.0 + 25 * HOUR))
    assert took.run_id == "elsewhere" and "25.0 h old" in took.why


def test_of_two_takers_of_an_ended_lease_only_one_wins(bucket, monkeypatch):
    """Both read the ended holder's lease; the first conditional overwrite changes its ETag,
    so the second's If-Match fails and it is refused, naming the winner."""
    lease.take(bucket, BUCKET, KEY, "run-a", unknown, clock(1000.0))
    real_read = lease._read
    stale = real_read(bucket, BUCKET, KEY)  # what both takers saw

    lease.take(bucket, BUCKET, KEY, "run-b", lambda run: "failed", clock(1060.0))  # the first taker wins
    reads: list[int] = []

    def second_taker_reads_what_it_saw_before(*args):
        reads.append(1)
        return stale if len(reads) == 1 else real_read(*args)

    monkeypatch.setattr(lease, "_read", second_taker_reads_what_it_saw_before)
    states = {"run-a": "failed", "run-b": "running"}
    with pytest.raises(lease.LeaseHeld, match="run run-b holds the lease"):
        lease.take(bucket, BUCKET, KEY, "run-c", lambda run: states[run], clock(1061.0))
    assert holder(bucket)["run_id"] == "run-b"


def test_release_and_refresh_touch_only_the_holders_lease(bucket):
    lease.take(bucket, BUCKET, KEY, "run-a", unknown, clock(1000.0))
    assert lease.refresh(bucket, BUCKET, KEY, "run-b", clock(2000.0)) is False
    assert lease.release(bucket, BUCKET, KEY, "run-b") is False
    assert holder(bucket)["heartbeat"] == 1000.0
    assert lease.refresh(bucket, BUCKET, KEY, "run-a", clock(2000.0)) is True
    assert holder(bucket)["heartbeat"] == 2000.0
    assert lease.release(bucket, BUCKET, KEY, "run-a") is True
    assert "Contents" not in bucket.list_objects_v2(Bucket=BUCKET, Prefix=KEY)


def test_a_release_never_deletes_a_lease_taken_over_since_it_was_read(bucket, monkeypatch):
    """run-a reads its own lease; before its delete lands, run-b takes the lease over (run-a
    was marked failed): run-a's release must leave run-b's lease in place."""
    lease.take(bucket, BUCKET, KEY, "run-a", unknown, clock(1000.0))
    real_read = lease._read

    def read_then_taken_over(client, bucket_name, key):
        found = real_read(client, bucket_name, key)
        assert lease._put(client, bucket_name, key, lease.Lease("run-b", 2000.0, 2000.0), IfMatch=found[1])  # take's takeover write
        return found

    monkeypatch.setattr(lease, "_read", read_then_taken_over)
    assert lease.release(bucket, BUCKET, KEY, "run-a") is False
    monkeypatch.setattr(lease, "_read", real_read)
    assert holder(bucket)["run_id"] == "run-b"
