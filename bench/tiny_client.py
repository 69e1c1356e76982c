"""A deliberately minimal daemon client: how fast could `distsvc-run` be through the daemon?

NOT a distsvc client, a prototype for the benchmark (bench/daemon_bench.py): it sends the same
`run` request as `distsvc-run` (config, argv, environment, working directory, and its stdin,
stdout and stderr passed as file descriptors) and waits for the `exit` message, but imports
only what that needs (os, sys, socket, json, struct, tomllib) and leaves out what a real client
must do: argument parsing, validating the configuration, the environment allow/deny patterns,
the saved environment, signals, terminals, the in-process fallback. The gap between it and
`distsvc-run` is the client's own start-up cost; its distance from the daemon's in-process
time is the interpreter's.

Usage (with the environment of a user whose daemon runs): python bench/tiny_client.py CMD...
"""

import json
import os
import socket
import struct
import sys
import tomllib

DENIED = ("HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "TERM", "XDG_RUNTIME_DIR")


def main() -> int:
    runtime = os.environ["XDG_RUNTIME_DIR"]
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    with open(os.path.join(config_home, "distsvc", "config.toml"), "rb") as f:
        config = tomllib.load(f)
    request = {"v": 1, "type": "run", "config": config, "argv": sys.argv[1:],
               "env": {k: v for k, v in os.environ.items() if k not in DENIED},
               "workdir": os.environ.get("PWD") or os.getcwd(), "term": "xterm",
               "tty": False, "stdin": True, "quiet": True}
    payload = json.dumps(request).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.path.join(runtime, "distsvc", "distsvc.sock"))
    socket.send_fds(sock, [struct.pack("!I", len(payload)) + payload], [0, 1, 2])
    buffer = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return 255
        buffer += data
        while len(buffer) >= 4:
            (length,) = struct.unpack_from("!I", buffer)
            if len(buffer) < 4 + length:
                break
            message = json.loads(buffer[4:4 + length])
            buffer = buffer[4 + length:]
            if message.get("type") == "exit":
                return int(message["status"])
            if message.get("ok") is False:
                print(f"tiny_client: {message.get('error')}", file=sys.stderr)
                return int(message.get("status", 255))


if __name__ == "__main__":
    sys.exit(main())
