"""The S3 error of a failed presigned PUT: its code and message, and nothing else.

S3 (and the storage behind Nextmv's upload URLs) answers a failed PUT with an XML body:

    <?xml version="1.0" encoding="UTF-8"?>
    <Error><Code>RequestTimeout</Code><Message>Your socket connection ...</Message>
    <RequestId>...</RequestId><HostId>...</HostId></Error>

A 403 `SignatureDoesNotMatch` also carries `<StringToSign>` and `<CanonicalRequest>` (which holds
the signed query string and the security token), an expired URL `<Expires>`, `<ServerTime>`: none of
that may reach a log. `parse` reads only the first `MAX_BYTES` of the body (the caller reads no
more) and keeps only `<Code>` and `<Message>`, found with patterns, not an XML parser (no entities, no
DTD: a hostile body costs nothing). The message is cut to `MESSAGE_CHARS` characters and anything in
it that looks like a URL or signing material is replaced. A body that is not an S3 error document
yields no code. `put_error` turns a failed PUT's answer into the error the tracker acts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from watcher.errors import ApiError, UploadExpired, UploadFailed, UploadRefused, UploadTooLarge

MAX_BYTES = 4096          # what the client reads of a failed PUT's body, at most
MESSAGE_CHARS = 200

_DOCUMENT = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]{0,200}\?>\s*)?<Error>")
_CODE = re.compile(rb"<Code>\s*([A-Za-z0-9.]{1,64})\s*</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,2000})</Message>")
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&apos;": "'"}
# A URL, a query string or a signing parameter in a message: never repeated.
_SECRETISH = re.compile(r"\S*(?:://|\?|X-Amz-|x-amz-|Signature|Credential|Token)\S*")


@dataclass(frozen=True)
class S3Error:
    code: str | None
    message: str | None


def parse(head: bytes) -> S3Error:
    """The code and message of an S3 error body (its first bytes); S3Error(None, None) for anything else."""
    head = head[:MAX_BYTES]
    if not _DOCUMENT.match(head):
        return S3Error(None, None)
    code = _CODE.search(head)
    message = _MESSAGE.search(head)
    return S3Error(code.group(1).decode("ascii") if code else None,
                   _clean(message.group(1)) if message else None)


def _clean(raw: bytes) -> str | None:
    text = raw.decode("utf-8", errors="replace")
    text = re.sub(r"&(?:lt|gt|amp|quot|apos);", lambda m: _ENTITIES[m.group(0)], text)
    text = "".join(c if c.isprintable() else " " for c in text)
    text = _SECRETISH.sub("[REDACTED]", " ".join(text.split()))
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS - 3].rstrip() + "..."
    return text or None


def put_error(status: int, head: bytes, retry_after: float | None = None) -> ApiError:
    """The error of a PUT answered `status` with a body starting with `head`, named by the status and S3's
    code and message (`put: HTTP 400 RequestTimeout: Your socket connection ...`): UploadTooLarge for 400
    EntityTooLarge; UploadExpired for 403 AccessDenied "Request has expired" or a 403 without an S3
    body; UploadRefused for another 403; UploadFailed for anything else."""
    err = parse(head)
    message = f"put: HTTP {status}" + (f" {err.code}" if err.code else "") + (f": {err.message}" if err.message else "")
    if status == 400 and err.code == "EntityTooLarge":
        return UploadTooLarge(message, status=status)
    if status == 403:
        if err.code is None or (err.code == "AccessDenied" and "Request has expired" in (err.message or "")):
            return UploadExpired(message, status=status, code=err.code)
        return UploadRefused(message, status=status, code=err.code)
    return UploadFailed(message, status=status, code=err.code, retry_after=retry_after)
