"""Local stand-in for SageMaker training jobs: the training image's entrypoint as a real process.

CreateTrainingJob checks the role (it must exist and trust SageMaker), lays out an emulated
``/opt/ml`` (``input/config/hyperparameters.json`` and ``resourceconfig.json``, each input channel
downloaded to ``input/data/<channel>/`` from an ``S3Prefix`` or a ``ManifestFile``), starts the
training image as SageMaker does (its Dockerfile's ENTRYPOINT with ``train`` appended, its ENV,
the job's environment and the role's credentials; an image missing from ECR fails the job), and
moves the job through SageMaker's statuses for real:
``InProgress`` (Starting, Downloading, Training, Uploading) then ``Completed``, ``Failed`` (with
``output/failure`` as the FailureReason) or ``Stopped`` (StopTrainingJob, or ``MaxRuntimeExceeded``).
``model/`` is uploaded as ``<S3OutputPath>/<job>/output/model.tar.gz``, also when stopped, as
SageMaker does. The log goes to CloudWatch Logs (``/aws/sagemaker/TrainingJobs``, stream
``<job>/algo-1-<time>``), the metric definitions' regexes are applied to it, and every status
change is published to EventBridge as "SageMaker Training Job State Change". Channels, the
artefact and the log are read and written with the job's role, as SageMaker does.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sdpipe_local.credentials import SAGEMAKER, RoleSessions, sagemaker_role_problem
from sdpipe_local.images import ImageError, ImageResolver

logger = logging.getLogger(__name__)

TRAINING_OPERATIONS = frozenset({"CreateTrainingJob", "DescribeTrainingJob", "StopTrainingJob", "ListTrainingJobs"})
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# SageMaker sends SIGTERM and waits this long before it kills the container (120 s in the cloud).
_STOP_GRACE_S = 10
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class TrainingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Job:
    name: str
    arn: str
    request: dict[str, Any]
    status: str = "InProgress"
    secondary: str = "Starting"
    failure_reason: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    modified: float = field(default_factory=time.time)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    model_artifact: str | None = None
    process: subprocess.Popen[bytes] | None = None
    stop_requested: str | None = None  # "Stopped" or "MaxRuntimeExceeded"
    log_stream: str = ""


class LocalTrainingJobs:
    def __init__(
        self,
        client: Callable[[str], Any],
        environment: dict[str, str],
        state_dir: Path,
        arn: Callable[[str, str], str],
        *,
        sessions: RoleSessions,
        images: ImageResolver,
    ) -> None:
        self._client = client  # as SageMaker itself (EventBridge state changes)
        self._environment = environment
        self._sessions = sessions
        self._images = images
        self._state_dir = state_dir
        self._arn = arn
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ API
    def create_training_job(self, body: dict[str, Any]) -> dict[str, Any]:
        name = str(body.get("TrainingJobName", ""))
        if not _NAME.match(name):
            raise TrainingError("ValidationException", f"TrainingJobName {name!r} does not match {_NAME.pattern}")
        for required in (
            "AlgorithmSpecification",
            "RoleArn",
            "OutputDataConfig",
            "ResourceConfig",
            "StoppingCondition",
        ):
            if required not in body:
                raise TrainingError("ValidationException", f"{required} is required")
        if (problem := sagemaker_role_problem(self._sessions, str(body.get("RoleArn", "")))) is not None:
            raise TrainingError("ValidationException", problem)
        for value in (body.get("HyperParameters") or {}).values():
            if not isinstance(value, str) or len(value) > 2500:
                raise TrainingError(
                    "ValidationException", "hyperparameter values are strings of at most 2500 characters"
                )
        with self._lock:
            if name in self._jobs:
                raise TrainingError(
                    "ResourceInUse",
                    "Training job names must be unique within an AWS account and region, and a training job with "
                    f"this name already exists ({self._arn('training-job', name)})",
                )
            job = _Job(name=name, arn=self._arn("training-job", name), request=body)
            self._jobs[name] = job
        self._transition(job, "Starting", "Preparing the instances for training")
        threading.Thread(target=self._run, args=(job,), name=f"training-{name}", daemon=True).start()
        return {"TrainingJobArn": job.arn}

    def describe_training_job(self, body: dict[str, Any]) -> dict[str, Any]:
        job = self._job(body.get("TrainingJobName", ""))
        request = job.request
        described: dict[str, Any] = {
            "TrainingJobName": job.name,
            "TrainingJobArn": job.arn,
            "TrainingJobStatus": job.status,
            "SecondaryStatus": job.secondary,
            "HyperParameters": request.get("HyperParameters", {}),
            "AlgorithmSpecification": request["AlgorithmSpecification"],
            "RoleArn": request["RoleArn"],
            "InputDataConfig": request.get("InputDataConfig", []),
            "OutputDataConfig": request["OutputDataConfig"],
            "ResourceConfig": request["ResourceConfig"],
            "StoppingCondition": request["StoppingCondition"],
            "Environment": request.get("Environment", {}),
            "CreationTime": job.created,
            "LastModifiedTime": job.modified,
            "SecondaryStatusTransitions": job.transitions,
            "ModelArtifacts": {"S3ModelArtifacts": job.model_artifact or ""},
        }
        if job.started:
            described["TrainingStartTime"] = job.started
        if job.ended:
            described["TrainingEndTime"] = job.ended
            seconds = int(job.ended - (job.started or job.created))
            described["TrainingTimeInSeconds"] = described["BillableTimeInSeconds"] = max(seconds, 1)
        if job.failure_reason:
            described["FailureReason"] = job.failure_reason
        if job.metrics:
            described["FinalMetricDataList"] = [
                {"MetricName": k, "Value": v, "Timestamp": job.modified} for k, v in job.metrics.items()
            ]
        return described

    def stop_training_job(self, body: dict[str, Any]) -> dict[str, Any]:
        job = self._job(body.get("TrainingJobName", ""))
        if job.status != "InProgress":
            raise TrainingError(
                "ValidationException",
                f"The training job {job.name} is {job.status}; only InProgress jobs can be stopped",
            )
        self._stop(job, "Stopped")
        return {}

    def list_training_jobs(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "TrainingJobSummaries": [
                {"TrainingJobName": j.name, "TrainingJobArn": j.arn, "TrainingJobStatus": j.status,
                 "SecondaryStatus": j.secondary, "CreationTime": j.created, "LastModifiedTime": j.modified}
                for j in sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)
            ]
        }  # fmt: skip

    def close(self) -> None:
        for job in list(self._jobs.values()):
            if job.process is not None and job.process.poll() is None:
                job.process.kill()

    # ------------------------------------------------------------------ running a job
    def _job(self, name: str) -> _Job:
        job = self._jobs.get(name)
        if job is None:
            raise TrainingError("ValidationException", f"Requested resource not found: training job {name!r}")
        return job

    def _stop(self, job: _Job, why: str) -> None:
        with self._lock:
            if job.stop_requested or job.status != "InProgress":
                return
            job.stop_requested = why
            job.status = "Stopping"
        self._transition(job, "Stopping", "Stopping the training job" if why == "Stopped" else "MaxRuntime reached")
        process = job.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            threading.Timer(_STOP_GRACE_S, _kill_if_running, args=(process,)).start()

    def _run(self, job: _Job) -> None:
        root = self._state_dir / "training" / job.name / "opt" / "ml"
        try:
            self._transition(job, "Downloading", "Downloading input data")
            self._lay_out(job, root)
            if job.stop_requested:
                return self._finish(job, root, None)
            job.started = time.time()
            self._transition(job, "Training", "Training image download completed. Training in progress.")
            code = self._train(job, root)
        except ImageError as exc:
            return self._finish(job, root, f"ClientError: {exc}")
        except Exception as exc:  # the stand-in itself failed: report it as SageMaker would
            logger.exception("training job %s failed to run", job.name)
            return self._finish(job, root, f"ClientError: {exc}")
        failure = None
        if code != 0 and not job.stop_requested:
            written = root / "output" / "failure"
            reason = written.read_text(errors="replace").strip() if written.is_file() else ""
            failure = f"AlgorithmError: {reason or 'the training process exited with status ' + str(code)}"
        return self._finish(job, root, failure)

    def _lay_out(self, job: _Job, root: Path) -> None:
        config = root / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(job.request.get("HyperParameters", {})))
        resources = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}
        (config / "resourceconfig.json").write_text(json.dumps(resources))
        channels = job.request.get("InputDataConfig", [])
        (config / "inputdataconfig.json").write_text(
            json.dumps({c["ChannelName"]: {"TrainingInputMode": "File"} for c in channels})
        )
        for folder in ("model", "output/data", "code"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        for channel in channels:
            source = channel["DataSource"]["S3DataSource"]
            self._download(job, source["S3DataType"], source["S3Uri"], root / "input" / "data" / channel["ChannelName"])

    def _role_client(self, job: _Job, service: str) -> Any:
        return self._sessions.client(service, str(job.request["RoleArn"]), SAGEMAKER)

    def _download(self, job: _Job, data_type: str, uri: str, target: Path) -> None:
        s3 = self._role_client(job, "s3")
        bucket, key = _split(uri)
        if data_type == "ManifestFile":
            manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            prefix_bucket, prefix = _split(manifest[0]["prefix"])
            pairs = [(prefix + relative, relative) for relative in manifest[1:]]
            bucket = prefix_bucket
        elif data_type == "S3Prefix":
            pairs = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for item in page.get("Contents", []):
                    # Files land under the channel by their key after the prefix's last '/'.
                    relative = item["Key"][key.rfind("/") + 1 :]
                    if relative and not item["Key"].endswith("/"):
                        pairs.append((item["Key"], relative))
            if not pairs:
                raise RuntimeError(f"no objects under {uri} (input channel is empty)")
        else:
            raise RuntimeError(f"S3DataType {data_type} is not supported by the local stand-in")
        for object_key, relative in pairs:
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, object_key, str(destination))

    def _train(self, job: _Job, root: Path) -> int:
        role = str(job.request["RoleArn"])
        image = self._images.resolve(str(job.request["AlgorithmSpecification"].get("TrainingImage", "")), role)
        command = image.command("train")
        container_root = root.parent.parent  # /opt/ml lies at <container root>/opt/ml
        env = dict(self._environment) | image.container_environment(container_root)
        env |= {k: str(v) for k, v in job.request.get("Environment", {}).items()}
        env |= {"SDPIPE_OPT_ML": str(root), "SM_TRAINING_ENV": json.dumps({"job_name": job.name})}
        env |= self._sessions.credentials(role, SAGEMAKER, job.name).environment()
        log_path = container_root / "training.log"
        job.log_stream = f"{job.name}/algo-1-{int(time.time())}"
        logs = _LogShipper(self._role_client(job, "logs"), job.log_stream)
        metrics = [
            (m["Name"], re.compile(m["Regex"]))
            for m in job.request["AlgorithmSpecification"].get("MetricDefinitions", [])
        ]
        limit = int(job.request["StoppingCondition"].get("MaxRuntimeInSeconds", 86400))
        watchdog = threading.Timer(limit, self._stop, args=(job, "MaxRuntimeExceeded"))
        watchdog.daemon = True
        with log_path.open("ab") as log:
            job.process = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            watchdog.start()
            assert job.process.stdout is not None
            for raw in job.process.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip()
                logs.add(line)
                for metric, pattern in metrics:
                    if match := pattern.search(line):
                        with contextlib.suppress(ValueError, IndexError):
                            job.metrics[metric] = float(match.group(1))
            code = job.process.wait()
        watchdog.cancel()
        logs.close()
        return code

    def _finish(self, job: _Job, root: Path, failure: str | None) -> None:
        if failure is None:
            self._transition(job, "Uploading", "Uploading generated training model")
            try:
                job.model_artifact = self._upload_model(job, root / "model")
            except Exception as exc:
                failure = f"ClientError: could not upload the model artefact: {exc}"
        job.ended = time.time()
        if failure is not None:
            job.status, job.failure_reason = "Failed", failure[:1024]
            self._transition(job, "Failed", failure[:1024])
        elif job.stop_requested:
            job.status = "Stopped"
            why = "Training job stopped" if job.stop_requested == "Stopped" else "The job exceeded MaxRuntimeInSeconds"
            self._transition(job, job.stop_requested, why)
        else:
            job.status = "Completed"
            self._transition(job, "Completed", "Training job completed")
        logger.info("training job %s is %s", job.name, job.status)

    def _upload_model(self, job: _Job, model_dir: Path) -> str:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for path in sorted(model_dir.rglob("*")):
                if path.is_file():
                    archive.add(path, arcname=path.relative_to(model_dir).as_posix())
        output = job.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        bucket, prefix = _split(f"{output}/{job.name}/output/model.tar.gz")
        buffer.seek(0)
        self._role_client(job, "s3").upload_fileobj(buffer, bucket, prefix)
        return f"s3://{bucket}/{prefix}"

    def _transition(self, job: _Job, secondary: str, message: str) -> None:
        now = time.time()
        if job.transitions:
            job.transitions[-1]["EndTime"] = now
        job.transitions.append({"Status": secondary, "StartTime": now, "StatusMessage": message})
        job.secondary, job.modified = secondary, now
        self._publish_state_change(job)

    def _publish_state_change(self, job: _Job) -> None:
        """EventBridge's "SageMaker Training Job State Change" (its detail is DescribeTrainingJob's)."""
        detail = self.describe_training_job({"TrainingJobName": job.name})
        detail = {k: (int(v * 1000) if k.endswith("Time") and isinstance(v, float) else v) for k, v in detail.items()}
        entry = {
            "Source": "aws.sagemaker",
            "DetailType": "SageMaker Training Job State Change",
            "Resources": [job.arn],
            "Detail": json.dumps(detail, default=str),
        }
        try:
            self._client("events").put_events(Entries=[entry])
        except Exception:  # informative only; never break the job for it
            logger.exception("could not publish the state change of %s", job.name)


class _LogShipper:
    """Send a process's lines to CloudWatch Logs in batches (about once a second)."""

    def __init__(self, logs: Any, stream: str) -> None:
        self._logs, self._stream = logs, stream
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=LOG_GROUP)
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def add(self, line: str) -> None:
        with self._lock:
            self._pending.append({"timestamp": int(time.time() * 1000), "message": line or " "})

    def _loop(self) -> None:
        while not self._closed.wait(1.0):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            try:
                self._logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=self._stream, logEvents=batch)
            except Exception:
                logger.exception("could not ship training log lines")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._flush()


def _kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")
