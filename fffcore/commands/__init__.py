"""Subcommands of the ``fff`` command line, one module each."""
