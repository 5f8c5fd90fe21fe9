"""``ScanBatchOperator``: one scan's Batch job, submitted from its job spec and waited on."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NoReturn

from airflow.providers.amazon.aws.hooks.batch_client import BatchClientHook
from airflow.providers.amazon.aws.links.batch import BatchJobDetailsLink
from airflow.providers.amazon.aws.links.logs import CloudWatchEventsLink
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowSkipException
from airflow.providers.standard.operators.python import PythonOperator

from ndmg_cloud.core.spec import SubmitJob
from ndmg_cloud.orchestration.heartbeat import LeaseRef
from ndmg_cloud.orchestration.links import RunReportLink, airflow_report_url, deployment_base_url
from ndmg_cloud.orchestration.scanjob import SUBMIT_CONFIG, SUBMIT_WINDOW_SECONDS, job_named_since, prepare_scan
from ndmg_cloud.orchestration.taskids import CANARY_JOB_XCOM_KEY, DISCOVER, JOB_XCOM_KEY, PILOT_SCAN, THROTTLED_XCOM_KEY, WRITE_JOB_SPECS
from ndmg_cloud.orchestration.triggers import REFUSED, ScanJobEvent, ScanJobTrigger, polls_for
from ndmg_cloud.participant.canary import CanaryJob, canary_job
from ndmg_cloud.participant.jobs import SubmittedJob, ThrottledPolls, terminate_job
from ndmg_cloud.participant.jobspec import RefusedSubmission, check_submission, read_spec
from ndmg_cloud.participant.params import RunConfig
from ndmg_cloud.participant.runplan import PILOT, RELEASED, PlanRef, ScanTask
from ndmg_cloud.participant.seal import NoSealKey

STATE_KEY = "ndmg_batch_job"  # in task_state_store; renaming it breaks reattaching in-flight jobs


def submitting_since(saved: Any, max_tries: int) -> float | None:
    """When a try of this round of tries began submitting without recording a job id (it
    may have died with the job created), or None."""
    if isinstance(saved, dict) and saved.get("submitting_since") and saved.get("max_tries") == max_tries:
        return float(saved["submitting_since"])
    return None


def in_flight_for(saved: Any, now: float) -> float:
    """Seconds for which an earlier try's SubmitJob call may still create a job: none if
    that try saw its call end (with an error), else until its submit window closes."""
    if saved.get("call_ended"):
        return 0.0
    started = saved.get("call_started") or saved["submitting_since"]
    return max(0.0, float(started) + SUBMIT_WINDOW_SECONDS - now)


def reattachable(saved: Any, max_tries: int) -> str | None:
    """The job id an Airflow retry must reattach to, or None to submit afresh.

    The store survives retries and manual Clears alike; a Clear raises the task instance's
    ``max_tries``, a retry does not. So a job saved under the same ``max_tries`` belongs to
    this round of tries (reattach, never pay twice); one saved before a Clear does not.
    """
    if isinstance(saved, dict) and saved.get("job_id") and saved.get("max_tries") == max_tries:
        return str(saved["job_id"])
    return None


class ScanBatchOperator(BatchOperator):
    """Submit one scan's Batch job, then wait (deferrable).

    :param scan_task: this scan's task argument (a sealed ``runplan.ScanTask``, an item of
        plan_scans' or release_scans' list): which scan, and its turn to submit
        (``ndmg_cloud.participant.pacing``); a task that starts earlier waits for it. Its seal
        is checked before anything of it is used; the scan id alone labels the map index.
    :param runnable_timeout: seconds a job may stay RUNNABLE before its compute
        environments are checked and, if none can run it, the job is cancelled with the
        reason (the run's ``runnable_timeout_minutes`` when it runs).
    :param start_from_trigger: the triggerer route (``route.py``): the task starts in the
        triggerer with ``start_trigger_args`` (``submit_trigger.submit_trigger_args``), which
        does what ``execute`` does here; a failure resumes in ``execute_complete``.

    The SubmitJob request is built when the task runs, from the run's configuration (the
    sealed XCom of ``discover``) and the scan id: ``ndmg-scan --spec <this scan's spec>`` on
    the run's queue and pinned job definition, with the SHA-256 of the job spec it checked
    (sealed, for this scan and run) in the job's environment. Nothing of it comes from a
    mapped argument, an XCom or S3 as written, and ``check_submission`` refuses any other
    request at the last moment.

    Every other argument is ``BatchOperator``'s (``deferrable``, ``poll_interval``,
    ``aws_conn_id``, ...); its extra links (job, definition, queue, logs) are kept.
    Right after submitting, the job id is pushed as XCom ``batch_job`` together with the
    scan id, so the report can find the job even when the task fails, and saved in the
    task's ``task_state_store``: an Airflow retry (a worker crash, say) reattaches to that
    job, live or finished, instead of submitting the scan again. A manual Clear submits afresh.
    """

    # Nothing here is a template: the payload is data (paths and names from the dataset and
    # the user), and Airflow's rendering would evaluate any ``{{ conn... }}`` inside it,
    # nested values included (mapped-operator rendering marks only the top level as done).
    template_fields: Sequence[str] = ()
    template_fields_renderers: ClassVar[dict[str, str]] = {}
    # a job that SUCCEEDED ends the task in the triggerer, with the XComs execute_complete
    # would push: a scan costs one task launch; only failures resume on a worker
    ends_in_triggerer = True

    def __init__(
        self,
        *,
        scan_task: dict[str, Any] | None = None,
        runnable_timeout: int = 30 * 60,
        start_from_trigger: bool = False,
        start_trigger_args: Any = None,
        **kwargs: Any,
    ) -> None:
        named = ScanTask.from_kwargs(scan_task) if isinstance(scan_task, dict) and "scan_id" in scan_task else None
        scan_id = str(named.scan_id) if named else "unknown"  # unchecked: a label until execute checks the seal
        placeholder = SubmitJob(scan_id, "unknown-until-run-time", "unknown-until-run-time")
        super().__init__(
            job_name=placeholder.job_name, job_queue=placeholder.job_queue, job_definition=placeholder.job_definition, **kwargs
        )
        self.scan_task = scan_task
        # the triggerer route (route.py): the scheduler defers the task to ScanSubmitTrigger
        self.start_from_trigger, self.start_trigger_args = start_from_trigger, start_trigger_args
        self.config: RunConfig | None = None  # the run's, once execute has checked it
        self.spec_sha256: str | None = None
        self.submit_not_before: float | None = None
        self.take_job(scan_id, "", placeholder, runnable_timeout)

    def take_job(
        self,
        scan_id: str,
        job_spec_uri: str,
        submission: SubmitJob,
        runnable_timeout: int,
        config: RunConfig | None = None,
        spec_sha256: str | None = None,
    ) -> None:
        """This task's job: the scan, its spec and its SubmitJob request (BatchOperator's
        fields follow from the request, so they can never disagree with it), and the run
        configuration ``check_submission`` holds it to."""
        self.scan_id, self.job_spec_uri, self.submission, self.runnable_timeout = scan_id, job_spec_uri, submission, runnable_timeout
        self.job_name, self.job_queue, self.job_definition = submission.job_name, submission.job_queue, submission.job_definition
        self.container_overrides = submission.payload().get("containerOverrides")
        self.tags = dict(submission.tags)
        self.retry_strategy = submission.retry_strategy
        self.submit_job_timeout = submission.timeout_seconds
        if config is not None:
            self.config, self.spec_sha256 = config, spec_sha256

    def defer(self, *, trigger: Any, method_name: str, kwargs: dict[str, Any] | None = None, timeout: Any = None) -> NoReturn:
        """Wait with ScanJobTrigger (stuck-job watchdog, on_kill) instead of BatchJobTrigger."""
        if not self.job_id:
            raise AirflowException(f"{self.what}: no Batch job to wait for")
        trigger = ScanJobTrigger(
            job_id=self.job_id,
            job_queue=self.job_queue,
            runnable_timeout=self.runnable_timeout,
            poll_interval=self.poll_interval,
            max_polls=polls_for(self.poll_interval),
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            scan_id=self.scan_id,
            end_on_success=self.ends_in_triggerer,
            lease=self.lease_ref(),
        )
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def lease_ref(self) -> dict[str, str] | None:
        """The run's output lease, which the trigger keeps alive while the job runs."""
        return LeaseRef.of_run(self.config) if self.config is not None else None

    def execute(self, context: Any) -> str | None:
        try:
            self.prepare(context)
        except (ValueError, NoSealKey) as err:  # BrokenSeal, a spec that does not read, no seal key
            raise AirflowFailException(f"{self.what}: nothing submitted: {err}") from None
        return self._final(lambda: super(ScanBatchOperator, self).execute(context))

    def run_config(self, context: Any) -> RunConfig:
        """The run's configuration, from discover's XCom if its seal holds for this run."""
        return PlanRef.from_dict(context["ti"].xcom_pull(task_ids=DISCOVER), context["run_id"]).config

    def prepare(self, context: Any) -> None:
        """Check this task's argument and the scan's job spec; build the SubmitJob request."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        role = PILOT if self.task_id == PILOT_SCAN else RELEASED
        ti = context["ti"]
        scan = prepare_scan(
            S3Hook(aws_conn_id=self.aws_conn_id).get_conn(),
            self.scan_task,
            ti.xcom_pull(task_ids=DISCOVER),
            context["run_id"],
            role,
            ti.map_index,
        )
        self.take_job(
            scan.task.scan_id, scan.job_spec_uri, scan.submission, scan.config.runnable_timeout_minutes * 60, scan.config, scan.spec_sha256
        )
        self.submit_not_before = scan.task.submit_not_before

    def execute_complete(self, context: Any, event: dict[str, Any] | str | None = None) -> str | None:  # type: ignore[override]  # None: the trigger ended the task
        if isinstance(event, str):  # dag.test() resumes a task its trigger ended (TaskSuccessEvent)
            return None
        if event and event.get("status") == REFUSED:  # the triggerer route's checks refused the scan
            raise AirflowFailException(str(event.get("message")))
        if event and event.get("job_id"):  # the triggerer route: the trigger knew the scan
            self.job_id = str(event["job_id"])
        throttled = ScanJobEvent.from_payload(event).throttled if event else 0
        if throttled:  # the report counts them
            context["ti"].xcom_push(key=THROTTLED_XCOM_KEY, value=ThrottledPolls(self.scan_id, throttled).to_xcom())
        return self._final(lambda: super(ScanBatchOperator, self).execute_complete(context, event))

    def _final(self, wait: Callable[[], str | None]) -> str | None:
        """A job that ended FAILED fails the task for good: a retry would only reattach to
        the same failed job (retries are for worker crashes, Spot is Batch's own retry)."""
        try:
            return wait()
        except AirflowException as err:
            if isinstance(err, AirflowFailException) or not self.job_id:
                raise
            job = self.hook.get_job_description(self.job_id)
            if job.get("status") != "FAILED":
                raise
            raise AirflowFailException(
                f"{self.what}: Batch job {self.job_id} failed: {job.get('statusReason') or 'no reason given'}"
            ) from err

    @property
    def what(self) -> str:
        """What this task's job is, for messages."""
        return f"scan {self.scan_id}"

    def on_kill(self) -> None:
        """Sync mode: the task was killed; terminate its job (deferred tasks: the trigger's on_kill)."""
        if self.job_id:
            terminate_job(self.hook.client, self.job_id, "the Airflow task was stopped")
            self.log.info("Terminated Batch job %s", self.job_id)

    def submit_job(self, context: Any) -> None:
        """Submit the scan's job at most once per round of tries, whatever the crash point.

        The intent is saved before SubmitJob and the job id after it. A retry that finds the
        job id reattaches; one that finds only the intent (the try died during or right after
        the call, when Batch may have created the job) looks for the job by its name, unique
        to this scan and run, among the jobs created since, and reattaches to it; only if
        there is none does it submit. If the earlier try died during the call, its task runner
        may live on with the request in flight (or retrying): the retry then waits for that
        call's window (SUBMIT_WINDOW_SECONDS from its start) to close before it concludes
        there is no job."""
        store = context.get("task_state_store")
        max_tries = context["ti"].max_tries
        saved = store.get(STATE_KEY) if store is not None else None
        job_id = reattachable(saved, max_tries)
        if job_id and self._still_known(job_id):
            self.log.info("Reattaching scan %s to Batch job %s from an earlier try: not submitting again", self.scan_id, job_id)
            self._record(context, job_id)
            return
        since = submitting_since(saved, max_tries)
        if since is not None:
            job_id = self._job_of_earlier_try(since, in_flight_for(saved, time.time()))
            if job_id:
                self.log.info(
                    "Batch job %s carries this scan's job name %s: an earlier try submitted it and died before "
                    "recording it; reattaching, not submitting again",
                    job_id,
                    self.job_name,
                )
                store.set(STATE_KEY, {"job_id": job_id, "max_tries": max_tries})
                self._record(context, job_id)
                return
        self.log.info(
            "Submitting %s for scan %s (job spec %s) to queue %s, definition %s",
            self.submission.job_name,
            self.scan_id,
            self.job_spec_uri,
            self.job_queue,
            self.job_definition,
        )
        self._wait_for_turn()
        now = time.time()
        intent = {"submitting_since": since or now, "call_started": now, "max_tries": max_tries}
        if store is not None:
            store.set(STATE_KEY, intent)
        try:
            response = self._submit()
        except Exception as err:
            if store is not None:  # this call is over: a retry need not wait out its window
                store.set(STATE_KEY, {**intent, "call_ended": True})
            raise AirflowException(
                f"could not submit scan {self.scan_id} to job queue {self.job_queue!r} with job definition {self.job_definition!r}: {err}"
            ) from err
        if store is not None:
            store.set(STATE_KEY, {"job_id": response["jobId"], "max_tries": max_tries})
        self.log.info("Batch job %s submitted for scan %s", response["jobId"], self.scan_id)
        self._record(context, response["jobId"])

    def _wait_for_turn(self) -> None:
        """Keep the run's SubmitJob calls under its rate (ndmg_cloud.participant.pacing)."""
        wait = (self.submit_not_before or 0) - time.time()
        if wait > 0:
            self.log.info("Waiting %.1f s for this scan's turn to submit (NDMG_SUBMIT_RATE)", wait)
            time.sleep(wait)

    def _submit(self) -> dict[str, Any]:
        if self.config is None:
            raise RefusedSubmission(f"{self.what}: no run configuration was checked, so nothing is submitted")
        check_submission(self.config, self.submission, self.scan_id, self.spec_sha256)
        client = BatchClientHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, config=SUBMIT_CONFIG).client
        response: dict[str, Any] = client.submit_job(**self.submission.payload())
        return response

    def _job_of_earlier_try(self, since: float, in_flight: float) -> str | None:
        """The job an earlier try of this round submitted, if it exists. If that try died
        during its call, the call may still create the job until its window closes: look, and
        if there is none yet, wait for the window to close and look again."""
        job_id = self._job_named_since(since)
        if job_id is None and in_flight > 0:
            self.log.info(
                "An earlier try began submitting scan %s and died during the call, which may still create "
                "the job for %.0f s; waiting for that before looking for job %s again",
                self.scan_id,
                in_flight,
                self.job_name,
            )
            time.sleep(in_flight)
            job_id = self._job_named_since(since)
        return job_id

    def _job_named_since(self, since: float) -> str | None:
        return job_named_since(self.hook.client, self.job_queue, self.job_name, since)

    def _still_known(self, job_id: str) -> bool:
        try:
            self.hook.get_job_description(job_id)
        except AirflowException:
            self.log.warning("Batch job %s from an earlier try is gone; submitting afresh", job_id)
            return False
        return True

    def _record(self, context: Any, job_id: str) -> None:
        self.job_id = job_id
        context["ti"].xcom_push(key=JOB_XCOM_KEY, value=SubmittedJob(self.scan_id, job_id).to_xcom())
        BatchJobDetailsLink.persist(
            context=context,
            operator=self,
            region_name=self.hook.conn_region_name,
            aws_partition=self.hook.conn_partition,
            job_id=self.job_id,
        )
        # the log link has nothing to show until the job ends (its trigger, or execute_complete,
        # pushes it then): say so, rather than have each deferral log "XCom not found"
        context["ti"].xcom_push(key=CloudWatchEventsLink.key, value=None)


class CanaryOperator(ScanBatchOperator):
    """The canary: one short Batch job on the run's queue and job definition that runs
    ``ndmg-scan --self-check`` before any scan job (see ``ndmg_cloud.participant.canary``).

    Which scan it checks is named by ``spec_task_id`` (XCom ``canary_job``, sealed); its job
    is built here from the run's configuration. A run without one (``canary=false``,
    ``backend=local``, a dry run) skips this task. Everything else is a scan job's:
    exactly-once submission, the stuck-job watchdog, termination on kill, the Batch links;
    its self-check lines are copied from CloudWatch into this task's log.
    """

    def __init__(self, *, spec_task_id: str = WRITE_JOB_SPECS, **kwargs: Any) -> None:
        super().__init__(scan_task={"scan_id": "canary", "job_spec_uri": ""}, awslogs_enabled=True, **kwargs)
        self.spec_task_id = spec_task_id

    what = "the canary (ndmg-scan --self-check)"
    ends_in_triggerer = False  # its worker copies the self-check lines from CloudWatch

    def prepare(self, context: Any) -> None:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        picked = context["ti"].xcom_pull(task_ids=self.spec_task_id, key=CANARY_JOB_XCOM_KEY)
        if not picked:
            for link in self.operator_extra_links:  # no job, no links (and no "XCom not found" errors)
                if getattr(link, "key", None):
                    context["ti"].xcom_push(key=link.key, value=None)
            raise AirflowSkipException("no canary in this run (canary=false, backend=local or a dry run)")
        scan_id = CanaryJob.picked(picked, context["run_id"])
        config = self.run_config(context)
        _, sha256 = read_spec(S3Hook(aws_conn_id=self.aws_conn_id).get_conn(), config, scan_id)
        job = canary_job(config, scan_id, sha256)
        self.take_job(job.scan_id, job.job_spec_uri, job.submission, job.runnable_timeout, config, sha256)


class RunReportOperator(PythonOperator):
    """The verify-and-report step, with a "Run report" button that opens report.html, and the
    same URL as the last line of its log (the log view makes it a link)."""

    operator_extra_links = (RunReportLink(),)

    def execute(self, context: Any) -> Any:
        uri = super().execute(context)
        if uri:
            self.log.info("Run report: %s", airflow_report_url(deployment_base_url(), context["run_id"]))
        return uri
