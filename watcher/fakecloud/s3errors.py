"""S3's error answers for the presigned PUT: XML bodies with a code, shaped as S3 sends them.

Every body is `<?xml ...?>\\n<Error><Code/><Message/>[details]<RequestId/><HostId/></Error>` with
`Content-Type: application/xml` and the `x-amz-request-id`/`x-amz-id-2` headers [S3: Error
responses]. The details copy what S3 adds per code, secrets included, so that tests can prove a
client never logs them: `SignatureDoesNotMatch` echoes the string to sign, the signature provided
and the canonical request (which holds the signed query and its security token), `ExpiredToken` the
token, `InvalidArgument` (a second auth mechanism) the `Authorization` header.

Statuses S3 does not answer itself (502, 504, 429, ...) come from a gateway in front of it: a short
HTML page without a code (`gateway_response`), as load balancers and proxies send.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import quote
from xml.sax.saxutils import escape

from watcher.fakecloud.messages import Response
from watcher.fakecloud.signing import TOKEN_PARAM, UrlSigner

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'

# The messages S3 sends with each code (S3's error-code list and real answers quoted in public issues).
MESSAGES = {
    "AccessDenied": "Access Denied",
    "AuthorizationQueryParametersError": "expires must be a number of seconds since the epoch",
    "BadDigest": "The Content-MD5 you specified did not match what we received.",
    "EntityTooLarge": "Your proposed upload exceeds the maximum allowed size",
    "ExpiredToken": "The provided token has expired.",
    "IncompleteBody": "You did not provide the number of bytes specified by the Content-Length HTTP header",
    "InternalError": "We encountered an internal error. Please try again.",
    "InvalidArgument": "Invalid Argument",
    "InvalidRequest": "Invalid Request",
    "InvalidToken": "The provided token is malformed or otherwise invalid.",
    "MethodNotAllowed": "The specified method is not allowed against this resource.",
    "MissingContentLength": "You must provide the Content-Length HTTP header.",
    "NoSuchBucket": "The specified bucket does not exist",
    "NoSuchKey": "The specified key does not exist.",
    "NoSuchUpload": "The specified upload does not exist. The upload ID may be invalid, or the upload may "
                    "have been aborted or completed.",
    "NotImplemented": "A header you provided implies functionality that is not implemented",
    "OperationAborted": "A conflicting conditional operation is currently in progress against this "
                        "resource. Try again.",
    "PreconditionFailed": "At least one of the pre-conditions you specified did not hold",
    "RequestTimeTooSkewed": "The difference between the request time and the current time is too large.",
    "RequestTimeout": "Your socket connection to the server was not read from or written to within the "
                      "timeout period. Idle connections will be closed.",
    "ServiceUnavailable": "Please reduce your request rate.",
    "SignatureDoesNotMatch": "The request signature we calculated does not match the signature you "
                             "provided. Check your key and signing method.",
    "SlowDown": "Please reduce your request rate.",
}

# The code an injected PUT error carries when none is named: the most neutral documented code for
# the status. Other statuses get `gateway_response`.
DEFAULT_CODES = {
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NoSuchBucket",
    405: "MethodNotAllowed",
    409: "OperationAborted",
    411: "MissingContentLength",
    412: "PreconditionFailed",
    500: "InternalError",
    501: "NotImplemented",
    503: "SlowDown",
}

_TWO_AUTHS = ("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature "
              "query string parameter or the Authorization header should be specified")


@dataclass(frozen=True)
class PutView:
    """What an S3 error body may echo of the request: path, decoded query, Host and Authorization."""

    path: str
    query: Mapping[str, str]
    host: str
    authorization: str | None


def s3_error(
    status: int, code: str, *, message: str | None = None, details: Sequence[tuple[str, str]] = (),
    unread_body: bool = False,
) -> Response:
    """An S3 XML error: `code`, its message (S3's for a known code, else `message` or the code), then
    `details` as elements, then a fresh RequestId and HostId."""
    request_id = secrets.token_hex(8).upper()
    host_id = base64.b64encode(secrets.token_bytes(57)).decode()
    text = message if message is not None else MESSAGES.get(code, code)
    elements = [("Code", code), ("Message", text), *details, ("RequestId", request_id), ("HostId", host_id)]
    body = XML_DECLARATION + "<Error>" + "".join(f"<{n}>{escape(v)}</{n}>" for n, v in elements) + "</Error>"
    headers = (("Content-Type", "application/xml"), ("x-amz-request-id", request_id), ("x-amz-id-2", host_id))
    return Response(status, body.encode(), headers, s3_code=code, unread_body=unread_body)


def gateway_response(status: int) -> Response:
    """A gateway's own error page (502, 504, ...): short HTML, no S3 code."""
    try:
        title = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        title = str(status)
    body = f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n" \
           "</body>\r\n</html>\r\n"
    return Response(status, body.encode(), (("Content-Type", "text/html"),))


def injected(status: int, code: str | None, request: PutView, signer: UrlSigner) -> Response:
    """An injected PUT error: S3's XML for `code` (by default `DEFAULT_CODES[status]`), with the
    details S3 gives that code; a gateway page for a status without a default and no code."""
    code = code if code is not None else DEFAULT_CODES.get(status)
    if code is None:
        return gateway_response(status)
    if code == "SignatureDoesNotMatch":
        return signature_mismatch(request, signer, status)
    if code == "InvalidArgument" and request.authorization is not None:
        return two_auth_mechanisms(request.authorization, status)
    details: tuple[tuple[str, str], ...] = ()
    if code in ("ExpiredToken", "InvalidToken"):
        details = (("Token-0", request.query.get(TOKEN_PARAM, "")),)
    elif code == "NotImplemented":
        details = (("Header", "Transfer-Encoding"),)
    return s3_error(status, code, details=details)


# --- the natural answers of the presigned PUT, in the order S3 checks ------------------------------


def chunked_refused() -> Response:
    return s3_error(501, "NotImplemented", details=(("Header", "Transfer-Encoding"),))


def length_required() -> Response:
    return s3_error(411, "MissingContentLength")


def two_auth_mechanisms(authorization: str, status: int = 400) -> Response:
    details = (("ArgumentName", "Authorization"), ("ArgumentValue", authorization))
    return s3_error(status, "InvalidArgument", message=_TWO_AUTHS, details=details)


def too_large(proposed: int, limit: int) -> Response:
    details = (("ProposedSize", str(proposed)), ("MaxSizeAllowed", str(limit)))
    return s3_error(400, "EntityTooLarge", details=details, unread_body=True)


def anonymous() -> Response:
    return s3_error(403, "AccessDenied")


def malformed_expiry() -> Response:
    return s3_error(400, "AuthorizationQueryParametersError")


def expired(expires: float, now: float) -> Response:
    details = (("Expires", _iso(expires)), ("ServerTime", _iso(now)))
    return s3_error(403, "AccessDenied", message="Request has expired", details=details)


def no_such_upload() -> Response:
    return s3_error(404, "NoSuchUpload")


def signature_mismatch(request: PutView, signer: UrlSigner, status: int = 403) -> Response:
    """SignatureDoesNotMatch as S3 answers a query-signed request: what it computed from the request as
    received (a SigV4-shaped string to sign and canonical request, the query without its signature),
    and the signature the request carried."""
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(request.query.items())
        if k != "signature"
    )
    canonical = f"PUT\n{request.path}\n{canonical_query}\nhost:{request.host}\n\nhost\nUNSIGNED-PAYLOAD"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signer.now()))
    to_sign = (f"AWS4-HMAC-SHA256\n{stamp}\n{stamp[:8]}/us-east-1/s3/aws4_request\n"
               f"{hashlib.sha256(canonical.encode()).hexdigest()}")
    details = (
        ("AWSAccessKeyId", signer.access_key_id),
        ("StringToSign", to_sign),
        ("SignatureProvided", request.query.get("signature", "")),
        ("StringToSignBytes", _hex_bytes(to_sign)),
        ("CanonicalRequest", canonical),
        ("CanonicalRequestBytes", _hex_bytes(canonical)),
    )
    return s3_error(status, "SignatureDoesNotMatch", details=details)


def _hex_bytes(text: str) -> str:
    return " ".join(f"{b:02x}" for b in text.encode())


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
