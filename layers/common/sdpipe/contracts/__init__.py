"""Pydantic models for everything that crosses a boundary: items, events, S3 notifications.

Every model (and every settings class) is declared with ``defer_build=True``: pydantic builds a
model's validator when it is first used, so a Lambda's cold start pays only for the models that
function uses (bench/bench_cold_import.py).
"""
