"""Errors a user can act on, each with the exit status the commands return for it.

Exit statuses are part of the interface (see docs/architecture.md):
  2    bad input: usage, configuration, a bad limit
  4    a job cannot do what was asked now (it ended already, it is running, a unit left over,
       an isolation or limit this machine cannot give)
  5    no such job
  126, 127  a job's command is not executable, or not found (as sh says)
  255  the command could not be run at all (no host, connection or host-key failure)
Everything else is the command's own status (128+N when it died of signal N).
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_CANNOT_RUN = 255
EXIT_JOB = 4
EXIT_NO_SUCH_JOB = 5


class DistsvcError(Exception):
    """An error with a one-line message for the user and an exit status."""

    exit_status = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(DistsvcError):
    exit_status = EXIT_USAGE


class ConfigError(DistsvcError):
    """Every problem found in the configuration, each with the path of the bad field."""

    exit_status = EXIT_USAGE

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        # Each problem is blamed on what the user wrote: the variable, or the file (which
        # need not exist when only the variable is wrong).
        in_variable = [p for p in problems if p.startswith(HOSTS_VARIABLE)]
        in_file = [p for p in problems if not p.startswith(HOSTS_VARIABLE)]
        parts = ["; ".join(in_variable)] if in_variable else []
        if in_file:
            parts.append(f"invalid configuration in {source}: " + "; ".join(in_file))
        super().__init__("; ".join(parts))


HOSTS_VARIABLE = "DISTSVC_HOSTS"


class CannotRun(DistsvcError):
    """The command was not started: no usable host, connection failure, refused host key."""

    exit_status = EXIT_CANNOT_RUN


class HostUnreachable(CannotRun):
    """One host could not be used; callers may fall back to another.

    `dropped`: the server closed the connection during the handshake, as sshd does at random
    past MaxStartups (10 unauthenticated connections by default): worth another try soon.
    """

    def __init__(self, host: str, reason: str, dropped: bool = False) -> None:
        self.host = host
        self.reason = reason
        self.dropped = dropped
        super().__init__(f"{host}: {reason}")


class SessionRefused(HostUnreachable):
    """The host refused one more session (its MaxSessions) or the command's start: nothing ran,
    so another connection or host may run it."""


class StartUncertain(CannotRun):
    """The connection failed after the command was sent: it may be running, so it is never
    run again (the remote wrapper ends it once its session is gone)."""


class HostKeyRefused(HostUnreachable):
    """Host key unknown or changed. Never falls back silently: the user must decide."""


class Interrupted(DistsvcError):
    """A signal asked us to stop before the command started: status 128+N, like a shell."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum} before the command started")
        self.exit_status = 128 + signum
