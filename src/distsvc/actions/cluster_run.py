"""`distsvc-run --on CLUSTER CMD`: CMD in the foreground through `srun`, as if it ran here.

Before anything runs, one script on the cluster's side (`slurm.check_script`: is the directory
there, would Slurm take the request: `srun --test-only`, ~15 ms) turns a directory the cluster
does not share, a bad partition or account, or a limit beyond the partition's into one line
(exit 4), and an unreachable cluster into one line (exit 255). Then srun runs CMD on a node
under the guard (`slurm.GUARD`: in the directory or not at all), named `slurm.RUN_PREFIX` +
a token, with `--quit-on-interrupt` (one Ctrl-C ends the job):

- on the login node (`cluster.login`), srun's command line runs under the remote wrapper
  exactly as a command on a host does (`run.execute`: environment, PATH, signals, the watcher
  that ends srun when the session goes, and srun then ends the job): through the daemon when
  one answers (a `run` request naming the cluster: its warm connection), else in-process;
- on this machine (`cluster.login is None`), srun is our child (`adapters/local.run`: its own
  process group, signals forwarded, the terminal), with SIGTERM as its parent-death signal, so
  a distsvc-run killed outright still ends the job.

SIGTERM, SIGHUP and SIGQUIT go to the job's tasks (`scancel --signal`), which srun would
SIGKILL instead; srun itself gets SIGTERM only for what they left (see docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import distsvc.actions.client
import distsvc.actions.cluster
import distsvc.actions.events
import distsvc.actions.run
import distsvc.config
import distsvc.errors
import distsvc.slurm
from distsvc.jobs import limits as job_limits

if TYPE_CHECKING:  # importing it for real would load paramiko
    import distsvc.adapters.ssh
    from distsvc.jobs.remote import Runner

CHECK_TIMEOUT = 30.0  # srun --test-only waits for a controller that does not answer
KILL_TIMEOUT = 5.0  # ending an interrupted check there


def unknown_cluster(config: distsvc.config.Config, name: str) -> distsvc.errors.UsageError:
    names = ", ".join(c.name for c in config.clusters)
    return distsvc.errors.UsageError(
        f"--on {name}: no such cluster in {config.source} "
        + (f"(configured: {names})" if names else "(none is configured: add a [[clusters]] "
           "table)"))


def where(cluster: distsvc.config.Cluster) -> str:
    """The cluster's side, as messages name it."""
    return "this machine" if cluster.login is None else f"its login node {cluster.login.name}"


def check(cluster: distsvc.config.Cluster, run: Runner, workdir: str, opts: list[str],
          events: distsvc.actions.events.EventQueue | None = None) -> str | None:
    """The check before anything runs (see the module): the directory as an absolute path
    there, when Slurm would take it. With `events`, a terminating signal queued meanwhile (a
    Ctrl-C while the controller does not answer) ends it at once: its srun --test-only is
    killed there, and the answer is None (nothing runs)."""
    token = new_token()
    script = distsvc.slurm.check_script(workdir, opts, token)
    answer: list[tuple[int, bytes]] = []
    failed: list[BaseException] = []

    def ask() -> None:
        try:
            answer.append(run(script, CHECK_TIMEOUT))
        except BaseException as error:  # handed to the caller's thread
            failed.append(error)

    if events is None:
        ask()
    else:
        asking = threading.Thread(target=ask, name="cluster-check", daemon=True)
        asking.start()
        while asking.is_alive():
            asking.join(0.05)
            if events.terminating() is not None:
                with contextlib.suppress(Exception):  # best effort: it ends on its own too
                    run(distsvc.slurm.check_kill_script(token), KILL_TIMEOUT)
                return None
    try:
        if failed:
            raise failed[0]
    except distsvc.errors.HostUnreachable as error:
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: login node {error.message}") from None
    except TimeoutError:
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: no answer from {where(cluster)} within "
            f"{CHECK_TIMEOUT:g} s") from None
    except (OSError, EOFError) as error:  # the connection dropped: nothing was started
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: the connection to {where(cluster)} failed during the "
            f"check ({str(error) or type(error).__name__}); nothing ran") from None
    code, out = answer[0]
    return distsvc.slurm.check_answer(cluster, where(cluster), workdir, opts, code,
                                      out.decode("utf-8", "replace"))


def run(argv: Sequence[str], options: distsvc.actions.run.Options,
        cluster: distsvc.config.Cluster, limits: job_limits.Limits,
        config: distsvc.config.Config, environ: Mapping[str, str]) -> int:
    """Run argv on `cluster` (see the module); its status."""
    opts = distsvc.slurm.options(cluster, limits)  # what Slurm cannot give: before anything
    if cluster.login is None:
        return run_here(argv, options, cluster, opts, config, environ)
    env, workdir, term = distsvc.actions.run.command_setting(config, environ)
    workdir = options.workdir or workdir
    if distsvc.actions.client.enabled(environ):
        try:
            # The hosts stay here: a daemon that does not know `cluster` (an older one, in
            # the moment of an upgrade) refuses a run without hosts (protocol.NO_HOSTS)
            # instead of choosing one, and the command runs in-process.
            wire = dataclasses.replace(config, hosts=())
            return distsvc.actions.client.run(
                argv, options, wire, env, workdir, term,
                distsvc.actions.run.wants_terminal(options), environ,
                distsvc.actions.run.warn,
                cluster={"cluster": cluster.name, "limits": job_limits.to_json(limits)})
        except distsvc.actions.client.Unavailable as why:
            distsvc.actions.client.fall_back(environ, why)
            distsvc.actions.client.spawn(environ)  # for the next commands; this one goes on
        except distsvc.errors.DistsvcError as error:
            if not distsvc.actions.client.knows_no_clusters(error):
                raise
            # An older daemon (mid-upgrade): nothing ran; this command goes on without it.
            distsvc.actions.client.fall_back(environ, distsvc.actions.client.Unavailable(
                "the daemon is older than clusters"))
    from distsvc.adapters import ssh  # paramiko: only to connect ourselves

    pool = ssh.Pool()
    try:
        with distsvc.actions.events.SignalCatcher() as signals:
            return on_login_node(argv, options, cluster, opts, config, env, workdir, term,
                                 pool, signals, distsvc.actions.run.warn)
    finally:
        pool.close_all()


def on_login_node(argv: Sequence[str], options: distsvc.actions.run.Options,
                  cluster: distsvc.config.Cluster, opts: list[str],
                  config: distsvc.config.Config, env: Mapping[str, str], workdir: str,
                  term: str, pool: distsvc.adapters.ssh.Pool,
                  events: distsvc.actions.events.EventQueue, warn: Callable[[str], None],
                  fds: tuple[int, int, int] = (0, 1, 2),
                  started: Callable[[str], None] = lambda where: None,
                  own_terminal: bool = True, reader_pid: int | None = None) -> int:
    """Check, then srun under the remote wrapper on the login node (through `pool`: the
    daemon's or ours); `started(LABEL)` once it is handed over. As a `run` pinned to a host
    (run --all): a login node that cannot be reached is the command's failure."""
    assert cluster.login is not None
    checked = check(cluster, distsvc.actions.cluster.runner(cluster, config, pool), workdir,
                    opts, events)
    if (signum := events.terminating()) is not None or checked is None:
        return 128 + (signum or signal.SIGINT)  # asked to stop before anything started
    workdir = checked
    terminal = distsvc.actions.run.wants_terminal(options, fds)
    job = new_token()
    srun = distsvc.slurm.srun_argv(opts, job, workdir, list(argv), terminal,
                                   stdin=options.stdin)

    def kill(token: str, name: str) -> str:
        """SIGTERM, SIGHUP, SIGQUIT to the job's tasks (scancel), SIGINT to srun; then the
        wrapper's tree (srun) as for any command, for what they left."""
        from distsvc import remote

        instead = (distsvc.slurm.signal_script(job, name) if name in distsvc.slurm.JOB_SIGNALS
                   else None)
        return remote.kill_command(token, name, instead)

    label = f"{cluster.name} (login node {cluster.login.name})"
    try:
        sessions = pool.sessions(cluster.login, config.host_key_policy, config.connect_timeout)
        started(label)
        return distsvc.actions.run.execute(sessions, srun, options, env, workdir, term, events,
                                           warn, fds, own_terminal, reader_pid, kill)
    except distsvc.errors.HostUnreachable as error:
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: login node {error.message}") from None
    except (OSError, EOFError) as error:
        raise distsvc.errors.CannotRun(
            f"cluster {cluster.name}: the connection to its login node failed while the "
            f"command ran ({str(error) or type(error).__name__}); its state is unknown, so it "
            "is not run again (srun is ended there within a few seconds, and the job with it)"
        ) from None


def new_token() -> str:
    from distsvc import remote

    return remote.new_token()


SRUN_OWN = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TMPDIR", "SLURM_CONF")
"""What srun run here needs of this machine's environment whatever the config's filter says
(a login node's srun has them from its own session): srun finds itself, its configuration and
the user by them."""


def environment_here(config: distsvc.config.Config, environ: Mapping[str, str]
                     ) -> dict[str, str]:
    """srun's environment here, which srun hands on to the command: the variables that travel
    as for a host (the config's allow/deny, then the saved ones), over this machine's own
    that srun needs (SRUN_OWN)."""
    carried, _, _ = distsvc.actions.run.command_setting(config, environ)
    return {**{k: environ[k] for k in SRUN_OWN if k in environ}, **carried}


def run_here(argv: Sequence[str], options: distsvc.actions.run.Options,
             cluster: distsvc.config.Cluster, opts: list[str], config: distsvc.config.Config,
             environ: Mapping[str, str]) -> int:
    """srun as our child, with the environment a login node's srun would have
    (`environment_here`)."""
    from distsvc.adapters import local

    workdir = options.workdir or distsvc.actions.run.current_directory(environ)
    checked = check(cluster, distsvc.actions.cluster.runner(cluster, config, None), workdir,
                    opts)
    assert checked is not None  # no events: never interrupted
    workdir = checked
    env = environment_here(config, environ)
    terminal = distsvc.actions.run.wants_terminal(options)
    job = new_token()
    srun = distsvc.slurm.srun_argv(opts, job, workdir, list(argv), terminal,
                                   stdin=options.stdin)

    def scancel(name: str) -> None:
        """SIGNAL to the job's tasks, bounded: a controller that does not answer leaves the
        rest to srun's SIGTERM (the escalation)."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([*distsvc.slurm.signal_argv(job, name), f"--user={os.getuid()}"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False, env=env,
                           timeout=distsvc.slurm.SCANCEL_TIMEOUT)

    def forward(pgid: int, signum: int) -> int | None:
        """SIGTERM, SIGHUP, SIGQUIT to the job's tasks (scancel), others to srun's group."""
        name = signal.Signals(signum).name.removeprefix("SIG")
        if name not in distsvc.slurm.JOB_SIGNALS:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signum)
            return signum
        scancel(name)
        return None

    def closed_output(pgid: int) -> int | None:
        """The reader of our output went (`| head`): the job ends, as a command here would
        of SIGPIPE (srun itself survives it): its tasks get SIGTERM, srun too."""
        scancel("TERM")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        return signal.SIGTERM

    # srun's own directory is ours: --chdir and the guard say where CMD runs.
    return local.run(srun, None, env, parent_death_signal=signal.SIGTERM, forward=forward,
                     closed_output=closed_output)
