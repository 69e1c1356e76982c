"""Logging through structlog: readable lines on stderr for commands and a daemon started by
hand; entries with structured fields (HOST=, LOAD=, JOB=, ...) in the journal under systemd.

Commands log only warnings by default (the user's terminal belongs to the command they run);
`DISTSVC_LOG=debug` shows everything.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_configured = False


def configure(level: str | None = None) -> None:
    # Imported here: structlog (with asyncio) costs ~28 ms, paid only when something logs.
    import structlog

    import distsvc.adapters.systemd

    global _configured
    name = (level or os.environ.get("DISTSVC_LOG") or "warning").upper()
    wrapper = structlog.make_filtering_bound_logger(
        logging.getLevelNamesMapping().get(name, logging.WARNING))
    if distsvc.adapters.systemd.under_systemd(os.environ):
        structlog.configure(
            processors=[structlog.processors.format_exc_info],
            wrapper_class=wrapper,
            logger_factory=distsvc.adapters.systemd.JournalLogger,
            cache_logger_on_first_use=True)
    else:
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            wrapper_class=wrapper,
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            cache_logger_on_first_use=True)
    _configured = True


def get(**fields: Any) -> Any:
    import structlog

    if not _configured:
        configure()
    return structlog.get_logger("distsvc").bind(**fields)
