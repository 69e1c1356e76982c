"""Which environment variables travel with a command, and the saved environment file."""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import distsvc.config
import distsvc.errors


@functools.lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """Whether a name matches any of the shell patterns (fnmatchcase's rules), as one regular
    expression: the daemon filters every command's environment, ~50 names by ~20 patterns."""
    if not patterns:
        return lambda name: None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


# Whether each name travels, by filter: a daemon filters every command's environment, the
# same names again and again (the two expressions cost ~1 us a name, a look-up a tenth).
_decisions: dict[distsvc.config.EnvFilter, dict[str, bool]] = {}
DECISIONS_MAX = 4096  # names kept (of all filters); more are decided afresh


def carried(environ: Mapping[str, str], env_filter: distsvc.config.EnvFilter,
            saved: Mapping[str, str]) -> dict[str, str]:
    """The variables to set for the command: allowed and not denied, then the saved ones."""
    decided = _decisions.get(env_filter)
    if decided is None or len(decided) > DECISIONS_MAX:
        decided = _decisions[env_filter] = {}
        if len(_decisions) > 64:
            _decisions.clear()
            _decisions[env_filter] = decided
    allowed, denied = _matcher(env_filter.allow), _matcher(env_filter.deny)
    result = {}
    for name, value in environ.items():
        travels = decided.get(name)
        if travels is None:
            travels = decided[name] = bool(allowed(name)) and not denied(name)
        if travels:
            result[name] = value
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
