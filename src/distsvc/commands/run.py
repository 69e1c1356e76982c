"""`distsvc-run [options] [--] CMD ARGS...`: run a command on the least-loaded host."""

from __future__ import annotations

import os
import sys

import distsvc.actions.client
import distsvc.commands.common
import distsvc.errors

TYPE_CHECKING = False  # the fast path imports only light modules (actions/client.py)
if TYPE_CHECKING:
    import argparse
    import types

    import distsvc.actions.run
    import distsvc.config


def parser() -> argparse.ArgumentParser:
    import argparse

    import distsvc.commands.parsing

    p = distsvc.commands.parsing.Parser(
        prog="distsvc-run",
        description="Run CMD on the least-loaded of your SSH hosts, as if it ran here: same "
        "directory, environment, stdin/stdout/stderr, exit status, Ctrl-C and terminal. With "
        "no hosts configured, CMD runs on this machine.",
        epilog="Exit status: CMD's own (128+N if signal N ended it); 2 for bad usage or "
        "configuration; 4 with --on when the cluster refuses what was asked (its partition, "
        "account or QOS, a limit beyond the partition's or one Slurm has no counterpart for, "
        "a directory it does not have); 255 if CMD could not be run at all.")
    p.add_argument("--on", metavar="CLUSTER",
                   help="run CMD through srun on this configured Slurm cluster (limits become "
                   "Slurm's: --memory to --mem, --cpu to --cpus-per-task, --timeout to --time);"
                   " with --detach, submit it there as a job (sbatch), as distsvc job start --on")
    p.add_argument("-w", "--workdir", metavar="DIR",
                   help="directory to run in on the host or the cluster's node (default: the "
                   "current directory; a cluster must have it)")
    tty = p.add_mutually_exclusive_group()
    tty.add_argument("-t", dest="tty", action="store_const", const=True,
                     help="force a terminal on the host (when stdin is one)")
    tty.add_argument("-T", dest="tty", action="store_const", const=False,
                     help="never allocate a terminal on the host")
    p.add_argument("-n", dest="no_stdin", action="store_true",
                   help="do not read stdin (the command reads end-of-file)")
    p.add_argument("-q", "--quiet", action="store_true", help="no notices on stderr")
    p.add_argument("-d", "--detach", action="store_true",
                   help="hand CMD to the daemon as a job (see `distsvc job`): print its ID "
                   "and return at once")
    p.add_argument("--name", help="with --detach: the job's name")
    p.add_argument("--isolate", metavar="KINDS",
                   help="with --detach: isolation, as for `distsvc job start`")
    p.add_argument("--network", action="store_true",
                   help="with --detach: keep the host's network")
    import distsvc.commands.job  # argparse's path only: the common one stays small

    distsvc.commands.job.add_queue_options(p, prefix="with --detach: ")
    distsvc.commands.job.add_limit_options(p)
    p.add_argument("--version", action="version",
                   version=distsvc.commands.common.version_string())
    distsvc.commands.common.add_config_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD ARGS",
                   help="the command and its arguments")
    return p


def options_from(args: argparse.Namespace | types.SimpleNamespace
                 ) -> distsvc.actions.run.Options:
    import distsvc.actions.run

    return distsvc.actions.run.Options(
        workdir=args.workdir, tty=args.tty, stdin=not args.no_stdin, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    """`distsvc-run`'s exit status. Called as the program (no `argv`: the installed script),
    a command the daemon carried on the fast path ends the process at once (`exit_now`)."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if program:
        distsvc.commands.common.standard_fds_open()

    def body() -> int:
        if argv and not argv[0].startswith("-"):
            # `distsvc-run CMD ARGS...`, the common case: the daemon does all but relaying
            # our signals; the full client below only when it cannot (no daemon answering, a
            # configuration error to report, no hosts: see run_fast).
            status = distsvc.actions.client.run_fast(argv, os.environ)
            if status is not None:
                if program:
                    exit_now(status)
                return status
        if argv == ["--version"]:  # what argparse would print, without loading it (~80 ms)
            print(distsvc.commands.common.version_string())
            return 0
        return run_full(argv)

    return distsvc.commands.common.guarded(body)


def exit_now(status: int) -> None:
    """End the process with `status`, skipping the interpreter's teardown, which frees every
    module and object one by one: a fifth of the instructions a fast `distsvc-run true`
    executes, ~3 ms of its CPU. What teardown does that matters still happens: exit handlers
    run (none of ours on the fast path; a sitecustomize's, such as coverage's, may be there),
    then stdout and stderr are flushed. The fast path starts no thread and leaves nothing
    open that needs closing (its socket is closed, signal handlers and the terminal's mode
    restored). Returns only if a flush fails, for the normal exit to report it."""
    import atexit

    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the descriptor was closed when Python started
                stream.flush()
    except Exception:  # a closed or broken stream: the normal exit says so
        return
    os._exit(status)


def run_full(argv: list[str]) -> int:
    """Arguments parsed, the configuration loaded here, then through the daemon or not."""
    if sys.flags.no_site:
        load_site()
    import types

    if argv and not argv[0].startswith("-"):
        # No options to parse: argparse is neither imported nor built (~9 ms).
        args: argparse.Namespace | types.SimpleNamespace = types.SimpleNamespace(
            workdir=None, tty=None, no_stdin=False, quiet=False, config=None,
            accept_new=False, command=argv, detach=False, on=None)
    else:
        args = parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise distsvc.errors.UsageError("no command given (usage: distsvc-run CMD ARGS...)")
    return run_parsed(args, command)


def run_parsed(args: argparse.Namespace | types.SimpleNamespace, command: list[str]) -> int:
    """distsvc-run's (and `distsvc run`'s without --all) options checked, then CMD: a job
    with --detach, on a cluster with --on, in a scope with limits, else on the best host."""
    import types

    import distsvc.actions.run

    if args.detach:  # with --on, a job on the cluster: job start --on (queue_from reads it)
        from distsvc.commands import job

        args.json = False
        args.command = command
        return job.start(args)  # type: ignore[arg-type]
    if not isinstance(args, types.SimpleNamespace):  # options were parsed
        from distsvc.commands import job

        if job.queue_given(args):
            raise distsvc.errors.UsageError(
                "--host, --best, --local, --group, --after, --retries and --retry-delay "
                "are for a job: add --detach (or use distsvc job start)")
    config = distsvc.commands.common.load_config(args)
    if args.on is not None:
        return run_on_cluster(args, command, config)
    if limited(args):
        return run_limited(args, command, config)
    return distsvc.actions.run.run(command, options_from(args), config, os.environ)



def load_site() -> None:
    """Started by the launcher without `site` (scripts/fast-launcher.sh), for the full client:
    the site-packages (paramiko, structlog) and .pth files, in the order a plain start has.
    The launcher appended distsvc's own directory; site puts it back where it belongs (after
    the user site), not before."""
    import site

    if site.ENABLE_USER_SITE is not None:
        return  # the launcher ran site already (a distsvc in the user site)
    where = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if sys.path and sys.path[-1] == where:
        sys.path.pop()
    site.main()
    if where not in sys.path:
        sys.path.append(where)


def limited(args: argparse.Namespace | types.SimpleNamespace) -> bool:
    return any(value is not None for name, value in vars(args).items()
               if name.startswith("limit_"))


def run_on_cluster(args: argparse.Namespace | types.SimpleNamespace, command: list[str],
                   config: distsvc.config.Config) -> int:
    """CMD in the foreground through srun on the cluster `--on` names."""
    import distsvc.actions.cluster_run
    import distsvc.commands.job
    import distsvc.jobs.limits

    cluster = config.cluster(args.on)
    if cluster is None:
        raise distsvc.actions.cluster_run.unknown_cluster(config, args.on)
    if getattr(args, "best_effort", False):
        raise distsvc.errors.UsageError(
            "--best-effort: not with --on (Slurm enforces what it takes, and a limit it "
            "cannot give is refused before anything runs)")
    limits = distsvc.jobs.limits.from_json(
        distsvc.commands.job.limits_from(args))  # type: ignore[arg-type]
    return distsvc.actions.cluster_run.run(command, options_from(args), cluster, limits,
                                           config, os.environ)


def run_limited(args: argparse.Namespace | types.SimpleNamespace, command: list[str],
                config: distsvc.config.Config) -> int:
    """CMD here, in the foreground, inside a transient scope unit that carries the limits."""
    import distsvc.actions.scope
    import distsvc.commands.job

    if config.hosts:
        raise distsvc.errors.UsageError(
            "limits on a foreground command apply on this machine only, and hosts are "
            "configured (start it as a job: distsvc job start --memory ... CMD)")
    limits = distsvc.commands.job.limits_from(args)  # type: ignore[arg-type]
    return distsvc.actions.scope.run(command, options_from(args), limits,
                                     bool(getattr(args, "best_effort", False)), os.environ)


if __name__ == "__main__":
    sys.exit(main())
