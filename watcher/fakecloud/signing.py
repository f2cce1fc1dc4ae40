"""Presigned upload URLs: `/_uploads/<id>?expires=<unix seconds>&signature=<hmac-sha256 hex>`.

The signature covers the upload id and the expiry with a secret drawn per server, so a URL from
another emulator instance, or one whose id or expiry was edited, answers 403 like S3 would.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable


class UrlSigner:
    """Signs and checks upload URLs; `clock` returns Unix seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._secret = secrets.token_bytes(32)
        self._clock = clock

    def _signature(self, upload_id: str, expires: str) -> str:
        message = f"{upload_id}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, base_url: str, upload_id: str, lifetime_seconds: float) -> str:
        """The presigned URL for `upload_id`, valid for `lifetime_seconds` (<= 0: already expired)."""
        # Millisecond precision so sub-second lifetimes (used by tests) behave as configured; rounded
        # down so a lifetime of 0 is expired at once.
        expires = f"{math.floor((self._clock() + lifetime_seconds) * 1000) / 1000:.3f}"
        signature = self._signature(upload_id, expires)
        return f"{base_url}/_uploads/{upload_id}?expires={expires}&signature={signature}"

    def check(self, upload_id: str, expires: str | None, signature: str | None) -> str | None:
        """None when the URL is valid now, else the reason it is refused (for a 403 body)."""
        if expires is None or signature is None:
            return "the upload URL is missing its expires or signature parameter"
        if not hmac.compare_digest(self._signature(upload_id, expires).encode(), signature.encode()):
            return "the signature does not match the upload URL"
        try:
            deadline = float(expires)
        except ValueError:
            return "the upload URL has a malformed expiry"
        if not math.isfinite(deadline) or self._clock() > deadline:
            return "the upload URL has expired"
        return None
