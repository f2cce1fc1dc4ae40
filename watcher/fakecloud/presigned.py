"""The presigned PUT, answered as S3 answers one (docs/protocol.md, "The emulator"; [S3]).

Checks in S3's order, each refusal an S3 XML error (s3errors.py):

    1. Transfer-Encoding: chunked             501 NotImplemented
    2. no Content-Length                      411 MissingContentLength
    3. an Authorization header                400 InvalidArgument ("Only one auth mechanism allowed")
    4. Content-Length above max_upload_bytes  400 EntityTooLarge, sent before the body is read
    5. no expiry or signature                 403 AccessDenied; a malformed expiry 400
    6. the URL has expired                    403 AccessDenied "Request has expired"
    7. the signature does not match           403 SignatureDoesNotMatch
    8. an unknown upload id                   404 NoSuchUpload
then the body is hashed as it streams and stored, and the answer is 200.
"""

from __future__ import annotations

from watcher.fakecloud import s3errors
from watcher.fakecloud.messages import Request, Response
from watcher.fakecloud.s3errors import PutView
from watcher.fakecloud.signing import UrlSigner
from watcher.fakecloud.store import Store


def view(req: Request) -> PutView:
    """What an S3 error body may echo of `req`."""
    return PutView(req.path, req.query, req.host, req.authorization)


def put(req: Request, *, store: Store, signer: UrlSigner, max_upload_bytes: int | None) -> Response:
    """Answer one presigned PUT (see the module docstring for the order of the checks)."""
    if req.chunked:
        return s3errors.chunked_refused()
    if req.content_length is None:
        return s3errors.length_required()
    if req.authorization is not None:
        return s3errors.two_auth_mechanisms(req.authorization)
    if max_upload_bytes is not None and req.content_length > max_upload_bytes:
        return s3errors.too_large(req.content_length, max_upload_bytes)
    upload_id = req.params[0]
    refusal = signer.check(upload_id, req.query)
    if refusal is not None:
        if refusal.kind == "anonymous":
            return s3errors.anonymous()
        if refusal.kind == "malformed":
            return s3errors.malformed_expiry()
        if refusal.kind == "expired" and refusal.expires is not None:
            return s3errors.expired(refusal.expires, signer.now())
        return s3errors.signature_mismatch(view(req), signer)
    if not store.has_upload(upload_id):
        return s3errors.no_such_upload()
    receiver = store.receiver(upload_id, req.content_length)
    for piece in req.body.chunks():
        receiver.feed(piece)
    store.commit_upload(receiver)
    return Response(200)
