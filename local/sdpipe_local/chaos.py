"""Fault injection for the local stack (``sdpipe local up --chaos SEED``, ``LocalStack(chaos=...)``).

What AWS does to a serverless application on a bad day, at a chosen rate, from one seed:

- **Lambda workers killed** (SIGKILL) part-way through a share of invocations, right
  before an SNS publish (so after the write it announces: the store-then-publish window), and
  while they start up (before the handler is imported).
- **The endpoint's container killed** mid-invocation (a CUDA OOM, a segfault).
- **DynamoDB, S3 and SNS calls throttled**: the stack's own calls (those signed with a role's
  session credentials, not the administrator's) are answered ThrottlingException / SlowDown /
  Throttling at ``throttle_rate``; the SDKs' retries see what they see in AWS.
- **Time compressed**: every queue's visibility timeout is divided by ``visibility_scale`` so a
  message whose worker was killed comes back in tens of seconds rather than minutes.

The schedule comes from the seed (each worker process draws from ``seed`` and its sequence
number), so a failing run can be replayed; process timing still varies from run to run.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdpipe_local.credentials import STATES

logger = logging.getLogger(__name__)

WORKER_FAULTS_VARIABLE = "SDPIPE_CHAOS"
WORKER_NUMBER_VARIABLE = "SDPIPE_CHAOS_WORKER"
StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class ChaosConfig:
    seed: int
    kill_invocation: float = 0.2  # chance an invocation's worker is killed part-way
    kill_delay_s: tuple[float, float] = (0.0, 0.2)  # how far into it (most take 0.05-0.5 s)
    kill_before_publish: float = 0.03  # chance a worker dies just before an SNS publish
    kill_at_start: float = 0.03  # chance a new worker dies while it starts up
    endpoint_crash: float = 0.1  # chance the container dies during an asynchronous invocation
    throttle_rate: float = 0.03  # share of the stack's DynamoDB/S3/SNS calls throttled
    # Queue visibility timeouts divided by this (at least 10 s), so a killed worker's message
    # comes back in tens of seconds; not so short that a slow invocation's comes back mid-way.
    visibility_scale: int = 12
    # Functions the forced kills before a publish leave alone (random ones still hit them): the
    # sweeper recovers what the killed writers left, and forced deaths of the recovery itself,
    # one after another, would measure the schedule of faults rather than the recovery.
    spared_by_forced_kills: tuple[str, ...] = ("SweepJobsFunction",)


def chaos_parameters(lease_seconds: int = 5) -> dict[str, str]:
    """Template parameters for a chaos stack: a short event lease and sweep period, so events
    whose writer was killed are recovered within seconds (the lease + one sweep)."""
    return {"EventLeaseSeconds": str(lease_seconds), "SweepSchedule": f"rate({lease_seconds} seconds)"}


class Chaos:
    """One run's faults and the tally of what was injected."""

    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        # Where workers note the faults they inflict on themselves (they die right after).
        self.worker_log: Path | None = None
        self.counts: Counter[str] = Counter()
        self.deaths: Counter[str] = Counter()  # workers killed, by function
        self._random = random.Random(config.seed)  # noqa: S311 - a replayable schedule, not a secret
        self._lock = threading.Lock()
        self._workers = 0

    # ------------------------------------------------------------------ Lambda workers
    def worker_environment(self) -> dict[str, str]:
        """Variables for a worker about to start: its faults and its place in the schedule."""
        with self._lock:
            self._workers += 1
            number = self._workers
        faults = {"seed": self.config.seed, "kill_before_publish": self.config.kill_before_publish,
                  "kill_at_start": self.config.kill_at_start, "log": str(self.worker_log or os.devnull),
                  "spared_by_forced_kills": list(self.config.spared_by_forced_kills)}  # fmt: skip
        return {WORKER_FAULTS_VARIABLE: json.dumps(faults), WORKER_NUMBER_VARIABLE: str(number)}

    def during_invocation(self, function: str, pid: int) -> Callable[[], None]:
        """Maybe SIGKILL this invocation's worker a moment into it; returns what calls it off
        (the invocation ended first). Each invocation is at risk once, as in Lambda, however
        long it runs."""
        if self._draw(lambda r: r.random()) >= self.config.kill_invocation:
            return _nothing
        delay = self._draw(lambda r: r.uniform(*self.config.kill_delay_s))

        def kill() -> None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self.record("lambda_worker_killed")
            with self._lock:
                self.deaths[function] += 1
            logger.info("chaos: killed a worker of %s (pid %d)", function, pid)

        timer = threading.Timer(delay, kill)
        timer.daemon = True
        timer.start()
        return timer.cancel

    def force_kills_before_publish(self, count: int) -> None:
        """The next ``count`` SNS publishes (of any worker but those ``spared_by_forced_kills``, and
        one per function: forced deaths piling onto one task's retries would exhaust them, which no
        bad day in AWS does) kill their worker first: the store-then-publish window exercised for
        sure, not just by chance."""
        assert self.worker_log is not None, "arm the stack first"
        tokens = self.worker_log.parent / "chaos-forced-kills"
        tokens.mkdir(exist_ok=True)
        for _ in range(count):
            (tokens / uuid.uuid4().hex).touch()

    # ------------------------------------------------------------------ the endpoint
    def crash_during(self, kill: Callable[[], None]) -> None:
        """Maybe kill the endpoint's container a moment into an invocation."""
        if self._draw(lambda r: r.random()) >= self.config.endpoint_crash:
            return
        delay = self._draw(lambda r: r.uniform(0.05, 0.6))

        def crash() -> None:
            kill()
            self.record("endpoint_container_killed")

        timer = threading.Timer(delay, crash)
        timer.daemon = True
        timer.start()

    # ------------------------------------------------------------------ throttling
    def throttles(self, service: str, session_token: str | None, caller_service: str | None = None) -> bool:
        """Whether to throttle a call. Step Functions' own calls (an ItemReader's GetObject) are
        spared: the service retries those itself, which moto's interpreter does not emulate."""
        if session_token is None or service not in ("dynamodb", "s3", "sns") or caller_service == STATES:
            return False
        if self._draw(lambda r: r.random()) >= self.config.throttle_rate:
            return False
        self.record(f"{service}_throttled")
        return True

    # ------------------------------------------------------------------ bookkeeping
    def record(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def report(self) -> dict[str, Any]:
        with self._lock:
            counts, deaths = Counter(self.counts), Counter(self.deaths)
        if self.worker_log is not None and self.worker_log.exists():
            for line in self.worker_log.read_text().splitlines():
                if line.strip():
                    what, _, function = line.partition(" ")
                    counts[what] += 1
                    deaths[function.strip()] += 1
        return {
            "config": asdict(self.config),
            "injected": dict(sorted(counts.items())),
            "deaths": dict(sorted(deaths.items())),  # function (logical id or name) -> workers killed
        }

    def _draw(self, pick: Callable[[random.Random], Any]) -> Any:
        with self._lock:
            return pick(self._random)


class ThrottlingMiddleware:
    """Answers a share of the stack's own DynamoDB/S3/SNS calls the way those services throttle."""

    def __init__(self, app: Any, chaos: Chaos, caller_service: Callable[[str], str | None]) -> None:
        self._app = app
        self._chaos = chaos
        self._caller_service = caller_service  # access key -> the service principal it was issued to

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        from sdpipe_local.iam import signed_request

        request = signed_request(environ)
        caller = self._caller_service(request.access_key) if request.access_key else None
        if not self._chaos.throttles(request.service, request.session_token, caller):
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        request_id = str(uuid.uuid4())
        if request.service == "s3":
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                f"<Message>Please reduce your request rate.</Message><RequestId>{request_id}</RequestId></Error>"
            ).encode()
            status, headers = "503 Slow Down", [("Content-Type", "application/xml")]
        elif request.service == "dynamodb":
            error = {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "Rate exceeded"}
            body = json.dumps(error).encode()
            status, headers = "400 Bad Request", [("Content-Type", "application/x-amz-json-1.0")]
        else:
            body = (
                "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            ).encode()
            status, headers = "400 Bad Request", [("Content-Type", "text/xml")]
        headers.append(("x-amzn-RequestId", request_id))
        if request.method == "HEAD":
            body = b""
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


def _nothing() -> None:
    return None


def _take_token(folder: Path, function: str) -> bool:
    """Claim one token file (unlinking is atomic: one process gets each), at most one per function."""
    if not folder.is_dir():
        return False
    taken = folder.parent / "chaos-forced-kills-taken"
    taken.mkdir(exist_ok=True)
    try:
        (taken / function).touch(exist_ok=False)  # atomic: the function's one forced death
    except FileExistsError:
        return False
    for token in folder.iterdir():
        try:
            token.unlink()
        except FileNotFoundError:
            continue
        return True
    (taken / function).unlink(missing_ok=True)  # none left: the function may take a later one
    return False


def _die(log: str, what: str, function: str) -> None:
    with open(log, "a") as out:  # one short line, appended: safe from several processes
        out.write(f"{what} {function}\n")
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------- inside a worker process
def install_worker_faults(phase: str) -> None:
    """Called by a Lambda worker at ``start`` (before importing the handler) and ``ready``."""
    faults = os.environ.get(WORKER_FAULTS_VARIABLE)
    if not faults:
        return
    config = json.loads(faults)
    number = os.environ.get(WORKER_NUMBER_VARIABLE, "0")
    rng = random.Random(f"{config['seed']}-{number}-{phase}")  # noqa: S311 - replayable, not secret
    if phase == "ready":  # the handler sees the function's environment, not the injector's
        os.environ.pop(WORKER_FAULTS_VARIABLE, None)
        os.environ.pop(WORKER_NUMBER_VARIABLE, None)
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "?")
    if phase == "start":
        if rng.random() < config["kill_at_start"]:
            _die(config["log"], "lambda_worker_killed_at_start", function)
        return
    try:
        from sdpipe.adapters.events import EventPublisher
    except ImportError:  # a function without the shared layer
        return
    original = EventPublisher.publish_raw
    chance = float(config["kill_before_publish"])

    forced = Path(config["log"]).parent / "chaos-forced-kills"
    spared = any(name in function for name in config.get("spared_by_forced_kills", []))

    def publish_raw(self: EventPublisher, body: str, attributes: dict[str, str]) -> None:
        # After the write the event announces: by chance, or taking one of the forced deaths.
        if rng.random() < chance or (not spared and _take_token(forced, function)):
            _die(config["log"], "lambda_worker_killed_before_publish", function)
        original(self, body, attributes)

    EventPublisher.publish_raw = publish_raw  # type: ignore[method-assign]
