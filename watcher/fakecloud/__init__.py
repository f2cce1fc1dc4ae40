"""A local emulator of the Nextmv Cloud runs API, for end-to-end tests, the demo and benchmarks.

It speaks the tracked-run protocol of docs/protocol.md over real HTTP(S) on loopback (that note's
section "The emulator" says what it imitates and what not yet):
upload URLs, presigned PUTs answered as S3 answers them (XML errors with codes), run creation with
the API's validation, listing with paging and lag, and metadata. `Behaviour` sets the service's
rules where the real one is undocumented or limited (list order, name and description limits,
known instances and batch experiments, the upload size limit, a rate limit). Faults (latency, 5xx,
429, S3's RequestTimeout/SlowDown/SignatureDoesNotMatch, connection resets before or after
processing, expiring URLs, slow answers) are injected at random with a seed or deterministically
with `fail_next`; the
requests of one endpoint can be held until released (`hold`), so that a test acts at a known point
of a client's work.

Modules, from the outside in:

    cloud.py       FakeCloud (lifecycle, public API) and serve()
    server.py      HTTP/1.1 server and handler: framing, fault order, resets, request records
    control.py     /_fake/* endpoints for driving an emulator in another process
    api.py         routing, the rate limit, authentication and the emulated API endpoints
    presigned.py   the presigned PUT: S3's checks in S3's order
    s3errors.py    S3's XML error answers (and a gateway's page for 502/504)
    signing.py     presigned upload URLs
    store.py       uploads, runs and listing state
    validation.py  run-body validation rules, name/description limits
    behaviour.py   Behaviour: the service's rules (list order, limits, known ids, rate limit)
    ratelimit.py   the token bucket over API calls
    faults.py      Faults and the per-request fault decision
    holds.py       Holds: requests of one endpoint waiting until a test releases them
    body.py        reading request bodies (Content-Length or chunked)
    records.py     RequestRecord and counters
    messages.py    Request and Response as plain data
"""

from watcher.fakecloud.behaviour import Behaviour
from watcher.fakecloud.cloud import FakeCloud, State, serve
from watcher.fakecloud.faults import ENDPOINTS, Faults
from watcher.fakecloud.holds import Hold
from watcher.fakecloud.records import RequestRecord
from watcher.fakecloud.store import RecordedRun, RecordedUpload

__all__ = [
    "ENDPOINTS",
    "Behaviour",
    "FakeCloud",
    "Faults",
    "Hold",
    "RecordedRun",
    "RecordedUpload",
    "RequestRecord",
    "State",
    "serve",
]
