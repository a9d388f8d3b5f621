"""SweepJobs: on a schedule, jobs past their deadline become TIMED_OUT (nothing stays open forever)
and events whose writer died before publishing them go out (nothing announced is lost)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from sdpipe.logic.job_control import JobControl
from sdpipe.logic.outbox import StoredEventSweep
from sdpipe.tracing import make_tracer

logger = Logger()
tracer = make_tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Events first: a timeout announces itself, and older events of the job should precede it.
    recovered = StoredEventSweep.from_settings().sweep()
    timed_out = JobControl.from_settings().sweep()
    metrics.add_metric(name="StoredEventsRecovered", unit=MetricUnit.Count, value=recovered)
    metrics.add_metric(name="JobsTimedOut", unit=MetricUnit.Count, value=len(timed_out))
    if timed_out:
        logger.info("jobs timed out", extra={"job_ids": timed_out})
    return {"timed_out": timed_out, "events_recovered": recovered}
