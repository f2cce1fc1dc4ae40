"""Presigned upload URLs, shaped like S3's query-signed ones where it matters to a client:

    /_uploads/<id>?X-Amz-Security-Token=<token>&expires=<unix seconds>&signature=<hmac-sha256 hex>

The signature covers the upload id, the expiry and the security token with a secret drawn per
server, so a URL from another emulator instance, or one whose id, expiry or token was edited,
answers 403 like S3 would. The token is a fake temporary credential's (an assumed role's presigned
URLs carry one); it holds `+`, `/` and `=`, percent-encoded in the URL, and is checked decoded, as S3
canonicalizes the query: a client that re-encodes the URL the standard way still matches, one that
mangles it does not. Token and signature are secrets a client must never log (s3errors.py echoes
them in a SignatureDoesNotMatch body, as S3 does).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

TOKEN_PARAM = "X-Amz-Security-Token"  # noqa: S105 - the name of a query parameter, not a secret


@dataclass(frozen=True)
class Refusal:
    """Why a URL is refused: "anonymous" (no expiry or signature: not a presigned request),
    "malformed" (the expiry is not a number), "expired" (at `expires`, Unix seconds) or "mismatch"."""

    kind: str
    expires: float | None = None


class UrlSigner:
    """Signs and checks upload URLs; `clock` returns Unix seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._secret = secrets.token_bytes(32)
        self._clock = clock
        self.access_key_id = "ASIA" + secrets.token_hex(8).upper()
        half = base64.b64encode(secrets.token_bytes(30)).decode()
        self.security_token = f"FwoGZXIvYXdzE{half}+/{half[::-1]}=="

    def now(self) -> float:
        return self._clock()

    def _signature(self, upload_id: str, expires: str, token: str) -> str:
        message = f"{upload_id}\n{expires}\n{token}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def url(self, base_url: str, upload_id: str, lifetime_seconds: float) -> str:
        """The presigned URL for `upload_id`, valid for `lifetime_seconds` (<= 0: already expired)."""
        # Millisecond precision so sub-second lifetimes (used by tests) behave as configured; rounded
        # down so a lifetime of 0 is expired at once.
        expires = f"{math.floor((self._clock() + lifetime_seconds) * 1000) / 1000:.3f}"
        signature = self._signature(upload_id, expires, self.security_token)
        token = quote(self.security_token, safe="")
        return f"{base_url}/_uploads/{upload_id}?{TOKEN_PARAM}={token}&expires={expires}&signature={signature}"

    def check(self, upload_id: str, query: Mapping[str, str]) -> Refusal | None:
        """None when the URL (its decoded query) is valid now, else why it is refused.

        Checked in S3's order: a presigned request at all, the expiry, then the signature.
        """
        expires, signature = query.get("expires"), query.get("signature")
        if expires is None or signature is None:
            return Refusal("anonymous")
        try:
            deadline = float(expires)
        except ValueError:
            return Refusal("malformed")
        if not math.isfinite(deadline):
            return Refusal("malformed")
        if self._clock() > deadline:
            return Refusal("expired", deadline)
        expected = self._signature(upload_id, expires, query.get(TOKEN_PARAM, ""))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return Refusal("mismatch")
        return None
