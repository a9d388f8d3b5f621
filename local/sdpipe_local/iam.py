"""IAM on the local stack: every request to the local endpoint is authorised as AWS would.

moto can check policies itself, but only by action: for most services it matches a statement's
``Resource`` against ``*``, so a scoped grant refuses everything and nothing is checked per
resource. This middleware, in front of everything the endpoint serves (moto, the Lambda Invoke API,
the SageMaker stand-ins), evaluates instead:

- **who**: the access key the request is signed with: the stack's administrator (an IAM user,
  the CLI and the AWS CLI) or a role's temporary credentials (each Lambda worker, SQS poller,
  state machine and SageMaker container runs as its own role);
- **what**: the IAM action and the ARNs it applies to, taken from the request; an action that
  supports no resource-level permissions (per the Service Authorization Reference, ``iam_data``)
  is evaluated against ``*``. Some requests need more than one action, as in AWS: passing a role
  to SageMaker (``iam:PassRole``), a DynamoDB transaction (each item's own action), tags on
  create (``sagemaker:AddTags``), Application Auto Scaling's check that the caller also holds the
  SageMaker and CloudWatch permissions on the target;
- the caller's identity policies (inline and managed), ``iam_policy.evaluate``.

Not checked (the README says so): resource-based policies (bucket, queue, topic and function
policies), permission boundaries, session policies, SCPs, request signatures (a request is
attributed to the access key it names) and credential expiry.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.etree import ElementTree

from sdpipe_local import iam_data
from sdpipe_local.iam_policy import ContextValue, Decision, UnsupportedCondition, evaluate

logger = logging.getLogger(__name__)
StartResponse = Callable[[str, list[tuple[str, str]]], Any]

# The local administrator: what `sdpipe local up` prints (an IAM user whose policy allows all).
ADMIN_USER = "sdpipe-local-admin"
ADMIN_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
# Signing names that differ from the IAM service prefix.
_SIGNING_TO_PREFIX = {"monitoring": "cloudwatch"}
_UNSIGNED_PATHS = ("/moto-api/",)
# The largest JSON or query request an AWS API takes (DynamoDB's BatchWriteItem); S3 bodies are
# never read here, Lambda payloads are not needed.
_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Check:
    """One action the caller must be allowed, on every one of ``resources``."""

    action: str
    resources: tuple[str, ...]
    context: dict[str, ContextValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Caller:
    arn: str
    documents: tuple[str, ...]


class Denied(Exception):
    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


# ---------------------------------------------------------------------- callers
class Principals:
    """Who an access key belongs to, read from the local IAM and STS (moto's, in this process)."""

    def __init__(self, account: str, admin_keys: dict[str, str]) -> None:
        self._account = account
        self._admin_keys = dict(admin_keys)  # access key id -> IAM user name

    def caller(self, access_key: str, session_token: str | None) -> Caller:
        from moto.iam.models import iam_backends
        from moto.sts.models import sts_backends

        iam = iam_backends[self._account]["aws"]
        if access_key in self._admin_keys:
            user = iam.get_user(self._admin_keys[access_key])
            return Caller(user.arn, self._documents(user.policies.values(), user.managed_policies.values()))
        for assumed in list(sts_backends[self._account]["aws"].assumed_roles):
            if assumed.access_key_id != access_key:
                continue
            if session_token != assumed.session_token:
                raise Denied("InvalidClientTokenId", "The security token included in the request is invalid.")
            role_name = assumed.role_arn.split("/")[-1]
            arn = f"arn:aws:sts::{self._account}:assumed-role/{role_name}/{assumed.session_name}"
            return Caller(arn, self.role_documents(role_name))
        for user in iam.users.values():
            if any(key.access_key_id == access_key for key in user.access_keys):
                return Caller(user.arn, self._documents(user.policies.values(), user.managed_policies.values()))
        raise Denied("InvalidClientTokenId", "The security token included in the request is invalid.")

    def role_documents(self, role_name: str) -> tuple[str, ...]:
        from moto.iam.models import iam_backends

        role = iam_backends[self._account]["aws"].get_role(role_name)
        return self._documents(role.policies.values(), role.managed_policies.values())

    @staticmethod
    def _documents(inline: Iterable[Any], managed: Iterable[Any]) -> tuple[str, ...]:
        documents = [d if isinstance(d, str) else json.dumps(d) for d in inline]
        for policy in managed:
            version = next((v for v in policy.versions if v.is_default), None)
            if version is not None:
                document = version.document
                documents.append(document if isinstance(document, str) else json.dumps(document))
        return tuple(documents)


# ---------------------------------------------------------------------- requests
@dataclass
class SignedRequest:
    sigv2: bool  # signed with Signature Version 2 (`AWS key:signature`, or AWSAccessKeyId= in the query)
    access_key: str | None
    session_token: str | None
    service: str  # IAM service prefix
    region: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


def signed_request(environ: dict[str, Any]) -> SignedRequest:
    """The caller and service of a request, from its SigV4 Authorization header or presigned query."""
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    if "CONTENT_TYPE" in environ:
        headers["content-type"] = environ["CONTENT_TYPE"]
    authorization = headers.get("authorization", "")
    credential = ""
    if "Credential=" in authorization:
        credential = authorization.split("Credential=", 1)[1].split(",", 1)[0].strip()
    elif "X-Amz-Credential" in query:
        credential = query["X-Amz-Credential"][0]
    parts = unquote(credential).split("/")
    token = headers.get("x-amz-security-token") or (query.get("X-Amz-Security-Token") or [None])[0]
    sigv2 = authorization.startswith("AWS ") or "AWSAccessKeyId" in query
    service = parts[3] if len(parts) >= 5 else ("s3" if sigv2 else "")
    return SignedRequest(
        sigv2=sigv2,
        access_key=parts[0] if credential else None,
        session_token=token,
        service=_SIGNING_TO_PREFIX.get(service, service),
        region=parts[2] if len(parts) >= 5 else "us-east-1",
        method=environ.get("REQUEST_METHOD", "GET"),
        path=environ.get("PATH_INFO", "/"),
        query=query,
        headers=headers,
        body=b"",
    )


class Arns:
    def __init__(self, region: str, account: str) -> None:
        self.region, self.account = region, account

    def of(self, service: str, resource: str, *, regional: bool = True, account: bool = True, sep: str = ":") -> str:
        return f"arn:aws:{service}:{self.region if regional else ''}:{self.account if account else ''}{sep}{resource}"


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


class RequestChecks:
    """The checks a request needs: its action(s) and their resources."""

    def __init__(
        self,
        account: str,
        secret_arn: Callable[[str, str], str | None] = lambda _region, _name: None,
        endpoint_config: Callable[[str], str | None] = lambda _name: None,
    ) -> None:
        self._account = account
        self._secret_arn = secret_arn
        self._endpoint_config = endpoint_config

    def checks(self, request: SignedRequest) -> list[Check]:
        arns = Arns(request.region, self._account)
        service = request.service
        if service == "s3":
            return self._s3(request)
        if service == "lambda":
            return self._lambda(request, arns)
        if service == "sagemaker" and request.path.startswith("/endpoints/"):
            name = unquote(request.path.split("/")[2])
            operation = "InvokeEndpointAsync" if "async-invocations" in request.path else "InvokeEndpoint"
            return [Check(f"sagemaker:{operation}", (arns.of("sagemaker", f"endpoint/{name.lower()}"),))]
        operation, params = self._operation(request)
        handler = getattr(self, f"_{service.replace('-', '_')}", None)
        if handler is not None:
            checks: list[Check] = handler(operation, params, arns)
            return checks
        return [Check(f"{service}:{operation}", ("*",))]

    @staticmethod
    def _operation(request: SignedRequest) -> tuple[str, dict[str, Any]]:
        target = request.headers.get("x-amz-target")
        if target:
            try:
                params = json.loads(request.body or b"{}")
            except ValueError:
                params = {}
            return target.rsplit(".", 1)[-1], params if isinstance(params, dict) else {}
        form = parse_qs(request.body.decode(errors="replace")) if request.body else {}
        merged = {k: v[0] for k, v in {**request.query, **form}.items() if v}
        return str(merged.get("Action", "")), merged

    @staticmethod
    def _default(service: str, operation: str, resources: tuple[str, ...] | None) -> list[Check]:
        info = iam_data.action(f"{service}:{operation}")
        if info is None and operation.endswith("Batch"):
            # Batch APIs (SendMessageBatch, PublishBatch...) are authorised as their single action.
            info = iam_data.action(f"{service}:{operation.removesuffix('Batch')}")
            operation = info.name if info is not None else operation
        if info is None or not info.resource_types or not resources:
            if info is not None and info.needs_resource and not resources:
                logger.debug("%s:%s: resource not modelled locally, evaluated against *", service, operation)
            return [Check(f"{service}:{operation}", ("*",))]
        return [Check(info.qualified, resources)]

    # -------------------------------------------------------------- per service
    def _dynamodb(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        def table(name: str) -> str:
            return name if name.startswith("arn:") else arns.of("dynamodb", f"table/{name}")

        if operation in ("TransactWriteItems", "TransactGetItems"):
            actions = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                       "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}  # fmt: skip
            checks = []
            for item in p.get("TransactItems", []):
                for kind, action in actions.items():
                    if kind in item:
                        checks.append(Check(f"dynamodb:{action}", (table(item[kind]["TableName"]),)))
            return checks
        if operation in ("BatchWriteItem", "BatchGetItem"):
            return [Check(f"dynamodb:{operation}", tuple(table(t) for t in p.get("RequestItems", {})))]
        if "TableName" not in p:
            return self._default("dynamodb", operation, None)
        resource = table(p["TableName"])
        if p.get("IndexName"):
            resource += f"/index/{p['IndexName']}"
        return self._default("dynamodb", operation, (resource,))

    def _sqs(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        name = p.get("QueueName") or (str(p["QueueUrl"]).rstrip("/").rsplit("/", 1)[-1] if p.get("QueueUrl") else None)
        return self._default("sqs", operation, (arns.of("sqs", name),) if name else None)

    def _sns(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        arn = p.get("TopicArn") or p.get("TargetArn") or (arns.of("sns", p["Name"]) if p.get("Name") else None)
        return self._default("sns", operation, (arn,) if arn else None)

    def _states(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        arn = p.get("executionArn") or p.get("stateMachineArn")
        if operation == "CreateStateMachine" and p.get("name"):
            arn = arns.of("states", f"stateMachine:{p['name']}")
        checks = self._default("states", operation, (arn,) if arn else None)
        if operation == "CreateStateMachine" and p.get("roleArn"):
            checks.append(_pass_role(p["roleArn"], "states.amazonaws.com"))
        return checks

    def _sagemaker(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        kinds = (("EndpointConfig", "EndpointConfigName", "endpoint-config"), ("Endpoint", "EndpointName", "endpoint"),
                 ("TrainingJob", "TrainingJobName", "training-job"), ("Model", "ModelName", "model"))  # fmt: skip
        resource = p.get("ResourceArn")
        for suffix, key, kind in kinds:
            if operation.endswith(suffix) and p.get(key):
                resource = arns.of("sagemaker", f"{kind}/{str(p[key]).lower()}")
                break
        checks = self._default("sagemaker", operation, (resource,) if resource else None)
        role = p.get("ExecutionRoleArn") or p.get("RoleArn")
        if operation.startswith("Create") and role:
            checks.append(_pass_role(role, "sagemaker.amazonaws.com"))
        if operation.startswith("Create") and p.get("Tags") and resource:
            checks.append(Check("sagemaker:AddTags", (resource,)))
        return checks

    def _application_autoscaling(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        namespace, resource_id = str(p.get("ServiceNamespace", "")), str(p.get("ResourceId", ""))
        if not resource_id:
            return self._default("application-autoscaling", operation, None)
        # A target's ARN carries an id Application Auto Scaling makes up; any stable one will do.
        target_id = hashlib.sha1(f"{namespace}|{resource_id}|{p.get('ScalableDimension')}".encode()).hexdigest()[:28]  # noqa: S324 - an identifier
        target = arns.of("application-autoscaling", f"scalable-target/{target_id}")
        checks = self._default("application-autoscaling", operation, (target,))
        if namespace != "sagemaker" or not resource_id.startswith("endpoint/"):
            return checks
        # Application Auto Scaling checks that the caller may also use the target (its User Guide,
        # "Permissions required for API actions on target services and CloudWatch").
        endpoint = resource_id.split("/")[1]
        if operation in ("RegisterScalableTarget", "PutScalingPolicy"):
            config = self._endpoint_config(endpoint) or endpoint
            checks += [
                Check("sagemaker:DescribeEndpoint", (arns.of("sagemaker", f"endpoint/{endpoint.lower()}"),)),
                Check("sagemaker:DescribeEndpointConfig", (arns.of("sagemaker", f"endpoint-config/{config.lower()}"),)),
                Check(
                    "sagemaker:UpdateEndpointWeightsAndCapacities",
                    (arns.of("sagemaker", f"endpoint/{endpoint.lower()}"),),
                ),
            ]
        alarms = tuple(
            arns.of(
                "cloudwatch", f"alarm:TargetTracking-{resource_id}-{kind}-{uuid.uuid5(uuid.NAMESPACE_URL, resource_id)}"
            )
            for kind in ("AlarmHigh", "AlarmLow")
        )
        if operation == "PutScalingPolicy" and p.get("PolicyType") == "TargetTrackingScaling":
            checks += [Check(f"cloudwatch:{a}", alarms) for a in ("DescribeAlarms", "PutMetricAlarm", "DeleteAlarms")]
        if operation == "DeleteScalingPolicy":
            checks += [Check(f"cloudwatch:{a}", alarms) for a in ("DescribeAlarms", "DeleteAlarms")]
        return checks

    def _cloudwatch(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        names = [p["AlarmName"]] if p.get("AlarmName") else list(p.get("AlarmNames") or [])
        if operation == "PutMetricData":
            return [Check("cloudwatch:PutMetricData", ("*",), {"cloudwatch:namespace": str(p.get("Namespace", ""))})]
        if not names and operation.endswith("Alarms"):
            names = ["*"]
        return self._default("cloudwatch", operation, tuple(arns.of("cloudwatch", f"alarm:{n}") for n in names) or None)

    def _logs(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        group, stream = p.get("logGroupName"), p.get("logStreamName")
        if not group:
            return self._default("logs", operation, None)
        info = iam_data.action(f"logs:{operation}")
        kinds = {t.name for t in info.resource_types} if info else set()
        if "log-stream" in kinds:
            resource = arns.of("logs", f"log-group:{group}:log-stream:{stream or '*'}")
        else:  # log-group actions are authorised on the group's ARN as DescribeLogGroups gives it
            resource = arns.of("logs", f"log-group:{group}:*")
        return self._default("logs", operation, (resource,))

    def _events(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        if operation == "PutEvents":
            buses = {str(e.get("EventBusName") or "default") for e in p.get("Entries", [])} or {"default"}
            return [Check("events:PutEvents", tuple(arns.of("events", f"event-bus/{b}") for b in sorted(buses)))]
        if p.get("Name") or p.get("Rule"):
            return self._default("events", operation, (arns.of("events", f"rule/{p.get('Name') or p.get('Rule')}"),))
        return self._default("events", operation, None)

    def _ecr(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        name = p.get("repositoryName")
        return self._default("ecr", operation, (arns.of("ecr", f"repository/{name}"),) if name else None)

    def _secretsmanager(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        secret = p.get("SecretId") or p.get("Name")
        if not secret:
            return self._default("secretsmanager", operation, None)
        arn = secret if str(secret).startswith("arn:") else self._secret_arn(arns.region, str(secret))
        # A secret's ARN ends in six random characters; one that does not exist still has some.
        return self._default(
            "secretsmanager", operation, (arn or arns.of("secretsmanager", f"secret:{secret}-AbCdEf"),)
        )

    def _sts(self, operation: str, p: dict[str, Any], arns: Arns) -> list[Check]:
        if operation == "GetCallerIdentity":
            return []  # always allowed, as in AWS
        return self._default("sts", operation, (p["RoleArn"],) if p.get("RoleArn") else None)

    def _lambda(self, request: SignedRequest, arns: Arns) -> list[Check]:
        parts = [unquote(p) for p in request.path.split("/") if p]
        if len(parts) >= 3 and parts[1] == "functions":
            name = parts[2].split(":function:")[-1].split(":")[0]
            operation = "InvokeFunction" if parts[-1] == "invocations" else "GetFunction"
            return [Check(f"lambda:{operation}", (arns.of("lambda", f"function:{name}"),))]
        return [Check("lambda:ListFunctions", ("*",))]

    def _s3(self, request: SignedRequest) -> list[Check]:
        parts = request.path.lstrip("/").split("/", 1)
        bucket = unquote(parts[0]) if parts[0] else ""
        key = unquote(parts[1]) if len(parts) > 1 and parts[1] else ""
        query, method = request.query, request.method
        if not bucket:
            return [Check("s3:ListAllMyBuckets", ("*",))]
        if not key and method == "POST" and "delete" in query:
            # DeleteObjects is authorised as s3:DeleteObject on each key it names.
            document = ElementTree.fromstring(request.body or b"<Delete/>")  # noqa: S314 - the stack's own clients
            keys = [k.text or "" for k in document.iter() if k.tag.endswith("Key")]
            return [Check("s3:DeleteObject", tuple(f"arn:aws:s3:::{bucket}/{k}" for k in keys) or ("*",))]
        if not key:
            action = _s3_bucket_action(method, query)
            context: dict[str, ContextValue] = {}
            if action in ("s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"):
                context["s3:prefix"] = _first(query, "prefix") or ""
            return [Check(action, (f"arn:aws:s3:::{bucket}",), context)]
        obj = f"arn:aws:s3:::{bucket}/{key}"
        copy_source = request.headers.get("x-amz-copy-source")
        checks = [Check(_s3_object_action(method, query), (obj,))]
        if copy_source and method == "PUT":
            source = unquote(copy_source).lstrip("/").split("?", 1)[0]
            checks.append(Check("s3:GetObject", (f"arn:aws:s3:::{source}",)))
        return checks


def _pass_role(role_arn: str, service: str) -> Check:
    return Check("iam:PassRole", (role_arn,), {"iam:PassedToService": service})


_S3_BUCKET_GET = {
    "uploads": "s3:ListBucketMultipartUploads", "location": "s3:GetBucketLocation",
    "lifecycle": "s3:GetLifecycleConfiguration", "versioning": "s3:GetBucketVersioning",
    "policy": "s3:GetBucketPolicy", "acl": "s3:GetBucketAcl", "tagging": "s3:GetBucketTagging",
    "notification": "s3:GetBucketNotification", "versions": "s3:ListBucketVersions",
    "encryption": "s3:GetEncryptionConfiguration", "publicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "ownershipControls": "s3:GetBucketOwnershipControls", "cors": "s3:GetBucketCORS",
}  # fmt: skip
_S3_BUCKET_PUT = {
    "lifecycle": "s3:PutLifecycleConfiguration", "versioning": "s3:PutBucketVersioning",
    "policy": "s3:PutBucketPolicy", "acl": "s3:PutBucketAcl", "tagging": "s3:PutBucketTagging",
    "notification": "s3:PutBucketNotification", "encryption": "s3:PutEncryptionConfiguration",
    "publicAccessBlock": "s3:PutBucketPublicAccessBlock", "ownershipControls": "s3:PutBucketOwnershipControls",
    "cors": "s3:PutBucketCORS",
}  # fmt: skip


def _s3_bucket_action(method: str, query: dict[str, list[str]]) -> str:
    if method in ("GET", "HEAD"):
        return next((a for q, a in _S3_BUCKET_GET.items() if q in query), "s3:ListBucket")
    if method == "PUT":
        return next((a for q, a in _S3_BUCKET_PUT.items() if q in query), "s3:CreateBucket")
    if method == "DELETE":
        return "s3:DeleteBucketPolicy" if "policy" in query else "s3:DeleteBucket"
    return "s3:ListBucket"


def _s3_object_action(method: str, query: dict[str, list[str]]) -> str:
    if method in ("GET", "HEAD"):
        if "uploadId" in query:
            return "s3:ListMultipartUploadParts"
        if "tagging" in query:
            return "s3:GetObjectTagging"
        return "s3:GetObjectVersion" if "versionId" in query else "s3:GetObject"
    if method == "PUT":
        return "s3:PutObjectTagging" if "tagging" in query else "s3:PutObject"
    if method == "DELETE":
        if "uploadId" in query:
            return "s3:AbortMultipartUpload"
        return "s3:DeleteObjectVersion" if "versionId" in query else "s3:DeleteObject"
    if method == "POST" and "restore" in query:
        return "s3:RestoreObject"
    return "s3:PutObject"  # CreateMultipartUpload, CompleteMultipartUpload


# ---------------------------------------------------------------------- the middleware
class IamEnforcer:
    """WSGI middleware: authorise, then pass the request on (or answer AccessDenied)."""

    def __init__(self, app: Any, principals: Principals, checks: RequestChecks) -> None:
        self._app = app
        self._principals = principals
        self._checks = checks
        self._enabled = False
        self._lock = threading.Lock()
        self.denials: list[str] = []  # what was refused, newest last
        self.denial_log: Path | None = None  # one line per refusal, for people reading logs

    def enable(self) -> None:
        self._enabled = True

    def role_documents(self, role_name: str) -> tuple[str, ...]:
        """The identity policies of a role (inline and attached), as evaluated for its sessions."""
        return self._principals.role_documents(role_name)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self._enabled or environ.get("PATH_INFO", "").startswith(_UNSIGNED_PATHS):
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        request = signed_request(environ)
        if request.service != "s3" or (request.method == "POST" and "delete" in request.query):
            request.body = _buffer_body(environ)  # S3 object bodies are never read here
        try:
            self._authorise(request)
        except Denied as denied:
            with self._lock:
                self.denials.append(denied.message)
                del self.denials[:-200]
                if self.denial_log is not None:
                    with self.denial_log.open("a") as out:
                        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {denied.code}: {denied.message}\n")
            logger.info("denied: %s", denied.message)
            return _deny(start_response, request, denied)
        return self._app(environ, start_response)  # type: ignore[no-any-return]

    def _authorise(self, request: SignedRequest) -> None:
        if request.service == "s3" and request.sigv2:
            # S3 no longer accepts Signature Version 2 (buckets created since June 2020).
            raise Denied(
                "InvalidRequest",
                "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.",
                400,
            )
        if request.access_key is None:
            raise Denied("MissingAuthenticationToken", "Request is missing Authentication Token")
        if _presigned_url_expired(request.query):  # as S3 refuses it (the URLs of an upload's parts)
            raise Denied("AccessDenied", "Request has expired")
        caller = self._principals.caller(request.access_key, request.session_token)
        try:
            checks = self._checks.checks(request)
        except Exception as exc:  # never fail open: what cannot be read is refused, visibly
            logger.exception("cannot tell what %s %s does", request.method, request.path)
            raise Denied("AccessDenied", f"the local stack cannot tell what this request does: {exc!r}") from None
        for check in checks:
            for resource in check.resources:
                context = {"aws:PrincipalArn": caller.arn, "aws:RequestedRegion": request.region, **check.context}
                try:
                    decision = evaluate(caller.documents, check.action, resource, context)
                except UnsupportedCondition as exc:
                    raise Denied("AccessDenied", f"{exc} ({check.action} for {caller.arn})") from None
                if decision is not Decision.ALLOWED:
                    raise Denied("AccessDenied", _denial_message(caller.arn, check.action, resource, decision))


def _presigned_url_expired(query: dict[str, list[str]]) -> bool:
    signed_at, expires = _first(query, "X-Amz-Date"), _first(query, "X-Amz-Expires")
    if not signed_at or not expires:
        return False
    try:
        start = calendar.timegm(time.strptime(signed_at, "%Y%m%dT%H%M%SZ"))
        return time.time() > start + int(expires)
    except ValueError:
        return True  # unreadable: S3 refuses it too


def _denial_message(caller: str, action: str, resource: str, decision: Decision) -> str:
    why = (
        "with an explicit deny in an identity-based policy"
        if decision is Decision.EXPLICIT_DENY
        else f"because no identity-based policy allows the {action} action"
    )
    return f"User: {caller} is not authorized to perform: {action} on resource: {resource} {why}"


def _buffer_body(environ: dict[str, Any]) -> bytes:
    """Read the (small) body of a JSON or query request and put it back for the app."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if 0 < length <= _MAX_BODY else b""
    if length and length <= _MAX_BODY:
        environ["wsgi.input"] = io.BytesIO(body)
    return body


def _deny(start_response: StartResponse, request: SignedRequest, denied: Denied) -> Iterable[bytes]:
    """AccessDenied in the protocol the service speaks, so every SDK reads the error code."""
    request_id = str(uuid.uuid4())
    service = request.service
    if service == "s3":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{denied.code}</Code>'
            f"<Message>{_xml(denied.message)}</Message><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        content_type = "application/xml"
    elif request.headers.get("x-amz-target") or service in ("lambda", "sagemaker"):
        code = {"AccessDenied": "AccessDeniedException", "InvalidClientTokenId": "UnrecognizedClientException"}.get(
            denied.code, denied.code
        )
        payload: dict[str, Any] = {"__type": code, "message": denied.message, "Message": denied.message}
        body = json.dumps(payload).encode()
        content_type = "application/x-amz-json-1.0"
        headers = [("x-amzn-ErrorType", code), ("x-amzn-RequestId", request_id)]
        if service == "sqs":  # SQS's JSON protocol reports the query-era code as well
            headers.append(("x-amzn-query-error", f"{denied.code};Sender"))
        status = "403 Forbidden" if service in ("lambda",) or denied.code != "AccessDenied" else "400 Bad Request"
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers])
        return [body]
    else:  # query protocol (SNS, IAM, STS, CloudFormation)
        code = "AuthorizationError" if service == "sns" and denied.code == "AccessDenied" else denied.code
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{_xml(denied.message)}</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        content_type = "text/xml"
    headers = [("Content-Type", content_type), ("x-amzn-RequestId", request_id), ("x-amz-request-id", request_id)]
    status = "400 Bad Request" if denied.status == 400 else "403 Forbidden"
    if request.method == "HEAD":
        start_response(status, [*headers, ("Content-Length", "0")])
        return [b""]
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def secret_arn_lookup(account: str) -> Callable[[str, str], str | None]:
    """A secret's ARN from its name, from the local Secrets Manager (moto's, in this process)."""

    def lookup(region: str, name: str) -> str | None:
        from moto.secretsmanager.models import secretsmanager_backends

        backend = secretsmanager_backends[account][region]
        secret = backend.secrets.get(name)
        return str(secret.arn) if secret is not None else None

    return lookup
