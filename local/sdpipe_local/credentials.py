"""Temporary credentials of the stack's roles, as AWS services obtain them.

In AWS, Lambda, SageMaker and Step Functions assume the role they were given (Lambda's execution
role, SageMaker's ExecutionRoleArn/RoleArn, a state machine's role) and everything they do runs
with those credentials. Locally the stack assumes the same roles through the local STS, after
checking, as the service would, that the role's trust policy lets that service assume it, and
hands the credentials to the worker process, the container or the client that acts.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import boto3
from botocore.config import Config

from sdpipe_local.iam_policy import glob_match

LAMBDA = "lambda.amazonaws.com"
SAGEMAKER = "sagemaker.amazonaws.com"
STATES = "states.amazonaws.com"

# The local stack's own clients (the emulated services acting as a role, the stack's admin client):
# more connections than threads that share one (urllib3 warns "Connection pool is full" and
# reconnects otherwise, boto3's default is 10), and AWS's standard retries.
LOCAL_POOL_CONNECTIONS = 64
LOCAL_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=LOCAL_POOL_CONNECTIONS
)


class RoleNotAssumable(Exception):
    """The role does not exist, or its trust policy does not let the service assume it."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str

    def environment(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
        }


def _trusts(document: Any, service: str) -> bool:
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    for statement in statements if isinstance(statements, list) else [statements]:
        actions = statement.get("Action", [])
        actions = actions if isinstance(actions, list) else [actions]
        principals = (statement.get("Principal") or {}).get("Service", [])
        principals = principals if isinstance(principals, list) else [principals]
        if (
            statement.get("Effect") == "Allow"
            and any(glob_match(a, "sts:AssumeRole", case_sensitive=False) for a in actions)
            and service in principals
        ):
            return True
    return False


class RoleSessions:
    """Credentials (and clients) of roles, cached per role and service."""

    def __init__(self, admin: Callable[[str], Any], endpoint_url: str, region: str) -> None:
        self._admin = admin  # service name -> client with the stack's administrator credentials
        self.endpoint_url = endpoint_url
        self._region = region
        self._credentials: dict[tuple[str, str], Credentials] = {}
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._service_by_key: dict[str, str] = {}
        self._lock = threading.Lock()

    def credentials(self, role_arn: str, service: str, session_name: str = "sdpipe-local") -> Credentials:
        key = (role_arn, service)
        with self._lock:
            found = self._credentials.get(key)
            if found is None:
                found = self._credentials[key] = self._assume(role_arn, service, session_name)
                self._service_by_key[found.access_key_id] = service
        return found

    def service_of(self, access_key_id: str) -> str | None:
        """Which service principal the credentials with this access key were issued to.

        Lock-free on purpose: it is asked by the server while ``credentials`` may hold the lock
        waiting for that same server's STS answer."""
        return self._service_by_key.get(access_key_id)

    def _assume(self, role_arn: str, service: str, session_name: str) -> Credentials:
        iam = self._admin("iam")
        try:
            role = iam.get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]
        except iam.exceptions.NoSuchEntityException:
            raise RoleNotAssumable(f"the role {role_arn} does not exist") from None
        document = role["AssumeRolePolicyDocument"]
        if isinstance(document, str):
            document = json.loads(document)
        if not _trusts(document, service):
            raise RoleNotAssumable(f"the trust policy of {role_arn} does not let {service} assume it")
        answer = self._admin("sts").assume_role(RoleArn=role_arn, RoleSessionName=session_name[:64])
        issued = answer["Credentials"]
        return Credentials(issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"])

    def client(self, service_name: str, role_arn: str, principal: str, config: Config | None = None) -> Any:
        """A client acting as ``principal`` with the role (cached unless ``config`` is given)."""
        key = (service_name, role_arn, principal)
        if config is None and key in self._clients:
            return self._clients[key]
        credentials = self.credentials(role_arn, principal)
        client = boto3.client(  # type: ignore[call-overload]
            service_name,
            endpoint_url=self.endpoint_url,
            region_name=self._region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            config=config or LOCAL_CLIENT_CONFIG,
        )
        if config is None:
            with self._lock:
                client = self._clients.setdefault(key, client)
        return client


def sagemaker_role_problem(sessions: RoleSessions, role_arn: str) -> str | None:
    """What SageMaker answers CreateModel / CreateTrainingJob with when it cannot assume the role."""
    try:
        sessions.credentials(role_arn, SAGEMAKER)
    except RoleNotAssumable as exc:
        return (
            f"Could not assume role {role_arn}: {exc}. Ensure the role exists and allows principal "
            f"'{SAGEMAKER}' to assume it."
        )
    return None


# Modules of moto's Step Functions interpreter that import `boto_client_for` by name.
_INTERPRETER_CLIENT_USERS = (
    "moto.stepfunctions.parser.asl.utils.boto_client",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.lambda_eval_utils",
    "moto.stepfunctions.parser.asl.component.state.exec.state_map.item_reader.eval.resource_eval_s3",
    "moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval.resource_eval_s3",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_unsupported",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sqs",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sns",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_dynamodb",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_events",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn",
)


class StateMachineCredentials:
    """moto's Step Functions interpreter signs its task calls with a fixed dummy key; in AWS a
    task runs as the state machine's role. This makes the interpreter's clients use the role's
    credentials. moto's interpreter is process-wide: with two stacks in one process the newest
    one's sessions serve both (their roles live in the same moto IAM), and when it stops the one
    before it takes over again."""

    _installed: ClassVar[list[StateMachineCredentials]] = []
    _original: Any = None

    def __init__(self, sessions: RoleSessions) -> None:
        self._sessions = sessions

    def install(self) -> None:
        modules = [importlib.import_module(name) for name in _INTERPRETER_CLIENT_USERS]
        if StateMachineCredentials._original is None:
            StateMachineCredentials._original = getattr(modules[0], "boto_client_for")  # noqa: B009
        for module in modules:
            setattr(module, "boto_client_for", _interpreter_client)  # noqa: B010
        StateMachineCredentials._installed.append(self)

    def uninstall(self) -> None:
        if self in StateMachineCredentials._installed:
            StateMachineCredentials._installed.remove(self)

    def client(self, region: str, service: str, state_credentials: Any) -> Any:
        role_arn = getattr(state_credentials, "role_arn", None)
        if not role_arn:
            raise RoleNotAssumable("a state machine task ran without a role")
        from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import TimeoutSeconds

        # What moto's own factory configures, with the role's credentials instead of its dummy key.
        config = Config(
            parameter_validation=False,
            retries={"max_attempts": 0, "total_max_attempts": 1},
            connect_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
            read_timeout=TimeoutSeconds.DEFAULT_TIMEOUT_SECONDS,
            max_pool_connections=LOCAL_POOL_CONNECTIONS,
        )
        return self._sessions.client(service, str(role_arn), STATES, config)


def _interpreter_client(region: str, service: str, state_credentials: Any = None) -> Any:
    installed = StateMachineCredentials._installed
    if not installed:  # no local stack in this process: moto's own behaviour
        return StateMachineCredentials._original(region, service, state_credentials)
    return installed[-1].client(region, service, state_credentials)
