"""``ScanBatchOperator``: one scan's Batch job, submitted from its job spec and waited on."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.links.batch import BatchJobDetailsLink
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.providers.common.compat.sdk import AirflowException

JOB_XCOM_KEY = "batch_job"


class ScanBatchOperator(BatchOperator):
    """Submit the exact SubmitJob payload of a scan's job spec, then wait (deferrable).

    :param scan_id: the scan's BIDS entity string; shown as the map index label.
    :param job_spec_uri: where the scan's job spec lives (the container reads it).
    :param batch: the spec's ``batch`` block, passed to SubmitJob unchanged.

    Every other argument is ``BatchOperator``'s (``deferrable``, ``poll_interval``,
    ``aws_conn_id``, ...); its extra links (job, definition, queue, logs) are kept.
    Right after submitting, the job id is pushed as XCom ``batch_job`` together with the
    scan id, so the report can find the job even when the task fails.
    """

    def __init__(self, *, scan_id: str, job_spec_uri: str, batch: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(
            job_name=batch["jobName"],
            job_queue=batch["jobQueue"],
            job_definition=batch["jobDefinition"],
            container_overrides=batch.get("containerOverrides"),
            tags=batch.get("tags"),
            retry_strategy=batch.get("retryStrategy"),
            submit_job_timeout=(batch.get("timeout") or {}).get("attemptDurationSeconds"),
            **kwargs,
        )
        self.scan_id = scan_id
        self.job_spec_uri = job_spec_uri
        self.batch = batch

    def submit_job(self, context: Any) -> None:
        self.log.info(
            "Submitting %s for scan %s (job spec %s) to queue %s, definition %s",
            self.batch["jobName"],
            self.scan_id,
            self.job_spec_uri,
            self.job_queue,
            self.job_definition,
        )
        try:
            response = self.hook.client.submit_job(**self.batch)
        except Exception as err:
            raise AirflowException(
                f"could not submit scan {self.scan_id} to job queue {self.job_queue!r} with job "
                f"definition {self.job_definition!r}: {err}"
            ) from err
        self.job_id = response["jobId"]
        context["ti"].xcom_push(key=JOB_XCOM_KEY, value={"scan_id": self.scan_id, "job_id": self.job_id})
        self.log.info("Batch job %s submitted for scan %s", self.job_id, self.scan_id)
        BatchJobDetailsLink.persist(
            context=context,
            operator=self,
            region_name=self.hook.conn_region_name,
            aws_partition=self.hook.conn_partition,
            job_id=self.job_id,
        )
