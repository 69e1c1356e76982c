"""The daemon's request handlers: one small function per request type, in HANDLERS.

Each takes the daemon, the request and the peer, and returns the one answer to send (None
when it answered itself, as `run` does while the command runs).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import distsvc
import distsvc.actions.hosts
import distsvc.actions.placement
import distsvc.actions.relay
import distsvc.actions.run
import distsvc.actions.scan
import distsvc.config
import distsvc.daemon.client_events
import distsvc.daemon.context
import distsvc.daemon.run_setting
import distsvc.errors
import distsvc.log
import distsvc.protocol
import distsvc.ranking
import distsvc.scanplan
import distsvc.state

# What the accepting thread may answer itself (serve.answer_inline): the answer, or None
# when it needs I/O (a worker then serves the request with HANDLERS).
InlineHandler = Callable[[distsvc.daemon.context.Daemon, dict[str, Any]],
                         "dict[str, Any] | None"]

Handler = Callable[
    [distsvc.daemon.context.Daemon, dict[str, Any], distsvc.daemon.context.Peer],
    "dict[str, Any] | None"]


def _config(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any]
            ) -> distsvc.config.Config:
    """The request's configuration, parsed and checked once per distinct configuration
    (run_setting keeps the one cache of them)."""
    return distsvc.daemon.run_setting.wire_config(distsvc.protocol.field(request, "config", dict))


# How often requests look for a host to measure: a host is measured at most every
# scanplan.MIN_GAP (5 s), so looking more often than this finds nothing new, and costs a
# ranking of every host per request under a burst of queries.
PLAN_INTERVAL = 0.5


def _measure_after_request(daemon: distsvc.daemon.context.Daemon,
                           config: distsvc.config.Config) -> None:
    """Measure the stalest of the three best hosts in the background (once per host)."""
    now = time.monotonic()
    with daemon.lock:
        if now - daemon.planned_at < PLAN_INTERVAL:
            return
        daemon.planned_at = now
    state = distsvc.state.store(daemon.state_dir).snapshot()
    host = distsvc.scanplan.after_request(config.hosts, state, time.time(), config.max_age * 2)
    if host is None:
        return
    with daemon.lock:
        if host.name in daemon.measuring:
            return
        daemon.measuring.add(host.name)

    def measure() -> None:
        try:
            distsvc.actions.scan.measure_into_state([host], config, daemon.environ, daemon.pool)
        finally:
            with daemon.lock:
                daemon.measuring.discard(host.name)

    threading.Thread(target=measure, daemon=True, name="measure").start()


def _adopt_agent(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any]) -> None:
    """The client's ssh-agent, for the daemon's new connections if its own is unset or gone
    (see Pool.adopt_agent); the process environment stays as it was."""
    agent = request.get("ssh_auth_sock")
    daemon.pool.adopt_agent(agent if isinstance(agent, str) else None)


def handle_status(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any],
                  peer: distsvc.daemon.context.Peer) -> dict[str, Any]:
    return _status(daemon, distsvc.state.store(daemon.state_dir).snapshot())


def status_from_memory(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any]
                       ) -> dict[str, Any] | None:
    """The `status` answer from memory and /proc only, for the accepting thread: None when
    the state file changed since the daemon read it (a worker reads it)."""
    served = distsvc.state.store(daemon.state_dir) is daemon.hoststate  # else: the file's lock
    state = daemon.hoststate.snapshot_if_current() if served else None
    return None if state is None else _status(daemon, state)


def _status(daemon: distsvc.daemon.context.Daemon, state: distsvc.state.State
            ) -> dict[str, Any]:
    now = time.time()
    hosts = {name: {"state": entry.state,
                    "age": None if entry.measured_at is None else round(now - entry.measured_at, 1)}
             for name, entry in state.hosts.items()}
    with daemon.lock:
        jobs = [dict(job, id=job_id) for job_id, job in daemon.jobs.items()]
    per_host = daemon.pool.counts()
    return {"ok": True, "version": distsvc.__version__, "pid": os.getpid(),
            "uptime": round(time.monotonic() - daemon.started, 1),
            "config": str(daemon.config.source), "hosts_configured": len(daemon.config.hosts),
            "hosts": hosts, "rss_kib": distsvc.daemon.context.rss_kib(),
            "connections": sum(per_host.values()), "connections_per_host": per_host,
            "retiring": daemon.retiring, "jobs": jobs}


def handle_best(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any],
                peer: distsvc.daemon.context.Peer) -> dict[str, Any]:
    config = _config(daemon, request)
    if not config.hosts:
        return {"ok": True, "host": None}
    # The answer is for a script that connects by itself: count it for a while, not by PID.
    choice = distsvc.actions.placement.choose(config, daemon.state_dir, set(), lambda _: None,
                                              daemon.pool, job_pid=0)
    _measure_after_request(daemon, config)
    return {"ok": True, "host": choice.host.name}


def best_from_memory(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any]
                     ) -> dict[str, Any] | None:
    """handle_best's answer when it needs no I/O, for the accepting thread: None when a
    host must be measured first, none is free, the state file changed (it is read by a
    worker), or the request is bad (handle_best then answers it on a connection thread, as
    it always did). Chosen as placement.choose_from_memory would, by the daemon's tally
    (MemoryStore.place_anonymous: no pass over the placements per query)."""
    if distsvc.state.store(daemon.state_dir) is not daemon.hoststate:
        return None  # the file itself: its lock may be held by another process
    try:
        config = _config(daemon, request)
    except (distsvc.errors.DistsvcError, distsvc.protocol.ProtocolError):
        return None
    if not config.hosts:
        return {"ok": True, "host": None}
    choice = daemon.hoststate.place_anonymous(config, time.time())
    if choice is None:
        return None
    _measure_after_request(daemon, config)
    return {"ok": True, "host": choice.host.name}


def handle_hosts(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any],
                 peer: distsvc.daemon.context.Peer) -> dict[str, Any]:
    config = _config(daemon, request)
    _adopt_agent(daemon, request)
    rows = distsvc.actions.hosts.survey(config, daemon.environ, bool(request.get("refresh")),
                                        daemon.pool)
    daemon.book.load()
    for row in rows:
        row["jobs"] = [job.id for job in daemon.book.running_on(str(row.get("host")))]
    clusters = distsvc.actions.hosts.clusters(config, daemon.pool)
    if clusters:
        with daemon.book.changed:
            jobs = list(daemon.book.jobs.values())
        placed = distsvc.actions.hosts.placed(jobs)
        for row in clusters:
            row["jobs"] = placed.get(row["cluster"], [])
    return {"ok": True, "rows": rows, "clusters": clusters}


def handle_scan(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any],
                peer: distsvc.daemon.context.Peer) -> dict[str, Any]:
    """The scan timer's pass, over the daemon's warm connections."""
    config = _config(daemon, request)
    measured = distsvc.actions.scan.timer_pass(config, daemon.environ, daemon.pool)
    return {"ok": True, "measured": measured}


def handle_run(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any],
               peer: distsvc.daemon.context.Peer) -> dict[str, Any] | None:
    """Run a command for a client: its setting from the request (either form, see
    run_setting.py), then chosen, connected and relayed as in-process, with the client's fds."""
    try:
        setting = distsvc.daemon.run_setting.of(request)
    except distsvc.daemon.run_setting.FullClient as why:
        distsvc.log.get(peer_pid=peer.pid).info("left to the full client", reason=str(why))
        return distsvc.protocol.full_client(str(why))
    config, env = setting.config, setting.env
    argv = distsvc.protocol.field(request, "argv", list)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise distsvc.protocol.ProtocolError("argv must hold strings")
    if len(peer.reader.fds) != 3:
        raise distsvc.protocol.ProtocolError("run needs stdin, stdout and stderr passed as fds")
    cluster = _cluster(config, request)
    if not config.hosts and cluster is None:
        raise distsvc.errors.CannotRun(distsvc.protocol.NO_HOSTS)
    pinned = request.get("host")
    if pinned is not None and pinned not in {h.name for h in config.hosts}:
        raise distsvc.protocol.ProtocolError("field 'host' names no configured host")
    daemon.pool.adopt_agent(setting.ssh_auth_sock)
    options = distsvc.actions.run.Options(
        workdir=setting.workdir, tty=request.get("tty"),
        stdin=bool(request.get("stdin", True)), quiet=bool(request.get("quiet")))
    fds = (peer.reader.fds[0], peer.reader.fds[1], peer.reader.fds[2])
    events = distsvc.daemon.client_events.ClientEvents(peer)
    peer.attach(events)  # a stop of the daemon ends the command through its events
    job_id = next(daemon.job_ids)
    log = distsvc.log.get(job=job_id, peer_pid=peer.pid)

    def warn(message: str) -> None:  # what -q does not silence (a refused host key)
        with contextlib.suppress(OSError):
            peer.send({"type": "notice", "message": message})

    def say(message: str) -> None:
        if not options.quiet:
            warn(message)

    def started(host: str) -> None:
        peer.host = host
        with daemon.lock:
            daemon.jobs[job_id] = {"host": host, "argv": argv, "client_pid": peer.pid,
                                   "started": time.time()}
        log.info("job started", host=host, argv=" ".join(argv)[:200])
        with contextlib.suppress(OSError):
            peer.send({"type": "started", "host": host, "job": job_id})

    try:
        if cluster is not None:
            from distsvc.actions import cluster_run  # only for a cluster: not at start-up

            status = cluster_run.on_login_node(
                argv, options, cluster[0], cluster[1], config, env, setting.workdir,
                setting.term, daemon.pool, events, warn, fds=fds, started=started,
                own_terminal=False, reader_pid=peer.pid)
            log.info("job ended", status=status)
            return {"type": "exit", "status": status}
        status = distsvc.actions.run.run_on_best(
            argv, options, config, env, setting.workdir, setting.term, daemon.state_dir,
            daemon.pool, events, say, job_pid=peer.pid, fds=fds, started=started,
            reader_pid=peer.pid, warn=warn, pinned=pinned)
        log.info("job ended", status=status)
        _measure_after_request(daemon, config)
        return {"type": "exit", "status": status}
    finally:
        with daemon.lock:
            daemon.jobs.pop(job_id, None)
        events.close()


def _cluster(config: distsvc.config.Config, request: dict[str, Any]
             ) -> tuple[distsvc.config.Cluster, list[str]] | None:
    """A `run --on CLUSTER`'s cluster (with a login node: one here is the client's) and
    Slurm's options for its limits; None for a run on hosts. Raises ClusterCannot for a
    limit Slurm cannot give, before anything runs."""
    name = request.get("cluster")
    if name is None:
        return None
    from distsvc import slurm
    from distsvc.jobs import limits as job_limits

    cluster = config.cluster(name) if isinstance(name, str) else None
    if cluster is None or cluster.login is None:
        raise distsvc.protocol.ProtocolError("field 'cluster' names no cluster with a login node")
    try:
        limits = job_limits.from_json(distsvc.protocol.field(request, "limits", dict))
    except ValueError as error:
        raise distsvc.protocol.ProtocolError(str(error)) from None
    return cluster, slurm.options(cluster, limits)


def _job_handler(kind: str) -> Handler:
    """The handler of a job request, loading the jobs machinery (job_handlers, the launcher,
    the systemd units adapter: ~30 ms) on the first one: not at every daemon's start, most
    of which only run commands."""
    def handle(daemon: distsvc.daemon.context.Daemon, request: dict[str, Any],
               peer: distsvc.daemon.context.Peer) -> dict[str, Any] | None:
        import distsvc.daemon.job_handlers

        return distsvc.daemon.job_handlers.JOB_HANDLERS[kind](daemon, request, peer)
    return handle


HANDLERS: dict[str, Handler] = {
    "status": handle_status,
    "best": handle_best,
    "hosts": handle_hosts,
    "scan": handle_scan,
    "run": handle_run,
    **{kind: _job_handler(kind) for kind in distsvc.protocol.REQUEST_TYPES
       if kind.startswith("job_")},
}

INLINE_HANDLERS: dict[str, InlineHandler] = {
    "status": status_from_memory,
    "best": best_from_memory,
}
