"""The Nextmv API: the only code that knows httpx (its errors become `watcher.errors` here).

    client.py    the runs API over per-thread httpx clients; bounded retries; request outcomes
    pools.py     one httpx client per calling thread (no thread waits on another's pool lock)
    transport.py HTTP/1.1 on h11 and a thread's own keep-alive sockets (httpcore's pool costs more)
    tlsbio.py    TLS through memory buffers over a blocking socket (the kernel's timeouts, no polls)
    h1write.py   a request's bytes as h11 writes them, without its per-header validation cost
    statuses.py  what an answer's status means: the error it becomes (transient, auth, refused, S3's)
    answers.py   every answer read with a bound (API: 8 MiB success, 4 KiB error; a PUT's head)
    s3error.py   a failed upload's S3 error: its code and message only (never signing material)
    putbody.py   a PUT's body, exactly its declared length; a source that changed is `FolderChanged`
    backoff.py   bounded exponential delays with jitter
    lookup.py    find a run by the token in its description
    tracker.py   the upload-and-track sequence for one folder, resumable from its journal
    roundtrip.py `check --roundtrip`: a probe run that tests what exactly-once assumes
"""
