"""Which environment variables travel with a command, and the saved environment file."""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping
from pathlib import Path

import distsvc.config
import distsvc.errors


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def carried(environ: Mapping[str, str], env_filter: distsvc.config.EnvFilter,
            saved: Mapping[str, str]) -> dict[str, str]:
    """The variables to set for the command: allowed and not denied, then the saved ones."""
    result = {k: v for k, v in environ.items()
              if _matches(k, env_filter.allow) and not _matches(k, env_filter.deny)}
    result.update(saved)  # saved on purpose with `distsvc env`: they win
    return result


def load_saved(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise distsvc.errors.UsageError(
            f"saved environment {path} is unreadable ({error}); fix it or remove it with "
            "`distsvc env delete --all`") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise distsvc.errors.UsageError(
            f"saved environment {path} is not a JSON object of strings; remove it with "
            "`distsvc env delete --all`")
    return data


def store_saved(path: Path, variables: Mapping[str, str]) -> None:
    """Write atomically, readable by the user only: it may hold secrets."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(dict(sorted(variables.items())), out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
