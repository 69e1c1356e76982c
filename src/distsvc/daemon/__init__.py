"""The daemon: the socket loop (serve) and one handler per request type (handlers)."""
