"""The wire format between distsvc clients and the daemon. Framing and parsing only: no I/O.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one
object (json's own text, made by its C half: see `dumps`, `loads`). Every message carries
the protocol version `v`. Frames over MAX_FRAME bytes, bytes that are not JSON, JSON that
is not an object, a wrong version and unknown request types are ProtocolErrors: the daemon
answers them with an error and closes that connection only.

Requests (client to daemon), each {"v": 1, "type": ..., "client": IDENTITY, ...}, where
IDENTITY is the client's distsvc.identity() (a daemon of another one retires):
  status                      -> {"ok": true, "version", "pid", "uptime", "hosts", "rss_kib",
                                  "connections", "connections_per_host", "retiring", "jobs"}
  best    config              -> {"ok": true, "host": NAME or null, "ranked": [...]}
  hosts   config, refresh, ssh_auth_sock -> {"ok": true, "rows": [...]}  each row's "jobs":
                              [ID...] of the unfinished jobs placed on that host
  scan    config              -> {"ok": true, "measured": [NAME...]}  the timer's pass
  run     config, argv, workdir, env, tty, term, quiet, ssh_auth_sock, heartbeats: true
          optional host: NAME  runs there, no choosing or falling back (`run --all`)
          optional cluster: NAME, limits {field: value}  runs through srun on the config's
          cluster of that name, from its login node (`distsvc-run --on`; the config's hosts
          are left out, so a daemon that knows no `cluster` refuses it); "started" names
          the cluster and its login node
          (+ stdin, stdout, stderr passed as fds; ssh_auth_sock: the client's ssh-agent);
          or the fast client's form (`distsvc-run CMD ARGS`, no options):
  run     argv, cwd, environ, heartbeats: true   environ: the client's whole environment;
          the daemon derives the rest as the full client would (daemon/run_setting.py): the
          configuration file environ names (DISTSVC_HOSTS applied), the variables that
          travel, the saved environment, $PWD if it is cwd, TERM, SSH_AUTH_SOCK. What it
          cannot do from that (a configuration error, no hosts, a bad saved environment) it
          answers before anything ran with {"ok": false, "error", "status": 2,
          "full_client": true}: the client does it all itself (actions/client.run_fast).
          Either form then, on the same connection:
          client -> daemon    {"type": "signal", "signal": N}   a signal the client received
                              {"type": "resize"}                 the terminal changed size
          daemon -> client    {"type": "notice", "message"}      one line for stderr
                              {"type": "started", "host"}
                              {"type": "heartbeat"}              at once, then every ~2 s while
                                                                 the request is in progress
                              {"type": "exit", "status": N}      the command's status; the end
          A client that heard a heartbeat and then nothing for HEARTBEAT_SILENCE seconds
          gives the daemon up (it died or hangs). A stop of the daemon ends the command and
          answers with an error naming it instead of the exit message.
Jobs (the records are jobs/record.py's JSON; "jobs": [RECORD...] in every answer):
  job_start  argv, cwd, env, name, limits {field: value}, isolate [KIND...] or null (the
             config's), best_effort; optional: target "local" | "best" | "host" (omitted:
             "best" when hosts are configured, else "local"), host NAME (with target
             "host"), group NAME or null, after [ID...] (start once all succeeded),
             retries 0..100, retry_delay seconds >= 0
                                                   -> {"ok": true, "jobs": [RECORD]}
                                                      (its state may be "queued")
  job_list   states [STATE...] or null; optional host NAME (only jobs placed on, or aimed
             at, that host)                        -> {"ok": true, "jobs": [...],
                                                       "corrupt": [LINE...]}
  job_status id                                    -> {"ok": true, "jobs": [RECORD]}
  job_logs   id; optional attempt N (an ended attempt's output, kept as stdout.N and
             stderr.N; omitted: the current attempt's)
                         -> {"ok": true, "jobs": [RECORD]} + the stdout and stderr files as
                            fds, opened for reading: the client reads them itself
  job_wait   ids; optional any: true
                         -> {"type": "heartbeat"} at once and every ~2 s, then
                            {"ok": true, "jobs": [...]} once all have ended (with any: once
                            at least one has; every record, some maybe unfinished)
  job_stop   id, signal, grace -> {"ok": true, "jobs": [RECORD]} (SIGKILL after grace s)
  job_pause, job_resume  id    -> {"ok": true, "jobs": [RECORD]} (+ "method" on resume)
  job_remove ids; job_clean    -> {"ok": true, "removed": [ID...]}
Errors: {"ok": false, "error": "one line", "status": N}.
Queries are one request and one answer per connection; `run` and `job_wait` keep it open.
"""

from __future__ import annotations

import _json  # json's C half: `import json` costs the fast client ~8 ms (it imports re, enum)
import _struct  # struct's C half: one module fewer for the fast client

TYPE_CHECKING = False  # typing itself costs the fast client ~3 ms; mypy knows the name
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
MAX_FRAME = 1 << 20
HEADER = _struct.Struct("!I")
REQUEST_TYPES = ("status", "best", "hosts", "scan", "run", "job_start", "job_list",
                 "job_status", "job_logs", "job_wait", "job_stop", "job_pause", "job_resume",
                 "job_remove", "job_clean")
RUN_MESSAGE_TYPES = ("signal", "resize")
NO_HOSTS = "no hosts configured"
"""A `run` refused for want of hosts. A daemon older than the `cluster` field says it of a
`run --on CLUSTER` (sent without hosts): the client then runs it in-process."""
HEARTBEAT_SILENCE = 10.0  # seconds without a message after which a client gives up a daemon


class ProtocolError(Exception):
    """A malformed message; the text is safe to send back to the peer."""


class _ScannerContext:
    """What _json.make_scanner reads from its argument: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(float)  # NaN, Infinity, -Infinity


def _unserializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Exactly what json.dumps(message, separators=(",", ":")) and json.loads run, without the
# json package's Python half (both sides use these, so the bytes are the same as before).
_encode_json = _json.make_encoder({}, _unserializable, _json.encode_basestring_ascii, None,
                                  ":", ",", False, False, True)
_scan_json = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]  # stub: a decoder


def dumps(value: object) -> str:
    """json.dumps(value, separators=(",", ":"))."""
    return "".join(_encode_json(value, 0))


def loads(text: str) -> Any:
    """json.loads(text); ValueError for anything that is not one JSON value."""
    text = text.strip(" \t\n\r")
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


def encode(message: dict[str, Any]) -> bytes:
    payload = dumps({"v": VERSION, **message}).encode()
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def frame_size(prefix: bytes) -> int | None:
    """The size of the whole frame `prefix` begins (header included), by its header; None
    while the header itself is not all there."""
    if len(prefix) < HEADER.size:
        return None
    return HEADER.size + int(HEADER.unpack_from(prefix)[0])


def decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        message = loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("frame is not UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {message.get('v')!r} "
                            f"(this side speaks {VERSION})")
    return message


class Decoder:
    """Turns a byte stream into messages, however the bytes are split."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        messages = []
        while len(self.buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self.buffer)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            if len(self.buffer) < HEADER.size + length:
                break
            payload = bytes(self.buffer[HEADER.size:HEADER.size + length])
            del self.buffer[:HEADER.size + length]
            messages.append(decode_payload(payload))
        return messages


def request_type(message: dict[str, Any]) -> str:
    kind = message.get("type")
    if kind not in REQUEST_TYPES:
        raise ProtocolError(f"unknown request type {kind!r}")
    return str(kind)


def field(request: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A request's field, of the type it must have; ProtocolError when it is not there."""
    value = request.get(name)
    if not isinstance(value, kind):
        raise ProtocolError(f"field {name!r} is missing or of the wrong type")
    return value


def error(text: str, status: int = 1) -> dict[str, Any]:
    return {"ok": False, "error": text, "status": status}


def full_client(reason: str) -> dict[str, Any]:
    """The answer to a fast client's `run` that the full client must do (nothing ran)."""
    return {**error(f"use the full client: {reason}", 2), "full_client": True}


def describe_command(argv: list[str]) -> str:
    """A run's command line, short, as both sides name it in messages to the user."""
    import shlex  # only for a message: it imports re, which the fast client does without

    text = shlex.join(argv)
    return text if len(text) <= 60 else text[:57] + "..."
