"""Pydantic models for everything that crosses a boundary: items, events, S3 notifications."""
