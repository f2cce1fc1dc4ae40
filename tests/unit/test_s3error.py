"""The S3 error of a failed PUT: only its code and message are kept, and each answer becomes the error the
tracker acts on (issue 10, item 1)."""

from __future__ import annotations

import pytest
import s3bodies

from watcher.cloud.s3error import MAX_BYTES, MESSAGE_CHARS, S3Error, parse, put_error
from watcher.errors import UploadExpired, UploadFailed, UploadRefused, UploadTooLarge


def test_the_code_and_message_of_a_real_s3_error_are_kept() -> None:
    err = parse(s3bodies.request_timeout().encode())
    assert err.code == "RequestTimeout"
    assert err.message is not None and err.message.startswith("Your socket connection to the server")


@pytest.mark.parametrize("body", [
    b"",
    b"<html><body>502 Bad Gateway</body></html>",
    b'{"error": "bad gateway"}',
    b"Error: <Code>RequestTimeout</Code>",                         # not an S3 error document
    b"<Error><Code>Request Timeout; DROP</Code></Error>",           # not a code
], ids=["empty", "html", "json", "not-a-document", "not-a-code"])
def test_a_body_that_is_not_an_s3_error_yields_no_code(body: bytes) -> None:
    assert parse(body).code is None


def test_signing_material_never_leaves_the_parser() -> None:
    body = s3bodies.signature_mismatch().encode()
    err = parse(body)
    text = f"{err.code} {err.message}"
    assert err.code == "SignatureDoesNotMatch"
    for secret in s3bodies.SECRETS:
        assert secret not in text
    assert s3bodies.REQUEST_ID not in text


def test_the_message_is_cut_and_cleaned_of_urls_and_markup() -> None:
    body = (f"<Error><Code>InternalError</Code><Message>see https://bucket.test/u1?X-Amz-Signature=abc&amp;x=1 "
            f"now\n\t&lt;b&gt; {'x' * 400}</Message></Error>").encode()
    err = parse(body)
    assert err.message is not None and len(err.message) == MESSAGE_CHARS
    assert err.message.startswith("see [REDACTED] now <b> xxx")
    assert "bucket.test" not in err.message and "abc" not in err.message


def test_only_the_first_bytes_are_looked_at() -> None:
    late = b"<Error>" + b" " * MAX_BYTES + b"<Code>SlowDown</Code></Error>"
    assert parse(late) == S3Error(None, None)


@pytest.mark.parametrize(("status", "body", "kind", "code"), [
    (400, s3bodies.request_timeout(), UploadFailed, "RequestTimeout"),
    (400, s3bodies.expired_token(), UploadFailed, "ExpiredToken"),
    (500, s3bodies.internal_error(), UploadFailed, "InternalError"),
    (503, s3bodies.slow_down(), UploadFailed, "SlowDown"),
    (404, s3bodies.no_such_upload(), UploadFailed, "NoSuchUpload"),
    (411, s3bodies.missing_content_length(), UploadFailed, "MissingContentLength"),
    (501, s3bodies.not_implemented(), UploadFailed, "NotImplemented"),
    (401, "", UploadFailed, None),
    (502, "<html>bad gateway</html>", UploadFailed, None),
    (403, s3bodies.request_expired(), UploadExpired, "AccessDenied"),
    (403, "", UploadExpired, None),
    (403, s3bodies.signature_mismatch(), UploadRefused, "SignatureDoesNotMatch"),
    (403, s3bodies.access_denied(), UploadRefused, "AccessDenied"),
])
def test_each_answer_to_a_put_is_an_upload_fault_named_by_its_code(
        status: int, body: str, kind: type[UploadFailed], code: str | None) -> None:
    err = put_error(status, body.encode())
    assert type(err) is kind
    assert isinstance(err, UploadFailed) and err.code == code and err.status == status
    assert str(err).startswith(f"put: HTTP {status}" + (f" {code}" if code else ""))


def test_entity_too_large_is_the_artifacts_problem_not_a_passing_fault() -> None:
    err = put_error(400, s3bodies.entity_too_large(600_000_000).encode())
    assert type(err) is UploadTooLarge
    assert str(err) == "put: HTTP 400 EntityTooLarge: Your proposed upload exceeds the maximum allowed size"


def test_retry_after_is_kept_for_the_next_upload() -> None:
    err = put_error(503, s3bodies.slow_down().encode(), retry_after=3.0)
    assert isinstance(err, UploadFailed) and err.retry_after == 3.0
