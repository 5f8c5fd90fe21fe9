"""One DescribeJobs per 100 waiting jobs per poll interval, shared by every ``ScanJobTrigger``
of a triggerer.

Airflow runs all the triggers of a triggerer as tasks on one asyncio event loop. Each
``ScanJobTrigger`` asks that loop's ``JobPoller`` for its job's next status; the poller
gathers the job ids waiting, calls DescribeJobs with up to 100 of them (Batch's limit) once
per poll interval and hands each trigger its own job's description. 10,000 waiting jobs cost
100 calls per interval, not 10,000. Throttling backs the poller off (every trigger waits a
little longer), not each trigger on its own.

There is one poller per event loop, AWS connection, region and poll interval; it starts with
the first trigger that asks and stops when no trigger waits.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

DESCRIBE_JOBS_MAX = 100  # ids per DescribeJobs call (Batch's limit)
FIRST_ROUND_DELAY = 0.2  # a new poller waits this long for sibling triggers before its first call
THROTTLED = ("TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded")
TRANSIENT_ROUNDS = 5  # failed calls of one chunk (not throttling) before its triggers get the error
THROTTLE_LOG_SECONDS = 60

log = logging.getLogger(__name__)

OpenClient = Callable[[], Awaitable[Any]]  # returns an async context manager of an aiobotocore Batch client


@dataclass(frozen=True)
class JobStatus:
    """One job's answer from one round of DescribeJobs."""

    job: dict[str, Any] | None  # the job's description; None: Batch does not know this job id
    throttled: int = 0  # DescribeJobs calls for this job Batch throttled since its previous status
    throttle_code: str = ""  # Batch's error code of the last throttled call
    region: str | None = None  # the Batch client's region (for the job's log link)


class JobPoller:
    """Polls Batch for the jobs its triggers wait on; see the module docstring."""

    def __init__(self, key: Hashable, interval: float, open_client: OpenClient) -> None:
        self.key, self.interval, self.open_client = key, interval, open_client
        self.waiting: dict[str, list[asyncio.Future[JobStatus]]] = {}
        self.throttled: dict[str, int] = {}
        self.throttle_code = ""
        self.calls = 0  # DescribeJobs calls made, throttled ones included
        self.closed = False
        self._last_said: float = -THROTTLE_LOG_SECONDS
        # its own context: the poller is not part of the log of the trigger that started it
        self.task = asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context())

    async def status(self, job_id: str) -> JobStatus:
        """The job's status at the poller's next round."""
        if self.closed:
            raise RuntimeError("this JobPoller has stopped; ask shared_poller() for the current one")
        future: asyncio.Future[JobStatus] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(job_id, []).append(future)
        try:
            return await future
        finally:  # cancelled (a user stopped the task): stop asking for it
            futures = self.waiting.get(job_id)
            if futures and future in futures:
                futures.remove(future)
                if not futures:
                    del self.waiting[job_id]
                    self.throttled.pop(job_id, None)

    async def _run(self) -> None:
        try:
            async with await self.open_client() as client:
                region = getattr(getattr(client, "meta", None), "region_name", None)
                loop = asyncio.get_running_loop()
                delay = FIRST_ROUND_DELAY
                while True:
                    await asyncio.sleep(delay)
                    if not self.waiting:
                        self._close()  # synchronously: a trigger asking from now on gets a new poller
                        return
                    began = loop.time()
                    await self._round(client, region)
                    # rounds begin an interval apart: a round's own calls (paced by the budget,
                    # 100 of them for 10,000 jobs) do not stretch the interval of every job
                    delay = max(0.0, self.interval - (loop.time() - began))
        except BaseException as err:
            self._close()
            for futures in self.waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(err if isinstance(err, Exception) else RuntimeError("JobPoller stopped"))
            if not isinstance(err, Exception):
                raise

    def _close(self) -> None:
        self.closed = True
        if _POLLERS.get(self.key) is self:
            del _POLLERS[self.key]

    async def _round(self, client: Any, region: str | None) -> None:
        """One DescribeJobs per 100 of the jobs waiting now; each trigger gets its job's answer."""
        job_ids = list(self.waiting)
        for start in range(0, len(job_ids), DESCRIBE_JOBS_MAX):
            chunk = job_ids[start : start + DESCRIBE_JOBS_MAX]
            unreachable = 0
            while chunk:
                try:
                    self.calls += 1  # (the client is paced: the call waits for its turn, budget.py)
                    jobs = (await client.describe_jobs(jobs=chunk)).get("jobs", [])
                except ClientError as err:
                    code = err.response.get("Error", {}).get("Code", "")
                    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                    if code in THROTTLED:
                        self._throttled(chunk, code)
                    elif status >= 500 and unreachable + 1 < TRANSIENT_ROUNDS:  # Batch's own trouble: again
                        unreachable += 1
                        log.warning("DescribeJobs failed with %s (%s); trying again", status, code)
                    else:
                        self._answer(chunk, error=err)
                        break
                except Exception as err:  # unreachable, timed out, credentials not there yet: again
                    unreachable += 1
                    if unreachable >= TRANSIENT_ROUNDS:
                        self._answer(chunk, error=err)
                        break
                    log.warning("DescribeJobs did not reach Batch (%s); trying again", err)
                else:
                    by_id = {job["jobId"]: job for job in jobs}
                    self._answer(chunk, by_id=by_id, region=region)
                    break
                await asyncio.sleep(self.interval + random.uniform(0, max(self.interval, 0.1)))
                chunk = [job_id for job_id in chunk if job_id in self.waiting]

    def _throttled(self, chunk: list[str], code: str) -> None:
        self.throttle_code = code
        for job_id in chunk:
            self.throttled[job_id] = self.throttled.get(job_id, 0) + 1
        now = asyncio.get_running_loop().time()
        if now - self._last_said >= THROTTLE_LOG_SECONDS:
            self._last_said = now
            log.warning(
                "Batch throttled DescribeJobs (%s) for %d jobs: the shared poller backs off for about %.0f s",
                code,
                len(chunk),
                self.interval * 1.5,
            )

    def _answer(
        self, chunk: list[str], *, by_id: dict[str, Any] | None = None, region: str | None = None, error: BaseException | None = None
    ) -> None:
        for job_id in chunk:
            throttled = self.throttled.pop(job_id, 0)
            status = JobStatus((by_id or {}).get(job_id), throttled, self.throttle_code if throttled else "", region)
            for future in self.waiting.pop(job_id, []):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(status)


_POLLERS: dict[Hashable, JobPoller] = {}


def shared_poller(connection: Hashable, interval: float, open_client: OpenClient) -> JobPoller:
    """The running loop's poller for this AWS connection and poll interval (started if none).
    ``open_client`` is used only when a poller starts."""
    key = (asyncio.get_running_loop(), connection, interval)
    poller = _POLLERS.get(key)
    if poller is None or poller.closed:
        poller = _POLLERS[key] = JobPoller(key, interval, open_client)
    return poller
