"""Secrets Manager: the auth header a model site needs (API tokens), never logged."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from sdpipe.adapters.clients import AwsClients, clients
from sdpipe.errors import ValidationFailed


class AuthSecrets:
    def __init__(self, aws: AwsClients = clients) -> None:
        self._aws = aws
        self._cache: dict[str, tuple[str, str]] = {}

    def auth_header(self, secret_id: str) -> tuple[str, str]:
        """``(name, value)`` from a secret holding a token (sent as a Bearer token) or
        ``{"header": "Authorization", "value": "..."}``."""
        cached = self._cache.get(secret_id)
        if cached is not None:
            return cached
        sm: Any = self._aws.get("secretsmanager")
        try:
            secret = str(sm.get_secret_value(SecretId=secret_id).get("SecretString") or "")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise ValidationFailed(f"params.auth_secret: cannot read secret {secret_id!r} ({code})") from None
        header = ("Authorization", f"Bearer {secret.strip()}")
        if secret.lstrip().startswith("{"):
            try:
                parsed = json.loads(secret)
                header = (str(parsed["header"]), str(parsed["value"]))
            except (ValueError, KeyError, TypeError):
                raise ValidationFailed(
                    f'params.auth_secret: secret {secret_id!r} is JSON without "header" and "value"'
                ) from None
        if not header[1].strip() or any(c in header[0] + header[1] for c in "\r\n"):
            raise ValidationFailed(f"params.auth_secret: secret {secret_id!r} is empty or spans lines")
        self._cache[secret_id] = header
        return header
