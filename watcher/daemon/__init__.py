"""The daemon: the only code that starts threads, timers or sockets.

    service.py         lifecycle (start, run, drain, stop, reload) and the wiring of everything below
    index.py           the folder index: what is known about each folder, and the work queue
    queue.py           the queue's scheduling: each folder once, in order of its due time
    worker.py          one folder's turn: open, look, attempt, apply the verdict
    attempt.py         one attempt under the claim (shared with `track`)
    verdict.py         the failure table as a pure function
    gate.py            pauses and resuming: key rejected, application missing, circuit breaker; 429 holds
    concurrency.py     how many folders may be in flight: the adaptive (AIMD) limit within `workers`
    pacing.py          how fast API calls may go: a token bucket whose rate adapts to 429s (AIMD)
    outcomes.py        outcome counts and recent failures
    scanning.py        the start-up scan and the reconcile
    chores.py          the main loop's periodic chores
    detection.py       the watchdog adapter: events -> the index; folder watches; heartbeats
    detectors.py       all the observers (inotify, polling) and their liveness
    observers.py       watchdog's observers made, unscheduled and stopped safely; overflow signal
    openfiles.py       which files of watched incomplete folders are open (settle mode)
    roots.py           the watches on the watched paths themselves, while the paths come and go
    lease.py           the thread that renews held claims
    aftercare.py       keep, move or delete tracked folders; retention
    aftercheck.py      a second look at the uploaded files 120 s after tracking
    health.py          status, /healthz, systemd STATUS= and the watchdog decision
    metrics.py         Prometheus metrics and the /healthz listener
    collectors.py      the series read at scrape time: status gauges, folders_total, healthy
    listeners.py       the control socket and the metrics listener, moved by a reload
    control_socket.py  the local control socket (status, rescan, retried, identify)
    commands.py        what the control socket's commands do (status, rescan, retried, metrics, health)
    views.py           several processes' status, metrics and health merged into one daemon's
    sharedfile.py      a small state-directory file the processes share: mapped, and locked across them
    sharedhold.py      a 429's hold seen by every process (an 8-byte mapped file in the state directory)
    sharedpace.py      one token bucket for every process; the pace's rule runs in the supervisor
    identity.py        which daemon answers, and whether it runs the configuration a command was given
    daemonlock.py      one daemon per state directory: the flock on <state_dir>/daemon.lock
    notify.py          sd_notify over $NOTIFY_SOCKET
    signals.py         signals relayed to a thread: no handler takes a lock (SIGTERM, SIGINT, SIGHUP)
    shard.py           which folders a process takes when several share the work (`processes`)
    allocator.py       glibc's allocator set so that big JSON documents do not leave every arena full
    cpupolicy.py       SCHED_BATCH (no preemption on wake-up) unless the operator chose a policy
    supervisor.py      `processes` > 1: the processes started, watched, told of signals; one to systemd
    inprocess.py       a Service served until it stops; process 0's share, on a thread of the supervisor
    forked.py          a child forked at the first start, driven as a Popen (no second import of the daemon)
    reload.py          what a reload changes: key paths, restart-only keys
    sync.py            `nextmv-watcher sync`: the daemon's work once, without watching
"""
