"""Adapters: the only modules that talk to the outside (SSH, the terminal, local processes)."""
