"""Start and stop the whole local stack: endpoint, resources, Lambda workers, pollers."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import boto3

from sdpipe_local.chaos import Chaos, ChaosConfig
from sdpipe_local.credentials import LAMBDA, LOCAL_CLIENT_CONFIG, RoleSessions, StateMachineCredentials
from sdpipe_local.iam import ADMIN_POLICY, ADMIN_USER
from sdpipe_local.iam_policy import Decision, evaluate
from sdpipe_local.images import ImageResolver, record_checkout_images
from sdpipe_local.lambda_runtime import LambdaRuntime
from sdpipe_local.provision import ProvisionedStack, Provisioner
from sdpipe_local.sagemaker import LocalSageMaker
from sdpipe_local.schedules import Scheduler
from sdpipe_local.server import LocalAwsServer
from sdpipe_local.sqs_event_source import SqsMappingSpec, SqsPoller
from sdpipe_local.template import samconfig_parameters, translate

logger = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
# The local administrator's access key (an IAM user allowed everything): what the CLI, the AWS CLI
# and tests use. Everything the stack runs (functions, containers, workflows) uses its own role.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
STATE_FILE = "stack.json"


class StackStartError(Exception):
    """The template cannot be deployed as it is (AWS would refuse it too); the message says why."""


def client_environment(endpoint_url: str) -> dict[str, str]:
    """What a process needs to talk to the local stack with boto3 or the AWS CLI."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        **CREDENTIALS,
    }


class LocalStack:
    # moto's backends are global to the process: stacks running at once in one process share them
    # (so they need different stack names), and the last one to stop resets them.
    _running: ClassVar[int] = 0
    _running_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        template_path: Path | str = "template.yaml",
        *,
        port: int = 0,
        stack_name: str = "sdpipe",
        parameter_overrides: dict[str, str] | None = None,
        state_dir: Path | str | None = None,
        chaos: ChaosConfig | None = None,
    ) -> None:
        self.template_path = Path(template_path).resolve()
        self.stack_name = stack_name
        self._port = port
        self._overrides = {**samconfig_parameters(self.template_path.parent), **(parameter_overrides or {})}
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="sdpipe-local-"))
        self.runtime: LambdaRuntime | None = None
        self.sessions: RoleSessions | None = None
        self._state_machine_credentials: StateMachineCredentials | None = None
        self.sagemaker: LocalSageMaker | None = None
        self.scheduler: Scheduler | None = None
        self.server: LocalAwsServer | None = None
        self.provisioned: ProvisionedStack | None = None
        self._work_queues: list[str] = []  # where work arrives (known once provisioned)
        self._pollers: list[SqsPoller] = []
        self._previous_moto_port: str | None = None
        # The fault injector (sdpipe_local.chaos), armed once the stack is up.
        self.chaos: Chaos | None = Chaos(chaos) if chaos is not None else None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalStack:
        try:
            return self._start()
        except BaseException:
            self.stop()  # whatever had started (server, workers) goes with the failed start
            raise

    def _start(self) -> LocalStack:
        started = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        base_environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        # Workers and containers get the endpoint and region; their credentials are their role's.
        self.sessions = RoleSessions(self.client, "", REGION)
        self.runtime = LambdaRuntime(base_environment, self.state_dir / "logs", self.sessions)
        images = ImageResolver(self.template_path.parent, self._ecr_for)
        self.sagemaker = LocalSageMaker(
            self.client, base_environment, self.state_dir, REGION, ACCOUNT_ID, sessions=self.sessions, images=images
        )
        self.server = LocalAwsServer(
            self.runtime,
            self.sagemaker,
            ACCOUNT_ID,
            {CREDENTIALS["AWS_ACCESS_KEY_ID"]: ADMIN_USER},
            port=self._port,
            chaos=self.chaos,
            caller_service=self.sessions.service_of,
            region=REGION,
        )
        self.sessions.endpoint_url = self.server.url
        # moto's Step Functions interpreter calls the other services on this port (process-wide:
        # a second stack in the same process takes it over until it stops, then gives it back).
        self._previous_moto_port = os.environ.get("MOTO_PORT")
        os.environ["MOTO_PORT"] = str(self.server.port)
        with LocalStack._running_lock:
            self.server.start()
            LocalStack._running += 1
        base_environment.update({k: v for k, v in self.environment().items() if k not in CREDENTIALS})
        self._configure_moto()
        self._create_administrator()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.server.iam.denial_log = self.state_dir / "logs" / "iam-denied.log"
        self.server.iam.enable()

        template = translate(
            self.template_path,
            self._overrides,
            {
                "AWS::Region": REGION,
                "AWS::AccountId": ACCOUNT_ID,
                "AWS::Partition": "aws",
                "AWS::StackName": self.stack_name,
            },
        )
        self.provisioned = Provisioner(template, self.client, self.stack_name, REGION, ACCOUNT_ID).run()
        self._work_queues = _work_queue_urls(template.resources, self.provisioned)
        self._publish_outputs()
        record_checkout_images(self.client("ecr"), self.provisioned.repository_images, self.template_path.parent)
        self._state_machine_credentials = StateMachineCredentials(self.sessions)
        self._state_machine_credentials.install()
        for spec in self.provisioned.functions:
            self.runtime.add(spec)
        self.runtime.prewarm()
        self.scheduler = Scheduler(self.provisioned.schedules, self.runtime, self.client, REGION, ACCOUNT_ID)
        self.scheduler.start()
        mappings = [mapping for mapping in self.provisioned.sqs_mappings if mapping.enabled]
        for mapping in mappings:
            self._check_poller_permissions(mapping)
        for mapping in mappings:
            sqs = self.sessions.client("sqs", mapping.role_arn, LAMBDA)
            poller = SqsPoller(mapping, self.runtime, sqs, REGION)
            poller.start()
            self._pollers.append(poller)
        if self.chaos is not None:
            self._arm_chaos(self.chaos)
        self._write_state()
        logger.info("local stack up in %.1fs on %s", time.monotonic() - started, self.endpoint_url)
        return self

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        for poller in self._pollers:  # all at once: each may be in a receive of up to a second
            poller.signal_stop()
        for poller in self._pollers:
            poller.stop()
        self._pollers.clear()
        if self.runtime is not None:
            self.runtime.close()
        if self.sagemaker is not None:
            self.sagemaker.close()
        if self._state_machine_credentials is not None:
            self._state_machine_credentials.uninstall()
        if self.server is not None and self.server.serving:
            with LocalStack._running_lock:
                LocalStack._running -= 1
                last = LocalStack._running == 0
            if last:
                self._moto_api("reset", {})
            self.server.stop()
            self.server = None
            if self._previous_moto_port is None:
                os.environ.pop("MOTO_PORT", None)
            else:
                os.environ["MOTO_PORT"] = self._previous_moto_port
        state = self.state_dir / STATE_FILE
        if state.exists():
            state.unlink()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ access
    @property
    def endpoint_url(self) -> str:
        assert self.server is not None, "start() the stack first"
        return self.server.url

    @property
    def outputs(self) -> dict[str, str]:
        assert self.provisioned is not None, "start() the stack first"
        return dict(self.provisioned.outputs)

    def is_idle(self) -> bool:
        """Nothing in progress: no message waiting or in flight on the stack's work queues, no
        function invocation, workflow execution or asynchronous endpoint invocation running."""
        return not self.busy()

    def busy(self) -> list[str]:
        """What is in progress (empty when the stack is idle), each named for a test's message."""
        assert self.runtime is not None and self.sagemaker is not None
        if self.runtime.running or self.sagemaker.invocations_in_progress:
            return [f"{self.runtime.running} function invocations, "
                    f"{self.sagemaker.invocations_in_progress} endpoint invocations"]  # fmt: skip
        sqs = self.client("sqs")
        counts = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
        for url in self._work_queues:
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(counts))["Attributes"]
            if any(int(attributes.get(name, 0)) for name in counts):
                name = url.rsplit("/", 1)[-1]
                return [f"messages on {name} ({_describe_messages(name)})"]
        sfn = self.client("stepfunctions")
        return [
            execution["executionArn"].split(":", 6)[-1]
            for machine in sfn.list_state_machines()["stateMachines"]
            for execution in sfn.list_executions(stateMachineArn=machine["stateMachineArn"], statusFilter="RUNNING")[
                "executions"
            ]
        ]

    def wait_idle(self, timeout_s: float = 60, settle_s: float = 0.3) -> None:
        """Wait until the stack has been idle twice ``settle_s`` apart: what a test does to show that
        something does *not* happen (every consequence of what it did has run by then)."""
        deadline = time.monotonic() + timeout_s
        while True:
            busy = self.busy()
            if not busy:
                time.sleep(settle_s)  # idle twice, settle_s apart
                busy = self.busy()
                if not busy:
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the local stack was still busy after {timeout_s:.0f}s: {', '.join(busy)}")
            time.sleep(0.1)

    def environment(self) -> dict[str, str]:
        return client_environment(self.endpoint_url)

    def client_credentials(self) -> dict[str, str]:
        """Keyword arguments for boto3.client/resource: region and the local credentials."""
        return {
            "region_name": REGION,
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }

    def client(self, service: str) -> Any:
        return boto3.client(  # type: ignore[call-overload]
            service, endpoint_url=self.endpoint_url, config=LOCAL_CLIENT_CONFIG, **self.client_credentials()
        )

    def resource(self, service: str) -> Any:
        return boto3.resource(  # type: ignore[call-overload]
            service, endpoint_url=self.endpoint_url, config=LOCAL_CLIENT_CONFIG, **self.client_credentials()
        )

    # ------------------------------------------------------------------ internals
    def _configure_moto(self) -> None:
        self._moto_api("config", {"stepfunctions": {"execute_state_machine": True}})
        # AWS managed policies (AWSLambdaBasicExecutionRole...) must exist for roles to attach them.
        # moto's API cannot switch them on; its server runs in this process, so set it here.
        from moto.core.config import default_user_config
        from moto.iam.models import iam_backends

        default_user_config.setdefault("iam", {})["load_aws_managed_policies"] = True
        backend = iam_backends[ACCOUNT_ID]["aws"]
        if not backend.aws_managed_policies:  # made before this stack started (another stack, a test)
            backend.aws_managed_policies = backend._init_aws_policies()
            backend.managed_policies.update({policy.arn: policy for policy in backend.aws_managed_policies})

    def _create_administrator(self) -> None:
        """The IAM user the admin credentials belong to (before IAM is enforced: nobody exists yet)."""
        iam = self.client("iam")
        with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):  # a second stack in this process
            iam.create_user(UserName=ADMIN_USER)
        iam.put_user_policy(UserName=ADMIN_USER, PolicyName="administrator", PolicyDocument=ADMIN_POLICY)

    def _ecr_for(self, role_arn: str | None) -> Any:
        """ECR as SageMaker reads it when it pulls an image: with the execution role."""
        assert self.sessions is not None
        if role_arn is None:
            return self.client("ecr")
        from sdpipe_local.credentials import SAGEMAKER

        return self.sessions.client("ecr", role_arn, SAGEMAKER)

    def _arm_chaos(self, chaos: Chaos) -> None:
        """Faults from now on (the stack itself started cleanly), and time compressed."""
        assert self.runtime is not None and self.sagemaker is not None and self.provisioned is not None
        sqs = self.client("sqs")
        for url in sqs.list_queues().get("QueueUrls", []):
            current = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
                          ["Attributes"]["VisibilityTimeout"])  # fmt: skip
            shorter = max(10, math.ceil(current / chaos.config.visibility_scale))
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(shorter)})
        chaos.worker_log = self.state_dir / "logs" / "chaos.log"
        self.runtime.arm_faults(chaos.worker_environment, chaos.during_invocation)
        self.sagemaker.invocations.chaos = chaos
        logger.warning("chaos armed: %s", chaos.config)

    def _check_poller_permissions(self, mapping: SqsMappingSpec) -> None:
        """CreateEventSourceMapping refuses a role that cannot poll the queue; so does the local stack."""
        assert self.server is not None
        role = mapping.role_arn.rsplit("/", 1)[-1]
        documents = self.server.iam.role_documents(role)
        for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
            if evaluate(documents, action, mapping.queue_arn) is not Decision.ALLOWED:
                raise StackStartError(
                    f"the event source mapping of {mapping.function_name} cannot be created: its execution role "
                    f"{role} is not allowed {action} on {mapping.queue_arn} (Lambda polls the queue with it)"
                )

    def _moto_api(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    def _publish_outputs(self) -> None:
        """A stack record whose Outputs are the template's, for `aws cloudformation describe-stacks`."""
        assert self.provisioned is not None
        shim = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": f"sdpipe local stack from {self.template_path.name}",
            "Resources": {"LocalStackMarker": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
            "Outputs": {
                name: {
                    "Value": value,
                    **({"Description": d} if (d := self.provisioned.output_descriptions.get(name)) else {}),
                }
                for name, value in self.provisioned.outputs.items()
            },
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*WaitConditionHandle.*")
            self.client("cloudformation").create_stack(StackName=self.stack_name, TemplateBody=json.dumps(shim))

    def _write_state(self) -> None:
        state = {
            "endpoint_url": self.endpoint_url,
            "stack_name": self.stack_name,
            "pid": os.getpid(),
            "outputs": self.outputs,
            "environment": self.environment(),
            "logs": str(self.state_dir / "logs"),
            "python": sys.executable,
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


def _work_queue_urls(resources: dict[str, dict[str, Any]], provisioned: ProvisionedStack) -> list[str]:
    """The queues work arrives on: every queue but the dead-letter ones (those hold what is done with)."""
    dead_letter_queues = set()
    for resource in resources.values():
        redrive = (resource.get("Properties") or {}).get("RedrivePolicy")
        target = redrive.get("deadLetterTargetArn") if isinstance(redrive, dict) else None
        if resource["Type"] == "AWS::SQS::Queue" and isinstance(target, dict):
            dead_letter_queues.add(str(target.get("Fn::GetAtt", [""])[0]))
    return [
        provisioned.resources[logical_id].ref
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::SQS::Queue" and logical_id not in dead_letter_queues
    ]


def _describe_messages(queue_name: str, shown: int = 3) -> str:
    """What waits on a queue of the in-process moto, for a test's time-out message: each message's
    receives, when it is next visible and the start of its body (a stuck one names itself)."""
    from moto.sqs.models import sqs_backends

    try:
        messages = list(sqs_backends[ACCOUNT_ID][REGION].get_queue(queue_name)._messages)
    except Exception as exc:  # a diagnostic only: never the reason a wait fails
        return f"not readable: {exc}"
    now_ms = time.time() * 1000
    described = [
        f"received {m.approximate_receive_count}x, visible in {max(0.0, (m.visible_at - now_ms) / 1000):.0f} s: "
        f"{m.body[:160]}"
        for m in messages[:shown]
    ]
    return "; ".join(described) + (f"; and {len(messages) - shown} more" if len(messages) > shown else "")
