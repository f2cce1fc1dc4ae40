"""Requests and answers as plain data: `Request` (parsed by server.py), `Response` (status, body,
headers) and the JSON helpers of the API endpoints.

Endpoints take a `Request` and return a `Response`; they never write to the socket, so the HTTP
layer can discard a real answer and inject a fault after processing. The presigned PUT's XML
answers are built by s3errors.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from watcher.fakecloud.body import BodyReader


@dataclass(frozen=True)
class Request:
    """One parsed request. `params` holds the decoded path parameters (application id first); `query`
    the decoded query; `host` the Host header."""

    method: str
    path: str
    endpoint: str
    params: tuple[str, ...]
    query: dict[str, str]
    authorization: str | None
    content_length: int | None
    chunked: bool
    body: BodyReader
    host: str = ""


@dataclass(frozen=True)
class Response:
    """A complete answer: status, body bytes and extra headers (Content-Length is added on sending).

    `s3_code` is the S3 error code of an XML error body (recorded with the request). `unread_body`:
    the answer is sent before the request body is read, then the connection is closed (S3's way with
    an upload it refuses by its declared length).
    """

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    s3_code: str | None = None
    unread_body: bool = False


def json_response(payload: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, (("Content-Type", "application/json"), *headers))


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """An API error: `{"error": message}`."""
    return json_response({"error": message}, status, headers)
