"""distsvc: run commands on the least-loaded of your SSH hosts, as if they ran locally."""

__version__ = "0.1.0"
