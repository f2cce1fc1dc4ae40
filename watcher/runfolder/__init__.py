"""The run-folder contract: what a run folder holds and how the daemon reads and marks it. No threads,
no HTTP; every operation inside a folder goes through its open directory descriptor.

    dirhandle.py   an open directory: atomic writes, state files that must be ours, safe removal
    rundir.py      an open run folder: symlinks resolved by us, inspected files opened, bounded walks
    folder.py      the contract: candidates, formats, artifacts, fingerprints (inspect_folder)
    runjson.py     status.json key by key, the other small JSON files, big documents one at a time
    completion.py  marker and settle rules (open files, complete JSON)
    jsonends.py    is a JSON file whole? judged from its first and last 64 KiB
    archive.py     deterministic tar.gz, UTF-8 repair, statistics/assets wrapping (streaming)
    prepare.py     artifacts -> uploads, spool files and their clean-up
    markers.py     the tracked and failed markers and the journal; the read-only fallback
    schema.py      the state files' layout version; files written by a newer version are left alone
    claims.py      the exclusive claim file with a lease
    scan.py        listing watched paths; classifying folders (`nextmv-watcher scan`)
"""
