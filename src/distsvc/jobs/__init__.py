"""Jobs: commands handed to the daemon that run on their own, with limits and isolation.

`limits` and `record` are pure (no I/O, core imports only); `store` keeps records and
output as files; `output` reads them for `distsvc job logs`.
"""
