"""The scans a run releases to its mapped tasks, as an XCom of constant size.

Airflow 3.3 resolves a mapped task's arguments (``expand_kwargs(upstream)``) by pulling the
upstream's whole XCom and indexing it, in every mapped task instance, on execute and again
on resume: a list of per-scan dicts costs O(N) per task and O(N^2) per run. ``release_scans``
returns a ``ScanItems`` instead: where the items file is, how many items it holds and how
wide each record is (about 150 bytes of XCom, whatever N). The items file holds one
fixed-width JSON record per scan, so a mapped task instance reads its own record with one
ranged GET (``items[map_index]``, which is all Airflow asks of it); iterating reads the file
once. Each record is a scan's task arguments (``runplan.ScanTask.kwargs``); the SubmitJob
payload stays in the job spec.

``ScanItems`` travels through Airflow's serde (``serialize`` / ``deserialize``) and is on its
deserialization allow-list once this module is imported (the DAG file imports it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, overload

from ndmg_cloud.core.s3 import read_at, write_at
from ndmg_cloud.participant.runplan import ScanTask

PAD = b" "
RECORD_ALIGN = 64  # record width is the longest record, rounded up to this


class ScanItems(Sequence[dict[str, Any]]):
    """A run's released scans (see the module docstring): item i is scan i's task arguments."""

    __version__: ClassVar[int] = 1

    def __init__(self, uri: str, length: int, width: int) -> None:
        self.uri, self.length, self.width = uri, length, width

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.length))]
        return self.item(index)

    def item(self, index: int, s3_client: Any = None) -> dict[str, Any]:
        """Item ``index``, read with ``s3_client`` (one this process keeps: making a client
        costs about 0.2 s, what a triggerer starting 1,000 scans cannot spend on each) or,
        by default, a new one."""
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"scan item {index} of {self.length}")
        return _record(_read(self.uri, index * self.width, self.width, s3_client))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every item, from one read of the whole file."""
        if not self.length:
            return
        body = _read(self.uri, 0, self.length * self.width)
        for start in range(0, len(body), self.width):
            yield _record(body[start : start + self.width])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScanItems) and (self.uri, self.length, self.width) == (other.uri, other.length, other.width)

    def __repr__(self) -> str:
        return f"ScanItems({self.uri!r}, length={self.length}, width={self.width})"

    def tasks(self) -> list[ScanTask]:
        """Every scan's task, from one read of the items file."""
        return [ScanTask.from_kwargs(item) for item in self]

    def serialize(self) -> dict[str, Any]:
        return {"uri": self.uri, "count": self.length, "width": self.width}  # "count": the XCom's key since 0.1

    @staticmethod
    def deserialize(data: dict[str, Any], version: int) -> ScanItems:
        if version > ScanItems.__version__:
            raise TypeError(f"ScanItems version {version} is newer than this code's {ScanItems.__version__}")
        return ScanItems(data["uri"], int(data["count"]), int(data["width"]))


def write_scan_items(s3_client: Any, uri: str, items: list[dict[str, Any]]) -> ScanItems:
    """Write the items file (S3, or a local path for the local backend) and return its XCom.
    ``items`` are the scans' task arguments (sealed: ``ScanTask.sealed_list``)."""
    records = [json.dumps(item, sort_keys=True, separators=(",", ":")).encode() + b"\n" for item in items]
    longest = max((len(r) for r in records), default=1)
    width = -(-longest // RECORD_ALIGN) * RECORD_ALIGN
    if not records:  # nothing released (a dry run, all done): no file to read
        return ScanItems(uri, 0, width)
    write_at(s3_client, uri, b"".join(r.ljust(width, PAD) for r in records), "application/octet-stream")
    return ScanItems(uri, len(items), width)


def _record(raw: bytes) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(raw.rstrip(PAD + b"\n").decode())
    return record


def _read(uri: str, start: int, length: int, client: Any = None) -> bytes:
    from ndmg_cloud.orchestration.clients import s3_client

    if not uri.startswith("s3://"):
        return read_at(None, uri, start, length)
    return read_at(client or s3_client(), uri, start, length)


class LegacyScanItems(ScanItems):
    """A ScanItems XCom written before ndmg-cloud's modules moved into packages names the class
    ``ndmg_cloud.scanitems.ScanItems``: a run in flight across the upgrade still reads it. The
    module at that path (``ndmg_cloud/scanitems.py``) binds this class to that name."""


LegacyScanItems.__module__ = "ndmg_cloud.scanitems"
LegacyScanItems.__name__ = LegacyScanItems.__qualname__ = "ScanItems"


def _allow_in_xcom() -> None:
    """Let Airflow's serde rebuild a ScanItems from XCom in this process, under its class
    path and under the one written before the package split."""
    from airflow.sdk.serde import allow_class

    allow_class(ScanItems)
    allow_class(LegacyScanItems)  # imports ndmg_cloud.scanitems to check the name resolves


_allow_in_xcom()
