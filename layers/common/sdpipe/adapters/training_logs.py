"""The end of a training job's log in CloudWatch Logs (``/aws/sagemaker/TrainingJobs``)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients

LOG_GROUP = "/aws/sagemaker/TrainingJobs"


class TrainingLogs:
    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws

    def tail(self, training_job_name: str, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of the job's newest log stream (none when it has no log yet)."""
        logs: Any = self._aws.get("logs")
        try:
            streams = logs.describe_log_streams(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{training_job_name}/"
            ).get("logStreams", [])
            if not streams:
                return []
            newest = max(streams, key=lambda s: s.get("lastEventTimestamp") or s.get("creationTime") or 0)
            events = logs.get_log_events(
                logGroupName=LOG_GROUP, logStreamName=newest["logStreamName"], startFromHead=False, limit=lines
            ).get("events", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return []
            raise
        return [str(e.get("message", "")).rstrip() for e in events]
