"""``ScanJobTrigger``: waits for one scan's Batch job in the triggerer, like the provider's
``BatchJobTrigger``, and adds what that one lacks:

- a stuck-job watchdog: a job RUNNABLE longer than ``runnable_timeout`` seconds is checked
  against its queue's compute environments and, if none can ever run it, terminated with
  the reason (``ndmg-cloud: stuck RUNNABLE ...``); an environment that could run it is
  scaling up, and the job is left alone;
- termination that sticks: marking the task failed (or clearing it) terminates the Batch
  job, synchronously, the moment the cancel reaches the trigger (and again in ``on_kill``);
- one DescribeJobs per 100 waiting jobs per poll interval: every trigger of a triggerer asks
  one shared poller (``ndmg_cloud.orchestration.poller``) for its job's status; throttled polls back the
  poller off and are said, at most once a minute per trigger, and counted;
- a scan whose job SUCCEEDED ends its task from the triggerer (``TaskSuccessEvent``, with
  the XComs its worker would have pushed), so a scan costs one task launch, not two. A
  failure resumes on a worker, where Airflow's retries and the failure's reason apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
from airflow.providers.amazon.aws.links.base_aws import BaseAwsLink
from airflow.providers.amazon.aws.links.logs import CloudWatchEventsLink
from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent
from botocore.session import get_session

from ndmg_cloud.orchestration.budget import pace
from ndmg_cloud.orchestration.heartbeat import LeaseRef, beat
from ndmg_cloud.orchestration.poller import THROTTLE_LOG_SECONDS, shared_poller
from ndmg_cloud.orchestration.taskids import THROTTLED_XCOM_KEY
from ndmg_cloud.participant.capacity import diagnose_stuck
from ndmg_cloud.participant.jobs import FAILED, STUCK_REASON, SUCCEEDED, ThrottledPolls, terminate_job

# the message Airflow's triggerer cancels a trigger with when a user acted on its task
# (airflow.jobs.triggerer_job_runner._USER_ACTION_CANCEL_MSG)
USER_ACTION_CANCEL = "__airflow_user_action__"
STATE_CHECK_SECONDS = 20  # how long a cancelled trigger waits to learn whether its task was acted on
_STOPPING: set[asyncio.Future[None]] = set()
REFUSED = "refused"  # a ScanJobEvent status (triggerer route): nothing submitted, and a retry would not change that
WAIT_BUDGET_SECONDS = 14 * 24 * 3600  # how long one try may wait for its job (RUNNABLE queues included)


def polls_for(poll_interval: int) -> int:
    """Polls that cover the wait budget, whatever the poll interval."""
    return max(1, WAIT_BUDGET_SECONDS // max(1, poll_interval))


@functools.cache
def _partition(region: str) -> str:
    return str(get_session().get_partition_for_region(region))


def cloudwatch_link(job: dict[str, Any], region: str | None) -> dict[str, Any] | None:
    """The value the provider's CloudWatch "logs" link reads, from the job's description (as
    ``BatchOperator`` persists it after a second DescribeJobs), or None without a log stream."""
    container = job.get("container") or {}
    config = container.get("logConfiguration") or {}
    stream = container.get("logStreamName")
    if not stream or not region or config.get("logDriver", "awslogs") != "awslogs":
        return None
    options = config.get("options") or {}
    partition = _partition(region)
    return {
        "region_name": region,
        "aws_domain": BaseAwsLink.get_aws_domain(partition),
        "awslogs_stream_name": stream,
        "awslogs_group": options.get("awslogs-group", "/aws/batch/job"),
        "awslogs_region": options.get("awslogs-region", region),
    }


@dataclass(frozen=True)
class ScanJobEvent:
    """What a ScanJobTrigger resumes its task with: ``payload()`` is the provider's Batch
    trigger event (``BatchOperator.execute_complete`` reads status, job_id and message), plus
    the polls Batch throttled (the report counts them)."""

    status: str  # success, failure, error or refused
    job_id: str
    message: str | None = None
    throttled: int = 0

    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"status": self.status, "job_id": self.job_id}
        if self.message:
            payload["message"] = self.message
        if self.throttled:
            payload["throttled"] = self.throttled
        return payload

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> ScanJobEvent:
        return cls(str(data.get("status")), str(data.get("job_id")), data.get("message"), int(data.get("throttled") or 0))


class ScanJobTrigger(BaseTrigger):
    def __init__(
        self,
        *,
        job_id: str,
        job_queue: str,
        runnable_timeout: int,
        poll_interval: int = 30,
        max_polls: int = 4200,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        scan_id: str = "",
        end_on_success: bool = False,
        lease: dict[str, str] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's BaseTrigger.__init__ is unannotated
        self.job_id = job_id
        self.job_queue = job_queue
        self.runnable_timeout = runnable_timeout
        self.poll_interval = poll_interval
        self.max_polls = max_polls
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.scan_id = scan_id
        self.end_on_success = end_on_success
        self.lease = lease  # the run's output lease, which the wait keeps alive (heartbeat.py)
        self._stopping: asyncio.Future[None] | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{self.__class__.__module__}.{self.__class__.__qualname__}",
            {
                "job_id": self.job_id,
                "job_queue": self.job_queue,
                "runnable_timeout": self.runnable_timeout,
                "poll_interval": self.poll_interval,
                "max_polls": self.max_polls,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "scan_id": self.scan_id,
                "end_on_success": self.end_on_success,
                "lease": self.lease,
            },
        )

    def _hook(self) -> BatchClientHook:
        return BatchClientHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async for event in self._events():
                yield event
        except asyncio.CancelledError as cancel:
            # The user marked the task failed or cleared it, or (Airflow 3.3.2 sends the same
            # message) Airflow gave the trigger to another triggerer. The stop goes on in a
            # task of its own: Airflow's on_kill comes after an await where a repeated cancel
            # can drop it. (A triggerer shutting down cancels without this message: the job
            # goes on, and another triggerer takes the trigger over.)
            if cancel.args and cancel.args[0] == USER_ACTION_CANCEL:
                self._stop_unless_moved()
            raise

    def _stop_unless_moved(self) -> asyncio.Future[None]:
        """Terminate the job unless the task is still deferred, in a task of its own (once)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop_if_acted_on())
            _STOPPING.add(self._stopping)  # a reference until it is done: the loop keeps only weak ones
            self._stopping.add_done_callback(_STOPPING.discard)
        return self._stopping

    async def _stop_if_acted_on(self) -> None:
        """A cancelled trigger whose task is still deferred was moved, not stopped: Airflow
        3.3.2's triggerer cancels every trigger no longer assigned to it with the user-action
        message (``TriggerRunnerSupervisor.update_triggers``), so a trigger handed to another
        triggerer (its triggerer missed heartbeats, or a second one took its share) would
        otherwise terminate the job the other goes on waiting for. Anything else (failed,
        cleared, the run failed, or a state that cannot be read) terminates the job."""
        state = await self._task_state()
        if state == "deferred":
            self.log.info(
                "Trigger cancelled while its task is still deferred: Airflow gave it to another triggerer; Batch job %s goes on",
                self.job_id,
            )
            return
        self._stop()

    async def _task_state(self) -> str | None:
        """The state of this trigger's task instance, from the triggerer's supervisor."""
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return None
        try:
            from airflow.sdk.execution_time import task_runner
            from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

            asked = GetTaskStates(dag_id=ti.dag_id, map_index=ti.map_index, task_ids=[ti.task_id], run_ids=[ti.run_id])
            result = await asyncio.wait_for(task_runner.SUPERVISOR_COMMS.asend(asked), STATE_CHECK_SECONDS)
            if not isinstance(result, TaskStatesResult):
                raise TypeError(f"the supervisor answered {type(result).__name__}")
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}_{ti.map_index}"  # Airflow's keys for mapped tasks
            return str(result.task_states.get(ti.run_id, {}).get(key))
        except Exception as err:  # no answer: act on the cancel
            self.log.warning("Could not read the state of task %s (%s): taking the cancel as the user's", ti.task_id, err)
            return None

    def _events(self) -> AsyncIterator[TriggerEvent]:
        """What the trigger does: here, wait for its job."""
        return self._wait()

    def _stop(self) -> None:
        """TerminateJob for this trigger's job, synchronously (no await: a repeated cancel
        cannot cut it short; Batch ignores it for a job that has already ended)."""
        terminate_job(pace(self._hook().client), self.job_id, "the Airflow task was stopped")
        self.log.info("Terminated Batch job %s", self.job_id)

    async def _open_client(self) -> Any:
        """An aiobotocore Batch client (an async context manager) paced by the triggerer's
        Batch API budget: every request, the SDK's retries included, waits for its turn."""
        return _paced(await self._hook().get_async_conn())

    async def _wait(self) -> AsyncIterator[TriggerEvent]:
        status = "UNKNOWN"
        throttled, last_said, last_diagnosis = 0, -float(THROTTLE_LOG_SECONDS), 0.0
        connection = (self.aws_conn_id, self.region_name)
        held = LeaseRef.from_dict(self.lease)
        for _ in range(self.max_polls):
            await beat(held, self.aws_conn_id)
            # the poller of this triggerer: one DescribeJobs per 100 jobs waiting, per interval
            seen = await shared_poller(connection, self.poll_interval, self._open_client).status(self.job_id)
            if seen.throttled:
                throttled += seen.throttled
                if time.monotonic() - last_said >= THROTTLE_LOG_SECONDS:
                    last_said = time.monotonic()
                    self.log.warning(
                        "Batch throttled DescribeJobs for job %s (%s; %d throttled polls so far): the triggerer's poller backs off",
                        self.job_id,
                        seen.throttle_code,
                        throttled,
                    )
            if seen.job is None:
                yield self._event("error", f"Batch job {self.job_id} not found", throttled)
                return
            job = seen.job
            status = str(job.get("status"))
            if status == SUCCEEDED:
                yield await self._succeeded(job, seen.region, throttled)
                return
            if status == FAILED:
                yield self._event("failure", job.get("statusReason") or "job failed", throttled)
                return
            # diagnose at most once per runnable_timeout: it costs two more API calls
            if status == "RUNNABLE" and self._runnable_too_long(job) and time.time() - last_diagnosis >= self.runnable_timeout:
                last_diagnosis = time.time()
                async with await self._open_client() as client:
                    why = await self._why_stuck(client, job)
                    if why:
                        reason = f"{STUCK_REASON} for over {self.runnable_timeout // 60} min: {why}"
                        await client.terminate_job(jobId=self.job_id, reason=reason[:250])
                        yield self._event("failure", reason, throttled)
                        return
        yield self._event("error", f"Batch job {self.job_id} still {status} after {self.max_polls} polls", throttled)

    async def _succeeded(self, job: dict[str, Any], region: str | None, throttled: int) -> TriggerEvent:
        """The job SUCCEEDED. A scan's task ends here, from the triggerer, with what its worker
        would have pushed (no second task launch, no DescribeJobs to resume); the canary's
        resumes on a worker, which copies its self-check lines from CloudWatch."""
        if not self.end_on_success:
            return self._event("success", throttled=throttled)
        xcoms: dict[str, Any] = {"return_value": self.job_id}
        if throttled:
            xcoms[THROTTLED_XCOM_KEY] = ThrottledPolls(self.scan_id, throttled).to_xcom()
        link = cloudwatch_link(job, region)
        if link:
            # what the provider's link reads, and the URL the api-server shows (Airflow 3.3 reads
            # _link_<class>, which a worker's finalize() writes: here no worker runs again)
            logs = CloudWatchEventsLink()
            xcoms[logs.key] = link
            xcoms[logs.xcom_key] = logs.format_link(**link)
        await self._say("Batch job %s SUCCEEDED: the task ends here, in the triggerer", self.job_id)
        return TaskSuccessEvent(xcoms=xcoms)

    async def _say(self, message: str, *args: Any) -> None:
        """An info line of this trigger's log, written off the event loop, for the lines every
        scan writes. Airflow 3.3.2's trigger runner writes its triggers' lines to the
        triggerer's supervisor with a blocking write, and reads the supervisor's answers on this
        event loop. The supervisor reads no line while it sends an answer, and the answer that
        starts new triggers carries the DAG (25 KB) for each. A line written on the loop while
        the socket was full blocked the loop, the answer could not be read, and the two waited
        on each other for good: both triggerers of a 10,000-scan run stopped after 2,497
        submissions (docs/reliability.md). In a thread, a full socket stops only that thread;
        asyncio.to_thread keeps this trigger's context, which routes the line to its log."""
        await asyncio.to_thread(self.log.info, message, *args)

    def _runnable_too_long(self, job: dict[str, Any]) -> bool:
        created = (job.get("createdAt") or 0) / 1000
        return created > 0 and time.time() - created > self.runnable_timeout

    async def _why_stuck(self, client: Any, job: dict[str, Any]) -> str | None:
        queues = (await client.describe_job_queues(jobQueues=[job.get("jobQueue") or self.job_queue])).get("jobQueues", [])
        queue = queues[0] if queues else None
        order = sorted((queue or {}).get("computeEnvironmentOrder", []), key=lambda o: o.get("order", 0))
        names = [o["computeEnvironment"] for o in order]
        environments = (
            (await client.describe_compute_environments(computeEnvironments=names)).get("computeEnvironments", []) if names else []
        )
        return diagnose_stuck(job, queue, environments)

    def _event(self, status: str, message: str | None = None, throttled: int = 0) -> TriggerEvent:
        return TriggerEvent(ScanJobEvent(status, self.job_id, message, throttled).payload())

    async def on_kill(self) -> None:
        """The user marked the task failed or cleared it: stop paying for the job, unless the
        trigger was only moved to another triggerer (``_stop_if_acted_on``).

        The stop runs in a task of its own, begun when the cancel reached the trigger, so the
        triggerer's repeated cancels cannot cut it short (Batch ignores TerminateJob for a job
        that has already ended). ``verify_and_report`` reconciles if even this is lost."""
        await asyncio.shield(self._stop_unless_moved())


@contextlib.asynccontextmanager
async def _paced(opening: Any) -> AsyncIterator[Any]:
    async with opening as client:
        yield pace(client)
