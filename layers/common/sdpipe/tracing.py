"""X-Ray subsegments for the functions' AWS calls, when asked for (``SDPIPE_TRACE_AWS_CALLS=true``).

Lambda's active tracing (``Tracing: Active``) records every invocation either way. Powertools'
Tracer adds a subsegment per AWS call through the X-Ray SDK, whose import creates a sampling
client (botocore loads its models): about 200 ms of every cold start, measured in
bench/bench_cold_import.py. So it is opt-in (template parameter ``TraceAwsCalls``); otherwise the
handlers' Tracer decorators run with a provider that records nothing and imports nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment


def aws_call_tracing() -> bool:
    return os.environ.get("SDPIPE_TRACE_AWS_CALLS", "").strip().lower() == "true"


def make_tracer() -> Tracer:
    """Powertools' Tracer with the X-Ray SDK when AWS call tracing is on, else one that does nothing."""
    if aws_call_tracing():
        return Tracer()
    return Tracer(disabled=True, auto_patch=False, provider=_NoTracing())


class _NoSegment(BaseSegment):
    def close(self, end_time: int | None = None) -> None:
        return None

    def add_subsegment(self, subsegment: Any) -> None:
        return None

    def remove_subsegment(self, subsegment: Any) -> None:
        return None

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        return None


class _NoTracing(BaseProvider):
    @contextlib.contextmanager
    def in_subsegment(self, name: str | None = None, **kwargs: Any) -> Generator[BaseSegment, None, None]:
        yield _NoSegment()

    @contextlib.asynccontextmanager
    async def in_subsegment_async(self, name: str | None = None, **kwargs: Any) -> AsyncGenerator[BaseSegment, None]:
        yield _NoSegment()

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None

    def patch(self, modules: Sequence[str]) -> None:
        return None

    def patch_all(self) -> None:
        return None
