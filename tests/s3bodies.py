"""S3 error bodies as Amazon S3 sends them (the shapes of its "Error responses" documentation and of
real answers quoted in public S3 issues; the ids, dates and keys here are made up), for tests that
answer presigned PUTs without the emulator.

`SECRETS` lists the parts of `signature_mismatch()` that must never reach a log or an error text:
the signed query string and the security token inside `<CanonicalRequest>`, the `<StringToSign>`,
the signature, the access key and the host id.
"""

from __future__ import annotations

import httpx

REQUEST_ID = "4442587FB7D0A2F9"
HOST_ID = "tQ3qbAJY8sDnGYZ0kMjV9Hc1ImYcmhlP4RrDl9zYyBX2Oe1vnuUyTc9/ZDk7XW2hRE7WxhoLEG4="
ACCESS_KEY = "ASIAZEXAMPLEKEY7Q2XR"
SIGNATURE = "9d5a1d4c0f3e7b2a8c6e4f1d3b5a7c9e0f2d4b6a8c1e3f5d7b9a0c2e4f6d8b1a"
SECURITY_TOKEN = "IQoJb3JpZ2luX2VjEKr%2F%2F%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJHMEUCIQCexampleSessionToken"
STRING_TO_SIGN_HASH = "5263692f39c1379ed930dfd5c7ed75b40ba0619c7dc316bb7630152162a5d5ef"
SECRETS = (ACCESS_KEY, SIGNATURE, SECURITY_TOKEN, STRING_TO_SIGN_HASH, HOST_ID, "X-Amz-Credential",
           "AWS4-HMAC-SHA256", "StringToSign", "CanonicalRequest", "UNSIGNED-PAYLOAD")

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


def error_xml(code: str, message: str, extra: str = "") -> str:
    return (f"{DECLARATION}<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
            f"<RequestId>{REQUEST_ID}</RequestId><HostId>{HOST_ID}</HostId></Error>")


def request_timeout() -> str:
    return error_xml("RequestTimeout", "Your socket connection to the server was not read from or written to "
                                       "within the timeout period. Idle connections will be closed.")


def expired_token() -> str:
    return error_xml("ExpiredToken", "The provided token has expired.",
                     f"<Token-0>{SECURITY_TOKEN}</Token-0>")


def slow_down() -> str:
    return error_xml("SlowDown", "Please reduce your request rate.")


def internal_error() -> str:
    return error_xml("InternalError", "We encountered an internal error. Please try again.")


def entity_too_large(size: int) -> str:
    return error_xml("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                     f"<ProposedSize>{size}</ProposedSize><MaxSizeAllowed>5368709120</MaxSizeAllowed>")


def missing_content_length() -> str:
    return error_xml("MissingContentLength", "You must provide the Content-Length HTTP header.")


def not_implemented() -> str:
    return error_xml("NotImplemented", "A header you provided implies functionality that is not implemented",
                     "<Header>Transfer-Encoding</Header>")


def no_such_upload() -> str:
    return error_xml("NoSuchUpload", "The specified upload does not exist.")


def request_expired() -> str:
    return error_xml("AccessDenied", "Request has expired",
                     "<X-Amz-Expires>900</X-Amz-Expires><Expires>2026-01-07T10:15:00Z</Expires>"
                     "<ServerTime>2026-01-07T10:31:12Z</ServerTime>")


def access_denied() -> str:
    return error_xml("AccessDenied", "Access Denied")


def signature_mismatch(path: str = "/uploads/u1") -> str:
    """What S3 answers a presigned PUT whose request was altered on the way (a proxy, clock skew)."""
    query = (f"X-Amz-Algorithm=AWS4-HMAC-SHA256&amp;X-Amz-Credential={ACCESS_KEY}%2F20260107%2Fus-east-1%2Fs3"
             f"%2Faws4_request&amp;X-Amz-Date=20260107T100000Z&amp;X-Amz-Expires=900"
             f"&amp;X-Amz-Security-Token={SECURITY_TOKEN}&amp;X-Amz-SignedHeaders=host")
    string_to_sign = f"AWS4-HMAC-SHA256\n20260107T100000Z\n20260107/us-east-1/s3/aws4_request\n{STRING_TO_SIGN_HASH}"
    canonical = f"PUT\n{path}\n{query}\nhost:bucket.s3.amazonaws.com\n\nhost\nUNSIGNED-PAYLOAD"
    return error_xml(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        f"<AWSAccessKeyId>{ACCESS_KEY}</AWSAccessKeyId><StringToSign>{string_to_sign}</StringToSign>"
        f"<SignatureProvided>{SIGNATURE}</SignatureProvided>"
        f"<StringToSignBytes>41 57 53 34 2d 48 4d 41 43</StringToSignBytes>"
        f"<CanonicalRequest>{canonical}</CanonicalRequest>"
        f"<CanonicalRequestBytes>50 55 54 0a 2f 75 70</CanonicalRequestBytes>")


def answer(status: int, body: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, text=body, headers={"Content-Type": "application/xml", **(headers or {})})
