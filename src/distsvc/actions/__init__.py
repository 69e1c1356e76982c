"""Actions: what the commands do, built on the pure core modules and the adapters."""
