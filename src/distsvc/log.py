"""Logging through structlog: readable lines on stderr for commands, fields for the journal.

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

    global _configured
    name = (level or os.environ.get("DISTSVC_LOG") or "warning").upper()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(name, logging.WARNING)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get(**fields: Any) -> Any:
    import structlog

    if not _configured:
        configure()
    return structlog.get_logger("distsvc").bind(**fields)
